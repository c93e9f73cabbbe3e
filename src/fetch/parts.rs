//! A multipart upload's original parts, fetched by number in parallel: checked against the composite
//! checksum as they stream, or against the `-N` ETag once all are in.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use super::ranged::{parse_content_range, write_range};
use super::{
    Budget, DEFER_MD5_MAX, FetchError, Fetched, Fetcher, Target, at_path, blocking, classify,
    local_error, op, stage_sized,
};
use crate::listing::ObjectInfo;
use crate::verify::{self, Composite, Hasher, Md5Check};

impl Fetcher {
    pub(super) async fn fetch_parts(
        &self,
        obj: &ObjectInfo,
        n: u32,
        target: &Target,
        budget: &Budget,
    ) -> Result<Fetched, FetchError> {
        let size = obj.size;
        // One HEAD more, as the composite checksum's value is in no listing and in no part's GET.
        let composite = Composite::from_response(&self.head_checksums(obj).await?, n);
        let (staged, file) = stage_sized(target, size).await?;
        let mut parts: Vec<PartDone> = futures::stream::iter(1..=n)
            .map(|i| self.fetch_part(obj, i, file.clone(), composite.as_ref(), budget))
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
        let aside = self
            .commit(staged, obj, target, deferred_md5, crc64)
            .await?;
        Ok(Fetched {
            bytes: size,
            verified_with,
            aside,
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
        budget: &Budget,
    ) -> Result<PartDone, FetchError> {
        self.retry_transient(&format!("part {number}"), budget, || {
            let file = file.clone();
            let hasher = composite.map_or(Hasher::None, Composite::hasher);
            async move {
                let _permit = self.requests.acquire().await.expect("never closed");
                let resp = self
                    .client
                    .get_object()
                    .bucket(&*self.bucket)
                    .key(&obj.key)
                    .set_version_id(obj.version_id.clone())
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

/// `"<hex>-N"` → N: the object was uploaded in N parts.
pub(super) fn multipart_parts(etag: Option<&str>) -> Option<u32> {
    let (md5, n) = etag?.trim_matches('"').split_once('-')?;
    let n: u32 = n.parse().ok()?;
    (crate::verify::is_md5_hex(md5) && n >= 1).then_some(n)
}
