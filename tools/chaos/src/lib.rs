//! A chaos run: a steady load of sticky and non-sticky calls over real
//! `echo-server` processes while a seeded random schedule SIGINTs, SIGKILLs
//! and restarts servers and kills and restarts etcd (same data dir). Every
//! failed call is attributed to the event it followed, and the invariants are
//! checked:
//!
//! - no failed call after a SIGINT (graceful drain);
//! - after a SIGKILL, no more failed calls than calls in flight (the load's
//!   concurrency bounds them);
//! - no failed call while etcd is down or coming back (clients keep the last
//!   known set, servers keep serving);
//! - at the end the etcd prefix holds exactly the live servers;
//! - a server frozen with SIGSTOP for 1.8–2.5 s (a GC pause, a stuck disk):
//!   it is suspected while frozen and gets no new calls from then until
//!   SIGCONT; the only failed calls are `UNAVAILABLE` naming it, no more than
//!   the calls that were in flight on it while it was frozen; after SIGCONT
//!   it gets calls again;
//! - a slow server (SIGSTOP 300 ms / SIGCONT 200 ms, six times): no failed
//!   call, since a server that keeps answering is not given up;
//! - on a cluster ([`Config::members`] ≥ 3), which the schedule also hits
//!   with member kills, leader kills and member restarts: no failed call
//!   after any of them, and every live server's key present in every
//!   100 ms sample of the prefix;
//! - nothing leaks: every process is reaped, file descriptors return to their
//!   baseline, etcd's temp dir is gone.
//!
//! `cargo xtask chaos [--duration 60s] [--seed N]` runs it; the test suite runs
//! a 20 s version (freezes and slow periods add a few seconds to it). It needs an `etcd` binary (it kills and restarts its own).
//! Servers' logs are discarded unless `CHAOS_SERVER_LOGS` is set.
//!
//! ```no_run
//! # async fn run() -> Result<(), chaos::Error> {
//! let config = chaos::Config::new("target/debug/echo-server".into(), "/usr/bin/etcd".into());
//! let report = chaos::run(config).await?;
//! println!("{report}");
//! assert!(report.violations.is_empty());
//! # Ok(())
//! # }
//! ```

use std::{
    collections::BTreeSet,
    fmt,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use balancer::{Balancer, ConnectivityState, StickyExt as _};
use echo_proto::{EchoRequest, echo_client::EchoClient};
use etcd_provision::{Cluster, EtcdProcess};
use tokio::{
    process::{Child, Command},
    time::{Instant, sleep, timeout},
};

/// Settings of a chaos run.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long the schedule runs. Default 60 s.
    pub duration: Duration,
    /// Seed of the schedule; the same seed gives the same schedule. Default:
    /// random.
    pub seed: u64,
    /// Number of servers. Default 3.
    pub servers: usize,
    /// Concurrent calls: half sticky, half not. Default 16.
    pub concurrency: usize,
    /// The `echo-server` binary.
    pub server_bin: PathBuf,
    /// The `etcd` binary.
    pub etcd_bin: PathBuf,
    /// etcd members. Default 1: one etcd, killed and restarted whole. With
    /// 3 or more, a local cluster whose members (the leader included) are
    /// killed and restarted one at a time, besides whole-cluster restarts.
    pub members: usize,
}

impl Config {
    /// Defaults, with the two binaries to run.
    pub fn new(server_bin: PathBuf, etcd_bin: PathBuf) -> Self {
        Self {
            duration: Duration::from_secs(60),
            seed: fastrand::u64(..),
            servers: 3,
            concurrency: 16,
            server_bin,
            etcd_bin,
            members: 1,
        }
    }
}

/// Why a chaos run could not be carried out (as opposed to an invariant that
/// did not hold, which is a [`Report::violations`] entry).
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn err(message: impl Into<String>) -> Error {
    Error(message.into())
}

/// What happened, event by event, and which invariants failed.
#[derive(Debug, Default)]
pub struct Report {
    /// The seed used.
    pub seed: u64,
    /// One line per event with its failed-call count.
    pub events: Vec<String>,
    /// Calls that succeeded.
    pub ok: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Failed calls by event kind.
    pub failed_after_sigint: u64,
    /// Failed calls after SIGKILLs.
    pub failed_after_sigkill: u64,
    /// Failed calls while etcd was down or restarting.
    pub failed_while_etcd_down: u64,
    /// Failed calls after a follower member's kill (and restart).
    pub failed_after_member_kill: u64,
    /// Failed calls after the leader's kill (and restart).
    pub failed_after_leader_kill: u64,
    /// Server freezes (SIGSTOP … SIGCONT) in the schedule.
    pub freezes: u64,
    /// Failed calls after freezes.
    pub failed_after_freeze: u64,
    /// Slow periods (short SIGSTOP/SIGCONT cycles) in the schedule.
    pub slow_periods: u64,
    /// Failed calls after slow periods.
    pub failed_after_slow: u64,
    /// Samples of the prefix taken (every 100 ms; reads etcd could not
    /// answer, e.g. while all of it is down, are not samples).
    pub key_samples: u64,
    /// Samples in which a live, registered server's key was missing.
    pub key_samples_missing: u64,
    /// Invariants that did not hold, in words. Empty on success.
    pub violations: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "chaos run, seed {}", self.seed)?;
        for event in &self.events {
            writeln!(f, "  {event}")?;
        }
        writeln!(
            f,
            "calls: ok={} failed={} (after SIGINT: {}, after SIGKILL: {}, while etcd down: {})",
            self.ok,
            self.failed,
            self.failed_after_sigint,
            self.failed_after_sigkill,
            self.failed_while_etcd_down
        )?;
        writeln!(
            f,
            "etcd members: failed calls after member kills: {}, after leader kills: {}; \
             key samples: {} ({} with a live server's key missing)",
            self.failed_after_member_kill,
            self.failed_after_leader_kill,
            self.key_samples,
            self.key_samples_missing
        )?;
        writeln!(
            f,
            "grey: {} freezes ({} failed calls after them), {} slow periods ({} failed)",
            self.freezes, self.failed_after_freeze, self.slow_periods, self.failed_after_slow
        )?;
        if self.violations.is_empty() {
            write!(f, "verdict: PASS (every invariant held)")
        } else {
            writeln!(f, "verdict: FAIL")?;
            for v in &self.violations {
                writeln!(f, "  violated: {v}")?;
            }
            Ok(())
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Start,
    SigInt,
    SigKill,
    EtcdDown,
    MemberKill,
    LeaderKill,
    Freeze,
    Slow,
}

/// The etcd of a run: one process, or a local cluster.
enum Etcd {
    Single(EtcdProcess),
    Cluster(Cluster),
}

impl Etcd {
    fn endpoints(&self) -> Vec<String> {
        match self {
            Etcd::Single(p) => vec![p.endpoint()],
            Etcd::Cluster(c) => c.endpoints(),
        }
    }

    fn dir(&self) -> PathBuf {
        match self {
            Etcd::Single(p) => p.dir().to_path_buf(),
            Etcd::Cluster(c) => c.dir().to_path_buf(),
        }
    }

    fn kill_all(&mut self) {
        match self {
            Etcd::Single(p) => p.kill(),
            Etcd::Cluster(c) => (0..c.len()).for_each(|i| c.kill(i)),
        }
    }

    fn start_all(&mut self) -> Result<(), etcd_provision::Error> {
        match self {
            Etcd::Single(p) => p.start(),
            Etcd::Cluster(c) => {
                for i in 0..c.len() {
                    c.start_member(i)?;
                }
                c.wait_healthy_all()
            }
        }
    }
}

/// Keys that must be in etcd now: a server's key is added once a client
/// sees it ready, and removed before it is signalled.
type Must = Arc<Mutex<BTreeSet<String>>>;

struct Event {
    at: Instant,
    kind: Kind,
    what: String,
    /// A freeze: the frozen server's address, which every failed call after
    /// it must name, and the failed calls allowed (calls in flight on it).
    frozen: Option<(String, u64)>,
}

struct Server {
    id: String,
    addr: String,
    child: Option<Child>,
}

struct Harness {
    config: Config,
    env: String,
    etcd: Etcd,
    /// A failover client of every member, for samples and the final check.
    etcd_client: Option<etcd_client::Client>,
    must: Must,
    servers: Vec<Server>,
    failures: Arc<Mutex<Vec<(Instant, String)>>>,
    ok: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// Runs the schedule and checks the invariants.
///
/// # Errors
/// When the run cannot be set up (etcd or a server does not start); broken
/// invariants are reported in [`Report::violations`], not as errors.
pub async fn run(config: Config) -> Result<Report, Error> {
    let fds_before = open_fds();
    let etcd = tokio::task::block_in_place(|| {
        if config.members > 1 {
            Cluster::start(&config.etcd_bin, config.members).map(Etcd::Cluster)
        } else {
            EtcdProcess::start_new(&config.etcd_bin).map(Etcd::Single)
        }
    })
    .map_err(|e| err(format!("etcd: {e}")))?;
    let etcd_dir = etcd.dir();
    let env = format!("chaos-{}-{}", std::process::id(), config.seed);
    let mut harness = Harness {
        servers: (1..=config.servers)
            .map(|i| {
                Ok(Server {
                    id: i.to_string(),
                    addr: format!(
                        "127.0.0.1:{}",
                        etcd_provision::free_port().map_err(|e| err(e.to_string()))?
                    ),
                    child: None,
                })
            })
            .collect::<Result<_, Error>>()?,
        config,
        env,
        etcd,
        etcd_client: None,
        must: Must::default(),
        failures: Arc::default(),
        ok: Arc::default(),
        stop: Arc::default(),
    };
    let result = harness.run().await;
    harness.stop_all().await;
    let mut report = result?;
    drop(harness);

    if etcd_dir.exists() {
        report
            .violations
            .push(format!("etcd temp dir {} left behind", etcd_dir.display()));
    }
    // Connections close asynchronously once the clients are dropped.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut fds_after = open_fds();
    while fds_after > fds_before && Instant::now() < deadline {
        sleep(Duration::from_millis(50)).await;
        fds_after = open_fds();
    }
    if fds_after > fds_before {
        report.violations.push(format!(
            "file descriptors leaked: {fds_before} before, {fds_after} after"
        ));
    }
    Ok(report)
}

impl Harness {
    fn prefix(&self) -> String {
        format!("discovery/{}/game", self.env)
    }

    async fn run(&mut self) -> Result<Report, Error> {
        let mut report = Report {
            seed: self.config.seed,
            ..Report::default()
        };
        self.etcd_client = Some(
            etcd::connect(&self.etcd.endpoints(), None, None, Duration::from_secs(2))
                .await
                .map_err(|e| err(format!("etcd client: {e}")))?
                .client,
        );
        for i in 0..self.servers.len() {
            self.start_server(i).await?;
        }
        let client = self.client().await?;
        let sticky = self.client().await?;
        for balancer in [&client, &sticky] {
            wait_ready(balancer, self.servers.len(), Duration::from_secs(30))
                .await
                .map_err(|_| err("the servers did not all become ready within 30 s"))?;
        }
        for i in 0..self.servers.len() {
            self.must_have(i);
        }
        let sampler = self.spawn_sampler();
        let workers = self.spawn_load(&client, &sticky);

        let mut rng = fastrand::Rng::with_seed(self.config.seed);
        let mut events = vec![Event {
            at: Instant::now(),
            kind: Kind::Start,
            what: "load started".into(),
            frozen: None,
        }];
        let mut grey_violations = Vec::new();
        let started = Instant::now();
        while started.elapsed() < self.config.duration {
            sleep(Duration::from_millis(rng.u64(300..900))).await;
            let roll = rng.u8(0..100);
            let i = rng.usize(0..self.servers.len());
            let at = Instant::now();
            let cluster = matches!(self.etcd, Etcd::Cluster(_));
            let grey = rng.u8(0..100);
            if grey < 25 {
                let event = if grey < 16 {
                    let millis = rng.u64(1800..2500);
                    let (event, mut found) = self
                        .freeze_server(i, Duration::from_millis(millis), &client, &sticky)
                        .await?;
                    grey_violations.append(&mut found);
                    event
                } else {
                    self.slow_server(i).await?
                };
                events.push(event);
                sleep(Duration::from_millis(rng.u64(300..900))).await;
                continue;
            }
            let (kind, what) = if cluster && roll >= 60 {
                // A cluster: members, the leader included, fail one at a
                // time; now and then the whole cluster goes down.
                let kind = match roll {
                    60..75 => Kind::MemberKill,
                    75..90 => Kind::LeaderKill,
                    _ => Kind::EtcdDown,
                };
                let what = self.kill_members(kind, &mut rng).await?;
                (kind, what)
            } else if (cluster && roll < 30) || (!cluster && roll < 35) {
                self.signal_server(i, "-INT").await?;
                (
                    Kind::SigInt,
                    format!("SIGINT server {}", self.servers[i].id),
                )
            } else if roll < 70 || cluster {
                self.signal_server(i, "-KILL").await?;
                (
                    Kind::SigKill,
                    format!("SIGKILL server {}", self.servers[i].id),
                )
            } else {
                tokio::task::block_in_place(|| self.etcd.kill_all());
                (Kind::EtcdDown, "kill etcd".to_string())
            };
            events.push(Event {
                at,
                kind,
                what,
                frozen: None,
            });
            sleep(Duration::from_millis(rng.u64(300..1500))).await;
            match kind {
                Kind::MemberKill | Kind::LeaderKill => {
                    tokio::task::block_in_place(|| self.restart_members())
                        .map_err(|e| err(format!("an etcd member did not restart: {e}")))?;
                }
                Kind::EtcdDown => {
                    tokio::task::block_in_place(|| self.etcd.start_all())
                        .map_err(|e| err(format!("etcd did not restart: {e}")))?;
                    // Registrations come back once etcd does.
                    self.wait_for_registrations(Duration::from_secs(20))
                        .await
                        .map_err(|left| {
                            err(format!(
                                "registrations did not come back after etcd restarted: {left}"
                            ))
                        })?;
                }
                _ => {
                    self.start_server(i).await?;
                    for balancer in [&client, &sticky] {
                        wait_ready(balancer, self.servers.len(), Duration::from_secs(30))
                            .await
                            .map_err(|_| {
                                err(format!(
                                    "server {} did not rejoin within 30 s",
                                    self.servers[i].id
                                ))
                            })?;
                    }
                    self.must_have(i);
                }
            }
        }
        sleep(Duration::from_millis(500)).await;
        self.stop.store(true, Ordering::Relaxed);
        for worker in workers {
            let _ = worker.await;
        }
        let end = Instant::now();
        let (samples, missing) = sampler.finish().await;
        report.key_samples = samples;
        report.key_samples_missing = missing.len() as u64;
        if let Some(first) = missing.first() {
            report.violations.push(format!(
                "{} samples missed a live server's key; first: {first}",
                missing.len()
            ));
        }

        // Every failure belongs to the last event before it.
        let failures = self.failures.lock().map(|f| f.clone()).unwrap_or_default();
        report.ok = self.ok.load(Ordering::Relaxed);
        report.failed = failures.len() as u64;
        report.violations.append(&mut grey_violations);
        for (n, event) in events.iter().enumerate() {
            let until = events.get(n + 1).map_or(end, |e| e.at);
            let here: Vec<&String> = failures
                .iter()
                .filter(|(at, _)| *at >= event.at && *at < until)
                .map(|(_, e)| e)
                .collect();
            let count = here.len() as u64;
            let allowed = match (&event.frozen, event.kind) {
                (Some((_, in_flight)), _) => *in_flight,
                (None, Kind::SigKill) => self.config.concurrency as u64,
                _ => 0,
            };
            if let Some((addr, _)) = &event.frozen
                && let Some(other) = here
                    .iter()
                    .find(|e| !(e.starts_with("Unavailable") && e.contains(addr.as_str())))
            {
                report.violations.push(format!(
                    "{}: a failed call that is not UNAVAILABLE naming {addr}: {other}",
                    event.what
                ));
            }
            match event.kind {
                Kind::SigInt => report.failed_after_sigint += count,
                Kind::SigKill => report.failed_after_sigkill += count,
                Kind::EtcdDown => report.failed_while_etcd_down += count,
                Kind::MemberKill => report.failed_after_member_kill += count,
                Kind::LeaderKill => report.failed_after_leader_kill += count,
                Kind::Freeze => {
                    report.freezes += 1;
                    report.failed_after_freeze += count;
                }
                Kind::Slow => {
                    report.slow_periods += 1;
                    report.failed_after_slow += count;
                }
                Kind::Start => {}
            }
            let offset = event.at.duration_since(events[0].at);
            report.events.push(format!(
                "[{:>6.1}s] {}: {count} failed calls (allowed {allowed})",
                offset.as_secs_f64(),
                event.what
            ));
            if count > allowed {
                report.violations.push(format!(
                    "{} at {:.1}s: {count} failed calls, at most {allowed} allowed; first: {}",
                    event.what,
                    offset.as_secs_f64(),
                    here.first().map_or("", |e| e.as_str())
                ));
            }
        }

        // The prefix must hold exactly the live servers.
        if let Err(diff) = self.wait_for_registrations(Duration::from_secs(15)).await {
            report
                .violations
                .push(format!("etcd prefix differs from the live servers: {diff}"));
        }
        Ok(report)
    }

    async fn client(&self) -> Result<Balancer, Error> {
        let resolution = resolver::Resolver::connect(&self.etcd.endpoints(), None, self.prefix())
            .await
            .map_err(|e| err(format!("resolver: {e}")))?
            .resolve();
        Ok(Balancer::builder().name(self.prefix()).build(resolution))
    }

    fn spawn_load(&self, client: &Balancer, sticky: &Balancer) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.config.concurrency)
            .map(|n| {
                // Half the workers pin their calls to one instance each.
                let pin = (n % 2 == 1).then(|| self.servers[n / 2 % self.servers.len()].id.clone());
                let balancer = if pin.is_some() { sticky } else { client };
                let mut echo = EchoClient::new(balancer.clone());
                let (ok, failures, stop) =
                    (self.ok.clone(), self.failures.clone(), self.stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let mut request = tonic::Request::new(EchoRequest {
                            message: "chaos".into(),
                        });
                        request.set_timeout(Duration::from_secs(10));
                        if let Some(id) = &pin {
                            request = request.sticky(id.as_str());
                        }
                        match echo.unary_echo(request).await {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(status) => {
                                let line = format!("{:?}: {}", status.code(), status.message());
                                tracing::warn!(pinned = ?pin, "call failed: {line}");
                                if let Ok(mut f) = failures.lock() {
                                    f.push((Instant::now(), line));
                                }
                            }
                        }
                    }
                })
            })
            .collect()
    }

    async fn start_server(&mut self, i: usize) -> Result<(), Error> {
        let etcd = self.etcd.endpoints().join(",");
        let env = self.env.clone();
        let server = &mut self.servers[i];
        let child = Command::new(&self.config.server_bin)
            .args(["--id", &server.id, "--env", &env, "--etcd", &etcd])
            .args(["--addr", &server.addr, "--ttl", "3s", "--drain", "500ms"])
            .args(["--shutdown-timeout", "5s"])
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(if std::env::var_os("CHAOS_SERVER_LOGS").is_some() {
                std::process::Stdio::inherit()
            } else {
                std::process::Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                err(format!(
                    "cannot run {}: {e}",
                    self.config.server_bin.display()
                ))
            })?;
        server.child = Some(child);
        Ok(())
    }

    /// Sends `signal` to server `i` without waiting for anything.
    async fn kill_quietly(&self, i: usize, signal: &str) {
        if let Some(pid) = self.servers[i].child.as_ref().and_then(Child::id) {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status()
                .await;
        }
    }

    /// Freezes server `i` for `hold` (SIGSTOP, then SIGCONT) under the load
    /// and checks what the clients did meanwhile; returns the event (with
    /// the calls in flight on the server while frozen, which bound the
    /// failures it may cause) and the violations seen.
    async fn freeze_server(
        &mut self,
        i: usize,
        hold: Duration,
        client: &Balancer,
        sticky: &Balancer,
    ) -> Result<(Event, Vec<String>), Error> {
        let addr = self.servers[i].addr.clone();
        let id = self.servers[i].id.clone();
        let what = format!("SIGSTOP server {id} for {hold:.1?}");
        let mut violations = Vec::new();
        // A 3 s lease may lapse while its keepalives are frozen.
        let key = format!("{}/{}", self.prefix(), addr);
        if let Ok(mut must) = self.must.lock() {
            must.remove(&key);
        }
        let at = Instant::now();
        self.kill_quietly(i, "-STOP").await;
        let balancers = [client, sticky];
        // Per balancer: picks soon after it was first seen suspecting the
        // server (a pick from the snapshot before may still land).
        let mut seen_at: [Option<Instant>; 2] = [None; 2];
        let mut picks_after: [Option<u64>; 2] = [None; 2];
        let mut in_flight_peak = 0;
        let until = at + hold;
        while Instant::now() < until {
            let mut in_flight = 0;
            for (n, balancer) in balancers.iter().enumerate() {
                let status = balancer
                    .endpoints()
                    .into_iter()
                    .find(|e| e.endpoint.addr() == addr);
                in_flight += status.as_ref().map_or(0, |s| s.in_flight);
                let avoided = status
                    .as_ref()
                    .is_none_or(|s| s.state != ConnectivityState::Ready || !s.excluded.is_empty());
                let picks = status.as_ref().map_or(0, |s| s.picks);
                match (seen_at[n], picks_after[n]) {
                    (None, _) if avoided => seen_at[n] = Some(Instant::now()),
                    (Some(seen), None) if seen.elapsed() >= Duration::from_millis(100) => {
                        picks_after[n] = Some(picks);
                    }
                    (Some(_), Some(before)) if picks > before => {
                        violations.push(format!(
                            "{what}: {} more calls picked for it after it was suspected",
                            picks - before
                        ));
                        picks_after[n] = Some(picks);
                    }
                    _ => {}
                }
            }
            in_flight_peak = in_flight_peak.max(in_flight);
            sleep(Duration::from_millis(20)).await;
        }
        let picks_at_cont = client
            .endpoints()
            .into_iter()
            .find(|e| e.endpoint.addr() == addr)
            .map_or(0, |s| s.picks);
        self.kill_quietly(i, "-CONT").await;
        if seen_at[0].is_none() {
            violations.push(format!(
                "{what}: never suspected while frozen (freeze detection suspects after 100 ms to 1 s)"
            ));
        }
        // Back: READY in both clients (registered again if its lease lapsed)
        // and getting calls.
        for balancer in balancers {
            wait_ready(balancer, self.servers.len(), Duration::from_secs(30))
                .await
                .map_err(|_| {
                    err(format!(
                        "server {id} did not come back within 30 s of SIGCONT"
                    ))
                })?;
        }
        self.must_have(i);
        // Picks change no state the balancer announces: polled.
        let picked_again = || {
            client
                .endpoints()
                .into_iter()
                .find(|e| e.endpoint.addr() == addr)
                // Fewer: removed (its lease lapsed) and added again.
                .is_some_and(|e| e.picks > 0 && e.picks != picks_at_cont)
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !picked_again() && Instant::now() < deadline {
            sleep(Duration::from_millis(20)).await;
        }
        if !picked_again() {
            violations.push(format!(
                "{what}: no call picked for it within 15 s of SIGCONT"
            ));
        }
        let event = Event {
            at,
            kind: Kind::Freeze,
            what: format!("{what} ({in_flight_peak} calls in flight on it)"),
            frozen: Some((addr, in_flight_peak)),
        };
        Ok((event, violations))
    }

    /// Makes server `i` slow without freezing it for long: six cycles of
    /// SIGSTOP 300 ms, SIGCONT 200 ms. Each silence may get it suspected
    /// (adaptive detection suspects after 100 ms), but its PING is answered
    /// within the PING's timeout (at least 400 ms after the suspicion), so
    /// no call may fail.
    async fn slow_server(&mut self, i: usize) -> Result<Event, Error> {
        let at = Instant::now();
        for _ in 0..6 {
            self.kill_quietly(i, "-STOP").await;
            sleep(Duration::from_millis(300)).await;
            self.kill_quietly(i, "-CONT").await;
            sleep(Duration::from_millis(200)).await;
        }
        Ok(Event {
            at,
            kind: Kind::Slow,
            what: format!(
                "slow server {}: SIGSTOP 300 ms / SIGCONT 200 ms six times",
                self.servers[i].id
            ),
            frozen: None,
        })
    }

    async fn signal_server(&mut self, i: usize, signal: &str) -> Result<(), Error> {
        // Its key may go from now on.
        let key = format!("{}/{}", self.prefix(), self.servers[i].addr);
        if let Ok(mut must) = self.must.lock() {
            must.remove(&key);
        }
        let server = &mut self.servers[i];
        let Some(mut child) = server.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status()
                .await;
        }
        match timeout(Duration::from_secs(15), child.wait()).await {
            Ok(Ok(_)) => Ok(()),
            _ => {
                let _ = child.kill().await;
                Err(err(format!(
                    "server {} did not exit within 15 s of {signal}",
                    server.id
                )))
            }
        }
    }

    /// Waits until the etcd prefix holds exactly the running servers'
    /// addresses; on timeout, says what differs.
    async fn wait_for_registrations(&self, limit: Duration) -> Result<(), String> {
        let live: BTreeSet<String> = self
            .servers
            .iter()
            .filter(|s| s.child.is_some())
            .map(|s| format!("{}/{}", self.prefix(), s.addr))
            .collect();
        let deadline = Instant::now() + limit;
        let mut last = String::from("etcd not reachable");
        while Instant::now() < deadline {
            match self.registered_keys().await {
                Ok(keys) if keys == live => return Ok(()),
                Ok(keys) => last = format!("registered {keys:?}, live {live:?}"),
                Err(e) => last = e,
            }
            sleep(Duration::from_millis(100)).await;
        }
        Err(last)
    }

    async fn registered_keys(&self) -> Result<BTreeSet<String>, String> {
        let mut client = self
            .etcd_client
            .clone()
            .ok_or_else(|| "no etcd client yet".to_owned())?;
        let prefix = format!("{}/", self.prefix());
        let response = client
            .get(
                prefix.as_str(),
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_keys_only(),
                ),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect())
    }

    /// Server `i` is registered (a client sees it ready): its key must stay
    /// in etcd until it is signalled.
    fn must_have(&self, i: usize) {
        let key = format!("{}/{}", self.prefix(), self.servers[i].addr);
        if let Ok(mut must) = self.must.lock() {
            must.insert(key);
        }
    }

    /// Kills one member of the cluster: a follower, or the leader. `kind`
    /// `EtcdDown` kills every member.
    async fn kill_members(&mut self, kind: Kind, rng: &mut fastrand::Rng) -> Result<String, Error> {
        let Etcd::Cluster(cluster) = &mut self.etcd else {
            return Err(err("member events need a cluster"));
        };
        tokio::task::block_in_place(|| match kind {
            Kind::EtcdDown => {
                (0..cluster.len()).for_each(|i| cluster.kill(i));
                Ok("kill every etcd member".to_owned())
            }
            Kind::LeaderKill => {
                let leader = cluster
                    .wait_for_leader(Duration::from_secs(10))
                    .map_err(|e| err(e.to_string()))?;
                cluster.kill(leader);
                Ok(format!("kill etcd member {leader} (leader)"))
            }
            _ => {
                let leader = cluster.leader();
                let followers: Vec<usize> = (0..cluster.len())
                    .filter(|&i| Some(i) != leader && cluster.is_running(i))
                    .collect();
                let Some(&member) = followers.get(rng.usize(0..followers.len().max(1))) else {
                    return Err(err("no follower to kill"));
                };
                cluster.kill(member);
                Ok(format!("kill etcd member {member} (follower)"))
            }
        })
    }

    /// Restarts every member that is down and waits until each is healthy.
    fn restart_members(&mut self) -> Result<(), etcd_provision::Error> {
        let Etcd::Cluster(cluster) = &mut self.etcd else {
            return Ok(());
        };
        for i in 0..cluster.len() {
            if !cluster.is_running(i) {
                cluster.restart(i)?;
            }
        }
        Ok(())
    }

    /// Every 100 ms, reads the prefix (serializable: any live member
    /// answers) and records each sample that lacks a key that had to be
    /// there for the whole read.
    fn spawn_sampler(&self) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(AtomicU64::new(0));
        let missing = Arc::new(Mutex::new(Vec::new()));
        let (client, must, prefix) = (
            self.etcd_client.clone(),
            self.must.clone(),
            format!("{}/", self.prefix()),
        );
        let task = tokio::spawn({
            let (stop, samples, missing) = (stop.clone(), samples.clone(), missing.clone());
            async move {
                let Some(mut client) = client else { return };
                let must_now = || must.lock().map(|m| m.clone()).unwrap_or_default();
                let started = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let before = must_now();
                    let options = etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_serializable();
                    let read = timeout(
                        Duration::from_millis(500),
                        client.get(prefix.as_str(), Some(options)),
                    )
                    .await;
                    let Ok(Ok(response)) = read else { continue };
                    let after = must_now();
                    samples.fetch_add(1, Ordering::Relaxed);
                    let keys: BTreeSet<String> = response
                        .kvs()
                        .iter()
                        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                        .collect();
                    let lacking: Vec<&String> = before
                        .intersection(&after)
                        .filter(|k| !keys.contains(*k))
                        .collect();
                    if !lacking.is_empty()
                        && let Ok(mut m) = missing.lock()
                    {
                        m.push(format!(
                            "at {:.1}s: {lacking:?}",
                            started.elapsed().as_secs_f64()
                        ));
                    }
                }
            }
        });
        Sampler {
            stop,
            samples,
            missing,
            task,
        }
    }

    async fn stop_all(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for i in 0..self.servers.len() {
            if self.signal_server(i, "-INT").await.is_err() {
                tracing::warn!(server = %self.servers[i].id, "killed after failing to stop");
            }
        }
    }
}

/// The key sampler's task and what it counted.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<AtomicU64>,
    missing: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let missing = self.missing.lock().map(|m| m.clone()).unwrap_or_default();
        (self.samples.load(Ordering::Relaxed), missing)
    }
}

async fn wait_ready(balancer: &Balancer, n: usize, limit: Duration) -> Result<(), ()> {
    let ready = balancer.wait_until(|all| {
        all.iter()
            .filter(|e| e.state == ConnectivityState::Ready)
            .count()
            >= n
    });
    timeout(limit, ready).await.map_err(drop)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}
