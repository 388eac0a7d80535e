//! etcd grpc-proxy as the fan-out tier: two proxies in front of a 3-member
//! cluster; servers register and clients discover through the proxies
//! only; one proxy is SIGKILLed under load.

use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use integration_tests::{
    GrpcProxy, cluster,
    process::{PATIENCE, parse_load_output, start_client, start_server},
    unique_env,
};

/// The keys under `prefix`, read from the cluster directly.
async fn keys(members: &[String], prefix: &str) -> Vec<String> {
    let mut client = etcd_client::Client::connect(members, None)
        .await
        .expect("connect to the cluster");
    let resp = client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("get");
    resp.kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap_or("?").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_two_proxies_servers_register_clients_follow_and_a_proxy_kill_fails_no_call() {
    let bin = etcd_provision::find_etcd_binary().expect("an etcd binary: run `cargo xtask test`");
    let (cluster, proxies) = tokio::task::spawn_blocking(move || {
        let cluster = cluster(3);
        let proxies: Vec<GrpcProxy> = (0..2)
            .map(|_| GrpcProxy::start(&bin, &cluster.endpoints()).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        (cluster, proxies)
    })
    .await
    .expect("start");
    let members = cluster.endpoints();
    let via: Vec<String> = proxies.iter().map(GrpcProxy::endpoint).collect();
    let env = unique_env("proxy");
    let prefix = format!("discovery/{env}/game/");

    // Registration and keepalive through the proxies (a 3 s lease).
    let servers: Vec<_> = ["1", "2"]
        .iter()
        .map(|id| start_server(id, &env, &via, &["--ttl", "3s"]))
        .collect();
    let want: Vec<String> = {
        let mut k: Vec<String> = servers
            .iter()
            .map(|(_, a)| format!("{prefix}{a}"))
            .collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&members, &prefix).await,
        want,
        "registered through the proxies"
    );

    // Discovery through the proxies, under load; one proxy dies meanwhile.
    let mut load = start_client(
        "load via proxies",
        &env,
        &via,
        &["--concurrency", "4", "--duration", "6s"],
    );
    load.wait_log(&format!("instances of discovery/{env}/game found"));
    let mut proxies = proxies;
    proxies[0].kill();
    let killed = Instant::now();
    tokio::task::block_in_place(|| load.wait_exit(PATIENCE));
    let (summary, per) = parse_load_output(&mut load);
    assert_eq!(
        summary.get("errs"),
        Some(&0),
        "{summary:?} {per:?}\n{}",
        load.transcript()
    );
    assert!(per.contains_key("1") && per.contains_key("2"), "{per:?}");

    // Past the lease's TTL since the kill, the keys are still there: the
    // keepalives moved to the other proxy.
    let past_ttl = killed + Duration::from_secs(4);
    tokio::time::sleep_until(past_ttl.into()).await;
    assert_eq!(
        keys(&members, &prefix).await,
        want,
        "no key lost past its TTL"
    );

    // Deregistration through the remaining proxy.
    let (mut first, first_addr) = servers.into_iter().next().expect("a server");
    first.signal(libc::SIGINT);
    first.wait_log("deregistered");
    let left = keys(&members, &prefix).await;
    assert!(!left.contains(&format!("{prefix}{first_addr}")), "{left:?}");
    drop(cluster);
}
