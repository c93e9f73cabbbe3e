use std::process::ExitCode;

use clap::Parser;
use s3backup::cli::Cli;
use s3backup::report::Exit;

// musl's allocator takes a lock and returns memory to the kernel eagerly: in the static binary the
// stack installs, it cost ~50% more system time than glibc per small object (bench/README.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (include/mimalloc.h).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // mimalloc v3 gives freed pages back to the kernel a second after they empty; a run frees pages
    // (response bodies, listed pages, blocking threads' buffers) much faster than that, so a second of
    // churn stays resident on top of what is live. 10 ms, v2's default: at 10^6 objects the no-op's
    // max RSS went from 52-54 to 48-49 MiB, the same CPU (bench/README.md).
    // SAFETY: sets one integer option; mimalloc reads its options at any time.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 10) };
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

#[cfg(test)]
mod tests {
    /// The index is mimalloc's enum order, which a new mimalloc could change: purge_delay is the one
    /// option whose default is 1000 ms in v3 (unless MIMALLOC_PURGE_DELAY is set).
    #[test]
    fn the_option_main_sets_is_the_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads one integer option.
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) },
            1000
        );
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY - 1) },
            1
        );
    }
}
