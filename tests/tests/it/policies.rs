//! `echo-client --lb` with the real binaries: every policy in load mode
//! (whose per-instance line must keep working), least request around an
//! `echo-server --delay`, and ring hash agreeing across processes with the
//! ring `balancer::RingHash` documents.

use std::collections::BTreeMap;

use balancer::{HashKey, RingHash};
use integration_tests::{
    etcd_endpoints,
    process::{PATIENCE, parse_load_output, start_client, start_server},
    unique_env,
};

/// A load run of `echo-client` with `flags`; its summary and per-instance
/// counts.
fn load(
    env: &str,
    etcd: &[String],
    flags: &[&str],
) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let mut args = flags.to_vec();
    args.extend(["--concurrency", "4", "--duration", "2s"]);
    let mut client = start_client(flags.join(" ").as_str(), env, etcd, &args);
    let status = client.wait_exit(PATIENCE);
    assert!(
        status.success(),
        "{flags:?}: {status}\n{}",
        client.transcript()
    );
    let (summary, per_instance) = parse_load_output(&mut client);
    assert_eq!(summary["errs"], 0, "{flags:?}: {}", client.transcript());
    assert_eq!(
        per_instance.values().sum::<u64>(),
        summary["ok"],
        "{flags:?}: the per-instance line counts every call"
    );
    (summary, per_instance)
}

/// The instance `RingHash`'s documented ring gives `key` among `ids`.
fn documented_owner(ids: &[&str], key: &str) -> String {
    let per = RingHash::new().nodes_per_endpoint(ids.len());
    let mut ring: Vec<(u64, &str)> = ids
        .iter()
        .flat_map(|id| (0..per).map(move |i| (HashKey::new(format!("{id}_{i}")).hash(), *id)))
        .collect();
    ring.sort();
    let point = HashKey::new(key).hash();
    let at = ring.partition_point(|&(h, _)| h < point) % ring.len();
    ring[at].1.to_owned()
}

#[test]
fn every_policy_runs_the_load_mode_least_request_avoids_a_slow_server_ring_hash_agrees() {
    let etcd = etcd_endpoints();
    let env = unique_env("lb");
    let (_s1, _) = start_server("1", &env, &etcd, &[]);
    let (_s2, _) = start_server("2", &env, &etcd, &[]);
    let (_s3, _) = start_server("3", &env, &etcd, &["--delay", "200ms"]);

    let (_, rr) = load(&env, &etcd, &["--lb", "round-robin"]);
    assert_eq!(rr.len(), 3, "round robin reaches all three: {rr:?}");

    let (summary, lr) = load(&env, &etcd, &["--lb", "least-request"]);
    let slow = lr.get("3").copied().unwrap_or(0);
    assert!(
        slow * 10 < summary["ok"],
        "least request sent {slow} of {} calls to the 200 ms server: {lr:?}",
        summary["ok"]
    );

    // One key, one instance: the one the documented ring names, computed
    // here in another process; from the very first call (the ring spans
    // every instance, READY or still connecting), and whether the key rides
    // as a request extension or as a header (gRFC A76).
    let (key, owner) = (0..)
        .map(|i| format!("player-{i}"))
        .map(|key| {
            let owner = documented_owner(&["1", "2", "3"], &key);
            (key, owner)
        })
        .find(|(_, owner)| owner != "3")
        .expect("a key of a fast instance");
    for header in [&[][..], &["--hash-header", "x-player-id"]] {
        let mut flags = vec!["--lb", "ring-hash", "--hash-key", &key];
        flags.extend_from_slice(header);
        let (summary, rh) = load(&env, &etcd, &flags);
        assert_eq!(
            rh.get(&owner).copied(),
            Some(summary["ok"]),
            "ring hash of {key} ({header:?}) should be instance {owner}, every call: {rh:?}"
        );
    }
}

/// A ring-hash client of `env` in this process (resolver + balancer).
async fn ring_client(
    env: &str,
    etcd: &[String],
) -> echo_proto::echo_client::EchoClient<balancer::Balancer> {
    let prefix = format!("discovery/{env}/game");
    let changes = resolver::Resolver::connect(etcd, None, &prefix)
        .await
        .expect("resolver")
        .resolve();
    let balancer = balancer::Balancer::builder()
        .name(prefix)
        .policy(RingHash::new())
        .build(changes);
    echo_proto::echo_client::EchoClient::new(balancer)
}

/// Calls with `key` until `want` answers (a call that fails meanwhile, on a
/// server just killed or frozen, is counted); panics after `PATIENCE`.
async fn until_answered_by(
    client: &mut echo_proto::echo_client::EchoClient<balancer::Balancer>,
    key: &str,
    want: &str,
) -> u32 {
    use balancer::HashKeyExt as _;
    let mut failed = 0;
    let give_up = std::time::Instant::now() + PATIENCE;
    loop {
        let request = tonic::Request::new(echo_proto::EchoRequest {
            message: "hi".into(),
        })
        .hash_key(key);
        match client.unary_echo(request).await {
            Ok(reply) => {
                let reply = reply.into_inner().message;
                if integration_tests::process::from_id(&reply) == Some(want) {
                    return failed;
                }
            }
            Err(_) => failed += 1,
        }
        assert!(
            std::time::Instant::now() < give_up,
            "{key} never reached instance {want}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_owner_killed_or_frozen_hands_it_to_the_next_on_the_ring_and_gets_it_back() {
    let etcd = etcd_endpoints();
    let env = unique_env("rh-owner");
    let ids = ["1", "2", "3", "4"];
    let mut servers: Vec<_> = ids
        .iter()
        .map(|id| start_server(id, &env, &etcd, &[]).0)
        .collect();
    // A key of instance 1, and where it goes while 1 is out: the ring
    // without 1's nodes.
    let key = (0..)
        .map(|i| format!("player-{i}"))
        .find(|key| documented_owner(&ids, key) == "1")
        .expect("a key of instance 1");
    let next = documented_owner(&ids[1..], &key);
    let mut client = ring_client(&env, &etcd).await;
    assert_eq!(until_answered_by(&mut client, &key, "1").await, 0);

    // SIGKILL: the next on the ring takes the key; a restart (new port,
    // same id) gets it back.
    servers[0].signal(libc::SIGKILL);
    until_answered_by(&mut client, &key, &next).await;
    let (restarted, _) = start_server("1", &env, &etcd, &[]);
    servers[0] = restarted;
    until_answered_by(&mut client, &key, "1").await;

    // SIGSTOP: suspected frozen, so the next takes the key; SIGCONT and it
    // is picked again.
    servers[0].signal(libc::SIGSTOP);
    until_answered_by(&mut client, &key, &next).await;
    servers[0].signal(libc::SIGCONT);
    until_answered_by(&mut client, &key, "1").await;
}
