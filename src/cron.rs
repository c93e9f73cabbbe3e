//! The `/etc/cron.d` job that runs a backup: rendered here, and only here, for the CloudFormation
//! UserData, the NixOS VM test and the local end-to-end test alike, so the three cannot drift.

use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronJob {
    pub schedule: String,
    pub user: String,
    pub binary: String,
    pub bucket: String,
    pub dest: String,
    pub prefix: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub force_path_style: bool,
    /// The job's state dir; the appliance keeps it on the data volume beside the backup.
    pub state_dir: Option<String>,
    /// `--restore-archived DAYS` (0 or none: off).
    pub restore_archived: Option<u32>,
    pub cloudwatch_namespace: Option<String>,
    pub history_dir: Option<String>,
    pub keep_days: Option<u32>,
    pub max_delete: Option<u8>,
    /// `--versions`: the backup also keeps the versions the bucket held between two runs (in history,
    /// so only together with `history_dir`).
    pub versions: bool,
    pub log_tag: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CronError {
    #[error(
        "--schedule {0:?}: expected five cron fields (minute hour day-of-month month day-of-week) or one of @hourly, @daily, @weekly, @monthly, @yearly"
    )]
    Schedule(String),
    /// A field cron would not run as written: `--schedule "99 * * * *": minute 99 is out of range 0-59`.
    #[error("--schedule {schedule:?}: {field} {problem}")]
    Field {
        schedule: String,
        field: &'static str,
        problem: String,
    },
    #[error("--user {0:?}: expected a user name ([a-z_][a-z0-9_-]*, at most 32 characters)")]
    User(String),
    #[error("{flag} {value:?}: must be an absolute path")]
    NotAbsolute { flag: &'static str, value: String },
    #[error("{flag} {value:?}: a cron line cannot carry newlines or NUL bytes")]
    Newline { flag: &'static str, value: String },
    #[error("--log-tag {0:?}: expected letters, digits, '-', '_' or '.'")]
    Tag(String),
    #[error(
        "--versions needs --history-dir: the versions a run finds are kept in the history folder"
    )]
    VersionsWithoutHistory,
}

impl CronJob {
    pub fn validate(&self) -> Result<(), CronError> {
        validate_schedule(&self.schedule)?;
        let u = &self.user;
        let user_ok = !u.is_empty()
            && u.len() <= 32
            && u.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && u.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !user_ok {
            return Err(CronError::User(u.clone()));
        }
        let absolute = [
            ("--binary", Some(&self.binary)),
            ("--dest", Some(&self.dest)),
            ("--state-dir", self.state_dir.as_ref()),
            ("--history-dir", self.history_dir.as_ref()),
        ];
        for (flag, value) in absolute {
            if let Some(value) = value
                && !value.starts_with('/')
            {
                return Err(CronError::NotAbsolute {
                    flag,
                    value: value.clone(),
                });
            }
        }
        let all = [
            ("--binary", Some(&self.binary)),
            ("--bucket", Some(&self.bucket)),
            ("--dest", Some(&self.dest)),
            ("--prefix", self.prefix.as_ref()),
            ("--region", self.region.as_ref()),
            ("--endpoint-url", self.endpoint_url.as_ref()),
            ("--state-dir", self.state_dir.as_ref()),
            ("--history-dir", self.history_dir.as_ref()),
        ];
        for (flag, value) in all {
            if let Some(v) = value
                && v.contains(['\n', '\r', '\0'])
            {
                return Err(CronError::Newline {
                    flag,
                    value: v.clone(),
                });
            }
        }
        let tag_ok = !self.log_tag.is_empty()
            && self
                .log_tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !tag_ok {
            return Err(CronError::Tag(self.log_tag.clone()));
        }
        if self.versions && self.history_dir.is_none() {
            return Err(CronError::VersionsWithoutHistory);
        }
        Ok(())
    }

    /// The command field of the cron line, exactly as cron hands it to `/bin/sh` after `%` unescaping.
    pub fn command(&self) -> String {
        let mut argv = vec![
            self.binary.clone(),
            "--bucket".into(),
            self.bucket.clone(),
            "--dest".into(),
            self.dest.clone(),
        ];
        for (flag, v) in [
            ("--prefix", &self.prefix),
            ("--region", &self.region),
            ("--endpoint-url", &self.endpoint_url),
            ("--state-dir", &self.state_dir),
            ("--cloudwatch-namespace", &self.cloudwatch_namespace),
            ("--history-dir", &self.history_dir),
            ("--keep-days", &self.keep_days.map(|n| n.to_string())),
            ("--max-delete", &self.max_delete.map(|n| n.to_string())),
        ] {
            if let Some(v) = v {
                argv.push(flag.into());
                argv.push(v.clone());
            }
        }
        if self.force_path_style {
            argv.push("--force-path-style".into());
        }
        if let Some(days) = self.restore_archived.filter(|&d| d > 0) {
            argv.push("--restore-archived".into());
            argv.push(days.to_string());
        }
        if self.versions {
            argv.push("--versions".into());
        }
        let words: Vec<String> = argv.iter().map(|a| sh_quote(a)).collect();
        // Output goes to the system log (journald or syslog), tagged, rather than to cron's mail.
        format!("{} 2>&1 | logger -t {}", words.join(" "), self.log_tag)
    }

    /// The whole cron.d file.
    pub fn render(&self) -> Result<String, CronError> {
        self.validate()?;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# /etc/cron.d/s3backup: written by `s3backup cron-entry`; change the flags there, not here."
        );
        let _ = writeln!(s, "SHELL=/bin/sh");
        let _ = writeln!(s, "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
        let _ = writeln!(
            s,
            "{} {} {}",
            self.schedule,
            self.user,
            cron_escape(&self.command())
        );
        Ok(s)
    }
}

fn validate_schedule(s: &str) -> Result<(), CronError> {
    let err = || CronError::Schedule(s.to_owned());
    if s.starts_with('@') {
        // The macros Debian's cron (and cronie) understand; @reboot is no schedule for a daily backup.
        return match s {
            "@hourly" | "@daily" | "@midnight" | "@weekly" | "@monthly" | "@yearly"
            | "@annually" => Ok(()),
            _ => Err(err()),
        };
    }
    // Single spaces only: the rendered line is split on whitespace by cron and by our test scripts.
    let fields: Vec<&str> = s.split(' ').collect();
    let ok = fields.len() == 5
        && fields.iter().all(|f| {
            !f.is_empty()
                && f.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "*/,-".contains(c))
        });
    if !ok {
        return Err(err());
    }
    for (text, field) in fields.iter().zip(&FIELDS) {
        field.check(text).map_err(|problem| CronError::Field {
            schedule: s.to_owned(),
            field: field.name,
            problem,
        })?;
    }
    Ok(())
}

/// One of the five fields of a cron schedule, as cron(8) reads it (Vixie cron's `get_list`, which
/// Debian's cron and cronie share): a comma-separated list of `*`, `N` or `N-M`, the last two with an
/// optional `/STEP`; months and weekdays also by their three-letter English names, any case.
struct Field {
    name: &'static str,
    low: u32,
    high: u32,
    /// Names for `low`, `low + 1`, ...
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        low: 0,
        high: 59,
        names: &[],
    },
    Field {
        name: "hour",
        low: 0,
        high: 23,
        names: &[],
    },
    Field {
        name: "day of month",
        low: 1,
        high: 31,
        names: &[],
    },
    Field {
        name: "month",
        low: 1,
        high: 12,
        names: &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
    },
    Field {
        name: "day of week",
        low: 0,
        high: 7,
        names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    },
];

impl Field {
    /// `Err` says what is wrong, after the field's name: "99 is out of range 0-59".
    fn check(&self, text: &str) -> Result<(), String> {
        for item in text.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((range, step)) => (range, Some(step)),
                None => (item, None),
            };
            let single = match range {
                "*" => false,
                _ => match range.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (self.value(a)?, self.value(b)?);
                        if a > b {
                            return Err(format!(
                                "range {range} runs backwards (cron needs low <= high)"
                            ));
                        }
                        false
                    }
                    None => {
                        self.value(range)?;
                        true
                    }
                },
            };
            if let Some(step) = step {
                if single {
                    return Err(format!(
                        "{item:?}: a step needs a range before it (* or N-M)"
                    ));
                }
                if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("step {step:?} in {item} is not a number"));
                }
                if step.bytes().all(|b| b == b'0') {
                    return Err(format!("step {item} must be at least 1"));
                }
            }
        }
        Ok(())
    }

    fn value(&self, v: &str) -> Result<u32, String> {
        if let Some(i) = self.names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
            return Ok(self.low + i as u32);
        }
        let out_of_range = || format!("{v} is out of range {}-{}", self.low, self.high);
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(match (self.names.first(), self.names.last()) {
                (Some(first), Some(last)) => {
                    format!("{v:?} is neither a number nor a name ({first}-{last})")
                }
                _ => format!("{v:?} is not a number"),
            });
        }
        let n: u32 = v.parse().map_err(|_| out_of_range())?;
        if n < self.low || n > self.high {
            return Err(out_of_range());
        }
        Ok(n)
    }
}

/// POSIX single-quoting, for any string without NUL.
pub fn sh_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=@,+".contains(c));
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// cron turns an unescaped `%` into a newline; `\%` reaches the shell as `%`.
fn cron_escape(cmd: &str) -> String {
    cmd.replace('%', r"\%")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> CronJob {
        CronJob {
            schedule: "17 3 * * *".into(),
            user: "user".into(),
            binary: "/usr/local/bin/s3backup".into(),
            bucket: "images-bucket".into(),
            dest: "/home/user/myS3backup".into(),
            prefix: None,
            region: Some("eu-west-1".into()),
            endpoint_url: None,
            force_path_style: false,
            state_dir: None,
            restore_archived: None,
            cloudwatch_namespace: None,
            history_dir: None,
            keep_days: None,
            max_delete: None,
            versions: false,
            log_tag: "s3backup".into(),
        }
    }

    #[test]
    fn renders_one_job_line() {
        let out = job().render().unwrap();
        let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines[0], "SHELL=/bin/sh");
        assert_eq!(
            lines[2],
            "17 3 * * * user /usr/local/bin/s3backup --bucket images-bucket --dest /home/user/myS3backup --region eu-west-1 2>&1 | logger -t s3backup"
        );
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn odd_values_are_quoted_and_percent_escaped() {
        let mut j = job();
        j.dest = "/home/user/my backup's 100%".into();
        j.prefix = Some("a b".into());
        let out = j.render().unwrap();
        assert!(
            out.contains(r"--dest '/home/user/my backup'\''s 100\%' --prefix 'a b'"),
            "{out}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let mut j = job();
        j.schedule = "17 3 * *".into();
        assert!(matches!(j.render(), Err(CronError::Schedule(_))));
        j.schedule = "17 3 * * * rm -rf /".into();
        assert!(matches!(j.render(), Err(CronError::Schedule(_))));
        let mut j = job();
        j.user = "root; rm".into();
        assert!(matches!(j.render(), Err(CronError::User(_))));
        let mut j = job();
        j.dest = "relative".into();
        assert!(j.render().unwrap_err().to_string().contains("--dest"));
        let mut j = job();
        j.state_dir = Some("state".into());
        assert!(j.render().unwrap_err().to_string().contains("--state-dir"));
        j.state_dir = Some("/data/state".into());
        assert!(j.render().unwrap().contains(" --state-dir /data/state "));
        j.restore_archived = Some(0);
        assert!(!j.render().unwrap().contains("--restore-archived"));
        j.restore_archived = Some(7);
        assert!(j.render().unwrap().contains(" --restore-archived 7 "));
        j.cloudwatch_namespace = Some("S3Backup".into());
        assert!(
            j.render()
                .unwrap()
                .contains(" --cloudwatch-namespace S3Backup ")
        );
        let mut j = job();
        j.bucket = "a\nb".into();
        assert!(j.render().unwrap_err().to_string().contains("--bucket"));
        let mut j = job();
        j.schedule = "@daily".into();
        assert!(j.render().is_ok());
    }

    #[test]
    fn versions_are_rendered_only_with_a_history_dir() {
        let mut j = job();
        assert!(!j.render().unwrap().contains("--versions"));
        j.versions = true;
        let e = j.render().unwrap_err();
        assert_eq!(e, CronError::VersionsWithoutHistory);
        let msg = e.to_string();
        assert!(
            msg.contains("--versions") && msg.contains("--history-dir"),
            "{msg}"
        );
        assert_eq!(msg.lines().count(), 1, "{msg}");
        j.history_dir = Some("/srv/s3backup/history".into());
        j.keep_days = Some(30);
        j.max_delete = Some(50);
        j.restore_archived = Some(7);
        let out = j.render().unwrap();
        assert!(
            out.contains(
                " --history-dir /srv/s3backup/history --keep-days 30 --max-delete 50 --restore-archived 7 --versions 2>&1 | logger -t s3backup\n"
            ),
            "{out}"
        );
        j.versions = false;
        assert!(!j.render().unwrap().contains("--versions"));
    }

    fn schedule_error(schedule: &str) -> String {
        let mut j = job();
        j.schedule = schedule.into();
        match j.render() {
            Err(e) => e.to_string(),
            Ok(out) => panic!("{schedule:?} accepted: {out}"),
        }
    }

    #[test]
    fn schedules_cron_runs_are_accepted() {
        for schedule in [
            "0 0 1 1 0",
            "59 23 31 12 7",
            "*/15 * * * *",
            "1-30/5 0-23/2 1-31 1-12 0-7",
            "0,15,30,45 9-17 * * mon-fri",
            "5 4 * JAN,jul Sun",
            "0 12 1 feb-dec/2 sat",
            "00 03 01 01 00",
            "*/1 * * * *",
            "* * * * *",
            "@daily",
            "@hourly",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
            "@midnight",
        ] {
            let mut j = job();
            j.schedule = schedule.into();
            let out = j
                .render()
                .unwrap_or_else(|e| panic!("{schedule:?} refused: {e}"));
            assert!(out.contains(&format!("\n{schedule} user ")), "{out}");
        }
    }

    #[test]
    fn schedules_cron_never_runs_are_refused_naming_field_and_value() {
        assert_eq!(
            schedule_error("99 * * * *"),
            r#"--schedule "99 * * * *": minute 99 is out of range 0-59"#
        );
        for (schedule, says) in [
            ("60 * * * *", "minute 60 is out of range 0-59"),
            ("0 24 * * *", "hour 24 is out of range 0-23"),
            ("0 0 0 * *", "day of month 0 is out of range 1-31"),
            ("0 0 32 * *", "day of month 32 is out of range 1-31"),
            ("0 0 * 0 *", "month 0 is out of range 1-12"),
            ("0 0 * 13 *", "month 13 is out of range 1-12"),
            ("0 0 * * 8", "day of week 8 is out of range 0-7"),
            ("0 0 * * 1-9", "day of week 9 is out of range 0-7"),
            ("0,61 * * * *", "minute 61 is out of range 0-59"),
            (
                "99999999999 * * * *",
                "minute 99999999999 is out of range 0-59",
            ),
            ("30-10 * * * *", "minute range 30-10 runs backwards"),
            (
                "0 0 * * fri-mon",
                "day of week range fri-mon runs backwards",
            ),
            ("*/0 * * * *", "minute step */0 must be at least 1"),
            ("1-30/00 * * * *", "minute step 1-30/00 must be at least 1"),
            ("*/x * * * *", r#"minute step "x" in */x is not a number"#),
            ("*/ * * * *", r#"minute step "" in */ is not a number"#),
            (
                "5/15 * * * *",
                r#"minute "5/15": a step needs a range before it"#,
            ),
            (
                "0 0 * foo *",
                r#"month "foo" is neither a number nor a name (jan-dec)"#,
            ),
            (
                "0 0 * * sunday",
                r#"day of week "sunday" is neither a number nor a name (sun-sat)"#,
            ),
            ("0 0 jan * *", r#"day of month "jan" is not a number"#),
            ("1,,2 * * * *", r#"minute "" is not a number"#),
            ("1- * * * *", r#"minute "" is not a number"#),
            ("*-5 * * * *", r#"minute "*" is not a number"#),
        ] {
            let e = schedule_error(schedule);
            assert!(
                e.starts_with(&format!("--schedule {schedule:?}: {says}")),
                "{schedule:?}: {e}"
            );
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        for shape in [
            "@reboot",
            "@every 5m",
            "* * * *",
            "* * * * * *",
            "*  * * * *",
            "0 0 * * ?",
        ] {
            assert!(
                schedule_error(shape).contains("expected five cron fields"),
                "{shape:?}"
            );
        }
    }
}
