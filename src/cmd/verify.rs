//! `s3backup verify`: the files at rest against the catalog, under the destination's lock.

use std::process::ExitCode;

use crate::cli::VerifyArgs;
use crate::cmd::{fail, init_logging};
use crate::report::{self, Exit};
use crate::{catalog, lock, scrub};

/// `s3backup verify`: the files at rest against the catalog, under the destination's lock.
pub fn run(args: VerifyArgs) -> ExitCode {
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
    let prefix = args.prefix.as_deref().unwrap_or("");
    let history = crate::cmd::remembered_history(&dir);
    let outcome = scrub::verify(&catalog, &d.dest, prefix).and_then(|mut r| {
        if let Some(h) = &history {
            scrub::verify_history(&catalog, h, prefix, &mut r)?;
        }
        Ok(r)
    });
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
