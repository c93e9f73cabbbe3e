//! `s3backup versions KEY`: every version held for one key, with its interval and file (no network).

use std::process::ExitCode;

use crate::cli::VersionsArgs;
use crate::cmd::{TimeMachine, fail};
use crate::instant::rfc3339;
use crate::report::Exit;

pub fn run(args: VersionsArgs) -> ExitCode {
    let json = args.json;
    let key = args.key;
    let outcome = TimeMachine::from_args(args.at, args.history_dir).and_then(|tm| {
        let rows = tm.catalog.versions_of(&key).map_err(|e| e.to_string())?;
        Ok((tm, rows))
    });
    let (tm, rows) = match outcome {
        Ok(o) => o,
        Err(e) => return fail(json, Exit::Config, &e),
    };
    if rows.is_empty() {
        return fail(
            json,
            Exit::Partial,
            &format!("versions {key:?}: the backup holds no version of this key"),
        );
    }
    if json {
        let versions: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).expect("plain data serialises");
                v["path"] = tm.path_of(r).map(|p| p.display().to_string()).into();
                v
            })
            .collect();
        say_out!(
            "{}",
            serde_json::json!({ "key": key, "versions": versions })
        );
    } else {
        for r in &rows {
            let from = r.current_from.map_or_else(|| "?".into(), rfc3339);
            let until = r.current_until.map_or_else(|| "now".into(), rfc3339);
            let what = if r.delete_marker {
                "(deleted)".to_owned()
            } else {
                tm.path_of(r)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            };
            say_out!(
                "{from} .. {until}  {:>12}  {}  {what}",
                r.size,
                r.version_id.as_deref().unwrap_or("-")
            );
        }
    }
    Exit::Ok.into()
}
