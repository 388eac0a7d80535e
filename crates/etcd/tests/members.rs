//! The failover client against real etcd: on a 3-member cluster, requests
//! keep working through a member's SIGKILL and errors name the members; on
//! one member, its restart ends a retry wait.

use std::time::Duration;

use etcd_client::{GetOptions, WatchOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_to_live_members_and_errors_name_them() {
    let mut cluster = integration_tests::cluster(3);
    let endpoints = cluster.endpoints();
    let connected = etcdlb_etcd::connect(&endpoints, None, None, Duration::from_secs(2))
        .await
        .expect("connect");
    let mut client = connected.client.clone();
    let prefix = integration_tests::unique_prefix("failover_members");
    client
        .put(format!("{prefix}/a"), "1", None)
        .await
        .expect("put");
    let mut watch = client
        .watch(
            format!("{prefix}/"),
            Some(WatchOptions::new().with_prefix()),
        )
        .await
        .expect("watch");
    assert!(watch.message().await.expect("created").is_some());

    // A follower: a leader's death also fails requests that were in flight
    // inside etcd ("request timed out, possibly due to previous leader
    // failure"), which is for the registry and resolver to retry.
    let follower = cluster.follower().expect("a follower");
    cluster.kill(follower);
    // A request written in the millisecond before the kernel tells us of the
    // death may have reached the member, and is not retried: wait for that.
    connected.members.wait_for(|ready| ready == 2).await;
    // Every member is reached at least once by round robin: none may fail.
    for i in 0..12 {
        client
            .put(format!("{prefix}/k{i}"), "v", None)
            .await
            .unwrap_or_else(|e| panic!("put {i} after a member's death: {e}"));
    }
    let n = client
        .get(
            format!("{prefix}/"),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("get")
        .count();
    assert_eq!(n, 13);
    assert_eq!(
        connected.members.ready(),
        Some(2),
        "{}",
        connected.members.describe()
    );

    for i in 0..3 {
        cluster.kill(i);
    }
    // As above: a request written before the deaths are noticed may have
    // been sent, and fails naming its member instead.
    connected.members.wait_for(|ready| ready == 0).await;
    let error = client
        .get(format!("{prefix}/a"), None)
        .await
        .expect_err("no member is up");
    let text = error.to_string();
    assert!(text.contains("no etcd member is ready"), "{text}");
    for e in &endpoints {
        assert!(
            text.contains(e.trim_start_matches("http://")),
            "{e} not named: {text}"
        );
    }
}

/// `retry_wait` after a failure with no member ready returns as soon as the
/// restarted member is connected, long before its deadline; without that
/// flag it sleeps out the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_wait_ends_when_a_member_is_back() {
    let mut etcd = integration_tests::private_etcd();
    let connected = etcdlb_etcd::connect(&[etcd.endpoint()], None, None, Duration::from_secs(2))
        .await
        .expect("connect");
    let mut client = connected.client.clone();
    client.put("retry_wait", "1", None).await.expect("put");
    let members = connected.members.clone();

    etcd.kill();
    members.wait_for(|ready| ready == 0).await;
    client
        .get("retry_wait", None)
        .await
        .expect_err("no member is up");
    let none_ready = members.ready() == Some(0);
    assert!(none_ready, "{}", members.describe());

    // A deadline no test would wait for: only the member's return ends it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let waiting = tokio::spawn({
        let members = members.clone();
        async move { members.retry_wait(deadline, none_ready).await }
    });
    let etcd = integration_tests::start_again(etcd).await;
    let back = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("retry_wait returned once the member was back")
        .expect("join");
    assert!(back, "the member ended the wait");
    assert_eq!(members.ready(), Some(1), "{}", members.describe());
    client
        .get("retry_wait", None)
        .await
        .expect("get after the restart");

    // Not flagged: a plain sleep to the deadline, though a member is ready.
    let short = tokio::time::Instant::now() + Duration::from_millis(50);
    assert!(!members.retry_wait(short, false).await);
    assert!(tokio::time::Instant::now() >= short);
    drop(etcd);
}
