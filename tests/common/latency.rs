//! A latency proxy in front of a test S3 server: holds each ListObjectsV2 request for `list_delay`
//! and each other request (object GETs, HEADs) for `get_delay` before forwarding it, so that the first
//! byte of every answer comes that much later, as S3's 100-300 ms per LIST page makes it. It counts LISTs
//! and the most in flight at once (the proof that listings ran in parallel), and can answer chosen LISTs
//! with 403 AccessDenied instead of forwarding them (a listing that breaks half-way), or strip the
//! continuation token from their answers (a truncated page a client must not take for the last one).
//!
//! One request per connection (it asks the server to close after answering), as `Proxy` in `mod.rs`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the proxy does to a LIST it was told to damage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListFault {
    /// Answer 403 AccessDenied without asking the server.
    Forbidden,
    /// Forward it, and remove `<NextContinuationToken>` from the answer (`IsTruncated` stays true).
    DropToken,
}

#[derive(Default)]
struct State {
    list_delay: Duration,
    get_delay: Duration,
    /// Damage LISTs whose request line contains all of these.
    fail_list: Option<(Vec<String>, ListFault)>,
    lists: Vec<String>,
    failed: usize,
}

pub struct LatencyProxy {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl LatencyProxy {
    pub fn start(upstream: &str, list_delay: Duration, get_delay: Duration) -> LatencyProxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            list_delay,
            get_delay,
            ..State::default()
        }));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let (st, inf, max) = (state.clone(), in_flight.clone(), max_in_flight.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let (st, inf, max, up) = (st.clone(), inf.clone(), max.clone(), upstream.clone());
                thread::spawn(move || {
                    let _ = serve(client, &up, &st, &inf, &max);
                });
            }
        });
        LatencyProxy {
            endpoint,
            state,
            in_flight,
            max_in_flight,
        }
    }

    /// From now on, answer 403 AccessDenied to every LIST whose request line contains all of `parts`.
    pub fn fail_lists_containing(&self, parts: &[&str]) {
        self.damage_lists_containing(parts, ListFault::Forbidden);
    }

    /// From now on, damage every LIST whose request line contains all of `parts` with `fault`.
    pub fn damage_lists_containing(&self, parts: &[&str], fault: ListFault) {
        self.state.lock().unwrap().fail_list =
            Some((parts.iter().map(|s| s.to_string()).collect(), fault));
    }

    /// LISTs damaged so far.
    pub fn failed(&self) -> usize {
        self.state.lock().unwrap().failed
    }

    /// The request lines of the LISTs seen since the last call, and the most that were in flight at
    /// once meanwhile; both start again from zero.
    pub fn take_lists(&self) -> (Vec<String>, usize) {
        let lists = std::mem::take(&mut self.state.lock().unwrap().lists);
        let max = self.max_in_flight.swap(0, Ordering::SeqCst);
        (lists, max)
    }
}

fn is_list(line: &str) -> bool {
    line.starts_with("GET ") && line.contains("list-type=2")
}

fn serve(
    mut client: TcpStream,
    upstream: &str,
    state: &Mutex<State>,
    in_flight: &AtomicUsize,
    max_in_flight: &AtomicUsize,
) -> std::io::Result<()> {
    let Some(text) = super::read_head(&mut client)? else {
        return Ok(());
    };
    let line = text.lines().next().unwrap_or_default().to_owned();
    let list = is_list(&line);
    let (delay, fail) = {
        let mut s = state.lock().unwrap();
        if list {
            s.lists.push(line.clone());
        }
        let fault = match &s.fail_list {
            Some((parts, f)) if list && parts.iter().all(|p| line.contains(p.as_str())) => Some(*f),
            _ => None,
        };
        if fault.is_some() {
            s.failed += 1;
        }
        (if list { s.list_delay } else { s.get_delay }, fault)
    };
    let _counted = list.then(|| InFlight::enter(in_flight, max_in_flight));
    thread::sleep(delay);
    if fail == Some(ListFault::Forbidden) {
        return super::write_s3_error(
            &mut client,
            "403 Forbidden",
            "AccessDenied",
            "Access Denied",
        );
    }
    let mut server = super::forward_head(upstream, &text)?;
    if fail == Some(ListFault::DropToken) {
        let mut resp = Vec::new();
        server.read_to_end(&mut resp)?;
        return client.write_all(&without_token(&resp));
    }
    std::io::copy(&mut server, &mut client)?;
    Ok(())
}

/// `resp` (an HTTP response, its body whole or chunked) with `<NextContinuationToken>` cut out of the
/// body, sent with a Content-Length.
fn without_token(resp: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(resp);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let mut body = if chunked {
        let (mut out, mut rest) = (String::new(), body);
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_owned()
    };
    if let (Some(a), Some(b)) = (
        body.find("<NextContinuationToken>"),
        body.find("</NextContinuationToken>"),
    ) {
        body.replace_range(a..b + "</NextContinuationToken>".len(), "");
    }
    let head: Vec<&str> = head
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            !l.starts_with("content-length:") && !l.starts_with("transfer-encoding:")
        })
        .collect();
    format!(
        "{}\r\nContent-Length: {}\r\n\r\n{body}",
        head.join("\r\n"),
        body.len()
    )
    .into_bytes()
}

/// Counts a LIST in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(n: &'a AtomicUsize, max: &AtomicUsize) -> InFlight<'a> {
        let now = n.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(now, Ordering::SeqCst);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
