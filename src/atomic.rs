//! Atomic installation of a downloaded file: temp file in the target's own directory → mtime → data
//! durable → rename over the target → directory durable (per file, or batched by `Committer`). Also the
//! sweep of temp files a killed run left.
//!
//! `Committer` also checks the MD5s that downloads leave to it: a batch is where many small files meet,
//! so their digests can share the SIMD lanes of one hasher (`verify::md5_of_ranges`).
//!
//! A final path only ever holds a complete, verified file: until `commit`, the bytes live under a
//! `.s3backup.tmp.*` name (fixed length, so a 255-byte target name still fits), which `Drop` removes.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tempfile::NamedTempFile;
use tokio::sync::{mpsc, oneshot};

use crate::catalog::{Catalog, Entry, Held};
use crate::history::{Aside, History};
use crate::keypath::TEMP_PREFIX;
use crate::verify::{self, Md5Check, Mismatch};

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

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Make the bytes durable and put them at the final path (one file: fsync, rename, fsync dir).
    pub fn commit(self, expected_len: u64, mtime: Option<SystemTime>) -> io::Result<()> {
        self.finish(expected_len, mtime)?;
        self.tmp.as_file().sync_all()?;
        let dir = self.install(false)?;
        sync_dir(&dir)
    }

    /// Check the length and set the mtime: everything but durability and the rename.
    fn finish(&self, expected_len: u64, mtime: Option<SystemTime>) -> io::Result<()> {
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
        Ok(())
    }

    /// Rename over the target (or, `noclobber`, only where nothing is); returns the directory whose
    /// entry changed.
    fn install(self, noclobber: bool) -> io::Result<PathBuf> {
        let target = self.target;
        if noclobber {
            self.tmp.persist_noclobber(&target).map_err(|e| e.error)?;
        } else {
            self.tmp.persist(&target).map_err(|e| e.error)?;
        }
        Ok(target
            .parent()
            .expect("targets have a parent")
            .to_path_buf())
    }
}

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The file does not hash to the MD5 (or multipart ETag) S3 gave for it: worth downloading again.
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What a committed file is to the catalog.
#[derive(Debug, Clone)]
pub enum Row {
    /// The current version, installed under `--dest` over whatever was there (which history keeps).
    Current(Entry),
    /// A noncurrent version, installed in history where nothing is.
    Held(Held),
}

impl Row {
    fn current(&self) -> Option<&Entry> {
        match self {
            Row::Current(e) => Some(e),
            Row::Held(_) => None,
        }
    }
}

/// Commits staged files in batches, keeping the order that makes them crash-safe (data durable before
/// the rename, the rename durable before success is reported) while paying for durability once per
/// batch: one `syncfs` per file system for all the files' data, one fsync per directory for all the
/// renames in it, instead of two fsyncs per file.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

struct Job {
    staged: Staged,
    len: u64,
    mtime: Option<SystemTime>,
    /// What the file must hash to, checked before it is made durable.
    md5: Option<Md5Check>,
    /// The catalog row, written once the file is installed.
    entry: Option<Row>,
    /// Answered with what became of the version it replaced.
    done: oneshot::Sender<Result<Aside, CommitError>>,
}

impl Committer {
    /// Start the batching tasks: a batch closes at `max` files or `window` after its first file.
    ///
    /// Two stages, each a task that hands one batch at a time to the blocking pool: checking (length,
    /// mtime, MD5s), then durability and renames. So a batch's MD5s are hashed while the batch before
    /// it is being synced, rather than holding up the syncs. A panic in either would leave its jobs'
    /// senders dropped: their callers see an error.
    ///
    /// With a catalog, each batch's rows are written after its renames are durable and before any of
    /// its callers hears of success, so once every commit has answered, the catalog holds every file.
    ///
    /// With a history, whatever a file replaces is moved there (a rename) just before the new one is.
    pub fn spawn(
        max: usize,
        window: Duration,
        catalog: Option<Catalog>,
        history: Option<Arc<History>>,
    ) -> Committer {
        let (tx, mut rx) = mpsc::channel::<Job>(max * 2);
        let (checked_tx, mut checked_rx) = mpsc::channel::<Job>(max * 2);
        tokio::spawn(async move {
            // Kept across batches: a fresh MiB for every batch would cost its page faults each time.
            let mut scratch = Vec::new();
            while let Some(batch) = gather(&mut rx, max, window).await {
                let done = tokio::task::spawn_blocking(move || {
                    let checked = check_batch(batch, &mut scratch);
                    (checked, scratch)
                });
                let checked;
                (checked, scratch) = done.await.unwrap_or_default();
                for job in checked {
                    if checked_tx.send(job).await.is_err() {
                        return;
                    }
                }
            }
        });
        tokio::spawn(async move {
            // Checked jobs come a batch at a time: take what has arrived, without waiting for more.
            while let Some(batch) = gather(&mut checked_rx, max, Duration::ZERO).await {
                let (catalog, history) = (catalog.clone(), history.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    make_durable(batch, catalog.as_ref(), history.as_deref())
                })
                .await;
            }
        });
        Committer { tx }
    }

    /// Install `staged` once it is `len` bytes long, its mtime set, and (when given) its MD5s checked.
    pub async fn commit(
        &self,
        staged: Staged,
        len: u64,
        mtime: Option<SystemTime>,
        md5: Option<Md5Check>,
        entry: Option<Row>,
    ) -> Result<Aside, CommitError> {
        let (done, result) = oneshot::channel();
        let job = Job {
            staged,
            len,
            mtime,
            md5,
            entry,
            done,
        };
        let stopped = || CommitError::Io(io::Error::other("committer stopped"));
        self.tx.send(job).await.map_err(|_| stopped())?;
        result.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// The next batch: the first job, then up to `max` in all until `window` after it. `None` once closed.
async fn gather(rx: &mut mpsc::Receiver<Job>, max: usize, window: Duration) -> Option<Vec<Job>> {
    let mut batch = vec![rx.recv().await?];
    let deadline = tokio::time::Instant::now() + window;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(job)) => batch.push(job),
            _ => break,
        }
    }
    Some(batch)
}

/// The jobs of `batch` that pass; each one that fails is answered now (dropping it removes its
/// temp file).
fn check_batch(batch: Vec<Job>, scratch: &mut Vec<u8>) -> Vec<Job> {
    // 1. Length and mtime.
    let mut ready = Vec::with_capacity(batch.len());
    let mut to_hash = Vec::new();
    for job in batch {
        match job.staged.finish(job.len, job.mtime) {
            Ok(()) if job.md5.is_some() => to_hash.push(job),
            Ok(()) => ready.push(job),
            Err(e) => {
                let _ = job.done.send(Err(e.into()));
            }
        }
    }
    tracing::trace!(
        files = ready.len() + to_hash.len(),
        md5s = to_hash.len(),
        "commit batch"
    );
    // 2. MD5s, all files' (or parts') at once, read back from the page cache: a mismatch fails that
    // file alone.
    if !to_hash.is_empty() {
        let per_job: Vec<Vec<(u64, u64)>> = to_hash
            .iter()
            .map(|j| j.md5.as_ref().expect("partitioned on it").ranges(j.len))
            .collect();
        let ranges: Vec<_> = to_hash
            .iter()
            .zip(&per_job)
            .flat_map(|(j, rs)| rs.iter().map(|&(a, b)| (j.staged.file(), a, b)))
            .collect();
        match verify::md5_of_ranges(&ranges, scratch) {
            Ok(digests) => {
                let mut digests = &digests[..];
                for (job, rs) in to_hash.into_iter().zip(&per_job) {
                    let (mine, rest) = digests.split_at(rs.len());
                    digests = rest;
                    match job.md5.as_ref().expect("partitioned on it").check(mine) {
                        Ok(()) => ready.push(job),
                        Err(m) => {
                            let _ = job.done.send(Err(m.into()));
                        }
                    }
                }
            }
            Err(e) => {
                for job in to_hash {
                    let e = io::Error::new(e.kind(), format!("reading temp file back: {e}"));
                    let _ = job.done.send(Err(e.into()));
                }
            }
        }
    }
    ready
}

/// Make every job's data durable, rename it into place, make the renames durable, record the installed
/// files in the catalog; answer each job.
fn make_durable(ready: Vec<Job>, catalog: Option<&Catalog>, history: Option<&History>) {
    // 1. The data of every file durable: one syncfs per file system (a destination may span mounts).
    let mut synced_devs: Vec<(u64, io::Result<()>)> = Vec::new();
    let mut durable = Vec::with_capacity(ready.len());
    for job in ready {
        let file = job.staged.file();
        let synced = file.metadata().and_then(|m| {
            let dev = m.dev();
            if let Some((_, r)) = synced_devs.iter().find(|(d, _)| *d == dev) {
                return clone_result(r);
            }
            let r = syncfs(file);
            synced_devs.push((dev, clone_result(&r)));
            r
        });
        match synced {
            Ok(()) => durable.push(job),
            Err(e) => {
                let _ = job.done.send(Err(e.into()));
            }
        }
    }
    // 2. Rename each into place, then make each touched directory durable once.
    let mut kept: Vec<Held> = Vec::new();
    type Done = oneshot::Sender<Result<Aside, CommitError>>;
    let mut installed: Vec<(PathBuf, Aside, Option<Row>, Done)> = Vec::new();
    for job in durable {
        let noclobber = matches!(job.entry, Some(Row::Held(_)));
        // The old version goes to history first: from here on it is in one place or the other. Only a
        // version the bucket held is kept (see `History::keep_old`). A noncurrent version goes where
        // nothing is, and replaces nothing.
        let new = job.entry.as_ref().and_then(Row::current);
        let (aside, kept_row) = match history {
            Some(h) if !noclobber => {
                let row = match (catalog, new) {
                    (Some(c), Some(e)) => c.get(&e.key).map_err(io::Error::other),
                    _ => Ok(None),
                };
                match row.and_then(|row| {
                    let aside = h.keep_old(job.staged.target(), row.as_ref(), new)?;
                    // What the catalog is to know of the version history now holds.
                    let held = matches!(aside, Aside::Kept(_))
                        .then(|| {
                            let until = new.and_then(|n| n.last_modified);
                            h.held_row(job.staged.target(), row.as_ref(), until)
                        })
                        .flatten();
                    Ok((aside, held))
                }) {
                    Ok(kept) => kept,
                    Err(e) => {
                        let _ = job.done.send(Err(e.into()));
                        continue;
                    }
                }
            }
            _ => (Aside::Nothing, None),
        };
        let target = job.staged.target().to_path_buf();
        match job.staged.install(noclobber) {
            Ok(dir) => {
                kept.extend(kept_row);
                installed.push((dir, aside, job.entry, job.done));
            }
            Err(e) => {
                if let Some(h) = history {
                    h.put_back(&target, &aside);
                }
                let _ = job.done.send(Err(e.into()));
            }
        }
    }
    let mut dirs: Vec<(PathBuf, io::Result<()>)> = Vec::new();
    let mut sync_once = |dir: PathBuf| match dirs.iter().find(|(d, _)| *d == dir) {
        Some((_, r)) => clone_result(r),
        None => {
            let r = sync_dir(&dir);
            dirs.push((dir, clone_result(&r)));
            r
        }
    };
    let mut answers = Vec::with_capacity(installed.len());
    let mut entries = Vec::new();
    let mut held = kept;
    for (dir, aside, entry, done) in installed {
        let r = match &aside {
            Aside::Kept(kept) | Aside::SetAside(kept) => sync_once(kept.clone()),
            Aside::Nothing | Aside::Same => Ok(()),
        }
        .and_then(|()| sync_once(dir));
        if r.is_ok() {
            match entry {
                Some(Row::Current(e)) => entries.push(e),
                Some(Row::Held(h)) => held.push(h),
                None => {}
            }
        }
        answers.push((done, r.map(|()| aside)));
    }
    // 3. The catalog, only for files whose rename is durable. A failure here costs the next run a
    // download (the file is adopted, or its old row differs from the listing), never a wrong row.
    // A row that cannot be written is a failure of that file: it is in place, but the next run cannot
    // tell it from the old version (and fetches it again), and `verify` cannot check it.
    let unrecorded = match catalog.map(|c| c.record(&entries).and_then(|()| c.record_held(&held))) {
        Some(Err(e)) => Some(e.to_string()),
        _ => None,
    };
    for (done, r) in answers {
        let r = match (&unrecorded, r) {
            (Some(e), Ok(_)) => Err(io::Error::other(format!(
                "installed, but not recorded: {e}"
            ))),
            (_, r) => r,
        };
        let _ = done.send(r.map_err(Into::into));
    }
}

fn clone_result(r: &io::Result<()>) -> io::Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

/// Flush every dirty page of the file system holding `file` (Linux `syncfs(2)`).
fn syncfs(file: &File) -> io::Result<()> {
    // SAFETY: a valid open file descriptor, borrowed for the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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
    use md5::Digest;
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_commits_install_every_file_or_report_it() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        let state = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(state.path()).unwrap();
        let c = Committer::spawn(8, Duration::from_millis(20), Some(catalog.clone()), None);
        let mut waits = Vec::new();
        let fails = |i: i32| i % 5 == 0 || i % 7 == 0;
        for i in 0..20 {
            let target = d
                .path()
                .join(if i % 2 == 0 { "sub" } else { "." })
                .join(format!("f{i}"));
            let body = format!("file {i}");
            let s = Staged::create(&target).unwrap();
            s.file().write_all(body.as_bytes()).unwrap();
            // Every fifth one claims a wrong length, every seventh a wrong MD5, every third the
            // right one: a failure must fail that file alone, leaving no file behind.
            let len = if i % 5 == 0 { 99 } else { body.len() as u64 };
            let md5 = if i % 7 == 0 {
                Some(Md5Check::Whole(vec![0; 16]))
            } else if i % 3 == 0 {
                Some(Md5Check::Whole(md5::Md5::digest(&body).to_vec()))
            } else {
                None
            };
            let c = c.clone();
            let entry = Entry {
                key: format!("f{i}"),
                size: len,
                last_modified: None,
                etag: Some(format!("\"{i}\"")),
                crc64nvme: None,
                damaged: false,
                version_id: None,
            };
            waits.push(tokio::spawn(async move {
                (
                    i,
                    target,
                    c.commit(s, len, None, md5, Some(Row::Current(entry))).await,
                )
            }));
        }
        for w in waits {
            let (i, target, r) = w.await.unwrap();
            if fails(i) {
                let e = r.unwrap_err();
                if i % 5 != 0 {
                    assert!(matches!(e, CommitError::Mismatch(_)), "f{i}: {e}");
                }
                assert!(!target.exists());
            } else {
                r.unwrap();
                assert_eq!(fs::read_to_string(&target).unwrap(), format!("file {i}"));
            }
        }
        // Every installed file has its row, and no failed one has.
        let recorded: Vec<String> = catalog
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        let mut installed: Vec<String> = (0..20)
            .filter(|&i| !fails(i))
            .map(|i| format!("f{i}"))
            .collect();
        installed.sort();
        assert_eq!(recorded, installed);
        let temps = fs::read_dir(d.path().join("sub"))
            .unwrap()
            .chain(fs::read_dir(d.path()).unwrap());
        assert!(
            temps
                .filter_map(Result::ok)
                .all(|e| !e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
        );
    }

    /// A multipart ETag is checked in the batch too: the MD5 of the parts' MD5s, `-N`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_commits_check_multipart_etags() {
        let d = tempfile::tempdir().unwrap();
        let c = Committer::spawn(8, Duration::from_millis(20), None, None);
        let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let ranges = vec![(0, 70_000), (70_000, 140_000), (140_000, 200_000)];
        let mut outer = md5::Md5::new();
        for &(a, b) in &ranges {
            outer.update(md5::Md5::digest(&body[a as usize..b as usize]));
        }
        let hexs = hex::encode(outer.finalize());
        let good = format!("\"{}-3\"", hexs.to_uppercase());
        let mut bad = hexs.clone();
        bad.replace_range(0..1, if &hexs[..1] == "0" { "1" } else { "0" });
        let mut waits = Vec::new();
        for (name, etag) in [("good", good), ("bad", format!("{bad}-3"))] {
            let target = d.path().join(name);
            let s = Staged::create(&target).unwrap();
            s.file().write_all(&body).unwrap();
            let check = Md5Check::Parts {
                ranges: ranges.clone(),
                etag,
            };
            let c = c.clone();
            waits.push(tokio::spawn(async move {
                (target, c.commit(s, 200_000, None, Some(check), None).await)
            }));
        }
        let (good, r) = waits.remove(0).await.unwrap();
        r.unwrap();
        assert_eq!(fs::read(&good).unwrap(), body);
        let (bad, r) = waits.remove(0).await.unwrap();
        assert!(matches!(r, Err(CommitError::Mismatch(_))), "{r:?}");
        assert!(!bad.exists());
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
