//! The memory listing streams may fill ahead of the consumer: one byte budget for every page listed and
//! not yet handed on, and for every request in flight, lent to the stream nearest the consumer first.
//!
//! Why one budget in bytes: pages are handed on in byte order, one prefix after another, so a stream
//! far from the consumer can only hold what it lists. Held per stream and counted in pages, that memory
//! grows with the number of streams and the length of keys (16 streams of ~1 KB keys: 100 MiB); counted
//! in bytes across all streams it stays near the budget whatever the keys. Why lent nearest-first: the
//! streams the consumer reaches next are the ones worth listing ahead, a prefix of many pages lists at
//! one page per round trip once the consumer waits on it (10⁶ keys in 100 folders of 10 pages: 43 s of
//! round trips instead of ~10 s). Bytes are set aside before a request (twice what the stream's last
//! page weighed, or the heaviest page so far for its first: the response and its parse) and settled to
//! the page's weight when it arrives.
//! The stream the consumer is on may always have one page beyond the budget, so the listing never
//! waits on memory held further away.
//!
//! Why lent up to a limit that follows the consumer: listing ahead pays only while the consumer waits
//! on the listing. When the downloads are the slow side (a first copy, a day of many changes), a full
//! budget is memory spent on pages that wait anyway (a full run of 10⁶ objects: 16 MiB of its 78 MiB).
//! So the limit starts at an eighth of the budget once discovery is over (discovery, which the
//! consumer always waits on, has the whole), doubles each time the consumer finds no page ready, and
//! shrinks by a 1024th for each page it finds ready: while the listing is the slow side it stays near
//! the whole budget (the scenario-M model: 11.7 s, as with a fixed budget; a 256th cost 6%), and when
//! the downloads are, it stays near the floor (the model's consumer of 5 pages a second: 4 MiB lent
//! at most, against 16).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::ObjectInfo;

/// What a page is guessed to weigh before any has been seen: 1000 short keys.
const FIRST_GUESS: usize = 256 << 10;
/// The least the limit falls to, as a share of the budget (2 MiB of 16: ~10 pages of short keys).
const FLOOR_SHARE: usize = 8;
/// Each page found ready takes this share of the limit off it (halved after ~700 pages).
const SHRINK_SHARE: usize = 1024;

/// A byte budget, lent in order of rank (lowest first: the stream the consumer reaches soonest).
pub struct Lookahead {
    total: usize,
    /// The heaviest page seen so far: what the next request is expected to bring.
    heaviest: AtomicUsize,
    inner: Mutex<Inner>,
}

struct Inner {
    lent: usize,
    total: usize,
    /// What may be lent now (see the module's doc): `total` until discovery is over.
    limit: usize,
    #[cfg(test)]
    most_lent: usize,
    /// The rank the consumer takes pages from now, and how many leases that rank holds.
    front: u64,
    held: BTreeMap<u64, usize>,
    /// One entry per stream waiting, by rank; `granted` once its bytes are set aside for it.
    waiting: BTreeMap<u64, Waiter>,
}

struct Waiter {
    need: usize,
    granted: bool,
    wake: Arc<Notify>,
}

/// Bytes lent for one page (a request, then its answer); given back when dropped (the consumer has
/// taken the page).
pub struct Lease {
    budget: Arc<Lookahead>,
    rank: u64,
    bytes: usize,
}

impl Lookahead {
    pub fn new(total: usize) -> Arc<Lookahead> {
        Arc::new(Lookahead {
            total,
            heaviest: AtomicUsize::new(FIRST_GUESS),
            inner: Mutex::new(Inner {
                lent: 0,
                total,
                limit: total,
                #[cfg(test)]
                most_lent: 0,
                front: 0,
                held: BTreeMap::new(),
                waiting: BTreeMap::new(),
            }),
        })
    }

    /// The consumer now takes pages from the stream of `rank` (ranks only grow).
    pub fn advance(&self, rank: u64) {
        let mut inner = self.lock();
        inner.front = inner.front.max(rank);
        inner.grant();
    }

    /// Discovery is over: the limit drops to its floor, and from now on follows the consumer
    /// (`starved`, `fed`).
    pub fn follow_the_consumer(&self) {
        let mut inner = self.lock();
        inner.limit = inner.floor();
    }

    /// The consumer found no page ready on the stream it is on: lend up to twice as much.
    pub fn starved(&self) {
        let mut inner = self.lock();
        inner.limit = inner.limit.saturating_mul(2).min(inner.total);
        inner.grant();
    }

    /// The consumer found a page ready: lend a little less (down to the floor).
    pub fn fed(&self) {
        let mut inner = self.lock();
        inner.limit = (inner.limit - inner.limit / SHRINK_SHARE).max(inner.floor());
    }

    /// A page has been seen (by discovery, or listed): the next request is expected to bring as much.
    pub fn saw(&self, objects: &[ObjectInfo]) {
        self.heaviest.fetch_max(weight(objects), Ordering::Relaxed);
    }

    /// The heaviest page seen so far: what a request of a stream that has listed nothing yet is
    /// expected to bring.
    pub fn heaviest(&self) -> usize {
        self.heaviest.load(Ordering::Relaxed)
    }

    /// Wait until room for requests expected to bring `expect` bytes is lent to the stream of `rank`:
    /// twice that (the response, and the page parsed from it), at most the whole budget so that any
    /// page can pass. One wait per rank at a time. Cancel-safe: dropped before it returns, nothing
    /// stays taken.
    pub async fn lease(self: &Arc<Self>, rank: u64, expect: usize) -> Lease {
        let need = expect.saturating_mul(2).clamp(1, self.total.max(1));
        self.lease_bytes(rank, need).await
    }

    async fn lease_bytes(self: &Arc<Self>, rank: u64, need: usize) -> Lease {
        let wake = Arc::new(Notify::new());
        {
            let mut inner = self.lock();
            let previous = inner.waiting.insert(
                rank,
                Waiter {
                    need,
                    granted: false,
                    wake: wake.clone(),
                },
            );
            debug_assert!(previous.is_none(), "one wait per rank");
            inner.grant();
        }
        let mut pending = Pending {
            budget: self,
            rank,
            done: false,
        };
        loop {
            let woken = wake.notified();
            {
                let mut inner = self.lock();
                if inner.waiting.get(&rank).is_some_and(|w| w.granted) {
                    inner.waiting.remove(&rank);
                    *inner.held.entry(rank).or_default() += 1;
                    pending.done = true;
                    return Lease {
                        budget: self.clone(),
                        rank,
                        bytes: need,
                    };
                }
            }
            woken.await;
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    #[cfg(test)]
    pub fn lent(&self) -> usize {
        self.lock().lent
    }

    /// The most that was lent at once (tests).
    #[cfg(test)]
    pub fn most_lent(&self) -> usize {
        self.lock().most_lent
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held; a poisoned lock still holds consistent numbers.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Lease {
    /// The page has arrived: hold what it weighs (more than was set aside is held all the same), and
    /// say what that is.
    pub fn settle(&mut self, objects: &[ObjectInfo]) -> usize {
        self.budget.saw(objects);
        let bytes = weight(objects).max(1);
        let mut inner = self.budget.lock();
        inner.lent = inner.lent - self.bytes + bytes;
        #[cfg(test)]
        {
            inner.most_lent = inner.most_lent.max(inner.lent);
        }
        self.bytes = bytes;
        inner.grant();
        bytes
    }
}

impl Inner {
    fn floor(&self) -> usize {
        (self.total / FLOOR_SHARE).max(1)
    }

    /// Set bytes aside for the waiters in rank order, stopping at the first that does not fit: a
    /// stream further from the consumer never overtakes a nearer one. The stream the consumer is on
    /// passes whenever it holds nothing.
    fn grant(&mut self) {
        for (rank, w) in self.waiting.iter_mut().filter(|(_, w)| !w.granted) {
            let front_alone = *rank <= self.front && self.held.get(rank).is_none_or(|n| *n == 0);
            // A page bigger than the limit passes alone.
            let fits = self.lent + w.need <= self.limit || self.lent == 0;
            if !fits && !front_alone {
                break;
            }
            self.lent += w.need;
            #[cfg(test)]
            {
                self.most_lent = self.most_lent.max(self.lent);
            }
            w.granted = true;
            w.wake.notify_one();
        }
    }
}

/// A wait in progress: dropped before it ends (the stream is gone), it leaves the queue and gives back
/// what was set aside for it.
struct Pending<'a> {
    budget: &'a Lookahead,
    rank: u64,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut inner = self.budget.lock();
        if let Some(w) = inner.waiting.remove(&self.rank)
            && w.granted
        {
            inner.lent -= w.need;
        }
        inner.grant();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut inner = self.budget.lock();
        inner.lent -= self.bytes;
        if let Some(n) = inner.held.get_mut(&self.rank) {
            *n -= 1;
            if *n == 0 {
                inner.held.remove(&self.rank);
            }
        }
        inner.grant();
    }
}

/// What a page of listed objects holds in memory, near enough to budget by.
pub fn weight(objects: &[ObjectInfo]) -> usize {
    let text = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
    std::mem::size_of_val(objects)
        + objects
            .iter()
            .map(|o| {
                o.key.capacity() + text(&o.etag) + text(&o.checksum_type) + text(&o.version_id)
            })
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Poll `f` once: its output if it is ready now.
    fn now<F: std::future::Future>(f: F) -> Option<F::Output> {
        futures::FutureExt::now_or_never(f)
    }

    /// `objects` objects of 100-byte keys.
    fn page(objects: usize) -> Vec<ObjectInfo> {
        (0..objects)
            .map(|i| ObjectInfo {
                key: format!("{i:0>100}"),
                size: 1,
                etag: None,
                last_modified: None,
                checksum_type: None,
                version_id: None,
            })
            .collect()
    }

    #[tokio::test]
    async fn the_nearest_stream_goes_first_and_the_budget_is_not_exceeded() {
        let b = Lookahead::new(100);
        b.advance(1);
        let far = tokio::spawn({
            let b = b.clone();
            async move { b.lease_bytes(9, 60).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let near = b.lease_bytes(2, 30).await;
        let far = far.await.unwrap();
        assert_eq!(b.lent(), 90);
        assert!(now(b.lease_bytes(3, 20)).is_none(), "20 do not fit in 10");
        drop(far);
        let _next = b.lease_bytes(3, 20).await;
        drop(near);
        assert_eq!(b.lent(), 20);
    }

    #[tokio::test]
    async fn a_nearer_stream_that_does_not_fit_is_not_overtaken() {
        let b = Lookahead::new(100);
        let held = b.lease_bytes(0, 70).await;
        let near = tokio::spawn({
            let b = b.clone();
            async move { b.lease_bytes(1, 50).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // 10 would fit in the 30 left, but rank 1 waits first.
        assert!(now(b.lease_bytes(5, 10)).is_none());
        drop(held);
        let _near = near.await.unwrap();
        assert_eq!(b.lent(), 50, "the dropped wait of rank 5 took nothing");
    }

    #[tokio::test]
    async fn the_stream_the_consumer_is_on_passes_when_it_holds_nothing() {
        let b = Lookahead::new(100);
        let far = b.lease_bytes(4, 100).await;
        assert!(
            now(b.lease_bytes(1, 10)).is_none(),
            "the budget is lent out"
        );
        b.advance(1);
        let first = b.lease_bytes(1, 10).await;
        assert_eq!(b.lent(), 110, "one page beyond the budget");
        assert!(
            now(b.lease_bytes(1, 10)).is_none(),
            "a second page waits like any other"
        );
        drop(first);
        let _again = b.lease_bytes(1, 10).await;
        drop(far);
        assert_eq!(b.lent(), 10);
    }

    #[tokio::test]
    async fn a_wait_dropped_after_its_grant_gives_the_bytes_back() {
        let b = Lookahead::new(100);
        let held = b.lease_bytes(0, 100).await;
        let wait = tokio::spawn({
            let b = b.clone();
            async move { b.lease_bytes(3, 80).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Granted under the lock, then cancelled before the waiter ran again.
        drop(held);
        wait.abort();
        let _ = wait.await;
        assert_eq!(b.lent(), 0);
        // A page bigger than the budget still passes, alone.
        let big = b.lease_bytes(4, 1_000).await;
        assert_eq!(b.lent(), 1_000);
        drop(big);
        assert_eq!(b.lent(), 0);
    }

    #[tokio::test]
    async fn a_lease_settles_to_its_page_and_a_request_sets_aside_twice_what_it_expects() {
        let b = Lookahead::new(10 << 20);
        assert_eq!(b.heaviest(), FIRST_GUESS, "before any page: a guess");
        let mut l = b.lease(2, b.heaviest()).await;
        assert_eq!(b.lent(), 2 * FIRST_GUESS);
        let heavy = page(5_000);
        assert_eq!(l.settle(&heavy), weight(&heavy));
        assert_eq!(b.lent(), weight(&heavy));
        assert_eq!(b.heaviest(), weight(&heavy));
        let next = b.lease(3, b.heaviest()).await;
        assert_eq!(b.lent(), 3 * weight(&heavy));
        drop((l, next));
        assert_eq!(b.lent(), 0);
        let light = page(10);
        let mut l = b.lease(4, weight(&light)).await;
        assert_eq!(
            b.lent(),
            2 * weight(&light),
            "what its own last page weighed, twice"
        );
        l.settle(&light);
        assert_eq!(b.lent(), weight(&light), "settled to what it holds");
    }

    #[test]
    fn a_page_weighs_its_objects_and_their_text() {
        let o = ObjectInfo {
            key: "k".repeat(40),
            size: 1,
            etag: Some("\"0123456789abcdef0123456789abcdef\"".into()),
            last_modified: None,
            checksum_type: None,
            version_id: None,
        };
        let one = weight(std::slice::from_ref(&o));
        assert!(one >= std::mem::size_of::<ObjectInfo>() + 40 + 34);
        assert_eq!(weight(&vec![o; 1000]), 1000 * one);
    }
}
