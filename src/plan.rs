//! Per-object decision against the destination: fetch, skip as unchanged, make a folder, or refuse.
//!
//! Runs on a blocking thread, one listing page at a time, in listing order. Owns the file/prefix conflict
//! rule: S3 lists keys in byte order, so a file key `a` always comes before every `a/...` key; the first one
//! listed wins, on every run, and a file already on disk is never displaced.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::catalog::{Catalog, CatalogError, Entry};
use crate::keypath::{Mapping, RefuseReason, map_key};
use crate::listing::ObjectInfo;

#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Download into `dest/<path>`.
    Fetch(PathBuf),
    /// The local copy has the object's size and LastModified, and the catalog its ETag (or no row).
    Unchanged,
    /// A folder marker whose directory exists now (created or already there).
    Folder,
    Refused(RefuseReason),
    /// A local error while deciding (e.g. permission denied on a directory): reported as a failure.
    Error(String),
}

/// Remembers, in bounded memory, the file keys that are prefixes of the current key.
///
/// Keys sharing a prefix are contiguous in byte order, so once a stacked key is no longer a prefix of the
/// current key it never will be again and can be dropped: the stack never holds more than one entry per
/// path depth.
pub struct Planner {
    files: Vec<String>,
    last_checked_parent: Option<PathBuf>,
    /// False for a dry run: folder markers are then only checked, never created.
    create_folders: bool,
    catalog: Option<Catalog>,
    /// Rows to write: files from before the catalog (or whose row a crash lost), taken as they are,
    /// and files given a new LastModified as mtime; recorded by `record_adopted` once per page.
    adopted: Vec<Entry>,
}

impl Planner {
    pub fn new(create_folders: bool, catalog: Option<Catalog>) -> Planner {
        Planner {
            files: Vec::new(),
            last_checked_parent: None,
            create_folders,
            catalog,
            adopted: Vec::new(),
        }
    }

    /// Note `keys` as listed this run (for the deletions a complete listing reveals).
    pub fn mark_seen<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), CatalogError> {
        match &self.catalog {
            Some(c) => c.mark_seen(keys),
            None => Ok(()),
        }
    }

    /// Write the rows of the files adopted since the last call (none in a dry run: nothing is written).
    pub fn record_adopted(&mut self) -> Result<usize, CatalogError> {
        let adopted = std::mem::take(&mut self.adopted);
        match &self.catalog {
            Some(c) if self.create_folders => c.record(&adopted).map(|()| adopted.len()),
            _ => Ok(0),
        }
    }

    pub fn plan(&mut self, dest: &Path, obj: &ObjectInfo) -> Plan {
        let mapping = map_key(&obj.key, obj.size);
        let (rel, is_file) = match &mapping {
            Mapping::File(p) => (p, true),
            Mapping::FolderMarker(p) => (p, false),
            Mapping::Refused(r) => return Plan::Refused(r.clone()),
        };
        let rel_str = rel.to_str().expect("keys are UTF-8");
        while let Some(top) = self.files.last() {
            if rel_str.starts_with(top.as_str()) {
                break;
            }
            self.files.pop();
        }
        if let Some(parent) = self.files.iter().find(|f| is_strict_ancestor(f, rel_str)) {
            return Plan::Refused(RefuseReason::ParentIsFile(parent.clone()));
        }
        if !is_file && self.files.last().is_some_and(|f| f == rel_str) {
            return Plan::Refused(RefuseReason::MarkerOverFile);
        }
        if let Err(r) = self.check_ancestors_on_disk(dest, rel) {
            return r;
        }
        let plan = if is_file {
            match local_file_plan(&dest.join(rel), obj, rel) {
                Plan::Unchanged => self.check_catalog(obj, rel),
                Plan::Fetch(rel) => self.retime_if_same_bytes(dest, obj, rel),
                plan => plan,
            }
        } else {
            let plan = folder_plan(dest, rel, self.create_folders);
            if plan == Plan::Folder {
                self.note_folder(obj);
            }
            plan
        };
        if is_file && !matches!(plan, Plan::Refused(_)) {
            self.files.push(rel_str.to_owned());
        }
        plan
    }

    /// Size and mtime match; the ETag decides. A file with no row is adopted: before the catalog, size and
    /// mtime were all there was, and downloading the whole backup again to learn its ETags would cost
    /// more than the rare same-second overwrite it could find.
    fn check_catalog(&mut self, obj: &ObjectInfo, rel: &Path) -> Plan {
        let Some(catalog) = &self.catalog else {
            return Plan::Unchanged;
        };
        match catalog.get(&obj.key) {
            Ok(Some(row)) if row.etag == obj.etag && !row.damaged => {
                // Backed up before `--versions`: the row learns the VersionId it holds (once).
                if row.version_id.is_none() && obj.version_id.is_some() {
                    self.adopted.push(Entry {
                        version_id: obj.version_id.clone(),
                        ..row
                    });
                }
                Plan::Unchanged
            }
            Ok(Some(_)) => Plan::Fetch(rel.to_path_buf()),
            Ok(None) => {
                self.adopted.push(entry_of(obj, None));
                Plan::Unchanged
            }
            Err(e) => Plan::Error(e.to_string()),
        }
    }

    /// A folder marker is a key too: its row lets `restore` put it back and `verify` look for it.
    fn note_folder(&mut self, obj: &ObjectInfo) {
        if let Some(c) = &self.catalog
            && !c
                .get(&obj.key)
                .is_ok_and(|row| row.is_some_and(|r| r.etag == obj.etag && !r.damaged))
        {
            self.adopted.push(entry_of(obj, None));
        }
    }

    /// The object's LastModified moved but its bytes did not: a copy onto itself, e.g. to change the
    /// storage class (which is how objects reach GLACIER by hand), keeps the ETag and the size. When the
    /// file is exactly as the backup wrote it (its mtime is the recorded LastModified) and the ETag is the
    /// recorded one, only the mtime is brought up to date: no download, and an object that is archived
    /// now stays backed up rather than becoming unreadable. A file changed locally since (another mtime)
    /// is fetched as before.
    fn retime_if_same_bytes(&mut self, dest: &Path, obj: &ObjectInfo, rel: PathBuf) -> Plan {
        let (Some(catalog), Some(listed_mtime), Some(_)) =
            (&self.catalog, obj.last_modified, &obj.etag)
        else {
            return Plan::Fetch(rel);
        };
        let path = dest.join(&rel);
        let Ok(m) = fs::symlink_metadata(&path) else {
            return Plan::Fetch(rel);
        };
        let row = match catalog.get(&obj.key) {
            Ok(Some(row))
                if m.is_file()
                    && !row.damaged
                    && m.len() == obj.size
                    && row.size == obj.size
                    && row.etag == obj.etag
                    && row.last_modified.is_some()
                    && m.modified().ok() == row.last_modified =>
            {
                row
            }
            _ => return Plan::Fetch(rel),
        };
        if self.create_folders {
            let set = fs::File::open(&path).and_then(|f| f.set_modified(listed_mtime));
            if let Err(e) = set {
                tracing::debug!(key = ?obj.key, "could not set the new mtime ({e}): fetching it");
                return Plan::Fetch(rel);
            }
            tracing::debug!(key = ?obj.key, "same ETag and size, new LastModified: mtime updated");
            self.adopted.push(entry_of(obj, row.crc64nvme));
        }
        Plan::Unchanged
    }

    /// Every existing ancestor of `rel` under `dest` must be a real directory: a file there would be
    /// displaced, and a symlink there could lead outside `dest`.
    fn check_ancestors_on_disk(&mut self, dest: &Path, rel: &Path) -> Result<(), Plan> {
        let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(());
        };
        if self.last_checked_parent.as_deref() == Some(parent) {
            return Ok(());
        }
        let mut here = dest.to_path_buf();
        for comp in parent.components() {
            here.push(comp);
            match fs::symlink_metadata(&here) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    let shown = here.strip_prefix(dest).unwrap_or(&here);
                    return Err(Plan::Refused(RefuseReason::ParentNotDirOnDisk(
                        shown.display().to_string(),
                    )));
                }
                // Not there yet: nothing below it exists either, and it will be created as a directory.
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => {
                    return Err(Plan::Error(format!("{}: {e}", here.display())));
                }
            }
        }
        self.last_checked_parent = Some(parent.to_path_buf());
        Ok(())
    }
}

/// A row for `obj` as listed, with the checksum of its bytes when known.
fn entry_of(obj: &ObjectInfo, crc64nvme: Option<u64>) -> Entry {
    Entry {
        key: obj.key.clone(),
        size: obj.size,
        last_modified: obj.last_modified,
        etag: obj.etag.clone(),
        crc64nvme,
        damaged: false,
        version_id: obj.version_id.clone(),
    }
}

fn is_strict_ancestor(file: &str, rel: &str) -> bool {
    rel.len() > file.len() && rel.starts_with(file) && rel.as_bytes()[file.len()] == b'/'
}

fn local_file_plan(target: &Path, obj: &ObjectInfo, rel: &Path) -> Plan {
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => Plan::Refused(RefuseReason::IsDirOnDisk),
        Ok(m) if m.is_file() && is_current(&m, obj) => Plan::Unchanged,
        // Anything else (stale file, symlink, fifo) is replaced atomically by rename.
        Ok(_) => Plan::Fetch(rel.to_path_buf()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Plan::Fetch(rel.to_path_buf()),
        Err(e) => Plan::Error(format!("{}: {e}", target.display())),
    }
}

/// Size and LastModified-as-mtime: a same-size overwrite in S3 changes LastModified, so it is fetched.
pub fn is_current(m: &fs::Metadata, obj: &ObjectInfo) -> bool {
    let Some(lm) = obj.last_modified else {
        return false;
    };
    m.len() == obj.size && m.modified().ok() == Some(lm)
}

fn folder_plan(dest: &Path, rel: &Path, create: bool) -> Plan {
    let target = dest.join(rel);
    match fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => Plan::Folder,
        Ok(_) => Plan::Refused(RefuseReason::MarkerOverFile),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !create => Plan::Folder,
        Err(e) if e.kind() == io::ErrorKind::NotFound => match create_dirs(dest, rel) {
            Ok(()) => Plan::Folder,
            Err(e) => Plan::Error(format!("{}: {e}", target.display())),
        },
        Err(e) => Plan::Error(format!("{}: {e}", target.display())),
    }
}

/// Whether every folder from `root` (not included) down to `path`'s parent is a real directory: no
/// link (which could lead out of `root`), no file, nothing missing. What is found through anything else
/// is no file the backup wrote there.
pub fn under_real_dirs(root: &Path, path: &Path) -> bool {
    let Some(rel) = path.parent().and_then(|p| p.strip_prefix(root).ok()) else {
        return false;
    };
    let mut here = root.to_path_buf();
    rel.components().all(|c| {
        here.push(c);
        fs::symlink_metadata(&here).is_ok_and(|m| m.is_dir())
    })
}

/// Create `dest/<rel>` and any missing ancestors, owner-only (the umask still applies), and make each new
/// entry durable in its parent.
pub fn create_dirs(dest: &Path, rel: &Path) -> io::Result<()> {
    let mut here = dest.to_path_buf();
    for comp in rel.components() {
        here.push(comp);
        match fs::DirBuilder::new().mode(0o700).create(&here) {
            Ok(()) => {
                let parent = here.parent().expect("joined onto dest");
                fs::File::open(parent)?.sync_all()?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !fs::symlink_metadata(&here)?.is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{} exists and is not a directory", here.display()),
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn obj(key: &str, size: u64) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            size,
            etag: Some("\"e1\"".into()),
            last_modified: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            checksum_type: None,
            version_id: None,
        }
    }

    #[test]
    fn first_listed_file_wins_over_prefix() {
        let d = tempfile::tempdir().unwrap();
        let mut p = Planner::new(true, None);
        assert_eq!(p.plan(d.path(), &obj("a", 1)), Plan::Fetch("a".into()));
        assert_eq!(p.plan(d.path(), &obj("a-b", 1)), Plan::Fetch("a-b".into()));
        assert_eq!(
            p.plan(d.path(), &obj("a/b", 1)),
            Plan::Refused(RefuseReason::ParentIsFile("a".into()))
        );
        assert_eq!(
            p.plan(d.path(), &obj("a/c/d", 1)),
            Plan::Refused(RefuseReason::ParentIsFile("a".into()))
        );
        assert_eq!(
            p.plan(d.path(), &obj("ab/c", 1)),
            Plan::Fetch("ab/c".into())
        );
        assert_eq!(p.plan(d.path(), &obj("b/", 0)), Plan::Folder);
        assert!(d.path().join("b").is_dir());
    }

    #[test]
    fn marker_never_displaces_file() {
        let d = tempfile::tempdir().unwrap();
        let mut p = Planner::new(true, None);
        assert_eq!(p.plan(d.path(), &obj("a", 1)), Plan::Fetch("a".into()));
        assert_eq!(
            p.plan(d.path(), &obj("a/", 0)),
            Plan::Refused(RefuseReason::MarkerOverFile)
        );
        fs::write(d.path().join("f"), b"x").unwrap();
        let mut p = Planner::new(true, None);
        assert_eq!(
            p.plan(d.path(), &obj("f/", 0)),
            Plan::Refused(RefuseReason::MarkerOverFile)
        );
        assert!(d.path().join("f").is_file());
    }

    #[test]
    fn existing_local_file_is_never_displaced_by_a_new_prefix() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("old"), b"kept").unwrap();
        let mut p = Planner::new(true, None);
        assert_eq!(
            p.plan(d.path(), &obj("old/new", 1)),
            Plan::Refused(RefuseReason::ParentNotDirOnDisk("old".into()))
        );
        fs::create_dir(d.path().join("dir")).unwrap();
        assert_eq!(
            p.plan(d.path(), &obj("dir", 1)),
            Plan::Refused(RefuseReason::IsDirOnDisk)
        );
    }

    #[test]
    fn symlinked_ancestor_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
        let mut p = Planner::new(true, None);
        assert_eq!(
            p.plan(d.path(), &obj("link/x", 1)),
            Plan::Refused(RefuseReason::ParentNotDirOnDisk("link".into()))
        );
    }

    #[test]
    fn unchanged_needs_size_and_mtime() {
        let d = tempfile::tempdir().unwrap();
        let o = obj("f", 3);
        let path = d.path().join("f");
        fs::write(&path, b"abc").unwrap();
        let mut p = Planner::new(true, None);
        assert_eq!(p.plan(d.path(), &o), Plan::Fetch("f".into()));
        let f = fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(o.last_modified.unwrap()).unwrap();
        assert_eq!(p.plan(d.path(), &o), Plan::Unchanged);
        // Same size, newer LastModified (a same-size overwrite): fetched again.
        let mut newer = o.clone();
        newer.last_modified = Some(o.last_modified.unwrap() + Duration::from_secs(1));
        assert_eq!(p.plan(d.path(), &newer), Plan::Fetch("f".into()));
        let mut bigger = o.clone();
        bigger.size = 4;
        assert_eq!(p.plan(d.path(), &bigger), Plan::Fetch("f".into()));
    }

    /// `path` holding `body`, with `mtime`.
    fn file_at(path: &Path, body: &[u8], mtime: std::time::SystemTime) -> fs::File {
        fs::write(path, body).unwrap();
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_modified(mtime).unwrap();
        f
    }

    #[test]
    fn a_different_etag_is_a_change_whatever_size_and_mtime_say() {
        let d = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(state.path()).unwrap();
        let o = obj("f", 3);
        file_at(&d.path().join("f"), b"abc", o.last_modified.unwrap());
        let mut p = Planner::new(true, Some(catalog.clone()));
        // No row yet: adopted as it is, and recorded with the listed ETag.
        assert_eq!(p.plan(d.path(), &o), Plan::Unchanged);
        assert_eq!(p.record_adopted().unwrap(), 1);
        assert_eq!(catalog.get("f").unwrap(), Some(entry_of(&o, None)));
        assert_eq!(p.plan(d.path(), &o), Plan::Unchanged);
        assert_eq!(p.record_adopted().unwrap(), 0);
        // Same size, same second, new ETag: the overwrite S3 made.
        let mut same_second = o.clone();
        same_second.etag = Some("\"e2\"".into());
        assert_eq!(p.plan(d.path(), &same_second), Plan::Fetch("f".into()));
        // A dry run reads the catalog but records nothing.
        let mut dry = Planner::new(false, Some(catalog.clone()));
        file_at(&d.path().join("g"), b"abc", o.last_modified.unwrap());
        assert_eq!(dry.plan(d.path(), &obj("g", 3)), Plan::Unchanged);
        assert_eq!(dry.record_adopted().unwrap(), 0);
        assert_eq!(catalog.get("g").unwrap(), None);
    }

    #[test]
    fn a_new_last_modified_with_the_recorded_etag_only_moves_the_mtime() {
        let d = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(state.path()).unwrap();
        let o = obj("f", 3);
        let path = d.path().join("f");
        let f = file_at(&path, b"abc", o.last_modified.unwrap());
        catalog.record(&[entry_of(&o, Some(42))]).unwrap();
        let mut copied = o.clone();
        copied.last_modified = Some(o.last_modified.unwrap() + Duration::from_secs(86_400));
        // A dry run says unchanged and touches nothing.
        let mut dry = Planner::new(false, Some(catalog.clone()));
        assert_eq!(dry.plan(d.path(), &copied), Plan::Unchanged);
        assert_eq!(
            fs::metadata(&path).unwrap().modified().unwrap(),
            o.last_modified.unwrap()
        );
        let mut p = Planner::new(true, Some(catalog.clone()));
        assert_eq!(p.plan(d.path(), &copied), Plan::Unchanged);
        p.record_adopted().unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().modified().unwrap(),
            copied.last_modified.unwrap()
        );
        assert_eq!(catalog.get("f").unwrap(), Some(entry_of(&copied, Some(42))));
        assert_eq!(fs::read(&path).unwrap(), b"abc");
        // Another ETag, or a file changed locally since it was written: fetched.
        let mut other = copied.clone();
        other.last_modified = Some(o.last_modified.unwrap() + Duration::from_secs(2 * 86_400));
        other.etag = Some("\"e9\"".into());
        assert_eq!(p.plan(d.path(), &other), Plan::Fetch("f".into()));
        other.etag = copied.etag.clone();
        f.set_modified(o.last_modified.unwrap() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(p.plan(d.path(), &other), Plan::Fetch("f".into()));
    }
}
