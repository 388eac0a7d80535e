//! Grey failures: frozen, slow and failing servers, over real in-process
//! tonic servers on 127.0.0.1. A "frozen" server sits behind [`Freezer`], a
//! TCP relay that stops passing bytes either way while the connection stays
//! open — what a SIGSTOPped process or a blackholed network looks like to the
//! client.

mod support;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use echo_proto::{EchoRequest, echo_client::EchoClient};
use etcdlb_balancer::{
    BackoffConfig, Balancer, Change, ConnectivityState, Endpoint, EndpointStatus, Exclusion,
    FreezeDetection, OutlierDetection,
};
use support::{TestServer, from, hi};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tonic::Code;

type Client = EchoClient<Balancer>;

/// A TCP relay to `upstream` that can stop passing bytes.
struct Freezer {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Freezer {
    fn start(upstream: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (frozen, gate) = watch::channel(false);
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("listener");
            while let Ok((client, _)) = listener.accept().await {
                let gate = gate.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pass(cr, sw, gate.clone()));
                    tokio::spawn(pass(sr, cw, gate));
                });
            }
        });
        Self {
            addr,
            frozen,
            runtime: Some(runtime),
        }
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    fn endpoint(&self, id: &str) -> Endpoint {
        Endpoint::new(&self.addr.to_string())
            .expect("endpoint")
            .with_instance_id(id)
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Nothing is read while frozen either: the bytes stay in the kernel.
        if gate.wait_for(|frozen| !frozen).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if gate.wait_for(|frozen| !frozen).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn fast_backoff() -> BackoffConfig {
    BackoffConfig {
        base: Duration::from_millis(50),
        max: Duration::from_millis(200),
        ..BackoffConfig::default()
    }
}

/// Fixed bounds, so these tests say when things happen.
const DETECTION: FreezeDetection = FreezeDetection {
    suspect_after: Duration::from_millis(300),
    probe_timeout: Duration::from_millis(300),
    adaptive: None,
};

fn status<'a>(all: &'a [EndpointStatus], key: &str) -> &'a EndpointStatus {
    all.iter().find(|e| e.key == key).expect("endpoint listed")
}

fn suspected(status: &EndpointStatus) -> Option<Duration> {
    status.excluded.iter().find_map(|e| match e {
        Exclusion::Suspected { silent_for, .. } => Some(*silent_for),
        _ => None,
    })
}

/// Waits until `key` is suspected, then until it answered the probe.
async fn suspected_then_cleared(balancer: &Balancer, key: &str) {
    balancer
        .wait_until(|all| suspected(status(all, key)).is_some())
        .await;
    balancer
        .wait_until(|all| status(all, key).excluded.is_empty())
        .await;
}

/// Closed-loop workers calling until told to stop; each result is kept.
struct Load {
    stop: Arc<AtomicBool>,
    progress: tokio::sync::mpsc::UnboundedReceiver<()>,
    workers: Vec<tokio::task::JoinHandle<Vec<Result<String, tonic::Status>>>>,
}

fn load(balancer: &Balancer, workers: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let (progress_tx, progress) = tokio::sync::mpsc::unbounded_channel();
    let workers = (0..workers)
        .map(|_| {
            let mut client: Client = EchoClient::new(balancer.clone());
            let stop = stop.clone();
            let progress_tx = progress_tx.clone();
            tokio::spawn(async move {
                let mut results = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let result = client
                        .unary_echo(hi())
                        .await
                        .map(|r| from(&r.into_inner().message));
                    results.push(result);
                    let _ = progress_tx.send(());
                }
                results
            })
        })
        .collect();
    Load {
        stop,
        progress,
        workers,
    }
}

impl Load {
    async fn wait_for_calls(&mut self, n: usize) {
        for _ in 0..n {
            self.progress.recv().await.expect("progress");
        }
    }

    async fn results(self) -> Vec<Result<String, tonic::Status>> {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.progress);
        let mut all = Vec::new();
        for worker in self.workers {
            all.extend(worker.await.expect("worker"));
        }
        all
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_is_suspected_dropped_and_rejoins_after_thawing() {
    let one = TestServer::start("1");
    let two = TestServer::start("2");
    let three = TestServer::start("3");
    let relay = Freezer::start(three.addr);
    let balancer = Balancer::builder()
        .name("grey")
        .backoff(fast_backoff())
        .freeze_detection(Some(DETECTION))
        .build(futures::stream::iter([
            one.insert(),
            two.insert(),
            Change::Insert("3".into(), relay.endpoint("3")),
        ]));
    balancer.wait_for_ready(3).await;
    const WORKERS: usize = 8;
    let mut load = load(&balancer, WORKERS);
    load.wait_for_calls(300).await;

    relay.freeze();
    balancer
        .wait_until(|all| suspected(status(all, "3")).is_some())
        .await;
    let at_suspicion = balancer.endpoints();
    let silent_for = suspected(status(&at_suspicion, "3")).expect("suspected");
    assert!(
        silent_for >= DETECTION.suspect_after,
        "suspected after {silent_for:?} of silence, configured {:?}",
        DETECTION.suspect_after
    );
    let picks_at_suspicion = status(&at_suspicion, "3").picks;
    // No answer to the probe: the connection is given up.
    balancer
        .wait_until(|all| status(all, "3").state != ConnectivityState::Ready)
        .await;
    load.wait_for_calls(500).await;
    assert_eq!(
        status(&balancer.endpoints(), "3").picks,
        picks_at_suspicion,
        "a suspected endpoint gets no new calls"
    );
    let last_error = status(&balancer.endpoints(), "3")
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(last_error.contains("PING"), "{last_error}");

    relay.thaw();
    balancer
        .wait_until(|all| {
            let three = status(all, "3");
            three.state == ConnectivityState::Ready && three.excluded.is_empty()
        })
        .await;
    let picks_at_thaw = status(&balancer.endpoints(), "3").picks;
    load.wait_for_calls(300).await;
    let results = load.results().await;

    let mut by_server: HashMap<String, usize> = HashMap::new();
    let mut failed = Vec::new();
    for result in &results {
        match result {
            Ok(id) => *by_server.entry(id.clone()).or_default() += 1,
            Err(status) => failed.push(status.clone()),
        }
    }
    assert!(
        status(&balancer.endpoints(), "3").picks > picks_at_thaw,
        "the thawed server gets calls again: {by_server:?}"
    );
    // Only calls in flight on the frozen server when it froze may fail.
    assert!(
        failed.len() <= WORKERS,
        "{} failed: {failed:?}",
        failed.len()
    );
    for status in &failed {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains(&relay.addr.to_string()),
            "names the endpoint: {status:?}"
        );
        assert!(status.message().contains("PING"), "says why: {status:?}");
    }
    assert!(by_server["1"] > 0 && by_server["2"] > 0, "{by_server:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_server_that_answers_pings_keeps_its_connection_and_calls() {
    let server = TestServer::start("1");
    let balancer = Balancer::builder()
        .name("grey")
        .freeze_detection(Some(DETECTION))
        .build(futures::stream::iter([server.insert()]));
    balancer.wait_for_ready(1).await;
    let slow = server.hold_call(EchoClient::new(balancer.clone())).await;
    // Silent with a call in flight: suspected and probed; it answers.
    suspected_then_cleared(&balancer, "1").await;
    let mut client: Client = EchoClient::new(balancer.clone());
    let reply = client.unary_echo(hi()).await.expect("call");
    assert_eq!(from(&reply.into_inner().message), "1");
    let now = status(&balancer.endpoints(), "1").clone();
    assert_eq!(now.state, ConnectivityState::Ready);
    assert_eq!(now.failures, 0);
    assert!(!slow.is_finished(), "the slow call is still in flight");
    assert_eq!(
        server.connections.load(Ordering::Relaxed),
        1,
        "never reconnected"
    );
    slow.abort();
}

/// An echo server with a health service whose status the test sets.
struct HealthServer {
    addr: SocketAddr,
    reporter: tonic_health::server::HealthReporter,
    runtime: Option<tokio::runtime::Runtime>,
}

const SERVICE: &str = "grpc.examples.echo.Echo";

impl HealthServer {
    fn start(id: &str, initially: tonic_health::ServingStatus) -> Self {
        Self::start_failing(id, initially, false)
    }

    /// With `fail`, every Echo call fails with UNAVAILABLE.
    fn start_failing(id: &str, initially: tonic_health::ServingStatus, fail: bool) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (reporter, health) = tonic_health::server::health_reporter();
        let echo = echo_proto::echo_server::EchoServer::new(Named {
            id: id.to_string(),
            fail,
        });
        let initial = reporter.clone();
        runtime.spawn(async move {
            initial.set_service_status(SERVICE, initially).await;
            let listener = TcpListener::from_std(listener).expect("listener");
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(echo)
                .serve_with_incoming(incoming)
                .await;
        });
        Self {
            addr,
            reporter,
            runtime: Some(runtime),
        }
    }

    async fn set(&self, status: tonic_health::ServingStatus) {
        let reporter = self.reporter.clone();
        if let Some(runtime) = &self.runtime {
            let set =
                runtime.spawn(async move { reporter.set_service_status(SERVICE, status).await });
            set.await.expect("health status set");
        }
    }

    fn insert(&self, id: &str) -> Change {
        Change::Insert(
            id.into(),
            Endpoint::new(&self.addr.to_string())
                .expect("endpoint")
                .with_instance_id(id),
        )
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Unary echo naming its server; the streaming calls are not needed here.
struct Named {
    id: String,
    fail: bool,
}

type Replies = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<echo_proto::EchoResponse, tonic::Status>> + Send>,
>;

#[tonic::async_trait]
impl echo_proto::echo_server::Echo for Named {
    async fn unary_echo(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<echo_proto::EchoResponse>, tonic::Status> {
        if self.fail {
            return Err(tonic::Status::unavailable(format!("{} fails", self.id)));
        }
        Ok(tonic::Response::new(echo_proto::EchoResponse {
            message: format!("{} (from {})", request.into_inner().message, self.id),
        }))
    }

    type ServerStreamingEchoStream = Replies;

    async fn server_streaming_echo(
        &self,
        _: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<Replies>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in tests"))
    }

    async fn client_streaming_echo(
        &self,
        _: tonic::Request<tonic::Streaming<EchoRequest>>,
    ) -> Result<tonic::Response<echo_proto::EchoResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in tests"))
    }

    type BidirectionalStreamingEchoStream = Replies;

    async fn bidirectional_streaming_echo(
        &self,
        _: tonic::Request<tonic::Streaming<EchoRequest>>,
    ) -> Result<tonic::Response<Replies>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in tests"))
    }
}

fn not_serving(status: &EndpointStatus) -> Option<&str> {
    status.excluded.iter().find_map(|e| match e {
        Exclusion::NotServing { status, .. } => Some(status.as_str()),
        _ => None,
    })
}

async fn calls_by_server(client: &mut Client, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let reply = client.unary_echo(hi()).await.expect("call");
        *counts.entry(from(&reply.into_inner().message)).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn health_not_serving_takes_the_endpoint_out_and_serving_brings_it_back() {
    let a = HealthServer::start("a", tonic_health::ServingStatus::Serving);
    let b = HealthServer::start("b", tonic_health::ServingStatus::Serving);
    // A discovery stream that never changes: only health moves endpoints.
    let (_discovery, changes) = support::discovery();
    _discovery.send(a.insert("a")).expect("send");
    _discovery.send(b.insert("b")).expect("send");
    let balancer = Balancer::builder()
        .name("grey")
        .health_check(SERVICE)
        .build(changes);
    balancer.wait_for_ready(2).await;
    let mut client: Client = EchoClient::new(balancer.clone());
    assert_eq!(calls_by_server(&mut client, 20).await.len(), 2);

    a.set(tonic_health::ServingStatus::NotServing).await;
    balancer
        .wait_until(|all| not_serving(status(all, "a")) == Some("NOT_SERVING"))
        .await;
    let shown = status(&balancer.endpoints(), "a").excluded[0].to_string();
    assert_eq!(
        shown,
        "health service \"grpc.examples.echo.Echo\" reports NOT_SERVING"
    );
    assert_eq!(
        status(&balancer.endpoints(), "a").state,
        ConnectivityState::Ready
    );
    let counts = calls_by_server(&mut client, 50).await;
    assert_eq!(counts.get("b"), Some(&50), "{counts:?}");

    a.set(tonic_health::ServingStatus::Serving).await;
    balancer.wait_for_ready(2).await;
    let counts = calls_by_server(&mut client, 20).await;
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
}

#[tokio::test]
async fn health_checking_a_server_without_the_health_service_treats_it_as_healthy() {
    // The support servers serve Echo only: Health/Watch is UNIMPLEMENTED.
    let server = TestServer::start("1");
    let balancer = Balancer::builder()
        .name("grey")
        .health_check(SERVICE)
        .build(futures::stream::iter([server.insert()]));
    balancer.wait_for_ready(1).await;
    let mut client: Client = EchoClient::new(balancer.clone());
    assert_eq!(calls_by_server(&mut client, 5).await.get("1"), Some(&5));
    assert!(status(&balancer.endpoints(), "1").excluded.is_empty());
}

#[tokio::test]
async fn a_health_checked_endpoint_is_not_picked_before_its_first_serving() {
    let server = HealthServer::start("a", tonic_health::ServingStatus::NotServing);
    let balancer = Balancer::builder()
        .name("grey")
        .health_check(SERVICE)
        .fail_fast(true)
        .build(futures::stream::iter([server.insert("a")]));
    balancer
        .wait_until(|all| {
            all.iter()
                .any(|e| e.key == "a" && not_serving(e) == Some("NOT_SERVING"))
        })
        .await;
    let mut client: Client = EchoClient::new(balancer.clone());
    let failed = client.unary_echo(hi()).await.expect_err("nothing to pick");
    assert_eq!(failed.code(), Code::Unavailable);
    assert!(
        failed.message().contains("1 not picked"),
        "{}",
        failed.message()
    );
}

fn ejected(status: &EndpointStatus) -> Option<(tokio::time::Instant, u32)> {
    status.excluded.iter().find_map(|e| match e {
        Exclusion::Ejected { until, times, .. } => Some((*until, *times)),
        _ => None,
    })
}

fn ejection(base: Duration) -> OutlierDetection {
    OutlierDetection {
        base_ejection_time: base,
        ..OutlierDetection::default()
    }
}

async fn outcomes(client: &mut Client, n: usize) -> (HashMap<String, usize>, usize) {
    let mut ok = HashMap::new();
    let mut failed = 0;
    for _ in 0..n {
        match client.unary_echo(hi()).await {
            Ok(reply) => *ok.entry(from(&reply.into_inner().message)).or_default() += 1,
            Err(_) => failed += 1,
        }
    }
    (ok, failed)
}

#[tokio::test]
async fn a_server_failing_every_call_is_ejected_and_the_others_answer() {
    use tonic_health::ServingStatus::Serving;
    let a = HealthServer::start("a", Serving);
    let b = HealthServer::start("b", Serving);
    let bad = HealthServer::start_failing("bad", Serving, true);
    let balancer = Balancer::builder()
        .name("grey")
        .outlier_detection(Some(ejection(Duration::from_secs(60))))
        .build(futures::stream::iter([
            a.insert("a"),
            b.insert("b"),
            bad.insert("bad"),
        ]));
    balancer.wait_for_ready(3).await;
    let mut client: Client = EchoClient::new(balancer.clone());
    let (ok, failed) = outcomes(&mut client, 1000).await;
    let answered: usize = ok.values().sum();
    assert!(
        answered * 100 >= 99 * 1000,
        "{answered} of 1000 answered, {failed} failed: {ok:?}"
    );
    let all = balancer.endpoints();
    let (_, times) = ejected(status(&all, "bad")).expect("ejected");
    assert_eq!(times, 1);
    assert!(ejected(status(&all, "a")).is_none() && ejected(status(&all, "b")).is_none());
    assert_eq!(balancer.stats().ejections, 1);
    let shown = status(&all, "bad").excluded[0].to_string();
    assert!(shown.contains("5 failed calls in a row"), "{shown}");
}

#[tokio::test]
async fn an_ejection_ends_after_its_time_and_grows_when_repeated() {
    use tonic_health::ServingStatus::Serving;
    let a = HealthServer::start("a", Serving);
    let bad = HealthServer::start_failing("bad", Serving, true);
    let base = Duration::from_millis(300);
    let balancer = Balancer::builder()
        .name("grey")
        .outlier_detection(Some(ejection(base)))
        .build(futures::stream::iter([a.insert("a"), bad.insert("bad")]));
    balancer.wait_for_ready(2).await;
    let mut client: Client = EchoClient::new(balancer.clone());
    while ejected(status(&balancer.endpoints(), "bad")).is_none() {
        let _ = client.unary_echo(hi()).await;
    }
    let (first_until, _) = ejected(status(&balancer.endpoints(), "bad")).expect("ejected");
    // Its time over, it is picked again...
    balancer
        .wait_until(|all| status(all, "bad").excluded.is_empty())
        .await;
    assert!(tokio::time::Instant::now() >= first_until);
    // ...fails again, and the second ejection is longer.
    let again = tokio::time::Instant::now();
    while ejected(status(&balancer.endpoints(), "bad")).is_none() {
        let _ = client.unary_echo(hi()).await;
    }
    let (until, times) = ejected(status(&balancer.endpoints(), "bad")).expect("ejected");
    assert_eq!(times, 2);
    assert!(until - again > base, "second ejection lasts 2 × base");
    assert_eq!(balancer.stats().ejections, 2);
}

#[tokio::test]
async fn never_all_endpoints_are_ejected() {
    use tonic_health::ServingStatus::Serving;
    let servers: Vec<HealthServer> = ["x", "y", "z"]
        .iter()
        .map(|id| HealthServer::start_failing(id, Serving, true))
        .collect();
    let balancer = Balancer::builder()
        .name("grey")
        .outlier_detection(Some(ejection(Duration::from_secs(60))))
        .build(futures::stream::iter(
            servers
                .iter()
                .zip(["x", "y", "z"])
                .map(|(s, id)| s.insert(id))
                .collect::<Vec<_>>(),
        ));
    balancer.wait_for_ready(3).await;
    let mut client: Client = EchoClient::new(balancer.clone());
    let (_, failed) = outcomes(&mut client, 200).await;
    assert_eq!(failed, 200);
    let all = balancer.endpoints();
    let ejected_now = all.iter().filter(|e| ejected(e).is_some()).count();
    assert_eq!(ejected_now, 1, "at most 50 % of 3 (rounded down): {all:?}");
    assert_eq!(balancer.ready_count(), 2);
}

/// Follows HTTP/2 frame headers in one direction of a byte stream.
struct FrameScan {
    skip: usize,
    header: Vec<u8>,
    payload_left: usize,
}

impl FrameScan {
    fn new(preface: usize) -> Self {
        Self {
            skip: preface,
            header: Vec::new(),
            payload_left: 0,
        }
    }

    /// Calls `frame(type, flags)` for each frame header completed in `bytes`.
    fn feed(&mut self, mut bytes: &[u8], mut frame: impl FnMut(u8, u8)) {
        while !bytes.is_empty() {
            if self.skip > 0 || self.payload_left > 0 {
                let left = if self.skip > 0 {
                    &mut self.skip
                } else {
                    &mut self.payload_left
                };
                let n = (*left).min(bytes.len());
                *left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == 9 {
                let h = std::mem::take(&mut self.header);
                self.payload_left =
                    (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                frame(h[3], h[4]);
            }
        }
    }
}

/// grpc-go's server ping policy (`http2_server.go` `handlePing`, default
/// `MinTime` 5 min): a strike per PING sooner than 5 min after the previous
/// one unless the server sent HEADERS/DATA since; above 2 strikes, GOAWAY
/// `too_many_pings`.
#[derive(Default)]
struct PingPolice {
    reset: bool,
    strikes: u32,
    last_ping: Option<std::time::Instant>,
    pings: u32,
    goaways: u32,
}

impl PingPolice {
    fn on_client_ping(&mut self) {
        self.pings += 1;
        let now = std::time::Instant::now();
        let last = self.last_ping.replace(now);
        if std::mem::take(&mut self.reset) {
            self.strikes = 0;
            return;
        }
        if last.is_some_and(|last| now - last < Duration::from_secs(300)) {
            self.strikes += 1;
        }
        if self.strikes > 2 {
            self.goaways += 1;
        }
    }
}

/// A relay to `upstream` that enforces nothing but counts what grpc-go's
/// ping policy would do with the client's PINGs.
async fn policed(upstream: SocketAddr) -> (SocketAddr, Arc<std::sync::Mutex<PingPolice>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let police = Arc::new(std::sync::Mutex::new(PingPolice::default()));
    let shared = police.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let up = shared.clone();
            tokio::spawn(async move {
                let mut scan = FrameScan::new(24);
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n @ 1..) = cr.read(&mut buf).await {
                    scan.feed(&buf[..n], |kind, flags| {
                        if kind == 0x6 && flags & 0x1 == 0 {
                            up.lock().expect("police").on_client_ping();
                        }
                    });
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            let down = shared.clone();
            tokio::spawn(async move {
                let mut scan = FrameScan::new(0);
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n @ 1..) = sr.read(&mut buf).await {
                    // Forwarded first: the flag must be set before the client
                    // can react to these bytes, as in grpc-go (set on write).
                    scan.feed(&buf[..n], |kind, _| {
                        if kind <= 0x1 {
                            down.lock().expect("police").reset = true;
                        }
                    });
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, police)
}

/// A balancer over the one endpoint at `addr` (a relay), once it is READY.
async fn ready_through(addr: SocketAddr, detection: FreezeDetection) -> Balancer {
    let balancer = Balancer::builder()
        .name("grey")
        .freeze_detection(Some(detection))
        .build(futures::stream::iter([Change::Insert(
            "1".into(),
            Endpoint::new(&addr.to_string()).expect("endpoint"),
        )]));
    balancer.wait_for_ready(1).await;
    balancer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_never_earn_a_grpc_go_too_many_pings() {
    let server = TestServer::start("1");
    let (addr, police) = policed(server.addr).await;
    let detection = FreezeDetection::fixed(Duration::from_millis(30), Duration::from_secs(2));
    let balancer = ready_through(addr, detection).await;
    let mut client: Client = EchoClient::new(balancer.clone());
    // A call that never ends keeps the connection silent with a call in
    // flight: the worst case for the probe budget.
    let slow = server.hold_call(client.clone()).await;
    // Long silences, then short ones broken by answered calls.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(80)).await;
        client.unary_echo(hi()).await.expect("call");
    }
    let police = police.lock().expect("police");
    assert!(
        police.pings >= 3,
        "the test must make probes: {}",
        police.pings
    );
    assert_eq!(
        police.goaways, 0,
        "{} pings, {} strikes",
        police.pings, police.strikes
    );
    assert_eq!(server.connections.load(Ordering::Relaxed), 1);
    assert_eq!(status(&balancer.endpoints(), "1").failures, 0);
    slow.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_silent_streams_are_not_suspected_but_a_stalled_call_is() {
    let server = TestServer::start("1");
    let (addr, police) = policed(server.addr).await;
    let balancer = ready_through(addr, DETECTION).await;
    let mut client: Client = EchoClient::new(balancer.clone());
    // Watch-like streams: answered with headers, then silent.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let stream = client
            .server_streaming_echo(EchoRequest {
                message: "silent".into(),
            })
            .await
            .expect("stream answered")
            .into_inner();
        streams.push(stream);
    }
    // Nothing can be awaited for "nothing happens": give the detector
    // several times its threshold to get it wrong.
    tokio::time::sleep(DETECTION.suspect_after * 5).await;
    let pings = police.lock().expect("police").pings;
    let now = status(&balancer.endpoints(), "1").clone();
    assert_eq!(pings, 0, "answered streams must not be probed");
    assert!(now.excluded.is_empty(), "{:?}", now.excluded);
    assert_eq!(now.state, ConnectivityState::Ready);

    // A unary call the server never answers, next to the silent streams:
    // suspected and probed (the server answers the PING, so it stays).
    let slow = server.hold_call(client.clone()).await;
    suspected_then_cleared(&balancer, "1").await;
    assert!(police.lock().expect("police").pings >= 1);
    assert_eq!(server.connections.load(Ordering::Relaxed), 1);
    slow.abort();
    drop(streams);
}

/// The default (adaptive) bounds.
fn adaptive() -> (FreezeDetection, etcdlb_balancer::Adaptive) {
    let detection = FreezeDetection::default();
    (detection, detection.adaptive.expect("adaptive by default"))
}

/// Under load a frozen server is suspected after a multiple of its normal
/// silence (tens of microseconds to a few milliseconds between its bytes on
/// loopback), so at the floor, long before the fixed second of before; no
/// new call goes to it meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_is_suspected_within_the_adaptive_bound_and_gets_no_new_calls() {
    let (detection, bounds) = adaptive();
    let one = TestServer::start("1");
    let two = TestServer::start("2");
    let relay = Freezer::start(two.addr);
    let balancer = Balancer::builder()
        .name("adaptive")
        .backoff(fast_backoff())
        .build(futures::stream::iter([
            one.insert(),
            Change::Insert("2".into(), relay.endpoint("2")),
        ]));
    balancer.wait_for_ready(2).await;
    let mut load = load(&balancer, 8);
    load.wait_for_calls(500).await;
    relay.freeze();
    balancer
        .wait_until(|all| suspected(status(all, "2")).is_some())
        .await;
    let at_suspicion = balancer.endpoints();
    let silent_for = suspected(status(&at_suspicion, "2")).expect("suspected");
    assert!(
        silent_for >= bounds.suspect_floor && silent_for < detection.suspect_after,
        "suspected after {silent_for:?} of silence: the adaptive bound is {:?} (floor) \
         here, the ceiling {:?}",
        bounds.suspect_floor,
        detection.suspect_after
    );
    let picks = status(&at_suspicion, "2").picks;
    load.wait_for_calls(300).await;
    assert_eq!(
        status(&balancer.endpoints(), "2").picks,
        picks,
        "no new picks"
    );
    relay.thaw();
    let results = load.results().await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    assert!(failed <= 8, "at most the calls in flight on it: {failed}");
}

/// A GC-like pause — 150 ms, five times — under load: the server may be
/// suspected and skipped, but its PING is answered within the PING's
/// timeout, so no call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_pauses_fail_no_call() {
    let one = TestServer::start("1");
    let two = TestServer::start("2");
    let relay = Freezer::start(two.addr);
    let balancer = Balancer::builder()
        .name("pauses")
        .backoff(fast_backoff())
        .build(futures::stream::iter([
            one.insert(),
            Change::Insert("2".into(), relay.endpoint("2")),
        ]));
    balancer.wait_for_ready(2).await;
    let mut load = load(&balancer, 16);
    for _ in 0..5 {
        load.wait_for_calls(200).await;
        relay.freeze();
        tokio::time::sleep(Duration::from_millis(150)).await;
        relay.thaw();
    }
    load.wait_for_calls(200).await;
    let results = load.results().await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    assert_eq!(
        status(&balancer.endpoints(), "2").state,
        ConnectivityState::Ready
    );
}

/// Slow is not frozen: a 2 s handler whose HTTP/2 layer answers PINGs is
/// suspected (it is silent far longer than normal) and cleared, never
/// declared dead; its call completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_handler_that_answers_pings_completes_under_adaptive_detection() {
    let server = TestServer::start("1");
    let balancer = Balancer::builder()
        .name("slow")
        .build(futures::stream::iter([server.insert()]));
    balancer.wait_for_ready(1).await;
    let mut client: Client = EchoClient::new(balancer.clone());
    client.unary_echo(hi()).await.expect("a fast call first");
    server.delay_ms.store(2_000, Ordering::Relaxed);
    let reply = client
        .unary_echo(hi())
        .await
        .expect("the slow call completes");
    assert_eq!(from(&reply.into_inner().message), "1");
    let now = status(&balancer.endpoints(), "1").clone();
    assert!(now.probes >= 1, "it was suspected and probed: {now:?}");
    assert_eq!((now.state, now.failures), (ConnectivityState::Ready, 0));
    assert_eq!(
        server.connections.load(Ordering::Relaxed),
        1,
        "never reconnected"
    );
}
