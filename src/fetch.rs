//! Downloading one object into its staged temp file: a single GET, or parallel ranged GETs above a
//! threshold; checksum verification; retries of what is transient; commit through `atomic`.
//!
//! Every request holds a permit of one shared semaphore, so `--concurrency` bounds the requests in flight
//! (and so the memory) whether they are whole small objects or parts of a large one. A permit is only
//! held while its request runs, never while waiting for another, so no mix of objects can deadlock.

use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{GlacierJobParameters, RestoreRequest, Tier};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

use crate::atomic::{CommitError, Committer, Staged};
use crate::catalog::Entry;
use crate::errtext::{self, HasStatus};
use crate::listing::{self, ObjectInfo};
use crate::plan;
use crate::verify::{self, Composite, Crc64, Expected, Hasher, Md5Check, ResponseChecksums};

/// The checksum headers of a GET or a HEAD response: `GetObjectOutput` and `HeadObjectOutput` are
/// different types with the same accessors, and both must read the same fields.
macro_rules! response_checksums {
    ($r:expr) => {{
        let r = &$r;
        ResponseChecksums {
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
    /// The version it replaced was moved to the history folder.
    pub replaced_to_history: bool,
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

    /// An archived object: with `--restore-archived`, ask for a restore unless one is under way (HEAD's
    /// `x-amz-restore` says `ongoing-request="true"`); never a second request while one runs.
    async fn archived(&self, obj: &ObjectInfo) -> Unfetched {
        let Some(days) = self.restore_days else {
            return Unfetched::Archived {
                restore_requested: false,
            };
        };
        let restore_requested = match self.request_restore(obj, days).await {
            Ok(requested) => requested,
            Err(e) => {
                tracing::warn!("{e}");
                false
            }
        };
        Unfetched::Archived { restore_requested }
    }

    async fn request_restore(&self, obj: &ObjectInfo, days: u32) -> Result<bool, String> {
        let _permit = self.requests.acquire().await.expect("never closed");
        let head = self
            .client
            .head_object()
            .bucket(&*self.bucket)
            .key(&obj.key)
            .send()
            .await
            .map_err(|e| {
                errtext::describe(&op("HEAD", &obj.key), errtext::s3_endpoint(), &e).line
            })?;
        if head.restore().is_some_and(restore_in_progress) {
            tracing::debug!(key = %obj.key, "restore already in progress");
            return Ok(false);
        }
        let request = RestoreRequest::builder()
            .days(i32::try_from(days).unwrap_or(i32::MAX))
            .glacier_job_parameters(
                GlacierJobParameters::builder()
                    .tier(Tier::Bulk)
                    .build()
                    .map_err(|e| e.to_string())?,
            )
            .build();
        match self
            .client
            .restore_object()
            .bucket(&*self.bucket)
            .key(&obj.key)
            .restore_request(request)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(key = %obj.key, days, "restore requested (Bulk tier)");
                Ok(true)
            }
            // A restore started since the HEAD (another client): nothing more to ask.
            Err(e) if e.code() == Some("RestoreAlreadyInProgress") => Ok(false),
            Err(e) => {
                Err(
                    errtext::describe(&op("RestoreObject", &obj.key), errtext::s3_endpoint(), &e)
                        .line,
                )
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.settings.retry_base_delay * 2u32.pow(attempt.min(6) - 1);
        // Up to 50% jitter, so that parallel retries do not hit a throttling server in lockstep.
        let jitter = base.mul_f64(fastrand::f64() * 0.5);
        base + jitter
    }

    async fn fetch_whole(&self, obj: &ObjectInfo, target: &Target) -> Result<Fetched, FetchError> {
        let _permit = self.requests.acquire().await.expect("never closed");
        let resp = self
            .client
            .get_object()
            .bucket(&*self.bucket)
            .key(&obj.key)
            .set_if_match(obj.etag.clone())
            .customize()
            .mutate_request(ask_for_checksums)
            .send()
            .await
            .map_err(|e| classify(&op("GET", &obj.key), e))?;
        let sums = response_checksums!(resp);
        if obj.etag.is_none() && resp.content_length() != Some(obj.size as i64) {
            return Err(FetchError::Changed);
        }
        let expected = Expected::from_response(&sums);
        // A plain MD5 is left to the commit batch, where small files meet and share SIMD lanes
        // (`verify::md5_of_ranges`); one MD5 stream alone hashes at a fraction of that rate.
        let (hasher, deferred_md5) = match &expected {
            Expected::Md5(digest) if obj.size <= DEFER_MD5_MAX => {
                (Hasher::None, Some(Md5Check::Whole(digest.clone())))
            }
            other => (other.hasher(), None),
        };
        let (staged, hasher, n, crc64) = stream_to_file(resp.body, target, hasher)
            .await
            .map_err(|e| at_path(e, target))?;
        drop(_permit);
        if n != obj.size {
            return Err(FetchError::Transient(format!(
                "body was {n} bytes, the listing says {}",
                obj.size
            )));
        }
        if deferred_md5.is_none() {
            expected
                .check(hasher.finish())
                .map_err(|m| FetchError::Transient(m.to_string()))?;
        }
        let replaced_to_history = self
            .commit(staged, obj, target, deferred_md5, crc64)
            .await?;
        Ok(Fetched {
            bytes: n,
            verified_with: expected.describe(),
            replaced_to_history,
        })
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

    async fn fetch_ranged(&self, obj: &ObjectInfo, target: &Target) -> Result<Fetched, FetchError> {
        let sums = self.head_checksums(obj).await?;
        // Every part must come from the version HEAD saw: If-Match its ETag.
        let etag = sums.etag.clone().or_else(|| obj.etag.clone());
        let expected = Expected::from_response(&sums);

        let size = obj.size;
        let (staged, file) = stage_sized(target, size).await?;

        let part = self.settings.part_size.max(1);
        let ranges = (0..size.div_ceil(part)).map(|i| (i * part, ((i + 1) * part).min(size)));
        let mut crcs: Vec<(u64, u64, u64)> = futures::stream::iter(ranges)
            .map(|(start, end)| self.fetch_range(obj, etag.as_deref(), file.clone(), start, end))
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await
            .map_err(|e| at_path(e, target))?;
        drop(file);
        crcs.sort_unstable();
        let crc64 = verify::crc64_of_parts(crcs.iter().map(|&(_, crc, len)| (crc, len)));

        // Parts arrive out of order, so the full-object checksum is computed over the assembled file.
        if !matches!(expected, Expected::None) {
            let mut hasher = expected.hasher();
            let staged_file = staged
                .file()
                .try_clone()
                .map_err(|e| local_error(target, "reopening temp file", e))?;
            let hasher_done = blocking(move || {
                let f = staged_file;
                let mut buf = vec![0u8; 1024 * 1024];
                let mut at = 0;
                loop {
                    let n = f.read_at(&mut buf, at)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    at += n as u64;
                }
                Ok(hasher)
            })
            .await
            .map_err(|e| local_error(target, "reading temp file back", e))?;
            expected
                .check(hasher_done.finish())
                .map_err(|m| FetchError::Transient(m.to_string()))?;
        }
        let replaced_to_history = self.commit(staged, obj, target, None, crc64).await?;
        Ok(Fetched {
            bytes: size,
            verified_with: expected.describe(),
            replaced_to_history,
        })
    }

    async fn fetch_range(
        &self,
        obj: &ObjectInfo,
        etag: Option<&str>,
        file: Arc<std::fs::File>,
        start: u64,
        end: u64,
    ) -> Result<(u64, u64, u64), FetchError> {
        let what = format!("bytes {start}-{}", end - 1);
        self.retry_transient(&what, || {
            let file = file.clone();
            async move {
                let _permit = self.requests.acquire().await.expect("never closed");
                let resp = self
                    .client
                    .get_object()
                    .bucket(&*self.bucket)
                    .key(&obj.key)
                    .range(format!("bytes={}-{}", start, end - 1))
                    .set_if_match(etag.map(str::to_owned))
                    .send()
                    .await
                    .map_err(|e| classify(&op("GET", &obj.key), e))?;
                let (_, crc) = write_range(resp.body, file, start, end, Hasher::None).await?;
                Ok((start, crc, end - start))
            }
        })
        .await
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

    async fn fetch_parts(
        &self,
        obj: &ObjectInfo,
        n: u32,
        target: &Target,
    ) -> Result<Fetched, FetchError> {
        let size = obj.size;
        // One HEAD more, as the composite checksum's value is in no listing and in no part's GET.
        let composite = Composite::from_response(&self.head_checksums(obj).await?, n);
        let (staged, file) = stage_sized(target, size).await?;
        let mut parts: Vec<PartDone> = futures::stream::iter(1..=n)
            .map(|i| self.fetch_part(obj, i, file.clone(), composite.as_ref()))
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await
            .map_err(|e| at_path(e, target))?;
        parts.sort_by_key(|p| p.number);
        let mut at = 0;
        for p in &parts {
            if p.start != at {
                return Err(FetchError::Transient(format!(
                    "part {} starts at byte {}, expected {at}",
                    p.number, p.start
                )));
            }
            at = p.end;
        }
        if at != size {
            return Err(FetchError::Transient(format!(
                "parts cover {at} bytes of {size}"
            )));
        }
        let crc64 = verify::crc64_of_parts(parts.iter().map(|p| (p.crc64, p.end - p.start)));
        let (verified_with, deferred_md5) = if let Some(c) = &composite {
            let digests: Vec<Vec<u8>> = parts
                .iter_mut()
                .map(|p| p.digest.take().unwrap_or_default())
                .collect();
            c.check(&digests)
                .map_err(|m| FetchError::Transient(m.to_string()))?;
            (c.describe(), None)
        } else if parts.iter().any(|p| p.etag_not_md5) {
            // SSE-KMS and SSE-C ETags are not MD5s of the data.
            ("none", None)
        } else {
            let check = Md5Check::Parts {
                ranges: parts.iter().map(|p| (p.start, p.end)).collect(),
                etag: obj.etag.clone().unwrap_or_default(),
            };
            if size <= DEFER_MD5_MAX {
                ("md5 (multipart etag)", Some(check))
            } else {
                // Hashed once all parts are in, so that they can share SIMD lanes.
                let ranges = check.ranges(size);
                let digests = blocking(move || {
                    let ranges: Vec<_> = ranges.iter().map(|&(a, b)| (&*file, a, b)).collect();
                    verify::md5_of_ranges(&ranges, &mut Vec::new())
                })
                .await
                .map_err(|e| local_error(target, "reading temp file back", e))?;
                check
                    .check(&digests)
                    .map_err(|m| FetchError::Transient(m.to_string()))?;
                ("md5 (multipart etag)", None)
            }
        };
        let replaced_to_history = self
            .commit(staged, obj, target, deferred_md5, crc64)
            .await?;
        Ok(Fetched {
            bytes: size,
            verified_with,
            replaced_to_history,
        })
    }

    /// GET part `number` into its place in `file`, hashed as it streams when there is a composite
    /// checksum to check.
    async fn fetch_part(
        &self,
        obj: &ObjectInfo,
        number: u32,
        file: Arc<std::fs::File>,
        composite: Option<&Composite>,
    ) -> Result<PartDone, FetchError> {
        self.retry_transient(&format!("part {number}"), || {
            let file = file.clone();
            let hasher = composite.map_or(Hasher::None, Composite::hasher);
            async move {
                let _permit = self.requests.acquire().await.expect("never closed");
                let resp = self
                    .client
                    .get_object()
                    .bucket(&*self.bucket)
                    .key(&obj.key)
                    .part_number(number as i32)
                    .set_if_match(obj.etag.clone())
                    .send()
                    .await
                    .map_err(|e| classify(&op("GET", &obj.key), e))?;
                let Some((start, end, total)) = resp.content_range().and_then(parse_content_range)
                else {
                    return Err(
                        if number == 1 && resp.content_length() == Some(obj.size as i64) {
                            FetchError::PartsUnsupported
                        } else {
                            FetchError::Transient(format!("part {number}: no usable Content-Range"))
                        },
                    );
                };
                if total != obj.size {
                    return Err(FetchError::Changed);
                }
                let etag_not_md5 = resp
                    .server_side_encryption()
                    .is_some_and(|s| s.as_str().starts_with("aws:kms"))
                    || resp.sse_customer_algorithm().is_some();
                let (hasher, crc64) = write_range(resp.body, file, start, end, hasher).await?;
                Ok(PartDone {
                    number,
                    start,
                    end,
                    etag_not_md5,
                    digest: hasher.finish(),
                    crc64,
                })
            }
        })
        .await
    }

    async fn commit(
        &self,
        staged: Staged,
        obj: &ObjectInfo,
        target: &Target,
        md5: Option<Md5Check>,
        crc64: u64,
    ) -> Result<bool, FetchError> {
        let entry = Entry {
            key: obj.key.clone(),
            size: obj.size,
            last_modified: obj.last_modified,
            etag: obj.etag.clone(),
            crc64nvme: Some(crc64),
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

struct PartDone {
    number: u32,
    start: u64,
    end: u64,
    etag_not_md5: bool,
    /// The part's checksum, when there is a composite checksum to check.
    digest: Option<Vec<u8>>,
    /// CRC64NVME of the part's bytes, for the catalog.
    crc64: u64,
}

/// HEAD's `x-amz-restore`: `ongoing-request="true"` while a restore runs; `ongoing-request="false",
/// expiry-date="…"` once the copy is readable.
fn restore_in_progress(header: &str) -> bool {
    header
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .any(|(k, v)| k.trim() == "ongoing-request" && v.trim().trim_matches('"') == "true")
}

/// `"<hex>-N"` → N: the object was uploaded in N parts.
fn multipart_parts(etag: Option<&str>) -> Option<u32> {
    let (md5, n) = etag?.trim_matches('"').split_once('-')?;
    let n: u32 = n.parse().ok()?;
    (md5.len() == 32 && md5.bytes().all(|b| b.is_ascii_hexdigit()) && n >= 1).then_some(n)
}

/// `bytes a-b/total` → (a, b + 1, total).
fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b, total): (u64, u64, u64) = (a.parse().ok()?, b.parse().ok()?, total.parse().ok()?);
    (a <= b && b < total).then_some((a, b + 1, total))
}

fn ask_for_checksums(req: &mut aws_sdk_s3::config::http::HttpRequest) {
    // Sent by hand rather than through `checksum_mode(Enabled)`, which would make the SDK validate the
    // body too: we verify it ourselves (including the MD5 fallback) and must not pay twice.
    req.headers_mut().insert("x-amz-checksum-mode", "ENABLED");
}

/// Stream `body` into a temp file for `target`, hashing as it goes. Returns the byte count.
///
/// The temp file (and the object's folders) are made at the first write, in the same trip to the
/// blocking pool: a body that fits in one `WRITE_BATCH` (most photos) costs one trip in all.
async fn stream_to_file(
    mut body: ByteStream,
    target: &Target,
    hasher: Hasher,
) -> Result<(Staged, Hasher, u64, u64), FetchError> {
    let mut staged: Option<Staged> = None;
    let mut hasher = Some((hasher, Crc64::default()));
    let mut pending: Vec<Bytes> = Vec::new();
    let mut pending_len = 0;
    let mut n = 0u64;
    loop {
        let chunk = body.try_next().await.map_err(|e| {
            FetchError::Transient(format!("reading body: {}", errtext::root_cause(&e)))
        })?;
        let done = chunk.is_none();
        if let Some(c) = chunk {
            pending_len += c.len();
            n += c.len() as u64;
            pending.push(c);
        }
        if pending_len >= WRITE_BATCH || (done && (pending_len > 0 || staged.is_none())) {
            let (s, (mut h, mut crc)) = (staged.take(), hasher.take().expect("restored below"));
            let t = target.clone();
            let batch = std::mem::take(&mut pending);
            pending_len = 0;
            let (s, h) = blocking(move || {
                let s = match s {
                    Some(s) => s,
                    None => t.stage()?,
                };
                let mut f = s.file();
                for b in &batch {
                    f.write_all(b)
                        .map_err(|e| io::Error::new(e.kind(), format!("writing temp file: {e}")))?;
                    h.update(b);
                    crc.update(b);
                }
                Ok((s, (h, crc)))
            })
            .await
            .map_err(|e| FetchError::Permanent(e.to_string()))?;
            (staged, hasher) = (Some(s), Some(h));
        }
        if done {
            let (h, crc) = hasher.expect("present");
            return Ok((staged.expect("made above"), h, n, crc.value()));
        }
    }
}

/// Write `body` at `start..end` of `file`, feeding `hasher` what was written.
async fn write_range(
    mut body: ByteStream,
    file: Arc<std::fs::File>,
    start: u64,
    end: u64,
    hasher: Hasher,
) -> Result<(Hasher, u64), FetchError> {
    let mut hasher = Some((hasher, Crc64::default()));
    let mut at = start;
    let mut pending: Vec<Bytes> = Vec::new();
    let mut pending_len = 0;
    loop {
        let chunk = body.try_next().await.map_err(|e| {
            FetchError::Transient(format!("reading body: {}", errtext::root_cause(&e)))
        })?;
        let done = chunk.is_none();
        if let Some(c) = chunk {
            if at + (pending_len + c.len()) as u64 > end {
                return Err(FetchError::Transient(format!(
                    "range {start}-{} returned more bytes than asked for",
                    end - 1
                )));
            }
            pending_len += c.len();
            pending.push(c);
        }
        if pending_len >= WRITE_BATCH || (done && pending_len > 0) {
            let batch = std::mem::take(&mut pending);
            let f = file.clone();
            let offset = at;
            at += pending_len as u64;
            pending_len = 0;
            let (mut h, mut crc) = hasher.take().expect("restored below");
            hasher = Some(
                blocking(move || {
                    let mut off = offset;
                    for b in &batch {
                        f.write_all_at(b, off)?;
                        h.update(b);
                        crc.update(b);
                        off += b.len() as u64;
                    }
                    Ok((h, crc))
                })
                .await
                .map_err(|e| FetchError::Permanent(format!("writing temp file: {e}")))?,
            );
        }
        if done {
            if at != end {
                return Err(FetchError::Transient(format!(
                    "range {start}-{} ended after {} bytes",
                    end - 1,
                    at - start
                )));
            }
            let (h, crc) = hasher.expect("present");
            return Ok((h, crc.value()));
        }
    }
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
