//! s3backup: a verified, atomic, incremental backup of an S3 bucket into a local folder.
//!
//! `run` is the whole program behind `main`: it turns the parsed command line into a `Config`, runs the
//! engine (`backup`) and maps the outcome onto the documented exit codes (`report::Exit`).

pub mod atomic;
pub mod backup;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod cron;
pub mod errtext;
pub mod fetch;
pub mod history;
pub mod instant;
pub mod keypath;
pub mod listing;
pub mod lock;
pub mod metrics;
pub mod plan;
pub mod report;
pub mod restore;
pub mod runid;
pub mod s3;
pub mod scrub;
pub mod signals;
pub mod status;
pub mod verify;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::SystemTime;

use indicatif::ProgressBar;

use crate::backup::RunError;
use crate::cli::{Cli, Command, RestoreArgs, StatusArgs, VerifyArgs};
use crate::fetch::FetchSettings;
use crate::metrics::RunMetrics;
use crate::report::Exit;

/// `println!` that never panics: a closed or full stdout (a reader gone, `>/dev/full`) must not turn a
/// finished backup into a crash that skips its run record and metrics.
macro_rules! say_out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `eprintln!` likewise, for a cron job whose `| logger` died.
macro_rules! say_err {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// Run the parsed command line to completion.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::CronEntry(args)) => {
            let job = args.into_job()?;
            // The cron file is this command's product: a write that fails (a full disk under a
            // redirect) is an error, or an empty file would be installed and no backup ever run.
            let text = job.render()?;
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                return Ok(fail(
                    false,
                    Exit::Config,
                    &format!("writing the cron file to stdout: {e}"),
                ));
            }
            return Ok(Exit::Ok.into());
        }
        Some(Command::Status(args)) => return Ok(status_command(args)),
        Some(Command::Verify(args)) => return Ok(verify_command(args)),
        Some(Command::Restore(args)) => return Ok(restore_command(args)),
        None => {}
    }
    let json = cli.backup.json;
    let config = match cli.backup.into_config() {
        Ok(c) => c,
        Err(e) => return Ok(fail(json, Exit::Config, &e.to_string())),
    };
    let pb = report::progress_bar(std::io::stderr().is_terminal() && !json);
    init_logging(&pb);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = SystemTime::now();
    let stop = runtime.block_on(async { signals::Stop::listen() })?;
    let outcome = runtime.block_on(backup::run(&config, FetchSettings::default(), &stop, &pb));
    pb.finish_and_clear();
    let (exit, mut doc, metrics) = match outcome {
        Ok(report) => {
            say_err!("{}", report.human_summary(20));
            let exit = report.exit();
            let metrics = RunMetrics::of(&report, exit == Exit::Ok);
            (exit, report.to_json(), metrics)
        }
        Err(e) => {
            let exit = match (&e, stop.caught()) {
                (RunError::Locked(_), _) => Exit::Locked,
                (RunError::Config(_), Some(signals::Signal::Int)) => Exit::Interrupted,
                (RunError::Config(_), Some(signals::Signal::Term)) => Exit::Terminated,
                (RunError::Config(_), None) => Exit::Config,
            };
            say_err!("error: {e}");
            let metrics = RunMetrics {
                duration: started.elapsed().unwrap_or_default(),
                ..RunMetrics::default()
            };
            (exit, serde_json::json!({ "error": e.to_string() }), metrics)
        }
    };
    doc["exit_code"] = (exit as u8).into();
    doc["started_at"] = status::timestamp(started).into();
    doc["finished_at"] = status::timestamp(SystemTime::now()).into();
    if json {
        say_out!("{doc}");
    }
    // A dry run is no backup: it leaves no record and says nothing to an alarm.
    if !config.dry_run {
        let dest = config.dest.canonicalize().unwrap_or(config.dest.clone());
        let dir = lock::dest_state_dir(&config.state_dir, &dest);
        if let Err(e) = status::record(&dir, &doc, exit == Exit::Ok) {
            tracing::warn!("could not write the run record in {}: {e}", dir.display());
        }
        if let Some(ns) = &config.cloudwatch_namespace {
            runtime.block_on(metrics::publish(&config, ns, &metrics));
        }
    }
    Ok(exit.into())
}

/// `s3backup status`: the destination's run records, read with no network.
fn status_command(args: StatusArgs) -> ExitCode {
    let json = args.json;
    let query = match args.into_query() {
        Ok(q) => q,
        Err(e) => return fail(json, Exit::Config, &e.to_string()),
    };
    match status::read(&query.dir, SystemTime::now(), query.max_age_hours) {
        Ok(st) => {
            if json {
                say_out!(
                    "{}",
                    serde_json::to_string(&st).expect("plain data serialises")
                );
            } else {
                say_out!("{}", st.human(query.max_age_hours));
            }
            if st.healthy { Exit::Ok } else { Exit::Partial }.into()
        }
        Err(e) => fail(json, Exit::Config, &e.to_string()),
    }
}

/// `s3backup verify`: the files at rest against the catalog, under the destination's lock.
fn verify_command(args: VerifyArgs) -> ExitCode {
    let json = args.json;
    let d = match args.at.resolve() {
        Ok(d) => d,
        Err(e) => return fail(json, Exit::Config, &e.to_string()),
    };
    let pb = report::progress_bar(false);
    init_logging(&pb);
    let dir = lock::dest_state_dir(&d.state_dir, &d.dest);
    let catalog = match catalog::Catalog::open_read_only(&dir) {
        Ok(Some(_)) => catalog::Catalog::open(&dir),
        Ok(None) => {
            let msg = format!(
                "no catalog for {} in {}: run a backup into it first (or pass the --state-dir it uses)",
                d.dest.display(),
                d.state_dir.display()
            );
            return fail(json, Exit::Config, &msg);
        }
        Err(e) => Err(e),
    };
    let catalog = match catalog {
        Ok(c) => c,
        Err(e) => return fail(json, Exit::Config, &e.to_string()),
    };
    // A backup changing files under the check would read as damage.
    let guard = match lock::RunGuard::acquire(&d.state_dir, &d.dest) {
        Ok(g) => g,
        Err(e @ lock::LockError::Held { .. }) => return fail(json, Exit::Locked, &e.to_string()),
        Err(e) => return fail(json, Exit::Config, &e.to_string()),
    };
    let outcome = scrub::verify(&catalog, &d.dest, args.prefix.as_deref().unwrap_or(""));
    if !guard.previous_run_interrupted {
        let _ = guard.finish();
    }
    match outcome {
        Ok(r) => {
            say_err!("{}", r.human_summary(20));
            if json {
                say_out!(
                    "{}",
                    serde_json::to_string(&r).expect("plain data serialises")
                );
            }
            if r.all_ok() { Exit::Ok } else { Exit::Partial }.into()
        }
        Err(e) => fail(json, Exit::Config, &e),
    }
}

/// `s3backup restore`: the catalogued files, or one history run folder, uploaded under their keys.
fn restore_command(args: RestoreArgs) -> ExitCode {
    let json = args.json;
    match prepare_restore(args) {
        Ok((config, source, settings)) => {
            let pb = report::progress_bar(false);
            init_logging(&pb);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return fail(json, Exit::Config, &e.to_string()),
            };
            let client = runtime.block_on(async {
                let sdk = s3::sdk_config(&config).await;
                s3::client(&config, &sdk)
            });
            let client = match client {
                // We send Content-MD5 ourselves; the SDK adds no checksum of its own on top.
                Ok(c) => aws_sdk_s3::Client::from_conf(
                    c.config()
                        .to_builder()
                        .request_checksum_calculation(
                            aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                        )
                        .build(),
                ),
                Err(e) => return fail(json, Exit::Config, &e.to_string()),
            };
            if let Err(e) = runtime.block_on(restore::probe(&client, &settings.bucket)) {
                return fail(json, Exit::Config, &e.to_string());
            }
            let r = runtime.block_on(restore::restore(&client, &source, &settings));
            say_err!("{}", r.human_summary(20));
            if json {
                say_out!("{}", r.to_json());
            }
            if r.ok() { Exit::Ok } else { Exit::Partial }.into()
        }
        Err(e) => fail(json, Exit::Config, &e),
    }
}

fn prepare_restore(
    args: RestoreArgs,
) -> Result<(config::Config, restore::Source, restore::Settings), String> {
    config::validate_bucket(&args.bucket).map_err(|e| e.to_string())?;
    if let Some(e) = &args.endpoint_url {
        config::validate_endpoint(e).map_err(|e| e.to_string())?;
    }
    let concurrency = config::validate_concurrency(args.concurrency).map_err(|e| e.to_string())?;
    let d = args.at.resolve().map_err(|e| e.to_string())?;
    let state = lock::dest_state_dir(&d.state_dir, &d.dest);
    let prefix = args.prefix.unwrap_or_default();
    let source = match args.from_history {
        Some(run) => {
            if history::parse_run_id(&run).is_none() || run.contains('/') {
                return Err(format!(
                    "--from-history {run:?}: expected a run id like 20261130T031705Z"
                ));
            }
            let root = match args.history_dir {
                Some(h) => h,
                None => std::fs::read(state.join(backup::HISTORY_DIR_FILE))
                    .map(|b| std::path::PathBuf::from(String::from_utf8_lossy(&b).into_owned()))
                    .map_err(|_| {
                        format!(
                            "--from-history: no history folder is remembered for {}; pass --history-dir",
                            d.dest.display()
                        )
                    })?,
            };
            let run_dir = root.join(&run);
            // Not followed if a link: a run folder is one that a run made.
            if !std::fs::symlink_metadata(&run_dir).is_ok_and(|m| m.is_dir()) {
                return Err(format!(
                    "--from-history {run}: {} is not a run folder",
                    run_dir.display()
                ));
            }
            restore::Source::History { run_dir, prefix }
        }
        None => match catalog::Catalog::open_read_only(&state) {
            Ok(Some(catalog)) => restore::Source::Catalog {
                catalog,
                dest: d.dest.clone(),
                prefix,
            },
            Ok(None) => {
                return Err(format!(
                    "no catalog for {} in {}: nothing is known to restore (pass the --state-dir the backups use)",
                    d.dest.display(),
                    d.state_dir.display()
                ));
            }
            Err(e) => return Err(e.to_string()),
        },
    };
    let config = config::Config {
        bucket: args.bucket.clone(),
        dest: d.dest,
        prefix: None,
        endpoint_url: args.endpoint_url,
        force_path_style: args.force_path_style,
        region: args.region.filter(|r| !r.is_empty()),
        concurrency,
        list_concurrency: 1,
        state_dir: d.state_dir,
        dry_run: args.dry_run,
        json: args.json,
        restore_archived: None,
        cloudwatch_namespace: None,
        history_dir: None,
        keep_days: 0,
        max_delete_percent: 0,
        max_delete_bytes: None,
        versions: false,
    };
    let settings = restore::Settings {
        bucket: args.bucket,
        concurrency,
        part_size: args.part_size * 1024 * 1024,
        overwrite: args.overwrite,
        dry_run: args.dry_run,
    };
    Ok((config, source, settings))
}

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

fn init_logging(pb: &ProgressBar) {
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
