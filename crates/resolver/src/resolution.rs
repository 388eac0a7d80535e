//! The consumer side: a [`Resolution`] is the stream of changes and the
//! snapshot of the current set.
//!
//! One task per prefix and client (see [`Resolver::resolve`](crate::Resolver::resolve))
//! writes the current set into a [`Shared`] and appends every change it
//! makes to one log that all subscribers of the prefix read, each from its
//! own position: a broadcast ring. The task never waits for any consumer,
//! and one slow consumer never delays another. A consumer that reads late
//! gets the net change per key: a change the log already has a later one
//! for is skipped, remembering only what the consumer had for that key
//! until it reads the last one (so a key added and removed meanwhile, or
//! changed and changed back, says nothing). The log holds only what the
//! slowest subscriber has not read yet, and never more than the lag limit
//! ([`LAG_LIMIT`] by default) plus the set's size: past that its oldest
//! changes are dropped, and a subscriber that had not read them gets the
//! whole current set as one [`Change::Reset`] instead (counted in
//! `resolver_resyncs`, logged once per consumer). So what a consumer costs
//! does not grow with its lag, nor the log with the number of consumers: a
//! subscriber that keeps up is its position and its waker.

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use discover::{Change, Endpoint};
use futures::Stream;
use tokio::{sync::watch, task::AbortHandle};

use etcd::Entry;

/// How many changes a consumer may have left unread, beyond the size of
/// the set, before the oldest are dropped and it is resynchronised from the
/// current set (a [`Change::Reset`]): the default of
/// [`Resolver::lag_limit`](crate::Resolver::lag_limit).
pub const LAG_LIMIT: usize = 4096;

/// One change of the set: the key, its entry before and after (`None`:
/// absent).
type Changed = (Arc<str>, Option<Arc<Entry>>, Option<Arc<Entry>>);

/// A key and its entry, as the set holds them.
type Pair = (Arc<str>, Arc<Entry>);

/// One change in the log.
#[derive(Debug)]
struct Logged {
    key: Arc<str>,
    before: Option<Arc<Entry>>,
    after: Option<Arc<Entry>>,
    /// The log has a later change of the same key: a reader skips this one.
    superseded: bool,
}

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
    /// Key → entry; the log and the subscribers' first sets point at the
    /// same entries.
    current: HashMap<Arc<str>, Arc<Entry>>,
    /// The changes some subscriber has not read yet, oldest first.
    log: VecDeque<Logged>,
    /// The sequence number of `log[0]`.
    first: u64,
    /// Key → the sequence number of its last change in the log.
    latest: HashMap<Arc<str>, u64>,
    subscribers: HashMap<u64, Subscriber>,
    next_subscriber: u64,
    closed: bool,
}

impl State {
    /// The sequence number the next change will get.
    fn head(&self) -> u64 {
        self.first + self.log.len() as u64
    }

    /// The current set, sorted by key.
    fn sorted(&self) -> Vec<Pair> {
        let mut all: Vec<Pair> = self
            .current
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// One consumer: where it reads the log.
#[derive(Debug)]
struct Subscriber {
    /// Whether it has read anything: it takes the set it starts with at its
    /// first read, so one that never reads holds neither a copy of the set
    /// nor the log.
    started: bool,
    /// The sequence number of the next change it reads; below the log's
    /// first, it missed changes and reads the whole set next.
    next: u64,
    waker: Option<Waker>,
    /// Whether its first resync was logged.
    logged: bool,
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

    /// Appends `changes` to the log, drops what every subscriber has read
    /// and what is past the lag limit, and wakes the waiting subscribers.
    fn publish(&self, mut state: MutexGuard<'_, State>, changes: Vec<Changed>) {
        if changes.is_empty() {
            return;
        }
        for (key, before, after) in changes {
            let seq = state.head();
            if let Some(earlier) = state.latest.insert(key.clone(), seq)
                && let Some(i) = earlier.checked_sub(state.first)
                && let Some(logged) = state.log.get_mut(i as usize)
            {
                logged.superseded = true;
            }
            state.log.push_back(Logged {
                key,
                before,
                after,
                superseded: false,
            });
        }
        let head = state.head();
        let limit = (self.lag_limit + state.current.len()) as u64;
        let slowest = state
            .subscribers
            .values()
            // One that lags already reads the whole set, not the log; one
            // that has not started reads the set first.
            .filter(|s| s.started && s.next >= state.first)
            .map(|s| s.next)
            .min()
            .unwrap_or(head);
        let before = state.first;
        let keep_from = slowest.max(head.saturating_sub(limit)).min(head);
        if keep_from > before {
            let state = &mut *state;
            for dropped in state.log.drain(..(keep_from - before) as usize) {
                if !dropped.superseded {
                    state.latest.remove(&dropped.key);
                }
            }
            state.first = keep_from;
            // A burst (a list of many keys) leaves a large buffer behind.
            let len = state.log.len();
            if state.log.capacity() > 1024 && state.log.capacity() > 4 * len {
                state.log.shrink_to(2 * len);
            }
        }
        let first = state.first;
        let mut wakers = Vec::new();
        let mut resynced = 0u64;
        for subscriber in state.subscribers.values_mut() {
            if subscriber.started && subscriber.next < first && subscriber.next >= before {
                // Newly past the limit: it will read the whole set instead.
                resynced += 1;
                if !subscriber.logged {
                    subscriber.logged = true;
                    tracing::warn!(
                        prefix = %self.prefix,
                        limit,
                        "a consumer of the resolution fell more than {limit} changes behind; \
                         it will be resynchronised from the current set"
                    );
                }
            }
            if let Some(waker) = subscriber.waker.take() {
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
        let mut changes = Vec::new();
        for (key, entry) in updates {
            match entry {
                Some(entry) => {
                    if state.current.get(key.as_str()).map(|e| &**e) == Some(&entry) {
                        continue;
                    }
                    let (key, entry): (Arc<str>, _) = (Arc::from(key), Arc::new(entry));
                    let before = state.current.insert(key.clone(), entry.clone());
                    changes.push((key, before, Some(entry)));
                }
                None => {
                    if let Some((key, before)) = state.current.remove_entry(key.as_str()) {
                        changes.push((key, Some(before), None));
                    }
                }
            }
        }
        self.publish(state, changes);
    }

    /// Replaces the whole set (after a list); logs only what differs and
    /// returns how many keys that is.
    pub(crate) fn reset(&self, fresh: HashMap<String, Entry>) -> usize {
        let mut state = self.lock();
        let mut changes: Vec<Changed> = Vec::new();
        let mut next: HashMap<Arc<str>, Arc<Entry>> = HashMap::with_capacity(fresh.len());
        for (key, entry) in fresh {
            match state.current.remove_entry(key.as_str()) {
                Some((key, old)) if *old == entry => {
                    next.insert(key, old);
                }
                old => {
                    let (key, entry): (Arc<str>, _) = (Arc::from(key), Arc::new(entry));
                    changes.push((key.clone(), old.map(|(_, e)| e), Some(entry.clone())));
                    next.insert(key, entry);
                }
            }
        }
        // What is left of the old set is gone.
        changes.extend(
            state
                .current
                .drain()
                .map(|(key, before)| (key, Some(before), None)),
        );
        state.current = next;
        changes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let n = changes.len();
        self.publish(state, changes);
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

    /// A new consumer; at its first read it takes the current set, then
    /// reads the changes made after that.
    fn subscribe(&self) -> u64 {
        let mut state = self.lock();
        let id = state.next_subscriber;
        state.next_subscriber += 1;
        state.subscribers.insert(
            id,
            Subscriber {
                started: false,
                next: 0,
                waker: None,
                logged: false,
            },
        );
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
/// one list and one etcd watch: each gets the whole current set first (an
/// `Insert` per endpoint, in key order), then every change, in order, at
/// its own pace. One that leaves more than the lag limit of changes unread
/// gets the whole set again as one `Reset` instead of them (the balancer
/// diffs it: unchanged endpoints are undisturbed). Dropping the last of
/// them ends the watch.
#[derive(Debug)]
pub struct Resolution {
    feed: Arc<Feed>,
    id: u64,
    /// The set it started with, not emitted yet.
    first: VecDeque<Pair>,
    /// Keys whose changes it skipped because the log has later ones → what
    /// it had emitted for them; empty once it has caught up.
    skipped: HashMap<Arc<str>, Option<Arc<Entry>>>,
}

impl Resolution {
    /// A new subscriber of `feed`.
    pub(crate) fn subscribe(feed: Arc<Feed>) -> Self {
        let id = feed.shared.subscribe();
        Self {
            feed,
            id,
            first: VecDeque::new(),
            skipped: HashMap::new(),
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

fn insert(key: &str, entry: &Entry) -> Change {
    Change::Insert(key.to_owned(), entry.endpoint().clone())
}

impl Stream for Resolution {
    type Item = Change;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Change>> {
        let this = self.get_mut();
        if let Some((key, entry)) = this.first.pop_front() {
            if this.first.is_empty() {
                this.first = VecDeque::new();
            }
            return Poll::Ready(Some(insert(&key, &entry)));
        }
        let mut guard = this.feed.shared.lock();
        let state = &mut *guard;
        let head = state.head();
        let starting = match state.subscribers.get_mut(&this.id) {
            None => return Poll::Ready(None),
            Some(subscriber) if !subscriber.started => {
                subscriber.started = true;
                subscriber.next = head;
                true
            }
            Some(_) => false,
        };
        if starting {
            // The set as it is now, then the changes after it.
            this.first = state.sorted().into();
            if let Some((key, entry)) = this.first.pop_front() {
                return Poll::Ready(Some(insert(&key, &entry)));
            }
        }
        let Some(subscriber) = state.subscribers.get_mut(&this.id) else {
            return Poll::Ready(None);
        };
        if subscriber.next < state.first {
            // Its changes were dropped: the whole set instead.
            subscriber.next = head;
            this.skipped = HashMap::new();
            let all: Vec<(String, Endpoint)> = state
                .sorted()
                .into_iter()
                .map(|(k, e)| (k.to_string(), e.endpoint().clone()))
                .collect();
            return Poll::Ready(Some(Change::Reset(all)));
        }
        while subscriber.next < head {
            let logged = &state.log[(subscriber.next - state.first) as usize];
            subscriber.next += 1;
            if logged.superseded {
                // The later change says it; remember what this one had.
                this.skipped
                    .entry(logged.key.clone())
                    .or_insert_with(|| logged.before.clone());
                continue;
            }
            let had = match this.skipped.remove(&logged.key) {
                Some(had) => had,
                None => logged.before.clone(),
            };
            if this.skipped.is_empty() && this.skipped.capacity() > 64 {
                this.skipped = HashMap::new();
            }
            match (&logged.after, had) {
                (Some(now), Some(had)) if Arc::ptr_eq(now, &had) || **now == *had => {}
                (None, None) => {}
                (Some(now), _) => return Poll::Ready(Some(insert(&logged.key, now))),
                (None, Some(_)) => {
                    return Poll::Ready(Some(Change::Remove(logged.key.to_string())));
                }
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
        // Changed twice: the last value, once; removed after a change: removed.
        shared.apply([("k/a".to_string(), Some(entry("a:1", "2")))]);
        shared.apply([("k/c".to_string(), Some(entry("c:1", "3")))]);
        shared.apply([("k/a".to_string(), Some(entry("a:1", "3")))]);
        shared.apply([("k/c".to_string(), Some(entry("c:1", "4")))]);
        shared.apply([("k/c".to_string(), None)]);
        assert_eq!(drain(&mut r), [ins("k/a", "a:1", "3")]);
        assert!(r.skipped.is_empty());
        shared.apply([("k/a".to_string(), Some(entry("a:1", "4")))]);
        shared.apply([("k/a".to_string(), None)]);
        assert_eq!(drain(&mut r), [Change::Remove("k/a".into())]);
    }

    #[tokio::test]
    async fn the_log_keeps_only_what_the_slowest_reader_has_not_read() {
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(std::future::pending::<()>());
        let feed = Arc::new(Feed::new(shared.clone(), task.abort_handle()));
        let mut readers: Vec<Resolution> = (0..1000)
            .map(|_| Resolution::subscribe(feed.clone()))
            .collect();
        let log_len = || shared.lock().log.len();
        for i in 0..100 {
            shared.apply([(format!("k/{i}"), Some(entry(&format!("10.0.0.{i}:1"), "x")))]);
            for r in &mut readers {
                assert_eq!(drain(r).len(), 1);
            }
            // Read by all: dropped at the next change.
            assert!(log_len() <= 1, "{}", log_len());
        }
        // One reader stops: the log keeps what it has not read, once.
        let mut stopped = readers.pop().expect("a reader");
        for i in 0..50 {
            shared.apply([(format!("k/{i}"), None)]);
            for r in &mut readers {
                assert_eq!(drain(r).len(), 1);
            }
        }
        assert_eq!(log_len(), 50);
        assert_eq!(drain(&mut stopped).len(), 50);
        shared.apply([("k/0".to_string(), Some(entry("10.0.0.0:1", "x")))]);
        assert_eq!(log_len(), 1);
        for r in &mut readers {
            assert_eq!(drain(r).len(), 1);
        }
        assert_eq!(drain(&mut stopped).len(), 1);
        // One that never read holds nothing back, and starts with the set
        // as it is when it first reads.
        let mut idle = Resolution::subscribe(feed.clone());
        for i in 0..10 {
            shared.apply([(format!("k/{i}"), Some(entry(&format!("10.0.0.{i}:2"), "x")))]);
            for r in readers.iter_mut().chain([&mut stopped]) {
                assert_eq!(drain(r).len(), 1);
            }
        }
        assert_eq!(log_len(), 1);
        assert_eq!(drain(&mut idle).len(), shared.len());
        drop(idle);
        // A reader that goes away holds nothing back.
        drop(stopped);
        shared.apply([("k/0".to_string(), None)]);
        assert_eq!(log_len(), 1);
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
    async fn a_subscriber_past_the_lag_limit_is_resynchronised_with_the_whole_set() {
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
            let state = shared.lock();
            assert!(
                state.log.len() <= 8 + state.current.len(),
                "the log stays bounded: {}",
                state.log.len()
            );
        }
        shared.apply([("k/gone".to_string(), None)]);
        heard += drain(&mut fast).len();
        assert_eq!(heard, 99 * 2 + 1 + 1, "the fast one hears every change");
        // The slow one reads the whole set at once, then follows again.
        let keep = entry("keep:1", "k").endpoint().clone();
        let last = entry("10.0.0.99:1", "x").endpoint().clone();
        assert_eq!(
            drain(&mut slow),
            [Change::Reset(vec![
                ("k/99".to_string(), last),
                ("k/keep".to_string(), keep),
            ])]
        );
        shared.apply([("k/keep".to_string(), None)]);
        assert_eq!(drain(&mut slow), [Change::Remove("k/keep".into())]);
        assert_eq!(drain(&mut fast), [Change::Remove("k/keep".into())]);
    }
}
