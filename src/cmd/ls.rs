//! `s3backup ls`: the keys as they were at an instant, from the catalog alone (no network), a page at a
//! time (ten million keys print in the memory of one page).

use std::io::Write;
use std::process::ExitCode;

use crate::cli::LsArgs;
use crate::cmd::{TimeMachine, fail};
use crate::instant::rfc3339;
use crate::report::Exit;

const PAGE: u32 = 1000;

pub fn run(args: LsArgs) -> ExitCode {
    let json = args.json;
    let prefix = args.prefix.unwrap_or_default();
    let opened = TimeMachine::from_args(args.at, args.history_dir).and_then(|tm| {
        let t = tm.instant(args.as_of.as_deref())?;
        // The first page before anything is printed: an unreadable catalog is one line.
        let first = tm
            .catalog
            .as_of_page(t, &prefix, "", PAGE)
            .map_err(|e| e.to_string())?;
        Ok((tm, t, first))
    });
    let (tm, t, mut page) = match opened {
        Ok(o) => o,
        Err(e) => return fail(json, Exit::Config, &e),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let (mut n, mut all_second) = (0u64, true);
    if json {
        let _ = write!(out, "{{\"as_of\":\"{}\",\"keys\":[", rfc3339(t));
    }
    while let Some(last) = page.last().map(|r| r.key.clone()) {
        for r in &page {
            let path = tm.path_of(r).map(|p| p.display().to_string());
            all_second &= r.precision == "second";
            if json {
                let mut v = serde_json::to_value(r).expect("plain data serialises");
                v["path"] = path.into();
                let _ = write!(out, "{}{v}", if n == 0 { "" } else { "," });
            } else {
                let _ = writeln!(
                    out,
                    "{}  {:>12}  {}  {}{}",
                    r.current_from.map_or_else(|| "-".repeat(20), rfc3339),
                    r.size,
                    r.key,
                    path.unwrap_or_default(),
                    if r.damaged {
                        "  (damaged: `verify` found it not as written)"
                    } else {
                        ""
                    }
                );
            }
            n += 1;
        }
        page = match tm.catalog.as_of_page(t, &prefix, &last, PAGE) {
            Ok(p) => p,
            Err(e) => {
                // Mid-listing: what was printed stands; the error ends it (and the JSON says so).
                let _ = out.flush();
                say_err!("error: {e}");
                if json {
                    say_out!("],\"error\":{}}}", serde_json::Value::from(e.to_string()));
                }
                return Exit::Config.into();
            }
        };
    }
    if json {
        let precision = if all_second { "second" } else { "run" };
        let _ = writeln!(out, "],\"precision\":\"{precision}\"}}");
    }
    let _ = out.flush();
    if !json {
        say_err!("{n} keys as of {}", rfc3339(t));
    }
    Exit::Ok.into()
}
