//! A large single-part object as parallel byte ranges written at their offsets, verified over the
//! assembled file.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{
    Budget, FetchError, Fetched, Fetcher, Target, WRITE_BATCH, at_path, blocking, classify,
    local_error, op, stage_sized,
};
use crate::errtext;
use crate::listing::ObjectInfo;
use crate::verify::{self, Crc64, Expected, Hasher};

impl Fetcher {
    pub(super) async fn fetch_ranged(
        &self,
        obj: &ObjectInfo,
        target: &Target,
        budget: &Budget,
    ) -> Result<Fetched, FetchError> {
        let sums = self.head_checksums(obj).await?;
        // Every part must come from the version HEAD saw: If-Match its ETag.
        let etag = sums.etag.clone().or_else(|| obj.etag.clone());
        let expected = Expected::from_response(&sums);

        let size = obj.size;
        let (staged, file) = stage_sized(target, size).await?;

        let part = self.settings.part_size.max(1);
        let ranges = (0..size.div_ceil(part)).map(|i| (i * part, ((i + 1) * part).min(size)));
        let mut crcs: Vec<(u64, u64, u64)> = futures::stream::iter(ranges)
            .map(|(start, end)| {
                self.fetch_range(obj, etag.as_deref(), file.clone(), start, end, budget)
            })
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
        let aside = self.commit(staged, obj, target, None, crc64).await?;
        Ok(Fetched {
            bytes: size,
            verified_with: expected.describe(),
            aside,
        })
    }

    async fn fetch_range(
        &self,
        obj: &ObjectInfo,
        etag: Option<&str>,
        file: Arc<std::fs::File>,
        start: u64,
        end: u64,
        budget: &Budget,
    ) -> Result<(u64, u64, u64), FetchError> {
        let what = format!("bytes {start}-{}", end - 1);
        self.retry_transient(&what, budget, || {
            let file = file.clone();
            async move {
                let _permit = self.requests.acquire().await.expect("never closed");
                let resp = self
                    .client
                    .get_object()
                    .bucket(&*self.bucket)
                    .key(&obj.key)
                    .set_version_id(obj.version_id.clone())
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
}

/// Write `body` at `start..end` of `file`, feeding `hasher` what was written.
pub(super) async fn write_range(
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

/// `bytes a-b/total` → (a, b + 1, total).
pub(super) fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b, total): (u64, u64, u64) = (a.parse().ok()?, b.parse().ok()?, total.parse().ok()?);
    (a <= b && b < total).then_some((a, b + 1, total))
}
