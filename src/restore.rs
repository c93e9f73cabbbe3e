//! `s3backup restore`: the backup (or one history run folder) put back into a bucket under the exact
//! original keys. Every upload carries a Content-MD5 that the server checks; large files go up in parts,
//! each with its own. An object already there with the same bytes is skipped; one with other bytes is a
//! named conflict unless `--overwrite`.
//!
//! Only bytes restore can vouch for go up: each file is opened without following links (nor any folder
//! on its way being a link), must be a regular file, and is read once before anything is sent: its
//! CRC64NVME (or, for a file adopted without one, its MD5 against a plain MD5 ETag) must match the
//! catalog's row, which must not be marked damaged. The Content-MD5 of that read then makes the server
//! refuse any other bytes, should the file change before the upload. Anything else is `corrupt` or
//! `refused`, not uploaded.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::StreamExt;
use md5_many::Md5State;
use serde::Serialize;

use crate::catalog::{AtInstant, Catalog, Entry};
use crate::errtext;
use crate::report::{Failed, Refused};
use crate::verify::{Crc64, hex, multipart_etag};

/// Rows (or history files) handled at a time.
const PAGE: u32 = 1000;

/// What to restore from.
pub enum Source {
    /// The catalogued files under the destination (keys under a prefix).
    Catalog {
        catalog: Catalog,
        dest: PathBuf,
        prefix: String,
    },
    /// Every file of one history run folder: the versions that run moved aside, each checked against
    /// the catalog's row for it when there is one.
    History {
        run_dir: PathBuf,
        prefix: String,
        catalog: Option<Catalog>,
    },
    /// The version of each key that was current at an instant (`Catalog::as_of`), wherever it is held.
    AsOf(AsOf),
}

/// The bucket as it was at an instant, as the backup holds it.
pub struct AsOf {
    pub catalog: Catalog,
    pub t: std::time::SystemTime,
    pub dest: PathBuf,
    /// The history folder; none when the backups keep none (then every row is in `dest`).
    pub history: Option<PathBuf>,
    pub prefix: String,
}

impl AsOf {
    /// The next page of keys after `after` as items: each key, the file that holds its version
    /// (reached only through real folders from its root), and what the catalog recorded to vouch for it.
    fn page(&self, after: &str) -> Result<Vec<Item>, String> {
        let rows = self
            .catalog
            .as_of_page(self.t, &self.prefix, after, PAGE)
            .map_err(|e| e.to_string())?;
        Ok(rows.into_iter().filter_map(|r| self.item(r)).collect())
    }

    fn item(&self, r: AtInstant) -> Option<Item> {
        let root = match r.place {
            "history" => self.history.clone()?,
            _ => self.dest.clone(),
        };
        let file = r.file.as_deref()?;
        Some(Item {
            key: r.key.clone(),
            path: (!r.key.ends_with('/')).then(|| root.join(file)),
            row: Some(Entry {
                key: r.key,
                size: r.size,
                last_modified: r.current_from,
                etag: r.etag,
                crc64nvme: r.crc64nvme,
                damaged: r.damaged,
                version_id: r.version_id,
            }),
            root,
        })
    }
}

pub struct Settings {
    pub bucket: String,
    pub concurrency: usize,
    /// Files larger than 4 parts go up as a multipart upload of parts this big.
    pub part_size: u64,
    pub overwrite: bool,
    pub dry_run: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct RestoreReport {
    pub uploaded: u64,
    pub identical: u64,
    pub conflicts: Vec<String>,
    pub failed: Vec<Failed>,
    /// Files whose bytes are not what the backup wrote (rot, an edit, a row `verify` marked damaged):
    /// not uploaded.
    pub corrupt: Vec<String>,
    /// Keys whose local path is no regular file of the backup (a symlink, a folder, a device): not
    /// uploaded.
    pub refused: Vec<Refused>,
    /// Uploaded files the catalog had no checksum for (adopted from before it, never verified): their
    /// size and mtime matched, their bytes could not be checked.
    pub unverified: u64,
    pub bytes_uploaded: u64,
    pub elapsed_seconds: f64,
    pub dry_run: bool,
    /// With `--as-of`: objects the bucket holds under the prefix that did not exist at that instant
    /// (left alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newer_than_as_of: Option<u64>,
}

impl RestoreReport {
    /// The JSON document: in a dry run, `would_upload` and `would_upload_bytes` take the place of
    /// `uploaded` and `bytes_uploaded` (nothing was), as a backup's `would_download` does.
    pub fn to_json(&self) -> serde_json::Value {
        let mut doc = serde_json::to_value(self).expect("plain data serialises");
        if self.dry_run
            && let Some(map) = doc.as_object_mut()
        {
            for (done, would) in [
                ("uploaded", "would_upload"),
                ("bytes_uploaded", "would_upload_bytes"),
            ] {
                if let Some(v) = map.remove(done) {
                    map.insert(would.into(), v);
                }
            }
        }
        doc
    }

    pub fn ok(&self) -> bool {
        self.conflicts.is_empty()
            && self.failed.is_empty()
            && self.corrupt.is_empty()
            && self.refused.is_empty()
    }

    pub fn human_summary(&self, limit: usize) -> String {
        let mut s = format!(
            "s3backup restore: {} {}, {} identical, {} conflicts, {} corrupt, {} refused, {} failed; {} in {:.1}s",
            self.uploaded,
            if self.dry_run {
                "would be uploaded"
            } else {
                "uploaded"
            },
            self.identical,
            self.conflicts.len(),
            self.corrupt.len(),
            self.refused.len(),
            self.failed.len(),
            crate::report::human_bytes(self.bytes_uploaded),
            self.elapsed_seconds
        );
        for k in self.conflicts.iter().take(limit) {
            s.push_str(&format!(
                "\nconflict {k:?}: the bucket holds other bytes under this key (--overwrite replaces them)"
            ));
        }
        problems(
            &mut s,
            "not uploaded",
            (&self.corrupt, &self.refused, &self.failed),
            limit,
        );
        let hidden = [
            self.conflicts.len(),
            self.corrupt.len(),
            self.refused.len(),
            self.failed.len(),
        ]
        .iter()
        .map(|n| n.saturating_sub(limit))
        .sum::<usize>();
        if hidden > 0 {
            s.push_str(&format!("\n... and {hidden} more (all are in --json)"));
        }
        if self.unverified > 0 {
            s.push_str(&format!(
                "\n{} files had no checksum in the catalog (adopted, never verified): run `s3backup verify` first to record one",
                self.unverified
            ));
        }
        s
    }
}

/// The first `limit` corrupt, refused and failed keys of a restore, a line each.
fn problems(
    s: &mut String,
    not_done: &str,
    (corrupt, refused, failed): (&[String], &[Refused], &[Failed]),
    limit: usize,
) {
    for k in corrupt.iter().take(limit) {
        s.push_str(&format!(
            "\ncorrupt {k:?}: the file is not what the backup wrote ({not_done}; `verify` tells more)"
        ));
    }
    for r in refused.iter().take(limit) {
        s.push_str(&format!("\nrefused {:?}: {}", r.key, r.reason));
    }
    for f in failed.iter().take(limit) {
        s.push_str(&format!("\nfailed {:?}: {}", f.key, f.error));
    }
}

enum Outcome {
    /// Bytes, and whether they were checked against a recorded checksum.
    Uploaded(u64, bool),
    Identical,
    Conflict,
    Corrupt,
    Refused(String),
}

/// One key to put back, the local path that holds its bytes (a folder marker has none), and what the
/// catalog recorded of it (none for a history file).
struct Item {
    key: String,
    path: Option<PathBuf>,
    row: Option<Entry>,
    /// The folder the path must stay inside, with no link on the way.
    root: PathBuf,
}

/// Bucket-level trouble (no such bucket, wrong credentials, no endpoint): one line, before any key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BucketError(pub String);

/// Ask the bucket for one key: a missing bucket, wrong keys or an unreachable endpoint are said once,
/// before anything is read or sent (a dry run too). Restore needs s3:ListBucket anyway: without it, S3
/// answers 403 rather than 404 for a key the bucket does not hold.
pub async fn probe(client: &Client, bucket: &str) -> Result<(), BucketError> {
    client
        .list_objects_v2()
        .bucket(bucket)
        .max_keys(1)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| BucketError(errtext::s3_line(&format!("listing bucket {bucket}"), &e)))
}

pub async fn restore(client: &Client, source: &Source, settings: &Settings) -> RestoreReport {
    let started = Instant::now();
    let mut report = RestoreReport {
        dry_run: settings.dry_run,
        ..RestoreReport::default()
    };
    let mut after = String::new();
    let mut history_items = match source {
        Source::History {
            run_dir,
            prefix,
            catalog,
        } => Some(history_items(
            run_dir,
            prefix,
            catalog.as_ref(),
            &mut report,
        )),
        Source::AsOf(a) => {
            match newer_than(client, &settings.bucket, a).await {
                Ok(n) => report.newer_than_as_of = Some(n),
                Err(e) => report.failed.push(Failed {
                    key: String::new(),
                    error: e,
                }),
            }
            None
        }
        Source::Catalog { .. } => None,
    };
    loop {
        let items: Vec<Item> = match source {
            Source::Catalog {
                catalog,
                dest,
                prefix,
            } => match catalog.page(prefix, &after, PAGE) {
                Ok(rows) => rows
                    .into_iter()
                    .map(|r| Item {
                        path: (!r.key.ends_with('/')).then(|| dest.join(&r.key)),
                        key: r.key.clone(),
                        row: Some(r),
                        root: dest.clone(),
                    })
                    .collect(),
                Err(e) => {
                    report.failed.push(Failed {
                        key: String::new(),
                        error: e.to_string(),
                    });
                    break;
                }
            },
            Source::AsOf(a) => match a.page(&after) {
                Ok(items) => items,
                Err(error) => {
                    report.failed.push(Failed {
                        key: String::new(),
                        error,
                    });
                    break;
                }
            },
            Source::History { .. } => {
                let all = history_items.as_mut().expect("set above");
                all.drain(..all.len().min(PAGE as usize)).collect()
            }
        };
        let Some(last) = items.last() else { break };
        after = last.key.clone();
        let results: Vec<(String, Result<Outcome, String>)> = futures::stream::iter(items)
            .map(|item| async move {
                let r = restore_one(client, &item, settings).await;
                (item.key, r)
            })
            .buffer_unordered(settings.concurrency.max(1))
            .collect()
            .await;
        for (key, r) in results {
            match r {
                Ok(Outcome::Uploaded(n, checked)) => {
                    report.uploaded += 1;
                    report.bytes_uploaded += n;
                    report.unverified += u64::from(!checked);
                }
                Ok(Outcome::Identical) => report.identical += 1,
                Ok(Outcome::Conflict) => report.conflicts.push(key),
                Ok(Outcome::Corrupt) => report.corrupt.push(key),
                Ok(Outcome::Refused(reason)) => report.refused.push(Refused { key, reason }),
                Err(error) => report.failed.push(Failed { key, error }),
            }
        }
    }
    report.conflicts.sort_unstable();
    report.corrupt.sort_unstable();
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    report
}

/// How many objects the bucket holds under the prefix that the instant's tree has no key for.
async fn newer_than(client: &Client, bucket: &str, a: &AsOf) -> Result<u64, String> {
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(&a.prefix)
        .encoding_type(aws_sdk_s3::types::EncodingType::Url)
        .into_paginator()
        .send();
    let mut n = 0;
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| errtext::s3_line(&format!("listing bucket {bucket}"), &e))?;
        for key in page
            .contents()
            .iter()
            .filter_map(|o| crate::listing::decode_key(o.key().unwrap_or_default()))
        {
            if !a.catalog.exists_at(a.t, &key).map_err(|e| e.to_string())? {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// What `to_dir` did.
#[derive(Debug, Default, Serialize)]
pub struct ToDirReport {
    /// Files written (hard-linked or copied), each checked against the catalog's CRC64NVME.
    pub files: u64,
    pub linked: u64,
    pub copied: u64,
    pub folders: u64,
    pub bytes: u64,
    /// Files the catalog had no checksum for: their size and mtime matched, their bytes could not be
    /// checked.
    pub unverified: u64,
    pub corrupt: Vec<String>,
    pub refused: Vec<Refused>,
    pub failed: Vec<Failed>,
    pub elapsed_seconds: f64,
}

impl ToDirReport {
    pub fn ok(&self) -> bool {
        self.corrupt.is_empty() && self.refused.is_empty() && self.failed.is_empty()
    }

    pub fn human_summary(&self, dir: &Path, limit: usize) -> String {
        let mut s = format!(
            "s3backup restore --to-dir {}: {} files ({} linked, {} copied; {}), {} folders, {} corrupt, {} refused, {} failed in {:.1}s",
            dir.display(),
            self.files,
            self.linked,
            self.copied,
            crate::report::human_bytes(self.bytes),
            self.folders,
            self.corrupt.len(),
            self.refused.len(),
            self.failed.len(),
            self.elapsed_seconds
        );
        problems(
            &mut s,
            "not written",
            (&self.corrupt, &self.refused, &self.failed),
            limit,
        );
        s
    }
}

/// Write the tree of `a` into `dir` (made when missing; it must be empty): each file read once and
/// checked against the catalog before it is linked (where `dir` is on the same file system and `copy`
/// is off: backed-up files are never modified in place) or copied (through a temp file, made durable,
/// its mtime kept).
pub fn to_dir(a: &AsOf, dir: &Path, copy: bool) -> ToDirReport {
    let started = Instant::now();
    let mut report = ToDirReport::default();
    let mut after = String::new();
    loop {
        let items = match a.page(&after) {
            Ok(items) => items,
            Err(error) => {
                report.failed.push(Failed {
                    key: String::new(),
                    error,
                });
                break;
            }
        };
        let Some(last) = items.last() else { break };
        after = last.key.clone();
        for item in items {
            to_dir_one(&item, dir, copy, &mut report);
        }
    }
    if let Err(e) = crate::atomic::sync_dir(dir) {
        report.failed.push(Failed {
            key: String::new(),
            error: format!("{}: {e}", dir.display()),
        });
    }
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    report
}

fn to_dir_one(item: &Item, dir: &Path, copy: bool, report: &mut ToDirReport) {
    {
        let rel = match crate::keypath::map_key(&item.key, item.row.as_ref().map_or(0, |r| r.size))
        {
            crate::keypath::Mapping::File(rel) | crate::keypath::Mapping::FolderMarker(rel) => rel,
            crate::keypath::Mapping::Refused(reason) => {
                report.refused.push(Refused {
                    key: item.key.clone(),
                    reason: reason.to_string(),
                });
                return;
            }
        };
        let out = dir.join(&rel);
        let Some(path) = &item.path else {
            match crate::plan::create_dirs(dir, &rel) {
                Ok(()) => report.folders += 1,
                Err(e) => report.failed.push(Failed {
                    key: item.key.clone(),
                    error: format!("creating {}: {e}", out.display()),
                }),
            }
            return;
        };
        match write_one(item, path, &rel, dir, copy) {
            Ok(Written::Linked(n, checked)) => {
                report.files += 1;
                report.linked += 1;
                report.bytes += n;
                report.unverified += u64::from(!checked);
            }
            Ok(Written::Copied(n, checked)) => {
                report.files += 1;
                report.copied += 1;
                report.bytes += n;
                report.unverified += u64::from(!checked);
            }
            Ok(Written::Corrupt) => report.corrupt.push(item.key.clone()),
            Err(Unfit::Refused(reason)) => report.refused.push(Refused {
                key: item.key.clone(),
                reason,
            }),
            Err(Unfit::Io(e)) => report.failed.push(Failed {
                key: item.key.clone(),
                error: format!("{} -> {}: {e}", path.display(), out.display()),
            }),
        }
    }
}

enum Written {
    Linked(u64, bool),
    Copied(u64, bool),
    Corrupt,
}

fn write_one(
    item: &Item,
    path: &Path,
    rel: &Path,
    dir: &Path,
    copy: bool,
) -> Result<Written, Unfit> {
    let f = open_regular(&item.root, path)?;
    let meta = f.metadata()?;
    let d = digest_file(f, u64::MAX)?;
    let checked = match item.row.as_ref().map(|row| vouch(row, &meta, &d)) {
        Some(Some(checked)) => checked,
        Some(None) => return Ok(Written::Corrupt),
        None => false,
    };
    if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::plan::create_dirs(dir, parent)?;
    }
    let out = dir.join(rel);
    if !copy {
        match std::fs::hard_link(path, &out) {
            Ok(()) => return Ok(Written::Linked(d.size, checked)),
            // Another file system (or one without links): copied instead.
            Err(e)
                if e.raw_os_error() == Some(libc::EXDEV)
                    || e.kind() == io::ErrorKind::Unsupported => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            Err(e) => return Err(Unfit::Io(e)),
        }
    }
    // Copied from the file as opened (no second path lookup), re-checked as it is written.
    let mut src = open_regular(&item.root, path)?;
    let staged = crate::atomic::Staged::create(&out)?;
    let mut crc = Crc64::default();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut w = staged.file();
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
        io::Write::write_all(&mut w, &buf[..n])?;
    }
    if crc.value() != d.crc64 {
        return Ok(Written::Corrupt);
    }
    staged.commit(d.size, meta.modified().ok())?;
    Ok(Written::Copied(d.size, checked))
}

/// The files of a history run folder, keys from their relative paths, in key order.
fn history_items(
    run_dir: &Path,
    prefix: &str,
    catalog: Option<&Catalog>,
    report: &mut RestoreReport,
) -> Vec<Item> {
    let folder = run_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let mut items = Vec::new();
    for e in walkdir::WalkDir::new(run_dir)
        .min_depth(1)
        .sort_by_file_name()
    {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                report.failed.push(Failed {
                    key: String::new(),
                    error: format!("reading {}: {err}", run_dir.display()),
                });
                continue;
            }
        };
        if e.file_type().is_dir() {
            continue;
        }
        let rel = e
            .path()
            .strip_prefix(run_dir)
            .expect("below the run folder");
        if !e.file_type().is_file() {
            // History only ever holds regular files it moved there; anything else was put there.
            report.refused.push(Refused {
                key: rel.to_string_lossy().into_owned(),
                reason: format!(
                    "{} is not a regular file (a link, a device, a fifo): nothing is read through it",
                    e.path().display()
                ),
            });
            continue;
        }
        match rel.to_str() {
            Some(key) if key.starts_with(prefix) => {
                // The catalog's row for the version, to vouch for its bytes; a file with none (moved
                // there before the catalog indexed history, or a user's own) goes up unverified.
                let held =
                    catalog.and_then(|c| c.held_by_file(&format!("{folder}/{key}")).ok().flatten());
                items.push(Item {
                    key: key.to_owned(),
                    path: Some(e.path().to_path_buf()),
                    row: held.map(|h| Entry {
                        key: h.key,
                        size: h.size,
                        last_modified: h.last_modified,
                        etag: h.etag,
                        crc64nvme: h.crc64nvme,
                        damaged: h.damaged,
                        version_id: h.version_id,
                    }),
                    root: run_dir.to_path_buf(),
                })
            }
            Some(_) => {}
            None => report.failed.push(Failed {
                key: rel.to_string_lossy().into_owned(),
                error: "the file name is not UTF-8, so it is no key s3backup wrote".into(),
            }),
        }
    }
    items.sort_by(|a, b| a.key.cmp(&b.key));
    items
}

/// What the local file hashes to: the MD5 of the whole (or of each part) and its CRC64NVME.
struct Digests {
    size: u64,
    md5: [u8; 16],
    part_md5s: Vec<[u8; 16]>,
    crc64: u64,
}

/// Why a file cannot be uploaded as it is.
enum Unfit {
    Refused(String),
    Io(io::Error),
}

impl From<io::Error> for Unfit {
    fn from(e: io::Error) -> Self {
        Unfit::Io(e)
    }
}

/// Open `path` for reading only if it is a regular file reached from `root` through real folders:
/// no link, whether planted as the file or as a folder on its way, is followed.
fn open_regular(root: &Path, path: &Path) -> Result<File, Unfit> {
    let rel = path
        .strip_prefix(root)
        .map_err(|_| Unfit::Refused("not under the backup folder".into()))?;
    let mut here = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for comp in parent.components() {
            here.push(comp);
            let m = std::fs::symlink_metadata(&here)?;
            if !m.is_dir() {
                return Err(Unfit::Refused(format!(
                    "{} is not a folder (a link or a file): nothing is read through it",
                    here.display()
                )));
            }
        }
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Unfit::Refused(format!(
                "{} is a symlink: its target is no file of the backup",
                path.display()
            )),
            _ => Unfit::Io(e),
        })?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(Unfit::Refused(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(f)
}

fn digest_file(mut f: File, part_size: u64) -> io::Result<Digests> {
    let size = f.metadata()?.len();
    // A file of one part: its part's MD5 is the whole's, so only one is computed.
    let parted = size > part_size;
    let mut whole = Md5State::new();
    let mut part = Md5State::new();
    let mut part_md5s = Vec::new();
    let mut in_part = 0u64;
    let mut crc = Crc64::default();
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let mut chunk = &buf[..n];
        whole.update(chunk);
        crc.update(chunk);
        while parted && !chunk.is_empty() {
            let take = chunk.len().min((part_size - in_part) as usize);
            part.update(&chunk[..take]);
            in_part += take as u64;
            chunk = &chunk[take..];
            if in_part == part_size {
                part_md5s.push(std::mem::replace(&mut part, Md5State::new()).finalize());
                in_part = 0;
            }
        }
    }
    if in_part > 0 {
        part_md5s.push(part.finalize());
    }
    let md5 = whole.finalize();
    if !parted && size > 0 {
        part_md5s.push(md5);
    }
    Ok(Digests {
        size,
        md5,
        part_md5s,
        crc64: crc.value(),
    })
}

/// Whether the bytes read (`d`) are what the backup wrote (`row`): `Some(true)` checked against a
/// recorded checksum, `Some(false)` nothing recorded to check against, `None` other bytes.
fn vouch(row: &Entry, meta: &std::fs::Metadata, d: &Digests) -> Option<bool> {
    if row.damaged
        || d.size != row.size
        || (row.last_modified.is_some() && meta.modified().ok() != row.last_modified)
    {
        return None;
    }
    if let Some(want) = row.crc64nvme {
        return (want == d.crc64).then_some(true);
    }
    let etag = row.etag.as_deref().unwrap_or("").trim_matches('"');
    if crate::verify::is_md5_hex(etag) {
        return etag.eq_ignore_ascii_case(&hex(&d.md5)).then_some(true);
    }
    Some(false)
}

async fn restore_one(client: &Client, item: &Item, s: &Settings) -> Result<Outcome, String> {
    let key = &item.key;
    // A file with no row to vouch for it goes up unverified.
    let mut checked = item.row.is_some();
    let digests = match &item.path {
        Some(path) => {
            let (p, root, part) = (path.clone(), item.root.clone(), s.part_size);
            let read = tokio::task::spawn_blocking(move || {
                let f = open_regular(&root, &p)?;
                let meta = f.metadata()?;
                Ok::<_, Unfit>((meta, digest_file(f, part)?))
            })
            .await
            .map_err(|e| e.to_string())?;
            let (meta, d) = match read {
                Ok(read) => read,
                Err(Unfit::Refused(reason)) => return Ok(Outcome::Refused(reason)),
                Err(Unfit::Io(e)) => return Err(format!("reading {}: {e}", path.display())),
            };
            if let Some(row) = &item.row {
                match vouch(row, &meta, &d) {
                    Some(c) => checked = c,
                    None => return Ok(Outcome::Corrupt),
                }
            }
            Some(d)
        }
        None => None,
    };
    let (size, md5_hex, crc_b64) = match &digests {
        Some(d) => (d.size, hex(&d.md5), B64.encode(d.crc64.to_be_bytes())),
        None => (0, hex(&md5_many::Md5State::new().finalize()), String::new()),
    };
    // What the bucket holds under the key now.
    let head = client
        .head_object()
        .bucket(&s.bucket)
        .key(key)
        .customize()
        .mutate_request(|r| {
            r.headers_mut().insert("x-amz-checksum-mode", "ENABLED");
        })
        .send()
        .await;
    match head {
        Ok(h) => {
            let same_size = h.content_length() == Some(size as i64);
            let same_md5 = h.e_tag().map(|e| e.trim_matches('"')) == Some(md5_hex.as_str());
            let same_crc = !crc_b64.is_empty() && h.checksum_crc64_nvme() == Some(crc_b64.as_str());
            let same_multipart = digests.as_ref().is_some_and(|d| {
                h.e_tag().map(|e| e.trim_matches('"'))
                    == Some(multipart_etag(&d.part_md5s).as_str())
            });
            // The object the backup fetched, still there: its ETag (multipart ones too, whatever
            // their part size) is what the catalog recorded for the bytes just vouched for.
            let same_recorded = checked
                && item.row.as_ref().is_some_and(|r| {
                    r.etag.as_deref().map(|e| e.trim_matches('"'))
                        == h.e_tag().map(|e| e.trim_matches('"'))
                        && r.etag.is_some()
                });
            if same_size && (same_md5 || same_crc || same_multipart || same_recorded) {
                return Ok(Outcome::Identical);
            }
            if !s.overwrite {
                return Ok(Outcome::Conflict);
            }
        }
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {}
        Err(e) => {
            return Err(errtext::s3_line(&format!("HEAD {}", errtext::key(key)), &e));
        }
    }
    if s.dry_run {
        return Ok(Outcome::Uploaded(size, checked));
    }
    match (&item.path, &digests) {
        (Some(path), Some(d)) if d.part_md5s.len() > 4 => {
            upload_parts(client, s, key, path, d).await?;
        }
        _ => {
            let body = match &item.path {
                Some(path) => ByteStream::read_from()
                    .path(path)
                    .length(Length::Exact(size))
                    .build()
                    .await
                    .map_err(|e| format!("reading {}: {e}", path.display()))?,
                None => ByteStream::from_static(b""),
            };
            let md5 = digests
                .as_ref()
                .map_or_else(|| md5_many::Md5State::new().finalize(), |d| d.md5);
            client
                .put_object()
                .bucket(&s.bucket)
                .key(key)
                .content_length(size as i64)
                .content_md5(B64.encode(md5))
                .body(body)
                .send()
                .await
                .map_err(|e| errtext::s3_line(&format!("PUT {}", errtext::key(key)), &e))?;
        }
    }
    Ok(Outcome::Uploaded(size, checked))
}

async fn upload_parts(
    client: &Client,
    s: &Settings,
    key: &str,
    path: &Path,
    d: &Digests,
) -> Result<(), String> {
    let what = |op: &str| format!("{op} {}", errtext::key(key));
    let up = client
        .create_multipart_upload()
        .bucket(&s.bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| errtext::s3_line(&what("CreateMultipartUpload"), &e))?;
    let upload_id = up.upload_id().unwrap_or_default().to_owned();
    let mut parts = Vec::with_capacity(d.part_md5s.len());
    let result: Result<(), String> = async {
        for (i, md5) in d.part_md5s.iter().enumerate() {
            let offset = i as u64 * s.part_size;
            let len = s.part_size.min(d.size - offset);
            let body = ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(Length::Exact(len))
                .build()
                .await
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let n = i as i32 + 1;
            let out = client
                .upload_part()
                .bucket(&s.bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(n)
                .content_length(len as i64)
                .content_md5(B64.encode(md5))
                .body(body)
                .send()
                .await
                .map_err(|e| errtext::s3_line(&format!("{} part {n}", what("UploadPart")), &e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(out.e_tag().map(str::to_owned))
                    .build(),
            );
        }
        client
            .complete_multipart_upload()
            .bucket(&s.bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| errtext::s3_line(&what("CompleteMultipartUpload"), &e))
    }
    .await;
    if result.is_err() {
        let _ = client
            .abort_multipart_upload()
            .bucket(&s.bucket)
            .key(key)
            .upload_id(&upload_id)
            .send()
            .await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_caps_each_list_and_says_how_many_more() {
        let mut r = RestoreReport::default();
        for i in 0..5 {
            r.failed.push(Failed {
                key: format!("f{i}"),
                error: "e".into(),
            });
            r.corrupt.push(format!("c{i}"));
        }
        let s = r.human_summary(2);
        assert!(s.contains("failed \"f1\"") && !s.contains("\"f2\""), "{s}");
        assert!(s.contains("... and 6 more"), "{s}");
        assert!(!r.ok());
        r.dry_run = true;
        r.uploaded = 3;
        let j = r.to_json();
        assert_eq!(j["would_upload"], 3);
        assert!(j.get("uploaded").is_none());
    }
}
