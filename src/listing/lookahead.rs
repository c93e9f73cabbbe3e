//! The memory that listing streams may fill ahead of the consumer beyond the one page each always may:
//! a byte budget lent to the stream nearest the consumer first, and only as far as the consumer has
//! shown that it waits on the listing.
//!
//! Why: the streams are handed on in byte order, one prefix after another. A stream holding only a page
//! or two ahead makes a prefix of many pages list at one page per round trip once the consumer reaches
//! it, while the streams behind it sit idle (10⁶ keys in 120 folders of 9 pages each: 1.2× faster than
//! one stream instead of ~10×). Lent to the streams the consumer reaches next, the budget lets them
//! list whole prefixes before they are needed. Closed while the consumer is the slow side (a full run
//! fetching objects), where it would only hold memory and win nothing: the limit doubles each time the
//! consumer is found waiting (nothing queued for it) and drops to nothing each time the listing is found
//! waiting on it (its queue full), so a consumer that is only fast while it starts up is lent little.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::ObjectInfo;

/// The first limit once the consumer is found waiting: a page or two of short keys.
const STEP: usize = 256 << 10;

/// A byte budget, lent in order of rank (lowest first: the stream the consumer reaches soonest).
pub struct Lookahead {
    total: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    lent: usize,
    /// What may be lent now (at most `total`): grows while the consumer waits on the listing.
    limit: usize,
    total: usize,
    /// One entry per stream waiting, by rank; `granted` once its bytes are set aside for it.
    waiting: BTreeMap<u64, Waiter>,
}

struct Waiter {
    need: usize,
    granted: bool,
    wake: Arc<Notify>,
}

/// Bytes lent to one page; given back when dropped (the consumer has taken the page).
pub struct Lease {
    budget: Arc<Lookahead>,
    bytes: usize,
}

impl Lookahead {
    pub fn new(total: usize) -> Arc<Lookahead> {
        Arc::new(Lookahead {
            total,
            inner: Mutex::new(Inner {
                lent: 0,
                limit: 0,
                total,
                waiting: BTreeMap::new(),
            }),
        })
    }

    /// The consumer has nothing queued: it waits on the listing. Lend twice as much as before.
    pub fn hungry(&self) {
        let mut inner = self.lock();
        inner.limit = (inner.limit * 2).clamp(STEP.min(self.total), self.total);
        inner.grant();
    }

    /// The consumer's queue is full: the listing waits on it. Lend nothing more until it is hungry
    /// again (what is lent comes back as it takes the pages).
    pub fn full(&self) {
        self.lock().limit = 0;
    }

    /// Wait until `bytes` (at most the whole budget, so that any page can pass) are lent to the
    /// stream of `rank`; one wait per rank at a time. Cancel-safe: dropped before it returns, nothing
    /// stays taken.
    pub async fn lease(self: &Arc<Self>, rank: u64, bytes: usize) -> Lease {
        let need = bytes.clamp(1, self.total.max(1));
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
                    pending.done = true;
                    return Lease {
                        budget: self.clone(),
                        bytes: need,
                    };
                }
            }
            woken.await;
        }
    }

    #[cfg(test)]
    pub fn lent(&self) -> usize {
        self.lock().lent
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held; a poisoned lock still holds consistent numbers.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Set bytes aside for the waiters in rank order, stopping at the first that does not fit: a
    /// stream further from the consumer never overtakes a nearer one.
    fn grant(&mut self) {
        for w in self.waiting.values_mut().filter(|w| !w.granted) {
            // A page bigger than the limit passes alone once the whole budget may be lent.
            let fits =
                self.lent + w.need <= self.limit || (self.lent == 0 && self.limit == self.total);
            if !fits || self.limit == 0 {
                break;
            }
            self.lent += w.need;
            w.granted = true;
            w.wake.notify_one();
        }
    }
}

/// A wait in progress: dropped before it ends (the stream took its own page's room instead, or is
/// gone), it leaves the queue and gives back what was set aside for it.
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

    #[tokio::test]
    async fn nothing_is_lent_until_the_consumer_is_hungry_and_the_nearest_stream_goes_first() {
        let b = Lookahead::new(100);
        let far = tokio::spawn({
            let b = b.clone();
            async move { b.lease(9, 60).await }
        });
        let near = tokio::spawn({
            let b = b.clone();
            async move { b.lease(2, 60).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !far.is_finished() && !near.is_finished(),
            "not hungry: nothing lent"
        );
        b.hungry();
        let lease = near.await.unwrap();
        assert_eq!(b.lent(), 60);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!far.is_finished(), "60 do not fit in 40");
        drop(lease);
        let lease = far.await.unwrap();
        assert_eq!(b.lent(), 60);
        drop(lease);
        assert_eq!(b.lent(), 0);
    }

    #[tokio::test]
    async fn the_limit_doubles_while_hungry_and_closes_when_full() {
        let b = Lookahead::new(4 * STEP);
        b.hungry();
        let first = b.lease(0, STEP).await;
        assert!(now(b.lease(1, 1)).is_none(), "one step at first");
        b.hungry();
        b.hungry();
        let more = b.lease(1, 3 * STEP).await;
        assert_eq!(b.lent(), 4 * STEP, "at most the whole budget");
        b.full();
        drop(first);
        assert!(
            now(b.lease(2, 1)).is_none(),
            "full: nothing lent, even with room"
        );
        drop(more);
        assert_eq!(b.lent(), 0);
    }

    #[tokio::test]
    async fn a_nearer_stream_that_does_not_fit_is_not_overtaken() {
        let b = Lookahead::new(100);
        b.hungry();
        let held = b.lease(0, 70).await;
        let near = tokio::spawn({
            let b = b.clone();
            async move { b.lease(1, 50).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // 10 would fit in the 30 left, but rank 1 waits first.
        assert!(now(b.lease(5, 10)).is_none());
        drop(held);
        let _near = near.await.unwrap();
        assert_eq!(b.lent(), 50, "the dropped wait of rank 5 took nothing");
    }

    #[tokio::test]
    async fn a_wait_dropped_after_its_grant_gives_the_bytes_back() {
        let b = Lookahead::new(100);
        let wait = tokio::spawn({
            let b = b.clone();
            async move { b.lease(3, 80).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Granted under the lock, then cancelled before the waiter ran again.
        b.hungry();
        wait.abort();
        let _ = wait.await;
        assert_eq!(b.lent(), 0);
        // A page bigger than the budget still passes, alone.
        let big = b.lease(4, 1_000).await;
        assert_eq!(b.lent(), 100);
        drop(big);
        assert_eq!(b.lent(), 0);
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
