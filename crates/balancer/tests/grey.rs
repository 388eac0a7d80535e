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

use balancer::{
    BackoffConfig, Balancer, Change, ConnectivityState, Endpoint, EndpointStatus, Exclusion,
    FreezeDetection,
};
use echo_proto::{EchoRequest, echo_client::EchoClient};
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

const DETECTION: FreezeDetection = FreezeDetection {
    suspect_after: Duration::from_millis(300),
    probe_timeout: Duration::from_millis(300),
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
    let mut slow_client: Client = EchoClient::new(balancer.clone());
    let slow = tokio::spawn(async move {
        slow_client
            .unary_echo(EchoRequest {
                message: "slow".into(),
            })
            .await
    });
    server.slow_call.notified().await;
    // Silent with a call in flight: suspected and probed; it answers.
    balancer
        .wait_until(|all| suspected(status(all, "1")).is_some())
        .await;
    balancer
        .wait_until(|all| status(all, "1").excluded.is_empty())
        .await;
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
