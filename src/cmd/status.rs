//! `s3backup status`: the destination's run records, read with no network.

use std::process::ExitCode;
use std::time::SystemTime;

use crate::cli::StatusArgs;
use crate::cmd::fail;
use crate::report::Exit;
use crate::status;

/// `s3backup status`: the destination's run records, read with no network.
pub fn run(args: StatusArgs) -> ExitCode {
    let json = args.json;
    let query = match args.into_query() {
        Ok(q) => q,
        Err(e) => return fail(json, Exit::Config, &e.to_string()),
    };
    match status::read(&query.dir, SystemTime::now(), query.max_age_hours) {
        Ok(st) => {
            if json {
                say_out!(
                    "{}",
                    serde_json::to_string(&st).expect("plain data serialises")
                );
            } else {
                say_out!("{}", st.human(query.max_age_hours));
            }
            if st.healthy { Exit::Ok } else { Exit::Partial }.into()
        }
        Err(e) => fail(json, Exit::Config, &e.to_string()),
    }
}
