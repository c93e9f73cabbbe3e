//! `s3backup cron-entry`: the /etc/cron.d file, rendered by `cron`, written to stdout.

use std::process::ExitCode;

use crate::cli::CronArgs;
use crate::cmd::fail;
use crate::report::Exit;

pub fn run(args: CronArgs) -> anyhow::Result<ExitCode> {
    let job = args.into_job()?;
    // The cron file is this command's product: a write that fails (a full disk under a redirect) is an
    // error, or an empty file would be installed and no backup ever run.
    let text = job.render()?;
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        return Ok(fail(
            false,
            Exit::Config,
            &format!("writing the cron file to stdout: {e}"),
        ));
    }
    Ok(Exit::Ok.into())
}
