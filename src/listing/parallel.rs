//! Parallel listing: the bucket's key space cut into prefixes found with `/`-delimited listings
//! (breadth-first), each prefix listed as its own ListObjectsV2 stream, `concurrency` at a time, and the
//! streams joined back into one sequence of pages in S3's byte order.
//!
//! Why prefixes and not `StartAfter` ranges: a `Prefix=` listing returns exactly the keys that start with
//! it on every server, whatever order the server lists in (SeaweedFS lists `data/x` before `data-2024/x`,
//! and its `StartAfter` follows that order, so a byte-order range split can skip keys there). The order
//! between prefixes is ours to choose: a delimited listing's direct keys and common prefixes, sorted as
//! byte strings, are in byte order, because every key under `P/` sorts next to `P/` itself (no direct key
//! starts with `P/`). So the planner still sees `a` before `a/b`, the same on every run.
//!
//! Discovery asks, for each prefix of a level, its first page of keys and its delimited listing at once
//! (one round trip a level): a prefix whose keys fit in that page is done, in one request, so small
//! prefixes are never listed twice; a bigger one is replaced by its sub-prefixes, or, when it has none or
//! too many for a page, listed as one stream that goes on from that first page.
//!
//! Bounds, in bytes whatever the length of keys: every request in flight and every page listed and not
//! yet handed on holds room in one `LOOKAHEAD` budget, lent nearest the consumer first, up to a limit
//! that grows while the consumer waits on the listing and shrinks while it does not (`lookahead`); the
//! stream the consumer is on may hold one page beyond it. Discovery keeps at most half the budget of
//! the pages it listed (a prefix beyond is listed again from its start). At most `concurrency` prefix
//! listings run at once. Any error ends the sequence with an `Err` in its place, so a consumer that saw
//! no `Err` saw every key.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::lookahead::{self, Lease, Lookahead};
use super::{ListError, ObjectInfo, Page, Pages};

/// A page as S3 gives it: objects, and with a delimiter the common prefixes; `next` is the continuation
/// token when there is more.
#[derive(Debug, Default)]
pub struct RawPage {
    pub objects: Vec<ObjectInfo>,
    pub prefixes: Vec<String>,
    pub next: Option<String>,
}

/// One ListObjectsV2 request (S3 in production; an in-memory bucket in the unit tests below).
pub trait Source: Clone + Send + Sync + 'static {
    fn page(
        &self,
        prefix: String,
        delimited: bool,
        token: Option<String>,
    ) -> impl Future<Output = Result<RawPage, ListError>> + Send;
}

/// Stop expanding once the key space is cut into this many prefixes per stream: enough that the streams
/// stay busy when prefixes differ in size, few enough that discovery stays a few round trips.
const UNITS_PER_STREAM: usize = 4;
/// Deepest level of prefixes expanded (each level is one round trip before listing starts).
const MAX_LEVELS: usize = 6;
/// Most prefixes discovery leaves to list: each is a request at least and its name is held until then
/// (a level of ~1,000 tiny sub-prefixes under each of 63 folders would otherwise be 63,000 requests
/// and their names in memory, where listing the folders whole takes 2 pages each).
const MAX_PREFIXES: usize = 1024;
/// Keys per page handed to the consumer (S3's page size).
const PAGE: usize = 1000;
/// Bytes of requests in flight and pages listed ahead of the consumer: about 80 pages of short keys,
/// enough for the ~8 streams nearest the consumer to hold a 10-page prefix each (the bench's scenario
/// M as a model, `model_m`: 43 s with two pages per stream, 12 s with this), 16 pages of 1 KB keys.
const LOOKAHEAD: usize = 16 << 20;

/// What discovery leaves: keys already listed (`Key`: beside prefixes; `Small`: all of a prefix's, in one
/// page), and prefixes still to list (`Open`: not looked into yet, may be expanded; `Flat`: listed as
/// one stream, going on from its first page when discovery kept it, because it has no sub-prefixes or
/// too many for a page).
#[derive(Debug)]
enum Node {
    Key(ObjectInfo),
    Small(String, Vec<ObjectInfo>),
    Open(String),
    Flat(String, Option<Resume>),
}

/// The first page of a prefix's keys, and the continuation token after it.
#[derive(Debug)]
struct Resume {
    first: Vec<ObjectInfo>,
    token: String,
}

impl Node {
    /// What the keys it holds weigh.
    fn weight(&self) -> usize {
        match self {
            Node::Key(o) => lookahead::weight(std::slice::from_ref(o)),
            Node::Small(_, objects) => lookahead::weight(objects),
            Node::Flat(_, Some(r)) => lookahead::weight(&r.first),
            Node::Open(_) | Node::Flat(_, None) => 0,
        }
    }

    /// A prefix still to list.
    fn is_unit(&self) -> bool {
        matches!(self, Node::Open(_) | Node::Flat(..))
    }

    fn sort_key(&self) -> &str {
        match self {
            Node::Key(o) => &o.key,
            Node::Small(p, _) | Node::Open(p) | Node::Flat(p, _) => p,
        }
    }
}

/// Start listing everything under `root`, `concurrency` streams at a time; at most `depth` pages wait
/// for the consumer beyond what the budget holds.
pub fn start<S: Source>(source: S, root: String, concurrency: usize, depth: usize) -> Pages {
    start_within(source, root, concurrency, LOOKAHEAD, depth)
}

fn start_within<S: Source>(
    source: S,
    root: String,
    concurrency: usize,
    lookahead: usize,
    depth: usize,
) -> Pages {
    let (tx, rx) = mpsc::channel(depth);
    let lookahead = Lookahead::new(lookahead);
    tokio::spawn(run(source, root, concurrency, lookahead.clone(), tx));
    Pages::new(rx, Some(lookahead))
}

async fn run<S: Source>(
    source: S,
    root: String,
    concurrency: usize,
    lookahead: Arc<Lookahead>,
    tx: mpsc::Sender<Page>,
) {
    let concurrency = concurrency.max(1);
    let mut out = Out::new(tx);
    let nodes = match discover(&source, root, concurrency, &lookahead, &mut out).await {
        Ok(Some(nodes)) => nodes,
        Ok(None) => return,
        Err(e) => {
            out.fail(e).await;
            return;
        }
    };
    if let Err(e) = join(&source, nodes, concurrency, &lookahead, &mut out).await {
        out.fail(e).await;
        return;
    }
    out.finish().await;
}

/// Breadth-first: expand every open prefix of a level (in parallel), until there are enough prefixes to
/// list, or none left to expand. `Ok(None)`: the consumer is gone.
async fn discover<S: Source>(
    source: &S,
    root: String,
    concurrency: usize,
    lookahead: &Arc<Lookahead>,
    out: &mut Out,
) -> Result<Option<Vec<Node>>, ListError> {
    let target = concurrency * UNITS_PER_STREAM;
    let mut nodes = vec![Node::Open(root)];
    for level in 0..MAX_LEVELS {
        let open: Vec<String> = nodes
            .iter()
            .filter_map(|n| match n {
                Node::Open(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        let units = nodes.iter().filter(|n| n.is_unit()).count();
        if open.is_empty() || (level > 0 && units >= target) {
            break;
        }
        let mut expanded = std::pin::pin!(
            futures::stream::iter(open)
                .enumerate()
                .map(|(rank, p)| expand(source, p, lookahead, rank as u64))
                // Two requests each: `concurrency` in flight.
                .buffered((concurrency / 2).max(1))
        );
        let mut kept = Kept {
            bytes: nodes.iter().map(Node::weight).sum(),
            units,
            hold: lookahead.total() / 2,
        };
        let mut next = Vec::with_capacity(nodes.len());
        for n in nodes {
            match n {
                Node::Open(p) => {
                    let with = expanded.next().await.expect("one result per open prefix")?;
                    kept.place(p, with, &mut next);
                }
                n => next.push(n),
            }
        }
        nodes = next;
        // The first request answered: from here on an error breaks a listing that has started (as a
        // failed second page does in a sequential one), rather than meaning the bucket cannot be listed.
        if level == 0 && !out.send(Vec::new()).await {
            return Ok(None);
        }
    }
    Ok(Some(nodes))
}

/// What takes `prefix`'s place, in byte order: its keys when they fit in one page; else its direct keys
/// and sub-prefixes when they fit in one page and there are sub-prefixes; else one stream.
async fn expand<S: Source>(
    source: &S,
    prefix: String,
    lookahead: &Arc<Lookahead>,
    rank: u64,
) -> Result<Vec<Node>, ListError> {
    // Room for two answers in flight (what discovery keeps of them is bounded apart).
    let _room = lookahead.lease(rank, lookahead.heaviest()).await;
    // Both at once: one round trip whichever answer decides.
    let (flat, delimited) = futures::try_join!(
        source.page(prefix.clone(), false, None),
        source.page(prefix.clone(), true, None)
    )?;
    lookahead.saw(&flat.objects);
    let mut nodes: Vec<Node> = match flat.next {
        None => return Ok(vec![Node::Small(prefix, flat.objects)]),
        Some(token) if delimited.next.is_some() || delimited.prefixes.is_empty() => {
            return Ok(vec![Node::Flat(
                prefix,
                Some(Resume {
                    first: flat.objects,
                    token,
                }),
            )]);
        }
        Some(_) => delimited
            .objects
            .into_iter()
            .map(Node::Key)
            .chain(delimited.prefixes.into_iter().map(Node::Open))
            .collect(),
    };
    // Byte order (`str` compares bytes), whatever order the server used.
    nodes.sort_by(|a, b| a.sort_key().cmp(b.sort_key()));
    Ok(nodes)
}

/// What discovery keeps, as a level's prefixes are replaced: bytes of keys (at most `hold`: beyond, a
/// prefix is listed again from its start, one request more, rather than held), and prefixes still to
/// list (at most `MAX_PREFIXES`: beyond, a prefix is listed whole rather than replaced by its
/// sub-prefixes).
struct Kept {
    bytes: usize,
    units: usize,
    hold: usize,
}

impl Kept {
    /// Put `prefix`, replaced by `with`, into `next`, or `prefix` as one stream from its start if `with`
    /// would hold too much.
    fn place(&mut self, prefix: String, with: Vec<Node>, next: &mut Vec<Node>) {
        let bytes: usize = with.iter().map(Node::weight).sum();
        let units = with.iter().filter(|n| n.is_unit()).count();
        // `prefix` was a unit itself.
        if self.bytes + bytes > self.hold || self.units - 1 + units > MAX_PREFIXES {
            next.push(Node::Flat(prefix, None));
            return;
        }
        self.bytes += bytes;
        self.units = self.units - 1 + units;
        next.extend(with);
    }
}

/// List the prefixes `nodes` names, up to `concurrency` ahead of the one being handed on, and hand
/// everything on in `nodes`' order.
async fn join<S: Source>(
    source: &S,
    nodes: Vec<Node>,
    concurrency: usize,
    lookahead: &Arc<Lookahead>,
    out: &mut Out,
) -> Result<(), ListError> {
    enum Ahead {
        Keys(Vec<ObjectInfo>),
        Listing(
            String,
            u64,
            mpsc::UnboundedReceiver<Held>,
            tokio::task::JoinHandle<()>,
        ),
    }
    lookahead.follow_the_consumer();
    let mut nodes = nodes.into_iter();
    let mut ahead: VecDeque<Ahead> = VecDeque::new();
    let mut listings = 0;
    // Streams started so far: a stream's rank is its place in the order pages are handed on.
    let mut started: u64 = 0;
    loop {
        while listings < concurrency {
            match nodes.next() {
                Some(Node::Key(o)) => ahead.push_back(Ahead::Keys(vec![o])),
                Some(Node::Small(_, objects)) => ahead.push_back(Ahead::Keys(objects)),
                Some(n @ (Node::Open(_) | Node::Flat(..))) => {
                    let (p, resume) = match n {
                        Node::Flat(p, r) => (p, r),
                        Node::Open(p) => (p, None),
                        Node::Key(_) | Node::Small(..) => unreachable!(),
                    };
                    // Unbounded: what a stream may hold is bounded by its room (`Room`), not here.
                    let (tx, rx) = mpsc::unbounded_channel();
                    let room = Room::Lent(lookahead.clone(), started, AtomicUsize::new(0));
                    let stream =
                        tokio::spawn(list_prefix(source.clone(), p.clone(), resume, room, tx));
                    ahead.push_back(Ahead::Listing(p, started, rx, stream));
                    started += 1;
                    listings += 1;
                }
                None => break,
            }
        }
        let Some(front) = ahead.pop_front() else {
            return Ok(());
        };
        match front {
            Ahead::Keys(objects) => {
                if !out.push(objects).await {
                    return Ok(());
                }
            }
            Ahead::Listing(prefix, rank, mut rx, stream) => {
                lookahead.advance(rank);
                while let Some(Held { page, room: _room }) = rx.recv().await {
                    if !out.push(page?).await {
                        return Ok(());
                    }
                }
                // No keys at all is an empty prefix, as one sequential listing would find it: its keys
                // were deleted meanwhile, or the server keeps an emptied folder as a prefix (SeaweedFS
                // does). A stream that died without saying so is not an end.
                if stream.await.is_err() {
                    return Err(ListError::Other {
                        detail: format!(
                            "{}: the stream stopped without an answer; objects under it were not seen",
                            listing_of(&prefix)
                        ),
                    });
                }
                listings -= 1;
            }
        }
    }
}

/// One stream over everything under `root` (`--list-concurrency 1`), with the same checks as each
/// stream of a parallel listing.
pub async fn sequential<S: Source>(source: S, root: String, tx: mpsc::Sender<Page>) {
    let (held_tx, mut held_rx) = mpsc::unbounded_channel();
    let room = Room::Own(Arc::new(Semaphore::new(1)));
    tokio::spawn(list_prefix(source, root, None, room, held_tx));
    while let Some(Held { page, room: _room }) = held_rx.recv().await {
        if tx.send(page).await.is_err() {
            return;
        }
    }
}

/// A listed page, and the room it takes until the consumer has it.
struct Held {
    page: Page,
    room: Hold,
}

/// Room for a page: the stream's own, or bytes lent from the shared lookahead.
enum Hold {
    Own(#[allow(dead_code)] OwnedSemaphorePermit),
    Lent(#[allow(dead_code)] Lease),
}

/// Where a stream may put the pages it lists ahead of the consumer: its own room for one page (the
/// sequential listing, whose one stream is always the one the consumer is on), or the shared lookahead
/// at its rank.
enum Room {
    Own(Arc<Semaphore>),
    /// The budget, the stream's rank, and what its last page weighed (0: none yet).
    Lent(Arc<Lookahead>, u64, AtomicUsize),
}

impl Room {
    /// Room set aside before a request: lent bytes (a stream of a parallel listing asks for nothing it
    /// has no room for).
    async fn before(&self) -> Option<Lease> {
        match self {
            Room::Own(_) => None,
            Room::Lent(l, rank, last) => {
                let expect = match last.load(Ordering::Relaxed) {
                    0 => l.heaviest(),
                    w => w,
                };
                Some(l.lease(*rank, expect).await)
            }
        }
    }

    /// Room for `page` once it is listed: the lent bytes settled to what it weighs, or the stream's
    /// own room as soon as it is free.
    async fn after(&self, before: Option<Lease>, page: &Page) -> Hold {
        let objects = page.as_deref().unwrap_or_default();
        match (self, before) {
            (Room::Own(own), _) => {
                Hold::Own(own.clone().acquire_owned().await.expect("never closed"))
            }
            (Room::Lent(l, rank, last), before) => {
                let mut lease = match before {
                    Some(lease) => lease,
                    None => l.lease(*rank, lookahead::weight(objects)).await,
                };
                last.store(lease.settle(objects), Ordering::Relaxed);
                Hold::Lent(lease)
            }
        }
    }
}

/// Every key under `prefix` (after `resume`'s first page, when given), page by page, into `tx`, each
/// page once there is room for it; an error ends it. Ends early when nobody listens.
async fn list_prefix<S: Source>(
    source: S,
    prefix: String,
    resume: Option<Resume>,
    room: Room,
    tx: mpsc::UnboundedSender<Held>,
) {
    let send = async |before: Option<Lease>, page: Page| {
        let room = room.after(before, &page).await;
        tx.send(Held { page, room }).is_ok()
    };
    let mut token = None;
    if let Some(r) = resume {
        if !send(None, Ok(r.first)).await {
            return;
        }
        token = Some(r.token);
    }
    loop {
        let before = room.before().await;
        let page = source.page(prefix.clone(), false, token.clone()).await;
        let (objects, next) = match page {
            Ok(p) => (Ok(p.objects), p.next),
            Err(e) => (Err(e), None),
        };
        let stop = objects.is_err();
        if !send(before, objects).await || stop {
            return;
        }
        match next {
            Some(t) if Some(&t) != token.as_ref() => token = Some(t),
            Some(_) => {
                send(
                    None,
                    Err(ListError::Other {
                        detail: format!(
                            "{}: the server sent the same continuation token twice",
                            listing_of(&prefix)
                        ),
                    }),
                )
                .await;
                return;
            }
            None => return,
        }
    }
}

/// How an error names a stream: the whole bucket (`--list-concurrency 1` without `--prefix`) or a prefix.
fn listing_of(prefix: &str) -> String {
    if prefix.is_empty() {
        "listing the bucket".to_owned()
    } else {
        format!("listing prefix {}", crate::errtext::key(prefix))
    }
}

/// The consumer's side: regroups keys into pages of up to `PAGE` (discovery finds keys a few at a
/// time; the planner works a page at a time).
struct Out {
    tx: mpsc::Sender<Page>,
    buf: Vec<ObjectInfo>,
    sent: bool,
}

impl Out {
    fn new(tx: mpsc::Sender<Page>) -> Out {
        Out {
            tx,
            buf: Vec::new(),
            sent: false,
        }
    }

    /// Queue `objects`; false when the consumer is gone.
    async fn push(&mut self, objects: Vec<ObjectInfo>) -> bool {
        if self.buf.is_empty() && objects.len() >= PAGE {
            return self.send(objects).await;
        }
        self.buf.extend(objects);
        while self.buf.len() >= PAGE {
            let rest = self.buf.split_off(PAGE);
            let page = std::mem::replace(&mut self.buf, rest);
            if !self.send(page).await {
                return false;
            }
        }
        true
    }

    async fn send(&mut self, objects: Vec<ObjectInfo>) -> bool {
        self.sent = true;
        self.tx.send(Ok(objects)).await.is_ok()
    }

    async fn finish(mut self) {
        if !self.buf.is_empty() || !self.sent {
            let page = std::mem::take(&mut self.buf);
            self.send(page).await;
        }
    }

    /// Hand on what was listed before the error, then the error.
    async fn fail(mut self, e: ListError) {
        if !self.buf.is_empty() {
            let page = std::mem::take(&mut self.buf);
            if !self.send(page).await {
                return;
            }
        }
        let _ = self.tx.send(Err(e)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// An in-memory bucket that answers like S3: byte order, `page_size` entries a page, common
    /// prefixes rolled up at the first `/` after the prefix, and the last entry as continuation token.
    #[derive(Clone)]
    struct Mem {
        keys: Arc<BTreeSet<String>>,
        /// Entries a page of a listing without / with a delimiter.
        page_size: usize,
        delimited_page_size: usize,
        requests: Arc<AtomicUsize>,
        in_flight: Arc<AtomicUsize>,
        max_in_flight: Arc<AtomicUsize>,
        /// Fail the request for this prefix whose continuation token is set (a listing half-way).
        fail_after_first_page_of: Option<String>,
        /// Answer a page asked with a token with that same token as the next one (a server loop).
        repeat_token: bool,
        /// Time each request takes (S3's latency; the tests that set it run on paused time).
        delay: std::time::Duration,
        log: Arc<Mutex<Vec<(String, bool)>>>,
    }

    impl Mem {
        fn new(keys: impl IntoIterator<Item = String>, page_size: usize) -> Mem {
            Mem {
                keys: Arc::new(keys.into_iter().collect()),
                page_size,
                delimited_page_size: page_size,
                requests: Arc::default(),
                in_flight: Arc::default(),
                max_in_flight: Arc::default(),
                fail_after_first_page_of: None,
                repeat_token: false,
                delay: std::time::Duration::ZERO,
                log: Arc::default(),
            }
        }
    }

    fn obj(key: &str) -> ObjectInfo {
        ObjectInfo {
            key: key.to_owned(),
            size: 1,
            // As S3's: quoted MD5 (it weighs in the lookahead).
            etag: Some(format!("\"{:032x}\"", key.len())),
            last_modified: None,
            checksum_type: None,
            version_id: None,
        }
    }

    impl Source for Mem {
        async fn page(
            &self,
            prefix: String,
            delimited: bool,
            token: Option<String>,
        ) -> Result<RawPage, ListError> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            self.log.lock().unwrap().push((prefix.clone(), delimited));
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            // Let other streams run, so that concurrency is real.
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if token.is_some() && self.fail_after_first_page_of.as_deref() == Some(&prefix) {
                return Err(ListError::Other {
                    detail: format!("injected failure under {prefix}"),
                });
            }
            let mut page = RawPage::default();
            let mut entries = 0;
            let page_size = if delimited {
                self.delimited_page_size
            } else {
                self.page_size
            };
            let start = token.clone().unwrap_or_else(|| prefix.clone());
            for k in self.keys.range::<String, _>(&start..) {
                if token.is_some() && *k <= start {
                    continue;
                }
                if !k.starts_with(&prefix) {
                    if k.as_str() > prefix.as_str() {
                        break;
                    }
                    continue;
                }
                let rest = &k[prefix.len()..];
                let common = match rest.find('/') {
                    Some(i) if delimited => {
                        let cp = format!("{prefix}{}", &rest[..=i]);
                        if page.prefixes.last() == Some(&cp) {
                            continue;
                        }
                        Some(cp)
                    }
                    _ => None,
                };
                if entries == page_size {
                    page.next = Some(match (page.prefixes.last(), page.objects.last()) {
                        (Some(p), Some(o)) => p.clone().max(o.key.clone()),
                        (Some(p), None) => p.clone(),
                        (None, Some(o)) => o.key.clone(),
                        (None, None) => unreachable!(),
                    });
                    break;
                }
                entries += 1;
                match common {
                    Some(cp) => page.prefixes.push(cp),
                    None => page.objects.push(obj(k)),
                }
            }
            // A common prefix as token means "after everything under it" (as S3 does).
            if let Some(t) = &page.next
                && t.ends_with('/')
                && page.prefixes.last() == Some(t)
            {
                page.next = Some(format!("{t}\u{10FFFF}"));
            }
            if self.repeat_token && token.is_some() && page.next.is_some() {
                page.next = token;
            }
            Ok(page)
        }
    }

    async fn collect(mem: Mem, root: &str, concurrency: usize) -> (Vec<String>, Option<String>) {
        let mut rx = start(mem, root.to_owned(), concurrency, 2);
        let mut keys = Vec::new();
        let mut error = None;
        while let Some(p) = rx.recv().await {
            match p {
                Ok(objs) => {
                    assert!(objs.len() <= PAGE);
                    keys.extend(objs.into_iter().map(|o| o.key));
                }
                Err(e) => {
                    error = Some(e.to_string());
                    assert!(rx.recv().await.is_none(), "nothing after the error");
                }
            }
        }
        (keys, error)
    }

    /// Nested and flat, with names where byte order and a "`/` first" order disagree (`data-2024/x`
    /// before `data/x`), a file beside a prefix of the same name, markers, empty segments.
    fn mixed() -> Vec<String> {
        let mut keys = vec![
            "a".to_owned(),
            "a/b".into(),
            "a-b".into(),
            "a/".into(),
            "a//c".into(),
            "/abs".into(),
            "data/x".into(),
            "data-2024/x".into(),
            "data0".into(),
            "z".into(),
            "\u{1}ctl".into(),
            "日本/語".into(),
        ];
        for y in 0..7 {
            for m in 0..5 {
                for i in 0..(y * 3 + m) {
                    keys.push(format!("photos/{y}/{m:02}/img_{i:04}.jpg"));
                }
            }
        }
        for i in 0..57 {
            keys.push(format!("flat_{i:03}"));
        }
        for i in 0..40 {
            keys.push(format!("wide/{i:02}/f"));
        }
        keys
    }

    fn sorted(keys: &[String]) -> Vec<String> {
        let mut s = keys.to_vec();
        s.sort();
        s.dedup();
        s
    }

    #[tokio::test]
    async fn parallel_listing_is_the_sequential_listing_in_byte_order() {
        let keys = mixed();
        for (page_size, delimited_page_size) in [(1, 1), (3, 3), (3, 1000), (7, 50), (1000, 1000)] {
            for concurrency in [2, 3, 8, 32] {
                let mut mem = Mem::new(keys.clone(), page_size);
                mem.delimited_page_size = delimited_page_size;
                let (got, err) = collect(mem.clone(), "", concurrency).await;
                assert_eq!(err, None);
                assert_eq!(
                    got,
                    sorted(&keys),
                    "page {page_size}, streams {concurrency}"
                );
                assert!(mem.max_in_flight.load(Ordering::SeqCst) <= concurrency);
            }
        }
    }

    #[tokio::test]
    async fn a_prefix_root_lists_only_under_it() {
        let keys = mixed();
        let mem = Mem::new(keys.clone(), 4);
        let (got, err) = collect(mem, "photos/", 4).await;
        assert_eq!(err, None);
        let want: Vec<String> = sorted(&keys)
            .into_iter()
            .filter(|k| k.starts_with("photos/"))
            .collect();
        assert_eq!(got, want);
        // A root that is not a folder: `a` matches `a`, `a/...`, `a-b`.
        let (got, _) = collect(Mem::new(keys.clone(), 2), "a", 3).await;
        let want: Vec<String> = sorted(&keys)
            .into_iter()
            .filter(|k| k.starts_with('a'))
            .collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn streams_run_at_once_and_requests_stay_near_the_page_count() {
        let keys: Vec<String> = (0..64)
            .flat_map(|d| (0..50).map(move |i| format!("d{d:02}/k{i:03}")))
            .collect();
        let mem = Mem::new(keys.clone(), 100);
        let (got, _) = collect(mem.clone(), "", 8).await;
        assert_eq!(got, sorted(&keys));
        assert_eq!(mem.max_in_flight.load(Ordering::SeqCst), 8);
        // One page of keys per prefix, plus a first page and a delimited request for the root: 64
        // prefixes are enough units for 8 streams, so none of them is expanded.
        assert_eq!(mem.requests.load(Ordering::SeqCst), 64 + 2);
    }

    #[tokio::test]
    async fn a_bucket_that_fits_in_a_page_takes_one_round_trip() {
        let keys: Vec<String> = (0..10)
            .flat_map(|d| (0..5).map(move |i| format!("d{d}/k{i}")))
            .collect();
        let mem = Mem::new(keys.clone(), 100);
        let (got, _) = collect(mem.clone(), "", 8).await;
        assert_eq!(got, sorted(&keys));
        // Its first page and its delimited listing, at once; nothing listed twice.
        assert_eq!(mem.requests.load(Ordering::SeqCst), 2);
        assert_eq!(mem.max_in_flight.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_level_wider_than_a_page_is_one_stream() {
        // 64 prefixes at 10 entries a page: the root's delimited listing does not fit in a page, so
        // the root is listed as one stream going on from its first page (one request more), in order.
        let keys: Vec<String> = (0..64)
            .flat_map(|d| (0..5).map(move |i| format!("d{d:02}/k{i:03}")))
            .collect();
        let mem = Mem::new(keys.clone(), 10);
        let (got, _) = collect(mem.clone(), "", 8).await;
        assert_eq!(got, sorted(&keys));
        assert_eq!(mem.requests.load(Ordering::SeqCst), 1 + 32);
    }

    #[tokio::test]
    async fn pages_handed_on_hold_at_most_a_page() {
        // `a0` comes from discovery, then a full page of `b/`: regrouped as 1,000 + 1,000 + 501.
        let keys: Vec<String> = std::iter::once("a0".to_owned())
            .chain((0..2500).map(|i| format!("b/{i:04}")))
            .collect();
        let mut rx = start(Mem::new(keys.clone(), 1000), String::new(), 4, 2);
        let mut sizes = Vec::new();
        while let Some(p) = rx.recv().await {
            sizes.push(p.unwrap().len());
        }
        assert_eq!(sizes, [0, 1000, 1000, 501]);
    }

    #[tokio::test]
    async fn an_empty_bucket_gives_one_empty_page() {
        let mut rx = start(Mem::new(Vec::<String>::new(), 5), String::new(), 4, 2);
        assert_eq!(rx.recv().await.unwrap().unwrap(), vec![]);
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_stream_failing_half_way_ends_the_listing_with_its_error_in_place() {
        let keys = mixed();
        let mut mem = Mem::new(keys.clone(), 3);
        mem.delimited_page_size = 1000;
        mem.fail_after_first_page_of = Some("photos/3/02/".into());
        let (got, err) = collect(mem.clone(), "photos/", 4).await;
        assert!(
            mem.log
                .lock()
                .unwrap()
                .contains(&("photos/3/02/".to_owned(), false)),
            "photos/3/02/ was listed as a prefix of its own"
        );
        let err = err.expect("an error");
        assert!(err.contains("injected failure under photos/3/02/"), "{err}");
        // Everything before the broken prefix, then its first page, and nothing after it.
        let all: Vec<String> = sorted(&keys)
            .into_iter()
            .filter(|k| k.starts_with("photos/"))
            .collect();
        let before: Vec<&String> = all
            .iter()
            .take_while(|k| k.as_str() < "photos/3/02/")
            .collect();
        assert_eq!(got.len(), before.len() + 3);
        assert!(got.iter().zip(&all).all(|(a, b)| a == b));
    }

    #[tokio::test]
    async fn one_stream_breaks_off_on_a_token_sent_twice() {
        // The SDK's paginator ends quietly here; the listing would then look complete.
        let keys: Vec<String> = (0..20).map(|i| format!("k{i:02}")).collect();
        let mut mem = Mem::new(keys.clone(), 5);
        mem.repeat_token = true;
        let (tx, mut rx) = mpsc::channel(2);
        tokio::spawn(sequential(mem, String::new(), tx));
        let mut got = Vec::new();
        let mut error = None;
        while let Some(p) = rx.recv().await {
            match p {
                Ok(objs) => got.extend(objs.into_iter().map(|o| o.key)),
                Err(e) => error = Some(e.to_string()),
            }
        }
        assert_eq!(got, keys[..10]);
        assert_eq!(
            error.as_deref(),
            Some("listing the bucket: the server sent the same continuation token twice")
        );
    }

    /// 8 folders of 9 pages each, 100 ms a request.
    fn folders_of_nine_pages(page_size: usize) -> Mem {
        let keys: Vec<String> = (0..8)
            .flat_map(|d| (0..9 * page_size).map(move |i| format!("d{d}/k{i:05}")))
            .collect();
        let mut mem = Mem::new(keys, page_size);
        mem.delay = std::time::Duration::from_millis(100);
        mem
    }

    /// How long a listing takes, with the lookahead given, for a consumer that waits on it.
    async fn time_to_list(mem: Mem, lookahead: usize) -> std::time::Duration {
        let start = tokio::time::Instant::now();
        let mut rx = start_within(mem.clone(), String::new(), 8, lookahead, 2);
        let mut keys = 0;
        while let Some(p) = rx.recv().await {
            keys += p.unwrap().len();
        }
        assert_eq!(keys, mem.keys.len());
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn folders_of_many_pages_are_listed_before_the_consumer_reaches_them() {
        // Discovery takes three round trips; then each folder's 8 further pages, one after another.
        // Streams limited to their own room list a folder only as fast as the consumer takes it
        // (about two pages ahead of it): 5 s here. With the lookahead they list at once: 1.1 s.
        let with = time_to_list(folders_of_nine_pages(10), LOOKAHEAD).await;
        let without = time_to_list(folders_of_nine_pages(10), 0).await;
        assert!(with < std::time::Duration::from_millis(1_300), "{with:?}");
        assert!(without > std::time::Duration::from_secs(4), "{without:?}");
    }

    /// The most pages listed and not yet taken by a consumer that takes a page a second, with
    /// `concurrency` streams over 130 folders of 2 pages of 1000 keys of 100 bytes, and a `lookahead`
    /// budget.
    async fn most_ahead_of_a_slow_consumer(concurrency: usize, lookahead: usize) -> usize {
        let keys: Vec<String> = (0..130)
            .flat_map(|d| (0..2000).map(move |i| format!("d{d:03}/{i:0>95}")))
            .collect();
        let mut mem = Mem::new(keys, 1000);
        mem.delay = std::time::Duration::from_millis(100);
        let mut rx = start_within(mem.clone(), String::new(), concurrency, lookahead, 2);
        let (mut taken, mut most_ahead) = (0, 0);
        while let Some(p) = rx.recv().await {
            let listed = mem
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, delimited)| !delimited)
                .count();
            taken += p.unwrap().len().div_ceil(1000);
            most_ahead = most_ahead.max(listed - taken);
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        assert_eq!(taken, 260);
        most_ahead
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_listed_ahead_of_a_slow_consumer_stays_within_the_budget() {
        // A full run: the consumer takes a page a second (it fetches objects). A page of these keys
        // weighs ~280 KB, so 2 MiB holds 7; beyond them: the page of the stream the consumer is on,
        // the two in the consumer's queue, and discovery's first page of the bucket, listed again by
        // the first folder's stream. However many streams (pages held per stream: 64 at 32 streams).
        for concurrency in [4, 8, 32] {
            let ahead = most_ahead_of_a_slow_consumer(concurrency, 2 << 20).await;
            assert!(ahead <= 7 + 4, "{concurrency} streams: {ahead} pages ahead");
        }
        // The default budget: the limit follows the consumer, who never waits after its first
        // pages, so it stays near its floor (2 MiB) rather than the whole (16 MiB: 57 of these pages).
        let default = most_ahead_of_a_slow_consumer(16, LOOKAHEAD).await;
        assert!(
            default <= 14 + 4,
            "the default budget: {default} pages ahead"
        );
        // A budget whose floor holds everything (1 GiB, 128 MiB): 32 streams list their folders (2
        // pages each) whole.
        let open = most_ahead_of_a_slow_consumer(32, 1 << 30).await;
        assert!(
            open >= 60,
            "a budget that holds everything: {open} pages ahead"
        );
    }

    #[tokio::test]
    async fn many_tiny_sub_prefixes_are_listed_whole_not_one_request_each() {
        // 63 folders of 999 sub-prefixes of 2 keys: expanding them all would leave 62,937 prefixes
        // to list, one request and one name held each.
        let keys: Vec<String> = (0..63)
            .flat_map(|d| {
                (0..999).flat_map(move |s| (0..2).map(move |k| format!("d{d:02}/s{s:03}/k{k}")))
            })
            .collect();
        let mem = Mem::new(keys.clone(), 1000);
        let (listed, error) = collect(mem.clone(), "", 16).await;
        assert_eq!(error, None);
        assert_eq!(listed, sorted(&keys));
        let requests = mem.requests.load(Ordering::SeqCst);
        assert!(requests < 400, "{requests} requests");
    }

    #[tokio::test(start_paused = true)]
    async fn a_folder_of_long_keys_does_not_hold_back_the_streams_after_it() {
        // One page of ~1 KB keys first, then folders of short keys: what a request sets aside is what
        // its own stream's last page weighed, so the short ones run 10 at once in a 1 MiB budget (the
        // limit follows this consumer up from its floor); twice the long page would fit 4.
        let mut keys: Vec<String> = (0..100).map(|i| format!("a/{i:0>1000}")).collect();
        keys.extend((0..32).flat_map(|d| (0..300).map(move |i| format!("b{d:02}/{i:03}"))));
        let mut mem = Mem::new(keys.clone(), 100);
        mem.delay = std::time::Duration::from_millis(100);
        let mut rx = start_within(mem.clone(), String::new(), 16, 1 << 20, 2);
        let mut n = 0;
        while let Some(p) = rx.recv().await {
            n += p.unwrap().len();
        }
        assert_eq!(n, keys.len());
        let most = mem.max_in_flight.load(Ordering::SeqCst);
        assert!(most >= 8, "{most} requests at once");
    }

    /// Exploration: the bench's scenario M as a model (100 folders of 10 pages, 100 ms a LIST, a
    /// consumer that takes 10 ms a page); prints virtual time.
    #[tokio::test(start_paused = true)]
    #[ignore]
    async fn model_m() {
        let keys: Vec<String> = (0..100)
            .flat_map(|d| {
                (0..10_000)
                    .map(move |i| format!("photos/{}/{:02}/img-{i:07}.jpg", 2000 + d / 12, d % 12))
            })
            .collect();
        let mut mem = Mem::new(keys, 1000);
        mem.delimited_page_size = 1000;
        mem.delay = std::time::Duration::from_millis(100);
        let cases = [
            (0u64, 16),
            (10, 16),
            (30, 16),
            (200, 16),
            (10, 8),
            (10, 4),
            (10, 32),
        ];
        for (per_page, mib) in cases {
            let start = tokio::time::Instant::now();
            let mut rx = start_within(mem.clone(), String::new(), 16, mib << 20, 4);
            let mut n = 0;
            while let Some(p) = rx.recv().await {
                n += p.unwrap().len();
                tokio::time::sleep(std::time::Duration::from_millis(per_page)).await;
            }
            assert_eq!(n, 1_000_000);
            let most = rx.lookahead.as_ref().map_or(0, |l| l.most_lent());
            eprintln!(
                "consumer {per_page} ms/page, {mib} MiB: {:?}, at most {} KiB lent",
                start.elapsed(),
                most >> 10
            );
        }
    }
}
