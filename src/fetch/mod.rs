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
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use tokio::sync::Semaphore;

use crate::atomic::{CommitError, Committer, Row, Staged};
use crate::catalog::{Entry, Held};
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

/// Attempts per object (and per part or range within each) for failures worth retrying: a cut or
/// short body, a checksum mismatch, a 5xx, a timeout. The SDK does not retry an object's requests
/// itself (see `Fetcher::new`), so these are all the tries there are, and the `Budget` caps their sum.
const ATTEMPTS: u32 = 4;
/// Failures one object may have in all, its parts' and ranges' included, before it is given up.
const MAX_FAILURES: u32 = 10;
/// No retry of an object starts later than this after its first failure.
const RETRY_WINDOW: Duration = Duration::from_secs(180);
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
    /// See `MAX_FAILURES` and `RETRY_WINDOW`.
    pub max_failures: u32,
    pub retry_window: Duration,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            ranged_threshold: 32 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
            retry_base_delay: Duration::from_millis(200),
            max_failures: MAX_FAILURES,
            retry_window: RETRY_WINDOW,
        }
    }
}

/// The retries left to one object, shared by all of its requests (HEAD, GETs of parts or ranges, the
/// whole GET) and its checks: every failure that would be retried takes one, and none is granted once
/// `max_failures` are spent or `window` has passed since the first. So a broken object costs at most
/// `max_failures` failed requests (plus those of its pieces already in flight when it ran out) and a
/// few minutes, however its tries nest, and the run goes on with the rest.
#[derive(Debug)]
struct Budget {
    failures: AtomicU32,
    max_failures: u32,
    first_failure: Mutex<Option<Instant>>,
    window: Duration,
}

impl Budget {
    fn new(settings: &FetchSettings) -> Budget {
        Budget {
            failures: AtomicU32::new(0),
            max_failures: settings.max_failures,
            first_failure: Mutex::new(None),
            window: settings.retry_window,
        }
    }

    /// Count one failed request or check.
    fn fail(&self) {
        self.first_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(Instant::now);
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether another try may start: asked after each failure, and again after its backoff.
    fn allows_retry(&self) -> bool {
        let first = *self
            .first_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.failures.load(Ordering::Relaxed) < self.max_failures
            && first.is_none_or(|t| t.elapsed() < self.window)
    }

    /// "4 failures in 2 s": what the final error says about the tries.
    fn describe(&self) -> String {
        let n = self.failures.load(Ordering::Relaxed);
        let first = *self
            .first_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
        format!(
            "{n} failure{} in {secs:.0} s",
            if n == 1 { "" } else { "s" }
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Worth another attempt.
    #[error("{0}")]
    Transient(String),
    /// Transient, and already counted against the object's `Budget` (by `retry_transient`).
    #[error("{0}")]
    Counted(String),
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
    /// A noncurrent version going into history: never over anything, recorded as held.
    held: Option<Arc<HeldPlace>>,
}

/// Where a noncurrent version goes in history, and when it stopped being current.
#[derive(Debug)]
pub struct HeldPlace {
    /// Its path relative to the history folder (`<folder>/<key>`), as the catalog names it.
    pub file: String,
    pub until: SystemTime,
    /// The VersionId of the entry that followed it.
    pub followed_by: Option<String>,
}

impl Target {
    /// `rel` as the planner mapped it (vetted: no `..`, no absolute part).
    pub fn new(dest: &Arc<Path>, rel: &Path) -> Target {
        Target {
            path: dest.join(rel),
            dest: dest.clone(),
            rel: rel.to_path_buf(),
            held: None,
        }
    }

    /// A noncurrent version at `history/<place.file>` (a vetted key under one folder).
    pub fn in_history(history: &Arc<Path>, place: HeldPlace) -> Target {
        let rel = PathBuf::from(&place.file);
        Target {
            path: history.join(&rel),
            dest: history.clone(),
            rel,
            held: Some(Arc::new(place)),
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
    /// For object HEADs and GETs: the SDK's own retries are off, `fetch` and `retry_transient` retry.
    client: Client,
    /// With the SDK's standard retries, for the rest (looking a key up again, RestoreObject).
    client_with_retries: Client,
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
        // One layer of retries for an object's data, bounded per object (`Budget`): with the SDK's 5
        // attempts under each of ours, a part could be requested 4 x 4 x 5 = 80 times.
        let data_client = Client::from_conf(
            client
                .config()
                .to_builder()
                .retry_config(RetryConfig::disabled())
                .build(),
        );
        Fetcher {
            client: data_client,
            client_with_retries: client,
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
        let budget = Budget::new(&self.settings);
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(self.backoff(attempt)).await;
                if !budget.allows_retry() {
                    break;
                }
            }
            let result = match self.strategy(&obj) {
                Strategy::Parts(n) => match self.fetch_parts(&obj, n, target, &budget).await {
                    Err(FetchError::PartsUnsupported) => {
                        tracing::info!(
                            "the server ignores partNumber: multipart objects are fetched by byte ranges"
                        );
                        self.parts_unsupported.store(true, Ordering::Relaxed);
                        self.fetch_ranged(&obj, target, &budget).await
                    }
                    other => other,
                },
                Strategy::Ranges => self.fetch_ranged(&obj, target, &budget).await,
                Strategy::Whole => self.fetch_whole(&obj, target).await,
            };
            // A piece's failures were counted as they happened (`retry_transient`); the rest here.
            let counted = matches!(result, Err(FetchError::Counted(_)));
            match result {
                Ok(f) => return Ok(f),
                Err(FetchError::PartsUnsupported) => {
                    last = "the server answered a ranged GET with the whole object".into();
                }
                Err(FetchError::Archived) => return Err(self.archived(&obj).await),
                Err(FetchError::Permanent(e)) => return Err(Unfetched::Failed(e)),
                Err(FetchError::Transient(e)) | Err(FetchError::Counted(e)) => {
                    if !counted {
                        budget.fail();
                    }
                    last = e;
                    if attempt + 1 == ATTEMPTS || !budget.allows_retry() {
                        break;
                    }
                    tracing::debug!(key = %obj.key, attempt, "retrying: {last}");
                }
                // A version never changes: gone, it was deleted (or expired) since it was listed.
                Err(FetchError::Changed) if obj.version_id.is_some() => {
                    return Err(Unfetched::Failed(format!(
                        "version {} is no longer in the bucket (deleted or expired since it was listed)",
                        obj.version_id.as_deref().unwrap_or_default()
                    )));
                }
                Err(FetchError::Changed) => {
                    match listing::refresh(&self.client_with_retries, &self.bucket, &obj.key).await
                    {
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
            "giving up after {}: {last}",
            budget.describe()
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
                .set_version_id(obj.version_id.clone())
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

    /// Run `attempt` until it succeeds, fails for good, has failed transiently `ATTEMPTS` times (with
    /// backoff between tries), or the object's `budget` grants no more; the last transient error is
    /// reported under `what`, and `fetch` counts it.
    async fn retry_transient<T, F, Fut>(
        &self,
        what: &str,
        budget: &Budget,
        mut attempt: F,
    ) -> Result<T, FetchError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, FetchError>>,
    {
        let mut n = 0;
        loop {
            match attempt().await {
                Err(FetchError::Transient(e)) => {
                    budget.fail();
                    n += 1;
                    if n < ATTEMPTS && budget.allows_retry() {
                        tokio::time::sleep(self.backoff(n)).await;
                    }
                    if n == ATTEMPTS || !budget.allows_retry() {
                        return Err(FetchError::Counted(format!("{what}: {e}")));
                    }
                }
                done => return done,
            }
        }
    }

    async fn commit(
        &self,
        staged: Staged,
        obj: &ObjectInfo,
        target: &Target,
        md5: Option<Md5Check>,
        crc64: u64,
    ) -> Result<Aside, FetchError> {
        let row = match &target.held {
            Some(place) => Row::Held(Held {
                file: place.file.clone(),
                key: obj.key.clone(),
                version_id: obj.version_id.clone(),
                size: obj.size,
                last_modified: obj.last_modified,
                until: place.until,
                exact: true,
                etag: obj.etag.clone(),
                crc64nvme: Some(crc64),
                followed_by: place.followed_by.clone(),
                damaged: false,
            }),
            None => Row::Current(Entry {
                key: obj.key.clone(),
                size: obj.size,
                last_modified: obj.last_modified,
                etag: obj.etag.clone(),
                crc64nvme: Some(crc64),
                damaged: false,
                version_id: obj.version_id.clone(),
            }),
        };
        match self
            .committer
            .commit(staged, obj.size, obj.last_modified, md5, Some(row))
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

    fn budget(max_failures: u32, retry_window: Duration) -> Budget {
        Budget::new(&FetchSettings {
            max_failures,
            retry_window,
            ..FetchSettings::default()
        })
    }

    #[test]
    fn a_budget_grants_retries_until_its_failures_or_its_window_run_out() {
        let b = budget(3, Duration::from_secs(3600));
        assert!(b.allows_retry(), "nothing failed yet");
        b.fail();
        b.fail();
        assert!(b.allows_retry());
        b.fail();
        assert!(!b.allows_retry(), "3 failures of 3");
        assert_eq!(b.describe(), "3 failures in 0 s");

        let b = budget(100, Duration::from_millis(50));
        assert!(b.allows_retry(), "the window opens at the first failure");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allows_retry(), "still no failure");
        b.fail();
        assert!(b.allows_retry());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!b.allows_retry(), "window closed");
        assert_eq!(b.describe(), "1 failure in 0 s");
    }

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
