//! Specification of `registry` against a real etcd (the fixture's, or a
//! private one for restarts). TTLs are short; events are awaited rather than
//! slept on, except where the point is to let time pass (keepalive).

use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use etcdlb_registry::{ErrorKind, Registered, Registration, State};
use integration_tests::{etcd_client, etcd_endpoints, free_port, private_etcd, unique_prefix};
use tokio::sync::watch;

const TTL: Duration = Duration::from_secs(2);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "etcdlb_registry=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

async fn register(client: &Client, prefix: &str, addr: &str, id: &str) -> Registered {
    Registration::new(prefix, addr)
        .client(client.clone())
        .instance_id(id)
        .ttl(TTL)
        .register()
        .await
        .expect("register")
}

/// The key's (value, lease), or None when absent.
async fn get(client: &mut Client, key: &str) -> Option<(Vec<u8>, i64)> {
    let resp = client.get(key, None).await.expect("get");
    resp.kvs()
        .first()
        .map(|kv| (kv.value().to_vec(), kv.lease()))
}

async fn wait_for_state(state: &mut watch::Receiver<State>, want: State, within: Duration) {
    tokio::time::timeout(within, state.wait_for(|s| *s == want))
        .await
        .unwrap_or_else(|_| panic!("state did not become {want:?} within {within:?}"))
        .expect("state channel");
}

/// Waits for a PUT of `key` on `watch`, returning when it arrived.
async fn next_put(watch: &mut etcd_client::WatchStream, key: &str, within: Duration) -> Instant {
    tokio::time::timeout(within, async {
        loop {
            let resp = watch.message().await.expect("watch").expect("watch open");
            if resp.events().iter().any(|e| {
                e.event_type() == EventType::Put
                    && e.kv().is_some_and(|kv| kv.key() == key.as_bytes())
            }) {
                return Instant::now();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{key} was not put back within {within:?}"))
}

fn expected_value(addr: &str, id: &str) -> Vec<u8> {
    format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":"{id}"}}"#).into_bytes()
}

#[tokio::test]
async fn register_puts_go_endpoint_json_under_prefix_slash_addr_with_a_lease_of_the_asked_ttl() {
    init_tracing();
    let mut client = etcd_client().await;
    let prefix = unique_prefix("register_exact_bytes");
    let reg = register(&client, &prefix, "127.0.0.1:41234", "1").await;

    let key = format!("{prefix}/127.0.0.1:41234");
    assert_eq!(reg.key(), key);
    let resp = client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(resp.kvs().len(), 1);
    let kv = &resp.kvs()[0];
    assert_eq!(kv.key(), key.as_bytes());
    assert_eq!(
        kv.value(),
        br#"{"Op":0,"Addr":"127.0.0.1:41234","Metadata":"1"}"#
    );
    assert_ne!(kv.lease(), 0, "the key must carry a lease");

    let ttl = client
        .lease_time_to_live(kv.lease(), None)
        .await
        .expect("ttl");
    assert_eq!(ttl.granted_ttl(), 2);
    assert!(ttl.ttl() > 0);
    assert_eq!(*reg.state().borrow(), State::Registered);
    reg.deregister().await.expect("deregister");
}

#[tokio::test]
async fn key_survives_three_ttls_thanks_to_keepalive() {
    init_tracing();
    let mut client = etcd_client().await;
    let prefix = unique_prefix("survives_3_ttl");
    let reg = register(&client, &prefix, "127.0.0.1:1001", "a").await;
    let (_, lease) = get(&mut client, reg.key()).await.expect("registered");
    let state = reg.state();

    // The point is the passing of time: 3 x TTL.
    tokio::time::sleep(TTL * 3 + Duration::from_millis(500)).await;

    let (value, lease_now) = get(&mut client, reg.key()).await.expect("key still there");
    assert_eq!(value, expected_value("127.0.0.1:1001", "a"));
    assert_eq!(lease_now, lease, "kept alive, never re-registered");
    assert!(
        !state.has_changed().expect("task alive"),
        "state stayed Registered"
    );
    reg.deregister().await.expect("deregister");
}

#[tokio::test]
async fn deregister_deletes_the_key_revokes_the_lease_and_is_idempotent() {
    init_tracing();
    let mut client = etcd_client().await;
    let prefix = unique_prefix("deregister");
    let reg = register(&client, &prefix, "127.0.0.1:1002", "a").await;
    let (_, lease) = get(&mut client, reg.key()).await.expect("registered");
    let mut state = reg.state();

    reg.deregister().await.expect("deregister");

    assert_eq!(get(&mut client, reg.key()).await, None);
    let ttl = client.lease_time_to_live(lease, None).await.expect("ttl");
    assert_eq!(ttl.ttl(), -1, "lease revoked");
    wait_for_state(&mut state, State::Stopped, Duration::from_secs(1)).await;
    reg.deregister().await.expect("second deregister is Ok");
    let err = reg
        .update_metadata(serde_json::json!("x"))
        .await
        .expect_err("update after deregister");
    assert_eq!(err.kind(), ErrorKind::Stopped);
}

#[tokio::test]
async fn dropping_without_deregister_stops_keepalive_and_the_key_expires() {
    init_tracing();
    let mut client = etcd_client().await;
    let prefix = unique_prefix("drop_expires");
    let reg = register(&client, &prefix, "127.0.0.1:1003", "a").await;
    let key = reg.key().to_owned();
    let mut state = reg.state();
    drop(reg);
    wait_for_state(&mut state, State::Stopped, Duration::from_secs(1)).await;
    assert!(
        get(&mut client, &key).await.is_some(),
        "not deleted on drop"
    );

    let deadline = Instant::now() + TTL + Duration::from_secs(2);
    while get(&mut client, &key).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "key did not expire with its lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn key_is_put_back_within_2s_when_the_lease_is_revoked_from_outside() {
    init_tracing();
    let mut client = etcd_client().await;
    let prefix = unique_prefix("revoked_lease");
    let reg = register(&client, &prefix, "127.0.0.1:1004", "a").await;
    let key = reg.key().to_owned();
    let (_, lease) = get(&mut client, &key).await.expect("registered");
    let mut watch = client.watch(key.as_str(), None).await.expect("watch");

    let revoked = Instant::now();
    client.lease_revoke(lease).await.expect("revoke");
    let back = next_put(&mut watch, &key, Duration::from_secs(2)).await;
    eprintln!("re-registration after lease revoke: {:?}", back - revoked);

    let (value, new_lease) = get(&mut client, &key).await.expect("back");
    assert_eq!(value, expected_value("127.0.0.1:1004", "a"));
    assert_ne!(new_lease, lease);
    let mut state = reg.state();
    wait_for_state(&mut state, State::Registered, Duration::from_secs(1)).await;
    reg.deregister().await.expect("deregister");
    assert_eq!(get(&mut client, &key).await, None);
}

#[tokio::test]
async fn key_is_put_back_within_2s_when_deleted_from_outside() {
    init_tracing();
    let mut client = etcd_client().await;
    let prefix = unique_prefix("deleted_key");
    let reg = register(&client, &prefix, "127.0.0.1:1005", "a").await;
    let key = reg.key().to_owned();
    let (_, lease) = get(&mut client, &key).await.expect("registered");
    let mut watch = client.watch(key.as_str(), None).await.expect("watch");

    let deleted = Instant::now();
    client.delete(key.as_str(), None).await.expect("delete");
    let back = next_put(&mut watch, &key, Duration::from_secs(2)).await;
    eprintln!("re-registration after key delete: {:?}", back - deleted);

    let (value, lease_now) = get(&mut client, &key).await.expect("back");
    assert_eq!(value, expected_value("127.0.0.1:1005", "a"));
    assert_eq!(lease_now, lease, "the live lease is reused");
    reg.deregister().await.expect("deregister");
}

#[tokio::test]
async fn key_overwritten_by_someone_else_is_put_back() {
    init_tracing();
    let mut client = etcd_client().await;
    let prefix = unique_prefix("overwritten_key");
    let reg = register(&client, &prefix, "127.0.0.1:1006", "a").await;
    let key = reg.key().to_owned();
    let mut watch = client.watch(key.as_str(), None).await.expect("watch");

    client.put(key.as_str(), "junk", None).await.expect("put");
    next_put(&mut watch, &key, Duration::from_secs(1)).await; // the junk
    next_put(&mut watch, &key, Duration::from_secs(2)).await; // ours again

    let (value, lease) = get(&mut client, &key).await.expect("back");
    assert_eq!(value, expected_value("127.0.0.1:1006", "a"));
    assert_ne!(lease, 0);
    reg.deregister().await.expect("deregister");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_restored_within_3s_of_etcd_being_healthy_after_a_restart() {
    init_tracing();
    let mut etcd = private_etcd();
    let endpoint = etcd.endpoint();
    let reg = Registration::new(unique_prefix("etcd_restart"), "127.0.0.1:1007")
        .etcd_endpoints([endpoint.clone()])
        .instance_id("a")
        .ttl(TTL)
        .register()
        .await
        .expect("register");
    let mut state = reg.state();

    etcd.kill();
    wait_for_state(&mut state, State::Reconnecting, Duration::from_secs(3)).await;
    // Down for a while, as in a real restart: long enough that both the
    // re-registration backoff (100 ms, x2) and the member's reconnect backoff
    // (100 ms, x1.6, at most 2 s) have grown past a second. The registry must
    // not wait out its own backoff once the member is back, or the two add
    // up past the 3 s below.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let etcd = integration_tests::start_again(etcd).await;
    let healthy = Instant::now();
    wait_for_state(&mut state, State::Registered, Duration::from_secs(3)).await;
    eprintln!(
        "re-registration after etcd restart: {:?} after healthy",
        healthy.elapsed()
    );

    let mut client = integration_tests::connect(&[endpoint]).await;
    let (value, lease) = get(&mut client, reg.key()).await.expect("key present");
    assert_eq!(value, expected_value("127.0.0.1:1007", "a"));
    let ttl = client.lease_time_to_live(lease, None).await.expect("ttl");
    assert!(ttl.ttl() > 0, "lease alive");
    reg.deregister().await.expect("deregister");
    assert_eq!(get(&mut client, reg.key()).await, None);
    drop(etcd);
}

/// A server started before etcd: `register()` keeps trying within its
/// connect timeout, and succeeds as soon as etcd's member is connected, not
/// when its own backoff (grown past a second by then) runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_succeeds_within_3s_of_etcd_starting_late() {
    init_tracing();
    let mut etcd = private_etcd();
    let endpoint = etcd.endpoint();
    etcd.kill();
    let registering = tokio::spawn(
        Registration::new(unique_prefix("etcd_late"), "127.0.0.1:1012")
            .etcd_endpoints([endpoint.clone()])
            .instance_id("a")
            .ttl(TTL)
            .connect_timeout(Duration::from_secs(20))
            .register(),
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!registering.is_finished(), "registered with etcd down");
    let etcd = integration_tests::start_again(etcd).await;
    let healthy = Instant::now();
    let reg = tokio::time::timeout(Duration::from_secs(3), registering)
        .await
        .expect("registered within 3 s of etcd being healthy")
        .expect("join")
        .expect("register");
    eprintln!("registered {:?} after etcd was healthy", healthy.elapsed());
    let mut client = integration_tests::connect(&[endpoint]).await;
    let (value, _) = get(&mut client, reg.key()).await.expect("key present");
    assert_eq!(value, expected_value("127.0.0.1:1012", "a"));
    reg.deregister().await.expect("deregister");
    drop(etcd);
}

#[tokio::test]
async fn register_fails_with_a_clear_error_after_the_connect_timeout_when_etcd_is_down() {
    init_tracing();
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let err = Registration::new("discovery/dev/game", "127.0.0.1:1008")
        .etcd_endpoints([endpoint.clone()])
        .connect_timeout(Duration::from_millis(800))
        .register()
        .await
        .expect_err("etcd is down");
    let elapsed = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let msg = err.to_string();
    eprintln!("register() with etcd down: after {elapsed:?}: {msg}");
    assert!(
        msg.starts_with(&format!(
            "cannot register discovery/dev/game/127.0.0.1:1008 in etcd at {endpoint} within 800ms (connect timeout): "
        )),
        "{msg}"
    );
    assert!(msg.contains("Connection refused"), "{msg}");
    assert!(
        elapsed >= Duration::from_millis(700),
        "gave up early: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
}

async fn config_error(reg: Registration) -> String {
    let err = reg
        .etcd_endpoints(etcd_endpoints())
        .register()
        .await
        .expect_err("invalid config");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    err.to_string()
}

#[tokio::test]
async fn invalid_address_is_rejected_with_a_clear_message() {
    assert_eq!(
        config_error(Registration::new("discovery/dev/game", "127.0.0.1")).await,
        r#"invalid address "127.0.0.1": missing port; expected host:port such as 127.0.0.1:50051"#
    );
    assert_eq!(
        config_error(Registration::new("discovery/dev/game", "127.0.0.1:99999")).await,
        r#"invalid address "127.0.0.1:99999": the port must be a number from 1 to 65535; expected host:port such as 127.0.0.1:50051"#
    );
    assert_eq!(
        config_error(Registration::new("discovery/dev/game", "")).await,
        r#"invalid address "": missing port; expected host:port such as 127.0.0.1:50051"#
    );
}

#[tokio::test]
async fn empty_prefix_or_prefix_ending_in_slash_is_rejected_with_a_clear_message() {
    assert_eq!(
        config_error(Registration::new("", "127.0.0.1:1")).await,
        "empty key prefix: expected something like discovery/<env>/<service>"
    );
    assert_eq!(
        config_error(Registration::new("discovery/dev/game/", "127.0.0.1:1")).await,
        r#"invalid key prefix "discovery/dev/game/": it must not end with '/' (the key is <prefix>/<address>)"#
    );
}

#[tokio::test]
async fn ttl_zero_or_below_two_seconds_is_rejected_with_a_clear_message() {
    assert_eq!(
        config_error(Registration::new("p", "127.0.0.1:1").ttl(Duration::ZERO)).await,
        "invalid TTL 0ns: the lease TTL must be at least 2s"
    );
    assert_eq!(
        config_error(Registration::new("p", "127.0.0.1:1").ttl(Duration::from_secs(1))).await,
        "invalid TTL 1s: the lease TTL must be at least 2s"
    );
    assert_eq!(
        config_error(
            Registration::new("p", "127.0.0.1:1")
                .ttl(Duration::from_secs(3))
                .keepalive_interval(Duration::from_secs(3))
        )
        .await,
        "invalid keepalive interval 3s: it must be more than zero and shorter than the TTL (3s)"
    );
}

#[tokio::test]
async fn a_hundred_concurrent_registrations_share_one_client() {
    init_tracing();
    let mut client = etcd_client().await;
    let prefix = unique_prefix("hundred");
    let regs = futures::future::join_all((0..100).map(|i| {
        let client = client.clone();
        let prefix = prefix.clone();
        async move {
            register(
                &client,
                &prefix,
                &format!("127.0.0.1:{}", 20000 + i),
                &i.to_string(),
            )
            .await
        }
    }))
    .await;

    let resp = client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(resp.kvs().len(), 100);
    for kv in resp.kvs() {
        assert_ne!(kv.lease(), 0);
    }
    futures::future::try_join_all(regs.iter().map(Registered::deregister))
        .await
        .expect("deregister all");
    let resp = client
        .get(
            prefix.as_str(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("get");
    assert_eq!(resp.count(), 0);
}

#[tokio::test]
async fn update_metadata_replaces_the_value_in_one_write_keeping_the_lease() {
    init_tracing();
    let mut client = etcd_client().await;
    let prefix = unique_prefix("update_metadata");
    let reg = register(&client, &prefix, "127.0.0.1:1009", "1").await;
    let key = reg.key().to_owned();
    let (_, lease) = get(&mut client, &key).await.expect("registered");
    let mut watch = client
        .watch(key.as_str(), Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");

    reg.update_metadata(serde_json::json!({"id": "2", "weight": 3}))
        .await
        .expect("update");

    let (value, lease_now) = get(&mut client, &key).await.expect("present");
    assert_eq!(
        value,
        br#"{"Op":0,"Addr":"127.0.0.1:1009","Metadata":{"id":"2","weight":3}}"#
    );
    assert_eq!(lease_now, lease);
    // Exactly one event: a PUT, never a DELETE in between.
    let resp = loop {
        let r = watch.message().await.expect("watch").expect("open");
        if !r.events().is_empty() {
            break r;
        }
    };
    assert_eq!(resp.events().len(), 1);
    assert_eq!(resp.events()[0].event_type(), EventType::Put);
    assert_eq!(*reg.state().borrow(), State::Registered);
    reg.deregister().await.expect("deregister");
}
