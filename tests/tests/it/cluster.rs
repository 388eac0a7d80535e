//! A real 3-member etcd cluster losing a member, then its leader, then its
//! quorum, while real servers are registered and a client load runs.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use etcd_client::{Client, GetOptions};
use futures::StreamExt;
use integration_tests::{
    Cluster, cluster,
    process::{PATIENCE, Proc, parse_load_output, start_client, start_server},
    unique_env,
};
use resolver::{Health, Resolution, Resolver};

/// A client of the cluster that fails over like the registry's.
async fn failover_client(endpoints: &[String]) -> Client {
    etcd::connect(endpoints, None, None, Duration::from_secs(2))
        .await
        .expect("connect to the cluster")
        .client
}

fn value(addr: &str, id: &str) -> String {
    format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":"{id}"}}"#)
}

/// Puts until etcd takes it: a put in flight while the leader dies fails
/// inside etcd ("request timed out"), which a caller retries.
async fn put(client: &mut Client, key: &str, value: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match client.put(key, value, None).await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => eprintln!("put {key}: {e}; retrying"),
            Err(e) => panic!("put {key}: {e}"),
        }
    }
}

/// Waits until the resolver's set has `key` (or, with `present` false, has
/// it no more); returns how long that took.
async fn until_key(resolution: &mut Resolution, key: &str, present: bool) -> Duration {
    let started = Instant::now();
    let wait = async {
        while resolution.snapshot().contains_key(key) != present {
            resolution.next().await.expect("the resolution never ends");
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .unwrap_or_else(|_| panic!("{key} present={present} never seen by the resolver"));
    started.elapsed()
}

/// Every 100 ms, reads the prefix (serializable: any live member answers)
/// and records each sample in which a key of `must` was missing.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<AtomicU64>,
    failed_reads: Arc<AtomicU64>,
    missing: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(mut client: Client, prefix: String, must: BTreeSet<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(AtomicU64::new(0));
        let failed_reads = Arc::new(AtomicU64::new(0));
        let missing = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, samples, failed_reads, missing) = (
                stop.clone(),
                samples.clone(),
                failed_reads.clone(),
                missing.clone(),
            );
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let options = GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_serializable();
                    let read = tokio::time::timeout(
                        Duration::from_millis(500),
                        client.get(prefix.as_str(), Some(options)),
                    )
                    .await;
                    let Ok(Ok(resp)) = read else {
                        failed_reads.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    samples.fetch_add(1, Ordering::Relaxed);
                    let keys: BTreeSet<String> = resp
                        .kvs()
                        .iter()
                        .filter_map(|kv| kv.key_str().ok().map(str::to_owned))
                        .collect();
                    for key in must.difference(&keys) {
                        missing.lock().unwrap().push(key.clone());
                    }
                }
            }
        });
        Self {
            stop,
            samples,
            failed_reads,
            missing,
            task,
        }
    }

    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let missing = self.missing.lock().unwrap().clone();
        (
            self.samples.load(Ordering::Relaxed),
            self.failed_reads.load(Ordering::Relaxed),
            missing,
        )
    }
}

/// Runs a blocking fixture call (killing, restarting a member) off the
/// runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("fixture call")
}

/// One member's loss while two servers (TTL 3 s) stay registered: a server
/// started meanwhile registers within 2 s, a SIGINTed one is deleted within
/// 1 s, a key put meanwhile reaches the resolver. Returns what it measured.
async fn lose_member(
    cluster: &Arc<Mutex<Cluster>>,
    member: usize,
    what: &str,
    env: &str,
    client: &mut Client,
    resolution: &mut Resolution,
) -> BTreeMap<&'static str, Duration> {
    let prefix = format!("discovery/{env}/game");
    let endpoints = cluster.lock().unwrap().endpoints();
    let mut measured = BTreeMap::new();
    {
        let cluster = cluster.clone();
        blocking(move || cluster.lock().unwrap().kill(member)).await;
    }
    eprintln!("killed member {member} ({what})");

    // A key put during the failover is seen by the resolver.
    let extra = format!("{prefix}/127.0.0.1:{}", 1 + member);
    put(client, &extra, &value("127.0.0.1:1", what)).await;
    measured.insert(
        "resolver saw a put",
        until_key(resolution, &extra, true).await,
    );
    client.delete(extra.as_str(), None).await.expect("delete");

    // A server started after the loss registers within 2 s.
    let started = Instant::now();
    let (mut late, addr) = tokio::task::block_in_place(|| {
        start_server(
            &format!("late-{member}"),
            env,
            &endpoints,
            &["--ttl", "3s", "--drain", "0s"],
        )
    });
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "a new server took {took:?} to register ({what})"
    );
    measured.insert("new server registered", took);
    let key = format!("{prefix}/{addr}");
    until_key(resolution, &key, true).await;

    // Its SIGINT deletes its key within 1 s (deleted, not expired: the TTL
    // is 3 s).
    let sigint = Instant::now();
    late.signal(libc::SIGINT);
    let gone = until_key(resolution, &key, false).await;
    let took = sigint.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "deregistration took {took:?} ({what}): {gone:?}"
    );
    measured.insert("deregistered", took);
    tokio::task::block_in_place(|| late.wait_exit(PATIENCE));
    let transcript = late.transcript();
    assert!(
        transcript.contains("deregistered: key deleted, lease revoked"),
        "{transcript}"
    );

    {
        let cluster = cluster.clone();
        blocking(move || cluster.lock().unwrap().restart(member))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    measured
}

/// Failover times the servers logged: how long the keepalive and watch took
/// to move to another member.
fn moved_ms(server: &mut Proc) -> Vec<u64> {
    server.drain_available();
    server
        .history()
        .iter()
        .filter(|l| l.text.contains("keepalive and watch re-opened"))
        .filter_map(|l| {
            l.text
                .split("took_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_first_member_then_the_leader_loses_no_key_and_no_call() {
    let t0 = Instant::now();
    // As users meet it: the member listed first is a follower.
    let cluster = Arc::new(Mutex::new(
        blocking(|| {
            let cluster = cluster(3);
            cluster.move_leader(1).unwrap_or_else(|e| panic!("{e}"));
            cluster
        })
        .await,
    ));
    let endpoints = cluster.lock().unwrap().endpoints();
    let env = unique_env("cluster_failover");
    let prefix = format!("discovery/{env}/game");
    let servers: Vec<(Proc, String)> = ["1", "2"]
        .iter()
        .map(|id| start_server(id, &env, &endpoints, &["--ttl", "3s"]))
        .collect();
    let must: BTreeSet<String> = servers
        .iter()
        .map(|(_, addr)| format!("{prefix}/{addr}"))
        .collect();
    let mut client = failover_client(&endpoints).await;
    let sampler = Sampler::start(client.clone(), format!("{prefix}/"), must.clone());
    let mut resolution = Resolver::connect(&endpoints, None, prefix.as_str())
        .await
        .expect("resolver")
        .resolve();
    for key in &must {
        until_key(&mut resolution, key, true).await;
    }
    let mut load = start_client(
        "load",
        &env,
        &endpoints,
        &["--concurrency", "8", "--duration", "9s"],
    );
    load.wait_log(&format!("instances of discovery/{env}/game found"));
    eprintln!("{:?}: load started", t0.elapsed());

    let first = lose_member(
        &cluster,
        0,
        "member listed first, a follower",
        &env,
        &mut client,
        &mut resolution,
    )
    .await;
    let leader = {
        let cluster = cluster.clone();
        blocking(move || cluster.lock().unwrap().wait_for_leader(PATIENCE))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let second = lose_member(
        &cluster,
        leader,
        "leader",
        &env,
        &mut client,
        &mut resolution,
    )
    .await;
    eprintln!("member listed first: {first:?}\nleader (member {leader}): {second:?}");
    eprintln!("{:?}: both losses done", t0.elapsed());

    tokio::task::block_in_place(|| load.wait_exit(PATIENCE));
    eprintln!("{:?}: load ended", t0.elapsed());
    let (summary, per) = parse_load_output(&mut load);
    assert_eq!(
        summary.get("errs"),
        Some(&0),
        "failed calls: {summary:?} {per:?}\n{}",
        load.transcript()
    );
    assert!(
        per.contains_key("1") && per.contains_key("2"),
        "both servers served: {per:?}"
    );
    let (samples, failed_reads, missing) = sampler.finish().await;
    eprintln!(
        "{:?}: {samples} samples, {failed_reads} failed reads",
        t0.elapsed()
    );
    assert!(
        samples >= 20,
        "only {samples} samples ({failed_reads} reads failed)"
    );
    assert!(missing.is_empty(), "keys missing in samples: {missing:?}");
    for key in &must {
        assert!(
            resolution.snapshot().contains_key(key),
            "{key} lost by the resolver"
        );
    }
    for (mut server, addr) in servers {
        let moved = moved_ms(&mut server);
        eprintln!("server {addr}: keepalive and watch moved in {moved:?} ms");
        let transcript = server.transcript();
        assert!(!transcript.contains("registration lost"), "{transcript}");
        // etcd's errors during the failover are one short line.
        for line in server.history() {
            if line.text.contains("etcd stream lost") {
                assert!(line.text.len() < 600, "long line: {}", line.text);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_member_keeps_the_resolver_set_and_it_converges_when_quorum_returns() {
    let cluster = Arc::new(Mutex::new(blocking(|| cluster(3)).await));
    let endpoints = cluster.lock().unwrap().endpoints();
    let env = unique_env("cluster_isolated");
    let prefix = format!("discovery/{env}/game");
    let mut client = failover_client(&endpoints).await;
    let (a, b, c) = (
        format!("{prefix}/127.0.0.1:1"),
        format!("{prefix}/127.0.0.1:2"),
        format!("{prefix}/127.0.0.1:3"),
    );
    put(&mut client, &a, &value("127.0.0.1:1", "a")).await;
    put(&mut client, &b, &value("127.0.0.1:2", "b")).await;
    let mut resolution = Resolver::connect(&endpoints, None, prefix.as_str())
        .await
        .expect("resolver")
        .resolve();
    until_key(&mut resolution, &b, true).await;
    until_key(&mut resolution, &a, true).await;
    let before = resolution.snapshot();
    let mut health = resolution.health();

    {
        let cluster = cluster.clone();
        blocking(move || {
            let mut cluster = cluster.lock().unwrap();
            cluster.kill(1);
            cluster.kill(2);
        })
        .await;
    }
    // Member 0 is alone, without a leader: the resolver says so and keeps
    // its set.
    let outage = tokio::time::timeout(
        PATIENCE,
        health.wait_for(|h| matches!(h, Health::Outage(_))),
    )
    .await
    .expect("the resolver reports the outage")
    .expect("health")
    .clone();
    eprintln!("resolver: {outage:?}");
    assert_eq!(resolution.snapshot(), before);

    {
        let cluster = cluster.clone();
        blocking(move || {
            let mut cluster = cluster.lock().unwrap();
            cluster.start_member(1)?;
            cluster.start_member(2)?;
            cluster.wait_healthy_all()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    // Changed as soon as the quorum is back: the set converges exactly.
    client.delete(a.as_str(), None).await.expect("delete");
    put(&mut client, &c, &value("127.0.0.1:3", "c")).await;
    until_key(&mut resolution, &c, true).await;
    until_key(&mut resolution, &a, false).await;
    let keys: BTreeSet<String> = resolution.snapshot().into_keys().collect();
    assert_eq!(keys, BTreeSet::from([b.clone(), c.clone()]));
    tokio::time::timeout(PATIENCE, health.wait_for(|h| *h == Health::Following))
        .await
        .expect("following again")
        .expect("health");
}
