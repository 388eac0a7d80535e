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
    sync::{Notify, mpsc, oneshot},
    task::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    connection::{self, Sender, StateEvent},
    connectivity::ConnectivityState,
    policy::{Candidate, NoEndpoint, Picker, Scope},
    shared::Shared,
    snapshot::{Slot, Snapshot},
    state::{EndpointShared, Exclusion},
};

struct Managed {
    generation: u64,
    shared: Arc<EndpointShared>,
    state: ConnectivityState,
    sender: Option<Sender>,
    /// The connection's reasons not to pick it (suspected frozen, not
    /// serving).
    conn_excluded: Vec<Exclusion>,
    /// Outlier ejection in force.
    ejection: Option<Exclusion>,
    /// Ejections so far, less one per interval without one (gRFC A50).
    times_ejected: u32,
    task: JoinHandle<()>,
}

impl Managed {
    /// Every reason not to pick it.
    fn exclusions(&self) -> Vec<Exclusion> {
        self.conn_excluded
            .iter()
            .chain(self.ejection.iter())
            .cloned()
            .collect()
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
    /// Woken by an endpoint that reached its consecutive-failure limit.
    outlier_wake: Arc<Notify>,
    next_outlier_interval: Instant,
}

impl Owner {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let first_interval = shared
            .config
            .outlier
            .as_ref()
            .map_or(Duration::ZERO, |o| o.interval);
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
            outlier_wake: Arc::new(Notify::new()),
            next_outlier_interval: Instant::now() + first_interval,
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
            let outlier_at = self.next_outlier_check();
            let outlier_wake = self.outlier_wake.clone();
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
                () = outlier_wake.notified(), if outlier_at.is_some() => {
                    self.eject_consecutive();
                }
                () = sleep_until_some(outlier_at) => self.outlier_tick(),
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
        for managed in self.endpoints.values() {
            self.shared.metrics.removed(managed.state);
        }
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
        let counters = crate::outlier::Counters::new(
            self.shared.config.outlier.as_ref(),
            self.outlier_wake.clone(),
        );
        let metrics = self.shared.metrics.endpoint(endpoint.addr());
        let shared = match EndpointShared::new(
            key.clone(),
            endpoint.clone(),
            counters,
            metrics,
            self.shared.in_flight.clone(),
        ) {
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
            shared.write_gate(),
            self.events_tx.clone(),
        ));
        let managed = Managed {
            generation,
            shared,
            state: ConnectivityState::Idle,
            sender: None,
            conn_excluded: Vec::new(),
            ejection: None,
            times_ejected: 0,
            task,
        };
        self.shared.metrics.added();
        if let Some(replaced) = self.endpoints.insert(key, managed) {
            self.shared.metrics.removed(replaced.state);
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(gone) = self.endpoints.remove(key) {
            self.shared.metrics.removed(gone.state);
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
        self.shared
            .metrics
            .transition(from, event.state, event.error.as_deref());
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
                    if matches!(why, Exclusion::Suspected { .. }) {
                        // The connection task reports each probe it sends.
                        managed
                            .shared
                            .probes
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
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

    /// When the outlier logic next needs to run: the next interval or the
    /// end of the earliest ejection.
    fn next_outlier_check(&self) -> Option<Instant> {
        self.shared.config.outlier.as_ref()?;
        let ends = self.endpoints.values().filter_map(|m| match &m.ejection {
            Some(Exclusion::Ejected { until, .. }) => Some(*until),
            _ => None,
        });
        Some(ends.fold(self.next_outlier_interval, Instant::min))
    }

    fn ejected_count(&self) -> usize {
        self.endpoints
            .values()
            .filter(|m| m.ejection.is_some())
            .count()
    }

    /// Ejects `key` if the share allows; returns whether it did.
    fn eject(&mut self, key: &str, reason: String) -> bool {
        let Some(config) = self.shared.config.outlier.clone() else {
            return false;
        };
        let n = self.endpoints.len();
        if self.ejected_count() >= config.max_ejected(n) {
            tracing::info!(
                balancer = %self.shared.config.name,
                key,
                "would eject ({reason}) but {} of {n} endpoints are ejected already (max share {})",
                self.ejected_count(),
                config.max_ejected_share
            );
            return false;
        }
        let Some(managed) = self.endpoints.get_mut(key) else {
            return false;
        };
        managed.times_ejected += 1;
        let time = config.ejection_time(managed.times_ejected);
        let ejection = Exclusion::Ejected {
            until: Instant::now() + time,
            times: managed.times_ejected,
            reason,
        };
        tracing::warn!(
            balancer = %self.shared.config.name,
            endpoint = %managed.shared.endpoint,
            "endpoint not picked: {ejection}"
        );
        managed.ejection = Some(ejection);
        managed.shared.outlier.reset_consecutive();
        managed.shared.set_excluded(managed.exclusions());
        self.shared
            .ejections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.shared.metrics.ejections.increment(1);
        self.dirty = true;
        true
    }

    /// Endpoints that reached their consecutive-failure limit.
    fn eject_consecutive(&mut self) {
        let due: Vec<(String, u32)> = self
            .endpoints
            .iter()
            .filter(|(_, m)| m.ejection.is_none())
            .filter_map(|(key, m)| {
                let limit = m.shared.outlier.consecutive_limit();
                let row = m.shared.outlier.consecutive();
                (limit > 0 && row >= limit).then(|| (key.clone(), row))
            })
            .collect();
        for (key, row) in due {
            self.eject(&key, format!("{row} failed calls in a row"));
        }
    }

    /// Ends ejections whose time is up and, once per interval, compares
    /// failure rates.
    fn outlier_tick(&mut self) {
        let Some(config) = self.shared.config.outlier.clone() else {
            return;
        };
        let now = Instant::now();
        for managed in self.endpoints.values_mut() {
            if let Some(Exclusion::Ejected { until, .. }) = &managed.ejection
                && *until <= now
            {
                managed.ejection = None;
                managed.shared.outlier.reset_consecutive();
                managed.shared.set_excluded(managed.exclusions());
                tracing::info!(
                    balancer = %self.shared.config.name,
                    endpoint = %managed.shared.endpoint,
                    "ejection ended; endpoint picked again"
                );
                self.dirty = true;
            }
        }
        if now < self.next_outlier_interval {
            return;
        }
        self.next_outlier_interval = now + config.interval;
        let windows: Vec<(String, u64, u64)> = self
            .endpoints
            .iter()
            .map(|(key, m)| {
                let (calls, failures) = m.shared.outlier.take_window();
                (key.clone(), calls, failures)
            })
            .collect();
        let rate = |calls: u64, failures: u64| failures as f64 / calls.max(1) as f64;
        let mut candidates: Vec<(f64, String, u64, u64)> = Vec::new();
        for (key, calls, failures) in &windows {
            if *calls < config.min_calls || rate(*calls, *failures) < config.failure_rate {
                continue;
            }
            let others: Vec<f64> = windows
                .iter()
                .filter(|(k, c, _)| k != key && *c > 0)
                .map(|(_, c, f)| rate(*c, *f))
                .collect();
            let others_mean = others.iter().sum::<f64>() / others.len().max(1) as f64;
            // A failure everywhere is no outlier.
            if !others.is_empty() && others_mean < config.failure_rate {
                candidates.push((rate(*calls, *failures), key.clone(), *calls, *failures));
            }
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut ejected_now = std::collections::HashSet::new();
        for (rate, key, calls, failures) in candidates {
            let already = self
                .endpoints
                .get(&key)
                .is_some_and(|m| m.ejection.is_some());
            if !already
                && self.eject(
                    &key,
                    format!(
                        "{failures} of {calls} calls failed ({:.0} %) in the last {:.1?}",
                        rate * 100.0,
                        config.interval
                    ),
                )
            {
                ejected_now.insert(key);
            }
        }
        for (key, managed) in &mut self.endpoints {
            if managed.ejection.is_none() && !ejected_now.contains(key) {
                managed.times_ejected = managed.times_ejected.saturating_sub(1);
            }
        }
    }

    fn publish(&mut self) {
        self.dirty = false;
        self.last_publish = Instant::now();
        let all_scope = self.shared.config.policy.0.scope() == Scope::All;
        let mut snapshot = Snapshot {
            discovered: self.discovered,
            all_scope,
            ..Snapshot::default()
        };
        for managed in self.endpoints.values() {
            snapshot.all.push(managed.shared.clone());
            if all_scope {
                let ready = managed.state == ConnectivityState::Ready;
                snapshot.known.push(Candidate {
                    shared: managed.shared.clone(),
                    sender: managed.sender.clone().filter(|_| ready),
                    state: managed.state,
                    excluded: ready && !managed.exclusions().is_empty(),
                });
            }
            let slot = match (managed.state, &managed.sender) {
                (ConnectivityState::Ready, Some(sender)) if managed.exclusions().is_empty() => {
                    snapshot
                        .ready
                        .push(Candidate::ready(managed.shared.clone(), sender.clone()));
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
        // Sorted by key, so the picker's indexes mean the same endpoints
        // for as long as the set is the same, whatever their states.
        snapshot
            .known
            .sort_by(|a, b| a.shared.key.cmp(&b.shared.key));
        snapshot.picker = self.picker_for(snapshot.candidates());
        self.shared.snapshot.store(Arc::new(snapshot));
        self.shared.changed.send_modify(|version| *version += 1);
    }

    /// The policy's picker over `ready`: the current one if the endpoints
    /// are the same ones in the same order (a reconnect changes only a
    /// sender; under `Scope::All` a change of state changes nothing), else
    /// a new one.
    fn picker_for(&mut self, ready: &[Candidate]) -> Arc<dyn Picker> {
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
