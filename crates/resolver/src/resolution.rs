//! The consumer side: a [`Resolution`] is the stream of changes and the
//! snapshot of the current set.
//!
//! One task per prefix and client (see [`Resolver::resolve`](crate::Resolver::resolve))
//! writes the current set into a [`Shared`] and marks the keys it changed in
//! every subscriber's queue; each [`Resolution`] subscribed to it reads its
//! marked keys, compares each with what it last emitted for that key and
//! emits the difference. So a consumer that falls behind gets the net change
//! (a key added and removed meanwhile emits nothing), the task never waits for
//! any consumer, and one slow consumer never delays another. A queue is a set
//! of keys, bounded by the keys that changed; past the lag limit
//! ([`LAG_LIMIT`] by default) keys more
//! than the set holds, it is dropped and the consumer is resynchronised from
//! the current set (the difference from what it emitted; counted in
//! `resolver_resyncs` and logged once per consumer).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use discover::Change;
use futures::Stream;
use tokio::{sync::watch, task::AbortHandle};

use etcd::Entry;

/// How many changed keys a consumer may have pending, beyond the size of
/// the set, before its queue is dropped and it is resynchronised from the
/// current set: the default of [`Resolver::lag_limit`](crate::Resolver::lag_limit).
pub const LAG_LIMIT: usize = 4096;

/// The current set of one prefix, shared by the task that follows etcd
/// (writer) and every [`Resolution`] of it (readers).
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    health: watch::Sender<Health>,
    /// The prefix, for the resync metric and log.
    prefix: String,
    lag_limit: usize,
}

impl Default for Shared {
    fn default() -> Self {
        Self::new(String::new(), LAG_LIMIT)
    }
}

/// Whether the resolver follows etcd now, from [`Resolution::health`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// The first list has not completed yet.
    Starting,
    /// Listed and watching: the set follows etcd.
    Following,
    /// The watch is lost and cannot be re-opened yet (etcd down, or no
    /// member has a leader): the set is the last one known, unchanged. The
    /// reason says why.
    Outage(String),
}

#[derive(Debug, Default)]
struct State {
    /// Key → entry; subscribers keep the `Arc` of what they emitted.
    current: HashMap<Arc<str>, Arc<Entry>>,
    subscribers: HashMap<u64, Subscriber>,
    next_subscriber: u64,
    closed: bool,
}

/// One consumer's pending keys.
#[derive(Debug, Default)]
struct Subscriber {
    dirty: VecDeque<Arc<str>>,
    dirty_set: HashSet<Arc<str>>,
    waker: Option<Waker>,
    /// Its queue overflowed: compare everything it emitted with the set.
    resync: bool,
    /// Whether its first resync was logged.
    logged: bool,
}

impl Subscriber {
    fn mark(&mut self, key: &Arc<str>) -> bool {
        if self.resync {
            return false;
        }
        if self.dirty_set.insert(key.clone()) {
            self.dirty.push_back(key.clone());
            return true;
        }
        false
    }
}

impl Shared {
    pub(crate) fn new(prefix: String, lag_limit: usize) -> Self {
        Self {
            state: Mutex::default(),
            health: watch::channel(Health::Starting).0,
            prefix,
            lag_limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `keys` for every subscriber, drops the queues that grew past
    /// the limit, and wakes those that have something new.
    fn mark_all(&self, mut state: MutexGuard<'_, State>, keys: &[Arc<str>]) {
        if keys.is_empty() {
            return;
        }
        let limit = self.lag_limit + state.current.len();
        let mut wakers = Vec::new();
        let mut resynced = 0u64;
        for subscriber in state.subscribers.values_mut() {
            let mut marked = false;
            for key in keys {
                marked |= subscriber.mark(key);
            }
            if subscriber.dirty.len() > limit {
                subscriber.dirty = VecDeque::new();
                subscriber.dirty_set = HashSet::new();
                subscriber.resync = true;
                resynced += 1;
                if !subscriber.logged {
                    subscriber.logged = true;
                    tracing::warn!(
                        prefix = %self.prefix,
                        limit,
                        "a consumer of the resolution fell more than {limit} changed keys behind; \
                         it will be resynchronised from the current set"
                    );
                }
            }
            if marked && let Some(waker) = subscriber.waker.take() {
                wakers.push(waker);
            }
        }
        drop(state);
        if resynced > 0 {
            metrics::counter!("resolver.resyncs", "prefix" => self.prefix.trim_end_matches('/').to_owned())
                .increment(resynced);
        }
        for waker in wakers {
            waker.wake();
        }
    }

    /// Applies changes: `Some(entry)` sets a key, `None` removes it.
    pub(crate) fn apply(&self, updates: impl IntoIterator<Item = (String, Option<Entry>)>) {
        let mut state = self.lock();
        let mut changed = Vec::new();
        for (key, entry) in updates {
            let key: Arc<str> = Arc::from(key);
            let differs = match entry {
                Some(entry) => {
                    if state.current.get(&key).map(|e| &**e) == Some(&entry) {
                        false
                    } else {
                        state.current.insert(key.clone(), Arc::new(entry));
                        true
                    }
                }
                None => state.current.remove(&key).is_some(),
            };
            if differs {
                changed.push(key);
            }
        }
        self.mark_all(state, &changed);
    }

    /// Replaces the whole set (after a list); marks only what differs and
    /// returns how many keys that is.
    pub(crate) fn reset(&self, fresh: HashMap<String, Entry>) -> usize {
        let mut state = self.lock();
        let mut differing: Vec<Arc<str>> = Vec::new();
        let mut next: HashMap<Arc<str>, Arc<Entry>> = HashMap::with_capacity(fresh.len());
        for (key, entry) in fresh {
            let key: Arc<str> = Arc::from(key);
            match state.current.remove(&key) {
                Some(old) if *old == entry => {
                    next.insert(key, old);
                }
                _ => {
                    differing.push(key.clone());
                    next.insert(key, Arc::new(entry));
                }
            }
        }
        // What is left of the old set is gone.
        differing.extend(state.current.keys().cloned());
        state.current = next;
        differing.sort_unstable();
        let n = differing.len();
        self.mark_all(state, &differing);
        n
    }

    pub(crate) fn set_health(&self, health: Health) {
        self.health.send_if_modified(|h| {
            let changed = *h != health;
            *h = health;
            changed
        });
    }

    /// How many endpoints the set holds.
    pub(crate) fn len(&self) -> usize {
        self.lock().current.len()
    }

    /// The stream ends: the task stopped.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let wakers: Vec<Waker> = state
            .subscribers
            .values_mut()
            .filter_map(|s| s.waker.take())
            .collect();
        drop(state);
        for waker in wakers {
            waker.wake();
        }
    }

    /// A new consumer, with every current key pending: it starts with the
    /// whole set, then follows.
    fn subscribe(&self) -> u64 {
        let mut state = self.lock();
        let id = state.next_subscriber;
        state.next_subscriber += 1;
        let mut subscriber = Subscriber::default();
        let mut keys: Vec<Arc<str>> = state.current.keys().cloned().collect();
        keys.sort_unstable();
        for key in &keys {
            subscriber.mark(key);
        }
        state.subscribers.insert(id, subscriber);
        id
    }

    fn unsubscribe(&self, id: u64) {
        self.lock().subscribers.remove(&id);
    }
}

/// The task following one prefix; aborted when the last [`Resolution`] of
/// it is dropped.
#[derive(Debug)]
pub(crate) struct Feed {
    pub(crate) shared: Arc<Shared>,
    task: AbortHandle,
}

impl Feed {
    pub(crate) fn new(shared: Arc<Shared>, task: AbortHandle) -> Self {
        Self { shared, task }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A stream of [`Change`]s of one prefix, from a [`Resolver`](crate::Resolver),
/// for the balancer; also the current set and the resolver's health.
///
/// Resolutions of the same prefix from one resolver (and its clones) share
/// one list and one etcd watch: each gets the whole current set first, then
/// every change, at its own pace. Dropping the last of them ends the watch.
#[derive(Debug)]
pub struct Resolution {
    feed: Arc<Feed>,
    id: u64,
    /// Key → what this resolution emitted last (shared with the set while
    /// it is current: a pointer per key, not a copy).
    emitted: HashMap<Arc<str>, Arc<Entry>>,
}

impl Resolution {
    /// A new subscriber of `feed`.
    pub(crate) fn subscribe(feed: Arc<Feed>) -> Self {
        let id = feed.shared.subscribe();
        Self {
            feed,
            id,
            emitted: HashMap::new(),
        }
    }

    /// A resolution of a feed of its own (tests).
    #[cfg(test)]
    pub(crate) fn new(shared: Arc<Shared>, task: AbortHandle) -> Self {
        Self::subscribe(Arc::new(Feed::new(shared, task)))
    }

    /// The current set: key → entry, with each entry's raw metadata.
    pub fn snapshot(&self) -> HashMap<String, Entry> {
        self.feed
            .shared
            .lock()
            .current
            .iter()
            .map(|(k, e)| (k.to_string(), (**e).clone()))
            .collect()
    }

    /// Whether the resolver follows etcd now: `Starting` until the first
    /// list, `Following` while watching, `Outage(reason)` while it cannot
    /// (the last known set is kept meanwhile).
    pub fn health(&self) -> watch::Receiver<Health> {
        self.feed.shared.health.subscribe()
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> std::sync::Weak<Shared> {
        Arc::downgrade(&self.feed.shared)
    }
}

impl Stream for Resolution {
    type Item = Change;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Change>> {
        let this = self.get_mut();
        let mut guard = this.feed.shared.lock();
        let state = &mut *guard;
        let Some(subscriber) = state.subscribers.get_mut(&this.id) else {
            return Poll::Ready(None);
        };
        if subscriber.resync {
            // Everything it emitted and everything there is: the difference.
            subscriber.resync = false;
            let mut keys: Vec<Arc<str>> = this
                .emitted
                .keys()
                .chain(state.current.keys())
                .cloned()
                .collect();
            keys.sort_unstable();
            keys.dedup();
            for key in &keys {
                subscriber.mark(key);
            }
        }
        while let Some(key) = subscriber.dirty.pop_front() {
            subscriber.dirty_set.remove(&key);
            let now = state.current.get(&key);
            match (now, this.emitted.get(&key)) {
                (Some(now), Some(before)) if Arc::ptr_eq(now, before) || now == before => {
                    // Re-added as it was: nothing to say; share the new one.
                    this.emitted.insert(key.clone(), now.clone());
                    continue;
                }
                (Some(entry), _) => {
                    this.emitted.insert(key.clone(), entry.clone());
                    return Poll::Ready(Some(Change::Insert(
                        key.to_string(),
                        entry.endpoint().clone(),
                    )));
                }
                (None, Some(_)) => {
                    this.emitted.remove(&key);
                    return Poll::Ready(Some(Change::Remove(key.to_string())));
                }
                (None, None) => continue,
            }
        }
        if state.closed {
            return Poll::Ready(None);
        }
        subscriber.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Resolution {
    fn drop(&mut self) {
        self.feed.shared.unsubscribe(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd::{Decoded, decode_value};
    use futures::{FutureExt, StreamExt};

    fn entry(addr: &str, id: &str) -> Entry {
        let value = format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":"{id}"}}"#);
        match decode_value(value.as_bytes()) {
            Ok(Decoded::Endpoint(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    fn set(items: &[(&str, &str, &str)]) -> HashMap<String, Entry> {
        items
            .iter()
            .map(|(k, addr, id)| (k.to_string(), entry(addr, id)))
            .collect()
    }

    fn resolution() -> (Arc<Shared>, Resolution) {
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(std::future::pending::<()>());
        let r = Resolution::new(shared.clone(), task.abort_handle());
        (shared, r)
    }

    /// Everything the stream has ready now, without waiting.
    fn drain(r: &mut Resolution) -> Vec<Change> {
        std::iter::from_fn(|| r.next().now_or_never().flatten()).collect()
    }

    fn ins(key: &str, addr: &str, id: &str) -> Change {
        Change::Insert(key.into(), entry(addr, id).endpoint().clone())
    }

    #[test]
    fn resolution_is_an_unpin_send_stream() {
        fn assert_stream<T: Stream<Item = Change> + Unpin + Send + 'static>() {}
        assert_stream::<Resolution>();
    }

    #[tokio::test]
    async fn reset_emits_only_the_differences() {
        let (shared, mut r) = resolution();
        shared.reset(set(&[("k/a", "a:1", "1"), ("k/b", "b:1", "2")]));
        assert_eq!(
            drain(&mut r),
            [ins("k/a", "a:1", "1"), ins("k/b", "b:1", "2")]
        );
        let changed = shared.reset(set(&[
            ("k/a", "a:1", "1"),
            ("k/b", "b:2", "2"),
            ("k/c", "c:1", "3"),
        ]));
        assert_eq!(changed, 2);
        assert_eq!(
            drain(&mut r),
            [ins("k/b", "b:2", "2"), ins("k/c", "c:1", "3")]
        );
        shared.reset(set(&[("k/a", "a:1", "1")]));
        assert_eq!(
            drain(&mut r),
            [Change::Remove("k/b".into()), Change::Remove("k/c".into())]
        );
        assert_eq!(r.snapshot(), set(&[("k/a", "a:1", "1")]));
    }

    #[tokio::test]
    async fn same_value_again_emits_nothing_and_new_value_inserts_again() {
        let (shared, mut r) = resolution();
        shared.apply([("k/a".to_string(), Some(entry("a:1", "1")))]);
        assert_eq!(drain(&mut r), [ins("k/a", "a:1", "1")]);
        shared.apply([("k/a".to_string(), Some(entry("a:1", "1")))]);
        assert_eq!(drain(&mut r), []);
        shared.apply([("k/a".to_string(), Some(entry("a:1", "7")))]);
        assert_eq!(drain(&mut r), [ins("k/a", "a:1", "7")]);
    }

    #[tokio::test]
    async fn a_late_consumer_gets_the_net_change_per_key() {
        let (shared, mut r) = resolution();
        shared.apply([("k/a".to_string(), Some(entry("a:1", "1")))]);
        assert_eq!(drain(&mut r), [ins("k/a", "a:1", "1")]);
        // Removed and re-added unchanged, added and removed: nothing to say.
        shared.apply([("k/a".to_string(), None)]);
        shared.apply([("k/a".to_string(), Some(entry("a:1", "1")))]);
        shared.apply([("k/b".to_string(), Some(entry("b:1", "2")))]);
        shared.apply([("k/b".to_string(), None)]);
        assert_eq!(drain(&mut r), []);
    }

    #[tokio::test]
    async fn a_pending_consumer_is_woken_by_a_change() {
        let (shared, mut r) = resolution();
        let next = tokio::spawn(async move { r.next().await });
        tokio::task::yield_now().await;
        shared.apply([("k/a".to_string(), Some(entry("a:1", "1")))]);
        assert_eq!(next.await.unwrap(), Some(ins("k/a", "a:1", "1")));
    }

    #[tokio::test]
    async fn the_stream_ends_when_the_task_is_gone() {
        let (shared, mut r) = resolution();
        shared.apply([("k/a".to_string(), Some(entry("a:1", "1")))]);
        shared.close();
        assert_eq!(r.next().await, Some(ins("k/a", "a:1", "1")));
        assert_eq!(r.next().await, None);
    }

    #[tokio::test]
    async fn ten_thousand_endpoints_are_diffed_in_linear_time() {
        let (shared, mut r) = resolution();
        let big = |salt: usize| -> HashMap<String, Entry> {
            (0..10_000)
                .map(|i| {
                    // Every 10th endpoint moves between the two sets.
                    let port = if i % 10 == 0 { 1 + salt } else { 1 };
                    (
                        format!("k/{i}"),
                        entry(&format!("10.0.{}.{}:{port}", i / 256, i % 256), "x"),
                    )
                })
                .collect()
        };
        shared.reset(big(0));
        assert_eq!(drain(&mut r).len(), 10_000);
        let started = std::time::Instant::now();
        let changed = shared.reset(big(1));
        let changes = drain(&mut r);
        eprintln!(
            "diffing 10000 endpoints ({changed} changed) took {:?}",
            started.elapsed()
        );
        assert_eq!(changes.len(), 1_000);
    }

    #[tokio::test]
    async fn subscribers_of_one_feed_each_get_every_change_and_a_late_one_the_whole_set() {
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(std::future::pending::<()>());
        let feed = Arc::new(Feed::new(shared.clone(), task.abort_handle()));
        let mut first = Resolution::subscribe(feed.clone());
        let mut second = Resolution::subscribe(feed.clone());
        shared.apply([("k/a".to_string(), Some(entry("a:1", "1")))]);
        shared.apply([("k/b".to_string(), Some(entry("b:1", "2")))]);
        let both = [ins("k/a", "a:1", "1"), ins("k/b", "b:1", "2")];
        assert_eq!(drain(&mut first), both);
        assert_eq!(drain(&mut second), both);
        // Joins late: the whole set, in key order, then what follows.
        let mut late = Resolution::subscribe(feed.clone());
        assert_eq!(drain(&mut late), both);
        shared.apply([("k/a".to_string(), None)]);
        for r in [&mut first, &mut second, &mut late] {
            assert_eq!(drain(r), [Change::Remove("k/a".into())]);
        }
        // The feed's task ends with the last subscriber.
        drop((first, second, late));
        drop(feed);
        tokio::task::yield_now().await;
        assert!(task.is_finished());
    }

    #[tokio::test]
    async fn a_subscriber_past_the_lag_limit_is_resynchronised_with_the_difference() {
        let shared = Arc::new(Shared::new("k".into(), 8));
        let task = tokio::spawn(std::future::pending::<()>());
        let feed = Arc::new(Feed::new(shared.clone(), task.abort_handle()));
        let mut slow = Resolution::subscribe(feed.clone());
        let mut fast = Resolution::subscribe(feed);
        shared.apply([("k/keep".to_string(), Some(entry("keep:1", "k")))]);
        shared.apply([("k/gone".to_string(), Some(entry("gone:1", "g")))]);
        assert_eq!(drain(&mut slow).len(), 2);
        assert_eq!(drain(&mut fast).len(), 2);
        // 100 keys come and go, one stays: far past 8 + the set's size for
        // the slow one, while the fast one keeps reading.
        let mut heard = 0;
        for i in 0..100 {
            let key = format!("k/{i}");
            shared.apply([(key.clone(), Some(entry(&format!("10.0.0.{i}:1"), "x")))]);
            heard += drain(&mut fast).len();
            if i != 99 {
                shared.apply([(key, None)]);
                heard += drain(&mut fast).len();
            }
        }
        shared.apply([("k/gone".to_string(), None)]);
        heard += drain(&mut fast).len();
        assert_eq!(heard, 99 * 2 + 1 + 1, "the fast one hears every change");
        {
            let state = shared.lock();
            let pending: usize = state.subscribers.values().map(|s| s.dirty.len()).sum();
            assert!(pending <= 8 + 3, "queues stay bounded: {pending}");
        }
        // The slow one hears only the difference from what it had.
        let mut changes = drain(&mut slow);
        changes.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(
            changes,
            [
                ins("k/99", "10.0.0.99:1", "x"),
                Change::Remove("k/gone".into())
            ]
        );
        assert_eq!(drain(&mut slow), []);
    }
}
