//! The state directory: one sub-folder per destination holding its lock and its "a run is in progress"
//! marker (beside the catalog and the run records of `status`). Kept outside the destination so no key can ever collide with them.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another s3backup run into {dest} is in progress (lock {lock}{holder})")]
    Held {
        dest: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error("state directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The per-destination state folder: `<state_dir>/<basename>-<hash of the destination path>`.
pub fn dest_state_dir(state_dir: &Path, dest: &Path) -> PathBuf {
    let digest = Sha256::digest(dest.as_os_str().as_bytes());
    let id = hex::encode(&digest[..8]);
    let base: String = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    state_dir.join(format!("{base}-{id}"))
}

/// Held for the whole run; the kernel drops the lock if the process dies, so a killed run never
/// blocks the next one.
pub struct RunGuard {
    dir: PathBuf,
    _lock: File,
    /// The previous run into this destination did not finish: it may have left temp files.
    pub previous_run_interrupted: bool,
}

impl RunGuard {
    pub fn acquire(state_dir: &Path, dest: &Path) -> Result<RunGuard, LockError> {
        let dir = dest_state_dir(state_dir, dest);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LockError::Io { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir))?;
        let lock_path = dir.join("lock");
        let mut lock = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&lock_path)
                    .ok()
                    .and_then(|s| s.lines().next().map(str::to_owned))
                    .map(|pid| format!(", held by pid {pid}"))
                    .unwrap_or_default();
                return Err(LockError::Held {
                    dest: dest.to_path_buf(),
                    lock: lock_path,
                    holder,
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        // Diagnostics only: who holds it, for which destination.
        let _ = lock
            .set_len(0)
            .and_then(|()| writeln!(lock, "{}\n{}", std::process::id(), dest.display()));

        let marker = dir.join("running");
        let previous_run_interrupted = marker.exists();
        File::create(&marker)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&marker))?;
        Ok(RunGuard {
            dir,
            _lock: lock,
            previous_run_interrupted,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Called once every temp file of this run is gone: the next run need not sweep.
    pub fn finish(self) -> io::Result<()> {
        fs::remove_file(self.dir.join("running"))
    }
}

/// A run into a destination that started and has not finished (its in-progress marker is there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    pub since: std::time::SystemTime,
    /// It holds the lock now (still running); otherwise it died (a kill, a crash, a power cut).
    pub running: bool,
}

/// Whether the destination's state folder `dir` shows an unfinished run. Asks the lock without waiting
/// and lets it go at once, so a running backup is never held up.
pub fn unfinished(dir: &Path) -> Option<Unfinished> {
    let since = fs::metadata(dir.join("running")).ok()?.modified().ok()?;
    let running = File::open(dir.join("lock"))
        .is_ok_and(|f| matches!(f.try_lock_shared(), Err(fs::TryLockError::WouldBlock)));
    Some(Unfinished { since, running })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_a_dropped_guard_frees_the_lock() {
        let state = tempfile::tempdir().unwrap();
        let dest = Path::new("/srv/backup");
        let g = RunGuard::acquire(state.path(), dest).unwrap();
        assert!(!g.previous_run_interrupted);
        assert!(matches!(
            RunGuard::acquire(state.path(), dest),
            Err(LockError::Held { .. })
        ));
        // Another destination is independent.
        let other = RunGuard::acquire(state.path(), Path::new("/srv/other")).unwrap();
        drop(other);
        drop(g); // not finished: looks like a killed run
        let g = RunGuard::acquire(state.path(), dest).unwrap();
        assert!(g.previous_run_interrupted);
        g.finish().unwrap();
        let g = RunGuard::acquire(state.path(), dest).unwrap();
        assert!(!g.previous_run_interrupted);
    }
}
