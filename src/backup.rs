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
use crate::fetch::{FetchSettings, Fetched, Fetcher, HeldPlace, Target, Unfetched};
use crate::history::{self, Aside, History};
use crate::keypath::RefuseReason;
use crate::listing::versions::{self, VersionsPage};
use crate::listing::{self, ListError, ObjectInfo};
use crate::lock::{self, LockError, RunGuard};
use crate::plan::{Plan, Planner};
use crate::report::{Failed, Refused, Report, human_bytes};
use crate::signals::Stop;

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

/// Objects refused only because the folder in the way may be emptied by this run's deletions (an object
/// `report` where `report/` held objects that are gone), retried once the deletions are done; beyond
/// this many, the rest wait for the next run.
const DEFERRED_MAX: usize = 10_000;

/// A run: prepare the destination, list and plan, fetch and commit, reconcile deletions and history,
/// report. A stop (`signals`) ends the listing and abandons the downloads in flight; what was committed
/// stays, and the report says which signal stopped it.
pub async fn run(
    config: &Config,
    settings: FetchSettings,
    stop: &Stop,
    pb: &ProgressBar,
) -> Result<Report, RunError> {
    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    let previews = config.dry_run && config.history_dir.is_some();
    let mut report = Report {
        max_delete_limit: delete_limit_text(config),
        dry_run: config.dry_run,
        would_download: config.dry_run.then_some(0),
        would_replace_to_history: previews.then_some(0),
        ..Report::default()
    };
    let prep = prepare(config, started_at, &mut report)?;
    let sdk = crate::s3::sdk_config(config).await;
    let client = crate::s3::client(config, &sdk).map_err(|e| RunError::Config(e.to_string()))?;
    let versioned = versioning(config, &client, &mut report).await?;
    let committer = atomic::Committer::spawn(
        COMMIT_BATCH,
        COMMIT_WINDOW,
        prep.catalog.clone(),
        prep.history.clone(),
    );
    let fetcher = Fetcher::new(
        client.clone(),
        &config.bucket,
        config.concurrency,
        settings,
        committer,
    )
    .restore_archived(config.restore_archived);
    let mut pass = Pass {
        dest: prep.dest.as_path().into(),
        fetcher,
        // Objects in flight (a few more than requests, so the next GET is ready while others fsync).
        slots: Arc::new(Semaphore::new(config.concurrency * 2)),
        tasks: JoinSet::new(),
        dry_run: config.dry_run,
        defer_dir_conflicts: prep.tracks_deletions && !config.dry_run,
        deferred: Vec::new(),
        report,
    };
    let listing = list_and_fetch(config, client, versioned, &prep, &mut pass, stop, pb).await?;
    pass.drain(stop, pb).await;
    if stop.caught().is_none() {
        reconcile(config, &prep, &mut pass, listing, stop, pb).await;
    }
    if stop.caught().is_none() && versioned {
        keep_versions(config, &prep, &mut pass, stop, pb).await;
    }
    if stop.caught().is_none() {
        prune(config, &prep, &mut pass.report);
    }
    let mut report = pass.report;
    // A stop during the reconciliation lets the deletions it began finish, and still says so.
    report.interrupted = stop.caught();
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    // Downloads end in any order; the report names archived keys in listing (byte) order.
    report.archived.sort_unstable();
    if let Some(g) = prep.guard
        && report.interrupted.is_none()
    {
        // Every task has ended, so every temp file is committed or removed. (A stopped run leaves the
        // marker, so the next one sweeps whatever an abandoned download's blocking write left.)
        if let Err(e) = g.finish() {
            tracing::warn!("could not clear the in-progress marker: {e}");
        }
    }
    Ok(report)
}

/// What a run works with once the destination is ready.
struct Prepared {
    dest: PathBuf,
    guard: Option<RunGuard>,
    catalog: Option<Catalog>,
    history: Option<Arc<History>>,
    /// A complete listing tells which files' objects are gone (history on, or previewed in a dry run).
    tracks_deletions: bool,
}

/// Step 1: the destination made and resolved, its state folder outside it, the lock and the
/// in-progress marker taken, a killed run's temp files swept, the catalog and the history folder open.
/// A dry run only reads.
fn prepare(
    config: &Config,
    started_at: std::time::SystemTime,
    report: &mut Report,
) -> Result<Prepared, RunError> {
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
            let removed = atomic::sweep_temp_files(&dest).map_err(|e| {
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
    if let (Some(h), Some(c), Some(g)) = (&history, &catalog, &guard) {
        if g.previous_run_interrupted
            && let Err(e) = atomic::sweep_temp_files(h.root())
        {
            tracing::warn!(
                "removing stale temp files under {}: {e}",
                h.root().display()
            );
        }
        adopt_history(h, c);
    }
    let tracks_deletions = config.history_dir.is_some() && catalog.is_some();
    Ok(Prepared {
        dest,
        guard,
        catalog,
        history,
        tracks_deletions,
    })
}

/// Index, once, the versions a history folder held before the catalog did (schema 4).
fn adopt_history(h: &History, catalog: &Catalog) {
    const ADOPTED: &str = "history-adopted";
    if catalog.meta(ADOPTED).ok().flatten().is_some() {
        return;
    }
    let adopted = history::adoptable(h.root())
        .map_err(|e| e.to_string())
        .and_then(|rows| {
            catalog.record_held(&rows).map_err(|e| e.to_string())?;
            Ok(rows.len())
        })
        .and_then(|n| {
            catalog
                .set_meta(ADOPTED, &n.to_string())
                .map_err(|e| e.to_string())
        });
    if let Err(e) = adopted {
        tracing::warn!("indexing the history in {}: {e}", h.root().display());
    }
}

/// What the listing step learnt.
#[derive(Clone, Copy)]
struct Listing {
    /// Every page arrived and every listed key was noted: the catalog's unseen rows are gone.
    complete: bool,
}

/// Step 2: stream the listing through the planner, a page at a time, and start a download for every
/// object that changed.
async fn list_and_fetch(
    config: &Config,
    client: aws_sdk_s3::Client,
    versioned: bool,
    prep: &Prepared,
    pass: &mut Pass,
    stop: &Stop,
    pb: &ProgressBar,
) -> Result<Listing, RunError> {
    let mut pages = if versioned {
        Pages::Versioned(versions::spawn(
            client,
            config.bucket.clone(),
            config.prefix.clone(),
            LISTING_DEPTH,
        ))
    } else {
        Pages::Plain(listing::spawn(
            client,
            config.bucket.clone(),
            config.prefix.clone(),
            LISTING_DEPTH,
            config.list_concurrency,
        ))
    };
    let mut planner = Some(Planner::new(!config.dry_run, prep.catalog.clone()));
    let mut first_page = true;
    let mut seen_ok = true;
    let mut complete = true;
    loop {
        let page = tokio::select! {
            biased;
            () = stop.wait() => break,
            page = pages.recv() => page,
        };
        let Some(page) = page else { break };
        let VersionsPage {
            current: objects,
            older,
            markers,
        } = match page {
            Ok(page) => page,
            Err(e) if first_page => return Err(listing_error(e)),
            Err(e) => {
                tracing::error!("{e}");
                pass.report.error = Some(format!(
                    "{e}; objects after the last listed key were not seen"
                ));
                complete = false;
                break;
            }
        };
        first_page = false;
        let mut p = planner.take().expect("returned below");
        let d = prep.dest.clone();
        let track = prep.tracks_deletions && seen_ok;
        if let Some(n) = pass.report.versions_listed.as_mut() {
            *n += older.len() as u64;
        }
        if let Some(n) = pass.report.delete_markers.as_mut() {
            *n += markers.len() as u64;
        }
        let noted = prep
            .catalog
            .clone()
            .filter(|_| !config.dry_run && (!older.is_empty() || !markers.is_empty()));
        let (p, planned, seen) = tokio::task::spawn_blocking(move || {
            if let Some(c) = noted
                && let Err(e) = c.note_versions(&older, &markers)
            {
                tracing::warn!("{e}: this page's noncurrent versions are not kept this run");
            }
            let planned: Vec<(ObjectInfo, Plan)> = objects
                .into_iter()
                .map(|o| {
                    let plan = p.plan(&d, &o);
                    (o, plan)
                })
                .collect();
            let seen = if track {
                p.mark_seen(planned.iter().map(|(o, _)| o.key.as_str()))
                    .map_err(|e| e.to_string())
            } else {
                Ok(())
            };
            match p.record_adopted() {
                Ok(0) => {}
                Ok(n) => tracing::debug!("catalog: adopted {n} files already in place"),
                Err(e) => tracing::warn!("{e}: adopted files not recorded"),
            }
            (p, planned, seen)
        })
        .await
        .expect("planning does not panic");
        planner = Some(p);
        if let Err(e) = seen {
            // Without the full set of listed keys, every unnoted one would look deleted.
            tracing::warn!("{e}: deletions will not be moved to history this run");
            seen_ok = false;
        }
        for (obj, plan) in planned {
            pass.report.listed += 1;
            if !pass.dispatch(obj, plan, stop).await {
                break;
            }
            show(pb, &pass.report);
        }
    }
    Ok(Listing {
        complete: complete && seen_ok && stop.caught().is_none(),
    })
}

/// The listing's pages: plain (ListObjectsV2) or versioned (ListObjectVersions), as one kind.
enum Pages {
    Plain(listing::Pages),
    Versioned(tokio::sync::mpsc::Receiver<Result<VersionsPage, ListError>>),
}

impl Pages {
    async fn recv(&mut self) -> Option<Result<VersionsPage, ListError>> {
        match self {
            Pages::Plain(rx) => rx.recv().await.map(|p| {
                p.map(|current| VersionsPage {
                    current,
                    ..VersionsPage::default()
                })
            }),
            Pages::Versioned(rx) => rx.recv().await,
        }
    }
}

/// The downloads of a run in flight and the accounting of every planned object.
struct Pass {
    dest: Arc<Path>,
    fetcher: Fetcher,
    slots: Arc<Semaphore>,
    /// Each download's key, whether it is a noncurrent version (into history), and its outcome.
    tasks: JoinSet<(String, bool, Result<Fetched, Unfetched>)>,
    dry_run: bool,
    /// Refusals that this run's deletions may lift (see `DEFERRED_MAX`).
    defer_dir_conflicts: bool,
    deferred: Vec<ObjectInfo>,
    report: Report,
}

impl Pass {
    /// Account for one planned object, starting its download when it changed. False when a stop came
    /// while waiting for a download slot.
    async fn dispatch(&mut self, obj: ObjectInfo, plan: Plan, stop: &Stop) -> bool {
        let report = &mut self.report;
        match plan {
            Plan::Unchanged => report.unchanged += 1,
            Plan::Folder => report.folders += 1,
            Plan::Refused(RefuseReason::IsDirOnDisk | RefuseReason::ParentNotDirOnDisk(_))
                if self.defer_dir_conflicts && self.deferred.len() < DEFERRED_MAX =>
            {
                self.deferred.push(obj);
            }
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
            Plan::Fetch(rel) if self.dry_run => {
                tracing::info!(key = ?obj.key, size = obj.size, "would download");
                *report.would_download.get_or_insert(0) += 1;
                if let Some(n) = report.would_replace_to_history.as_mut()
                    && std::fs::symlink_metadata(self.dest.join(&rel)).is_ok_and(|m| m.is_file())
                {
                    *n += 1;
                }
            }
            Plan::Fetch(rel) => {
                let permit = tokio::select! {
                    biased;
                    () = stop.wait() => return false,
                    p = self.slots.clone().acquire_owned() => p.expect("never closed"),
                };
                let fetcher = self.fetcher.clone();
                let target = Target::new(&self.dest, &rel);
                self.tasks.spawn(async move {
                    let result = fetcher.fetch(&obj, &target).await;
                    drop(permit);
                    (obj.key, false, result)
                });
            }
        }
        while let Some(done) = self.tasks.try_join_next() {
            record(&mut self.report, done);
        }
        true
    }

    /// Start fetching a noncurrent version into history. False when a stop came while waiting for a
    /// download slot.
    async fn fetch_version(&mut self, obj: ObjectInfo, target: Target, stop: &Stop) -> bool {
        let permit = tokio::select! {
            biased;
            () = stop.wait() => return false,
            p = self.slots.clone().acquire_owned() => p.expect("never closed"),
        };
        let fetcher = self.fetcher.clone();
        self.tasks.spawn(async move {
            let result = fetcher.fetch(&obj, &target).await.map_err(|u| match u {
                Unfetched::Failed(e) => Unfetched::Failed(format!(
                    "noncurrent version {}: {e}",
                    obj.version_id.as_deref().unwrap_or_default()
                )),
                other => other,
            });
            drop(permit);
            (obj.key, true, result)
        });
        while let Some(done) = self.tasks.try_join_next() {
            record(&mut self.report, done);
        }
        true
    }

    /// Wait for every download; on a stop, abandon those still in flight (their temp files go with
    /// them) and keep what they committed.
    async fn drain(&mut self, stop: &Stop, pb: &ProgressBar) {
        loop {
            let done = tokio::select! {
                biased;
                () = stop.wait(), if !self.tasks.is_empty() => {
                    self.tasks.abort_all();
                    while let Some(done) = self.tasks.join_next().await {
                        if !matches!(&done, Err(e) if e.is_cancelled()) {
                            record(&mut self.report, done);
                        }
                    }
                    return;
                }
                done = self.tasks.join_next() => done,
            };
            let Some(done) = done else { return };
            record(&mut self.report, done);
            show(pb, &self.report);
        }
    }
}

/// Step 3, after a listing that was not stopped: move what left the bucket to history (or, in a dry
/// run, count it against the limits), and retry the objects that a deleted folder was in the way of.
async fn reconcile(
    config: &Config,
    prep: &Prepared,
    pass: &mut Pass,
    listing: Listing,
    stop: &Stop,
    pb: &ProgressBar,
) {
    let Some(catalog) = prep.catalog.clone().filter(|_| prep.tracks_deletions) else {
        return;
    };
    // Only a complete listing says what is gone; a broken one says nothing of the keys after it.
    if listing.complete {
        let (h, d) = (prep.history.clone(), prep.dest.clone());
        let prefix = config.prefix.clone().unwrap_or_default();
        let limits = DeleteLimits {
            percent: config.max_delete_percent,
            bytes: config.max_delete_bytes,
        };
        let outcome = tokio::task::spawn_blocking(move || {
            move_deleted(h.as_deref(), &catalog, &d, &prefix, limits)
        })
        .await
        .expect("moving deletions does not panic");
        let report = &mut pass.report;
        match outcome {
            Ok(del) => {
                if config.dry_run {
                    report.would_delete_to_history = Some(del.moved);
                } else {
                    report.deleted_to_history = del.moved;
                }
                report.deleted_changed_locally = del.set_aside;
                report.max_delete_blocked = del.blocked;
                report.failed.extend(del.failed);
            }
            Err(e) => report.failed.push(Failed {
                key: String::new(),
                error: format!("moving deleted objects' files to history: {e}"),
            }),
        }
    }
    retry_deferred(prep, pass, stop, pb).await;
}

/// Plan again the objects a folder was in the way of: the deletions may have removed it. Whatever is
/// still in the way now is refused as before.
async fn retry_deferred(prep: &Prepared, pass: &mut Pass, stop: &Stop, pb: &ProgressBar) {
    let deferred = std::mem::take(&mut pass.deferred);
    if deferred.is_empty() {
        return;
    }
    pass.defer_dir_conflicts = false;
    let (d, catalog) = (prep.dest.clone(), prep.catalog.clone());
    let planned = tokio::task::spawn_blocking(move || {
        let mut p = Planner::new(true, catalog);
        let planned: Vec<(ObjectInfo, Plan)> = deferred
            .into_iter()
            .map(|o| {
                let plan = p.plan(&d, &o);
                (o, plan)
            })
            .collect();
        if let Err(e) = p.record_adopted() {
            tracing::warn!("{e}: adopted files not recorded");
        }
        planned
    })
    .await
    .expect("planning does not panic");
    for (obj, plan) in planned {
        if !pass.dispatch(obj, plan, stop).await {
            break;
        }
    }
    pass.drain(stop, pb).await;
}

/// With `--versions`: whether the bucket keeps versions (then the run lists them). A bucket whose
/// versioning was never enabled is said in one line, and the run goes on as an unversioned one.
async fn versioning(
    config: &Config,
    client: &aws_sdk_s3::Client,
    report: &mut Report,
) -> Result<bool, RunError> {
    if !config.versions {
        return Ok(false);
    }
    let v = versions::versioning(client, &config.bucket)
        .await
        .map_err(listing_error)?;
    report.versioning = Some(v.as_str());
    if v == versions::Versioning::Disabled {
        tracing::warn!(
            "bucket {}: versioning was never enabled, so it holds no other versions: --versions backs up the current objects",
            config.bucket
        );
        return Ok(false);
    }
    report.versions_listed = Some(0);
    report.delete_markers = Some(0);
    report.versions_downloaded = Some(0);
    Ok(true)
}

/// Noncurrent versions fetched into history at a time (each page a catalog query).
const VERSIONS_PAGE: u32 = 1000;

/// Step 4, with `--versions`: the intervals of the versions history holds settled by the listing,
/// then every listed noncurrent version held nowhere fetched (by VersionId) into history, under the
/// second it stopped being current.
async fn keep_versions(
    config: &Config,
    prep: &Prepared,
    pass: &mut Pass,
    stop: &Stop,
    pb: &ProgressBar,
) {
    let cutoff = (config.keep_days > 0).then(|| {
        std::time::SystemTime::now()
            - std::time::Duration::from_secs(u64::from(config.keep_days) * 86_400)
    });
    let (Some(catalog), Some(history)) = (prep.catalog.clone(), prep.history.clone()) else {
        return;
    };
    if pass.dry_run {
        return;
    }
    match catalog.settle_held() {
        Ok(0) => {}
        Ok(n) => tracing::debug!("catalog: {n} versions in history matched to the listing"),
        Err(e) => tracing::warn!("{e}: the intervals of the versions in history stay as they were"),
    }
    let root: Arc<Path> = history.root().into();
    let mut after = (String::new(), String::new());
    loop {
        let c = catalog.clone();
        let a = after.clone();
        let page =
            tokio::task::spawn_blocking(move || c.missing_versions((&a.0, &a.1), VERSIONS_PAGE))
                .await
                .expect("a catalog query does not panic");
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                pass.report.failed.push(Failed {
                    key: String::new(),
                    error: format!("finding the versions history lacks: {e}"),
                });
                break;
            }
        };
        let Some(last) = page.last() else { break };
        after = (last.key.clone(), last.version_id.clone());
        for v in page {
            match crate::keypath::map_key(&v.key, v.size) {
                crate::keypath::Mapping::File(_) => {}
                // An empty folder marker's old version holds nothing to keep.
                crate::keypath::Mapping::FolderMarker(_) => continue,
                // Named, as the current version of such a key is: not kept, and the run says so.
                crate::keypath::Mapping::Refused(reason) => {
                    pass.report.refused.push(Refused {
                        key: v.key,
                        reason: format!("noncurrent version {}: {reason}", v.version_id),
                    });
                    continue;
                }
            }
            // Older than --keep-days: it would be pruned at the end of this very run.
            if cutoff.is_some_and(|c| v.until < c) {
                continue;
            }
            let file = history.version_file(&v.key, v.until, |f| {
                catalog.held_file_taken(f).unwrap_or(true)
            });
            let target = Target::in_history(
                &root,
                HeldPlace {
                    file,
                    until: v.until,
                    followed_by: v.followed_by,
                },
            );
            let obj = ObjectInfo {
                key: v.key,
                size: v.size,
                etag: v.etag,
                last_modified: v.last_modified,
                checksum_type: v.checksum_type,
                version_id: Some(v.version_id),
            };
            if !pass.fetch_version(obj, target, stop).await {
                return;
            }
        }
    }
    pass.drain(stop, pb).await;
    match catalog.drop_superseded_damage() {
        Ok(0) => {}
        Ok(n) => tracing::info!("{n} damaged versions in history were fetched again intact"),
        Err(e) => tracing::warn!("{e}: damaged versions fetched again stay marked"),
    }
}

/// Step 5: remove the history folders older than `--keep-days` (a dry run counts them), and forget
/// the versions they held.
fn prune(config: &Config, prep: &Prepared, report: &mut Report) {
    if let (Some(root), true) = (&config.history_dir, config.dry_run) {
        let expired = history::expired_runs(root, std::time::SystemTime::now(), config.keep_days);
        report.would_prune_runs = Some(expired.map_or(0, |e| e.len() as u64));
    }
    let Some(h) = &prep.history else { return };
    match h.prune(std::time::SystemTime::now(), config.keep_days) {
        Ok(p) => {
            report.history_pruned_runs = p.removed as u64;
            for f in p.failed {
                tracing::warn!("pruning history: {f}");
            }
            if let Some(c) = &prep.catalog {
                if let Err(e) = c.forget_held_in(&p.folders) {
                    tracing::warn!("{e}: the catalog still lists versions of pruned folders");
                }
                // From here back, versions may be pruned (or were never fetched): the time machine
                // answers only for instants after it.
                if config.keep_days > 0 {
                    let cutoff = std::time::SystemTime::now()
                        - std::time::Duration::from_secs(u64::from(config.keep_days) * 86_400);
                    if let Err(e) = c.raise_horizon(cutoff) {
                        tracing::warn!("{e}: the pruning horizon is not recorded");
                    }
                }
            }
        }
        Err(e) => tracing::warn!("pruning {}: {e}", h.root().display()),
    }
}

fn record(
    report: &mut Report,
    done: Result<(String, bool, Result<Fetched, Unfetched>), tokio::task::JoinError>,
) {
    match done {
        Ok((key, true, Ok(f))) => {
            tracing::debug!(key = ?key, bytes = f.bytes, verified = f.verified_with, "noncurrent version kept");
            *report.versions_downloaded.get_or_insert(0) += 1;
            report.bytes_downloaded += f.bytes;
            if f.verified_with == "none" {
                report.unverified += 1;
            }
        }
        Ok((key, _, Ok(f))) => {
            tracing::debug!(key = ?key, bytes = f.bytes, verified = f.verified_with, "downloaded");
            report.downloaded += 1;
            match f.aside {
                Aside::Kept(_) => report.replaced_to_history += 1,
                Aside::SetAside(_) => report.repaired += 1,
                Aside::Nothing | Aside::Same => {}
            }
            report.bytes_downloaded += f.bytes;
            if f.verified_with == "none" {
                report.unverified += 1;
            }
        }
        Ok((key, _, Err(Unfetched::Failed(error)))) => {
            tracing::warn!(key = ?key, "failed: {error}");
            report.failed.push(Failed { key, error });
        }
        Ok((key, version, Err(Unfetched::Archived { restore_requested }))) => {
            // An archived noncurrent version is named as one: the current object may be backed up.
            let key = if version {
                format!("{key} (a noncurrent version)")
            } else {
                key
            };
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

/// `--max-delete` and `--max-delete-bytes`.
#[derive(Clone, Copy)]
struct DeleteLimits {
    percent: u8,
    bytes: Option<u64>,
}

fn delete_limit_text(config: &Config) -> String {
    let mut s = format!("--max-delete {}%", config.max_delete_percent);
    if let Some(b) = config.max_delete_bytes {
        s.push_str(&format!(" or --max-delete-bytes {}", human_bytes(b)));
    }
    s
}

/// What `move_deleted` did (or, without a history, would do).
#[derive(Default)]
struct Deletions {
    moved: u64,
    set_aside: u64,
    blocked: Option<u64>,
    failed: Vec<Failed>,
}

/// Move the files whose objects the complete listing no longer has to history, unless they are more
/// than `limits` allow (a share of the backed-up files under `prefix`, their bytes): then none. Folder
/// markers count for neither: a marker's row goes, and its folder with it when empty. A file that is no
/// version the bucket held (changed locally) is set aside, never removed. Without a history (a dry
/// run), only counts.
fn move_deleted(
    history: Option<&History>,
    catalog: &Catalog,
    dest: &Path,
    prefix: &str,
    limits: DeleteLimits,
) -> Result<Deletions, String> {
    let (gone, totals) = catalog.unseen(prefix).map_err(|e| e.to_string())?;
    let (markers, files): (Vec<_>, Vec<_>) = gone.iter().partition(|e| e.key.ends_with('/'));
    let gone_bytes: u64 = files.iter().map(|e| e.size).sum();
    let too_many = files.len() as u64 * 100 > u64::from(limits.percent) * totals.files;
    let too_big = limits.bytes.is_some_and(|max| gone_bytes > max);
    let mut out = Deletions::default();
    if !files.is_empty() && (too_many || too_big) {
        tracing::warn!(
            "{} of {} backed-up files ({} of {}) are gone from the bucket: more than the limit, none moved",
            files.len(),
            totals.files,
            human_bytes(gone_bytes),
            human_bytes(totals.bytes)
        );
        out.blocked = Some(files.len() as u64);
        return Ok(out);
    }
    let Some(history) = history else {
        out.moved = files.len() as u64;
        return Ok(out);
    };
    let mut dirs = Vec::new();
    let mut emptied = Vec::new();
    let mut forget = Vec::new();
    let mut held = Vec::new();
    for e in files {
        let path = dest.join(&e.key);
        match history.keep_old(&path, Some(e), None) {
            Ok(Aside::Kept(dir)) => {
                tracing::debug!(key = ?e.key, "gone from the bucket: moved to history");
                held.extend(history.held_row(&path, Some(e), None));
                dirs.push(dir);
                out.moved += 1;
            }
            Ok(Aside::SetAside(dir)) => {
                tracing::warn!(key = ?e.key, "gone from the bucket, and its file was not as the backup wrote it: set aside in {}", dir.display());
                dirs.push(dir);
                out.set_aside += 1;
            }
            Ok(Aside::Nothing | Aside::Same) => {}
            Err(err) => {
                out.failed.push(Failed {
                    key: e.key.clone(),
                    error: format!("moving {} to history: {err}", path.display()),
                });
                continue;
            }
        }
        emptied.extend(path.parent().map(Path::to_path_buf));
        forget.push(e.key.as_str());
    }
    for m in markers {
        emptied.push(dest.join(m.key.trim_end_matches('/')));
        forget.push(m.key.as_str());
    }
    // History indexed before the rows go: a kill between the two leaves rows whose files are gone,
    // which the next run forgets.
    catalog.record_held(&held).map_err(|e| e.to_string())?;
    catalog.remove(forget).map_err(|e| e.to_string())?;
    // Deepest first, so that a folder emptied by its children's removal goes too; a folder whose marker
    // the bucket still holds stays.
    emptied.sort_by(|a, b| b.cmp(a));
    emptied.dedup();
    let marked = |d: &Path| {
        d.strip_prefix(dest)
            .ok()
            .and_then(Path::to_str)
            .is_some_and(|rel| catalog.get(&format!("{rel}/")).is_ok_and(|r| r.is_some()))
    };
    for d in &emptied {
        dirs.extend(history::remove_empty_dirs(dest, d, marked));
        dirs.push(d.clone());
    }
    dirs.sort();
    dirs.dedup();
    for d in dirs.iter().filter(|d| d.exists()) {
        atomic::sync_dir(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    Ok(out)
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
