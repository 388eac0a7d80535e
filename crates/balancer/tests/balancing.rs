//! The balancer over real in-process tonic servers on 127.0.0.1.

mod support;

use std::{collections::HashMap, time::Duration};

use echo_proto::echo_client::EchoClient;
use etcdlb_balancer::{
    BackoffConfig, Balancer, Change, ConnectivityState, Endpoint, Error, ErrorKind, Fallback,
    Sticky, StickyExt,
};

/// The kind of the balancer's own error behind `status`.
fn kind(status: &tonic::Status) -> Option<ErrorKind> {
    Error::of(status).map(Error::kind)
}
use support::{Pki, TestServer, discovery, from, hi};
use tonic::Code;

type Client = EchoClient<Balancer>;

async fn call(client: &mut Client) -> Result<String, tonic::Status> {
    let reply = client.unary_echo(hi()).await?;
    Ok(from(&reply.into_inner().message))
}

async fn call_sticky(client: &mut Client, id: &str) -> Result<String, tonic::Status> {
    let reply = client
        .unary_echo(tonic::Request::new(hi()).sticky(id))
        .await?;
    Ok(from(&reply.into_inner().message))
}

/// `workers` tasks, each making `calls` calls in a row on `balancer`.
struct Load {
    progress: tokio::sync::mpsc::UnboundedReceiver<()>,
    workers: Vec<tokio::task::JoinHandle<Vec<Result<String, tonic::Status>>>>,
}

fn load(balancer: &Balancer, workers: usize, calls: usize) -> Load {
    let (progress_tx, progress) = tokio::sync::mpsc::unbounded_channel();
    let workers = (0..workers)
        .map(|_| {
            let mut client = EchoClient::new(balancer.clone());
            let progress_tx = progress_tx.clone();
            tokio::spawn(async move {
                let mut results = Vec::new();
                for _ in 0..calls {
                    results.push(call(&mut client).await);
                    let _ = progress_tx.send(());
                }
                results
            })
        })
        .collect();
    Load { progress, workers }
}

impl Load {
    /// Returns once `n` calls (of all workers together) have completed.
    async fn wait_for_calls(&mut self, n: usize) {
        for _ in 0..n {
            self.progress.recv().await.expect("progress");
        }
    }

    /// Every call's result, once all workers are done.
    async fn results(self) -> Vec<Result<String, tonic::Status>> {
        let mut all = Vec::new();
        for worker in self.workers {
            all.extend(worker.await.expect("worker"));
        }
        all
    }
}

fn fast_backoff() -> BackoffConfig {
    BackoffConfig {
        base: Duration::from_millis(50),
        max: Duration::from_millis(200),
        ..BackoffConfig::default()
    }
}

/// A balancer over `servers`, all READY.
async fn ready_balancer(servers: &[&TestServer]) -> (Balancer, Client) {
    let changes: Vec<Change> = servers.iter().map(|s| s.insert()).collect();
    let balancer = Balancer::builder()
        .name("test")
        .backoff(fast_backoff())
        .build(futures::stream::iter(changes));
    balancer.wait_for_ready(servers.len()).await;
    (balancer.clone(), EchoClient::new(balancer))
}

#[tokio::test]
async fn round_robin_spreads_requests_exactly_evenly() {
    let servers = [
        TestServer::start("1"),
        TestServer::start("2"),
        TestServer::start("3"),
    ];
    let (balancer, mut client) = ready_balancer(&servers.iter().collect::<Vec<_>>()).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        *counts
            .entry(call(&mut client).await.expect("call"))
            .or_default() += 1;
    }
    for id in ["1", "2", "3"] {
        assert_eq!(counts.get(id), Some(&100), "{counts:?}");
    }
    let picks: u64 = balancer.endpoints().iter().map(|e| e.picks).sum();
    assert_eq!(picks, 300);
}

#[tokio::test]
async fn each_balancer_starts_at_a_random_position() {
    let servers = [
        TestServer::start("1"),
        TestServer::start("2"),
        TestServer::start("3"),
    ];
    let mut first_picks = std::collections::HashSet::new();
    for _ in 0..20 {
        let (balancer, _) = ready_balancer(&servers.iter().collect::<Vec<_>>()).await;
        first_picks.insert(balancer.pick(None).expect("a pick"));
    }
    assert!(
        first_picks.len() > 1,
        "20 balancers all started on {first_picks:?}"
    );
}

#[tokio::test]
async fn sticky_request_goes_to_the_named_instance() {
    let servers = [
        TestServer::start("1"),
        TestServer::start("2"),
        TestServer::start("3"),
    ];
    let (balancer, mut client) = ready_balancer(&servers.iter().collect::<Vec<_>>()).await;
    for _ in 0..30 {
        assert_eq!(call_sticky(&mut client, "2").await.expect("call"), "2");
    }
    assert_eq!(balancer.stats().sticky_fallbacks, 0);
}

#[tokio::test]
async fn sticky_request_falls_back_to_round_robin_when_instance_is_absent() {
    let servers = [TestServer::start("1"), TestServer::start("2")];
    let (balancer, mut client) = ready_balancer(&servers.iter().collect::<Vec<_>>()).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        seen.insert(call_sticky(&mut client, "9").await.expect("fallback call"));
    }
    assert_eq!(seen.len(), 2, "fallback is round robin: {seen:?}");
    assert_eq!(balancer.stats().sticky_fallbacks, 10);
}

#[tokio::test]
async fn sticky_request_fails_naming_the_id_under_fail_policy() {
    let server = TestServer::start("1");
    let balancer = Balancer::builder()
        .name("discovery/dev/game")
        .fallback(Fallback::Fail)
        .build(futures::stream::iter([server.insert()]));
    balancer.wait_for_ready(1).await;
    let mut client = EchoClient::new(balancer);
    let status = call_sticky(&mut client, "9").await.expect_err("must fail");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(kind(&status), Some(ErrorKind::StickyUnavailable));
    assert_eq!(
        status.message(),
        "sticky instance \"9\" of discovery/dev/game is unknown"
    );
    assert_eq!(call_sticky(&mut client, "1").await.expect("hit"), "1");
}

#[tokio::test]
async fn sticky_request_waits_for_its_instance_while_it_connects() {
    let one = TestServer::start("1");
    let (addr, listener) = TestServer::bind_deferred();
    let two = Endpoint::new(&addr.to_string())
        .expect("endpoint")
        .with_instance_id("2");
    let balancer = Balancer::builder().build(futures::stream::iter([
        one.insert(),
        Change::Insert("2".into(), two),
    ]));
    // TCP is accepted by the kernel, but nobody speaks HTTP/2 yet.
    balancer
        .wait_until(|all| {
            all.iter()
                .any(|e| e.key == "1" && e.state == ConnectivityState::Ready)
                && all
                    .iter()
                    .any(|e| e.key == "2" && e.state == ConnectivityState::Connecting)
        })
        .await;
    let mut client = EchoClient::new(balancer.clone());
    let pending = tokio::spawn(async move { call_sticky(&mut client, "2").await });
    let _two = TestServer::serve(listener, "2");
    let landed = pending.await.expect("task").expect("call");
    assert_eq!(landed, "2", "a sticky call waits for its instance");
    assert_eq!(balancer.stats().sticky_fallbacks, 0);
}

#[tokio::test]
async fn fresh_client_first_sticky_call_lands_on_the_named_instance() {
    let servers = [TestServer::start("1"), TestServer::start("2")];
    for _ in 0..5 {
        let balancer = Balancer::new(futures::stream::iter(
            servers.iter().map(TestServer::insert).collect::<Vec<_>>(),
        ));
        let mut client = EchoClient::new(balancer);
        assert_eq!(call_sticky(&mut client, "2").await.expect("call"), "2");
    }
}

#[tokio::test]
async fn killed_server_leaves_the_ready_set_and_no_request_fails_after() {
    let one = TestServer::start("1");
    let mut two = TestServer::start("2");
    let (balancer, mut client) = ready_balancer(&[&one, &two]).await;
    two.kill();
    balancer
        .wait_until(|all| {
            all.iter()
                .any(|e| e.key == "2" && e.state != ConnectivityState::Ready)
        })
        .await;
    for _ in 0..50 {
        assert_eq!(
            call(&mut client).await.expect("no failure after detection"),
            "1"
        );
    }
}

#[tokio::test]
async fn restarted_server_rejoins_after_backoff() {
    let one = TestServer::start("1");
    let mut two = TestServer::start("2");
    let (balancer, mut client) = ready_balancer(&[&one, &two]).await;
    let addr = two.addr;
    two.kill();
    balancer
        .wait_until(|all| {
            all.iter()
                .any(|e| e.key == "2" && e.state == ConnectivityState::TransientFailure)
        })
        .await;
    let _two = TestServer::start_on(addr, "2");
    tokio::time::timeout(Duration::from_secs(10), balancer.wait_for_ready(2))
        .await
        .expect("rejoined within the backoff");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(call(&mut client).await.expect("call"));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test]
async fn request_with_no_endpoint_waits_until_one_is_inserted() {
    let (tx, stream) = discovery();
    let balancer = Balancer::new(stream);
    let mut client = EchoClient::new(balancer.clone());
    let pending = tokio::spawn(async move { call(&mut client).await });
    let server = TestServer::start("1");
    tx.send(server.insert()).expect("send");
    assert_eq!(pending.await.expect("task").expect("call"), "1");
}

#[tokio::test(start_paused = true)]
async fn deadline_exceeded_while_waiting_gives_a_clear_status() {
    let (_tx, stream) = discovery();
    let mut client = EchoClient::new(Balancer::builder().name("discovery/dev/game").build(stream));
    let mut request = tonic::Request::new(hi());
    request.set_timeout(Duration::from_secs(5));
    let status = client.unary_echo(request).await.expect_err("must time out");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(kind(&status), Some(ErrorKind::DeadlineExceeded));
    assert_eq!(
        status.message(),
        "no endpoint discovered for discovery/dev/game after 5.0s"
    );
}

#[tokio::test(start_paused = true)]
async fn configured_ready_timeout_bounds_the_wait() {
    let balancer = Balancer::builder()
        .name("discovery/dev/game")
        .ready_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(60))
        .build(futures::stream::iter([Change::Reset(vec![])]));
    let mut client = EchoClient::new(balancer);
    let status = client.unary_echo(hi()).await.expect_err("must time out");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(kind(&status), Some(ErrorKind::NoReadyEndpoint));
    assert_eq!(
        status.message(),
        "no ready endpoint for discovery/dev/game after 2.0s: 0 known, 0 connecting, 0 in transient failure"
    );
}

#[tokio::test]
async fn fail_fast_returns_unavailable_at_once() {
    let closed = TestServer::bind_deferred().0; // bound then dropped: refuses
    let balancer = Balancer::builder()
        .name("discovery/dev/game")
        .fail_fast(true)
        .build(futures::stream::iter([Change::Insert(
            "k".into(),
            Endpoint::new(&closed.to_string()).expect("endpoint"),
        )]));
    balancer
        .wait_until(|all| {
            all.iter()
                .any(|e| e.state == ConnectivityState::TransientFailure)
        })
        .await;
    let status = EchoClient::new(balancer)
        .unary_echo(hi())
        .await
        .expect_err("fail fast");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(kind(&status), Some(ErrorKind::NoReadyEndpoint));
    assert_eq!(
        status.message(),
        "no ready endpoint for discovery/dev/game: 1 known, 0 connecting, 1 in transient failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_endpoint_under_load_fails_no_request() {
    let one = TestServer::start("1");
    let two = TestServer::start("2");
    let (tx, stream) = discovery();
    tx.send(one.insert()).expect("send");
    tx.send(two.insert()).expect("send");
    let balancer = Balancer::new(stream);
    balancer.wait_for_ready(2).await;

    let mut workers = load(&balancer, 8, 200);
    // Remove while the workers are running: after 200 of their 1600 calls.
    workers.wait_for_calls(200).await;
    tx.send(Change::Remove("2".into())).expect("send");
    for result in workers.results().await {
        result.expect("no request fails during removal");
    }
    let mut client = EchoClient::new(balancer);
    for _ in 0..10 {
        assert_eq!(call(&mut client).await.expect("call"), "1");
    }
}

#[tokio::test]
async fn reset_replaces_the_set_without_disturbing_unchanged_endpoints() {
    let one = TestServer::start("1");
    let two = TestServer::start("2");
    let three = TestServer::start("3");
    let (tx, stream) = discovery();
    tx.send(one.insert()).expect("send");
    tx.send(two.insert()).expect("send");
    let balancer = Balancer::new(stream);
    balancer.wait_for_ready(2).await;

    tx.send(Change::Reset(vec![
        ("1".into(), one.endpoint()),
        ("3".into(), three.endpoint()),
    ]))
    .expect("send");
    balancer
        .wait_until(|all| {
            all.len() == 2
                && all
                    .iter()
                    .all(|e| e.state == ConnectivityState::Ready && e.key != "2")
        })
        .await;
    let mut client = EchoClient::new(balancer);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(call(&mut client).await.expect("call"));
    }
    assert_eq!(seen, ["1", "3"].map(String::from).into());
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        one.connections.load(Relaxed),
        1,
        "unchanged endpoint kept its connection"
    );
}

#[tokio::test]
async fn sticky_extension_is_visible_on_the_request() {
    let request = tonic::Request::new(()).sticky("7");
    assert_eq!(
        request.extensions().get::<Sticky>().map(Sticky::id),
        Some("7")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_going_away_under_load_fails_no_request() {
    // No discovery change at all: the GOAWAY alone must take the endpoint out
    // of rotation, and requests that raced it must be retried, not failed.
    let one = TestServer::start("1");
    let mut two = TestServer::start("2");
    let (balancer, _) = ready_balancer(&[&one, &two]).await;
    let mut workers = load(&balancer, 8, 300);
    workers.wait_for_calls(200).await;
    two.shutdown_gracefully().await;
    let mut after = Vec::new();
    for result in workers.results().await {
        after.push(result.expect("no request fails when a server goes away"));
    }
    assert_eq!(after.len(), 2400);
    assert_eq!(after.last().map(String::as_str), Some("1"));
}

fn tls_balancer(server: &TestServer, tls: Option<etcdlb_balancer::TlsConfig>) -> Balancer {
    let config = etcdlb_balancer::EndpointConfig {
        tls,
        backoff: fast_backoff(),
        ..Default::default()
    };
    Balancer::builder()
        .endpoint_config(config)
        .build(futures::stream::iter([server.insert()]))
}

async fn failed_with(balancer: &Balancer) -> String {
    balancer
        .wait_until(|all| {
            all.iter()
                .any(|e| e.state == ConnectivityState::TransientFailure)
        })
        .await;
    balancer.endpoints()[0]
        .last_error
        .clone()
        .unwrap_or_default()
}

#[tokio::test]
async fn tls_endpoint_is_reached_when_its_ca_is_trusted() {
    let pki = Pki::new();
    let server = TestServer::start_tls("1", &pki);
    let tls = etcdlb_balancer::TlsConfig::from_pem(pki.ca.as_bytes()).expect("ca");
    let balancer = tls_balancer(&server, Some(tls));
    let mut client = EchoClient::new(balancer);
    assert_eq!(call(&mut client).await.expect("call over TLS"), "1");
}

#[tokio::test]
async fn plaintext_client_against_a_tls_server_says_so() {
    let pki = Pki::new();
    let server = TestServer::start_tls("1", &pki);
    let error = failed_with(&tls_balancer(&server, None)).await;
    assert!(
        error.contains("the server answered with TLS; this client is configured for plaintext"),
        "{error}"
    );
}

#[tokio::test]
async fn tls_client_with_the_wrong_ca_reports_the_certificate_error() {
    let server = TestServer::start_tls("1", &Pki::new());
    let other_ca = etcdlb_balancer::TlsConfig::from_pem(Pki::new().ca.as_bytes()).expect("ca");
    let error = failed_with(&tls_balancer(&server, Some(other_ca))).await;
    assert!(error.contains("TLS: invalid peer certificate"), "{error}");
}

#[test]
fn tls_config_rejects_pem_without_a_certificate() {
    let error = etcdlb_balancer::TlsConfig::from_pem(b"not a pem").expect_err("no cert");
    assert_eq!(error.to_string(), "CA PEM holds no certificate");
}

#[tokio::test]
async fn a_call_in_flight_when_its_server_dies_fails_as_unavailable() {
    let mut server = TestServer::start("1");
    let (_, client) = ready_balancer(&[&server]).await;
    let pending = server.hold_call(client).await;
    server.kill();
    let status = pending.await.expect("task").expect_err("the server died");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().starts_with("connection to 127.0.0.1:"),
        "{}",
        status.message()
    );
}
