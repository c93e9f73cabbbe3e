//! s3backup: a verified, atomic, incremental backup of an S3 bucket into a local folder.
//!
//! `run` is the whole program behind `main`: it hands the parsed command line to its subcommand's edge
//! (`cmd`), which validates it, runs the core and maps the outcome onto the documented exit codes
//! (`report::Exit`).

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

pub mod atomic;
pub mod backup;
pub mod catalog;
pub mod cli;
pub mod cmd;
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

use std::process::ExitCode;

use crate::cli::{Cli, Command};

pub use crate::cmd::{fail, json_error};

/// Run the parsed command line to completion.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    Ok(match cli.command {
        Some(Command::CronEntry(args)) => cmd::cron_entry::run(*args)?,
        Some(Command::Status(args)) => cmd::status::run(args),
        Some(Command::Verify(args)) => cmd::verify::run(args),
        Some(Command::Restore(args)) => cmd::restore::run(args),
        Some(Command::Ls(args)) => cmd::ls::run(args),
        Some(Command::Versions(args)) => cmd::versions::run(args),
        None => cmd::backup::run(cli.backup)?,
    })
}
