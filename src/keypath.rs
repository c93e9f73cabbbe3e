//! Key → local path mapping: the one place that decides whether an S3 key may become a file under `dest`.
//!
//! Pure and allocation-light on purpose: it is the fuzz target and the hostile-key unit tests' subject,
//! and the rest of the engine trusts its `Safe` answers without re-checking them.

use std::path::PathBuf;

/// Prefix of our temp files. Keys whose components start with it are refused, so that a leftover-temp
/// sweep can never delete a backed-up object.
pub const TEMP_PREFIX: &str = ".s3backup.tmp.";

/// Linux's NAME_MAX: the longest single path component most file systems store.
pub const NAME_MAX: usize = 255;

/// What a key becomes on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// A regular file at `dest/<path>`.
    File(PathBuf),
    /// A zero-byte key ending in `/`: the directory `dest/<path>`.
    FolderMarker(PathBuf),
    /// Not stored; the reason names the offending part.
    Refused(RefuseReason),
}

/// Why a key cannot be stored. These are permanent: the same key is refused on every run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefuseReason {
    #[error("empty key")]
    Empty,
    #[error("key starts with '/' (absolute path)")]
    Absolute,
    #[error("key has an empty path segment ('//')")]
    EmptySegment,
    #[error("key has a '{0}' path segment")]
    DotSegment(&'static str),
    #[error("key contains a NUL byte")]
    Nul,
    #[error("path component of {0} bytes is longer than {NAME_MAX}")]
    ComponentTooLong(usize),
    #[error(
        "key ends in '/' but the object is not empty ({0} bytes), so it is not a folder marker"
    )]
    NonEmptyFolderMarker(u64),
    #[error(
        "path component starts with '{TEMP_PREFIX}', which s3backup reserves for its temp files"
    )]
    ReservedName,
    #[error("'{0}' is a file (object '{0}'), so it cannot also be a folder")]
    ParentIsFile(String),
    #[error("'{0}' on disk is not a directory, so it cannot hold this object")]
    ParentNotDirOnDisk(String),
    #[error("a directory of the same name is in the way (it holds other objects or local files)")]
    IsDirOnDisk,
    #[error("a file of the same name exists, and a folder marker never displaces a file")]
    MarkerOverFile,
}

/// Map `key` (already decoded) of an object of `size` bytes to its place under `dest`.
///
/// The relative path is exactly the key's bytes: no normalisation, no percent-decoding, no case folding,
/// so two different keys never share a path and a stored file name is the key verbatim.
pub fn map_key(key: &str, size: u64) -> Mapping {
    match check(key, size) {
        Ok(m) => m,
        Err(r) => Mapping::Refused(r),
    }
}

fn check(key: &str, size: u64) -> Result<Mapping, RefuseReason> {
    if key.is_empty() {
        return Err(RefuseReason::Empty);
    }
    if key.contains('\0') {
        return Err(RefuseReason::Nul);
    }
    if key.starts_with('/') {
        return Err(RefuseReason::Absolute);
    }
    let (body, marker) = match key.strip_suffix('/') {
        Some(body) if size == 0 => (body, true),
        Some(_) => return Err(RefuseReason::NonEmptyFolderMarker(size)),
        None => (key, false),
    };
    for seg in body.split('/') {
        match seg {
            "" => return Err(RefuseReason::EmptySegment),
            "." => return Err(RefuseReason::DotSegment(".")),
            ".." => return Err(RefuseReason::DotSegment("..")),
            s if s.len() > NAME_MAX => return Err(RefuseReason::ComponentTooLong(s.len())),
            s if s.starts_with(TEMP_PREFIX) => return Err(RefuseReason::ReservedName),
            _ => {}
        }
    }
    let path = PathBuf::from(body);
    Ok(if marker {
        Mapping::FolderMarker(path)
    } else {
        Mapping::File(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(p: &str) -> Mapping {
        Mapping::File(PathBuf::from(p))
    }

    #[test]
    fn ordinary_keys_are_stored_verbatim() {
        for k in [
            "a",
            "photos/2024/01/img 001.jpg",
            "ünïcödé/😀.png",
            "odd/+&=?#%'\"\\.txt",
            "a%2Fb",
            "..x/y..",
            ".hidden",
            "...",
            "ctl\u{1}\u{7f}\ttab\nnewline",
            "Case/case",
        ] {
            assert_eq!(map_key(k, 3), file(k), "{k:?}");
        }
    }

    #[test]
    fn traversal_and_odd_segments_are_refused() {
        let cases: &[(&str, RefuseReason)] = &[
            ("", RefuseReason::Empty),
            ("/etc/passwd", RefuseReason::Absolute),
            ("/", RefuseReason::Absolute),
            ("../x", RefuseReason::DotSegment("..")),
            ("a/../../x", RefuseReason::DotSegment("..")),
            ("a/..", RefuseReason::DotSegment("..")),
            ("./x", RefuseReason::DotSegment(".")),
            ("a/./b", RefuseReason::DotSegment(".")),
            (".", RefuseReason::DotSegment(".")),
            ("a//b", RefuseReason::EmptySegment),
            ("a/b//", RefuseReason::NonEmptyFolderMarker(3)),
            ("nul\0byte", RefuseReason::Nul),
            ("d/.s3backup.tmp.abc", RefuseReason::ReservedName),
        ];
        for (k, why) in cases {
            assert_eq!(map_key(k, 3), Mapping::Refused(why.clone()), "{k:?}");
        }
    }

    #[test]
    fn component_length_limit_is_exactly_name_max() {
        let ok = "x".repeat(NAME_MAX);
        assert_eq!(map_key(&format!("d/{ok}"), 1), file(&format!("d/{ok}")));
        let long = "x".repeat(NAME_MAX + 1);
        assert_eq!(
            map_key(&format!("d/{long}"), 1),
            Mapping::Refused(RefuseReason::ComponentTooLong(NAME_MAX + 1))
        );
        // Multi-byte characters count in bytes, as the kernel counts them.
        let emoji = "😀".repeat(64); // 256 bytes
        assert_eq!(
            map_key(&emoji, 1),
            Mapping::Refused(RefuseReason::ComponentTooLong(256))
        );
    }

    #[test]
    fn folder_markers() {
        assert_eq!(
            map_key("a/b/", 0),
            Mapping::FolderMarker(PathBuf::from("a/b"))
        );
        assert_eq!(
            map_key("a/b/", 5),
            Mapping::Refused(RefuseReason::NonEmptyFolderMarker(5))
        );
        assert_eq!(
            map_key("a//", 0),
            Mapping::Refused(RefuseReason::EmptySegment)
        );
        assert_eq!(
            map_key("../", 0),
            Mapping::Refused(RefuseReason::DotSegment(".."))
        );
    }

    #[test]
    fn safe_paths_stay_inside_dest() {
        // Property check over a small generated corpus: every File/FolderMarker path is relative and
        // consists only of normal components, so joining it to dest can never leave dest.
        let alphabet = ["a", ".", "..", "/", "", "b.c", "\u{1}", "é"];
        let mut n = 0;
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    for d in alphabet {
                        let key = format!("{a}{b}{c}{d}");
                        for size in [0, 1] {
                            if let Mapping::File(p) | Mapping::FolderMarker(p) = map_key(&key, size)
                            {
                                n += 1;
                                assert!(p.is_relative(), "{key:?}");
                                assert!(
                                    p.components()
                                        .all(|c| matches!(c, std::path::Component::Normal(_))),
                                    "{key:?} -> {p:?}"
                                );
                                // Verbatim: the path's bytes are the key's (minus a marker's '/').
                                assert_eq!(p.to_str().unwrap(), key.trim_end_matches('/'));
                            }
                        }
                    }
                }
            }
        }
        assert!(n > 100, "corpus too small: {n}");
    }
}
