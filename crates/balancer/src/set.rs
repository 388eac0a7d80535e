//! The owner task: the one place the endpoint set changes.
//!
//! It consumes the discovery stream and the connection tasks' state events,
//! and publishes an immutable [`Snapshot`] that the request path reads without
//! a lock (linkerd's pattern: one task owns the state, the hot path reads a
//! snapshot).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use discover::{Change, Endpoint};
use futures::{FutureExt as _, Stream, StreamExt as _};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    connection::{self, Sender, StateEvent},
    policy::{NoEndpoint, Picker, ReadyEndpoint},
    service::Shared,
    state::{ConnectivityState, EndpointShared, Exclusion},
};

/// An immutable view of the endpoint set, swapped in whole on every change.
pub(crate) struct Snapshot {
    /// READY endpoints, in no particular order: what the policy picks from
    /// (an endpoint left out here is invisible to every policy).
    pub(crate) ready: Vec<ReadyEndpoint>,
    /// The policy's picker over `ready`.
    pub(crate) picker: Arc<dyn Picker>,
    /// Instance id → best state among the endpoints carrying it.
    pub(crate) instances: HashMap<Arc<str>, Slot>,
    /// Every known endpoint.
    pub(crate) all: Vec<Arc<EndpointShared>>,
    pub(crate) connecting: usize,
    pub(crate) failed: usize,
    /// READY but not picked (see [`Exclusion`]).
    pub(crate) excluded: usize,
    /// Whether the discovery stream has delivered anything yet.
    pub(crate) discovered: bool,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            ready: Vec::new(),
            picker: Arc::new(NoEndpoint),
            instances: HashMap::new(),
            all: Vec::new(),
            connecting: 0,
            failed: 0,
            excluded: 0,
            discovered: false,
        }
    }
}

/// Where an instance id stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    Ready(usize),
    Connecting,
    Failed,
}

impl Slot {
    fn rank(self) -> u8 {
        match self {
            Self::Ready(_) => 2,
            Self::Connecting => 1,
            Self::Failed => 0,
        }
    }
}

struct Managed {
    generation: u64,
    shared: Arc<EndpointShared>,
    state: ConnectivityState,
    sender: Option<Sender>,
    /// The connection's reasons not to pick it (suspected frozen, not
    /// serving).
    conn_excluded: Vec<Exclusion>,
    task: JoinHandle<()>,
}

impl Managed {
    /// Every reason not to pick it.
    fn exclusions(&self) -> Vec<Exclusion> {
        self.conn_excluded.clone()
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        // In-flight requests keep their own handle to the connection, so they
        // complete; the connection closes once they have.
        self.task.abort();
    }
}

pub(crate) struct Owner {
    shared: Arc<Shared>,
    endpoints: HashMap<String, Managed>,
    events_tx: mpsc::UnboundedSender<StateEvent>,
    events_rx: mpsc::UnboundedReceiver<StateEvent>,
    next_generation: u64,
    discovered: bool,
    dirty: bool,
    last_publish: Instant,
    /// The current picker and the endpoints (by identity) it was built over:
    /// the policy builds a new one only when these change.
    picker: Arc<dyn Picker>,
    picked_from: Vec<Arc<EndpointShared>>,
}

impl Owner {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Self {
            shared,
            endpoints: HashMap::new(),
            events_tx,
            events_rx,
            next_generation: 0,
            discovered: false,
            dirty: false,
            last_publish: Instant::now(),
            picker: Arc::new(NoEndpoint),
            picked_from: Vec::new(),
        }
    }

    /// Runs until every `Balancer` handle is dropped (`shutdown` resolves).
    pub(crate) async fn run<S>(mut self, discovery: S, mut shutdown: oneshot::Receiver<()>)
    where
        S: Stream<Item = Change> + Send + 'static,
    {
        let mut discovery = std::pin::pin!(discovery);
        let mut discovery_open = true;
        loop {
            let was_open = discovery_open;
            let publish_at = self.dirty.then(|| self.next_publish());
            tokio::select! {
                _ = &mut shutdown => break,
                () = sleep_until_some(publish_at) => {}
                change = discovery.next(), if discovery_open => match change {
                    Some(change) => {
                        self.apply_change(change);
                        // Take every change already queued before publishing
                        // once: an initial list of N endpoints is one snapshot.
                        loop {
                            match discovery.next().now_or_never() {
                                Some(Some(change)) => self.apply_change(change),
                                Some(None) => {
                                    discovery_open = false;
                                    break;
                                }
                                None => break,
                            }
                        }
                    }
                    None => discovery_open = false,
                },
                Some(event) = self.events_rx.recv() => self.apply_event(event),
            }
            if was_open && !discovery_open {
                tracing::debug!(balancer = %self.shared.config.name, "discovery stream ended; keeping the last set");
            }
            while let Ok(event) = self.events_rx.try_recv() {
                self.apply_event(event);
            }
            if self.dirty && Instant::now() >= self.next_publish() {
                self.publish();
            }
        }
        tracing::debug!(balancer = %self.shared.config.name, "balancer dropped; closing connections");
    }

    /// Publishing costs O(endpoints); while thousands of connections come up
    /// one by one, publishing after each would be quadratic. So publishes are
    /// spaced by ~0.2 µs per endpoint (2 ms at 10 000, nothing for a few),
    /// keeping the owner under about half busy with them.
    fn next_publish(&self) -> Instant {
        let spacing = Duration::from_nanos(200 * self.endpoints.len() as u64);
        self.last_publish + spacing
    }

    fn apply_change(&mut self, change: Change) {
        self.discovered = true;
        self.dirty = true;
        match change {
            Change::Insert(key, endpoint) => self.insert(key, endpoint),
            Change::Remove(key) => self.remove(&key),
            Change::Reset(all) => {
                let keep: HashSet<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
                let gone: Vec<String> = self
                    .endpoints
                    .keys()
                    .filter(|k| !keep.contains(k.as_str()))
                    .cloned()
                    .collect();
                for key in gone {
                    self.remove(&key);
                }
                for (key, endpoint) in all {
                    self.insert(key, endpoint);
                }
            }
        }
    }

    fn insert(&mut self, key: String, endpoint: Endpoint) {
        if let Some(existing) = self.endpoints.get(&key)
            && existing.shared.endpoint == endpoint
        {
            return;
        }
        let shared = match EndpointShared::new(key.clone(), endpoint.clone()) {
            Ok(shared) => shared,
            Err(e) => {
                tracing::warn!(key = %key, endpoint = %endpoint, error = %e, "endpoint address is not a valid authority; ignored");
                self.remove(&key);
                return;
            }
        };
        tracing::info!(
            balancer = %self.shared.config.name,
            key = %key,
            endpoint = %endpoint,
            "endpoint added"
        );
        self.next_generation += 1;
        let generation = self.next_generation;
        let task = tokio::spawn(connection::run(
            key.clone(),
            generation,
            endpoint,
            self.shared.config.endpoint.clone(),
            self.events_tx.clone(),
        ));
        let managed = Managed {
            generation,
            shared,
            state: ConnectivityState::Idle,
            sender: None,
            conn_excluded: Vec::new(),
            task,
        };
        self.endpoints.insert(key, managed);
    }

    fn remove(&mut self, key: &str) {
        if let Some(gone) = self.endpoints.remove(key) {
            tracing::info!(
                balancer = %self.shared.config.name,
                key = %key,
                endpoint = %gone.shared.endpoint,
                "endpoint removed"
            );
        }
    }

    fn apply_event(&mut self, event: StateEvent) {
        let Some(managed) = self.endpoints.get_mut(&event.key) else {
            return;
        };
        if managed.generation != event.generation {
            return; // from a connection task of a replaced endpoint
        }
        let from = managed.state;
        let was_excluded = !managed.exclusions().is_empty();
        let excluded_before = std::mem::replace(&mut managed.conn_excluded, event.excluded);
        managed.state = event.state;
        managed.sender = event.sender;
        managed.shared.set_state(event.state);
        if excluded_before != managed.conn_excluded {
            managed.shared.set_excluded(managed.exclusions());
        }
        if let Some(error) = &event.error {
            managed.shared.set_last_error(error.clone());
        }
        self.dirty = true;
        let endpoint = &managed.shared.endpoint;
        let name = &self.shared.config.name;
        let error = event.error.as_deref().unwrap_or("");
        match event.state {
            ConnectivityState::Ready if from == ConnectivityState::Ready => {
                for why in managed
                    .conn_excluded
                    .iter()
                    .filter(|e| !excluded_before.contains(e))
                {
                    tracing::warn!(balancer = %name, endpoint = %endpoint, "endpoint not picked: {why}");
                }
                if was_excluded && managed.exclusions().is_empty() {
                    tracing::info!(balancer = %name, endpoint = %endpoint, "endpoint picked again");
                }
            }
            ConnectivityState::Ready => {
                tracing::info!(balancer = %name, endpoint = %endpoint, ?from, "endpoint ready");
            }
            ConnectivityState::TransientFailure => {
                tracing::warn!(balancer = %name, endpoint = %endpoint, ?from, error, "endpoint connection failed");
            }
            ConnectivityState::Idle => {
                tracing::info!(balancer = %name, endpoint = %endpoint, ?from, error, "endpoint left the ready set");
            }
            ConnectivityState::Connecting => {
                tracing::debug!(balancer = %name, endpoint = %endpoint, ?from, "endpoint connecting");
            }
        }
    }

    fn publish(&mut self) {
        self.dirty = false;
        self.last_publish = Instant::now();
        let mut snapshot = Snapshot {
            discovered: self.discovered,
            ..Snapshot::default()
        };
        for managed in self.endpoints.values() {
            snapshot.all.push(managed.shared.clone());
            let slot = match (managed.state, &managed.sender) {
                (ConnectivityState::Ready, Some(sender)) if managed.exclusions().is_empty() => {
                    snapshot.ready.push(ReadyEndpoint {
                        shared: managed.shared.clone(),
                        sender: sender.clone(),
                    });
                    Slot::Ready(snapshot.ready.len() - 1)
                }
                (ConnectivityState::TransientFailure, _) => {
                    snapshot.failed += 1;
                    Slot::Failed
                }
                (ConnectivityState::Ready, Some(_)) => {
                    snapshot.excluded += 1;
                    // A sticky request waits for a suspected instance as for
                    // one connecting (a probe ends within its timeout); one
                    // ejected or not serving gets the fallback at once.
                    let passing = managed
                        .exclusions()
                        .iter()
                        .all(|e| matches!(e, Exclusion::Suspected { .. }));
                    if passing {
                        Slot::Connecting
                    } else {
                        Slot::Failed
                    }
                }
                _ => {
                    snapshot.connecting += 1;
                    Slot::Connecting
                }
            };
            if let Some(id) = &managed.shared.instance {
                snapshot
                    .instances
                    .entry(id.clone())
                    .and_modify(|s| {
                        if slot.rank() > s.rank() {
                            *s = slot;
                        }
                    })
                    .or_insert(slot);
            }
        }
        snapshot.picker = self.picker_for(&snapshot.ready);
        self.shared.snapshot.store(Arc::new(snapshot));
        self.shared.changed.send_modify(|version| *version += 1);
    }

    /// The policy's picker over `ready`: the current one if the endpoints
    /// are the same ones in the same order (a reconnect changes only a
    /// sender), else a new one.
    fn picker_for(&mut self, ready: &[ReadyEndpoint]) -> Arc<dyn Picker> {
        let same = self.picked_from.len() == ready.len()
            && self
                .picked_from
                .iter()
                .zip(ready)
                .all(|(a, b)| Arc::ptr_eq(a, &b.shared));
        if !same {
            let policy = &self.shared.config.policy.0;
            let started = Instant::now();
            self.picker = Arc::from(policy.build(ready));
            self.picked_from = ready.iter().map(|e| e.shared.clone()).collect();
            tracing::debug!(
                balancer = %self.shared.config.name,
                policy = policy.name(),
                endpoints = ready.len(),
                took = ?started.elapsed(),
                "picker built"
            );
        }
        self.picker.clone()
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
