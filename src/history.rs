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
use std::time::{Duration, SystemTime};

use crate::catalog::{Entry, Held};
use crate::keypath::TEMP_PREFIX;
use crate::runid;

/// The suffix of a run's folder for files that were no version (see `Aside::SetAside`): pruned with
/// the run, never restored from.
pub const CHANGED_LOCALLY: &str = ".changed-locally";

/// One run's history: where its moves go, created on the first one.
#[derive(Debug)]
pub struct History {
    root: PathBuf,
    dest: PathBuf,
    /// The id the run's start gives (`runid::format`).
    base_id: String,
    /// The run's start: when a version found gone stopped being current, at the latest.
    started: SystemTime,
    /// The run folder's name, claimed (made, exclusively) by the first move of the run: a run of the
    /// same second, in this process or another sharing the folder, can never claim it too.
    run_id: Mutex<Option<String>>,
    /// Parent folders made (and made durable) in this run, so each costs one mkdir.
    made: Mutex<Vec<PathBuf>>,
    /// Files of noncurrent versions this run has placed (`version_file`).
    claimed: Mutex<std::collections::HashSet<String>>,
}

/// What became of the file a new version replaces (or whose object is gone).
#[derive(Debug, PartialEq, Eq)]
pub enum Aside {
    /// Nothing was there.
    Nothing,
    /// The old version, moved to this run's folder; the folder whose entries changed is to be made
    /// durable with the batch.
    Kept(PathBuf),
    /// No version the bucket held, yet never thrown away (it may be all that is left of the object, or
    /// a user's edit): a file whose size or bytes differ from what the backup wrote (rot, a hand edit),
    /// one `verify` marked damaged that has no checksum to clear it, or no regular file at all. Moved
    /// to this run's `<run-id>.changed-locally` folder, where neither `restore` nor a later run takes
    /// versions from; the folder whose entries changed is to be made durable with the batch.
    SetAside(PathBuf),
    /// The same bytes as the new version (a damaged mark that was wrong, a re-fetch of what is there):
    /// nothing to keep.
    Same,
}

/// The outcome of `prune`.
#[derive(Debug, Default)]
pub struct Pruned {
    pub removed: usize,
    /// The names of the folders removed (their versions leave the catalog).
    pub folders: Vec<String>,
    /// One line per run folder that could not be removed (the others still were).
    pub failed: Vec<String>,
}

impl History {
    /// Check `root` against `dest` (which must exist): neither inside the other, and files can be
    /// renamed between them (the same file system and the same mount: a bind mount of the same disk
    /// has the same device number, yet rename(2) across it fails with EXDEV). Only then is `root`
    /// created. `started` names the run folder; a folder of that name from an earlier run in the same
    /// second gets a `-2`, `-3`, ... suffix (`claim`), so no move ever lands on an earlier one.
    pub fn open(root: &Path, dest: &Path, started: SystemTime) -> Result<History, String> {
        let both = || {
            format!(
                "--history-dir {} and --dest {}",
                root.display(),
                dest.display()
            )
        };
        if let Ok(m) = fs::symlink_metadata(root)
            && m.file_type().is_symlink()
            && fs::metadata(root).is_err()
        {
            let to = fs::read_link(root).map_or_else(|_| "?".into(), |t| t.display().to_string());
            return Err(format!(
                "--history-dir {}: a symlink to {to}, which does not exist",
                root.display()
            ));
        }
        let resolved = crate::config::resolve_lenient(root)
            .map_err(|e| format!("--history-dir {}: {e}", root.display()))?;
        if resolved.starts_with(dest) || dest.starts_with(&resolved) {
            return Err(format!(
                "{}: the history folder must be neither inside the destination nor contain it",
                both()
            ));
        }
        // Checked where it will be, before anything is made: a folder not made yet is on the device of
        // its nearest existing ancestor, and a probe renamed there proves the same mount.
        let mut existing = resolved.as_path();
        while fs::symlink_metadata(existing).is_err() {
            existing = existing.parent().unwrap_or(Path::new("/"));
        }
        if !fs::metadata(existing).is_ok_and(|m| m.is_dir()) {
            return Err(format!(
                "--history-dir {}: {} is not a directory",
                root.display(),
                existing.display()
            ));
        }
        let dev = |p: &Path| fs::metadata(p).map(|m| m.dev());
        if dev(existing).map_err(|e| e.to_string())? != dev(dest).map_err(|e| e.to_string())? {
            return Err(format!(
                "{}: must be on the same file system (files are moved there by rename)",
                both()
            ));
        }
        probe_rename(dest, existing, existing == resolved).map_err(|e| {
            format!(
                "{}: a file cannot be renamed from one to the other ({e}): they must be on the same mount",
                both()
            )
        })?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&resolved)
            .map_err(|e| format!("--history-dir {}: cannot create it: {e}", root.display()))?;
        let root = resolved;
        Ok(History {
            root,
            dest: dest.to_path_buf(),
            base_id: runid::format(started),
            started,
            run_id: Mutex::new(None),
            made: Mutex::new(Vec::new()),
            claimed: Mutex::new(Default::default()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The run folder's name once a move has claimed one.
    pub fn run_id(&self) -> Option<String> {
        self.run_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The run folder's name: on the first call, the first of `<base>`, `<base>-2`, ... that neither
    /// exists nor has a `.changed-locally` twin, made here with an exclusive mkdir (made durable).
    fn claim(&self) -> io::Result<String> {
        let mut id = self.run_id.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = &*id {
            return Ok(id.clone());
        }
        for n in 1u32.. {
            let name = match n {
                1 => self.base_id.clone(),
                n => format!("{}-{n}", self.base_id),
            };
            if self.root.join(format!("{name}{CHANGED_LOCALLY}")).exists() {
                continue;
            }
            match fs::DirBuilder::new()
                .mode(0o700)
                .create(self.root.join(&name))
            {
                Ok(()) => {
                    fs::File::open(&self.root)?.sync_all()?;
                    *id = Some(name.clone());
                    return Ok(name);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        unreachable!("some suffix is free")
    }

    /// Move whatever is at `target` (a path under `--dest`) to this run's folder, under the same relative
    /// path. `Ok(None)` when there is nothing there. Returns the folder whose entries changed in history,
    /// to be made durable with the others of the batch.
    pub fn move_aside(&self, target: &Path) -> io::Result<Option<PathBuf>> {
        let id = self.claim()?;
        self.move_into(target, &id)
    }

    /// `move_aside` into `<history>/<folder>` (this run's folder, or its `.changed-locally` twin).
    fn move_into(&self, target: &Path, folder: &str) -> io::Result<Option<PathBuf>> {
        match fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() => Err(io::Error::other(format!(
                "{} is a directory",
                target.display()
            ))),
            Ok(_) => {
                let rel = target
                    .strip_prefix(&self.dest)
                    .map_err(|_| io::Error::other("not under the destination"))?;
                let to = self.root.join(folder).join(rel);
                let parent = to.parent().expect("joined onto the run folder");
                let named = |e: io::Error| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "moving {} to history {}: {e}",
                            target.display(),
                            to.display()
                        ),
                    )
                };
                self.make_dirs(parent).map_err(named)?;
                fs::rename(target, &to).map_err(named)?;
                Ok(Some(parent.to_path_buf()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Keep the file at `target` as a version, if it is one: what the backup wrote (`row`: its size, and
    /// its CRC64NVME when recorded, read back now; without one, its mtime too) and not the same bytes as
    /// the version that replaces it (`new`). A file with no row (written before the catalog) is taken as
    /// it is. A file that is no version is set aside, never removed. A touched mtime alone does not make
    /// a file with a checksum any less the version it was.
    pub fn keep_old(
        &self,
        target: &Path,
        row: Option<&Entry>,
        new: Option<&Entry>,
    ) -> io::Result<Aside> {
        // A folder on the way that is a link (or no folder) leads out of `--dest`: what is there is no
        // file the backup wrote, and nothing is moved through it.
        if !crate::plan::under_real_dirs(&self.dest, target) {
            return Ok(Aside::Nothing);
        }
        let meta = match fs::symlink_metadata(target) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Aside::Nothing),
            Err(e) => return Err(e),
        };
        // A user's folder where the file was: not the backup's, left alone.
        if meta.is_dir() {
            return Ok(Aside::Nothing);
        }
        if !meta.is_file() {
            return self.set_aside(target);
        }
        if let Some(row) = row {
            if meta.len() != row.size {
                return self.set_aside(target);
            }
            let same_mtime =
                row.last_modified.is_none() || meta.modified().ok() == row.last_modified;
            let same_object = new.is_some_and(|n| n.etag.is_some() && n.etag == row.etag);
            match row.crc64nvme {
                // The bytes decide, whatever a mark says (a verify while the volume was away marks
                // every row; the files are intact once it is back).
                Some(want) => {
                    let mut buf = vec![0u8; 1 << 20];
                    let read = fs::File::open(target)
                        .and_then(|f| crate::verify::crc64_of_reader(f, &mut buf));
                    let (got, len) = match read {
                        Ok(read) => read,
                        // Nothing to vouch for it with, yet it may be all there is: set aside (a
                        // rename needs no read permission).
                        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                            return self.set_aside(target);
                        }
                        Err(e) => return Err(e),
                    };
                    if got != want || len != row.size {
                        return self.set_aside(target);
                    }
                    if same_object || new.is_some_and(|n| n.crc64nvme == Some(got)) {
                        return Ok(Aside::Same);
                    }
                }
                None if row.damaged || !same_mtime => return self.set_aside(target),
                None if same_object => return Ok(Aside::Same),
                None => {}
            }
        }
        Ok(match self.move_aside(target)? {
            Some(dir) => Aside::Kept(dir),
            None => Aside::Nothing,
        })
    }

    /// The catalog's row for the version `keep_old` (or a deletion) just moved from `target` into this
    /// run's folder: what the backup recorded of it (`row`; none without one), current
    /// until `until` (the replacement's LastModified), or until this run found it gone. Either is only a
    /// bound (`exact` false) until a versioned listing settles it (`Catalog::settle_held`).
    pub fn held_row(
        &self,
        target: &Path,
        row: Option<&Entry>,
        until: Option<SystemTime>,
    ) -> Option<Held> {
        // A file with no row is kept as it is (it may be a version from before the catalog, or a
        // user's own), but the catalog does not vouch for it as a version the bucket held.
        let row = row?;
        let rel = target.strip_prefix(&self.dest).ok()?.to_str()?;
        let file = format!("{}/{rel}", self.run_id()?);
        let (size, last_modified) = (row.size, row.last_modified);
        let row = Some(row);
        Some(Held {
            file,
            key: rel.to_owned(),
            version_id: row.and_then(|r| r.version_id.clone()),
            size,
            last_modified,
            until: until.unwrap_or(self.started).min(self.started),
            exact: false,
            etag: row.and_then(|r| r.etag.clone()),
            crc64nvme: row.and_then(|r| r.crc64nvme),
            followed_by: None,
            damaged: false,
        })
    }

    /// Where a noncurrent version of `key` that stopped being current at `until` goes: `<folder>/<key>`
    /// under the history folder, the folder named for that second (`runid::format`), with a `-2`,
    /// `-3`, ... suffix when that path is taken (two versions of one key can stop being current in the
    /// same second) on disk, in the catalog (`taken`) or by this run already (`claimed`).
    pub fn version_file(
        &self,
        key: &str,
        until: SystemTime,
        taken: impl Fn(&str) -> bool,
    ) -> String {
        let base = runid::format(until);
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        for n in 1u32.. {
            let folder = match n {
                1 => base.clone(),
                n => format!("{base}-{n}"),
            };
            let file = format!("{folder}/{key}");
            // Taken also where a key and a key under it as a folder (`a`, `a/b`) meet in one folder:
            // a file on the way, or a folder at the path, on disk or claimed by this run.
            let blocked = claimed.iter().any(|c| {
                c == &file
                    || file.starts_with(&format!("{c}/"))
                    || c.starts_with(&format!("{file}/"))
            }) || fs::symlink_metadata(self.root.join(&file)).is_ok()
                || Path::new(&file)
                    .ancestors()
                    .skip(1)
                    .filter(|a| !a.as_os_str().is_empty())
                    .any(|a| fs::symlink_metadata(self.root.join(a)).is_ok_and(|m| !m.is_dir()))
                || taken(&file);
            if blocked {
                continue;
            }
            claimed.insert(file.clone());
            return file;
        }
        unreachable!("some suffix is free")
    }

    fn set_aside(&self, target: &Path) -> io::Result<Aside> {
        let folder = format!("{}{CHANGED_LOCALLY}", self.claim()?);
        Ok(match self.move_into(target, &folder)? {
            Some(dir) => Aside::SetAside(dir),
            None => Aside::Nothing,
        })
    }

    /// Undo `keep_old` for `target` (its replacement could not be installed), best effort: should it
    /// fail, the old file stays in history, which is still not a loss.
    pub fn put_back(&self, target: &Path, aside: &Aside) {
        let Some(id) = self.run_id() else { return };
        let folder = match aside {
            Aside::Kept(_) => id,
            Aside::SetAside(_) => format!("{id}{CHANGED_LOCALLY}"),
            Aside::Nothing | Aside::Same => return,
        };
        if let Ok(rel) = target.strip_prefix(&self.dest) {
            let _ = fs::rename(self.root.join(folder).join(rel), target);
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

    /// Remove the run folders (names that are exactly run ids: `runid::parse`) older than `keep_days`
    /// (0: keep all). Anything else in the history folder is left alone; a folder that cannot be removed
    /// is named in `failed` and the others are still removed.
    pub fn prune(&self, now: SystemTime, keep_days: u32) -> io::Result<Pruned> {
        let mut out = Pruned::default();
        for path in expired_runs(&self.root, now, keep_days)? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if Some(name.strip_suffix(CHANGED_LOCALLY).unwrap_or(name)) == self.run_id().as_deref()
            {
                continue;
            }
            match fs::remove_dir_all(&path) {
                Ok(()) => {
                    out.removed += 1;
                    out.folders.push(name.to_owned());
                }
                Err(e) => out.failed.push(format!("removing {}: {e}", path.display())),
            }
        }
        if out.removed > 0 {
            // (Not atomic::sync_dir: atomic depends on this module, not the other way round.)
            fs::File::open(&self.root)?.sync_all()?;
        }
        Ok(out)
    }
}

/// The versions in the run folders of a history written before the catalog indexed it: each file of
/// each run folder (not its `.changed-locally` twin), current from its mtime (the LastModified the
/// backup gave it) until that run (only a bound: `exact` false). Links and other odd files are no
/// version the backup moved there, and are left out.
pub fn adoptable(root: &Path) -> io::Result<Vec<Held>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(run) = runid::parse(&name) else {
            continue;
        };
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        for f in walkdir::WalkDir::new(entry.path())
            .min_depth(1)
            .follow_links(false)
        {
            let f = f.map_err(io::Error::other)?;
            if !f.file_type().is_file() {
                continue;
            }
            let is_temp = f
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(TEMP_PREFIX));
            let Some(key) = f
                .path()
                .strip_prefix(entry.path())
                .ok()
                .and_then(Path::to_str)
            else {
                continue;
            };
            if is_temp {
                continue;
            }
            let m = f.metadata().map_err(io::Error::other)?;
            out.push(Held {
                file: format!("{name}/{key}"),
                key: key.to_owned(),
                version_id: None,
                size: m.len(),
                last_modified: m.modified().ok(),
                until: run,
                exact: false,
                etag: None,
                crc64nvme: None,
                followed_by: None,
                damaged: false,
            });
        }
    }
    Ok(out)
}

/// The run folders (real folders, not links, named exactly as a run) under `root` that started more
/// than `keep_days` before `now`; none for 0 (keep all) or a history folder not made yet.
pub fn expired_runs(root: &Path, now: SystemTime, keep_days: u32) -> io::Result<Vec<PathBuf>> {
    if keep_days == 0 {
        return Ok(Vec::new());
    }
    let cutoff = now - Duration::from_secs(u64::from(keep_days) * 86_400);
    let entries = match fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let run = name
            .to_str()
            .map(|n| n.strip_suffix(CHANGED_LOCALLY).unwrap_or(n));
        let Some(started) = run.and_then(runid::parse) else {
            continue; // not ours: left alone
        };
        if started < cutoff && entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Remove the empty directories from `dir` up to (not including) `dest`: the folders a deletion
/// emptied, so that an object named like one of them can be backed up. Stops at the first that is not
/// empty, not removable, or to be kept (`keep`: its folder marker is still in the bucket); returns the
/// parent of the last one removed, whose entries changed.
pub fn remove_empty_dirs(dest: &Path, dir: &Path, keep: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let mut here = dir;
    let mut changed = None;
    if !crate::plan::under_real_dirs(dest, &dir.join("x")) {
        return None;
    }
    while here != dest && here.starts_with(dest) {
        if keep(here) || fs::remove_dir(here).is_err() {
            break;
        }
        let parent = here.parent()?;
        changed = Some(parent.to_path_buf());
        here = parent;
    }
    changed
}

/// Create a file in `dest`, rename it into `dir` (the history folder, or the nearest existing ancestor
/// of one not made yet) and remove it: proves renames work between them. A probe left by a kill has our
/// temp prefix in both places (the destination's sweep removes it there; the next open of the history
/// folder removes it here, `sweep`).
fn probe_rename(dest: &Path, dir: &Path, sweep: bool) -> io::Result<()> {
    if sweep && let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(TEMP_PREFIX))
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let probe = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .rand_bytes(12)
        .tempfile_in(dest)?;
    let to = dir.join(probe.path().file_name().expect("a temp file has a name"));
    fs::rename(probe.path(), &to)?;
    fs::remove_file(&to)
}

/// `20261130T031705Z`: the run's UTC start time.
pub fn run_id(t: SystemTime) -> String {
    runid::format(t)
}

/// The start time a run folder's name gives, if it is exactly one (see `runid::parse`).
pub fn parse_run_id(name: &str) -> Option<SystemTime> {
    runid::parse(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

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
        fs::write(dest.join("g"), b"g").unwrap();
        h2.move_aside(&dest.join("g")).unwrap();
        assert_eq!(h2.run_id(), Some(format!("{}-2", run_id(now))));
        // A run that only set a file aside still claims its id: the next one of the second does not
        // share its twin folder.
        // A row of 9 bytes: the 1-byte file at "x" is not as written.
        let nine = Entry {
            key: "x".into(),
            size: 9,
            last_modified: None,
            etag: None,
            crc64nvme: None,
            damaged: false,
            version_id: None,
        };
        let h3 = History::open(&d.path().join("hist"), &dest, now).unwrap();
        fs::write(dest.join("x"), b"x").unwrap();
        assert!(matches!(
            h3.keep_old(&dest.join("x"), Some(&nine), None).unwrap(),
            Aside::SetAside(_)
        ));
        let h4 = History::open(&d.path().join("hist"), &dest, now).unwrap();
        fs::write(dest.join("x"), b"y").unwrap();
        h4.keep_old(&dest.join("x"), Some(&nine), None).unwrap();
        assert_eq!(h3.run_id(), Some(format!("{}-3", run_id(now))));
        assert_eq!(h4.run_id(), Some(format!("{}-4", run_id(now))));
        // An old run folder goes, a young one and strangers stay (even ones that start like a run id).
        let old = run_id(now - Duration::from_secs(31 * 86_400));
        fs::create_dir_all(d.path().join("hist").join(&old).join("x")).unwrap();
        fs::create_dir_all(d.path().join("hist").join(format!("{old}-3"))).unwrap();
        fs::create_dir_all(d.path().join("hist/notes")).unwrap();
        let mine = d
            .path()
            .join("hist")
            .join(format!("{old}-before-migration"));
        fs::create_dir_all(&mine).unwrap();
        fs::write(mine.join("keep.txt"), b"mine").unwrap();
        fs::create_dir_all(d.path().join("hist/202é101T000000Z")).unwrap();
        fs::create_dir_all(
            d.path()
                .join("hist")
                .join(format!("{old}{CHANGED_LOCALLY}")),
        )
        .unwrap();
        fs::create_dir_all(d.path().join("hist").join(format!("{old}.other"))).unwrap();
        assert_eq!(h.prune(now, 30).unwrap().removed, 3);
        assert!(d.path().join("hist").join(format!("{old}.other")).exists());
        assert_eq!(h.prune(now, 0).unwrap().removed, 0);
        assert!(mine.join("keep.txt").exists());
        assert!(d.path().join("hist/202é101T000000Z").exists());
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
        assert!(
            !dest.join("h").exists(),
            "a refused history folder is not created"
        );
        // A dangling symlink is named as one.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(d.path().join("gone"), &link).unwrap();
        let e = History::open(&link, &dest, now).unwrap_err();
        assert!(e.contains("does not exist") && e.contains("gone"), "{e}");
    }

    #[test]
    fn emptied_folders_go_up_to_the_first_that_is_not_empty() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path();
        fs::create_dir_all(dest.join("a/b/c")).unwrap();
        fs::write(dest.join("a/keep"), b"x").unwrap();
        assert_eq!(
            remove_empty_dirs(dest, &dest.join("a/b/c"), |_| false),
            Some(dest.join("a"))
        );
        assert!(!dest.join("a/b").exists() && dest.join("a/keep").exists());
        assert_eq!(remove_empty_dirs(dest, dest, |_| false), None);
        fs::create_dir_all(dest.join("m/n")).unwrap();
        let marked = dest.join("m");
        assert_eq!(
            remove_empty_dirs(dest, &dest.join("m/n"), |d| d == marked),
            Some(dest.join("m"))
        );
        assert!(dest.join("m").exists(), "a folder with a marker stays");
    }
}
