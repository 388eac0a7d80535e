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
    // here in another process. (The first calls may go out while only some
    // instances are READY yet: at most 1 % elsewhere, so the key is one a
    // fast instance owns, which answers thousands of calls.)
    let (key, owner) = (0..)
        .map(|i| format!("player-{i}"))
        .map(|key| {
            let owner = documented_owner(&["1", "2", "3"], &key);
            (key, owner)
        })
        .find(|(_, owner)| owner != "3")
        .expect("a key of a fast instance");
    let (summary, rh) = load(&env, &etcd, &["--lb", "ring-hash", "--hash-key", &key]);
    let on_owner = rh.get(&owner).copied().unwrap_or(0);
    assert!(
        on_owner * 100 >= summary["ok"] * 99,
        "ring hash of {key} should be instance {owner}: {rh:?}"
    );
}
