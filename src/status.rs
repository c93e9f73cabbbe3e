//! The records a destination's state folder keeps of its runs, and `s3backup status`, which reads them
//! with no network: `last-run.json` (every run that got past argument parsing, whatever its exit) and
//! `last-success.json` (the last run that exited 0, which a later failure does not overwrite).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use serde_json::Value;

pub const LAST_RUN: &str = "last-run.json";
pub const LAST_SUCCESS: &str = "last-success.json";
pub const DEFAULT_MAX_AGE_HOURS: f64 = 26.0;

/// `2026-11-30T03:17:05Z`.
pub fn timestamp(t: SystemTime) -> String {
    DateTime::from(t)
        .fmt(Format::DateTime)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

fn parse_timestamp(s: &str) -> Option<SystemTime> {
    SystemTime::try_from(DateTime::from_str(s, Format::DateTime).ok()?).ok()
}

/// Write `doc` as the last run (and, when it exited 0, as the last success), each atomically and durably.
pub fn record(dir: &Path, doc: &Value, succeeded: bool) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let text = format!("{doc}\n");
    write_atomically(&dir.join(LAST_RUN), &text)?;
    if succeeded {
        write_atomically(&dir.join(LAST_SUCCESS), &text)?;
    }
    Ok(())
}

fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let dir = path.parent().expect("a file in the state folder");
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    crate::atomic::sync_dir(dir)
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {detail}")]
pub struct StatusError {
    path: PathBuf,
    detail: String,
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Status {
    pub last_run: Option<Value>,
    pub last_success_at: Option<String>,
    pub age_hours: Option<f64>,
    pub healthy: bool,
    /// Records that could not be read (each names its file); a damaged `last-run.json` does not keep
    /// the verdict from the last success, a damaged `last-success.json` makes it "not healthy".
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// A run that started and has not finished: running now, or killed (then the next run sweeps
    /// what it left, and `last_run` is the run before it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfinished_run: Option<UnfinishedRun>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UnfinishedRun {
    pub started_at: String,
    pub running: bool,
}

/// A success this far "in the future" says the clock was wrong then or is now: no verdict to trust.
const CLOCK_SLACK: std::time::Duration = std::time::Duration::from_secs(600);

/// Read `dir`'s records as of `now`: healthy when the last success finished less than `max_age_hours`
/// ago.
pub fn read(dir: &Path, now: SystemTime, max_age_hours: f64) -> Result<Status, StatusError> {
    let mut problems = Vec::new();
    let last_run = read_doc(&dir.join(LAST_RUN)).unwrap_or_else(|e| {
        problems.push(e.to_string());
        None
    });
    let success_path = dir.join(LAST_SUCCESS);
    let success = read_doc(&success_path).and_then(|doc| {
        let Some(doc) = doc else { return Ok(None) };
        let bad = |detail: String| StatusError {
            path: success_path.clone(),
            detail,
        };
        let at = doc["finished_at"]
            .as_str()
            .ok_or_else(|| bad("no finished_at".into()))?;
        let t = parse_timestamp(at)
            .ok_or_else(|| bad(format!("finished_at {at:?} is not an RFC 3339 time")))?;
        Ok(Some((at.to_owned(), t)))
    });
    let success = success.unwrap_or_else(|e| {
        problems.push(e.to_string());
        None
    });
    let success = success.filter(|(at, t)| {
        let future = t.duration_since(now).is_ok_and(|d| d > CLOCK_SLACK);
        if future {
            problems.push(format!(
                "{}: the last success finished at {at}, in the future: the clock was wrong then or is now, so its age says nothing",
                success_path.display()
            ));
        }
        !future
    });
    let age_hours = success.as_ref().map(|(_, t)| match now.duration_since(*t) {
        Ok(d) => d.as_secs_f64() / 3600.0,
        // Within the slack: as fresh as can be.
        Err(_) => 0.0,
    });
    let unfinished_run = crate::lock::unfinished(dir).map(|u| UnfinishedRun {
        started_at: timestamp(u.since),
        running: u.running,
    });
    Ok(Status {
        last_run,
        healthy: age_hours.is_some_and(|a| a < max_age_hours),
        last_success_at: success.map(|(at, _)| at),
        age_hours: age_hours.map(|a| (a * 100.0).round() / 100.0),
        problems,
        unfinished_run,
    })
}

fn read_doc(path: &Path) -> Result<Option<Value>, StatusError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StatusError {
                path: path.to_path_buf(),
                detail: e.to_string(),
            });
        }
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if v.is_object() => Ok(Some(v)),
        Ok(_) => Err(StatusError {
            path: path.to_path_buf(),
            detail: "not a run record: not a JSON object".into(),
        }),
        Err(e) => Err(StatusError {
            path: path.to_path_buf(),
            detail: format!("not a run record: {e}"),
        }),
    }
}

impl Status {
    /// A few lines for a person.
    pub fn human(&self, max_age_hours: f64) -> String {
        let mut s = String::new();
        match &self.last_run {
            None => s.push_str("last run: never (no record in this state folder)\n"),
            Some(r) => {
                let at = r["finished_at"].as_str().unwrap_or("an unknown time");
                let code = r["exit_code"]
                    .as_u64()
                    .map_or("?".into(), |c| c.to_string());
                s.push_str(&format!("last run: {at}, exit {code}"));
                if r.get("listed").is_some() {
                    s.push_str(&format!(
                        ": {} listed, {} downloaded, {} unchanged, {} failed, {} refused",
                        r["listed"],
                        r["downloaded"],
                        r["unchanged"],
                        r["failed"].as_array().map_or(0, Vec::len),
                        r["refused"].as_array().map_or(0, Vec::len),
                    ));
                }
                if let Some(e) = r["error"].as_str() {
                    s.push_str(&format!("; error: {e}"));
                }
                s.push('\n');
            }
        }
        match (&self.last_success_at, self.age_hours) {
            (Some(at), Some(age)) => {
                s.push_str(&format!("last success: {at} ({age:.1} hours ago)\n"))
            }
            _ => s.push_str("last success: never\n"),
        }
        for p in &self.problems {
            s.push_str(&format!("problem: {p}\n"));
        }
        match &self.unfinished_run {
            Some(u) if u.running => {
                s.push_str(&format!("a run is in progress since {}\n", u.started_at))
            }
            Some(u) => s.push_str(&format!(
                "a run started at {} did not finish (killed or crashed; the next run cleans up after it)\n",
                u.started_at
            )),
            None => {}
        }
        s.push_str(&format!(
            "{} (a success within {max_age_hours} hours is healthy)",
            if self.healthy {
                "healthy"
            } else {
                "NOT healthy"
            }
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ages_a_success_and_keeps_it_through_a_failure() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state/dest-1");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let st = read(&dir, now, 26.0).unwrap();
        assert!(!st.healthy && st.last_run.is_none() && st.last_success_at.is_none());

        let ok_at = now - Duration::from_secs(3 * 3600);
        let ok = serde_json::json!({"exit_code": 0, "finished_at": timestamp(ok_at), "listed": 3});
        record(&dir, &ok, true).unwrap();
        let fail = serde_json::json!({"exit_code": 2, "finished_at": timestamp(now), "error": "x"});
        record(&dir, &fail, false).unwrap();
        let st = read(&dir, now, 26.0).unwrap();
        assert_eq!(st.last_run, Some(fail));
        assert_eq!(
            st.last_success_at.as_deref(),
            Some(timestamp(ok_at).as_str())
        );
        assert_eq!(st.age_hours, Some(3.0));
        assert!(st.healthy);
        assert!(!read(&dir, now, 2.5).unwrap().healthy);
        assert!(
            st.human(26.0).contains("last success: "),
            "{}",
            st.human(26.0)
        );

        // A damaged last run keeps the verdict of the intact last success, and says so.
        fs::write(dir.join(LAST_RUN), "{not json").unwrap();
        let st = read(&dir, now, 26.0).unwrap();
        assert!(st.healthy && st.last_run.is_none());
        assert!(st.problems[0].contains(LAST_RUN), "{:?}", st.problems);
        // A damaged last success is no success.
        fs::write(dir.join(LAST_SUCCESS), "{not json").unwrap();
        let st = read(&dir, now, 26.0).unwrap();
        assert!(!st.healthy);
        assert!(st.problems[1].contains(LAST_SUCCESS), "{:?}", st.problems);
        assert!(st.human(26.0).contains("problem: "));
        // A success in the future is no verdict; one a few minutes ahead (clock skew) is fresh.
        let ahead = serde_json::json!({"exit_code": 0, "finished_at": timestamp(now + Duration::from_secs(3600))});
        record(&dir, &ahead, true).unwrap();
        let st = read(&dir, now, 26.0).unwrap();
        assert!(!st.healthy && st.problems.iter().any(|p| p.contains("in the future")));
        let skew = serde_json::json!({"exit_code": 0, "finished_at": timestamp(now + Duration::from_secs(60))});
        record(&dir, &skew, true).unwrap();
        assert!(read(&dir, now, 26.0).unwrap().healthy);
        // A marker with nobody holding the lock: a run that died.
        fs::write(dir.join("running"), b"").unwrap();
        fs::write(dir.join("lock"), b"").unwrap();
        let st = read(&dir, now, 26.0).unwrap();
        assert_eq!(st.unfinished_run.as_ref().map(|u| u.running), Some(false));
        assert!(st.human(26.0).contains("did not finish"));
    }
}
