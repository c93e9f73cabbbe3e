//! The subcommands' edges: each turns its flags into what the core takes, runs it, and turns the
//! outcome into output and one of the documented exit codes. The core modules never see these.

pub mod backup;
pub mod cron_entry;
pub mod ls;
pub mod restore;
pub mod status;
pub mod verify;
pub mod versions;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use indicatif::ProgressBar;

use crate::report::Exit;

/// Report a run that could not happen: `error: ...` on stderr and, with `--json`, the one JSON object.
pub fn fail(json: bool, exit: Exit, message: &str) -> ExitCode {
    say_err!("error: {message}");
    if json {
        return json_error(exit, message);
    }
    exit.into()
}

/// The one JSON object of a run that could not happen.
pub fn json_error(exit: Exit, message: &str) -> ExitCode {
    let doc = serde_json::json!({ "error": message, "exit_code": exit as u8 });
    say_out!("{doc}");
    exit.into()
}

pub(crate) fn init_logging(pb: &ProgressBar) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("S3BACKUP_LOG").unwrap_or_else(|_| {
        // The SDK's own warnings are Debug dumps of its types, many lines long; what matters of
        // them reaches the user through errtext. S3BACKUP_LOG=debug shows them all.
        EnvFilter::new(
            "info,aws_config=error,aws_smithy_runtime=error,aws_smithy_http_client=error",
        )
    });
    let pb = pb.clone();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_writer(move || SuspendingStderr(pb.clone()))
        .try_init();
}

/// Log lines go to stderr around the progress bar instead of through it.
struct SuspendingStderr(ProgressBar);

impl Write for SuspendingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A closed stderr (e.g. the logger of a cron pipe died) must not stop the backup.
        self.0
            .suspend(|| std::io::stderr().write(buf))
            .or(Ok(buf.len()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// The history folder the backups into a destination use, as they remember it in its state folder.
pub(crate) fn remembered_history(state: &std::path::Path) -> Option<std::path::PathBuf> {
    std::fs::read(state.join(crate::backup::HISTORY_DIR_FILE))
        .ok()
        .map(|b| std::path::PathBuf::from(String::from_utf8_lossy(&b).into_owned()))
}

/// A destination's time machine, opened read-only: its catalog and its history folder.
pub(crate) struct TimeMachine {
    pub catalog: crate::catalog::Catalog,
    pub dest: std::path::PathBuf,
    pub history: Option<std::path::PathBuf>,
}

impl TimeMachine {
    /// `--dest`/`--state-dir` resolved as the backups resolve them, then `open`.
    pub fn from_args(
        at: crate::cli::DestArgs,
        history: Option<std::path::PathBuf>,
    ) -> Result<TimeMachine, String> {
        TimeMachine::open(at.resolve().map_err(|e| e.to_string())?, history)
    }

    /// The catalog the backups into `d` keep; the history folder given, else the one they remember.
    pub fn open(
        d: crate::cli::DestState,
        history: Option<std::path::PathBuf>,
    ) -> Result<TimeMachine, String> {
        let state = crate::lock::dest_state_dir(&d.state_dir, &d.dest);
        let catalog = match crate::catalog::Catalog::open_read_only(&state) {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Err(format!(
                    "no catalog for {} in {}: nothing is known of it (pass the --state-dir the backups use)",
                    d.dest.display(),
                    d.state_dir.display()
                ));
            }
            Err(e) => return Err(e.to_string()),
        };
        let history = history.or_else(|| remembered_history(&state));
        Ok(TimeMachine {
            catalog,
            dest: d.dest,
            history,
        })
    }

    /// `--as-of T` read and checked: neither in the future nor before the oldest version held (that
    /// would be a tree the backup cannot know). None: now.
    pub fn instant(&self, as_of: Option<&str>) -> Result<std::time::SystemTime, String> {
        let now = std::time::SystemTime::now();
        let Some(text) = as_of else { return Ok(now) };
        let t = crate::instant::parse_as_of(text)?;
        // A date means its end: today's end is allowed, and means now.
        let today_end = crate::instant::parse_as_of(&crate::instant::rfc3339(now)[..10])?;
        if t > now && t != today_end {
            return Err(format!("--as-of {text}: in the future"));
        }
        let t = t.min(now);
        let oldest = self.catalog.oldest().map_err(|e| e.to_string())?;
        let horizon = self.catalog.horizon().map_err(|e| e.to_string())?;
        match (oldest, horizon) {
            (None, _) => Err(format!("--as-of {text}: the backup holds no version yet")),
            // Pruning reached past the oldest version held: what came before is incomplete.
            (Some(oldest), Some(h)) if t < h && h > oldest => Err(format!(
                "--as-of {text}: before {}, since when the backup keeps every version (--keep-days pruned older ones)",
                crate::instant::rfc3339(h)
            )),
            (Some(oldest), _) if t < oldest => Err(format!(
                "--as-of {text}: before the oldest version the backup holds ({})",
                crate::instant::rfc3339(oldest)
            )),
            _ => Ok(t),
        }
    }

    /// Where a row's file is.
    pub fn path_of(&self, row: &crate::catalog::AtInstant) -> Option<std::path::PathBuf> {
        let file = row.file.as_deref()?;
        match row.place {
            "dest" => Some(self.dest.join(file)),
            "history" => self.history.as_ref().map(|h| h.join(file)),
            _ => None,
        }
    }
}
