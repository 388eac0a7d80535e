//! Balancing policies over real in-process tonic servers on 127.0.0.1: a
//! user-defined policy through the public API, served-by, and the signals
//! policies read.

mod support;

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use echo_proto::{EchoRequest, echo_client::EchoClient};
use etcdlb_balancer::{
    BackoffConfig, Balancer, Candidate, Change, Endpoint, HashKey, HashKeyExt, LeastRequest,
    PickRequest, Picker, Policy, RingHash, RoundRobin, ServedBy, ServedByExt, StickyExt,
};
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
    fn build(&self, ready: &[Candidate]) -> Box<dyn Picker> {
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
    fn pick(&self, _: &PickRequest<'_>, ready: &[Candidate]) -> Option<usize> {
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
                .filter(|e| e.state == etcdlb_balancer::ConnectivityState::Ready)
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
    let client = EchoClient::new(balancer);
    let slow = server.hold_call(client).await;
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

    let slow = server.hold_call(client.clone()).await;
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

fn builtin_policies() -> Vec<(&'static str, Box<dyn Policy>)> {
    vec![
        ("round-robin", Box::new(RoundRobin)),
        ("least-request", Box::new(LeastRequest::new())),
        ("ring-hash", Box::new(RingHash::new())),
    ]
}

#[tokio::test]
async fn sticky_overrides_every_policy_and_served_by_is_right_for_each() {
    let servers = [
        TestServer::start("1"),
        TestServer::start("2"),
        TestServer::start("3"),
    ];
    for (name, policy) in builtin_policies() {
        let changes: Vec<Change> = servers.iter().map(TestServer::insert).collect();
        let balancer = Balancer::builder()
            .backoff(fast_backoff())
            .policy(policy)
            .build(futures::stream::iter(changes));
        balancer.wait_for_ready(3).await;
        let mut client = EchoClient::new(balancer);
        for i in 0..12 {
            // Every request carries a key, which only ring-hash reads.
            let request = tonic::Request::new(hi()).hash_key(format!("k{i}"));
            let reply = client.unary_echo(request).await.expect("call");
            let served = reply.served_by().expect("served by").clone();
            let answered = from(&reply.into_inner().message);
            assert_eq!(served.instance_id(), Some(answered.as_str()), "{name}");
            let server = servers.iter().find(|s| s.id == answered).expect("server");
            assert_eq!(served.addr(), server.addr.to_string(), "{name}");

            let sticky = tonic::Request::new(hi())
                .hash_key(format!("k{i}"))
                .sticky("2");
            let reply = client.unary_echo(sticky).await.expect("sticky call");
            let served = reply.served_by().expect("served by").clone();
            assert_eq!(from(&reply.into_inner().message), "2", "{name}");
            assert_eq!(served.instance_id(), Some("2"), "{name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_a_slow_server_few_calls() {
    let servers = [
        TestServer::start("fast-1"),
        TestServer::start("fast-2"),
        TestServer::start("slow"),
    ];
    // Least request parks about a third of the callers on the slow server,
    // so its share of calls is about (fast call time) / (2 × its delay).
    servers[2].delay_ms.store(200, Ordering::Relaxed);
    let changes: Vec<Change> = servers.iter().map(TestServer::insert).collect();
    let balancer = Balancer::builder()
        .backoff(fast_backoff())
        .policy(LeastRequest::new())
        .build(futures::stream::iter(changes));
    balancer.wait_for_ready(3).await;
    // Closed loop: 6 callers, each calling again as soon as its call ends,
    // until 600 calls have been started between them. (Callers that run on
    // alone at the end would see no outstanding calls to compare, so all
    // stop together.)
    let budget = std::sync::Arc::new(AtomicUsize::new(600));
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let mut client = EchoClient::new(balancer.clone());
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut counts: HashMap<String, usize> = HashMap::new();
                while budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let reply = client.unary_echo(hi()).await.expect("call");
                    *counts.entry(from(&reply.into_inner().message)).or_default() += 1;
                }
                counts
            })
        })
        .collect();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        for (id, n) in task.await.expect("worker") {
            *counts.entry(id).or_default() += n;
        }
    }
    let total: usize = counts.values().sum();
    assert_eq!(total, 600);
    let slow = counts.get("slow").copied().unwrap_or(0);
    assert!(
        slow * 10 < total,
        "the slow server got {slow} of {total} calls: {counts:?}"
    );
    let outstanding: u64 = balancer
        .ready_endpoints()
        .iter()
        .map(|e| e.signals().outstanding())
        .sum();
    assert_eq!(outstanding, 0, "every call ended");
}

const KEYS: usize = 10_000;

/// Each of `KEYS` keys' instance under `balancer`, by pick (nothing sent).
fn mapping(balancer: &Balancer) -> Vec<String> {
    let (mut head, ()) = http::Request::new(()).into_parts();
    (0..KEYS)
        .map(|i| {
            head.extensions.insert(HashKey::new(format!("key-{i}")));
            balancer
                .pick_for(&head, |e| e.instance_id().unwrap_or("?").to_string())
                .expect("a pick")
        })
        .collect()
}

/// The ring as `RingHash`'s docs define it, computed here independently:
/// `(node hash, owner)` of every virtual node of `names`, sorted.
fn documented_ring<'a>(names: &[&'a str]) -> Vec<(u64, &'a str)> {
    let per = RingHash::new().nodes_per_endpoint(names.len());
    let mut ring: Vec<(u64, &str)> = names
        .iter()
        .flat_map(|name| (0..per).map(move |i| (HashKey::new(format!("{name}_{i}")).hash(), *name)))
        .collect();
    ring.sort();
    ring
}

/// `key`'s owner on `ring`: the first node at or after its point, wrapping.
fn owner_on(ring: &[(u64, &str)], key: &str) -> String {
    let point = HashKey::new(key).hash();
    ring[ring.partition_point(|&(h, _)| h < point) % ring.len()]
        .1
        .to_string()
}

/// Each key's owner among `names` on the documented ring.
fn documented_mapping(names: &[&str]) -> Vec<String> {
    let ring = documented_ring(names);
    (0..KEYS)
        .map(|i| owner_on(&ring, &format!("key-{i}")))
        .collect()
}

/// `ids` as endpoints on `server`'s address (one connection each).
fn on(server: &TestServer, ids: &[&str]) -> Vec<Change> {
    ids.iter()
        .map(|id| {
            let endpoint = Endpoint::new(&server.addr.to_string())
                .expect("endpoint")
                .with_instance_id(*id);
            Change::Insert(id.to_string(), endpoint)
        })
        .collect()
}

async fn ring_balancer(
    changes: impl futures::Stream<Item = Change> + Send + 'static,
    n: usize,
) -> Balancer {
    let balancer = Balancer::builder()
        .backoff(fast_backoff())
        .policy(RingHash::new())
        .build(changes);
    balancer.wait_for_ready(n).await;
    balancer
}

#[tokio::test]
async fn ring_hash_is_the_same_everywhere_and_moves_only_the_keys_of_what_changed() {
    let server = TestServer::start("x");
    let three = on(&server, &["a", "b", "c"]);
    let (tx, changes) = discovery();
    for change in three.clone() {
        tx.send(change).expect("send");
    }
    let first = ring_balancer(changes, 3).await;
    // Built independently, the endpoints inserted in another order.
    let mut reversed = three.clone();
    reversed.reverse();
    let second = ring_balancer(futures::stream::iter(reversed), 3).await;

    let before = mapping(&first);
    assert_eq!(before, mapping(&second), "two clients, one mapping");
    assert_eq!(
        before,
        documented_mapping(&["a", "b", "c"]),
        "the documented ring"
    );

    // A fourth endpoint takes keys only for itself, about a quarter.
    tx.send(on(&server, &["d"]).remove(0)).expect("send");
    first.wait_for_ready(4).await;
    let after = mapping(&first);
    assert_eq!(after, documented_mapping(&["a", "b", "c", "d"]));
    let moved: Vec<usize> = (0..KEYS).filter(|&i| before[i] != after[i]).collect();
    assert!(!moved.is_empty());
    assert!(
        moved.iter().all(|&i| after[i] == "d"),
        "keys moved only to the new one"
    );
    assert!(
        moved.len() as f64 <= 1.3 / 4.0 * KEYS as f64,
        "{} of {KEYS} keys moved",
        moved.len()
    );

    // Removing it gives every key back.
    tx.send(Change::Remove("d".into())).expect("send");
    first.wait_until(|all| all.len() == 3).await;
    assert_eq!(mapping(&first), before, "the exact previous mapping");
}

#[tokio::test]
async fn ring_hash_spreads_keys_evenly_over_ten_endpoints() {
    let server = TestServer::start("x");
    let ids: Vec<String> = (0..10).map(|i| format!("game-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let balancer = ring_balancer(futures::stream::iter(on(&server, &ids)), 10).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in mapping(&balancer) {
        *counts.entry(id).or_default() += 1;
    }
    assert_eq!(counts.len(), 10, "{counts:?}");
    let max = *counts.values().max().expect("counts") as f64;
    let mean = KEYS as f64 / 10.0;
    assert!(max / mean <= 1.25, "max/mean {:.3}: {counts:?}", max / mean);
}

#[tokio::test]
async fn a_key_whose_instance_is_down_goes_to_the_next_and_comes_back() {
    let steady = TestServer::start("x");
    let mut flaky = TestServer::start("d");
    let (tx, changes) = discovery();
    for change in on(&steady, &["a", "b", "c"]) {
        tx.send(change).expect("send");
    }
    tx.send(flaky.insert()).expect("send");
    let balancer = ring_balancer(changes, 4).await;
    let all_up = mapping(&balancer);
    assert_eq!(all_up, documented_mapping(&["a", "b", "c", "d"]));

    let addr = flaky.addr;
    flaky.kill();
    balancer
        .wait_until(|all| {
            all.iter()
                .filter(|e| e.state == etcdlb_balancer::ConnectivityState::Ready)
                .count()
                == 3
        })
        .await;
    let d_down = mapping(&balancer);
    // The next READY endpoint on the ring: the ring without d's nodes.
    assert_eq!(d_down, documented_mapping(&["a", "b", "c"]));
    for i in 0..KEYS {
        if all_up[i] != "d" {
            assert_eq!(d_down[i], all_up[i], "key {i} was not d's: it stays");
        }
    }

    let _back = TestServer::start_on(addr, "d");
    balancer.wait_for_ready(4).await;
    assert_eq!(mapping(&balancer), all_up, "d's keys come back");
}

/// The instance `balancer` picks for `key` now (nothing sent).
fn owner_of(balancer: &Balancer, key: &str) -> String {
    let (mut head, ()) = http::Request::new(()).into_parts();
    head.extensions.insert(HashKey::new(key));
    balancer
        .pick_for(&head, |e| e.instance_id().unwrap_or("?").to_string())
        .expect("a pick")
}

/// Calls once with each of `keys`, all at once, and returns who answered.
async fn first_calls(balancer: Balancer, keys: &[String]) -> Vec<String> {
    let calls = keys.iter().map(|key| {
        let mut client = EchoClient::new(balancer.clone());
        let request = tonic::Request::new(hi()).hash_key(key);
        async move {
            let reply = client.unary_echo(request).await.expect("call");
            from(&reply.into_inner().message)
        }
    });
    futures::future::join_all(calls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_clients_first_call_for_a_key_reaches_the_keys_owner() {
    let servers: Vec<TestServer> = (1..=4).map(|i| TestServer::start(&i.to_string())).collect();
    let changes =
        || futures::stream::iter(servers.iter().map(TestServer::insert).collect::<Vec<_>>());
    let keys: Vec<String> = (1..=20).map(|k| format!("player-{k}")).collect();
    let connected = ring_balancer(changes(), 4).await;
    let owners: Vec<String> = keys.iter().map(|k| owner_of(&connected, k)).collect();
    let mut by_owner: HashMap<&str, usize> = HashMap::new();
    for owner in &owners {
        *by_owner.entry(owner.as_str()).or_default() += 1;
    }
    assert!(
        by_owner.len() >= 3,
        "the keys spread over the servers: {by_owner:?}"
    );

    // Fresh clients call at once, while their connections are still coming
    // up in whatever order: each key's first call still reaches its owner.
    let mut wrong = Vec::new();
    for client in 0..20 {
        let fresh = Balancer::builder()
            .backoff(fast_backoff())
            .policy(RingHash::new())
            .build(changes());
        let answered = first_calls(fresh, &keys).await;
        for ((key, owner), got) in keys.iter().zip(&owners).zip(&answered) {
            if owner != got {
                wrong.push(format!(
                    "client {client}: {key} owned by {owner}, answered by {got}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of 400 first calls missed: {wrong:#?}",
        wrong.len()
    );
}

#[tokio::test]
async fn a_key_whose_owner_is_still_connecting_waits_for_it() {
    let up = TestServer::start("up");
    // Bound but not serving: a client's connection stays CONNECTING.
    let (late_addr, late_listener) = TestServer::bind_deferred();
    let late_endpoint = Endpoint::new(&late_addr.to_string())
        .expect("endpoint")
        .with_instance_id("late");
    let changes = vec![up.insert(), Change::Insert("late".into(), late_endpoint)];
    let balancer = Balancer::builder()
        .backoff(fast_backoff())
        .policy(RingHash::new())
        .build(futures::stream::iter(changes));
    balancer.wait_for_ready(1).await;
    // A key of the late one's: its call waits (the other is READY) ...
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| documented_owner(&["up", "late"], k) == "late")
        .expect("a key of late's");
    let mut client = EchoClient::new(balancer.clone());
    let call = tokio::spawn(async move {
        let reply = client
            .unary_echo(tonic::Request::new(hi()).hash_key(key))
            .await
            .expect("call");
        from(&reply.into_inner().message)
    });
    tokio::task::yield_now().await;
    assert!(!call.is_finished(), "it must not go to the READY one");
    // ... and lands on it once it serves.
    let _late = TestServer::serve(late_listener, "late");
    assert_eq!(call.await.expect("task"), "late");
}

/// `key`'s owner among `names` on the documented ring.
fn documented_owner(names: &[&str], key: &str) -> String {
    owner_on(&documented_ring(names), key)
}

#[tokio::test]
async fn a_header_keyed_request_goes_where_the_same_hash_key_goes() {
    let servers: Vec<TestServer> = (1..=4).map(|i| TestServer::start(&i.to_string())).collect();
    let changes: Vec<Change> = servers.iter().map(TestServer::insert).collect();
    let policy = RingHash::new()
        .hash_header("x-player-id")
        .expect("header name");
    let balancer = Balancer::builder()
        .backoff(fast_backoff())
        .policy(policy)
        .build(futures::stream::iter(changes));
    balancer.wait_for_ready(4).await;
    let mut client = EchoClient::new(balancer.clone());
    let mut owners = std::collections::HashSet::new();
    for k in 0..24 {
        let key = format!("player-{k}");
        let owner = owner_of(&balancer, &key);
        owners.insert(owner.clone());
        let mut by_header = tonic::Request::new(hi());
        by_header
            .metadata_mut()
            .insert("x-player-id", key.parse().expect("value"));
        let reply = client.unary_echo(by_header).await.expect("call");
        assert_eq!(from(&reply.into_inner().message), owner, "{key}");
        let by_key = tonic::Request::new(hi()).hash_key(&key);
        let reply = client.unary_echo(by_key).await.expect("call");
        assert_eq!(from(&reply.into_inner().message), owner, "{key}");
    }
    assert!(owners.len() >= 3, "{owners:?}");
    assert!(RingHash::new().hash_header("bad header").is_err());
}
