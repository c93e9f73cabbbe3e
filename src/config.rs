//! The validated, immutable run configuration. Built from the command line in `cli`; the engine only
//! ever sees this type.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub bucket: String,
    /// Absolute.
    pub dest: PathBuf,
    pub prefix: Option<String>,
    pub endpoint_url: Option<String>,
    pub force_path_style: bool,
    pub region: Option<String>,
    pub concurrency: usize,
    /// `--list-concurrency N`: ListObjectsV2 streams at once (1: one sequential listing).
    pub list_concurrency: usize,
    /// Absolute; the per-destination state lives below it.
    pub state_dir: PathBuf,
    pub dry_run: bool,
    pub json: bool,
    /// `--restore-archived DAYS`: ask S3 to restore archived objects for that many days.
    pub restore_archived: Option<u32>,
    /// `--cloudwatch-namespace NS`: publish the run's metrics there.
    pub cloudwatch_namespace: Option<String>,
    /// `--history-dir DIR` (absolute): replaced and deleted files are moved there.
    pub history_dir: Option<PathBuf>,
    /// `--keep-days N`: history run folders older than this are removed (0: never).
    pub keep_days: u32,
    /// `--max-delete PERCENT`: a complete listing that would move more than this share of the
    /// backed-up files out of the destination moves none.
    pub max_delete_percent: u8,
}

pub const DEFAULT_CONCURRENCY: usize = 16;
/// Chosen by measurement (bench/README.md, scenario L).
pub const DEFAULT_LIST_CONCURRENCY: usize = 16;
pub const DEFAULT_KEEP_DAYS: u32 = 30;
pub const DEFAULT_MAX_DELETE_PERCENT: u8 = 50;
pub const MAX_CONCURRENCY: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--bucket is required (or set S3BACKUP_BUCKET)")]
    MissingBucket,
    #[error("--dest is required (or set S3BACKUP_DEST)")]
    MissingDest,
    #[error(
        "--bucket {0:?}: a bucket name cannot be empty or contain '/' (use --prefix for a folder)"
    )]
    BadBucket(String),
    #[error("--dest {0:?}: must not be empty")]
    BadDest(String),
    #[error("--endpoint-url {0:?}: must start with http:// or https://")]
    BadEndpoint(String),
    #[error("--concurrency {0}: must be between 1 and {MAX_CONCURRENCY}")]
    BadConcurrency(usize),
    #[error("--list-concurrency {0}: must be between 1 and {MAX_CONCURRENCY}")]
    BadListConcurrency(usize),
    #[error(
        "no state directory: pass --state-dir, or set XDG_STATE_HOME or HOME (default $XDG_STATE_HOME/s3backup, else $HOME/.local/state/s3backup)"
    )]
    NoStateDir,
    #[error(
        "--cloudwatch-namespace {0:?}: 1 to 255 letters, digits or '.-_/#: ', not starting with ':' or 'AWS/'"
    )]
    BadNamespace(String),
    #[error("--max-age {0}: must be a positive number of hours")]
    BadMaxAge(String),
    #[error("cannot resolve relative path {0:?}: {1}")]
    Cwd(String, String),
}

pub fn validate_bucket(b: &str) -> Result<(), ConfigError> {
    if b.is_empty() || b.contains('/') || b.chars().any(char::is_whitespace) {
        return Err(ConfigError::BadBucket(b.to_owned()));
    }
    Ok(())
}

/// CloudWatch's rules for a namespace (PutMetricData rejects anything else, and `AWS/` is AWS's own).
pub fn validate_namespace(ns: &str) -> Result<(), ConfigError> {
    let ok = !ns.is_empty()
        && ns.len() <= 255
        && !ns.starts_with(':')
        && !ns.starts_with("AWS/")
        && ns
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_/#: ".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadNamespace(ns.to_owned()))
    }
}

pub fn validate_endpoint(e: &str) -> Result<(), ConfigError> {
    let lower = e.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !e.chars().any(char::is_whitespace) => Ok(()),
        _ => Err(ConfigError::BadEndpoint(e.to_owned())),
    }
}

pub fn validate_concurrency(n: usize) -> Result<usize, ConfigError> {
    if (1..=MAX_CONCURRENCY).contains(&n) {
        Ok(n)
    } else {
        Err(ConfigError::BadConcurrency(n))
    }
}

pub fn validate_list_concurrency(n: usize) -> Result<usize, ConfigError> {
    validate_concurrency(n).map_err(|_| ConfigError::BadListConcurrency(n))
}

/// `$XDG_STATE_HOME/s3backup`, else `$HOME/.local/state/s3backup` (XDG base directory spec: relative
/// values are ignored).
pub fn default_state_dir(xdg_state_home: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
    let abs = |s: &str| Some(PathBuf::from(s)).filter(|p| p.is_absolute());
    if let Some(x) = xdg_state_home.and_then(abs) {
        return Some(x.join("s3backup"));
    }
    home.and_then(abs).map(|h| h.join(".local/state/s3backup"))
}

/// Make `p` absolute against the current directory (no symlink resolution: the path may not exist yet).
pub fn absolute(p: &Path) -> Result<PathBuf, ConfigError> {
    if p.as_os_str().is_empty() {
        return Err(ConfigError::BadDest(String::new()));
    }
    std::path::absolute(p).map_err(|e| ConfigError::Cwd(p.display().to_string(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_defaults_follow_xdg() {
        assert_eq!(
            default_state_dir(Some("/x/state"), Some("/home/u")),
            Some(PathBuf::from("/x/state/s3backup"))
        );
        assert_eq!(
            default_state_dir(Some("relative"), Some("/home/u")),
            Some(PathBuf::from("/home/u/.local/state/s3backup"))
        );
        assert_eq!(default_state_dir(None, None), None);
    }

    #[test]
    fn validation_names_the_flag() {
        assert!(validate_bucket("my-bucket").is_ok());
        assert!(
            validate_bucket("a/b")
                .unwrap_err()
                .to_string()
                .contains("--bucket")
        );
        assert!(validate_endpoint("http://127.0.0.1:9000").is_ok());
        assert!(
            validate_endpoint("127.0.0.1:9000")
                .unwrap_err()
                .to_string()
                .contains("--endpoint-url")
        );
        assert!(validate_concurrency(0).is_err());
        assert!(validate_concurrency(257).is_err());
        assert_eq!(validate_concurrency(16), Ok(16));
    }
}
