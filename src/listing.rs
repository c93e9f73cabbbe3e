//! Bucket listing: ListObjectsV2, streamed page by page into a bounded channel, in S3's byte order; one
//! stream, or several at once over prefixes (`parallel`), merged back in order.
//!
//! Keys are requested URL-encoded (`encoding-type=url`) because XML 1.0 cannot carry most control
//! characters; they are decoded here, so the rest of the engine only ever sees the real key.

mod lookahead;
mod parallel;
pub mod versions;

use std::time::SystemTime;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{EncodingType, Object};
use percent_encoding::percent_decode_str;
use tokio::sync::mpsc;

use crate::errtext;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// As S3 sends it, quotes included (that is what `If-Match` expects).
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
    /// `FULL_OBJECT` or `COMPOSITE`, when the listing says (it decides how a multipart object is
    /// verified).
    pub checksum_type: Option<String>,
    /// The S3 version, when the versioned listing (`versions`) gave it: fetched by it.
    pub version_id: Option<String>,
}

/// One page of the listing, or the error that ended it.
pub type Page = Result<Vec<ObjectInfo>, ListError>;

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("bucket '{bucket}' does not exist")]
    NoSuchBucket { bucket: String },
    /// `detail` names the bucket: `listing bucket images: 403 AccessDenied: Access Denied`.
    #[error("{detail}")]
    AccessDenied { detail: String },
    #[error("{detail}")]
    Other { detail: String },
    #[error("listing returned a key that is not valid URL-encoded UTF-8: {0:?}")]
    BadKey(String),
}

/// Start listing `bucket` (under `prefix`) in the background, `concurrency` ListObjectsV2 streams at
/// once (1: the single paginated stream). Pages arrive in byte order; at most `depth` pages wait in the
/// channel (with `concurrency` > 1, plus one byte budget for all streams), so memory is bounded however
/// large the bucket is. An `Err` ends the pages: the listing is complete exactly when none came.
pub fn spawn(
    client: Client,
    bucket: String,
    prefix: Option<String>,
    depth: usize,
    concurrency: usize,
) -> Pages {
    let source = S3Source {
        client,
        bucket: bucket.into(),
    };
    let prefix = prefix.unwrap_or_default();
    if concurrency > 1 {
        return parallel::start(source, prefix, concurrency, depth);
    }
    let (tx, rx) = mpsc::channel(depth);
    // Not the SDK's paginator: it ends quietly on a truncated page without a token, or on a token
    // sent twice, and a listing that ends early would look complete (and its missing keys deleted).
    tokio::spawn(parallel::sequential(source, prefix, tx));
    Pages::new(rx, None)
}

/// The consumer's end of a listing. Each page asked for tells a parallel listing whether it was ready
/// or waited on: how far ahead of the consumer it is worth listing (`lookahead`).
pub struct Pages {
    rx: mpsc::Receiver<Page>,
    lookahead: Option<std::sync::Arc<lookahead::Lookahead>>,
}

impl Pages {
    fn new(
        rx: mpsc::Receiver<Page>,
        lookahead: Option<std::sync::Arc<lookahead::Lookahead>>,
    ) -> Pages {
        Pages { rx, lookahead }
    }

    /// The next page; `None` once the listing has ended.
    pub async fn recv(&mut self) -> Option<Page> {
        let Some(l) = &self.lookahead else {
            return self.rx.recv().await;
        };
        match self.rx.try_recv() {
            Ok(page) => {
                l.fed();
                Some(page)
            }
            Err(mpsc::error::TryRecvError::Empty) => {
                l.starved();
                self.rx.recv().await
            }
            Err(mpsc::error::TryRecvError::Disconnected) => None,
        }
    }
}

/// ListObjectsV2 requests on one bucket, for the parallel listing.
#[derive(Clone)]
struct S3Source {
    client: Client,
    bucket: std::sync::Arc<str>,
}

impl parallel::Source for S3Source {
    async fn page(
        &self,
        prefix: String,
        delimited: bool,
        token: Option<String>,
    ) -> Result<parallel::RawPage, ListError> {
        // A stream of a parallel listing says which prefix broke off.
        let what = if prefix.is_empty() {
            format!("listing bucket {}", self.bucket)
        } else {
            format!(
                "listing bucket {} under {}",
                self.bucket,
                errtext::key(&prefix)
            )
        };
        let out = self
            .client
            .list_objects_v2()
            .bucket(&*self.bucket)
            .prefix(prefix)
            .set_delimiter(delimited.then(|| "/".to_owned()))
            .set_continuation_token(token)
            .encoding_type(EncodingType::Url)
            .send()
            .await
            .map_err(|e| classify(&self.bucket, &what, &e))?;
        let url_encoded = out.encoding_type() == Some(&EncodingType::Url);
        let objects = out
            .contents()
            .iter()
            .map(|o| object_info(o, url_encoded))
            .collect::<Result<Vec<_>, _>>()?;
        let prefixes = out
            .common_prefixes()
            .iter()
            .map(|p| {
                let raw = p.prefix().unwrap_or_default();
                if url_encoded {
                    decode_key(raw).ok_or_else(|| ListError::BadKey(raw.to_owned()))
                } else {
                    Ok(raw.to_owned())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let next = match (out.is_truncated(), out.next_continuation_token()) {
            (Some(true), Some(t)) if !t.is_empty() => Some(t.to_owned()),
            (Some(true), _) => {
                return Err(ListError::Other {
                    detail: format!("{what}: a truncated page without a continuation token"),
                });
            }
            _ => None,
        };
        Ok(parallel::RawPage {
            objects,
            prefixes,
            next,
        })
    }
}

fn object_info(o: &Object, url_encoded: bool) -> Result<ObjectInfo, ListError> {
    let raw = o.key().unwrap_or_default();
    let key = if url_encoded {
        decode_key(raw).ok_or_else(|| ListError::BadKey(raw.to_owned()))?
    } else {
        raw.to_owned()
    };
    Ok(ObjectInfo {
        key,
        size: o.size().unwrap_or(0).max(0) as u64,
        etag: o.e_tag().map(str::to_owned),
        last_modified: o
            .last_modified()
            .and_then(|t| SystemTime::try_from(*t).ok()),
        checksum_type: o.checksum_type().map(|t| t.as_str().to_owned()),
        version_id: None,
    })
}

/// S3's `encoding-type=url` is form encoding: a space comes as `+` and a real `+` as `%2B` (measured on
/// AWS and SeaweedFS; moto sends `%20`, which decodes the same).
pub(crate) fn decode_key(raw: &str) -> Option<String> {
    let spaced = raw.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|k| k.into_owned())
}

fn classify<E>(bucket: &str, what: &str, e: &aws_sdk_s3::error::SdkError<E>) -> ListError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let bucket = bucket.to_owned();
    let d = errtext::describe(what, errtext::s3_endpoint(), e);
    match d.code.as_deref() {
        Some("NoSuchBucket") => ListError::NoSuchBucket { bucket },
        Some(
            "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AllAccessDisabled",
        ) => ListError::AccessDenied { detail: d.line },
        _ => ListError::Other { detail: d.line },
    }
}

/// Look one key up again (after an `If-Match` failure told us it changed since it was listed).
pub async fn refresh(
    client: &Client,
    bucket: &str,
    key: &str,
) -> Result<Option<ObjectInfo>, String> {
    let out = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(key)
        .max_keys(1)
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .map_err(|e| errtext::s3_line(&format!("listing key {}", errtext::key(key)), &e))?;
    let url_encoded = out.encoding_type() == Some(&EncodingType::Url);
    for o in out.contents() {
        let info = object_info(o, url_encoded).map_err(|e| e.to_string())?;
        if info.key == key {
            return Ok(Some(info));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::decode_key;

    #[test]
    fn url_encoded_keys_decode_like_s3_encodes_them() {
        assert_eq!(decode_key("a+b.txt").as_deref(), Some("a b.txt"));
        assert_eq!(decode_key("a%20b.txt").as_deref(), Some("a b.txt"));
        assert_eq!(decode_key("a%2Bb.txt").as_deref(), Some("a+b.txt"));
        assert_eq!(decode_key("100%25.csv").as_deref(), Some("100%.csv"));
        assert_eq!(decode_key("%01%E6%97%A5").as_deref(), Some("\u{1}日"));
        assert_eq!(decode_key("%FF"), None);
    }
}
