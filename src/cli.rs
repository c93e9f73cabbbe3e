//! Command-line flags (clap) and their translation into the validated `Config` / `CronJob`.
//! Nothing past this module sees a clap type.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config, ConfigError, DEFAULT_CONCURRENCY};
use crate::cron::CronJob;
use crate::report::EXIT_CODES_HELP;

/// Back up an S3 bucket (or a prefix of it) into a local folder: verified, atomic, incremental.
///
/// Every new or changed object is downloaded through a temp file, checked against S3's checksum (or
/// MD5 ETag), fsynced and renamed into place. Objects deleted from S3 are kept locally. Keys that
/// cannot be stored safely (`..`, `/abs`, `a//b`, ...) are refused by name and never written.
/// Credentials and region come from the standard AWS chain (environment, profiles, SSO, IMDSv2 on
/// EC2); AWS_ENDPOINT_URL is honoured like --endpoint-url.
#[derive(Debug, Parser)]
#[command(
    name = "s3backup",
    version,
    after_help = EXIT_CODES_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub backup: BackupArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print an /etc/cron.d file that runs this backup as an unprivileged user.
    ///
    /// This is the one place the cron job is defined: the CloudFormation bootstrap, the NixOS VM test
    /// and the end-to-end test all install its output.
    CronEntry(Box<CronArgs>),
    /// Say whether backups into a destination are healthy, from its state alone (no network).
    ///
    /// Prints the last run (time, exit code, counts, error) and the last successful run (time, age).
    /// Exit 0 when the last success is younger than --max-age hours, 1 when older or when there never
    /// was one, 2 on usage errors.
    Status(StatusArgs),
    /// Check the copy at rest against the catalog, with no network: every catalogued file is re-read.
    ///
    /// Reports missing files, modified ones (size or mtime differs from the catalog) and corrupt ones
    /// (same size and mtime, other bytes). Exit 0 when all are ok, 1 otherwise, 2 on usage or
    /// configuration errors, 75 while a backup into the destination runs. The next backup fetches
    /// whatever was found damaged.
    Verify(VerifyArgs),
    /// Put the backup (or the versions one history run folder kept) back into a bucket, under the exact
    /// original keys.
    ///
    /// Every upload carries a Content-MD5 the server checks; large files go up in parts. An object the
    /// bucket already holds with the same bytes is skipped; one with other bytes is a named conflict
    /// (exit 1) unless --overwrite. Needs credentials that may write to the bucket: the appliance's own
    /// role cannot, by design.
    Restore(RestoreArgs),
    /// The keys as they were at an instant (default: now), from the backup's state alone (no network):
    /// size, ETag, when that version became current, and the local file that holds it.
    Ls(LsArgs),
    /// Every version held for one key: the interval it was current, and the file that holds it.
    Versions(VersionsArgs),
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub at: DestArgs,
    /// The instant: RFC 3339 (2026-11-20T14:00:00Z) or a date (2026-11-20: its end, UTC).
    #[arg(long, value_name = "T")]
    pub as_of: Option<String>,
    /// Only keys starting with P.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// The history folder (default: the one the backups into --dest use).
    #[arg(long, env = "S3BACKUP_HISTORY_DIR", value_name = "DIR")]
    pub history_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VersionsArgs {
    #[command(flatten)]
    pub at: DestArgs,
    /// The key, exactly.
    #[arg(value_name = "KEY")]
    pub key: String,
    /// The history folder (default: the one the backups into --dest use).
    #[arg(long, env = "S3BACKUP_HISTORY_DIR", value_name = "DIR")]
    pub history_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub at: DestArgs,
    /// The bucket to restore into (or --to-dir).
    #[arg(long, value_name = "NAME", required_unless_present = "to_dir")]
    pub bucket: Option<String>,
    /// Put back the version of each key that was current at T: RFC 3339 (2026-11-20T14:00:00Z) or a
    /// date (its end, UTC). Objects that did not exist at T are left alone (counted).
    #[arg(long, value_name = "T", conflicts_with = "from_history")]
    pub as_of: Option<String>,
    /// Write the tree (as of --as-of) into this local folder, new or empty, instead of a bucket: hard
    /// links where it is on the backup's file system (so edit a copy, not the file), else copies; every
    /// file checked against the catalog first.
    #[arg(
        long,
        value_name = "DIR",
        requires = "as_of",
        conflicts_with = "bucket"
    )]
    pub to_dir: Option<PathBuf>,
    /// With --to-dir: always copy, never hard-link.
    #[arg(long, requires = "to_dir")]
    pub copy: bool,
    /// Only keys starting with P.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// Restore the versions this history run folder kept (the state just before that run).
    #[arg(long, value_name = "RUN-ID")]
    pub from_history: Option<String>,
    /// The history folder (default: the one the backups into --dest use).
    #[arg(long, env = "S3BACKUP_HISTORY_DIR", value_name = "DIR")]
    pub history_dir: Option<PathBuf>,
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    #[arg(long)]
    pub force_path_style: bool,
    #[arg(long, value_name = "R")]
    pub region: Option<String>,
    /// Uploads at a time.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub concurrency: usize,
    /// Part size in MiB of multipart uploads, used for files of more than 4 parts.
    #[arg(long, value_name = "MIB", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(5..=5120))]
    pub part_size: u64,
    /// Say what would be uploaded; upload nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace objects that hold other bytes (default: report them as conflicts).
    #[arg(long)]
    pub overwrite: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub at: DestArgs,
    /// Only keys starting with P.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// `--dest` and `--state-dir` of the commands that read a destination's state (status, verify,
/// restore).
#[derive(Debug, Args)]
pub struct DestArgs {
    /// The backup folder, as given to the backups.
    #[arg(long, env = "S3BACKUP_DEST", value_name = "DIR")]
    pub dest: PathBuf,
    /// The state directory the backups use (default as for a backup).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Where a destination's state lives, resolved as the backups resolve it.
#[derive(Debug, Clone)]
pub struct DestState {
    /// The destination, absolute and resolved.
    pub dest: PathBuf,
    /// The state directory (its per-destination folder is `lock::dest_state_dir(state_dir, dest)`).
    pub state_dir: PathBuf,
}

impl DestArgs {
    pub fn resolve(self) -> Result<DestState, ConfigError> {
        let dest = config::absolute(&self.dest)?;
        // The backups key their state by the resolved destination.
        let dest = dest.canonicalize().unwrap_or(dest);
        Ok(DestState {
            dest,
            state_dir: state_dir(self.state_dir)?,
        })
    }
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Bucket to back up.
    #[arg(long, env = "S3BACKUP_BUCKET", required = true, value_name = "NAME")]
    pub bucket: Option<String>,
    /// Local folder the backup lives in (created 0700 when missing).
    #[arg(long, env = "S3BACKUP_DEST", required = true, value_name = "DIR")]
    pub dest: Option<PathBuf>,
    /// Back up only keys starting with this prefix (they keep their full key as path).
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// S3 endpoint, e.g. http://127.0.0.1:8333 (default: AWS, or AWS_ENDPOINT_URL).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Address buckets as http://host/bucket instead of http://bucket.host.
    #[arg(long)]
    pub force_path_style: bool,
    /// AWS region (default: the AWS chain; us-east-1 for a custom endpoint without one).
    #[arg(long, value_name = "R")]
    pub region: Option<String>,
    /// Requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// ListObjectsV2 streams at once: the key space is cut into prefixes, listed in parallel and merged
    /// back in byte order (1: one sequential listing).
    #[arg(long, env = "S3BACKUP_LIST_CONCURRENCY", value_name = "N",
          default_value_t = config::DEFAULT_LIST_CONCURRENCY)]
    pub list_concurrency: usize,
    /// Where the lock, run state and last-run report live
    /// [default: $XDG_STATE_HOME/s3backup, else $HOME/.local/state/s3backup].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// List and compare only: print what would be downloaded, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print exactly one JSON object with the outcome on stdout.
    #[arg(long)]
    pub json: bool,
    /// Ask S3 to restore archived objects (GLACIER, DEEP_ARCHIVE, INTELLIGENT_TIERING archive tiers;
    /// Bulk tier) for DAYS days, once each; a later run backs them up. Costs money; 0 = off.
    #[arg(long, env = "S3BACKUP_RESTORE_ARCHIVED", value_name = "DAYS",
          value_parser = clap::value_parser!(u32).range(0..=36500))]
    pub restore_archived: Option<u32>,
    /// Publish the run's metrics (BackupSucceeded, ObjectsDownloaded, ...) to this CloudWatch namespace,
    /// dimension Bucket=<bucket>. Its endpoint: the SDK's AWS_ENDPOINT_URL_CLOUDWATCH, not --endpoint-url.
    #[arg(long, env = "S3BACKUP_CLOUDWATCH_NAMESPACE", value_name = "NS")]
    pub cloudwatch_namespace: Option<String>,
    /// Keep what the bucket overwrote or deleted: before a file is replaced, and when its object is gone
    /// from a complete listing, it is moved to DIR/<run-id>/<its path>. DIR must be on the file system
    /// of --dest, and neither inside it nor containing it.
    #[arg(long, env = "S3BACKUP_HISTORY_DIR", value_name = "DIR")]
    pub history_dir: Option<PathBuf>,
    /// With --history-dir: remove run folders older than N days at the end of a run (0: keep all).
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_KEEP_DAYS)]
    pub keep_days: u32,
    /// With --history-dir: if a complete listing would move more than this share of the backed-up files
    /// out of --dest, move none and exit 1 (guards against an emptied bucket or a wrong --prefix).
    #[arg(long, value_name = "PERCENT", default_value_t = config::DEFAULT_MAX_DELETE_PERCENT,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_delete: u8,
    /// With --history-dir: the same guard on bytes: if the files a complete listing would move out of
    /// --dest hold more than SIZE (e.g. 500M, 10G; powers of 1024), move none and exit 1.
    #[arg(long, value_name = "SIZE")]
    pub max_delete_bytes: Option<String>,
    /// With --history-dir: keep every version a versioned bucket holds (ListObjectVersions): the
    /// current one in --dest, each noncurrent one in DIR under the second it stopped being current.
    #[arg(long, env = "S3BACKUP_VERSIONS", value_parser = clap::builder::FalseyValueParser::new())]
    pub versions: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub at: DestArgs,
    /// Hours since the last success that are still healthy.
    #[arg(long, value_name = "HOURS", default_value_t = crate::status::DEFAULT_MAX_AGE_HOURS)]
    pub max_age: f64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CronArgs {
    /// Cron schedule: five fields, or @daily and friends.
    #[arg(long, default_value = "17 3 * * *")]
    pub schedule: String,
    /// Unprivileged user the job runs as.
    #[arg(long)]
    pub user: String,
    #[arg(long, value_name = "NAME")]
    pub bucket: String,
    #[arg(long, value_name = "DIR")]
    pub dest: String,
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    #[arg(long, value_name = "R")]
    pub region: Option<String>,
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    #[arg(long)]
    pub force_path_style: bool,
    /// The job's --state-dir (absolute); default: the backup user's own default.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<String>,
    /// The job's --cloudwatch-namespace.
    #[arg(long, value_name = "NS")]
    pub cloudwatch_namespace: Option<String>,
    /// The job's --history-dir (absolute).
    #[arg(long, value_name = "DIR")]
    pub history_dir: Option<String>,
    /// The job's --keep-days.
    #[arg(long, value_name = "N")]
    pub keep_days: Option<u32>,
    /// The job's --max-delete.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_delete: Option<u8>,
    /// The job's --restore-archived DAYS (0: off).
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(0..=36500))]
    pub restore_archived: Option<u32>,
    /// The job's --versions (needs --history-dir).
    #[arg(long)]
    pub versions: bool,
    /// Path of the s3backup binary the job runs.
    #[arg(long, default_value = "/usr/local/bin/s3backup")]
    pub binary: String,
    /// syslog tag of the job's output.
    #[arg(long, default_value = "s3backup")]
    pub log_tag: String,
}

impl BackupArgs {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let bucket = self.bucket.ok_or(ConfigError::MissingBucket)?;
        config::validate_bucket(&bucket)?;
        let dest = self.dest.ok_or(ConfigError::MissingDest)?;
        let dest = config::absolute(&dest)?;
        if let Some(e) = &self.endpoint_url {
            config::validate_endpoint(e)?;
        }
        let concurrency = config::validate_concurrency(self.concurrency)?;
        let list_concurrency = config::validate_list_concurrency(self.list_concurrency)?;
        let state_dir = state_dir(self.state_dir)?;
        config::check_state_outside(&state_dir, &dest)?;
        if let Some(ns) = &self.cloudwatch_namespace {
            config::validate_namespace(ns)?;
        }
        if self.versions && self.history_dir.is_none() {
            return Err(ConfigError::VersionsWithoutHistory);
        }
        Ok(Config {
            versions: self.versions,
            bucket,
            dest,
            prefix: self.prefix.filter(|p| !p.is_empty()),
            endpoint_url: self.endpoint_url,
            force_path_style: self.force_path_style,
            region: self.region.filter(|r| !r.is_empty()),
            concurrency,
            list_concurrency,
            state_dir,
            dry_run: self.dry_run,
            json: self.json,
            restore_archived: self.restore_archived.filter(|&d| d > 0),
            cloudwatch_namespace: self.cloudwatch_namespace,
            history_dir: self
                .history_dir
                .as_deref()
                .map(config::absolute)
                .transpose()?,
            keep_days: self.keep_days,
            max_delete_percent: self.max_delete,
            max_delete_bytes: self
                .max_delete_bytes
                .as_deref()
                .map(config::parse_size)
                .transpose()?,
        })
    }
}

/// `--state-dir`, else `$XDG_STATE_HOME/s3backup`, else `$HOME/.local/state/s3backup`.
fn state_dir(flag: Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    match flag {
        Some(s) => config::absolute(&s),
        None => config::default_state_dir(
            std::env::var("XDG_STATE_HOME").ok().as_deref(),
            std::env::var("HOME").ok().as_deref(),
        )
        .ok_or(ConfigError::NoStateDir),
    }
}

/// What `status` needs, validated.
pub struct StatusQuery {
    /// The per-destination state folder.
    pub dir: PathBuf,
    pub max_age_hours: f64,
    pub json: bool,
}

impl StatusArgs {
    pub fn into_query(self) -> Result<StatusQuery, ConfigError> {
        if !(self.max_age.is_finite() && self.max_age > 0.0) {
            return Err(ConfigError::BadMaxAge(self.max_age.to_string()));
        }
        let d = self.at.resolve()?;
        Ok(StatusQuery {
            dir: crate::lock::dest_state_dir(&d.state_dir, &d.dest),
            max_age_hours: self.max_age,
            json: self.json,
        })
    }
}

impl CronArgs {
    pub fn into_job(self) -> Result<CronJob, anyhow::Error> {
        config::validate_bucket(&self.bucket)?;
        if let Some(e) = &self.endpoint_url {
            config::validate_endpoint(e)?;
        }
        if let Some(ns) = &self.cloudwatch_namespace {
            config::validate_namespace(ns)?;
        }
        let job = CronJob {
            schedule: self.schedule,
            user: self.user,
            binary: self.binary,
            bucket: self.bucket,
            dest: self.dest,
            prefix: self.prefix,
            region: self.region,
            endpoint_url: self.endpoint_url,
            force_path_style: self.force_path_style,
            state_dir: self.state_dir,
            restore_archived: self.restore_archived,
            cloudwatch_namespace: self.cloudwatch_namespace,
            history_dir: self.history_dir,
            keep_days: self.keep_days,
            max_delete: self.max_delete,
            versions: self.versions,
            log_tag: self.log_tag,
        };
        job.validate()?;
        Ok(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn backup_flags_become_config() {
        let cli = Cli::try_parse_from([
            "s3backup",
            "--bucket",
            "b",
            "--dest",
            "/d",
            "--concurrency",
            "4",
            "--state-dir",
            "/s",
            "--json",
        ])
        .unwrap();
        let c = cli.backup.into_config().unwrap();
        assert_eq!(c.bucket, "b");
        assert_eq!(c.concurrency, 4);
        assert_eq!(c.state_dir, PathBuf::from("/s"));
        assert!(c.json && !c.dry_run);
    }

    #[test]
    fn subcommand_does_not_need_backup_flags() {
        let cli = Cli::try_parse_from([
            "s3backup",
            "cron-entry",
            "--user",
            "u",
            "--bucket",
            "b",
            "--dest",
            "/d",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::CronEntry(_))));
    }
}
