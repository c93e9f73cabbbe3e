//! A graceful stop on SIGTERM and SIGINT: the first one asks the run to stop (downloads in flight are
//! abandoned, what is committed stays, the run record and the metric are written with the signal's exit
//! code); a second one ends the process at once, as a user pressing Ctrl-C twice expects.

use tokio::sync::watch;

/// A signal that stops a run, and the exit code it gives (128 + its number, as shells report it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Signal {
    #[serde(rename = "SIGINT")]
    Int,
    #[serde(rename = "SIGTERM")]
    Term,
}

impl Signal {
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Int => 130,
            Signal::Term => 143,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        }
    }
}

/// Whether (and by which signal) the run was asked to stop.
#[derive(Clone)]
pub struct Stop {
    rx: watch::Receiver<Option<Signal>>,
}

impl Stop {
    /// A stop that never comes (library callers, tests).
    pub fn never() -> Stop {
        let (tx, rx) = watch::channel(None);
        // Kept alive for the life of the process, so `wait` pends rather than ending.
        std::mem::forget(tx);
        Stop { rx }
    }

    /// Listen for SIGINT and SIGTERM from now on (inside a tokio runtime).
    pub fn listen() -> std::io::Result<Stop> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    Some(()) = int.recv() => Signal::Int,
                    Some(()) = term.recv() => Signal::Term,
                    else => return,
                };
                if tx.borrow().is_some() {
                    eprintln!("s3backup: {} again: stopping at once", sig.name());
                    std::process::exit(i32::from(sig.exit_code()));
                }
                tracing::warn!(
                    "{}: stopping; downloads in flight are abandoned, finished files are kept",
                    sig.name()
                );
                let _ = tx.send(Some(sig));
            }
        });
        Ok(Stop { rx })
    }

    pub fn caught(&self) -> Option<Signal> {
        *self.rx.borrow()
    }

    /// Resolves once a stop is asked for.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(Option::is_some).await;
    }
}
