//! The consumer side: a [`Resolution`] is the stream of changes and the
//! snapshot of the current set.
//!
//! The task writes the current set and marks the keys it changed; the stream
//! reads each marked key, compares it with what it last emitted for that key
//! and emits the difference. So a consumer that falls behind gets the net
//! change (a key added and removed meanwhile emits nothing), memory stays
//! bounded by the number of keys, and the task never waits for the consumer.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use discover::{Change, Endpoint};
use futures::Stream;
use tokio::{sync::watch, task::AbortHandle};

use crate::value::Entry;

/// The current set, shared by the task (writer) and the stream (reader).
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    health: watch::Sender<Health>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            health: watch::channel(Health::Starting).0,
        }
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
    current: HashMap<String, Entry>,
    /// Keys whose entry changed since the stream last looked, oldest first.
    dirty: VecDeque<String>,
    dirty_set: HashSet<String>,
    waker: Option<Waker>,
    /// The task is gone: end the stream once the dirty keys are drained.
    closed: bool,
}

impl State {
    fn mark(&mut self, key: &str) {
        if self.dirty_set.insert(key.to_string()) {
            self.dirty.push_back(key.to_string());
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent map (every write
        // is a single insert or remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(mut state: MutexGuard<'_, State>, changed: bool) {
        let waker = if changed { state.waker.take() } else { None };
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Applies new values (`None`: the key holds no endpoint) and marks the
    /// keys whose entry changed.
    pub(crate) fn apply(&self, updates: impl IntoIterator<Item = (String, Option<Entry>)>) {
        let mut state = self.lock();
        let mut changed = false;
        for (key, entry) in updates {
            let differs = match entry {
                Some(entry) => {
                    if state.current.get(&key) == Some(&entry) {
                        false
                    } else {
                        state.current.insert(key.clone(), entry);
                        true
                    }
                }
                None => state.current.remove(&key).is_some(),
            };
            if differs {
                state.mark(&key);
                changed = true;
            }
        }
        Self::wake(state, changed);
    }

    /// Replaces the whole set (after a list), marking only the keys that
    /// differ. Returns how many keys differed. Linear in both sets.
    pub(crate) fn reset(&self, mut fresh: HashMap<String, Entry>) -> usize {
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut differing = Vec::new();
        for (key, old) in &state.current {
            if fresh.get(key) != Some(old) {
                differing.push(key.clone());
            }
        }
        for key in fresh.keys() {
            if !state.current.contains_key(key) {
                differing.push(key.clone());
            }
        }
        // Emit in key order: deterministic and friendly to readers of logs.
        differing.sort_unstable();
        std::mem::swap(&mut state.current, &mut fresh);
        let n = differing.len();
        for key in &differing {
            state.mark(key);
        }
        Self::wake(guard, n > 0);
        n
    }

    pub(crate) fn set_health(&self, health: Health) {
        self.health.send_if_modified(|h| {
            let changed = *h != health;
            *h = health;
            changed
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().current.len()
    }

    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        Self::wake(state, true);
    }
}

/// A running resolution: a [`Stream`] of [`Change`]s for the endpoints under
/// the prefix, and a [`snapshot`](Self::snapshot) of the current set.
///
/// The stream starts with one `Insert` per endpoint found, then follows etcd.
/// A key whose value changes emits `Insert` again (replacing the endpoint);
/// a value rewritten unchanged emits nothing. A consumer that polls late gets
/// the net change per key, never a backlog. The stream ends only if the
/// resolver task died (it retries etcd forever otherwise).
///
/// Dropping it stops the resolver task.
#[derive(Debug)]
pub struct Resolution {
    shared: Arc<Shared>,
    /// What this stream told its consumer, to emit only differences.
    emitted: HashMap<String, Endpoint>,
    task: AbortHandle,
}

impl Resolution {
    pub(crate) fn new(shared: Arc<Shared>, task: AbortHandle) -> Self {
        Self {
            shared,
            emitted: HashMap::new(),
            task,
        }
    }

    /// The current set as the resolver knows it (etcd key -> entry), which
    /// may be ahead of what the stream has emitted so far. Empty until the
    /// first list completes.
    pub fn snapshot(&self) -> HashMap<String, Entry> {
        self.shared.lock().current.clone()
    }

    /// Whether the resolver follows etcd now; the receiver sees every
    /// change (e.g. `wait_for(|h| matches!(h, Health::Outage(_)))`).
    pub fn health(&self) -> watch::Receiver<Health> {
        self.shared.health.subscribe()
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> std::sync::Weak<Shared> {
        Arc::downgrade(&self.shared)
    }
}

impl Stream for Resolution {
    type Item = Change;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Change>> {
        let this = self.get_mut();
        let mut state = this.shared.lock();
        while let Some(key) = state.dirty.pop_front() {
            state.dirty_set.remove(&key);
            let now = state.current.get(&key).map(|e| e.endpoint().clone());
            match (now, this.emitted.get(&key)) {
                (Some(now), Some(before)) if now == *before => continue,
                (Some(now), _) => {
                    this.emitted.insert(key.clone(), now.clone());
                    return Poll::Ready(Some(Change::Insert(key, now)));
                }
                (None, Some(_)) => {
                    this.emitted.remove(&key);
                    return Poll::Ready(Some(Change::Remove(key)));
                }
                (None, None) => continue,
            }
        }
        if state.closed {
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Resolution {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{Decoded, decode_value};
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
}
