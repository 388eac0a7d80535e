//! Resource hygiene: servers coming and going leave the client as they found
//! it. A test binary of its own, so no other test shares its process (file
//! descriptors and tasks are counted process-wide).
//!
//! `HYGIENE_CYCLES` sets the number of register/deregister cycles (default
//! 1 000).

use std::time::{Duration, Instant};

use balancer::{Balancer, ConnectivityState};
use echo_proto::{EchoRequest, echo_client::EchoClient, echo_server::EchoServer};
use integration_tests::{etcd_client, etcd_endpoints, unique_prefix};
use registry::Registration;
use resolver::Resolver;
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Clone, Copy, Debug)]
struct Usage {
    fds: usize,
    tasks: usize,
    rss_kib: u64,
}

fn usage() -> Usage {
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let rss_pages: u64 = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0);
    Usage {
        fds,
        tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        rss_kib: rss_pages * 4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_churn_returns_client_fds_tasks_and_memory_to_baseline() {
    let cycles: usize = std::env::var("HYGIENE_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let endpoints = etcd_endpoints();
    let prefix = unique_prefix("hygiene");

    // One server that stays up; its registration comes and goes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(echo_server::EchoService::new("1")))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let resolution = Resolver::connect(&endpoints, None, prefix.as_str())
        .await
        .expect("resolver")
        .resolve();
    let balancer = Balancer::builder().name(prefix.as_str()).build(resolution);
    let mut client = EchoClient::new(balancer.clone());
    let etcd = etcd_client().await;

    let started = Instant::now();
    let mut baseline = None;
    for cycle in 0..cycles {
        let registered = Registration::new(prefix.as_str(), addr.as_str())
            .client(etcd.clone())
            .instance_id("1")
            .ttl(Duration::from_secs(10))
            .register()
            .await
            .expect("register");
        balancer.wait_for_ready(1).await;
        let reply = client
            .unary_echo(EchoRequest {
                message: "hi".into(),
            })
            .await
            .expect("call");
        assert_eq!(reply.into_inner().message, "hi (from 1)");
        registered.deregister().await.expect("deregister");
        balancer.wait_until(|all| all.is_empty()).await;
        if cycle == 9 {
            // After warm-up: pools, buffers and lazily started tasks exist.
            baseline = Some(settled(None).await);
        }
    }
    let baseline = baseline.expect("at least 10 cycles");
    let after = settled(Some(baseline)).await;
    eprintln!(
        "hygiene: {cycles} cycles in {:.1?}; baseline {baseline:?}; after {after:?}",
        started.elapsed()
    );
    assert!(
        after.fds <= baseline.fds,
        "file descriptors leaked: {baseline:?} -> {after:?}"
    );
    assert!(
        after.tasks <= baseline.tasks,
        "tasks leaked: {baseline:?} -> {after:?}"
    );
    assert!(
        after.rss_kib <= baseline.rss_kib + 20 * 1024,
        "memory grew by more than 20 MiB: {baseline:?} -> {after:?}"
    );
    assert!(
        balancer
            .endpoints()
            .iter()
            .all(|e| e.state != ConnectivityState::Ready)
    );
}

/// Usage once closed connections have finished closing (they close
/// asynchronously, and nothing signals it): polls until fds and tasks are at
/// most `target`'s, or 5 s have passed.
async fn settled(target: Option<Usage>) -> Usage {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = usage();
        let done = match target {
            Some(t) => now.fds <= t.fds && now.tasks <= t.tasks,
            None => true,
        };
        if done || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
