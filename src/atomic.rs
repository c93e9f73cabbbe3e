//! Atomic installation of a downloaded file: temp file in the target's own directory → fsync → mtime →
//! rename over the target → fsync of the directory. Also the sweep of temp files a killed run left.
//!
//! A final path only ever holds a complete, verified file: until `commit`, the bytes live under a
//! `.s3backup.tmp.*` name (fixed length, so a 255-byte target name still fits), which `Drop` removes.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tempfile::NamedTempFile;

use crate::keypath::TEMP_PREFIX;

/// A temp file next to its final path.
pub struct Staged {
    tmp: NamedTempFile,
    target: PathBuf,
}

impl Staged {
    /// Create an exclusive, owner-only temp file in `target`'s directory (which must exist).
    pub fn create(target: &Path) -> io::Result<Staged> {
        let dir = target.parent().expect("targets are joined onto dest");
        let tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .rand_bytes(12)
            .tempfile_in(dir)?;
        Ok(Staged {
            tmp,
            target: target.to_path_buf(),
        })
    }

    pub fn file(&self) -> &File {
        self.tmp.as_file()
    }

    /// Make the bytes durable and put them at the final path.
    pub fn commit(self, expected_len: u64, mtime: Option<SystemTime>) -> io::Result<()> {
        let file = self.tmp.as_file();
        let len = file.metadata()?.len();
        if len != expected_len {
            return Err(io::Error::other(format!(
                "wrote {len} bytes, expected {expected_len}"
            )));
        }
        if let Some(t) = mtime {
            file.set_modified(t)?;
        }
        file.sync_all()?;
        let target = self.target;
        self.tmp.persist(&target).map_err(|e| e.error)?;
        sync_dir(target.parent().expect("targets have a parent"))
    }
}

/// Create and drop a temp file in `dir`: proves before any download that files can be created there.
pub fn probe_writable(dir: &Path) -> io::Result<()> {
    tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .rand_bytes(12)
        .tempfile_in(dir)
        .map(drop)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Remove every `.s3backup.tmp.*` file under `dest` (never following symlinks). Returns how many.
pub fn sweep_temp_files(dest: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in walkdir::WalkDir::new(dest).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        let is_ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TEMP_PREFIX));
        if is_ours && entry.file_type().is_file() {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn commit_installs_with_mtime_and_no_leftovers() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("x".repeat(255));
        let s = Staged::create(&target).unwrap();
        s.file().write_all(b"hello").unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        s.commit(5, Some(t)).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"hello");
        assert_eq!(fs::metadata(&target).unwrap().modified().unwrap(), t);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn short_write_never_reaches_the_target_and_old_copy_survives() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("f");
        fs::write(&target, b"good old copy").unwrap();
        let s = Staged::create(&target).unwrap();
        s.file().write_all(b"trunc").unwrap();
        assert!(s.commit(10, None).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"good old copy");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1, "temp removed");
    }

    #[test]
    fn sweep_removes_only_our_temp_files() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("sub/.s3backup.tmp.abcdef"), b"x").unwrap();
        fs::write(d.path().join(".s3backup.tmp.zzz"), b"x").unwrap();
        fs::write(d.path().join("keep.s3backup.tmp.x"), b"x").unwrap();
        fs::write(d.path().join("sub/keep"), b"x").unwrap();
        assert_eq!(sweep_temp_files(d.path()).unwrap(), 2);
        assert!(d.path().join("keep.s3backup.tmp.x").exists());
        assert!(d.path().join("sub/keep").exists());
    }
}
