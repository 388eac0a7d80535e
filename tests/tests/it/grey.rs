//! Grey failures with real server processes. Against `echo-server`
//! processes: a SIGSTOPped one is left out of the picks within the adaptive
//! bound and picked again after SIGCONT, 150 ms pauses fail no call, a 2 s
//! handler completes. Against the real Go peer: our freeze detection's PING
//! probes must stay within grpc-go's server ping policy (default
//! `EnforcementPolicy`: more than two "strikes" and the server sends GOAWAY
//! `ENHANCE_YOUR_CALM` "too_many_pings" and closes the connection).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use balancer::{
    BackoffConfig, Balancer, Change, ConnectivityState, Endpoint, EndpointStatus, Exclusion,
    FreezeDetection,
};
use echo_proto::{EchoRequest, echo_client::EchoClient};
use integration_tests::{
    etcd_endpoints, go,
    process::{Proc, from_id, start_server},
    unique_env,
};
use tonic::Code;

/// `n` echo-servers (ids 1..=n) and a balancer over them (keys = ids).
async fn servers_and_balancer(test: &str, n: usize, extra: &[&str]) -> (Vec<Proc>, Balancer) {
    let etcd = etcd_endpoints();
    let env = unique_env(test);
    let mut procs = Vec::new();
    let mut changes = Vec::new();
    for i in 1..=n {
        let id = i.to_string();
        let (server, addr) = start_server(&id, &env, &etcd, extra);
        procs.push(server);
        let endpoint = Endpoint::new(&addr)
            .expect("endpoint")
            .with_instance_id(id.as_str());
        changes.push(Change::Insert(id, endpoint));
    }
    let balancer = Balancer::builder()
        .name(test)
        .backoff(BackoffConfig {
            base: Duration::from_millis(50),
            max: Duration::from_millis(200),
            ..BackoffConfig::default()
        })
        .build(futures::stream::iter(changes));
    balancer.wait_for_ready(n).await;
    (procs, balancer)
}

fn status<'a>(all: &'a [EndpointStatus], key: &str) -> &'a EndpointStatus {
    all.iter().find(|e| e.key == key).expect("endpoint listed")
}

/// `(silent_for, in_flight)` of a suspicion.
fn suspected(status: &EndpointStatus) -> Option<(Duration, usize)> {
    status.excluded.iter().find_map(|e| match e {
        Exclusion::Suspected {
            silent_for,
            in_flight,
        } => Some((*silent_for, *in_flight)),
        _ => None,
    })
}

/// Closed-loop workers calling until told to stop; each result is kept
/// (the answering instance's id, or the error).
struct Load {
    stop: Arc<AtomicBool>,
    progress: tokio::sync::mpsc::UnboundedReceiver<()>,
    workers: Vec<tokio::task::JoinHandle<Vec<Result<String, tonic::Status>>>>,
}

impl Load {
    fn start(balancer: &Balancer, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (progress_tx, progress) = tokio::sync::mpsc::unbounded_channel();
        let workers = (0..workers)
            .map(|_| {
                let mut client = EchoClient::new(balancer.clone());
                let stop = stop.clone();
                let progress_tx = progress_tx.clone();
                tokio::spawn(async move {
                    let mut results = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let result = client
                            .unary_echo(EchoRequest {
                                message: "hi".into(),
                            })
                            .await
                            .map(|r| from_id(&r.into_inner().message).unwrap_or("?").to_owned());
                        results.push(result);
                        let _ = progress_tx.send(());
                    }
                    results
                })
            })
            .collect();
        Self {
            stop,
            progress,
            workers,
        }
    }

    async fn wait_for_calls(&mut self, n: usize) {
        for _ in 0..n {
            self.progress.recv().await.expect("progress");
        }
    }

    /// Stops the workers; the errors of every call made.
    async fn failures(self) -> Vec<tonic::Status> {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.progress);
        let mut failed = Vec::new();
        for worker in self.workers {
            failed.extend(
                worker
                    .await
                    .expect("worker")
                    .into_iter()
                    .filter_map(Result::err),
            );
        }
        failed
    }
}

/// A SIGSTOPped echo-server under load: suspected after a silence within
/// the adaptive bounds (floor … ceiling), no new call while it is out,
/// picked again once SIGCONT let it answer; only calls in flight on it fail,
/// UNAVAILABLE and naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_server_is_left_out_within_the_adaptive_bound_and_picked_after_sigcont() {
    const WORKERS: usize = 16;
    let detection = FreezeDetection::default();
    let bounds = detection.adaptive.expect("adaptive by default");
    let (servers, balancer) = servers_and_balancer("grey_stop", 3, &[]).await;
    let mut load = Load::start(&balancer, WORKERS);
    load.wait_for_calls(2_000).await;

    servers[2].signal(libc::SIGSTOP);
    balancer
        .wait_until(|all| suspected(status(all, "3")).is_some())
        .await;
    let at_suspicion = balancer.endpoints();
    let (silent_for, in_flight) = suspected(status(&at_suspicion, "3")).expect("suspected");
    assert!(
        silent_for >= bounds.suspect_floor && silent_for < detection.suspect_after,
        "suspected after {silent_for:?} of silence; the bounds are {:?} … {:?}",
        bounds.suspect_floor,
        detection.suspect_after
    );
    let picks = status(&at_suspicion, "3").picks;
    load.wait_for_calls(2_000).await;
    assert_eq!(
        status(&balancer.endpoints(), "3").picks,
        picks,
        "no new calls while it is out"
    );

    servers[2].signal(libc::SIGCONT);
    balancer
        .wait_until(|all| {
            let three = status(all, "3");
            three.state == ConnectivityState::Ready && three.excluded.is_empty()
        })
        .await;
    let picks_at_thaw = status(&balancer.endpoints(), "3").picks;
    load.wait_for_calls(2_000).await;
    assert!(
        status(&balancer.endpoints(), "3").picks > picks_at_thaw,
        "picked again after SIGCONT"
    );
    let failed = load.failures().await;
    assert!(
        failed.len() <= in_flight.max(WORKERS),
        "{} failed, {in_flight} were in flight on it: {failed:?}",
        failed.len()
    );
    let addr = status(&at_suspicion, "3").endpoint.addr().to_string();
    for status in &failed {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains(&addr), "names it: {status:?}");
    }
}

/// GC-like pauses of a real process — SIGSTOP, 150 ms, SIGCONT, five times
/// — under load: it may be suspected and skipped, but it answers the PING
/// in time, so no call fails and its connection is never given up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_of_150ms_of_a_real_server_fail_no_call() {
    let (servers, balancer) = servers_and_balancer("grey_pauses", 2, &[]).await;
    let mut load = Load::start(&balancer, 16);
    for _ in 0..5 {
        load.wait_for_calls(1_000).await;
        servers[1].signal(libc::SIGSTOP);
        tokio::time::sleep(Duration::from_millis(150)).await;
        servers[1].signal(libc::SIGCONT);
    }
    load.wait_for_calls(1_000).await;
    let failed = load.failures().await;
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    let two = status(&balancer.endpoints(), "2").clone();
    assert_eq!(two.state, ConnectivityState::Ready);
    assert_eq!(two.last_error, None, "never reconnected: {two:?}");
}

/// Slow is not frozen: an echo-server whose every reply takes 2 s (its
/// HTTP/2 layer answering PINGs meanwhile) is probed, never declared dead,
/// and its calls complete on the first connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_server_with_a_2s_handler_is_probed_and_its_calls_complete() {
    let (_servers, balancer) = servers_and_balancer("grey_slow", 1, &["--delay", "2s"]).await;
    let mut client = EchoClient::new(balancer.clone());
    for _ in 0..2 {
        let reply = client
            .unary_echo(EchoRequest {
                message: "hi".into(),
            })
            .await
            .expect("the slow call completes");
        assert_eq!(from_id(&reply.into_inner().message), Some("1"));
    }
    let one = status(&balancer.endpoints(), "1").clone();
    assert!(one.probes >= 1, "it was suspected and probed: {one:?}");
    assert_eq!((one.state, one.failures), (ConnectivityState::Ready, 0));
    assert_eq!(one.last_error, None, "never reconnected: {one:?}");
}

/// A call the Go server holds for `delay` (its `x-delay` metadata).
fn delayed(delay: &str) -> tonic::Request<EchoRequest> {
    let mut request = tonic::Request::new(EchoRequest {
        message: "hi".into(),
    });
    request
        .metadata_mut()
        .insert("x-delay", delay.parse().expect("ascii"));
    request
}

/// 60 s of calls slower than `suspect_after` (default freeze detection, so
/// every call is suspected and probed) against a grpc-go 1.33 server: one
/// 16 s call first, which spends the whole strike budget (probes 1, 3 and 7 s
/// into its silence, none after), then 1.5 s calls (one probe each, after the
/// server's previous reply). One call in flight at a time: cheap on CPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_against_a_go_server_for_60s_never_earn_too_many_pings() {
    let etcd = etcd_endpoints();
    let env = unique_env("go_pings");
    // grpc-go logs "Got too many pings" at verbosity 2 before its GOAWAY.
    let (mut server, addr) = go::start_server_with(
        "21",
        &env,
        &etcd,
        &["--delay", "1500ms"],
        &[
            ("GRPC_GO_LOG_SEVERITY_LEVEL", "info"),
            ("GRPC_GO_LOG_VERBOSITY_LEVEL", "2"),
        ],
    );
    let balancer = Balancer::builder()
        .name("go-pings")
        .build(futures::stream::iter([Change::Insert(
            "21".into(),
            Endpoint::new(&addr).expect("endpoint"),
        )]));
    balancer.wait_for_ready(1).await;
    let mut client = EchoClient::new(balancer.clone());
    let started = Instant::now();
    let mut ok = 0;
    let mut failed = Vec::new();
    let mut first = true;
    while started.elapsed() < Duration::from_secs(60) {
        let request = if std::mem::take(&mut first) {
            delayed("16s")
        } else {
            delayed("1500ms")
        };
        match client.unary_echo(request).await {
            Ok(_) => ok += 1,
            Err(status) => failed.push(status),
        }
    }
    let endpoint = balancer.endpoints().pop().expect("the endpoint");
    let too_many = server.count_stderr("too many pings");
    assert!(
        endpoint.probes >= 10,
        "the test must make our client probe: {} probes in {ok} calls",
        endpoint.probes
    );
    assert_eq!(too_many, 0, "{}", server.transcript());
    assert!(failed.is_empty(), "{} ok, failed: {failed:?}", ok);
    assert_eq!(endpoint.state, ConnectivityState::Ready);
    assert_eq!(
        endpoint.last_error, None,
        "the connection was never closed ({} probes)",
        endpoint.probes
    );
    // The figures of the run, for the closing note.
    eprintln!(
        "go ping run: {ok} calls, {} probes, 0 \"too many pings\"",
        endpoint.probes
    );
}
