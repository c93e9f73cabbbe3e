//! Fuzz target for the key → path mapping: whatever the key, a path it maps to stays inside the
//! destination, is the key verbatim, and every component is storable.
#![no_main]

// The pure module alone, so the fuzz build needs no SDK (and no sanitizer build of it).
#[path = "../../src/keypath.rs"]
#[allow(dead_code)]
mod keypath;

use std::path::{Component, Path};

use keypath::{Mapping, NAME_MAX, TEMP_PREFIX, map_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, bool)| {
    let (key, empty) = input;
    let size = if empty { 0 } else { 1 };
    let (path, marker) = match map_key(key, size) {
        Mapping::File(p) => (p, false),
        Mapping::FolderMarker(p) => (p, true),
        Mapping::Refused(_) => return,
    };
    let dest = Path::new("/backup/dest");
    let joined = dest.join(&path);
    assert!(joined.starts_with(dest), "{key:?} escapes to {joined:?}");
    assert!(
        path.is_relative() && path.components().count() >= 1,
        "{key:?}"
    );
    for c in path.components() {
        let Component::Normal(name) = c else {
            panic!("{key:?} has component {c:?}");
        };
        let name = name.to_str().unwrap();
        assert!(name.len() <= NAME_MAX, "{key:?}");
        assert!(!name.is_empty() && !name.contains('\0'), "{key:?}");
        assert!(!name.starts_with(TEMP_PREFIX), "{key:?}");
    }
    // Verbatim: the path is the key, minus a folder marker's trailing '/'.
    let expect = if marker {
        key.strip_suffix('/').unwrap()
    } else {
        key
    };
    assert_eq!(path.to_str().unwrap(), expect);
    assert!(!marker || size == 0);
});
