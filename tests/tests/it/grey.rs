//! Grey failures against the real Go peer: our freeze detection's PING
//! probes must stay within grpc-go's server ping policy (default
//! `EnforcementPolicy`: more than two "strikes" and the server sends GOAWAY
//! `ENHANCE_YOUR_CALM` "too_many_pings" and closes the connection).

use std::time::{Duration, Instant};

use balancer::{Balancer, Change, ConnectivityState, Endpoint};
use echo_proto::{EchoRequest, echo_client::EchoClient};
use integration_tests::{etcd_endpoints, go, unique_env};

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
