//! Choosing the endpoint of a request: sticky, the policy's picker, and
//! waiting for one (bounded by the request's deadline).

use std::{sync::atomic::Ordering, time::Duration};

use tokio::time::Instant;
use tonic::Status;

use crate::{
    Fallback, Sticky,
    error::{ErrorKind, status},
    policy::{Candidate, PickRequest},
    shared::Shared,
    snapshot::{Slot, Snapshot},
};

/// The outcome of one pick attempt on a snapshot; borrows from it, so a
/// pick clones nothing until the caller decides to.
pub(crate) enum Picked<'a> {
    Ready(&'a Candidate),
    Wait(Waiting),
    Fail(Status),
}

/// Why a request is waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waiting {
    NoReady,
    StickyConnecting,
    /// The policy chose an endpoint that is connecting (ring hash: the
    /// key's owner).
    PolicyConnecting,
}

impl Shared {
    /// Picks a READY endpoint, waiting for one if needed.
    pub(crate) async fn pick(
        &self,
        request: &PickRequest<'_>,
        sticky: Option<&Sticky>,
        deadline: Option<Duration>,
    ) -> Result<Candidate, Status> {
        // Fast path: one snapshot load, the picker (one atomic add for round
        // robin), no allocation.
        let fast = match self.try_pick(&self.snapshot.load(), request, sticky, false) {
            Picked::Ready(endpoint) => Some(endpoint.clone()),
            _ => None,
        };
        match fast {
            Some(endpoint) => Ok(endpoint),
            // Waiting (its timers and the watch) is boxed: inline, it would
            // make every call's future 400 bytes larger to allocate and move.
            None => Box::pin(self.pick_slow(request, sticky, deadline)).await,
        }
    }

    async fn pick_slow(
        &self,
        request: &PickRequest<'_>,
        sticky: Option<&Sticky>,
        deadline: Option<Duration>,
    ) -> Result<Candidate, Status> {
        let started = Instant::now();
        // Subscribe before looking, so no change is missed in between.
        let mut changes = self.changed.subscribe();
        let deadline_at = deadline.map(|d| started + d);
        let limit_at = self.config.ready_timeout.map(|d| started + d);
        let sticky_until = started + self.config.sticky_wait;
        loop {
            let sticky_expired = Instant::now() >= sticky_until;
            let request = request.with_connecting_wait_over(sticky_expired);
            let waiting =
                match self.try_pick(&self.snapshot.load(), &request, sticky, sticky_expired) {
                    Picked::Ready(endpoint) => return Ok(endpoint.clone()),
                    Picked::Fail(status) => return Err(status),
                    Picked::Wait(waiting) => waiting,
                };
            if self.config.fail_fast && waiting == Waiting::NoReady {
                return Err(status(
                    ErrorKind::NoReadyEndpoint,
                    self.describe(waiting, sticky, None),
                ));
            }
            let mut wake = earliest(deadline_at, limit_at);
            if matches!(
                waiting,
                Waiting::StickyConnecting | Waiting::PolicyConnecting
            ) && !sticky_expired
            {
                wake = earliest(wake, Some(sticky_until));
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Err(status(ErrorKind::Shutdown, format!("balancer for {} was shut down", self.config.name)));
                    }
                }
                () = sleep_until(wake) => {
                    let now = Instant::now();
                    let message = self.describe(waiting, sticky, Some(now - started));
                    if deadline_at.is_some_and(|d| now >= d) {
                        return Err(status(ErrorKind::DeadlineExceeded, message));
                    }
                    if limit_at.is_some_and(|d| now >= d) {
                        return Err(status(ErrorKind::NoReadyEndpoint, message));
                    }
                    // Otherwise the sticky wait is over: loop, and fall back.
                }
            }
        }
    }

    pub(crate) fn try_pick<'a>(
        &self,
        snapshot: &'a Snapshot,
        request: &PickRequest<'_>,
        sticky: Option<&Sticky>,
        sticky_expired: bool,
    ) -> Picked<'a> {
        if let Some(sticky) = sticky {
            let slot = snapshot.instances.get(sticky.key().as_ref()).copied();
            match slot {
                Some(Slot::Ready(i)) => {
                    let endpoint = &snapshot.ready[i];
                    if endpoint.pickable() {
                        return Picked::Ready(endpoint);
                    }
                    if !sticky_expired {
                        return Picked::Wait(Waiting::StickyConnecting);
                    }
                }
                Some(Slot::Connecting) if !sticky_expired => {
                    return Picked::Wait(Waiting::StickyConnecting);
                }
                // A fresh client: nothing discovered yet, so the instance may
                // well exist. Wait for the first endpoints before judging.
                None if !snapshot.discovered || snapshot.all.is_empty() => {
                    return Picked::Wait(Waiting::NoReady);
                }
                _ => {}
            }
            match self.config.fallback {
                Fallback::Fail => {
                    let why = match slot {
                        None => "unknown",
                        Some(Slot::Failed) => "in transient failure",
                        _ => "not ready",
                    };
                    return Picked::Fail(status(
                        ErrorKind::StickyUnavailable,
                        format!(
                            "sticky instance {:?} of {} is {why}",
                            sticky.id(),
                            self.config.name
                        ),
                    ));
                }
                Fallback::RoundRobin => {
                    let endpoint = match policy_pick(snapshot, request) {
                        Ok(endpoint) => endpoint,
                        Err(waiting) => return Picked::Wait(waiting),
                    };
                    self.sticky_fallbacks.fetch_add(1, Ordering::Relaxed);
                    self.metrics.sticky_fallbacks.increment(1);
                    tracing::debug!(
                        instance = sticky.id(),
                        endpoint = %endpoint.shared.endpoint,
                        policy = self.config.policy.0.name(),
                        "sticky instance unavailable; fell back to the policy"
                    );
                    return Picked::Ready(endpoint);
                }
            }
        }
        match policy_pick(snapshot, request) {
            Ok(endpoint) => Picked::Ready(endpoint),
            Err(waiting) => Picked::Wait(waiting),
        }
    }

    fn describe(
        &self,
        waiting: Waiting,
        sticky: Option<&Sticky>,
        waited: Option<Duration>,
    ) -> String {
        let snapshot = self.snapshot.load();
        let after = waited
            .map(|d| format!(" after {d:.1?}"))
            .unwrap_or_default();
        let name = &self.config.name;
        match (waiting, sticky) {
            (Waiting::StickyConnecting, Some(sticky)) => format!(
                "sticky instance {:?} of {name} still connecting{after}",
                sticky.id()
            ),
            (Waiting::PolicyConnecting, _) => format!(
                "the endpoint of {name} that {} chose for this request is still connecting{after}",
                self.config.policy.0.name()
            ),
            _ if !snapshot.discovered => format!("no endpoint discovered for {name}{after}"),
            _ => {
                let excluded = match snapshot.excluded {
                    0 => String::new(),
                    n => format!(", {n} not picked (suspected, ejected or not serving)"),
                };
                format!(
                    "no ready endpoint for {name}{after}: {} known, {} connecting, {} in transient failure{excluded}",
                    snapshot.all.len(),
                    snapshot.connecting,
                    snapshot.failed
                )
            }
        }
    }
}

/// The policy's pick in `snapshot`, or why the request must wait.
#[inline]
fn policy_pick<'a>(
    snapshot: &'a Snapshot,
    request: &PickRequest<'_>,
) -> Result<&'a Candidate, Waiting> {
    let candidates = snapshot.candidates();
    let i = snapshot
        .picker
        .pick(request, candidates)
        .ok_or(Waiting::NoReady)?;
    let n = candidates.len();
    if n == 0 {
        return Err(Waiting::NoReady);
    }
    let chosen = &candidates[i % n];
    if chosen.pickable() {
        return Ok(chosen);
    }
    if chosen.is_connecting() {
        return Err(Waiting::PolicyConnecting);
    }
    // A closed connection may still be in the snapshot for a moment after it
    // died (or, under `Scope::All`, the policy chose one in transient
    // failure): take the next one rather than fail the request.
    (1..=n)
        .map(|k| &candidates[(i % n).wrapping_add(k) % n])
        .find(|endpoint| endpoint.pickable())
        .ok_or(Waiting::NoReady)
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
