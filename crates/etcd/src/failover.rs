//! An etcd-client [`Client`] that fails over between etcd's members.
//!
//! One job: give the `registry` and the `resolver` a client whose requests go
//! only to members that are up. etcd-client's own channel is tonic's
//! `balance_channel`, which keeps picking a dead member (see the project's
//! NOTES: a SIGKILLed member cost a server 7 re-registration attempts over
//! 6 s). Here etcd-client's `raw-channel` feature
//! ([`Client::from_channel`]) takes our `balancer::Balancer` as its channel
//! instead, over a fixed set of endpoints, one per member:
//!
//! - only READY members (the member has spoken HTTP/2) are picked, round
//!   robin, so a new request or a re-opened stream goes to a live member at
//!   once; a member whose connection ended leaves the READY set within a
//!   millisecond or so of the kernel telling us;
//! - a request that provably was not sent (its connection died before it was
//!   written, or the member refused it unprocessed) is retried on another
//!   member;
//! - a dead member is reconnected in the background with a short backoff
//!   (100 ms, ×1.6, at most 2 s), so a restarted member is used again
//!   within about 2 s;
//! - every request carries etcd's require-leader metadata (`hasleader: true`,
//!   as Go's `clientv3.WithRequireLeader`): a member cut off from the quorum
//!   answers "etcdserver: no leader" at once and cancels its watches and
//!   keepalive streams, instead of leaving them silently stale;
//! - errors name the member: "connection to 127.0.0.1:2379 failed during the
//!   call: …", or, when no member is ready, each member's last error;
//! - a retry loop that failed for want of a ready member can wait with
//!   [`Members::retry_wait`], which ends as soon as a member is connected
//!   again, so the caller's backoff does not add to the member's.
//!
//! etcd-client still does what it does on top of any channel: it adds the
//! auth token (from [`ConnectOptions::with_user`]) and refreshes it. TLS is
//! the balancer's (rustls, from the [`EtcdTls`] settings); TLS settings
//! inside `ConnectOptions` are not used by this channel, and neither are its
//! keep-alive and timeout settings (those configure tonic's channel). With
//! `https://` endpoints but no `EtcdTls`, [`connect`] falls back to
//! etcd-client's own channel (no failover), since only the caller's
//! `ConnectOptions` know the TLS settings then.
//!
//! It knows the balancer only by its public API; the balancer knows nothing
//! of etcd.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), etcd_client::Error> {
//! let endpoints = ["http://127.0.0.1:2379", "http://127.0.0.1:22379", "http://127.0.0.1:32379"];
//! let connected = etcdlb_etcd::connect(&endpoints, None, None, Duration::from_secs(2)).await?;
//! let mut client = connected.client;
//! client.put("k", "v", None).await?;
//! println!("{}", connected.members.describe());
//! # Ok(())
//! # }
//! ```

use std::{fmt, time::Duration};

use crate::security::EtcdTls;
use balancer::{
    Adaptive, BackoffConfig, Balancer, Change, ConnectivityState, Endpoint, EndpointConfig,
    FreezeDetection, TlsConfig,
};
use etcd_client::{Channel, Client, ConnectOptions};
use tonic::Status;
use tower::{ServiceExt, util::BoxCloneSyncService};

/// A connected client and a view of its members' connections.
#[derive(Clone)]
pub struct Connected {
    /// The etcd client; cheap to clone, clones share the connections.
    pub client: Client,
    /// The members' connection states, for logs and tests.
    pub members: Members,
}

impl fmt::Debug for Connected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connected")
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

/// The connection state of each member, as the client sees it.
#[derive(Clone)]
pub struct Members {
    balancer: Option<Balancer>,
    endpoints: Vec<String>,
}

impl fmt::Debug for Members {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Members {
    /// How many members are connected and ready; `None` without failover
    /// (etcd-client's own channel, which does not tell).
    pub fn ready(&self) -> Option<usize> {
        self.balancer.as_ref().map(Balancer::ready_count)
    }

    /// Waits until `f` holds for the number of ready members (re-checked on
    /// every connection state change); returns at once without failover.
    pub async fn wait_for(&self, mut f: impl FnMut(usize) -> bool) {
        if let Some(b) = &self.balancer {
            b.wait_until(|all| {
                f(all
                    .iter()
                    .filter(|e| e.state == ConnectivityState::Ready)
                    .count())
            })
            .await;
        }
    }

    /// The member addresses that are ready now.
    pub fn ready_members(&self) -> Vec<String> {
        match &self.balancer {
            Some(b) => b
                .endpoints()
                .into_iter()
                .filter(|e| e.state == ConnectivityState::Ready)
                .map(|e| e.endpoint.addr().to_owned())
                .collect(),
            None => Vec::new(),
        }
    }

    /// Waits until `deadline`, or, when `no_member_was_ready`, until a
    /// member is ready, whichever comes first; true when a member ended the
    /// wait (at once if one is ready already).
    ///
    /// For a retry loop whose last attempt failed while [`ready`](Self::ready)
    /// was `Some(0)`: a member coming back (its own reconnect backoff is at
    /// most 2 s) cuts the caller's backoff short, so the two backoffs do not
    /// add up. Without failover, or with `no_member_was_ready` false, it
    /// just sleeps until `deadline`.
    ///
    /// ```no_run
    /// # async fn run(connected: etcdlb_etcd::Connected) {
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    ///
    /// let mut client = connected.client.clone();
    /// let mut delay = Duration::from_millis(100);
    /// while client.get("k", None).await.is_err() {
    ///     let none_ready = connected.members.ready() == Some(0);
    ///     connected.members.retry_wait(Instant::now() + delay, none_ready).await;
    ///     delay = (delay * 2).min(Duration::from_secs(5));
    /// }
    /// # }
    /// ```
    pub async fn retry_wait(
        &self,
        deadline: tokio::time::Instant,
        no_member_was_ready: bool,
    ) -> bool {
        let sleep = tokio::time::sleep_until(deadline);
        match &self.balancer {
            Some(_) if no_member_was_ready => tokio::select! {
                () = sleep => false,
                () = self.wait_for(|ready| ready > 0) => true,
            },
            _ => {
                sleep.await;
                false
            }
        }
    }

    /// One line: each member and its state, with its last error.
    pub fn describe(&self) -> String {
        match &self.balancer {
            Some(b) => describe_members(b),
            None => format!(
                "{} (etcd-client's channel, no member failover)",
                self.endpoints.join(",")
            ),
        }
    }
}

/// [`Members::retry_wait`] where the members may be unknown (`None`: a client
/// the caller made, which does not tell): then a plain sleep until
/// `deadline`, returning false.
pub async fn retry_wait(
    members: Option<&Members>,
    deadline: tokio::time::Instant,
    no_member_was_ready: bool,
) -> bool {
    match members {
        Some(m) => m.retry_wait(deadline, no_member_was_ready).await,
        None => {
            tokio::time::sleep_until(deadline).await;
            false
        }
    }
}

fn describe_members(balancer: &Balancer) -> String {
    balancer
        .endpoints()
        .iter()
        .map(|e| {
            let state = match e.state {
                ConnectivityState::Ready => "ready",
                ConnectivityState::Connecting => "connecting",
                ConnectivityState::Idle => "idle",
                ConnectivityState::TransientFailure => "down",
            };
            match (&e.last_error, e.state) {
                (Some(error), s) if s != ConnectivityState::Ready => {
                    format!("{} {state} ({error})", e.endpoint.addr())
                }
                _ => format!("{} {state}", e.endpoint.addr()),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Connects to etcd's members at `endpoints` (`http://host:port`,
/// `https://host:port` with `tls`, or bare `host:port`) with member failover
/// (see the crate docs).
///
/// `options` carries the user and password (and the token refresh); `None`
/// means etcd-client's defaults. Require-leader is always on.
/// `connect_timeout` bounds each connection attempt and how long a request
/// waits for a ready member.
///
/// Connecting is lazy unless a user is set (etcd-client authenticates at
/// once). Fails on an endpoint that is not a URL of a host and port, with
/// [`etcd_client::Error::InvalidArgs`].
///
/// # Panics
/// Outside a tokio runtime.
pub async fn connect<E: AsRef<str>>(
    endpoints: &[E],
    tls: Option<&EtcdTls>,
    options: Option<ConnectOptions>,
    connect_timeout: Duration,
) -> Result<Connected, etcd_client::Error> {
    let urls: Vec<String> = endpoints.iter().map(|e| e.as_ref().to_owned()).collect();
    if urls.is_empty() {
        return Err(etcd_client::Error::InvalidArgs("empty endpoints".into()));
    }
    let options = options.unwrap_or_default().with_require_leader(true);
    let https = urls.iter().any(|u| u.starts_with("https://"));
    if https && tls.is_none() {
        let client = Client::connect(&urls, Some(options)).await?;
        return Ok(Connected {
            client,
            members: Members {
                balancer: None,
                endpoints: urls,
            },
        });
    }
    let mut changes = Vec::with_capacity(urls.len());
    for url in &urls {
        let addr = host_port(url);
        let endpoint = Endpoint::new(addr).map_err(|e| {
            etcd_client::Error::InvalidArgs(format!("invalid etcd endpoint {url:?}: {e}"))
        })?;
        changes.push(Change::Insert(addr.to_owned(), endpoint));
    }
    let tls = match tls {
        Some(tls) => Some(tls_config(tls).map_err(etcd_client::Error::InvalidArgs)?),
        None => None,
    };
    let config = EndpointConfig {
        connect_timeout,
        backoff: BackoffConfig {
            base: Duration::from_millis(100),
            multiplier: 1.6,
            jitter: 0.2,
            max: Duration::from_secs(2),
        },
        // A member that vanishes without closing TCP (a partition, a host
        // power loss) is noticed within 15 s.
        keep_alive_interval: Some(Duration::from_secs(10)),
        keep_alive_timeout: Duration::from_secs(5),
        tls,
        // Freeze detection on, adaptive with the etcd channel's own bounds:
        // a member silent with requests still waiting for their response
        // headers (SIGSTOP, a stuck disk) for 10 times its normal silence,
        // between 250 ms and 1 s, gets no new requests until it answers a
        // PING. Idle watch and lease-keepalive streams, which etcd answers
        // at once and then leaves silent while nothing changes, do not make
        // a member suspect. The PING may take 2 to 5 s (the keepalive's
        // timeout) before the connection is given up: a busy member on a
        // loaded host answered after up to 1.8 s in a 1 000-watcher run,
        // and ending its connection would fail every request on it.
        freeze_detection: Some(FreezeDetection {
            suspect_after: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(5),
            adaptive: Some(Adaptive {
                suspect_floor: Duration::from_millis(250),
                probe_floor: Duration::from_secs(2),
                ..Adaptive::default()
            }),
        }),
        ..EndpointConfig::default()
    };
    let balancer = Balancer::builder()
        .name("etcd")
        .endpoint_config(config)
        .ready_timeout(connect_timeout)
        .max_retries(urls.len().max(3))
        // Off: etcd's own errors during an election ("no leader", "request
        // timed out") come from every member alike and would eject healthy
        // ones, leaving fewer members to fail over to; the registry and the
        // resolver retry those themselves. A frozen or dead member is left
        // by freeze detection and the connection's end, not by ejection.
        .outlier_detection(None)
        .build(futures::stream::iter(changes));
    let channel = channel(balancer.clone());
    let client = Client::from_channel(Channel::Custom(channel), Some(options)).await?;
    Ok(Connected {
        client,
        members: Members {
            balancer: Some(balancer),
            endpoints: urls,
        },
    })
}

/// `host:port` of an endpoint URL.
fn host_port(url: &str) -> &str {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

fn tls_config(tls: &EtcdTls) -> Result<TlsConfig, String> {
    let pems = tls.load()?;
    let config = match &pems.identity {
        Some((cert, key)) => TlsConfig::with_identity(&pems.ca, cert, key),
        None => TlsConfig::from_pem(&pems.ca),
    }
    .map_err(|e| format!("etcd TLS settings: {e}"))?;
    Ok(match pems.domain {
        Some(domain) => config.domain(domain),
        None => config,
    })
}

type Request = http::Request<tonic::body::Body>;
type Response = http::Response<tonic::body::Body>;

/// The balancer as etcd-client's channel: responses re-boxed as tonic
/// bodies, and a request fails at once, naming each member and its last
/// error, when every member is in transient failure (as a gRPC call without
/// wait-for-ready does), instead of waiting out its deadline.
fn channel(balancer: Balancer) -> BoxCloneSyncService<Request, Response, tower::BoxError> {
    let service = tower::service_fn(move |request: Request| {
        let members = balancer.clone();
        let call = balancer.clone().oneshot(request);
        async move {
            let all_down = members.wait_until(|all| {
                !all.is_empty()
                    && all
                        .iter()
                        .all(|e| e.state == ConnectivityState::TransientFailure)
            });
            tokio::select! {
                biased;
                result = call => match result {
                    Ok(response) => Ok(response.map(tonic::body::Body::new)),
                    Err(error) => Err(explain(error, &members)),
                },
                () = all_down => Err(Box::new(no_member(&members)) as tower::BoxError),
            }
        }
    });
    BoxCloneSyncService::new(service)
}

fn no_member(members: &Balancer) -> Status {
    Status::unavailable(format!(
        "no etcd member is ready: {}",
        describe_members(members)
    ))
}

fn explain(error: tower::BoxError, members: &Balancer) -> tower::BoxError {
    match error.downcast::<Status>() {
        Ok(status)
            if balancer::Error::of(&status)
                .is_some_and(|e| e.kind() == balancer::ErrorKind::NoReadyEndpoint) =>
        {
            Box::new(no_member(members))
        }
        Ok(status) => status as tower::BoxError,
        Err(other) => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_drops_the_scheme_and_path() {
        assert_eq!(host_port("http://127.0.0.1:2379"), "127.0.0.1:2379");
        assert_eq!(host_port("https://etcd-1:2379/"), "etcd-1:2379");
        assert_eq!(host_port("etcd-2:2379"), "etcd-2:2379");
    }
}
