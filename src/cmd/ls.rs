//! `s3backup ls`: the keys as they were at an instant, from the catalog alone (no network).

use std::process::ExitCode;

use crate::cli::LsArgs;
use crate::cmd::{TimeMachine, fail};
use crate::instant::rfc3339;
use crate::report::Exit;

pub fn run(args: LsArgs) -> ExitCode {
    let json = args.json;
    let outcome = args
        .at
        .resolve()
        .map_err(|e| e.to_string())
        .and_then(|d| TimeMachine::open(d, args.history_dir))
        .and_then(|tm| {
            let t = tm.instant(args.as_of.as_deref())?;
            let rows = tm
                .catalog
                .as_of(t, args.prefix.as_deref().unwrap_or(""))
                .map_err(|e| e.to_string())?;
            Ok((tm, t, rows))
        });
    let (tm, t, rows) = match outcome {
        Ok(o) => o,
        Err(e) => return fail(json, Exit::Config, &e),
    };
    if json {
        let keys: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).expect("plain data serialises");
                v["path"] = tm.path_of(r).map(|p| p.display().to_string()).into();
                v
            })
            .collect();
        let precision = if rows.iter().all(|r| r.precision == "second") {
            "second"
        } else {
            "run"
        };
        let doc = serde_json::json!({
            "as_of": rfc3339(t),
            "precision": precision,
            "keys": keys,
        });
        say_out!("{doc}");
    } else {
        for r in &rows {
            say_out!(
                "{}  {:>12}  {}  {}",
                r.current_from.map_or_else(|| "-".repeat(20), rfc3339),
                r.size,
                r.key,
                tm.path_of(r)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
        say_err!("{} keys as of {}", rows.len(), rfc3339(t));
    }
    Exit::Ok.into()
}
