//! The backup itself (no subcommand): flags to `Config`, one run of `backup`, then its record, its
//! metrics and its exit code.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::SystemTime;

use crate::backup::{self, RunError};
use crate::cli::BackupArgs;
use crate::cmd::{fail, init_logging};
use crate::fetch::FetchSettings;
use crate::metrics::{self, RunMetrics};
use crate::report::{self, Exit};
use crate::{lock, signals, status};

/// Threads for file work (writes, hashes, commits, the planner's stats): tokio's default of 512 let a
/// run of 10,000 small downloads grow ~20 of them, each keeping its own allocator pages, for a few MiB
/// of RSS and no speed on 2 cores (1% changed at 10^6 objects: 63 MiB max RSS, 58-59 with 8; a first
/// copy of 100,000: 42-44 MiB, 32.5 with 8). The work queues; no blocking task waits on another.
const BLOCKING_THREADS: usize = 8;

/// Run one backup to completion.
pub fn run(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => return Ok(fail(json, Exit::Config, &e.to_string())),
    };
    let pb = report::progress_bar(std::io::stderr().is_terminal() && !json);
    init_logging(&pb);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
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
