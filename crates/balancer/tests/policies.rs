//! Balancing policies over real in-process tonic servers on 127.0.0.1: a
//! user-defined policy through the public API, served-by, and the signals
//! policies read.

mod support;

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use balancer::{
    BackoffConfig, Balancer, Change, PickRequest, Picker, Policy, ReadyEndpoint, ServedBy,
    ServedByExt, StickyExt,
};
use echo_proto::{EchoRequest, echo_client::EchoClient};
use support::{TestServer, discovery, from, hi};

type Client = EchoClient<Balancer>;

// The crate docs' user-defined policy, whole: prefer endpoints of the
// client's zone, round robin among them; none there, round robin over all.
struct SameZone(String);

struct SameZonePicker {
    local: Vec<usize>,
    next: AtomicUsize,
}

impl Policy for SameZone {
    fn build(&self, ready: &[ReadyEndpoint]) -> Box<dyn Picker> {
        let local = (0..ready.len())
            .filter(|&i| ready[i].endpoint().metadata()["zone"] == self.0.as_str())
            .collect();
        Box::new(SameZonePicker {
            local,
            next: AtomicUsize::new(0),
        })
    }
}

impl Picker for SameZonePicker {
    fn pick(&self, _: &PickRequest<'_>, ready: &[ReadyEndpoint]) -> Option<usize> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        match self.local.len() {
            0 if ready.is_empty() => None,
            0 => Some(n % ready.len()),
            local => Some(self.local[n % local]),
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

fn zoned(server: &TestServer, zone: &str) -> Change {
    let endpoint = server
        .endpoint()
        .with_metadata(serde_json::json!({ "zone": zone }));
    Change::Insert(server.id.clone(), endpoint)
}

/// Makes `n` calls and counts them by the instance that answered.
async fn spread(client: &mut Client, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let reply = client.unary_echo(hi()).await.expect("call");
        *counts.entry(from(&reply.into_inner().message)).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn a_user_policy_prefers_its_zone_and_falls_back_to_all() {
    let a = TestServer::start("a1");
    let mut b1 = TestServer::start("b1");
    let mut b2 = TestServer::start("b2");
    let (tx, changes) = discovery();
    for change in [zoned(&a, "a"), zoned(&b1, "b"), zoned(&b2, "b")] {
        tx.send(change).expect("send");
    }
    let balancer = Balancer::builder()
        .name("zones")
        .backoff(fast_backoff())
        .policy(SameZone("b".into()))
        .build(changes);
    balancer.wait_for_ready(3).await;
    let mut client = EchoClient::new(balancer.clone());

    let counts = spread(&mut client, 40).await;
    assert_eq!(counts.get("b1"), Some(&20), "{counts:?}");
    assert_eq!(counts.get("b2"), Some(&20), "{counts:?}");

    // Zone b is gone: the picker is rebuilt over what is left.
    b1.kill();
    b2.kill();
    balancer
        .wait_until(|all| {
            all.iter()
                .filter(|e| e.state == balancer::ConnectivityState::Ready)
                .count()
                == 1
        })
        .await;
    let counts = spread(&mut client, 5).await;
    assert_eq!(counts.get("a1"), Some(&5), "{counts:?}");
}

#[tokio::test]
async fn served_by_names_the_instance_that_answered() {
    let servers = [
        TestServer::start("1"),
        TestServer::start("2"),
        TestServer::start("3"),
    ];
    let changes: Vec<Change> = servers.iter().map(TestServer::insert).collect();
    let balancer = Balancer::builder()
        .backoff(fast_backoff())
        .build(futures::stream::iter(changes));
    balancer.wait_for_ready(3).await;
    let mut client = EchoClient::new(balancer);
    let addr_of = |id: &str| {
        servers
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.addr.to_string())
            .expect("server")
    };

    for _ in 0..9 {
        let reply = client.unary_echo(hi()).await.expect("call");
        let served = reply.served_by().expect("served by").clone();
        let answered = from(&reply.into_inner().message);
        assert_eq!(served.instance_id(), Some(answered.as_str()));
        assert_eq!(served.addr(), addr_of(&answered));
    }

    let sticky = tonic::Request::new(hi()).sticky("2");
    let reply = client.unary_echo(sticky).await.expect("sticky call");
    assert_eq!(reply.served_by().and_then(ServedBy::instance_id), Some("2"));

    // The server's own error status names it too.
    let failing = EchoRequest {
        message: "fail".into(),
    };
    let status = client
        .unary_echo(tonic::Request::new(failing).sticky("3"))
        .await
        .expect_err("the server fails it");
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    let served = ServedBy::from_status(&status).expect("served by in the status");
    assert_eq!(served.instance_id(), Some("3"));
    assert_eq!(served.addr(), addr_of("3"));
}

#[tokio::test]
async fn a_call_failing_in_transport_names_its_endpoint() {
    let mut server = TestServer::start("1");
    let balancer = Balancer::builder()
        .backoff(fast_backoff())
        .build(futures::stream::iter(vec![server.insert()]));
    balancer.wait_for_ready(1).await;
    let mut client = EchoClient::new(balancer);
    let slow = tokio::spawn(async move {
        client
            .unary_echo(EchoRequest {
                message: "slow".into(),
            })
            .await
    });
    server.slow_call.notified().await;
    server.kill();
    let status = slow.await.expect("task").expect_err("its server died");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let served = ServedBy::from_status(&status).expect("served by");
    assert_eq!(served.instance_id(), Some("1"));
}

#[tokio::test]
async fn outstanding_requests_are_counted_exactly() {
    let server = TestServer::start("1");
    let balancer = Balancer::builder()
        .backoff(fast_backoff())
        .build(futures::stream::iter(vec![server.insert()]));
    balancer.wait_for_ready(1).await;
    let outstanding = || balancer.ready_endpoints()[0].signals().outstanding();
    let mut client = EchoClient::new(balancer.clone());

    spread(&mut client, 3).await;
    assert_eq!(outstanding(), 0, "completed calls are not outstanding");

    let mut slow_client = client.clone();
    let slow = tokio::spawn(async move {
        slow_client
            .unary_echo(EchoRequest {
                message: "slow".into(),
            })
            .await
    });
    server.slow_call.notified().await;
    assert_eq!(outstanding(), 1, "the call in flight");
    slow.abort();
    let _ = slow.await;
    assert_eq!(
        outstanding(),
        0,
        "a cancelled call is no longer outstanding"
    );

    let failing = EchoRequest {
        message: "fail".into(),
    };
    client.unary_echo(failing).await.expect_err("fails");
    assert_eq!(outstanding(), 0, "a failed call is no longer outstanding");
    let ready = balancer.ready_endpoints();
    let signals = ready[0].signals();
    assert_eq!(
        (signals.calls(), signals.failures()),
        (4, 1),
        "calls, failures: the cancelled one counts neither way"
    );
    assert!(signals.latency().is_some());
}
