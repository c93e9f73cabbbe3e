//! The validated, immutable run configuration. Built from the command line in `cli`; the engine only
//! ever sees this type.

use std::io;
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
    /// `--max-delete-bytes SIZE`: the same guard on the bytes those files hold.
    pub max_delete_bytes: Option<u64>,
    /// `--versions`: list with ListObjectVersions and keep noncurrent versions in history.
    pub versions: bool,
}

pub const DEFAULT_CONCURRENCY: usize = 16;
/// Chosen by measurement (bench/README.md, scenario L).
pub const DEFAULT_LIST_CONCURRENCY: usize = 16;
pub const DEFAULT_KEEP_DAYS: u32 = 30;
pub const DEFAULT_MAX_DELETE_PERCENT: u8 = 50;
pub const MAX_CONCURRENCY: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--versions needs --history-dir: noncurrent versions are kept there")]
    VersionsWithoutHistory,
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
    #[error(
        "--max-delete-bytes {0:?}: expected a size such as 500M, 10G or 1T (powers of 1024), or bytes"
    )]
    BadSize(String),
    #[error(
        "--state-dir {0} and --dest {1}: the state folder must not be inside the destination (an object's key could overwrite the catalog)"
    )]
    StateInsideDest(String, String),
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

/// The state folder holds the catalog: inside `--dest`, an object's key could overwrite it. Both are
/// resolved as they will be once created (symlinks of existing ancestors followed).
pub fn check_state_outside(state_dir: &Path, dest: &Path) -> Result<(), ConfigError> {
    let resolve = |p: &Path| {
        resolve_lenient(p).map_err(|e| ConfigError::Cwd(p.display().to_string(), e.to_string()))
    };
    if resolve(state_dir)?.starts_with(resolve(dest)?) {
        return Err(ConfigError::StateInsideDest(
            state_dir.display().to_string(),
            dest.display().to_string(),
        ));
    }
    Ok(())
}

/// A size as rclone's `--max-delete-size` takes it: bytes, or a number with K, M, G, T (powers of 1024;
/// `Ki`, `KiB`, `KB` alike), e.g. `500M`, `1.5G`.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize(s.to_owned());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit
        .to_ascii_uppercase()
        .trim_end_matches('B')
        .trim_end_matches('I')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        _ => return Err(bad()),
    };
    if num.is_empty() || unit.eq_ignore_ascii_case("i") {
        return Err(bad());
    }
    let n: f64 = num.parse().map_err(|_| bad())?;
    let bytes = n * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
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

/// `p` made absolute (against the current directory) with every existing ancestor's symlinks resolved (what it will be once created).
pub fn resolve_lenient(p: &Path) -> io::Result<PathBuf> {
    let p = std::path::absolute(p)?;
    let mut existing = p.as_path();
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(c) => {
                let mut out = c;
                for comp in rest.iter().rev() {
                    out.push(comp);
                }
                return Ok(out);
            }
            Err(_) => {
                // None for a path ending in `..`: what it would name is unknown until it exists.
                let name = existing.file_name().ok_or_else(|| {
                    io::Error::other(
                        "cannot be resolved: a '..' below a folder that does not exist",
                    )
                })?;
                rest.push(name.to_owned());
                existing = existing
                    .parent()
                    .ok_or_else(|| io::Error::other("no parent"))?;
            }
        }
    }
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
    fn sizes_parse_like_rclone_and_bad_ones_name_the_flag() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1234"), Ok(1234));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size("2TB"), Ok(2 << 40));
        for bad in [
            "",
            "M",
            "-1",
            "10X",
            "1e3",
            "1.2.3G",
            "10 G B",
            "99999999999P",
            "5i",
        ] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.contains("--max-delete-bytes"), "{bad}: {e}");
        }
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
