//! The resolver against a real etcd: lists, follows, survives restarts and
//! compaction, and stays on its prefix.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use discover::{Change, Endpoint};
use etcd_client::{Client, Txn, TxnOp};
use etcdlb_resolver::{Backoff, Health, Resolution, Resolver};
use futures::StreamExt;
use integration_tests::{connect, etcd_client, private_etcd, unique_prefix};

const WAIT: Duration = Duration::from_secs(15);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "etcdlb_resolver=info".into()),
        )
        .try_init();
}

fn go_value(addr: &str, id: &str) -> String {
    format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":"{id}"}}"#)
}

fn endpoint(addr: &str, id: &str) -> Endpoint {
    Endpoint::new(addr).unwrap().with_instance_id(id)
}

async fn put(client: &mut Client, key: &str, value: &str) {
    client.put(key, value, None).await.expect("put");
}

async fn delete(client: &mut Client, key: &str) {
    client.delete(key, None).await.expect("delete");
}

/// Follows a resolution, keeping what it was told.
struct Follower {
    resolution: Resolution,
    seen: HashMap<String, Endpoint>,
}

impl Follower {
    fn new(resolution: Resolution) -> Self {
        Self {
            resolution,
            seen: HashMap::new(),
        }
    }

    async fn next(&mut self) -> Change {
        let change = tokio::time::timeout(WAIT, self.resolution.next())
            .await
            .unwrap_or_else(|_| panic!("no change within {WAIT:?}; seen {:?}", self.seen))
            .expect("the resolution stream ended");
        match &change {
            Change::Insert(k, e) => {
                self.seen.insert(k.clone(), e.clone());
            }
            Change::Remove(k) => {
                assert!(self.seen.remove(k).is_some(), "removal of unknown {k}");
            }
            Change::Reset(_) => panic!("the resolver does not send Reset"),
        }
        change
    }

    /// Collects changes until the consumer's view equals `expected`.
    async fn until(&mut self, expected: &HashMap<String, Endpoint>) -> Vec<Change> {
        let mut changes = Vec::new();
        while &self.seen != expected {
            changes.push(self.next().await);
        }
        changes
    }

    /// Writes a marker key under `prefix` and returns every change that came
    /// before its Insert: proves without sleeping that nothing else was
    /// emitted up to that point (changes are applied in revision order).
    async fn changes_before_marker(&mut self, client: &mut Client, prefix: &str) -> Vec<Change> {
        let key = format!("{prefix}/marker:1");
        put(client, &key, &go_value("marker:1", "m")).await;
        let mut others = Vec::new();
        loop {
            match self.next().await {
                Change::Insert(k, _) if k == key => break,
                other => others.push(other),
            }
        }
        delete(client, &key).await;
        assert_eq!(self.next().await, Change::Remove(key));
        others
    }
}

fn keys(changes: &[Change]) -> Vec<&str> {
    let mut keys: Vec<&str> = changes
        .iter()
        .map(|c| match c {
            Change::Insert(k, _) | Change::Remove(k) => k.as_str(),
            Change::Reset(_) => "reset",
        })
        .collect();
    keys.sort_unstable();
    keys
}

#[tokio::test]
async fn initial_list_emits_one_insert_per_registered_endpoint() {
    init_logs();
    let prefix = unique_prefix("initial_list");
    let mut client = etcd_client().await;
    let mut expected = HashMap::new();
    for i in 1..=3 {
        let addr = format!("127.0.0.1:{}", 41230 + i);
        let key = format!("{prefix}/{addr}");
        put(&mut client, &key, &go_value(&addr, &i.to_string())).await;
        expected.insert(key, endpoint(&addr, &i.to_string()));
    }
    let mut follower = Follower::new(Resolver::new(client.clone(), &prefix).resolve());
    let changes = follower.until(&expected).await;
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert!(changes.iter().all(|c| matches!(c, Change::Insert(..))));
    let snapshot = follower.resolution.snapshot();
    assert_eq!(snapshot.len(), 3);
    let first = &snapshot[&format!("{prefix}/127.0.0.1:41231")];
    assert_eq!(first.endpoint().instance_id(), Some("1"));
    assert_eq!(first.metadata(), Some(r#""1""#));
}

#[tokio::test]
async fn added_updated_and_removed_endpoints_are_followed() {
    init_logs();
    let prefix = unique_prefix("add_update_remove");
    let mut client = etcd_client().await;
    let mut follower = Follower::new(Resolver::new(client.clone(), &prefix).resolve());
    // Nothing registered: the marker is the first change.
    assert_eq!(
        follower.changes_before_marker(&mut client, &prefix).await,
        []
    );

    let key = format!("{prefix}/127.0.0.1:5001");
    put(&mut client, &key, &go_value("127.0.0.1:5001", "1")).await;
    assert_eq!(
        follower.next().await,
        Change::Insert(key.clone(), endpoint("127.0.0.1:5001", "1"))
    );

    // A new value replaces the endpoint.
    put(&mut client, &key, &go_value("127.0.0.1:5001", "2")).await;
    assert_eq!(
        follower.next().await,
        Change::Insert(key.clone(), endpoint("127.0.0.1:5001", "2"))
    );

    // The same value again (a re-registration) emits nothing.
    put(&mut client, &key, &go_value("127.0.0.1:5001", "2")).await;
    assert_eq!(
        follower.changes_before_marker(&mut client, &prefix).await,
        []
    );

    delete(&mut client, &key).await;
    assert_eq!(follower.next().await, Change::Remove(key));
    assert!(follower.resolution.snapshot().is_empty());
}

#[tokio::test]
async fn malformed_and_foreign_values_affect_only_their_own_key() {
    init_logs();
    let prefix = unique_prefix("malformed_values");
    let mut client = etcd_client().await;
    let go = format!("{prefix}/127.0.0.1:6001");
    let etcdctl = format!("{prefix}/127.0.0.1:6002");
    let op_delete = format!("{prefix}/127.0.0.1:6003");
    let garbage = format!("{prefix}/127.0.0.1:6004");
    let bad_addr = format!("{prefix}/127.0.0.1:6005");
    let number_id = format!("{prefix}/127.0.0.1:6006");
    put(&mut client, &go, &go_value("127.0.0.1:6001", "1")).await;
    put(
        &mut client,
        &etcdctl,
        r#"{"Addr":"127.0.0.1:6002","Metadata":"2"}"#,
    )
    .await;
    put(
        &mut client,
        &op_delete,
        r#"{"Op":1,"Addr":"127.0.0.1:6003","Metadata":"3"}"#,
    )
    .await;
    client
        .put(garbage.as_str(), b"\xff\x00not json".to_vec(), None)
        .await
        .unwrap();
    put(
        &mut client,
        &bad_addr,
        r#"{"Op":0,"Addr":"no-port-here","Metadata":"5"}"#,
    )
    .await;
    put(
        &mut client,
        &number_id,
        r#"{"Op":0,"Addr":"127.0.0.1:6006","Metadata":6}"#,
    )
    .await;

    let mut follower = Follower::new(Resolver::new(client.clone(), &prefix).resolve());
    let mut expected = HashMap::from([
        (go.clone(), endpoint("127.0.0.1:6001", "1")),
        (etcdctl.clone(), endpoint("127.0.0.1:6002", "2")),
        (number_id.clone(), endpoint("127.0.0.1:6006", "6")),
    ]);
    follower.until(&expected).await;
    assert_eq!(
        follower.changes_before_marker(&mut client, &prefix).await,
        []
    );

    // A registered endpoint overwritten with garbage is removed, alone.
    put(&mut client, &go, "{\"Op\":0,\"Addr\":").await;
    assert_eq!(follower.next().await, Change::Remove(go.clone()));
    expected.remove(&go);
    // Op 1 written over a live key removes it too.
    put(
        &mut client,
        &etcdctl,
        r#"{"Op":1,"Addr":"127.0.0.1:6002","Metadata":"2"}"#,
    )
    .await;
    assert_eq!(follower.next().await, Change::Remove(etcdctl.clone()));
    expected.remove(&etcdctl);
    // A formerly bad key that becomes valid is inserted.
    put(&mut client, &garbage, &go_value("127.0.0.1:6004", "4")).await;
    assert_eq!(
        follower.next().await,
        Change::Insert(garbage.clone(), endpoint("127.0.0.1:6004", "4"))
    );
    expected.insert(garbage, endpoint("127.0.0.1:6004", "4"));

    assert_eq!(
        follower.changes_before_marker(&mut client, &prefix).await,
        []
    );
    let snapshot: HashMap<_, _> = follower
        .resolution
        .snapshot()
        .into_iter()
        .map(|(k, e)| (k, e.endpoint().clone()))
        .collect();
    assert_eq!(snapshot, expected);
}

#[tokio::test]
async fn keys_of_a_longer_service_name_are_not_picked_up() {
    init_logs();
    let base = unique_prefix("prefix_boundary");
    let prefix = format!("{base}/game");
    let mut client = etcd_client().await;
    let mine = format!("{prefix}/127.0.0.1:7001");
    put(&mut client, &mine, &go_value("127.0.0.1:7001", "1")).await;
    put(
        &mut client,
        &format!("{base}/gameplay/127.0.0.1:7002"),
        &go_value("127.0.0.1:7002", "2"),
    )
    .await;
    put(&mut client, &prefix, &go_value("127.0.0.1:7003", "3")).await;
    put(
        &mut client,
        &format!("{base}/game0/127.0.0.1:7004"),
        &go_value("127.0.0.1:7004", "4"),
    )
    .await;

    // A trailing slash in the configured prefix changes nothing.
    let mut follower = Follower::new(Resolver::new(client.clone(), format!("{prefix}/")).resolve());
    assert_eq!(
        follower.next().await,
        Change::Insert(mine, endpoint("127.0.0.1:7001", "1"))
    );
    // Writes next door while watching are not seen either.
    put(
        &mut client,
        &format!("{base}/gameplay/127.0.0.1:7005"),
        &go_value("127.0.0.1:7005", "5"),
    )
    .await;
    put(&mut client, &prefix, &go_value("127.0.0.1:7006", "6")).await;
    assert_eq!(
        follower.changes_before_marker(&mut client, &prefix).await,
        []
    );
}

/// Kills the private etcd, restarts it, changes some keys: the resolver
/// converges and says nothing about the endpoints that did not change.
// Multi-threaded: the resolver task must run while this test blocks on
// etcd's restart, as it would in a real process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_etcd_restart_only_the_differences_are_emitted() {
    init_logs();
    let mut etcd = private_etcd();
    let endpoints = vec![etcd.endpoint()];
    let prefix = unique_prefix("etcd_restart");
    let mut client = connect(&endpoints).await;
    let key = |i: u32| format!("{prefix}/127.0.0.1:{}", 8000 + i);
    let mut expected = HashMap::new();
    for i in 1..=5 {
        put(
            &mut client,
            &key(i),
            &go_value(&format!("127.0.0.1:{}", 8000 + i), "x"),
        )
        .await;
        expected.insert(key(i), endpoint(&format!("127.0.0.1:{}", 8000 + i), "x"));
    }
    let resolver = Resolver::connect(&endpoints, None, &prefix)
        .await
        .unwrap()
        .backoff(Backoff {
            base: Duration::from_millis(100),
            ..Backoff::default()
        });
    let mut follower = Follower::new(resolver.resolve());
    follower.until(&expected).await;

    etcd.kill();
    // While etcd is down the last known set stays: no removal. (Waiting
    // for nothing needs a timeout.)
    let quiet = tokio::time::timeout(Duration::from_millis(500), follower.resolution.next()).await;
    assert!(quiet.is_err(), "emitted while etcd was down: {quiet:?}");
    assert_eq!(follower.resolution.snapshot().len(), 5);

    etcd.start().expect("etcd restarts");
    let restarted = Instant::now();
    let mut client = connect(&endpoints).await;
    delete(&mut client, &key(2)).await;
    put(&mut client, &key(3), &go_value("127.0.0.1:8003", "new")).await;
    put(&mut client, &key(6), &go_value("127.0.0.1:8006", "x")).await;
    expected.remove(&key(2));
    expected.insert(key(3), endpoint("127.0.0.1:8003", "new"));
    expected.insert(key(6), endpoint("127.0.0.1:8006", "x"));

    let changes = follower.until(&expected).await;
    eprintln!(
        "converged {:?} after etcd became healthy again ({} changes)",
        restarted.elapsed(),
        changes.len()
    );
    assert_eq!(keys(&changes), [key(2), key(3), key(6)], "{changes:?}");
    assert_eq!(
        follower.changes_before_marker(&mut client, &prefix).await,
        []
    );
}

/// etcd down long enough that the resolver's backoff (default: 100 ms, x2)
/// has grown past a second: once the member is connected again the resolver
/// lists at once, so a key put right after the restart arrives within 3 s of
/// etcd being healthy. That bound holds for the member's reconnect backoff
/// (at most 2 s) alone, not for it and the resolver's own wait added up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_long_etcd_outage_the_resolver_lists_once_a_member_is_back() {
    init_logs();
    let mut etcd = private_etcd();
    let endpoints = vec![etcd.endpoint()];
    let prefix = unique_prefix("long_outage");
    let mut client = connect(&endpoints).await;
    let key = |i: u32| format!("{prefix}/127.0.0.1:{}", 9000 + i);
    put(&mut client, &key(1), &go_value("127.0.0.1:9001", "a")).await;
    let mut expected = HashMap::from([(key(1), endpoint("127.0.0.1:9001", "a"))]);
    let resolver = Resolver::connect(&endpoints, None, &prefix).await.unwrap();
    let mut follower = Follower::new(resolver.resolve());
    let mut health = follower.resolution.health();
    follower.until(&expected).await;

    etcd.kill();
    tokio::time::timeout(
        Duration::from_secs(3),
        health.wait_for(|h| matches!(h, Health::Outage(_))),
    )
    .await
    .expect("an outage within 3 s of etcd's death")
    .expect("health channel");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let etcd = integration_tests::start_again(etcd).await;
    let healthy = Instant::now();
    let mut client = connect(&endpoints).await;
    put(&mut client, &key(2), &go_value("127.0.0.1:9002", "b")).await;
    expected.insert(key(2), endpoint("127.0.0.1:9002", "b"));
    tokio::time::timeout(Duration::from_secs(3), follower.until(&expected))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the resolver had not listed again 3 s after etcd was healthy: {:?}",
                *health.borrow()
            )
        });
    eprintln!(
        "resolver saw the new key {:?} after etcd was healthy again",
        healthy.elapsed()
    );
    drop(etcd);
}

/// The resolver is behind (etcd restarted, it has not reconnected yet) while
/// many changes happen and the history is compacted past its revision: it
/// still converges to the exact set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_after_compaction_past_its_revision_while_disconnected() {
    init_logs();
    let mut etcd = private_etcd();
    let endpoints = vec![etcd.endpoint()];
    let prefix = unique_prefix("compaction_behind");
    let mut client = connect(&endpoints).await;
    let key = |i: u32| format!("{prefix}/127.0.0.1:{}", 10000 + i);
    let value = |i: u32, id: &str| go_value(&format!("127.0.0.1:{}", 10000 + i), id);
    let ep = |i: u32, id: &str| endpoint(&format!("127.0.0.1:{}", 10000 + i), id);
    let mut expected = HashMap::new();
    for i in 0..50 {
        put(&mut client, &key(i), &value(i, "a")).await;
        expected.insert(key(i), ep(i, "a"));
    }
    // A slow first retry leaves time to change and compact before it.
    let resolver = Resolver::connect(&endpoints, None, &prefix)
        .await
        .unwrap()
        .backoff(Backoff {
            base: Duration::from_secs(2),
            jitter: 0.0,
            ..Backoff::default()
        });
    let mut follower = Follower::new(resolver.resolve());
    follower.until(&expected).await;

    etcd.kill();
    // The resolver notices at once, fails its first re-list (etcd takes
    // ~100 ms to come back) and waits 2 s before the next one.
    etcd.start().expect("etcd restarts");
    let restarted = Instant::now();
    let mut client = connect(&endpoints).await;
    for i in 0..50 {
        match i % 5 {
            0 => {
                delete(&mut client, &key(i)).await;
                expected.remove(&key(i));
            }
            1 => {
                put(&mut client, &key(i), &value(i, "b")).await;
                expected.insert(key(i), ep(i, "b"));
            }
            2 => {
                // Changed and changed back: nothing to report.
                put(&mut client, &key(i), &value(i, "tmp")).await;
                put(&mut client, &key(i), &value(i, "a")).await;
            }
            _ => {}
        }
    }
    for i in 100..150 {
        put(&mut client, &key(i), &value(i, "c")).await;
        expected.insert(key(i), ep(i, "c"));
    }
    let revision = client
        .get(key(100), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(revision, None).await.expect("compact");
    eprintln!(
        "changed and compacted {:?} after the restart",
        restarted.elapsed()
    );

    let changes = follower.until(&expected).await;
    eprintln!(
        "converged {:?} after etcd became healthy again ({} changes)",
        restarted.elapsed(),
        changes.len()
    );
    // 10 removed, 10 updated, 50 added; the 30 others are not mentioned.
    assert_eq!(changes.len(), 70, "{changes:?}");
    assert_eq!(
        follower.changes_before_marker(&mut client, &prefix).await,
        []
    );
}

#[tokio::test]
async fn ten_thousand_endpoints_are_listed() {
    init_logs();
    let prefix = unique_prefix("ten_thousand");
    let mut client = etcd_client().await;
    let mut expected = HashMap::new();
    let mut ops = Vec::new();
    for i in 0..10_000u32 {
        let addr = format!("10.{}.{}.{}:50051", i >> 16, (i >> 8) & 0xff, i & 0xff);
        let key = format!("{prefix}/{addr}");
        ops.push(TxnOp::put(
            key.as_str(),
            go_value(&addr, &i.to_string()),
            None,
        ));
        expected.insert(key, endpoint(&addr, &i.to_string()));
        // etcd allows 128 operations per transaction by default.
        if ops.len() == 100 {
            client
                .txn(Txn::new().and_then(std::mem::take(&mut ops)))
                .await
                .expect("txn");
        }
    }
    let started = Instant::now();
    let mut follower = Follower::new(Resolver::new(client.clone(), &prefix).resolve());
    let changes = follower.until(&expected).await;
    eprintln!(
        "listed and emitted 10000 endpoints in {:?}",
        started.elapsed()
    );
    assert_eq!(changes.len(), 10_000);
    assert_eq!(follower.resolution.snapshot().len(), 10_000);
}
