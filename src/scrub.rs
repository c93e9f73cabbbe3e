//! `s3backup verify` (a scrub): the copy at rest, checked against the catalog with no network. Every catalogued file
//! is re-read: `missing`, `modified` (size or mtime differs from the catalog) or `corrupt` (same size and
//! mtime, other bytes: its CRC64NVME differs from the one recorded as it was written).
//!
//! A damaged file's row is marked (`Catalog::set_damaged`), so the next backup fetches it again (and
//! history does not keep it as a version); a file found intact has its mark cleared, so a verify run
//! while the volume was unmounted costs nothing once it is back. A file adopted without a checksum gets
//! the one read now, so later checks can tell rot from it. A file that cannot be read (permissions, an
//! I/O error) is reported under `unreadable` and the walk goes on.

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::catalog::{Catalog, Entry};

/// Rows read from the catalog at a time: memory stays flat whatever the backup's size.
const PAGE: u32 = 1000;
/// Sequential reads of this size keep up with `cat` on disk and page cache alike.
const READ_BUF: usize = 1024 * 1024;

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub checked: u64,
    pub ok: u64,
    pub missing: Vec<String>,
    pub modified: Vec<String>,
    pub corrupt: Vec<String>,
    /// Files that could not be checked: the key and the error.
    pub unreadable: Vec<crate::report::Failed>,
    /// Versions held in history checked (with `--versions` or a history folder).
    pub history_checked: u64,
    /// Version files in history that are missing or not what was written (named relative to the
    /// history folder): marked damaged, so restore calls them corrupt and a `--versions` run fetches
    /// them again while the bucket holds them; the damaged file itself is left where it is.
    pub history_damaged: Vec<String>,
    pub bytes_read: u64,
    pub elapsed_seconds: f64,
}

impl VerifyReport {
    pub fn all_ok(&self) -> bool {
        self.missing.is_empty()
            && self.modified.is_empty()
            && self.corrupt.is_empty()
            && self.unreadable.is_empty()
            && self.history_damaged.is_empty()
    }

    pub fn human_summary(&self, limit: usize) -> String {
        let mut s = format!(
            "s3backup verify: {} checked, {} ok, {} missing, {} modified, {} corrupt, {} unreadable; {} read in {:.1}s",
            self.checked,
            self.ok,
            self.missing.len(),
            self.modified.len(),
            self.corrupt.len(),
            self.unreadable.len(),
            crate::report::human_bytes(self.bytes_read),
            self.elapsed_seconds
        );
        for (what, keys) in [
            ("missing", &self.missing),
            ("modified", &self.modified),
            ("corrupt", &self.corrupt),
        ] {
            for k in keys.iter().take(limit) {
                s.push_str(&format!("\n{what} {k:?}"));
            }
            if keys.len() > limit {
                s.push_str(&format!(
                    "\n... and {} more {what} (all in --json)",
                    keys.len() - limit
                ));
            }
        }
        for f in self.unreadable.iter().take(limit) {
            s.push_str(&format!("\nunreadable {:?}: {}", f.key, f.error));
        }
        if self.history_checked > 0 {
            s.push_str(&format!(
                "\nhistory: {} versions checked, {} damaged",
                self.history_checked,
                self.history_damaged.len()
            ));
        }
        for f in self.history_damaged.iter().take(limit) {
            s.push_str(&format!("\ndamaged version in history {f:?}"));
        }
        if self.unreadable.len() > limit {
            s.push_str(&format!(
                "\n... and {} more unreadable (all in --json)",
                self.unreadable.len() - limit
            ));
        }
        if !(self.missing.is_empty() && self.modified.is_empty() && self.corrupt.is_empty()) {
            s.push_str(
                "\nthe next backup run fetches the damaged files again (those whose objects the bucket still holds)",
            );
        }
        s
    }
}

/// A reader that feeds an MD5 with what passes through it.
struct Tee<'a, R> {
    inner: R,
    md5: &'a mut md5_many::Md5State,
}

impl<R: io::Read> io::Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.md5.update(&buf[..n]);
        Ok(n)
    }
}

enum State {
    Ok,
    Missing,
    Modified,
    Corrupt,
}

/// Check every row of `catalog` under `prefix` against the files under `dest`.
pub fn verify(catalog: &Catalog, dest: &Path, prefix: &str) -> Result<VerifyReport, String> {
    let started = Instant::now();
    let mut report = VerifyReport::default();
    let mut buf = vec![0u8; READ_BUF];
    let mut after = String::new();
    loop {
        let rows = catalog
            .page(prefix, &after, PAGE)
            .map_err(|e| e.to_string())?;
        let Some(last) = rows.last() else { break };
        after = last.key.clone();
        for row in rows {
            report.checked += 1;
            let state = match check_one(catalog, dest, &row, &mut buf, &mut report.bytes_read) {
                Ok(state) => state,
                // A folder on the way replaced by a file: the file is not there.
                Err(e) if e.kind() == io::ErrorKind::NotADirectory => State::Missing,
                Err(e) => {
                    report.unreadable.push(crate::report::Failed {
                        error: format!("{}: {e}", dest.join(&row.key).display()),
                        key: row.key,
                    });
                    continue;
                }
            };
            let list = match state {
                State::Ok => {
                    if row.damaged {
                        catalog
                            .set_damaged(&row.key, false)
                            .map_err(|e| e.to_string())?;
                    }
                    report.ok += 1;
                    continue;
                }
                State::Missing => &mut report.missing,
                State::Modified => &mut report.modified,
                State::Corrupt => &mut report.corrupt,
            };
            catalog
                .set_damaged(&row.key, true)
                .map_err(|e| e.to_string())?;
            list.push(row.key);
        }
    }
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Check every version history holds (under `prefix`) against its file under `history`: a regular
/// file reached through real folders, of the size and CRC64NVME written (without a CRC, of the size
/// and mtime written: a touched mtime alone does not make a file with a checksum any less the version).
/// A damaged one is marked, not forgotten (restore calls it corrupt; a versioned run fetches it again),
/// and the mark goes when a verify finds it intact. A history folder that is missing or no folder is
/// one error before anything is marked: an unmounted volume is no damage to every version.
pub fn verify_history(
    catalog: &Catalog,
    history: &Path,
    prefix: &str,
    report: &mut VerifyReport,
) -> Result<(), String> {
    if !fs::metadata(history).is_ok_and(|m| m.is_dir()) {
        if catalog.held_count().map_err(|e| e.to_string())? == 0 {
            return Ok(());
        }
        return Err(format!(
            "history folder {}: missing or not a folder (not mounted?); its versions were not checked",
            history.display()
        ));
    }
    let mut buf = vec![0u8; READ_BUF];
    let mut after = String::new();
    loop {
        let rows = catalog
            .held_page(prefix, &after, PAGE)
            .map_err(|e| e.to_string())?;
        let Some(last) = rows.last() else { break };
        after = last.file.clone();
        for h in rows {
            report.history_checked += 1;
            let path = history.join(&h.file);
            let meta = fs::symlink_metadata(&path).ok();
            let intact = crate::plan::under_real_dirs(history, &path)
                && meta
                    .as_ref()
                    .is_some_and(|m| m.is_file() && m.len() == h.size)
                && match h.crc64nvme {
                    Some(want) => File::open(&path)
                        .and_then(|f| crate::verify::crc64_of_reader(f, &mut buf))
                        .map(|(got, len)| {
                            report.bytes_read += len;
                            got == want && len == h.size
                        })
                        .unwrap_or(false),
                    None => {
                        h.last_modified.is_none()
                            || meta.and_then(|m| m.modified().ok()) == h.last_modified
                    }
                };
            if intact == h.damaged {
                catalog
                    .set_held_damaged(&h.file, !intact)
                    .map_err(|e| e.to_string())?;
            }
            if !intact {
                report.history_damaged.push(h.file);
            }
        }
    }
    Ok(())
}

fn check_one(
    catalog: &Catalog,
    dest: &Path,
    row: &Entry,
    buf: &mut [u8],
    bytes_read: &mut u64,
) -> io::Result<State> {
    let path = dest.join(&row.key);
    // Through a link on the way (or a file in place of a folder), it is not where the backup wrote it.
    if !crate::plan::under_real_dirs(dest, &path) {
        return Ok(State::Missing);
    }
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::Missing),
        Err(e) => return Err(e),
    };
    if row.key.ends_with('/') {
        // A folder marker: its directory.
        return Ok(if meta.is_dir() {
            State::Ok
        } else {
            State::Missing
        });
    }
    if !meta.is_file()
        || meta.len() != row.size
        || (row.last_modified.is_some() && meta.modified().ok() != row.last_modified)
    {
        return Ok(State::Modified);
    }
    let file = File::open(&path)?;
    // A file adopted without a checksum whose ETag looks like a plain MD5 (a single-part upload): its
    // first verify checks that MD5 before it records the CRC64NVME it reads, so rot that happened
    // before is not taken as the reference. (An SSE-KMS ETag looks the same but is no MD5: such a file
    // reads as corrupt once and is fetched again, after which it has a checksum.)
    let want_md5 = row
        .crc64nvme
        .is_none()
        .then(|| row.etag.as_deref().map(|e| e.trim_matches('"')))
        .flatten()
        .filter(|e| crate::verify::is_md5_hex(e));
    let (crc, n, md5) = match want_md5 {
        None => {
            let (crc, n) = crate::verify::crc64_of_reader(file, buf)?;
            (crc, n, None)
        }
        Some(_) => {
            let mut md5 = md5_many::Md5State::new();
            let tee = Tee {
                inner: file,
                md5: &mut md5,
            };
            let (crc, n) = crate::verify::crc64_of_reader(tee, buf)?;
            (crc, n, Some(crate::verify::hex(&md5.finalize())))
        }
    };
    *bytes_read += n;
    if n != row.size {
        return Ok(State::Modified);
    }
    match row.crc64nvme {
        Some(want) if want != crc => Ok(State::Corrupt),
        Some(_) => Ok(State::Ok),
        None if md5.is_some_and(|m| !want_md5.is_some_and(|w| w.eq_ignore_ascii_case(&m))) => {
            Ok(State::Corrupt)
        }
        None => {
            catalog
                .set_checksum(&row.key, crc)
                .map_err(io::Error::other)?;
            Ok(State::Ok)
        }
    }
}
