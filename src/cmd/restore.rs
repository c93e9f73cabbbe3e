//! `s3backup restore`: the backup, a history run folder, or the bucket as it was at an instant, put
//! back into a bucket (or, `--to-dir`, into a local folder).

use std::process::ExitCode;

use crate::cli::RestoreArgs;
use crate::cmd::{TimeMachine, fail, init_logging};
use crate::report::{self, Exit};
use crate::{catalog, config, history, lock, restore, s3};

/// `s3backup restore`: the catalogued files, or one history run folder, uploaded under their keys.
pub fn run(mut args: RestoreArgs) -> ExitCode {
    let json = args.json;
    if let Some(dir) = args.to_dir.take() {
        return to_dir(args, &dir);
    }
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
    let bucket = args
        .bucket
        .clone()
        .ok_or("--bucket is required (or --to-dir with --as-of)")?;
    config::validate_bucket(&bucket).map_err(|e| e.to_string())?;
    if let Some(e) = &args.endpoint_url {
        config::validate_endpoint(e).map_err(|e| e.to_string())?;
    }
    let concurrency = config::validate_concurrency(args.concurrency).map_err(|e| e.to_string())?;
    let d = args.at.resolve().map_err(|e| e.to_string())?;
    let state = lock::dest_state_dir(&d.state_dir, &d.dest);
    let prefix = args.prefix.unwrap_or_default();
    let source = match args.from_history {
        None if args.as_of.is_some() => {
            let tm = TimeMachine::open(d.clone(), args.history_dir.clone())?;
            let t = tm.instant(args.as_of.as_deref())?;
            restore::Source::AsOf(restore::AsOf {
                catalog: tm.catalog,
                t,
                dest: tm.dest,
                history: tm.history,
                prefix,
            })
        }
        Some(run) => {
            if history::parse_run_id(&run).is_none() || run.contains('/') {
                return Err(format!(
                    "--from-history {run:?}: expected a run id like 20261130T031705Z"
                ));
            }
            let root = match args.history_dir {
                Some(h) => h,
                None => crate::cmd::remembered_history(&state).ok_or_else(|| {
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
            restore::Source::History {
                run_dir,
                prefix,
                catalog: catalog::Catalog::open_read_only(&state).ok().flatten(),
            }
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
        bucket: bucket.clone(),
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
        bucket,
        concurrency,
        part_size: args.part_size * 1024 * 1024,
        overwrite: args.overwrite,
        dry_run: args.dry_run,
    };
    Ok((config, source, settings))
}

/// `restore --to-dir DIR --as-of T`: the tree as it was at T, written into a new or empty local folder.
fn to_dir(args: RestoreArgs, dir: &std::path::Path) -> ExitCode {
    let json = args.json;
    let prepared = TimeMachine::from_args(args.at, args.history_dir).and_then(|tm| {
        let t = tm.instant(args.as_of.as_deref())?;
        let prefix = args.prefix.unwrap_or_default();
        empty_or_new(dir, &tm)?;
        Ok((
            t,
            restore::AsOf {
                catalog: tm.catalog,
                t,
                dest: tm.dest,
                history: tm.history,
                prefix,
            },
        ))
    });
    let (t, as_of) = match prepared {
        Ok(p) => p,
        Err(e) => return fail(json, Exit::Config, &e),
    };
    let r = restore::to_dir(&as_of, dir, args.copy);
    say_err!("{}", r.human_summary(dir, 20));
    if json {
        let mut doc = serde_json::to_value(&r).expect("plain data serialises");
        doc["as_of"] = crate::instant::rfc3339(t).into();
        doc["to_dir"] = dir.display().to_string().into();
        say_out!("{doc}");
    }
    if r.ok() { Exit::Ok } else { Exit::Partial }.into()
}

/// `--to-dir` must be a new folder (made here, owner-only) or an empty one: a tree written over other
/// files could not be told from them. Never inside the backup or its history, nor around them: the
/// backups would take its files for their own.
fn empty_or_new(dir: &std::path::Path, tm: &TimeMachine) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    let resolved = crate::config::resolve_lenient(dir)
        .map_err(|e| format!("--to-dir {}: {e}", dir.display()))?;
    for (what, root) in [
        ("--dest", Some(&tm.dest)),
        ("the history folder", tm.history.as_ref()),
    ] {
        let Some(root) = root else { continue };
        let root = root.canonicalize().unwrap_or_else(|_| root.clone());
        if resolved.starts_with(&root) || root.starts_with(&resolved) {
            return Err(format!(
                "--to-dir {}: inside {what} {} or around it (the tree goes into a folder of its own)",
                dir.display(),
                root.display()
            ));
        }
    }
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {
            let empty = std::fs::read_dir(dir)
                .map_err(|e| format!("--to-dir {}: {e}", dir.display()))?
                .next()
                .is_none();
            if empty {
                Ok(())
            } else {
                Err(format!(
                    "--to-dir {}: not empty (the tree goes into a new or empty folder)",
                    dir.display()
                ))
            }
        }
        Ok(_) => Err(format!(
            "--to-dir {}: not a folder (a file or a link)",
            dir.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("--to-dir {}: cannot create it: {e}", dir.display())),
        Err(e) => Err(format!("--to-dir {}: {e}", dir.display())),
    }
}
