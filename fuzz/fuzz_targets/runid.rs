//! Fuzz target for run ids (history run folder names): whatever a history folder holds, a name parses
//! to a time or is refused, never panics, and a name that parses is exactly the id of that time (plus
//! the `-N` suffix), so pruning and `restore --from-history` only ever take folders a run made.
#![no_main]

// The pure module alone: the fuzz build needs no SDK.
#[path = "../../src/runid.rs"]
mod runid;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|name: &str| {
    if let Some(t) = runid::parse(name) {
        let id = runid::format(t);
        assert!(name.starts_with(&id), "{name:?} parsed to {id}");
        let rest = &name[id.len()..];
        assert!(
            rest.is_empty()
                || (rest.len() >= 2
                    && rest.starts_with('-')
                    && rest[1..].bytes().all(|b| b.is_ascii_digit())
                    && !rest[1..].starts_with('0')
                    && rest != "-1"),
            "{name:?}: suffix {rest:?}"
        );
    }
});
