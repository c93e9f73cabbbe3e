//! One GET for the whole object, streamed into the temp file and hashed as it is written.

use std::io::{self, Write};

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::{
    DEFER_MD5_MAX, FetchError, Fetched, Fetcher, Target, WRITE_BATCH, ask_for_checksums, at_path,
    blocking, classify, op,
};
use crate::atomic::Staged;
use crate::errtext;
use crate::listing::ObjectInfo;
use crate::verify::{Crc64, Expected, Hasher, Md5Check};

impl Fetcher {
    pub(super) async fn fetch_whole(
        &self,
        obj: &ObjectInfo,
        target: &Target,
    ) -> Result<Fetched, FetchError> {
        let _permit = self.requests.acquire().await.expect("never closed");
        let resp = self
            .client
            .get_object()
            .bucket(&*self.bucket)
            .key(&obj.key)
            .set_version_id(obj.version_id.clone())
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
        let aside = self
            .commit(staged, obj, target, deferred_md5, crc64)
            .await?;
        Ok(Fetched {
            bytes: n,
            verified_with: expected.describe(),
            aside,
        })
    }
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
