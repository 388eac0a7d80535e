//! The load: C workers, each sending one unary echo at a time (closed
//! loop), or calls started at a fixed rate whatever their answers (open
//! loop), over one of four client stacks; a warm-up, then a measured window.
//!
//! Every configuration goes through exactly this loop, so the only thing that
//! differs between them is the client stack under `EchoClient`.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use balancer::{Balancer, BoxError, Change, Endpoint, StickyExt as _};
use echo_proto::{EchoRequest, echo_client::EchoClient};
use futures::{FutureExt as _, Stream, StreamExt as _, future::BoxFuture, stream};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tonic::{body::Body, transport::Channel};

/// Which client stack carries the calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// (a) one tonic `Channel` to the first server.
    Direct,
    /// (b) tonic's `Channel::balance_list` (tower p2c) over every server.
    BalanceChannel,
    /// (c) our balancer, round robin over every server.
    Balancer,
    /// (d) our balancer, every call sticky to the first server's instance id.
    Sticky,
}

impl Mode {
    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::BalanceChannel => "balance_channel",
            Self::Balancer => "balancer",
            Self::Sticky => "balancer_sticky",
        }
    }

    /// Parses a [`name`](Self::name) (`-` accepted for `_`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.replace('-', "_").as_str() {
            "direct" => Ok(Self::Direct),
            "balance_channel" => Ok(Self::BalanceChannel),
            "balancer" => Ok(Self::Balancer),
            "balancer_sticky" | "sticky" => Ok(Self::Sticky),
            _ => Err(format!(
                "unknown mode {s:?}: expected direct, balance_channel, balancer or sticky"
            )),
        }
    }
}

/// Where the servers are.
#[derive(Clone, Debug)]
pub enum Servers {
    /// Fixed `(instance id, host:port)` pairs.
    List(Vec<(String, String)>),
    /// Discovered under an etcd prefix through the `resolver` crate (our
    /// balancer only).
    Etcd {
        /// etcd client URLs.
        endpoints: Vec<String>,
        /// `discovery/<env>/<service>`.
        prefix: String,
    },
}

/// One load run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Client stack.
    pub mode: Mode,
    /// Servers to call.
    pub servers: Servers,
    /// Concurrent workers (calls in flight).
    pub concurrency: usize,
    /// Calls before `warmup` has passed are not measured.
    pub warmup: Duration,
    /// Measured window after the warm-up.
    pub duration: Duration,
    /// Pause between two calls of one worker (0: closed loop at full speed).
    pub interval: Duration,
    /// Per-call deadline.
    pub timeout: Duration,
    /// Instance id for [`Mode::Sticky`] (default: the first server's).
    pub sticky_id: Option<String>,
    /// How many READY endpoints to wait for before starting (default: all
    /// listed; 1 when discovering).
    pub wait_ready: Option<usize>,
    /// Print `{"event":"first",...}` on stdout when an instance answers for
    /// the first time, and keep per-instance first/last answer times.
    pub events: bool,
    /// Set to end the run early (e.g. when stdin closes); the result still
    /// covers the time run.
    pub stop: Option<Arc<AtomicBool>>,
    /// Our balancer without freeze detection and outlier ejection (the
    /// baseline of their cost).
    pub no_grey_detection: bool,
    /// Count successful calls per bucket of this width from the start
    /// (warm-up included) into the result's `timeline`.
    pub timeline: Option<Duration>,
    /// Open loop: start this many calls per second whatever their answers
    /// (each call its own task; `concurrency` and `interval` unused).
    /// `None`: the closed loop.
    pub rate: Option<f64>,
}

/// Wall clock in microseconds since the Unix epoch: the one clock shared by
/// loadgen and the harness that kills servers.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The instance id in an echo reply `<message> (from <id>)`.
pub fn instance_of(reply: &str) -> &str {
    reply
        .rsplit_once("(from ")
        .map(|(_, id)| id.trim_end_matches(')'))
        .unwrap_or("?")
}

type Client = EchoClient<Stack>;

/// The client stacks behind one `EchoClient` type, so the worker loop is the
/// same code for all of them.
#[derive(Clone)]
enum Stack {
    Channel(Channel),
    Balancer(Balancer),
}

/// `EchoClient<T>` needs a tower service over `http::Request<Body>`; both
/// stacks are one, behind this enum. The boxed future costs the same for all.
impl tower_service::Service<http::Request<Body>> for Stack {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<http::Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Self::Channel(c) => c.poll_ready(cx).map_err(Into::into),
            Self::Balancer(b) => b.poll_ready(cx),
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match self {
            Self::Channel(c) => c.call(request).map(|r| r.map_err(Into::into)).boxed(),
            Self::Balancer(b) => b
                .call(request)
                .map(|r| r.map(|response| response.map(Body::new)))
                .boxed(),
        }
    }
}

/// What one worker saw.
struct WorkerResult {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    total_errors: u64,
    error_times_us: Vec<u64>,
    error_samples: Vec<String>,
    per_instance: HashMap<String, u64>,
    last_seen: HashMap<String, u64>,
    /// Calls the open loop started (0 for a closed-loop worker).
    started: u64,
}

/// Connects the configured stack and waits until it can serve.
async fn connect(config: &Config) -> Result<(Stack, Option<Balancer>), String> {
    match (&config.servers, config.mode) {
        (Servers::List(list), Mode::Direct) => {
            let (_, addr) = list.first().ok_or("no server given")?;
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| format!("bad address {addr}: {e}"))?
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            Ok((Stack::Channel(channel), None))
        }
        (Servers::List(list), Mode::BalanceChannel) => {
            let mut endpoints = Vec::new();
            for (_, addr) in list {
                endpoints.push(
                    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                        .map_err(|e| format!("bad address {addr}: {e}"))?
                        .tcp_nodelay(true),
                );
            }
            Ok((
                Stack::Channel(Channel::balance_list(endpoints.into_iter())),
                None,
            ))
        }
        (Servers::Etcd { .. }, Mode::Direct | Mode::BalanceChannel) => {
            Err("discovery through etcd is for our balancer only".into())
        }
        (servers, Mode::Balancer | Mode::Sticky) => {
            let balancer = match servers {
                Servers::List(list) => {
                    let mut changes = Vec::new();
                    for (id, addr) in list {
                        let endpoint = Endpoint::new(addr)
                            .map_err(|e| e.to_string())?
                            .with_instance_id(id.as_str());
                        changes.push(Change::Insert(addr.clone(), endpoint));
                    }
                    build(
                        stream::iter(changes).chain(stream::pending()),
                        config.no_grey_detection,
                    )
                }
                Servers::Etcd { endpoints, prefix } => {
                    let resolution = resolver::Resolver::connect(endpoints, None, prefix.as_str())
                        .await
                        .map_err(|e| format!("etcd: {e}"))?
                        .resolve();
                    build(resolution, config.no_grey_detection)
                }
            };
            let want = config.wait_ready.unwrap_or(match servers {
                Servers::List(list) => list.len(),
                Servers::Etcd { .. } => 1,
            });
            // Poll: `wait_for_ready` lists every endpoint on every change,
            // which is quadratic over a thousand initial connects.
            let started = Instant::now();
            while balancer.ready_count() < want {
                if started.elapsed() > Duration::from_secs(120) {
                    return Err(format!(
                        "only {} of {want} endpoints READY after 120 s",
                        balancer.ready_count()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok((Stack::Balancer(balancer.clone()), Some(balancer)))
        }
    }
}

fn build<S: Stream<Item = Change> + Send + 'static>(changes: S, no_grey: bool) -> Balancer {
    let mut builder = Balancer::builder().name("loadgen");
    if no_grey {
        builder = builder.freeze_detection(None).outlier_detection(None);
    }
    builder.build(changes)
}

/// With `--events`: prints `{"event":"avoided",...}` the first time each
/// endpoint is left out of the picks (suspected, ejected, not READY).
fn report_avoided(balancer: Balancer) {
    tokio::spawn(async move {
        let mut reported = HashSet::new();
        balancer
            .wait_until(|all| {
                for e in all {
                    let avoided =
                        e.state != balancer::ConnectivityState::Ready || !e.excluded.is_empty();
                    if avoided && reported.insert(e.key.clone()) {
                        let why = e
                            .excluded
                            .first()
                            .map_or_else(|| format!("{:?}", e.state), ToString::to_string);
                        let id = e.endpoint.instance_id().unwrap_or(e.key.as_str());
                        println!(
                            "{}",
                            json!({"event": "avoided", "id": id, "why": why, "t_us": unix_us()})
                        );
                    }
                }
                false
            })
            .await;
    });
}

/// Runs the load and returns the result as one JSON object.
pub async fn run(config: Config) -> Result<Value, String> {
    let (stack, balancer) = connect(&config).await?;
    let client = EchoClient::new(stack);
    let sticky_id: Option<Arc<str>> = match (config.mode, &config.sticky_id, &config.servers) {
        (Mode::Sticky, Some(id), _) => Some(id.as_str().into()),
        (Mode::Sticky, None, Servers::List(list)) => list.first().map(|(id, _)| id.as_str().into()),
        (Mode::Sticky, None, Servers::Etcd { .. }) => {
            return Err("sticky over etcd needs --sticky-id".into());
        }
        _ => None,
    };
    let seen = Arc::new(Mutex::new(HashSet::<String>::new()));
    if config.events
        && let Some(b) = &balancer
    {
        report_avoided(b.clone());
    }
    let timeline = config.timeline.map(|width| {
        let total = config.warmup + config.duration;
        let buckets = (total.as_nanos() / width.as_nanos().max(1)) as usize + 2;
        Timeline {
            width,
            counts: Arc::new((0..buckets).map(|_| AtomicU64::new(0)).collect()),
        }
    });
    let start = Instant::now();
    let start_unix = unix_us();
    println!("{}", json!({"event": "started", "t_us": start_unix}));
    let measure_from = start + config.warmup;
    let end = measure_from + config.duration;
    // The open loop is one task starting calls on its schedule; the closed
    // loop is `concurrency` workers, each one call at a time.
    let tasks = if config.rate.is_some() {
        1
    } else {
        config.concurrency
    };
    let mut workers = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let client = client.clone();
        let sticky_id = sticky_id.clone();
        let seen = seen.clone();
        let config = config.clone();
        let timeline = timeline.clone().map(|t| (start, t));
        workers.push(tokio::spawn(async move {
            let recorder = Recorder::new(seen, &config, measure_from, end, timeline);
            match config.rate {
                Some(rate) => open_loop(client, sticky_id, recorder, rate, start).await,
                None => worker(client, sticky_id, recorder).await,
            }
        }));
    }
    let mut hist = new_histogram();
    let (mut ok, mut errors, mut total_errors) = (0u64, 0u64, 0u64);
    let mut error_times_us = Vec::new();
    let mut error_samples: Vec<String> = Vec::new();
    let mut per_instance: HashMap<String, u64> = HashMap::new();
    let mut last_seen: HashMap<String, u64> = HashMap::new();
    let mut started = 0;
    for w in workers {
        let w = w.await.map_err(|e| format!("worker panicked: {e}"))?;
        hist.add(&w.hist).map_err(|e| e.to_string())?;
        ok += w.ok;
        started += w.started;
        errors += w.errors;
        total_errors += w.total_errors;
        error_times_us.extend(w.error_times_us);
        for s in w.error_samples {
            if error_samples.len() < 5 && !error_samples.contains(&s) {
                error_samples.push(s);
            }
        }
        for (id, n) in w.per_instance {
            *per_instance.entry(id).or_default() += n;
        }
        for (id, t) in w.last_seen {
            let e = last_seen.entry(id).or_default();
            *e = (*e).max(t);
        }
    }
    error_times_us.sort_unstable();
    error_times_us.truncate(100_000);
    // A run stopped early measured only until it stopped.
    let secs = Instant::now()
        .min(end)
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        .max(1e-3);
    let q = |q: f64| hist.value_at_quantile(q);
    let mut result = json!({
        "event": "result",
        "mode": config.mode.name(),
        "concurrency": config.concurrency,
        "open_loop_rate": config.rate,
        "open_loop_started": config.rate.map(|_| started),
        "warmup_s": config.warmup.as_secs_f64(),
        "duration_s": secs,
        "rps": (ok as f64 / secs).round(),
        "ok": ok,
        "errors": errors,
        "total_errors": total_errors,
        "p50_us": q(0.50),
        "p90_us": q(0.90),
        "p99_us": q(0.99),
        "p999_us": q(0.999),
        "max_us": hist.max(),
        "per_instance": per_instance,
        "rss_mib": rss_mib(),
        "start_unix_us": start_unix,
        "error_times_us": error_times_us,
        "error_samples": error_samples,
    });
    if config.events {
        result["last_seen_us"] = json!(last_seen);
    }
    if let Some(t) = timeline {
        result["timeline_ms"] = json!(t.width.as_millis() as u64);
        result["timeline"] = json!(
            t.counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        );
    }
    if let Some(b) = balancer {
        result["ready_endpoints"] = json!(b.ready_count());
        result["retries"] = json!(b.stats().retries);
        // Freeze-detection PINGs sent over the whole run.
        result["probes"] = json!(b.endpoints().iter().map(|e| e.probes).sum::<u64>());
    }
    Ok(result)
}

/// Successful calls per time bucket, shared by the workers.
#[derive(Clone)]
struct Timeline {
    width: Duration,
    counts: Arc<Vec<AtomicU64>>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

impl WorkerResult {
    fn new() -> Self {
        Self {
            hist: new_histogram(),
            ok: 0,
            errors: 0,
            total_errors: 0,
            error_times_us: Vec::new(),
            error_samples: Vec::new(),
            per_instance: HashMap::new(),
            last_seen: HashMap::new(),
            started: 0,
        }
    }
}

/// Where one worker (or the open loop's collector) records its calls.
struct Recorder<'a> {
    r: WorkerResult,
    local_seen: HashSet<String>,
    seen: Arc<Mutex<HashSet<String>>>,
    config: &'a Config,
    measure_from: Instant,
    end: Instant,
    timeline: Option<(Instant, Timeline)>,
}

impl<'a> Recorder<'a> {
    fn new(
        seen: Arc<Mutex<HashSet<String>>>,
        config: &'a Config,
        measure_from: Instant,
        end: Instant,
        timeline: Option<(Instant, Timeline)>,
    ) -> Self {
        Self {
            r: WorkerResult::new(),
            local_seen: HashSet::new(),
            seen,
            config,
            measure_from,
            end,
            timeline,
        }
    }

    /// One call started at `t0` and answered at `t1` by `outcome` (the
    /// instance id of the reply, or the error).
    fn note(&mut self, t0: Instant, t1: Instant, outcome: Result<&str, &tonic::Status>) {
        let r = &mut self.r;
        let measured = t0 >= self.measure_from && t1 <= self.end;
        match outcome {
            Ok(id) => {
                if let Some((start, t)) = &self.timeline {
                    let i =
                        (t1.duration_since(*start).as_nanos() / t.width.as_nanos().max(1)) as usize;
                    if let Some(c) = t.counts.get(i) {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if self.config.events {
                    let now = unix_us();
                    match r.last_seen.get_mut(id) {
                        Some(t) => *t = now,
                        None => {
                            r.last_seen.insert(id.to_string(), now);
                        }
                    }
                    if !self.local_seen.contains(id) {
                        self.local_seen.insert(id.to_string());
                        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                        if seen.insert(id.to_string()) {
                            println!("{}", json!({"event": "first", "id": id, "t_us": now}));
                        }
                    }
                }
                if measured {
                    r.ok += 1;
                    let us = u64::try_from((t1 - t0).as_micros()).unwrap_or(u64::MAX);
                    let _ = r.hist.record(us.max(1));
                    match r.per_instance.get_mut(id) {
                        Some(n) => *n += 1,
                        None => {
                            r.per_instance.insert(id.to_string(), 1);
                        }
                    }
                }
            }
            Err(status) => {
                r.total_errors += 1;
                if measured {
                    r.errors += 1;
                }
                if r.error_times_us.len() < 10_000 {
                    r.error_times_us.push(unix_us());
                }
                if r.error_samples.len() < 3 {
                    let s = format!("{:?}: {}", status.code(), status.message());
                    if !r.error_samples.contains(&s) {
                        r.error_samples.push(s);
                    }
                }
            }
        }
    }

    fn stopped(&self) -> bool {
        self.config
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }
}

fn request(config: &Config, sticky_id: &Option<Arc<str>>) -> tonic::Request<EchoRequest> {
    let mut request = tonic::Request::new(EchoRequest {
        message: "hi".into(),
    });
    request.set_timeout(config.timeout);
    if let Some(id) = sticky_id {
        request = request.sticky(id.clone());
    }
    request
}

/// A closed-loop worker: one call at a time until `recorder.end`.
async fn worker(
    mut client: Client,
    sticky_id: Option<Arc<str>>,
    mut recorder: Recorder<'_>,
) -> WorkerResult {
    let (config, end) = (recorder.config, recorder.end);
    loop {
        let t0 = Instant::now();
        if t0 >= end || recorder.stopped() {
            break;
        }
        let outcome = client.unary_echo(request(config, &sticky_id)).await;
        let t1 = Instant::now();
        match outcome {
            Ok(reply) => recorder.note(t0, t1, Ok(instance_of(&reply.into_inner().message))),
            Err(status) => recorder.note(t0, t1, Err(&status)),
        }
        if !config.interval.is_zero() {
            tokio::time::sleep(config.interval).await;
        }
    }
    recorder.r
}

/// The open loop: calls start on a schedule of `rate` per second from
/// `start` until `recorder.end`, each its own task, whatever became of the
/// earlier ones; a call's latency counts from when it was due (so a stalled
/// client shows). Each millisecond starts the calls that have come due.
async fn open_loop(
    client: Client,
    sticky_id: Option<Arc<str>>,
    mut recorder: Recorder<'_>,
    rate: f64,
    start: Instant,
) -> WorkerResult {
    let (config, end) = (recorder.config, recorder.end);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Dropped once the schedule ends: then the calls still out hold the
    // only senders, and the loop ends with the last of them.
    let mut tx = Some(tx);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut started: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick(), if tx.is_some() => {
                let now = Instant::now();
                let Some(sender) = tx.as_ref().filter(|_| now < end && !recorder.stopped()) else {
                    tx = None;
                    continue;
                };
                let due = (now.duration_since(start).as_secs_f64() * rate) as u64;
                for n in started..due {
                    let t0 = start + Duration::from_secs_f64(n as f64 / rate);
                    let mut client = client.clone();
                    let request = request(config, &sticky_id);
                    let tx = sender.clone();
                    tokio::spawn(async move {
                        let outcome = client
                            .unary_echo(request)
                            .await
                            .map(|reply| instance_of(&reply.into_inner().message).to_string());
                        let _ = tx.send((t0, Instant::now(), outcome));
                    });
                }
                started = started.max(due);
                recorder.r.started = started;
            }
            done = rx.recv() => match done {
                Some((t0, t1, outcome)) => {
                    let outcome: &Result<String, tonic::Status> = &outcome;
                    recorder.note(t0, t1, outcome.as_ref().map(String::as_str));
                }
                None => break,
            },
        }
    }
    recorder.r
}

/// Resident set size of this process, MiB.
pub fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| (kb / 1024.0 * 10.0).round() / 10.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_is_read_from_the_reply() {
        assert_eq!(instance_of("hi (from 2)"), "2");
        assert_eq!(instance_of("a (from b) (from 10)"), "10");
        assert_eq!(instance_of("no id"), "?");
    }

    #[test]
    fn modes_parse_by_name() {
        for m in [
            Mode::Direct,
            Mode::BalanceChannel,
            Mode::Balancer,
            Mode::Sticky,
        ] {
            assert_eq!(Mode::parse(m.name()), Ok(m));
        }
        assert!(Mode::parse("p2c").unwrap_err().contains("unknown mode"));
    }

    /// The harness's smoke test: every mode against in-process servers, with
    /// tiny windows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_mode_runs_against_in_process_servers() {
        let one = crate::serve::serve("1", 1).await.expect("serve 1");
        let two = crate::serve::serve("2", 1).await.expect("serve 2");
        let servers = Servers::List(vec![
            ("1".into(), one[0].to_string()),
            ("2".into(), two[0].to_string()),
        ]);
        for mode in [
            Mode::Direct,
            Mode::BalanceChannel,
            Mode::Balancer,
            Mode::Sticky,
        ] {
            let result = run(Config {
                mode,
                servers: servers.clone(),
                concurrency: 4,
                warmup: Duration::from_millis(50),
                duration: Duration::from_millis(200),
                interval: Duration::ZERO,
                timeout: Duration::from_secs(5),
                sticky_id: None,
                wait_ready: None,
                events: false,
                stop: None,
                no_grey_detection: false,
                timeline: None,
                rate: None,
            })
            .await
            .expect("load runs");
            assert!(result["ok"].as_u64().unwrap() > 0, "{mode:?}: {result}");
            assert_eq!(result["errors"], 0, "{mode:?}: {result}");
            let per = result["per_instance"].as_object().unwrap();
            match mode {
                Mode::Direct | Mode::Sticky => {
                    assert_eq!(per.keys().collect::<Vec<_>>(), ["1"], "{mode:?}")
                }
                Mode::BalanceChannel | Mode::Balancer => assert_eq!(per.len(), 2, "{mode:?}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_open_loop_calls_on_its_schedule_and_ends_with_its_last_call() {
        let one = crate::serve::serve("1", 1).await.expect("serve 1");
        let two = crate::serve::serve("2", 1).await.expect("serve 2");
        let result = run(Config {
            mode: Mode::Balancer,
            servers: Servers::List(vec![
                ("1".into(), one[0].to_string()),
                ("2".into(), two[0].to_string()),
            ]),
            concurrency: 1,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(200),
            interval: Duration::ZERO,
            timeout: Duration::from_secs(5),
            sticky_id: None,
            wait_ready: None,
            events: false,
            stop: None,
            no_grey_detection: false,
            timeline: Some(Duration::from_millis(50)),
            rate: Some(1000.0),
        })
        .await
        .expect("load runs");
        assert_eq!(result["open_loop_rate"], 1000.0, "{result}");
        assert_eq!(result["errors"], 0, "{result}");
        assert_eq!(
            result["per_instance"].as_object().unwrap().len(),
            2,
            "{result}"
        );
        let answered: u64 = result["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_u64)
            .sum();
        // The run waited for every call it started.
        assert_eq!(
            Some(answered),
            result["open_loop_started"].as_u64(),
            "{result}"
        );
    }
}
