//! Downloading one object into its staged temp file: a single GET (`whole`), parallel ranged GETs above
//! a threshold (`ranged`), or the original parts of a multipart upload (`parts`); checksum
//! verification; retries of what is transient; archived objects (`archived`); commit through `atomic`.
//!
//! Every request holds a permit of one shared semaphore, so `--concurrency` bounds the requests in flight
//! (and so the memory) whether they are whole small objects or parts of a large one. A permit is only
//! held while its request runs, never while waiting for another, so no mix of objects can deadlock.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use tokio::sync::Semaphore;

use crate::atomic::{CommitError, Committer, Staged};
use crate::catalog::Entry;
use crate::errtext::{self, HasStatus};
use crate::history::Aside;
use crate::listing::{self, ObjectInfo};
use crate::plan;
use crate::verify::{Md5Check, ResponseChecksums};

/// The checksum headers of a GET or a HEAD response: `GetObjectOutput` and `HeadObjectOutput` are
/// different types with the same accessors, and both must read the same fields.
macro_rules! response_checksums {
    ($r:expr) => {{
        let r = &$r;
        $crate::verify::ResponseChecksums {
            crc64nvme: r.checksum_crc64_nvme().map(Into::into),
            crc32c: r.checksum_crc32_c().map(Into::into),
            crc32: r.checksum_crc32().map(Into::into),
            sha1: r.checksum_sha1().map(Into::into),
            sha256: r.checksum_sha256().map(Into::into),
            checksum_type: r.checksum_type().map(|t| t.as_str().to_owned()),
            etag: r.e_tag().map(Into::into),
            sse: r.server_side_encryption().map(|s| s.as_str().to_owned()),
            sse_customer: r.sse_customer_algorithm().is_some(),
        }
    }};
}

// After the macro, so that the download strategies see it.
mod archived;
mod parts;
mod ranged;
mod whole;

use parts::multipart_parts;

/// Attempts per object (and per part) for failures worth retrying: a cut or short body, a checksum
/// mismatch, a 5xx that outlived the SDK's own retries.
const ATTEMPTS: u32 = 4;
/// Bytes gathered before one blocking write + hash: big enough to amortise the hand-off to the blocking
/// pool, small enough that `concurrency` of them stay a few MiB.
const WRITE_BATCH: usize = 256 * 1024;
/// Objects up to this size leave their MD5 check to the commit batch, where files (and parts) share
/// SIMD lanes. A larger object is hashed by its own task: its parts (8 MiB each for `aws s3 cp`) fill
/// lanes of their own, and the committer's check stage, one thread, is not held up by it. Measured on
/// 16 x 64 MiB on disk: deferring them cost 3.18 s against 2.73 s median while the committer hashed in
/// front of its syncfs; with the two-stage committer it made no difference (2.77 s either way).
const DEFER_MD5_MAX: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Objects larger than this are fetched as parallel ranges.
    pub ranged_threshold: u64,
    pub part_size: u64,
    pub retry_base_delay: Duration,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            ranged_threshold: 32 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
            retry_base_delay: Duration::from_millis(200),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Worth another attempt.
    #[error("{0}")]
    Transient(String),
    /// Will not get better by retrying now (access denied, local I/O error).
    #[error("{0}")]
    Permanent(String),
    /// GET answered InvalidObjectState: the object is in an archive tier (GLACIER, DEEP_ARCHIVE, an
    /// INTELLIGENT_TIERING archive tier) and not restored.
    #[error("object is archived (restore it before it can be backed up)")]
    Archived,
    /// `If-Match` failed or the object vanished: it changed since it was listed.
    #[error("object changed since it was listed")]
    Changed,
    /// The server ignored `partNumber` (answered with the whole object): fall back to byte ranges.
    #[error("the server does not support GET by part number")]
    PartsUnsupported,
}

/// Why an object was not backed up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfetched {
    /// A failure, said in one line.
    Failed(String),
    /// In an archive tier and not restored: not a failure (it cannot be read until someone restores it).
    Archived { restore_requested: bool },
}

/// What was installed.
#[derive(Debug)]
pub struct Fetched {
    pub bytes: u64,
    /// How the body was verified (`none` when S3 offered nothing to verify against).
    pub verified_with: &'static str,
    /// What became of the version it replaced (with a history folder: kept there, or not a version).
    pub aside: Aside,
}

/// Where one object goes: its final path under `dest`, whose folders are made when its temp file is.
#[derive(Debug, Clone)]
pub struct Target {
    path: PathBuf,
    dest: Arc<Path>,
    rel: PathBuf,
}

impl Target {
    /// `rel` as the planner mapped it (vetted: no `..`, no absolute part).
    pub fn new(dest: &Arc<Path>, rel: &Path) -> Target {
        Target {
            path: dest.join(rel),
            dest: dest.clone(),
            rel: rel.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The object's folders, then an exclusive temp file beside its final path. Blocking: one trip to
    /// the blocking pool does both, and for a small object the write too (see `stream_to_file`).
    fn stage(&self) -> io::Result<Staged> {
        if let Some(parent) = self.rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            plan::create_dirs(&self.dest, parent).map_err(|e| {
                let dir = self.dest.join(parent);
                io::Error::new(
                    e.kind(),
                    format!("creating directory {}: {e}", dir.display()),
                )
            })?;
        }
        Staged::create(&self.path)
            .map_err(|e| io::Error::new(e.kind(), format!("creating temp file: {e}")))
    }
}

#[derive(Clone)]
pub struct Fetcher {
    client: Client,
    bucket: Arc<str>,
    requests: Arc<Semaphore>,
    concurrency: usize,
    settings: FetchSettings,
    /// Set once the server has shown it ignores `partNumber`, so later objects skip the attempt.
    parts_unsupported: Arc<AtomicBool>,
    committer: Committer,
    /// `--restore-archived DAYS`.
    restore_days: Option<u32>,
}

/// How one object is fetched, from what the listing says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    /// One GET; verified against the response's full-object checksum or plain MD5 ETag.
    Whole,
    /// HEAD, then parallel byte ranges; verified by hashing the assembled file.
    Ranges,
    /// A multipart upload without a full-object checksum: HEAD, then GET each original part by number;
    /// checked against the composite checksum when there is one (each part hashed as it streams), else
    /// against the `-N` ETag (the MD5 of the parts' MD5s).
    Parts(u32),
}

impl Fetcher {
    pub fn new(
        client: Client,
        bucket: &str,
        concurrency: usize,
        settings: FetchSettings,
        committer: Committer,
    ) -> Self {
        Fetcher {
            client,
            bucket: bucket.into(),
            requests: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            settings,
            parts_unsupported: Arc::new(AtomicBool::new(false)),
            committer,
            restore_days: None,
        }
    }

    fn strategy(&self, obj: &ObjectInfo) -> Strategy {
        let full_object = obj
            .checksum_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("FULL_OBJECT"));
        match multipart_parts(obj.etag.as_deref()) {
            Some(n) if !full_object && !self.parts_unsupported.load(Ordering::Relaxed) => {
                Strategy::Parts(n)
            }
            _ if obj.size > self.settings.ranged_threshold => Strategy::Ranges,
            _ => Strategy::Whole,
        }
    }

    /// Ask S3 to restore archived objects (Bulk tier, for this many days) as they are met.
    pub fn restore_archived(mut self, days: Option<u32>) -> Self {
        self.restore_days = days;
        self
    }

    /// Download `obj` to `target`, verified, atomically, with retries.
    pub async fn fetch(&self, obj: &ObjectInfo, target: &Target) -> Result<Fetched, Unfetched> {
        let mut obj = obj.clone();
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(self.backoff(attempt)).await;
            }
            let result = match self.strategy(&obj) {
                Strategy::Parts(n) => match self.fetch_parts(&obj, n, target).await {
                    Err(FetchError::PartsUnsupported) => {
                        tracing::info!(
                            "the server ignores partNumber: multipart objects are fetched by byte ranges"
                        );
                        self.parts_unsupported.store(true, Ordering::Relaxed);
                        self.fetch_ranged(&obj, target).await
                    }
                    other => other,
                },
                Strategy::Ranges => self.fetch_ranged(&obj, target).await,
                Strategy::Whole => self.fetch_whole(&obj, target).await,
            };
            match result {
                Ok(f) => return Ok(f),
                Err(FetchError::PartsUnsupported) => {
                    last = "the server answered a ranged GET with the whole object".into();
                }
                Err(FetchError::Archived) => return Err(self.archived(&obj).await),
                Err(FetchError::Permanent(e)) => return Err(Unfetched::Failed(e)),
                Err(FetchError::Transient(e)) => {
                    tracing::debug!(key = %obj.key, attempt, "retrying: {e}");
                    last = e;
                }
                Err(FetchError::Changed) => {
                    match listing::refresh(&self.client, &self.bucket, &obj.key).await {
                        Ok(Some(fresh)) => {
                            tracing::info!(key = %obj.key, "changed since listed; fetching the new version");
                            last = "object kept changing while being downloaded".into();
                            obj = fresh;
                        }
                        Ok(None) => {
                            return Err(Unfetched::Failed(
                                "object was deleted while the backup ran".into(),
                            ));
                        }
                        Err(e) => {
                            last = format!("object changed, and looking it up again failed: {e}")
                        }
                    }
                }
            }
        }
        Err(Unfetched::Failed(format!(
            "giving up after {ATTEMPTS} attempts: {last}"
        )))
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.settings.retry_base_delay * 2u32.pow(attempt.min(6) - 1);
        // Up to 50% jitter, so that parallel retries do not hit a throttling server in lockstep.
        let jitter = base.mul_f64(fastrand::f64() * 0.5);
        base + jitter
    }

    /// HEAD `obj` (the version listed) for its checksums: a listing carries none of their values.
    async fn head_checksums(&self, obj: &ObjectInfo) -> Result<ResponseChecksums, FetchError> {
        let head = {
            let _permit = self.requests.acquire().await.expect("never closed");
            self.client
                .head_object()
                .bucket(&*self.bucket)
                .key(&obj.key)
                .set_if_match(obj.etag.clone())
                .customize()
                .mutate_request(ask_for_checksums)
                .send()
                .await
                .map_err(|e| classify(&op("HEAD", &obj.key), e))?
        };
        if head.content_length() != Some(obj.size as i64) {
            return Err(FetchError::Changed);
        }
        Ok(response_checksums!(head))
    }

    /// Run `attempt` until it succeeds, fails for good, or has failed transiently `ATTEMPTS` times
    /// (with backoff between tries); the last transient error is reported under `what`.
    async fn retry_transient<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, FetchError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, FetchError>>,
    {
        let mut last = String::new();
        for n in 0..ATTEMPTS {
            if n > 0 {
                tokio::time::sleep(self.backoff(n)).await;
            }
            match attempt().await {
                Err(FetchError::Transient(e)) => last = e,
                done => return done,
            }
        }
        Err(FetchError::Transient(format!("{what}: {last}")))
    }

    async fn commit(
        &self,
        staged: Staged,
        obj: &ObjectInfo,
        target: &Target,
        md5: Option<Md5Check>,
        crc64: u64,
    ) -> Result<Aside, FetchError> {
        let entry = Entry {
            key: obj.key.clone(),
            size: obj.size,
            last_modified: obj.last_modified,
            etag: obj.etag.clone(),
            crc64nvme: Some(crc64),
            damaged: false,
        };
        match self
            .committer
            .commit(staged, obj.size, obj.last_modified, md5, Some(entry))
            .await
        {
            Ok(moved) => Ok(moved),
            Err(CommitError::Mismatch(m)) => Err(FetchError::Transient(m.to_string())),
            Err(CommitError::Io(e)) => Err(local_error(target, "installing", e)),
        }
    }
}

fn ask_for_checksums(req: &mut aws_sdk_s3::config::http::HttpRequest) {
    // Sent by hand rather than through `checksum_mode(Enabled)`, which would make the SDK validate the
    // body too: we verify it ourselves (including the MD5 fallback) and must not pay twice.
    req.headers_mut().insert("x-amz-checksum-mode", "ENABLED");
}

/// `GET photos/a.jpg`: the operation and the key, as messages name them.
fn op(verb: &str, key: &str) -> String {
    format!("{verb} {}", errtext::key(key))
}

fn classify<E, R>(what: &str, e: SdkError<E, R>) -> FetchError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HasStatus + 'static,
{
    let d = errtext::describe(what, errtext::s3_endpoint(), &e);
    match (d.status, d.code.as_deref()) {
        (Some(412), _) | (_, Some("PreconditionFailed")) => FetchError::Changed,
        (Some(404), _) | (_, Some("NoSuchKey")) => FetchError::Changed,
        (_, Some("InvalidObjectState")) => FetchError::Archived,
        (Some(s), _) if (400..500).contains(&s) && s != 408 && s != 429 => {
            FetchError::Permanent(d.line)
        }
        _ => FetchError::Transient(d.line),
    }
}

/// A temp file for `target`, sized up front so parts can be written at their offsets from several
/// tasks, and a shared handle on it for them.
async fn stage_sized(
    target: &Target,
    size: u64,
) -> Result<(Staged, Arc<std::fs::File>), FetchError> {
    let staged = blocking({
        let target = target.clone();
        move || {
            let s = target.stage()?;
            s.file().set_len(size)?;
            Ok(s)
        }
    })
    .await
    .map_err(|e| at_path(FetchError::Permanent(e.to_string()), target))?;
    let file = staged
        .file()
        .try_clone()
        .map_err(|e| local_error(target, "opening temp file", e))?;
    Ok((staged, Arc::new(file)))
}

/// Local write errors name the file they were for.
fn at_path(e: FetchError, target: &Target) -> FetchError {
    match e {
        FetchError::Permanent(m) => {
            FetchError::Permanent(format!("{m} (for {})", target.path.display()))
        }
        e => e,
    }
}

fn local_error(target: &Target, what: &str, e: io::Error) -> FetchError {
    FetchError::Permanent(format!("{what} for {}: {e}", target.path.display()))
}

/// Run blocking file work on tokio's blocking pool, off the reactor threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|join| Err(io::Error::other(format!("blocking task failed: {join}"))))
}

#[cfg(test)]
mod tests {
    use super::archived::restore_in_progress;
    use super::ranged::parse_content_range;
    use super::*;

    #[test]
    fn restore_header_says_whether_a_restore_runs() {
        assert!(restore_in_progress("ongoing-request=\"true\""));
        assert!(restore_in_progress(" ongoing-request = \"true\" "));
        assert!(!restore_in_progress(
            "ongoing-request=\"false\", expiry-date=\"Fri, 21 Dec 2012 00:00:00 GMT\""
        ));
        assert!(!restore_in_progress(""));
    }

    #[test]
    fn multipart_etags_and_content_ranges_parse() {
        assert_eq!(
            multipart_parts(Some("\"24c43c3468b0e854351af1d6d2f915c9-3\"")),
            Some(3)
        );
        assert_eq!(
            multipart_parts(Some("\"24c43c3468b0e854351af1d6d2f915c9\"")),
            None
        );
        assert_eq!(multipart_parts(Some("\"xyz-3\"")), None);
        assert_eq!(multipart_parts(None), None);
        assert_eq!(parse_content_range("bytes 5-9/10"), Some((5, 10, 10)));
        assert_eq!(parse_content_range("bytes 5-10/10"), None);
        assert_eq!(parse_content_range("bytes */10"), None);
    }
}
