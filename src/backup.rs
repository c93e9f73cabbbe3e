//! One backup run: prepare the destination, take the lock, stream the listing through the planner,
//! download what changed with bounded concurrency, and account for every listed object.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::ProgressBar;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::atomic;
use crate::catalog::{self, Catalog};
use crate::config::Config;
use crate::fetch::{FetchSettings, Fetched, Fetcher, Target, Unfetched};
use crate::history::History;
use crate::listing::{self, ListError, ObjectInfo};
use crate::lock::{self, LockError, RunGuard};
use crate::plan::{Plan, Planner};
use crate::report::{Failed, Refused, Report, human_bytes};

/// Why a run could not start or go on at all (as opposed to per-object failures in the `Report`).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Locked(LockError),
    #[error("{0}")]
    Config(String),
}

/// Listing pages buffered ahead of the planner (1,000 keys a page).
const LISTING_DEPTH: usize = 2;
/// Files made durable together (one syncfs, one fsync per directory), and how long a batch waits for
/// more files after its first: short next to a GET, long enough to gather the downloads in flight.
const COMMIT_BATCH: usize = 64;
const COMMIT_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

pub async fn run(
    config: &Config,
    settings: FetchSettings,
    pb: &ProgressBar,
) -> Result<Report, RunError> {
    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    let mut report = Report {
        max_delete_percent: config.max_delete_percent,
        dry_run: config.dry_run,
        would_download: config.dry_run.then_some(0),
        ..Report::default()
    };
    let dest = prepare_dest(&config.dest, config.dry_run)?;
    let guard = if config.dry_run {
        None
    } else {
        let g = RunGuard::acquire(&config.state_dir, &dest).map_err(|e| match e {
            e @ LockError::Held { .. } => RunError::Locked(e),
            e => RunError::Config(e.to_string()),
        })?;
        // Probed under the lock and the in-progress marker, so that even a probe file left by a kill
        // at this very moment is swept by the next run.
        atomic::probe_writable(&dest).map_err(|e| {
            RunError::Config(format!("destination {}: not writable: {e}", dest.display()))
        })?;
        if g.previous_run_interrupted {
            let d = dest.clone();
            let removed = tokio::task::spawn_blocking(move || atomic::sweep_temp_files(&d))
                .await
                .expect("sweep does not panic")
                .map_err(|e| {
                    RunError::Config(format!(
                        "removing stale temp files under {}: {e}",
                        dest.display()
                    ))
                })?;
            if removed > 0 {
                tracing::info!("removed {removed} temp files left by an interrupted run");
            }
            report.stale_temp_files_removed = removed as u64;
        }
        Some(g)
    };

    let catalog = match &guard {
        Some(g) => Some(open_catalog(g.dir())?),
        None => {
            let dir = lock::dest_state_dir(&config.state_dir, &dest);
            Catalog::open_read_only(&dir).unwrap_or_else(|e| {
                tracing::warn!("{e}: the dry run compares size and mtime only");
                None
            })
        }
    };

    let sdk = crate::s3::sdk_config(config).await;
    let client = crate::s3::client(config, &sdk).map_err(|e| RunError::Config(e.to_string()))?;
    // History is kept by real runs only: a dry run moves nothing.
    let history = match (&config.history_dir, &guard) {
        (Some(dir), Some(g)) => {
            let h = History::open(dir, &dest, started_at).map_err(RunError::Config)?;
            // Remembered beside the catalog, so `restore --from-history` finds it without the flag.
            let remembered = g.dir().join(HISTORY_DIR_FILE);
            if let Err(e) = std::fs::write(&remembered, h.root().as_os_str().as_encoded_bytes()) {
                tracing::warn!("could not write {}: {e}", remembered.display());
            }
            Some(Arc::new(h))
        }
        _ => None,
    };
    let committer = atomic::Committer::spawn(
        COMMIT_BATCH,
        COMMIT_WINDOW,
        catalog.clone(),
        history.clone(),
    );
    let track_deletions = history.is_some() && catalog.is_some();
    let fetcher = Fetcher::new(
        client.clone(),
        &config.bucket,
        config.concurrency,
        settings,
        committer,
    )
    .restore_archived(config.restore_archived);
    let mut pages = listing::spawn(
        client,
        config.bucket.clone(),
        config.prefix.clone(),
        LISTING_DEPTH,
        config.list_concurrency,
    );
    // Objects in flight (a few more than requests, so the next GET is ready while others fsync).
    let slots = Arc::new(Semaphore::new(config.concurrency * 2));
    let dest_arc: Arc<Path> = dest.as_path().into();
    let mut tasks: JoinSet<(String, Result<Fetched, Unfetched>)> = JoinSet::new();
    let mut planner = Some(Planner::new(!config.dry_run, catalog.clone()));
    let mut first_page = true;

    while let Some(page) = pages.recv().await {
        let objects = match page {
            Ok(objects) => objects,
            Err(e) if first_page => return Err(listing_error(e)),
            Err(e) => {
                tracing::error!("{e}");
                report.error = Some(format!(
                    "{e}; objects after the last listed key were not seen"
                ));
                break;
            }
        };
        first_page = false;
        let (p, planned) = {
            let mut p = planner.take().expect("returned below");
            let d = dest.clone();
            tokio::task::spawn_blocking(move || {
                let planned: Vec<(ObjectInfo, Plan)> = objects
                    .into_iter()
                    .map(|o| {
                        let plan = p.plan(&d, &o);
                        (o, plan)
                    })
                    .collect();
                if track_deletions
                    && let Err(e) = p.mark_seen(planned.iter().map(|(o, _)| o.key.as_str()))
                {
                    tracing::warn!("{e}: deletions will not be moved to history this run");
                }
                match p.record_adopted() {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!("catalog: adopted {n} files already in place"),
                    Err(e) => tracing::warn!("{e}: adopted files not recorded"),
                }
                (p, planned)
            })
            .await
            .expect("planning does not panic")
        };
        planner = Some(p);

        for (obj, plan) in planned {
            report.listed += 1;
            match plan {
                Plan::Unchanged => report.unchanged += 1,
                Plan::Folder => report.folders += 1,
                Plan::Refused(reason) => {
                    tracing::warn!(key = ?obj.key, "refused: {reason}");
                    report.refused.push(Refused {
                        key: obj.key,
                        reason: reason.to_string(),
                    });
                }
                Plan::Error(error) => {
                    tracing::warn!(key = ?obj.key, "failed: {error}");
                    report.failed.push(Failed {
                        key: obj.key,
                        error,
                    });
                }
                Plan::Fetch(rel) if config.dry_run => {
                    tracing::info!(key = ?obj.key, size = obj.size, "would download");
                    *report.would_download.get_or_insert(0) += 1;
                    let _ = rel;
                }
                Plan::Fetch(rel) => {
                    let permit = slots.clone().acquire_owned().await.expect("never closed");
                    let fetcher = fetcher.clone();
                    let target = Target::new(&dest_arc, &rel);
                    tasks.spawn(async move {
                        let result = fetcher.fetch(&obj, &target).await;
                        drop(permit);
                        (obj.key, result)
                    });
                }
            }
            while let Some(done) = tasks.try_join_next() {
                record(&mut report, done);
            }
            show(pb, &report);
        }
    }
    while let Some(done) = tasks.join_next().await {
        record(&mut report, done);
        show(pb, &report);
    }
    if let (Some(h), Some(c)) = (&history, &catalog) {
        // Only a complete listing says what is gone; a broken one says nothing of the keys after it.
        if report.error.is_none() {
            let (h, c, d, prefix) = (h.clone(), c.clone(), dest.clone(), config.prefix.clone());
            let max = config.max_delete_percent;
            let outcome = tokio::task::spawn_blocking(move || {
                move_deleted(&h, &c, &d, prefix.as_deref().unwrap_or(""), max)
            })
            .await
            .expect("moving deletions does not panic");
            match outcome {
                Ok(Deletions::Moved(n)) => report.deleted_to_history = n,
                Ok(Deletions::Blocked(n)) => report.max_delete_blocked = Some(n),
                Err(e) => report.failed.push(Failed {
                    key: String::new(),
                    error: format!("moving deleted objects' files to history: {e}"),
                }),
            }
        }
        match h.prune(std::time::SystemTime::now(), config.keep_days) {
            Ok(n) => report.history_pruned_runs = n as u64,
            Err(e) => tracing::warn!("pruning {}: {e}", h.root().display()),
        }
    }
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    // Downloads end in any order; the report names archived keys in listing (byte) order.
    report.archived.sort_unstable();

    if let Some(g) = guard {
        // Every task has ended, so every temp file is committed or removed.
        if let Err(e) = g.finish() {
            tracing::warn!("could not clear the in-progress marker: {e}");
        }
    }
    Ok(report)
}

fn record(
    report: &mut Report,
    done: Result<(String, Result<Fetched, Unfetched>), tokio::task::JoinError>,
) {
    match done {
        Ok((key, Ok(f))) => {
            tracing::debug!(key = ?key, bytes = f.bytes, verified = f.verified_with, "downloaded");
            report.downloaded += 1;
            report.replaced_to_history += u64::from(f.replaced_to_history);
            report.bytes_downloaded += f.bytes;
            if f.verified_with == "none" {
                report.unverified += 1;
            }
        }
        Ok((key, Err(Unfetched::Failed(error)))) => {
            tracing::warn!(key = ?key, "failed: {error}");
            report.failed.push(Failed { key, error });
        }
        Ok((key, Err(Unfetched::Archived { restore_requested }))) => {
            tracing::debug!(key = ?key, restore_requested, "archived: not restored, not backed up");
            report.restore_requested += u64::from(restore_requested);
            report.archived.push(key);
        }
        Err(join) => {
            // A panic in a download task is a bug; account for it rather than lose the count.
            report.failed.push(Failed {
                key: String::new(),
                error: format!("internal error: {join}"),
            });
        }
    }
}

fn show(pb: &ProgressBar, r: &Report) {
    if pb.is_hidden() {
        return;
    }
    pb.set_message(format!(
        "listed {} · downloaded {} ({}) · unchanged {} · refused {} · failed {}",
        r.listed,
        r.downloaded,
        human_bytes(r.bytes_downloaded),
        r.unchanged,
        r.refused.len(),
        r.failed.len()
    ));
}

/// The file in the per-destination state folder that names the history folder of its backups.
pub const HISTORY_DIR_FILE: &str = "history-dir";

enum Deletions {
    Moved(u64),
    Blocked(u64),
}

/// Move the files whose objects the complete listing no longer has to history, unless that is more than
/// `max_percent` of the backed-up files (under `prefix`): then none.
fn move_deleted(
    history: &History,
    catalog: &Catalog,
    dest: &Path,
    prefix: &str,
    max_percent: u8,
) -> Result<Deletions, String> {
    let (gone, total) = catalog.unseen(prefix).map_err(|e| e.to_string())?;
    if gone.is_empty() {
        return Ok(Deletions::Moved(0));
    }
    if gone.len() as u64 * 100 > u64::from(max_percent) * total {
        tracing::warn!(
            "{} of {total} backed-up files are gone from the bucket: more than --max-delete {max_percent}%, none moved",
            gone.len()
        );
        return Ok(Deletions::Blocked(gone.len() as u64));
    }
    let mut dirs = Vec::new();
    let mut moved = Vec::new();
    for e in &gone {
        if e.key.ends_with('/') {
            // A folder marker: its directory may hold other files, so it stays; only the row goes.
            moved.push(e.key.as_str());
            continue;
        }
        let path = dest.join(&e.key);
        match history.move_aside(&path) {
            Ok(aside) => {
                tracing::debug!(key = ?e.key, "gone from the bucket: moved to history");
                dirs.extend(aside);
                dirs.extend(path.parent().map(Path::to_path_buf));
                moved.push(e.key.as_str());
            }
            Err(err) => tracing::warn!(key = ?e.key, "could not move to history: {err}"),
        }
    }
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        atomic::sync_dir(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    catalog
        .remove(moved.iter().copied())
        .map_err(|e| e.to_string())?;
    Ok(Deletions::Moved(moved.len() as u64))
}

/// Open the destination's catalog. One that SQLite cannot read is set aside (kept for inspection) and
/// a new one started: the backup itself is intact, and the new catalog adopts it file by file.
fn open_catalog(state: &Path) -> Result<Catalog, RunError> {
    match Catalog::open(state) {
        Ok(c) => Ok(c),
        Err(e) => {
            let path = state.join(catalog::FILE_NAME);
            let aside = state.join(format!(
                "{}.unreadable-{}",
                catalog::FILE_NAME,
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            ));
            tracing::warn!(
                "{e}; moving it to {} and starting a new one",
                aside.display()
            );
            for suffix in ["", "-wal", "-shm"] {
                let from = PathBuf::from(format!("{}{suffix}", path.display()));
                let to = PathBuf::from(format!("{}{suffix}", aside.display()));
                let _ = std::fs::rename(from, to);
            }
            Catalog::open(state).map_err(|e| RunError::Config(e.to_string()))
        }
    }
}

fn listing_error(e: ListError) -> RunError {
    RunError::Config(e.to_string())
}

/// Create the destination (0700) when missing and resolve it; a dry run only resolves it.
fn prepare_dest(dest: &Path, dry_run: bool) -> Result<PathBuf, RunError> {
    let err = |what: &str, e: io::Error| {
        RunError::Config(format!("destination {}: {what}: {e}", dest.display()))
    };
    if dry_run {
        return Ok(dest.canonicalize().unwrap_or_else(|_| dest.to_path_buf()));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dest)
        .map_err(|e| err("cannot create it", e))?;
    let dest = dest
        .canonicalize()
        .map_err(|e| err("cannot resolve it", e))?;
    if !dest.is_dir() {
        return Err(RunError::Config(format!(
            "destination {} is not a directory",
            dest.display()
        )));
    }
    Ok(dest)
}
