use std::process::ExitCode;

use clap::Parser;
use s3backup::cli::Cli;
use s3backup::report::Exit;

// musl's allocator takes a lock and returns memory to the kernel eagerly: in the static binary the
// stack installs, it cost ~50% more system time than glibc per small object (bench/README.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() && std::env::args_os().any(|a| a == "--json") => {
            // The first line, with the indented lines under it that name the flags (clap lists the
            // missing required ones there), as one line.
            let text = e.to_string();
            let mut lines = text.lines();
            let mut message = lines
                .next()
                .unwrap_or("invalid usage")
                .trim_start_matches("error: ")
                .to_owned();
            for more in lines.take_while(|l| l.starts_with("  ")) {
                message.push(' ');
                message.push_str(more.trim());
            }
            let _ = e.print();
            return s3backup::json_error(Exit::Config, &message);
        }
        Err(e) => e.exit(),
    };
    match s3backup::run(cli) {
        Ok(code) => code,
        Err(e) => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            Exit::Config.into()
        }
    }
}
