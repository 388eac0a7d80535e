//! The background task that owns a registration: keepalive, watching the own
//! key, re-registration with backoff, metadata updates, deregistration.

use std::time::Duration;

use backoff::Backoff;
use etcd::Members;
use etcd::{EtcdTls, Secured, describe, diagnose};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, LeaseKeepAliveResponse,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp, WatchOptions, WatchResponse,
    WatchStream,
};
use serde_json::Value;
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout, timeout_at},
};
use tracing::{debug, info, warn};

use crate::{Error, ErrorKind, Registered, State, registration::Config};

/// A session that lived less than this and was lost again counts as a flap:
/// the next re-registration waits (with growing backoff) instead of retrying
/// at once, so two writers fighting over one key do not spin.
const STABLE: Duration = Duration::from_secs(1);

/// Requests from the [`Registered`] handle to its task.
#[derive(Debug)]
pub(crate) enum Command {
    UpdateMetadata(Value, oneshot::Sender<Result<(), Error>>),
    Deregister(oneshot::Sender<Result<(), Error>>),
}

/// How the first registration gets its client.
pub(crate) enum Connect {
    Ready(Box<Client>),
    Endpoints {
        endpoints: Vec<String>,
        options: Option<Box<ConnectOptions>>,
        tls: Option<EtcdTls>,
    },
}

/// First registration, retried until the connect timeout; then the task.
pub(crate) async fn register(
    config: Config,
    connect: Connect,
    endpoints: Option<String>,
    secured: Secured,
) -> Result<Registered, Error> {
    let started = Instant::now();
    let deadline = started + config.connect_timeout;
    let at = endpoints.map(|e| format!(" at {e}")).unwrap_or_default();
    let doing = format!("cannot register {} in etcd{at}", config.key);
    let value = etcd::encode_value(&config.address, &config.metadata);
    let backoff = Backoff::ETCD;
    let mut members: Option<Members> = None;
    let mut client = match &connect {
        Connect::Ready(c) => Some((**c).clone()),
        Connect::Endpoints { .. } => None,
    };
    let mut last_error: Option<String> = None;
    let mut attempt = 0;
    loop {
        let result = timeout_at(deadline, async {
            let mut c = match (&client, &connect) {
                (Some(c), _) => c.clone(),
                (
                    None,
                    Connect::Endpoints {
                        endpoints,
                        options,
                        tls,
                    },
                ) => etcd::connect(
                    endpoints,
                    tls.as_ref(),
                    options.as_deref().cloned(),
                    config.request_timeout.min(config.connect_timeout),
                )
                .await
                .map(|connected| {
                    members = Some(connected.members);
                    connected.client
                })
                .map_err(|e| (true, e))?,
                (None, Connect::Ready(c)) => (**c).clone(),
            };
            client = Some(c.clone());
            establish(&mut c, &config.key, &value, config.ttl_secs)
                .await
                .map(|s| (c, s))
                .map_err(|e| (false, e))
        })
        .await;
        match result {
            Ok(Ok((client, session))) => {
                info!(
                    key = %config.key,
                    lease = session.lease,
                    ttl_s = config.ttl_secs,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "registered"
                );
                return Ok(spawn(config, client, members, value, session));
            }
            Ok(Err((_, e))) if diagnose(&describe(&e), secured).is_some_and(|d| d.fatal) => {
                let text = describe(&e);
                let hint = diagnose(&text, secured).map_or("", |d| d.hint);
                return Err(Error::new(
                    ErrorKind::Security,
                    format!("{doing}: {text}: {hint}"),
                ));
            }
            Ok(Err((connecting, e))) if !etcd::is_transient(&e) => {
                return Err(if connecting {
                    Error::invalid(format!("{doing}: invalid endpoint: {}", describe(&e)))
                } else {
                    Error::etcd(&doing, &e)
                });
            }
            Ok(Err((_, e))) => {
                debug!(key = %config.key, error = %describe(&e), attempt, "registration attempt failed");
                let text = describe(&e);
                last_error = Some(match diagnose(&text, secured) {
                    Some(d) => format!("{text}: {}", d.hint),
                    None => text,
                });
            }
            Err(_) => break,
        }
        let wake = Instant::now() + backoff.delay(attempt);
        attempt += 1;
        // As in `reconnect`: a member connected again ends the wait at once.
        let no_member_ready = members.as_ref().and_then(Members::ready) == Some(0);
        let back = etcd::retry_wait(members.as_ref(), wake.min(deadline), no_member_ready).await;
        if !back && wake >= deadline {
            // No time for another attempt: report at the deadline, as promised.
            break;
        }
    }
    let cause = last_error.unwrap_or_else(|| "no answer".to_owned());
    Err(Error::new(
        ErrorKind::Unavailable,
        format!(
            "{doing} within {:?} (connect timeout): {cause}",
            config.connect_timeout
        ),
    ))
}

fn spawn(
    config: Config,
    client: Client,
    members: Option<Members>,
    value: Vec<u8>,
    session: Session,
) -> Registered {
    let (state_tx, state_rx) = watch::channel(State::Registered);
    let (commands_tx, commands_rx) = mpsc::channel(8);
    let key = config.key.clone();
    let task = Task {
        client,
        key: config.key,
        address: config.address,
        metadata: config.metadata,
        value,
        ttl: Duration::from_secs(config.ttl_secs.unsigned_abs()),
        ttl_secs: config.ttl_secs,
        interval: config.keepalive_interval,
        request_timeout: config.request_timeout,
        state: state_tx,
        commands: commands_rx,
        backoff: Backoff::ETCD,
        flaps: 0,
        stale_lease: None,
        members,
    };
    record_state(&key, State::Registered);
    // Registered now, so the family shows 0 before the first loss.
    metrics::counter!("registry.reregistrations", "key" => key.clone()).absolute(0);
    tokio::spawn(task.run(session));
    Registered::new(key, commands_tx, state_rx)
}

/// One lease with the key put under it, its keepalive and a watch of the key.
struct Session {
    lease: i64,
    /// Revision of our last write of the key, or the last event of it seen;
    /// older events are ignored, and a re-opened watch starts after it.
    revision: i64,
    /// `None` while the streams are being re-opened on another member.
    streams: Option<Streams>,
    last_ack: Instant,
    since: Instant,
    last_restore: Option<Instant>,
}

/// The two streams of a session, on one etcd member.
struct Streams {
    keeper: LeaseKeeper,
    keepalive: LeaseKeepAliveStream,
    watch: WatchStream,
}

/// Opens the keepalive stream of `lease` (etcd-client sends the first
/// keepalive and waits for its answer) and a watch of `key` after
/// `revision`.
async fn open_streams(
    client: &mut Client,
    key: &str,
    lease: i64,
    revision: i64,
) -> Result<Streams, etcd_client::Error> {
    let (keeper, keepalive) = client.lease_keep_alive(lease).await?;
    let watch = client
        .watch(
            key,
            Some(WatchOptions::new().with_start_revision(revision + 1)),
        )
        .await?;
    Ok(Streams {
        keeper,
        keepalive,
        watch,
    })
}

/// Grants a lease, puts the key with it, opens its keepalive stream and a
/// watch of the key starting right after our put.
async fn establish(
    client: &mut Client,
    key: &str,
    value: &[u8],
    ttl_secs: i64,
) -> Result<Session, etcd_client::Error> {
    let lease = client.lease_grant(ttl_secs, None).await?.id();
    let rest = async {
        let put = client
            .put(key, value, Some(PutOptions::new().with_lease(lease)))
            .await?;
        let revision = put.header().map_or(0, |h| h.revision());
        let streams = open_streams(client, key, lease, revision).await?;
        let now = Instant::now();
        Ok(Session {
            lease,
            revision,
            streams: Some(streams),
            last_ack: now,
            since: now,
            last_restore: None,
        })
    };
    match rest.await {
        Ok(s) => Ok(s),
        Err(e) => {
            // Best effort: do not leave a key behind that nobody keeps alive
            // (it would expire anyway, after the TTL).
            let _ = timeout(Duration::from_millis(500), client.lease_revoke(lease)).await;
            Err(e)
        }
    }
}

/// Between attempts to re-open the streams: 50 ms, doubling, at most 800 ms,
/// no jitter (the lease's TTL bounds the whole). The first attempt is
/// immediate: another member is usually ready.
const RESUME_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(50),
    factor: 2.0,
    max: Duration::from_millis(800),
    jitter: 0.0,
};

/// The next keepalive answer or watch response; pending while the streams
/// are re-opened.
async fn next_message(streams: &mut Option<Streams>) -> Event {
    match streams {
        Some(s) => tokio::select! {
            r = s.keepalive.message() => Event::KeepAlive(r),
            r = s.watch.message() => Event::Watch(r),
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Why a session ended.
enum End {
    /// Re-register: the lease, the key or a stream is gone.
    Lost(String),
    /// Deregistered or dropped: the task ends.
    Stop,
}

enum Event {
    Command(Option<Command>),
    Tick,
    KeepAlive(Result<Option<LeaseKeepAliveResponse>, etcd_client::Error>),
    Watch(Result<Option<WatchResponse>, etcd_client::Error>),
    Silent,
    Resume,
}

/// While the streams are being re-opened: since when, why, and how many
/// attempts failed.
struct Broken {
    since: Instant,
    reason: String,
    failures: u32,
    retry_at: Option<Instant>,
}

struct Task {
    client: Client,
    key: String,
    address: String,
    metadata: Value,
    /// `metadata` encoded with the address, what we put.
    value: Vec<u8>,
    ttl: Duration,
    ttl_secs: i64,
    interval: Duration,
    request_timeout: Duration,
    state: watch::Sender<State>,
    commands: mpsc::Receiver<Command>,
    backoff: Backoff,
    /// Sessions in a row that were lost within [`STABLE`].
    flaps: u32,
    /// The lease of the last lost session, revoked once re-registered.
    stale_lease: Option<i64>,
    /// The members' connection states, to say in logs which one failed
    /// (`None` for a client given by the caller).
    members: Option<Members>,
}

impl Task {
    async fn run(mut self, first: Session) {
        let mut session = first;
        let mut restored = false;
        loop {
            let reason = match self.live(&mut session).await {
                End::Stop => return,
                End::Lost(reason) => reason,
            };
            // Only a re-registration that did not hold counts as a flap.
            self.flaps = if restored && session.since.elapsed() < STABLE {
                self.flaps.saturating_add(1)
            } else {
                0
            };
            self.stale_lease = Some(session.lease);
            // Close the old streams before opening new ones.
            drop(session);
            session = match self.reconnect(&reason).await {
                Some(s) => s,
                None => return,
            };
            restored = true;
        }
    }

    fn set_state(&self, state: State) {
        let changed = self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
        if changed {
            record_state(&self.key, state);
            match state {
                State::Registered => info!(key = %self.key, state = ?state, "registration state"),
                State::Reconnecting => warn!(key = %self.key, state = ?state, "registration state"),
                State::Stopped => info!(key = %self.key, state = ?state, "registration state"),
            }
        }
    }

    fn describe_members(&self) -> String {
        self.members
            .as_ref()
            .map_or_else(|| "(caller's client)".to_owned(), Members::describe)
    }

    fn set_metadata(&mut self, metadata: Value) {
        self.value = etcd::encode_value(&self.address, &metadata);
        self.metadata = metadata;
    }

    /// Keeps `s` alive until it is lost or the registration stops.
    ///
    /// A broken keepalive or watch stream (its member died, or lost its
    /// leader and canceled it) does not lose the registration: both streams
    /// are re-opened at once on another member, on the same lease, the watch
    /// from the last revision seen. Only a lease that is gone, or no
    /// keepalive answer for a whole TTL, ends the session.
    async fn live(&mut self, s: &mut Session) -> End {
        let mut ticker = interval_at(Instant::now() + self.interval, self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut broken: Option<Broken> = None;
        loop {
            let retry_at = broken.as_ref().and_then(|b| b.retry_at);
            let event = tokio::select! {
                cmd = self.commands.recv() => Event::Command(cmd),
                _ = ticker.tick() => Event::Tick,
                e = next_message(&mut s.streams) => e,
                _ = sleep_until(s.last_ack + self.ttl) => Event::Silent,
                _ = sleep_until_some(retry_at) => Event::Resume,
            };
            let resume_due = matches!(event, Event::Resume);
            let lost = match event {
                Event::Command(None) => {
                    self.dropped();
                    return End::Stop;
                }
                Event::Command(Some(Command::Deregister(reply))) => {
                    let result = self.remove(Some(s.lease)).await;
                    self.stopped(&result);
                    let _ = reply.send(result);
                    return End::Stop;
                }
                Event::Command(Some(Command::UpdateMetadata(metadata, reply))) => {
                    let (result, end) = self.update(s, metadata).await;
                    let _ = reply.send(result);
                    if let Some(end) = end {
                        return end;
                    }
                    None
                }
                Event::Tick => match s.streams.as_mut() {
                    Some(streams) => streams
                        .keeper
                        .keep_alive()
                        .await
                        .err()
                        .map(|e| format!("keepalive request failed: {}", describe(&e))),
                    None => None,
                },
                Event::KeepAlive(Ok(Some(r))) => {
                    if r.ttl() <= 0 {
                        return End::Lost(format!("lease {} expired or was revoked", s.lease));
                    }
                    s.last_ack = Instant::now();
                    None
                }
                Event::KeepAlive(Ok(None)) => Some("etcd closed the keepalive stream".to_owned()),
                Event::KeepAlive(Err(e)) => {
                    Some(format!("keepalive stream failed: {}", describe(&e)))
                }
                Event::Watch(Ok(Some(r))) if r.canceled() => Some(format!(
                    "etcd canceled the watch of the key: {}",
                    r.cancel_reason()
                )),
                Event::Watch(Ok(Some(r))) => {
                    if let Some(end) = self.on_watch(s, &r).await {
                        return end;
                    }
                    None
                }
                Event::Watch(Ok(None)) => Some("etcd closed the watch stream".to_owned()),
                Event::Watch(Err(e)) => Some(format!("watch stream failed: {}", describe(&e))),
                Event::Silent => {
                    return End::Lost(match broken {
                        Some(b) => format!(
                            "no etcd member kept the lease alive for {:?} (the TTL): {}",
                            self.ttl, b.reason
                        ),
                        None => format!("no keepalive answer for {:?} (the TTL)", self.ttl),
                    });
                }
                Event::Resume => None,
            };
            let attempt = resume_due || lost.is_some();
            if let Some(reason) = lost {
                // Close the broken streams before opening new ones.
                s.streams = None;
                if broken.is_none() {
                    info!(key = %self.key, lease = s.lease, %reason, members = %self.describe_members(), "etcd stream lost; re-opening it on another member");
                    broken = Some(Broken {
                        since: Instant::now(),
                        reason,
                        failures: 0,
                        retry_at: None,
                    });
                }
            }
            if attempt
                && s.streams.is_none()
                && let Some(b) = broken.as_mut()
            {
                match self.resume(s).await {
                    Ok(()) => {
                        info!(
                            key = %self.key,
                            lease = s.lease,
                            attempts = b.failures + 1,
                            took_ms = b.since.elapsed().as_millis() as u64,
                            "keepalive and watch re-opened"
                        );
                        broken = None;
                    }
                    Err(e) if etcd::is_lease_not_found(&e) => {
                        return End::Lost(format!("lease {} is gone", s.lease));
                    }
                    Err(e) => {
                        let error = describe(&e);
                        if b.failures == 0 {
                            // Logged once per outage: with no member that
                            // has a leader this repeats until the TTL.
                            warn!(key = %self.key, error = %error, members = %self.describe_members(), "cannot re-open the etcd streams yet; retrying until the lease would expire");
                        } else {
                            debug!(key = %self.key, error = %error, attempt = b.failures + 1, "re-opening the etcd streams failed");
                        }
                        b.reason = error;
                        let delay = RESUME_BACKOFF.delay(b.failures);
                        b.failures += 1;
                        b.retry_at = Some(Instant::now() + delay);
                    }
                }
            }
        }
    }

    /// Re-opens the keepalive of the session's lease and the watch of the
    /// key after the last revision seen, on whichever member the client
    /// picks (a ready one).
    async fn resume(&mut self, s: &mut Session) -> Result<(), etcd_client::Error> {
        let open = open_streams(&mut self.client, &self.key, s.lease, s.revision);
        let streams = timeout(self.request_timeout, open).await.map_err(|_| {
            etcd_client::Error::WatchError(format!("no answer within {:?}", self.request_timeout))
        })??;
        s.streams = Some(streams);
        // The first keepalive was answered: the lease is alive.
        s.last_ack = Instant::now();
        Ok(())
    }

    async fn on_watch(&mut self, s: &mut Session, r: &WatchResponse) -> Option<End> {
        if r.canceled() {
            return Some(End::Lost(format!(
                "etcd canceled the watch of the key: {}",
                r.cancel_reason()
            )));
        }
        let mut lost = None;
        for event in r.events() {
            let Some(kv) = event.kv() else { continue };
            if kv.mod_revision() <= s.revision {
                continue;
            }
            match event.event_type() {
                EventType::Delete => lost = Some("deleted"),
                EventType::Put if kv.lease() == s.lease && kv.value() == self.value => {
                    s.revision = kv.mod_revision();
                    lost = None;
                }
                EventType::Put => lost = Some("overwritten"),
            }
        }
        let what = lost?;
        warn!(key = %self.key, "key {what} by someone else; putting it back");
        self.restore(s, what).await
    }

    /// Puts the key back with the session's lease.
    async fn restore(&mut self, s: &mut Session, what: &str) -> Option<End> {
        if s.last_restore.is_some_and(|t| t.elapsed() < STABLE) {
            return Some(End::Lost(format!("key {what} again within {STABLE:?}")));
        }
        s.last_restore = Some(Instant::now());
        let put = self.client.put(
            self.key.as_str(),
            self.value.as_slice(),
            Some(PutOptions::new().with_lease(s.lease)),
        );
        match timeout(self.request_timeout, put).await {
            Ok(Ok(r)) => {
                s.revision = r.header().map_or(s.revision, |h| h.revision());
                info!(key = %self.key, lease = s.lease, "key restored");
                None
            }
            Ok(Err(e)) if etcd::is_lease_not_found(&e) => Some(End::Lost(format!(
                "key {what} and lease {} is gone",
                s.lease
            ))),
            Ok(Err(e)) => Some(End::Lost(format!(
                "cannot put the {what} key back: {}",
                describe(&e)
            ))),
            Err(_) => Some(End::Lost(format!(
                "cannot put the {what} key back: no answer within {:?}",
                self.request_timeout
            ))),
        }
    }

    /// Writes new metadata in one transaction that requires the key to still
    /// carry our lease; if it does not, the key is put back with the new value.
    async fn update(
        &mut self,
        s: &mut Session,
        metadata: Value,
    ) -> (Result<(), Error>, Option<End>) {
        self.set_metadata(metadata);
        let doing = format!("cannot update the metadata of {}", self.key);
        let txn = Txn::new()
            .when([Compare::lease(self.key.as_str(), CompareOp::Equal, s.lease)])
            .and_then([TxnOp::put(
                self.key.as_str(),
                self.value.as_slice(),
                Some(PutOptions::new().with_lease(s.lease)),
            )]);
        match timeout(self.request_timeout, self.client.txn(txn)).await {
            Ok(Ok(r)) if r.succeeded() => {
                s.revision = r.header().map_or(s.revision, |h| h.revision());
                info!(key = %self.key, metadata = %self.metadata, "metadata updated");
                (Ok(()), None)
            }
            Ok(Ok(_)) => match self.restore(s, "missing").await {
                None => (Ok(()), None),
                Some(end) => (
                    Err(Error::new(
                        ErrorKind::Unavailable,
                        format!(
                            "{doing}: the key was gone; the new metadata will be written when \
                             the registration is restored"
                        ),
                    )),
                    Some(end),
                ),
            },
            Ok(Err(e)) => (Err(Error::etcd(&doing, &e)), None),
            Err(_) => (Err(Error::timeout(&doing, self.request_timeout)), None),
        }
    }

    /// Re-grants and re-puts with backoff until it works or the registration
    /// stops (then `None`).
    async fn reconnect(&mut self, reason: &str) -> Option<Session> {
        warn!(key = %self.key, reason, "registration lost; re-registering");
        self.set_state(State::Reconnecting);
        let lost_at = Instant::now();
        let mut next: Option<u32> = self.flaps.checked_sub(1);
        let mut attempts = 0u32;
        // Set when the last attempt failed with no member ready: then a
        // member coming back (its own reconnect backoff is at most 2 s) ends
        // the wait at once, so the two backoffs do not add up.
        let mut no_member_ready = false;
        let members = self.members.clone();
        loop {
            let delay = next.map_or(Duration::ZERO, |n| self.backoff.delay(n));
            let wake = Instant::now() + delay;
            loop {
                tokio::select! {
                    cmd = self.commands.recv() => match cmd {
                        None => {
                            self.dropped();
                            return None;
                        }
                        Some(Command::Deregister(reply)) => {
                            let result = self.remove(self.stale_lease).await;
                            self.stopped(&result);
                            let _ = reply.send(result);
                            return None;
                        }
                        Some(Command::UpdateMetadata(metadata, reply)) => {
                            self.set_metadata(metadata);
                            let _ = reply.send(Err(Error::new(
                                ErrorKind::Unavailable,
                                format!(
                                    "cannot update the metadata of {} now: the registration is \
                                     being restored; the new metadata will be written then",
                                    self.key
                                ),
                            )));
                        }
                    },
                    back = etcd::retry_wait(members.as_ref(), wake, no_member_ready) => {
                        if back {
                            debug!(key = %self.key, members = %self.describe_members(), "an etcd member is ready again; re-registering now");
                        }
                        break;
                    }
                }
            }
            attempts += 1;
            let attempt = establish(&mut self.client, &self.key, &self.value, self.ttl_secs);
            let error = match timeout(self.request_timeout, attempt).await {
                Ok(Ok(session)) => {
                    info!(
                        key = %self.key,
                        lease = session.lease,
                        attempts,
                        elapsed_ms = lost_at.elapsed().as_millis() as u64,
                        "re-registered"
                    );
                    metrics::counter!("registry.reregistrations", "key" => self.key.clone())
                        .increment(1);
                    if let Some(old) = self.stale_lease.take()
                        && old != session.lease
                    {
                        // The key moved to the new lease; the old one (kept by
                        // an etcd restart) would otherwise linger for a TTL.
                        let _ = timeout(self.request_timeout, self.client.lease_revoke(old)).await;
                    }
                    self.set_state(State::Registered);
                    return Some(session);
                }
                Ok(Err(e)) => describe(&e),
                Err(_) => format!("no answer within {:?}", self.request_timeout),
            };
            no_member_ready = members.as_ref().and_then(Members::ready) == Some(0);
            let n = next.map_or(0, |n| n.saturating_add(1));
            next = Some(n);
            if self.backoff.is_capped(n) {
                warn!(key = %self.key, error = %error, attempts, "re-registration attempt failed; retrying");
            } else {
                debug!(key = %self.key, error = %error, attempts, "re-registration attempt failed; retrying");
            }
        }
    }

    /// Deletes the key if it carries `lease`, then revokes `lease`; both
    /// are retried (each retry goes to the next ready member) until they
    /// succeed or the request timeout, the shutdown budget, is spent.
    async fn remove(&mut self, lease: Option<i64>) -> Result<(), Error> {
        let Some(lease) = lease else { return Ok(()) };
        let doing = format!("cannot deregister {}", self.key);
        let deadline = Instant::now() + self.request_timeout;
        let mut deleted = false;
        let mut attempt = 0u32;
        loop {
            let step = if deleted {
                "revoking the lease"
            } else {
                "deleting the key"
            };
            let result = timeout_at(deadline, async {
                if !deleted {
                    let txn = Txn::new()
                        .when([Compare::lease(self.key.as_str(), CompareOp::Equal, lease)])
                        .and_then([TxnOp::delete(self.key.as_str(), None)]);
                    self.client.txn(txn).await?;
                    deleted = true;
                }
                match self.client.lease_revoke(lease).await {
                    Err(e) if !etcd::is_lease_not_found(&e) => Err(e),
                    _ => Ok(()),
                }
            })
            .await;
            let e = match result {
                Ok(Ok(())) => {
                    if attempt > 0 {
                        info!(key = %self.key, attempts = attempt + 1, "deregistration reached a live etcd member");
                    }
                    return Ok(());
                }
                Ok(Err(e)) => e,
                Err(_) => return Err(Error::timeout(&doing, self.request_timeout)),
            };
            if !etcd::is_transient(&e) {
                return Err(Error::etcd(&doing, &e));
            }
            attempt += 1;
            debug!(key = %self.key, step, error = %describe(&e), attempt, "deregistration attempt failed; retrying on another member");
            // The next attempt goes to the next ready member; pause a
            // little only once every member has been tried.
            let pause = if attempt.is_multiple_of(3) {
                Duration::from_millis(50)
            } else {
                Duration::ZERO
            };
            if Instant::now() + pause >= deadline {
                return Err(Error::etcd(&doing, &e));
            }
            sleep_until(Instant::now() + pause).await;
        }
    }

    fn stopped(&self, result: &Result<(), Error>) {
        match result {
            Ok(()) => info!(key = %self.key, "deregistered: key deleted, lease revoked"),
            Err(e) => {
                warn!(key = %self.key, error = %e, "deregistration incomplete; the key expires with its lease")
            }
        }
        self.set_state(State::Stopped);
    }

    fn dropped(&self) {
        warn!(
            key = %self.key,
            ttl = ?self.ttl,
            "Registered dropped without deregister(): keepalive stopped, the key expires with its lease"
        );
        self.set_state(State::Stopped);
    }
}

/// `registry.state{key, state}`: 1 for the current state, 0 for the others
/// (see `docs/metrics.md`).
fn record_state(key: &str, current: State) {
    for (state, name) in [
        (State::Registered, "registered"),
        (State::Reconnecting, "reconnecting"),
        (State::Stopped, "stopped"),
    ] {
        metrics::gauge!("registry.state", "key" => key.to_owned(), "state" => name)
            .set(if state == current { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_resume_waits_50ms_doubling_to_800ms_and_re_registration_follows_the_etcd_preset() {
        let ms: Vec<u128> = (0..7)
            .map(|n| RESUME_BACKOFF.delay(n).as_millis())
            .collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 800, 800]);
        assert_eq!(Backoff::ETCD.nominal(0), Duration::from_millis(100));
        assert!(Backoff::ETCD.is_capped(6));
    }
}
