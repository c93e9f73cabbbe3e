//! The versioned listing (`--versions`): ListObjectVersions, streamed a page at a time like the plain
//! listing, split into the current version of each key (which the engine backs up into `--dest` as
//! ever), the noncurrent versions with the instant each stopped being current, and the delete markers.
//!
//! A version stopped being current when the next newer entry of its key (version or delete marker)
//! was written: that entry's LastModified. S3 gives LastModified in whole seconds, and the SDK hands
//! versions and delete markers back as two separate lists, so two entries of one second cannot be
//! ordered by time. S3 itself returns each key's entries as one sequence, newest first; that order is
//! read from the raw response (`RawOrder`) and decides ties. A server that groups all versions before
//! all markers (moto) still has the latest entry of each key marked `IsLatest`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::interceptors::AfterDeserializationInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::types::{BucketVersioningStatus, EncodingType};
use tokio::sync::mpsc;

use super::{ListError, ObjectInfo, classify, decode_key};
use crate::catalog::Listed;

/// One page of the versioned listing.
#[derive(Debug, Default)]
pub struct VersionsPage {
    /// The current version of each key whose latest entry is a version (not a delete marker).
    pub current: Vec<ObjectInfo>,
    /// Noncurrent versions, each with the instant it stopped being current.
    pub older: Vec<Listed>,
    /// Delete markers: key, VersionId, LastModified, and the VersionId of the entry that followed it.
    pub markers: Vec<(String, String, SystemTime, Option<String>)>,
}

/// What `GetBucketVersioning` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versioning {
    Enabled,
    Suspended,
    /// Never enabled: the bucket holds one version of each key.
    Disabled,
}

impl Versioning {
    pub fn as_str(self) -> &'static str {
        match self {
            Versioning::Enabled => "Enabled",
            Versioning::Suspended => "Suspended",
            Versioning::Disabled => "Disabled",
        }
    }
}

/// Ask the bucket whether it keeps versions. Denied or failing: one line naming the permission.
pub async fn versioning(client: &Client, bucket: &str) -> Result<Versioning, ListError> {
    let raw = RawBody::default();
    let out = client
        .get_bucket_versioning()
        .bucket(bucket)
        .customize()
        .interceptor(raw.clone())
        .send()
        .await;
    let status = match out {
        Ok(out) => out.status().cloned(),
        // A 200 whose document the SDK would not read: moto names its root element
        // `GetBucketVersioningResponse` where S3 says `VersioningConfiguration`. Its `Status` is
        // read as it is.
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 200) => raw
            .take()
            .and_then(|body| element_text(&body, "Status"))
            .map(|s| BucketVersioningStatus::from(s.as_str())),
        Err(e) => {
            let what = format!("reading the versioning of bucket {bucket}");
            return Err(match classify(bucket, &what, &e) {
                ListError::AccessDenied { detail } => ListError::AccessDenied {
                    detail: format!("{detail}; --versions needs s3:GetBucketVersioning"),
                },
                other => other,
            });
        }
    };
    Ok(match status {
        Some(BucketVersioningStatus::Enabled) => Versioning::Enabled,
        Some(BucketVersioningStatus::Suspended) => Versioning::Suspended,
        _ => Versioning::Disabled,
    })
}

/// The text of the first child element `name` of the document's root.
fn element_text(body: &[u8], name: &str) -> Option<String> {
    use aws_smithy_xml::decode::{Document, try_data};
    let mut doc = Document::try_from(body).ok()?;
    let mut root = doc.root_element().ok()?;
    while let Some(mut el) = root.next_tag() {
        if el.start_el().matches(name) {
            return try_data(&mut el).ok().map(|s| s.into_owned());
        }
    }
    None
}

/// Start the versioned listing of `bucket` (under `prefix`) in the background; as `super::spawn`.
pub fn spawn(
    client: Client,
    bucket: String,
    prefix: Option<String>,
    depth: usize,
) -> mpsc::Receiver<Result<VersionsPage, ListError>> {
    let (tx, rx) = mpsc::channel(depth);
    tokio::spawn(async move {
        let mut key_marker: Option<String> = None;
        let mut vid_marker: Option<String> = None;
        // The newest entry so far of the key that the last page ended in: what its next one was
        // followed by.
        let mut carry: Option<Newer> = None;
        loop {
            let raw = RawBody::default();
            let out = client
                .list_object_versions()
                .bucket(&bucket)
                .set_prefix(prefix.clone())
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(vid_marker.clone())
                .encoding_type(EncodingType::Url)
                .customize()
                .interceptor(raw.clone())
                .send()
                .await;
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    let err = match classify(&bucket, &format!("listing bucket {bucket}"), &e) {
                        ListError::AccessDenied { detail } => ListError::AccessDenied {
                            detail: format!(
                                "{}; --versions needs s3:ListBucketVersions",
                                detail.replace("listing bucket", "listing the versions of bucket")
                            ),
                        },
                        other => other,
                    };
                    let _ = tx.send(Err(err)).await;
                    return;
                }
            };
            let url = out.encoding_type() == Some(&EncodingType::Url);
            let order = raw.take().and_then(|body| raw_order(&body));
            let page = split_page(&out, url, order.as_deref(), &mut carry);
            let next = match (out.is_truncated(), out.next_key_marker()) {
                (Some(true), Some(k)) => Some(if url {
                    decode_key(k).unwrap_or_else(|| k.to_owned())
                } else {
                    k.to_owned()
                }),
                (Some(true), None) => {
                    let _ = tx
                        .send(Err(ListError::Other {
                            detail: format!(
                                "listing the versions of bucket {bucket}: a truncated page without a next key marker"
                            ),
                        }))
                        .await;
                    return;
                }
                _ => None,
            };
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if tx.send(Ok(page)).await.is_err() {
                return;
            }
            match next {
                Some(k) => {
                    vid_marker = out.next_version_id_marker().map(str::to_owned);
                    key_marker = Some(k);
                }
                None => return,
            }
        }
    });
    rx
}

/// One entry of a key's history as a page lists it.
#[derive(Debug, Clone)]
struct Entry {
    key: String,
    version_id: String,
    last_modified: SystemTime,
    latest: bool,
    /// The position the raw response gave it (or, without one, versions before markers).
    position: usize,
    /// A version (with what the engine needs to fetch it); none for a delete marker.
    version: Option<ObjectInfo>,
}

fn split_page(
    out: &aws_sdk_s3::operation::list_object_versions::ListObjectVersionsOutput,
    url: bool,
    raw: Option<&[(String, String)]>,
    carry: &mut Option<Newer>,
) -> Result<VersionsPage, ListError> {
    let key_of = |raw_key: &str| -> Result<String, ListError> {
        if url {
            decode_key(raw_key).ok_or_else(|| ListError::BadKey(raw_key.to_owned()))
        } else {
            Ok(raw_key.to_owned())
        }
    };
    let time = |t: Option<&aws_smithy_types::DateTime>| {
        t.and_then(|t| SystemTime::try_from(*t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    // Where the raw response put each (raw key, VersionId).
    let positions: HashMap<(&str, &str), usize> = raw
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, (k, v))| ((k.as_str(), v.as_str()), i))
        .collect();
    let offset = out.versions().len() + out.delete_markers().len();
    let mut entries = Vec::with_capacity(offset);
    for (i, v) in out.versions().iter().enumerate() {
        let raw_key = v.key().unwrap_or_default();
        let vid = v.version_id().unwrap_or("null").to_owned();
        let key = key_of(raw_key)?;
        let lm = time(v.last_modified());
        let position = positions
            .get(&(raw_key, vid.as_str()))
            .copied()
            .unwrap_or(offset + i);
        entries.push(Entry {
            version: Some(ObjectInfo {
                key: key.clone(),
                size: v.size().unwrap_or(0).max(0) as u64,
                etag: v.e_tag().map(str::to_owned),
                last_modified: Some(lm),
                checksum_type: v.checksum_type().map(|t| t.as_str().to_owned()),
                version_id: Some(vid.clone()),
            }),
            key,
            version_id: vid,
            last_modified: lm,
            latest: v.is_latest().unwrap_or(false),
            position,
        });
    }
    for (i, m) in out.delete_markers().iter().enumerate() {
        let raw_key = m.key().unwrap_or_default();
        let vid = m.version_id().unwrap_or("null").to_owned();
        let position = positions
            .get(&(raw_key, vid.as_str()))
            .copied()
            .unwrap_or(2 * offset + i);
        entries.push(Entry {
            key: key_of(raw_key)?,
            version_id: vid,
            last_modified: time(m.last_modified()),
            latest: m.is_latest().unwrap_or(false),
            position,
            version: None,
        });
    }
    Ok(assemble(order(entries), carry))
}

/// Each key's entries newest first: keys in byte order; within a key, the latest first, then by
/// LastModified, then as the server listed them (S3 lists newest first, so this decides a second's ties).
fn order(mut entries: Vec<Entry>) -> Vec<Entry> {
    entries.sort_by(|a, b| {
        a.key
            .as_bytes()
            .cmp(b.key.as_bytes())
            .then(b.latest.cmp(&a.latest))
            .then(b.last_modified.cmp(&a.last_modified))
            .then(a.position.cmp(&b.position))
    });
    entries
}

/// Give each noncurrent entry the instant it stopped being current: the LastModified of the entry
/// before it (newer), on this page or, for the first of a key continued from the last page, `carry`.
/// The newest entry so far of a key: its key, LastModified and VersionId.
type Newer = (String, SystemTime, String);

fn assemble(entries: Vec<Entry>, carry: &mut Option<Newer>) -> VersionsPage {
    let mut page = VersionsPage::default();
    let mut newer: Option<Newer> = carry.take();
    for e in entries {
        let (followed_at, followed_by) = match &newer {
            Some((k, t, id)) if *k == e.key && !e.latest => (Some(*t), Some(id.clone())),
            _ => (None, None),
        };
        match (e.version, followed_at) {
            (Some(obj), None) if e.latest => page.current.push(obj),
            (Some(obj), until) => page.older.push(Listed {
                key: e.key.clone(),
                version_id: e.version_id.clone(),
                size: obj.size,
                last_modified: obj.last_modified,
                // An entry listed after a newer one can only have stopped being current when that one
                // began; a lone noncurrent entry (its newer ones expired) at its own start at worst.
                until: until.unwrap_or(e.last_modified).max(e.last_modified),
                etag: obj.etag,
                checksum_type: obj.checksum_type,
                followed_by,
            }),
            (None, _) => page.markers.push((
                e.key.clone(),
                e.version_id.clone(),
                e.last_modified,
                followed_by,
            )),
        }
        newer = Some((e.key, e.last_modified, e.version_id));
    }
    *carry = newer;
    page
}

/// Keeps the raw body of a response: what the SDK's types lose (the order of a ListObjectVersions
/// response's `<Version>` and `<DeleteMarker>` elements), or would not read.
#[derive(Debug, Clone, Default)]
struct RawBody(Arc<Mutex<Option<Vec<u8>>>>);

impl RawBody {
    fn take(&self) -> Option<Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Intercept for RawBody {
    fn name(&self) -> &'static str {
        "s3backup::RawBody"
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        if let Some(body) = context.response().body().bytes() {
            *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(body.to_vec());
        }
        Ok(())
    }
}

/// The (Key, VersionId) of each `<Version>` and `<DeleteMarker>` of a ListVersionsResult, in document
/// order; none when the body is no such document.
fn raw_order(body: &[u8]) -> Option<Vec<(String, String)>> {
    use aws_smithy_xml::decode::{Document, try_data};
    let mut doc = Document::try_from(body).ok()?;
    let mut root = doc.root_element().ok()?;
    let mut out = Vec::new();
    while let Some(mut entry) = root.next_tag() {
        let name = entry.start_el().local().to_owned();
        if name != "Version" && name != "DeleteMarker" {
            continue;
        }
        let (mut key, mut vid) = (None, None);
        while let Some(mut field) = entry.next_tag() {
            if field.start_el().matches("Key") {
                key = try_data(&mut field).ok().map(|s| s.into_owned());
            } else if field.start_el().matches("VersionId") {
                vid = try_data(&mut field).ok().map(|s| s.into_owned());
            }
        }
        out.push((key?, vid.unwrap_or_else(|| "null".into())));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn entry(key: &str, vid: &str, t: u64, latest: bool, position: usize, marker: bool) -> Entry {
        Entry {
            key: key.into(),
            version_id: vid.into(),
            last_modified: at(t),
            latest,
            position,
            version: (!marker).then(|| ObjectInfo {
                key: key.into(),
                size: 1,
                etag: Some(format!("\"{vid}\"")),
                last_modified: Some(at(t)),
                checksum_type: None,
                version_id: Some(vid.into()),
            }),
        }
    }

    #[test]
    fn a_version_and_a_marker_of_one_second_are_ordered_as_the_server_listed_them() {
        // k: v1 at 0, then v2 and a delete marker both at 5 (marker newer: listed first), then v3 at 9.
        let entries = vec![
            entry("k", "v3", 9, true, 0, false),
            entry("k", "v2", 5, false, 2, false),
            entry("k", "dm", 5, false, 1, true),
            entry("k", "v1", 0, false, 3, false),
        ];
        let page = assemble(order(entries), &mut None);
        assert_eq!(page.current.len(), 1);
        let until: HashMap<_, _> = page
            .older
            .iter()
            .map(|l| (l.version_id.as_str(), l.until))
            .collect();
        assert_eq!(until["v2"], at(5), "v2 was followed by the marker");
        assert_eq!(until["v1"], at(5));
        assert_eq!(
            page.markers,
            vec![("k".into(), "dm".into(), at(5), Some("v3".into()))]
        );
        assert_eq!(page.older[0].followed_by.as_deref(), Some("dm"));
        // The other way round: the version newer than the marker, so it was current from 5 to 9.
        let entries = vec![
            entry("k", "v3", 9, true, 0, false),
            entry("k", "dm", 5, false, 2, true),
            entry("k", "v2", 5, false, 1, false),
        ];
        let page = assemble(order(entries), &mut None);
        assert_eq!(page.older[0].until, at(9));
    }

    #[test]
    fn a_key_continued_on_the_next_page_takes_its_newer_entry_from_the_last() {
        let mut carry = None;
        let p1 = assemble(order(vec![entry("a", "a2", 7, true, 0, false)]), &mut carry);
        assert_eq!(p1.current.len(), 1);
        let p2 = assemble(
            order(vec![
                entry("a", "a1", 3, false, 0, false),
                entry("b", "b1", 4, true, 1, true),
            ]),
            &mut carry,
        );
        assert_eq!(p2.older[0].until, at(7));
        assert!(p2.current.is_empty(), "b's latest entry is a delete marker");
        assert_eq!(p2.markers.len(), 1);
    }

    #[test]
    fn the_raw_order_interleaves_versions_and_markers() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>b</Name><Prefix></Prefix><KeyMarker></KeyMarker><VersionIdMarker></VersionIdMarker>
  <MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>
  <Version><Key>k%26</Key><VersionId>v3</VersionId><IsLatest>true</IsLatest>
    <LastModified>2026-11-20T14:00:09.000Z</LastModified><ETag>"x"</ETag><Size>1</Size>
    <Owner><ID>o</ID></Owner><StorageClass>STANDARD</StorageClass></Version>
  <DeleteMarker><Key>k%26</Key><VersionId>dm</VersionId><IsLatest>false</IsLatest>
    <LastModified>2026-11-20T14:00:05.000Z</LastModified><Owner><ID>o</ID></Owner></DeleteMarker>
  <Version><Key>k%26</Key><VersionId>v2</VersionId><IsLatest>false</IsLatest>
    <LastModified>2026-11-20T14:00:05.000Z</LastModified><ETag>"y"</ETag><Size>1</Size></Version>
</ListVersionsResult>"#;
        let got = raw_order(xml).unwrap();
        let want: Vec<(String, String)> = [("k%26", "v3"), ("k%26", "dm"), ("k%26", "v2")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(raw_order(b"not xml"), None);
    }
}
