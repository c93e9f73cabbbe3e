//! The history folder (`--history-dir`): what a run replaced or what left the bucket, moved (renamed, on
//! the same file system) to `<history>/<run-id>/<the same relative path>` before it leaves `--dest`, and
//! run folders older than `--keep-days` removed at the end of a run.
//!
//! A move is a rename, so at every instant the old bytes are in `--dest` or in history, never neither.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;

/// One run's history: where its moves go, created on the first one.
#[derive(Debug)]
pub struct History {
    root: PathBuf,
    dest: PathBuf,
    run_id: String,
    /// Parent folders made (and made durable) in this run, so each costs one mkdir.
    made: Mutex<Vec<PathBuf>>,
}

impl History {
    /// Check `root` against `dest` (both must exist): the same file system, neither inside the other.
    /// `started` names the run folder; a folder of that name from an earlier run in the same second gets
    /// a `-2`, `-3`, ... suffix, so no move ever lands on an earlier one.
    pub fn open(root: &Path, dest: &Path, started: SystemTime) -> Result<History, String> {
        let both = || {
            format!(
                "--history-dir {} and --dest {}",
                root.display(),
                dest.display()
            )
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| format!("--history-dir {}: cannot create it: {e}", root.display()))?;
        let root = root
            .canonicalize()
            .map_err(|e| format!("--history-dir {}: {e}", root.display()))?;
        if root.starts_with(dest) || dest.starts_with(&root) {
            return Err(format!(
                "{}: the history folder must be neither inside the destination nor contain it",
                both()
            ));
        }
        let dev = |p: &Path| fs::metadata(p).map(|m| m.dev());
        if dev(&root).map_err(|e| e.to_string())? != dev(dest).map_err(|e| e.to_string())? {
            return Err(format!(
                "{}: must be on the same file system (files are moved there by rename)",
                both()
            ));
        }
        let base = run_id(started);
        let mut run_id = base.clone();
        let mut n = 1;
        while root.join(&run_id).exists() {
            n += 1;
            run_id = format!("{base}-{n}");
        }
        Ok(History {
            root,
            dest: dest.to_path_buf(),
            run_id,
            made: Mutex::new(Vec::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Move whatever is at `target` (a path under `--dest`) to this run's folder, under the same relative
    /// path. `Ok(None)` when there is nothing there. Returns the folder whose entries changed in history,
    /// to be made durable with the others of the batch.
    pub fn move_aside(&self, target: &Path) -> io::Result<Option<PathBuf>> {
        match fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() => Err(io::Error::other(format!(
                "{} is a directory",
                target.display()
            ))),
            Ok(_) => {
                let rel = target
                    .strip_prefix(&self.dest)
                    .map_err(|_| io::Error::other("not under the destination"))?;
                let to = self.root.join(&self.run_id).join(rel);
                let parent = to.parent().expect("joined onto the run folder");
                self.make_dirs(parent)?;
                fs::rename(target, &to)
                    .map_err(|e| io::Error::new(e.kind(), format!("moving to history: {e}")))?;
                Ok(Some(parent.to_path_buf()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Undo `move_aside` for `target` (its replacement could not be installed), best effort: should it
    /// fail, the old version stays in history, which is still not a loss.
    pub fn put_back(&self, target: &Path) {
        if let Ok(rel) = target.strip_prefix(&self.dest) {
            let _ = fs::rename(self.root.join(&self.run_id).join(rel), target);
        }
    }

    /// `dir` (under the run folder) and its missing ancestors, owner-only, each made durable in its
    /// parent before anything is moved into it.
    fn make_dirs(&self, dir: &Path) -> io::Result<()> {
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        if made.iter().any(|d| d == dir) {
            return Ok(());
        }
        let rel = dir
            .strip_prefix(&self.root)
            .expect("under the history root");
        crate::plan::create_dirs(&self.root, rel)?;
        made.push(dir.to_path_buf());
        Ok(())
    }

    /// Remove run folders older than `keep_days` (0: keep all). Returns how many were removed.
    pub fn prune(&self, now: SystemTime, keep_days: u32) -> io::Result<usize> {
        if keep_days == 0 {
            return Ok(0);
        }
        let cutoff = now - Duration::from_secs(u64::from(keep_days) * 86_400);
        let mut removed = 0;
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(started) = name.to_str().and_then(parse_run_id) else {
                continue; // not ours: left alone
            };
            if started < cutoff && entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
                removed += 1;
            }
        }
        if removed > 0 {
            crate::atomic::sync_dir(&self.root)?;
        }
        Ok(removed)
    }
}

/// `20261130T031705Z`: the run's UTC start time.
pub fn run_id(t: SystemTime) -> String {
    let s = DateTime::from(t)
        .fmt(Format::DateTime)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into());
    // 2026-11-30T03:17:05Z (maybe with fractional seconds) -> 20261130T031705Z
    let s = s.split('.').next().unwrap_or(&s).trim_end_matches('Z');
    format!("{}Z", s.replace(['-', ':'], ""))
}

/// The start time a run folder's name gives (a `-N` suffix allowed), if it is one.
pub fn parse_run_id(name: &str) -> Option<SystemTime> {
    let base = name.split('-').next()?;
    if base.len() != 16 || !base.ends_with('Z') || base.as_bytes()[8] != b'T' {
        return None;
    }
    let b = base.as_bytes();
    let iso = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &base[0..4],
        &base[4..6],
        &base[6..8],
        &base[9..11],
        &base[11..13],
        &base[13..15]
    );
    if !b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit) {
        return None;
    }
    let t = DateTime::from_str(&iso, Format::DateTime).ok()?;
    SystemTime::try_from(t).ok().filter(|t| *t >= UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_round_trip_and_strangers_are_ignored() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let id = run_id(t);
        assert_eq!(id.len(), 16, "{id}");
        assert_eq!(parse_run_id(&id), Some(t));
        assert_eq!(parse_run_id(&format!("{id}-2")), Some(t));
        for stranger in ["notes", "2026113xT031705Z", "20261130T031705", ""] {
            assert_eq!(parse_run_id(stranger), None, "{stranger}");
        }
    }

    #[test]
    fn moves_keep_the_relative_path_and_prune_keeps_young_runs() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("dest");
        fs::create_dir_all(dest.join("a/b")).unwrap();
        fs::write(dest.join("a/b/f.jpg"), b"old").unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let h = History::open(&d.path().join("hist"), &dest, now).unwrap();
        let moved = h.move_aside(&dest.join("a/b/f.jpg")).unwrap();
        assert!(moved.is_some());
        assert!(!dest.join("a/b/f.jpg").exists());
        let kept = d.path().join("hist").join(run_id(now)).join("a/b/f.jpg");
        assert_eq!(fs::read(kept).unwrap(), b"old");
        assert_eq!(h.move_aside(&dest.join("nothing")).unwrap(), None);
        // A second run in the same second gets a folder of its own.
        let h2 = History::open(&d.path().join("hist"), &dest, now).unwrap();
        assert_eq!(h2.run_id, format!("{}-2", run_id(now)));
        // An old run folder goes, a young one and a stranger stay.
        let old = run_id(now - Duration::from_secs(31 * 86_400));
        fs::create_dir_all(d.path().join("hist").join(&old).join("x")).unwrap();
        fs::create_dir_all(d.path().join("hist/notes")).unwrap();
        assert_eq!(h.prune(now, 30).unwrap(), 1);
        assert_eq!(h.prune(now, 0).unwrap(), 0);
        assert!(!d.path().join("hist").join(old).exists());
        assert!(d.path().join("hist").join(run_id(now)).exists());
        assert!(d.path().join("hist/notes").exists());
    }

    #[test]
    fn history_inside_or_around_dest_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("dest");
        fs::create_dir_all(&dest).unwrap();
        let dest = dest.canonicalize().unwrap();
        let now = SystemTime::now();
        let e = History::open(&dest.join("h"), &dest, now).unwrap_err();
        assert!(e.contains("--history-dir") && e.contains("--dest"), "{e}");
        let e = History::open(d.path(), &dest, now).unwrap_err();
        assert!(e.contains("neither inside"), "{e}");
    }
}
