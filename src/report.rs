//! The run's outcome: counters, refused and failed keys, the JSON document, the human summary, the
//! exit code and the progress bar.

use std::fmt::Write as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// The process exit codes (documented in `--help` and the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Every listed object is backed up (archived objects are listed, not failed).
    Ok = 0,
    /// Some objects failed or were refused; the rest are backed up.
    Partial = 1,
    /// Usage or configuration error: bad flag, unwritable destination, missing bucket, access denied.
    Config = 2,
    /// Another run into the same destination holds the lock (EX_TEMPFAIL).
    Locked = 75,
    /// Stopped by SIGINT (128 + 2): what was committed stays, downloads in flight were abandoned.
    Interrupted = 130,
    /// Stopped by SIGTERM (128 + 15), likewise.
    Terminated = 143,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0   every listed object is backed up (archived objects are listed in the report, not failed)
  1   some objects failed or were refused (named in the summary); the rest are backed up
  2   usage or configuration error (bad flag, unwritable destination, missing bucket, access denied)
  75  another run into the same destination holds the lock
  130 stopped by SIGINT, 143 by SIGTERM: finished files are kept, the run record says so";

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Refused {
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Failed {
    pub key: String,
    pub error: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub listed: u64,
    pub downloaded: u64,
    pub unchanged: u64,
    pub bytes_downloaded: u64,
    pub elapsed_seconds: f64,
    pub refused: Vec<Refused>,
    pub failed: Vec<Failed>,
    /// Folder markers (zero-byte keys ending in `/`) whose directory exists.
    pub folders: u64,
    /// Downloaded objects for which S3 offered no checksum and no MD5 ETag (byte count checked only).
    pub unverified: u64,
    /// Temp files of an interrupted earlier run removed before this one started.
    pub stale_temp_files_removed: u64,
    /// Objects in an archive tier (not restored) with no good local copy: not failures, as no run can
    /// read them until someone restores them (`--restore-archived` asks for that).
    pub archived: Vec<String>,
    /// RestoreObject requests this run sent (`--restore-archived`).
    pub restore_requested: u64,
    /// With `--history-dir`: files whose older version was moved to history before being replaced.
    pub replaced_to_history: u64,
    /// With `--history-dir`: files whose object is gone from a complete listing, moved to history.
    pub deleted_to_history: u64,
    /// With `--history-dir`: run folders older than `--keep-days` removed.
    pub history_pruned_runs: u64,
    /// With `--history-dir`: replaced files that were no version of their object (not as the backup
    /// wrote them: rot, an edit; or marked damaged by `verify`), set aside in `<run-id>.changed-locally`
    /// rather than kept as a version.
    pub repaired: u64,
    /// With `--history-dir`: files of deleted objects that were likewise changed locally, set aside.
    pub deleted_changed_locally: u64,
    /// With `--history-dir`: how many files a complete listing would have moved out of the destination
    /// when that was more than `--max-delete` allows (none was moved); null otherwise.
    pub max_delete_blocked: Option<u64>,
    /// The `--max-delete` (and `--max-delete-bytes`) limit as the summary names it.
    #[serde(skip)]
    pub max_delete_limit: String,
    pub dry_run: bool,
    /// With `--dry-run`: objects that a real run would download.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_download: Option<u64>,
    /// With `--dry-run` and `--history-dir`: files a real run would move to history as deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_delete_to_history: Option<u64>,
    /// With `--dry-run` and `--history-dir`: files a real run would replace (their version kept there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_replace_to_history: Option<u64>,
    /// With `--dry-run` and `--history-dir`: run folders a real run would prune.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_prune_runs: Option<u64>,
    /// The signal that stopped the run (`SIGINT`, `SIGTERM`): the counts are what it got to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<crate::signals::Signal>,
    /// Set when the run stopped early (e.g. the listing broke off): not every object was seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `--versions`: the bucket's versioning (`Enabled`, `Suspended`, or `Disabled`: never
    /// enabled, so the run was an unversioned one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versioning: Option<&'static str>,
    /// With `--versions`: noncurrent versions listed, and those fetched into history by this run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions_listed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions_downloaded: Option<u64>,
    /// With `--versions`: delete markers listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_markers: Option<u64>,
}

impl Report {
    pub fn exit(&self) -> Exit {
        match self.interrupted {
            Some(crate::signals::Signal::Int) => return Exit::Interrupted,
            Some(crate::signals::Signal::Term) => return Exit::Terminated,
            None => {}
        }
        if self.refused.is_empty()
            && self.failed.is_empty()
            && self.error.is_none()
            && self.max_delete_blocked.is_none()
        {
            Exit::Ok
        } else {
            Exit::Partial
        }
    }

    /// The JSON document: in a dry run, the counts of what a real run would do take the place of
    /// what was done (nothing was).
    pub fn to_json(&self) -> serde_json::Value {
        let mut doc = serde_json::to_value(self).expect("plain data serialises");
        if self.dry_run
            && let Some(map) = doc.as_object_mut()
        {
            for done in [
                "downloaded",
                "bytes_downloaded",
                "replaced_to_history",
                "deleted_to_history",
                "history_pruned_runs",
                "repaired",
                "deleted_changed_locally",
                "stale_temp_files_removed",
                "restore_requested",
            ] {
                map.remove(done);
            }
        }
        doc
    }

    /// One line, then the refused and failed keys (the first few; all of them are in the JSON report).
    pub fn human_summary(&self, limit: usize) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "s3backup: {} listed, {} downloaded ({}), {} unchanged, {} folders, {} refused, {} failed in {:.1}s",
            self.listed,
            self.downloaded,
            human_bytes(self.bytes_downloaded),
            self.unchanged,
            self.folders,
            self.refused.len(),
            self.failed.len(),
            self.elapsed_seconds
        );
        if let Some(n) = self.would_download {
            let _ = write!(s, " (dry run: {n} would be downloaded");
            if let Some(d) = self.would_replace_to_history {
                let _ = write!(s, ", {d} replaced with their version moved to history");
            }
            if let Some(d) = self.would_delete_to_history {
                let _ = write!(s, ", {d} moved to history as deleted");
            }
            if let Some(d) = self.would_prune_runs {
                let _ = write!(s, ", {d} old history runs pruned");
            }
            s.push(')');
        }
        if self.unverified > 0 {
            let _ = write!(s, "; {} had no checksum to verify against", self.unverified);
        }
        if !self.archived.is_empty() {
            let _ = write!(
                s,
                "; {} archived (GLACIER/DEEP_ARCHIVE, not restored; keys at S3BACKUP_LOG=debug)",
                self.archived.len()
            );
            if self.restore_requested > 0 {
                let _ = write!(s, ", restore requested for {}", self.restore_requested);
            }
        }
        if self.replaced_to_history + self.deleted_to_history > 0 {
            let _ = write!(
                s,
                "; to history: {} replaced, {} deleted",
                self.replaced_to_history, self.deleted_to_history
            );
        }
        if let (Some(listed), Some(kept)) = (self.versions_listed, self.versions_downloaded) {
            let _ = write!(
                s,
                "; versions: {listed} older listed, {kept} fetched into history, {} delete markers",
                self.delete_markers.unwrap_or(0)
            );
        }
        if self.repaired + self.deleted_changed_locally > 0 {
            let _ = write!(
                s,
                "; changed locally, set aside (not versions): {} repaired, {} of deleted objects",
                self.repaired, self.deleted_changed_locally
            );
        }
        if let Some(sig) = self.interrupted {
            let _ = write!(
                s,
                "\nstopped by {}: the files listed as downloaded are in place; the rest waits for the next run",
                sig.name()
            );
        }
        if let Some(e) = &self.error {
            let _ = write!(s, "\nerror: {e}");
        }
        if let Some(n) = self.max_delete_blocked {
            let _ = write!(
                s,
                "\nerror: {n} files are gone from the bucket, more than {} allows: {} moved to history (check the bucket and --prefix; raise the limit to accept)",
                self.max_delete_limit,
                if self.dry_run {
                    "a real run would move none"
                } else {
                    "none was"
                }
            );
        }
        for r in self.refused.iter().take(limit) {
            let _ = write!(s, "\nrefused {:?}: {}", r.key, r.reason);
        }
        for f in self.failed.iter().take(limit) {
            let _ = write!(s, "\nfailed {:?}: {}", f.key, f.error);
        }
        let hidden =
            self.refused.len().saturating_sub(limit) + self.failed.len().saturating_sub(limit);
        if hidden > 0 {
            let _ = write!(s, "\n... and {hidden} more (all are in the JSON report)");
        }
        s
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A spinner with running counts, shown only when stderr is a terminal (indicatif hides it otherwise).
pub fn progress_bar(enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("static template"),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_follows_problems() {
        let mut r = Report::default();
        assert_eq!(r.exit(), Exit::Ok);
        r.archived.push("cold/a.jpg".into());
        assert_eq!(r.exit(), Exit::Ok, "archived objects are not failures");
        r.refused.push(Refused {
            key: "../x".into(),
            reason: "dot".into(),
        });
        assert_eq!(r.exit(), Exit::Partial);
        let r = Report {
            error: Some("listing broke off".into()),
            ..Report::default()
        };
        assert_eq!(r.exit(), Exit::Partial);
    }

    #[test]
    fn json_has_the_contract_fields() {
        let v: serde_json::Value = serde_json::to_value(Report::default()).unwrap();
        for k in [
            "listed",
            "downloaded",
            "unchanged",
            "bytes_downloaded",
            "elapsed_seconds",
            "refused",
            "failed",
            "archived",
            "restore_requested",
            "replaced_to_history",
            "deleted_to_history",
            "history_pruned_runs",
            "max_delete_blocked",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert!(v.get("error").is_none());
    }

    #[test]
    fn summary_names_refused_keys_and_caps_the_list() {
        let mut r = Report::default();
        for i in 0..5 {
            r.refused.push(Refused {
                key: format!("../k{i}"),
                reason: "r".into(),
            });
        }
        let s = r.human_summary(2);
        assert!(s.contains("refused \"../k0\""));
        assert!(!s.contains("../k4"));
        assert!(s.contains("3 more"));
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn a_stopped_run_exits_with_its_signal_and_a_dry_run_says_what_it_would_do() {
        let mut r = Report {
            interrupted: Some(crate::signals::Signal::Term),
            ..Report::default()
        };
        assert_eq!(r.exit(), Exit::Terminated);
        assert_eq!(r.to_json()["interrupted"], "SIGTERM");
        r.interrupted = Some(crate::signals::Signal::Int);
        assert_eq!(r.exit() as u8, 130);
        let dry = Report {
            dry_run: true,
            would_download: Some(2),
            ..Report::default()
        };
        let j = dry.to_json();
        assert_eq!(j["would_download"], 2);
        assert!(j.get("downloaded").is_none() && j.get("deleted_to_history").is_none());
    }
}
