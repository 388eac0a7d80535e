//! One watch per prefix per process: resolutions of one prefix from one
//! resolver (and its clones) share one list + watch, against a private etcd
//! whose `/metrics` counts the watchers it serves.

use std::{collections::BTreeMap, time::Duration};

use discover::Change;
use etcdlb_resolver::{Resolution, Resolver};
use futures::StreamExt;
use integration_tests::{connect, private_etcd, unique_prefix};

const WAIT: Duration = Duration::from_secs(15);

/// etcd's count of watchers it serves now (`etcd_debugging_mvcc_watcher_total`).
async fn watchers(endpoint: &str) -> u64 {
    let host = endpoint.trim_start_matches("http://").to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut tcp = std::net::TcpStream::connect(&host).expect("connect to etcd");
        write!(tcp, "GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("request");
        let mut body = String::new();
        tcp.read_to_string(&mut body).expect("metrics");
        body.lines()
            .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .expect("etcd_debugging_mvcc_watcher_total in /metrics")
    })
    .await
    .expect("metrics thread")
}

/// Waits until etcd serves `n` watchers.
async fn until_watchers(endpoint: &str, n: u64) {
    let give_up = tokio::time::Instant::now() + WAIT;
    loop {
        let now = watchers(endpoint).await;
        if now == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "etcd serves {now} watchers, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Applies changes to `set` until it holds exactly `want` keys.
async fn until_set(r: &mut Resolution, set: &mut BTreeMap<String, String>, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|k| k.to_string()).collect();
    want.sort();
    while set.keys().cloned().collect::<Vec<_>>() != want {
        match tokio::time::timeout(WAIT, r.next()).await {
            Ok(Some(Change::Insert(k, e))) => {
                set.insert(k, e.addr().to_owned());
            }
            Ok(Some(Change::Remove(k))) => {
                set.remove(&k);
            }
            Ok(Some(Change::Reset(all))) => {
                *set = all
                    .into_iter()
                    .map(|(k, e)| (k, e.addr().to_owned()))
                    .collect();
            }
            Ok(None) => panic!("the resolution ended; have {set:?}"),
            Err(_) => panic!("no change within {WAIT:?}; have {set:?}, want {want:?}"),
        }
    }
}

fn value(addr: &str) -> String {
    format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":"x"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_resolutions_of_a_prefix_share_one_watch_and_the_last_one_ends_it() {
    let etcd = private_etcd();
    let endpoint = etcd.endpoint();
    let mut client = connect(std::slice::from_ref(&endpoint)).await;
    let prefix = unique_prefix("fanout");
    client
        .put(format!("{prefix}/a:1"), value("a:1"), None)
        .await
        .expect("put");
    let resolver = Resolver::connect(&[endpoint.as_str()], None, prefix.as_str())
        .await
        .expect("resolver");
    until_watchers(&endpoint, 0).await;

    let mut resolutions: Vec<Resolution> = (0..50).map(|_| resolver.clone().resolve()).collect();
    let mut sets = vec![BTreeMap::new(); resolutions.len()];
    for (r, set) in resolutions.iter_mut().zip(&mut sets) {
        until_set(r, set, &[&format!("{prefix}/a:1")]).await;
    }
    assert_eq!(resolver.watched_prefixes(), 1);
    until_watchers(&endpoint, 1).await;

    // A late joiner gets the whole set, then follows with the others.
    client
        .put(format!("{prefix}/b:1"), value("b:1"), None)
        .await
        .expect("put");
    let mut late = resolver.clone().resolve();
    let mut late_set = BTreeMap::new();
    let both = [format!("{prefix}/a:1"), format!("{prefix}/b:1")];
    let both: Vec<&str> = both.iter().map(String::as_str).collect();
    until_set(&mut late, &mut late_set, &both).await;
    for (r, set) in resolutions.iter_mut().zip(&mut sets) {
        until_set(r, set, &both).await;
    }
    until_watchers(&endpoint, 1).await;

    // Another prefix on the same client: a watch of its own.
    let other = resolver.for_prefix(format!("{prefix}-other"));
    let other_resolution = other.resolve();
    assert_eq!(resolver.watched_prefixes(), 2);
    until_watchers(&endpoint, 2).await;
    drop(other_resolution);

    drop(late);
    resolutions.clear();
    until_watchers(&endpoint, 0).await;
    assert_eq!(resolver.watched_prefixes(), 0);
    // A new resolution starts a new watch.
    let mut again = resolver.resolve();
    let mut again_set = BTreeMap::new();
    until_set(&mut again, &mut again_set, &both).await;
    until_watchers(&endpoint, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_delays_no_other_and_comes_back_consistent() {
    let etcd = private_etcd();
    let endpoint = etcd.endpoint();
    let mut client = connect(std::slice::from_ref(&endpoint)).await;
    let prefix = unique_prefix("fanout_slow");
    const LIMIT: usize = 64;
    let resolver = Resolver::connect(&[endpoint.as_str()], None, prefix.as_str())
        .await
        .expect("resolver")
        .lag_limit(LIMIT);
    let mut stalled = resolver.clone().resolve();
    let mut stalled_set = BTreeMap::new();
    let mut reader = resolver.resolve();
    let mut reader_set = BTreeMap::new();

    // Churn: each put a new key, the oldest deleted past 10 live keys, far
    // more changed keys than the lag limit allows the stalled one.
    let churn = 4 * LIMIT;
    let mut live = std::collections::VecDeque::new();
    for i in 0..churn {
        let key = format!("{prefix}/10.0.{}.{}:1", i / 250, i % 250);
        let addr = key.rsplit('/').next().expect("addr").to_owned();
        client
            .put(key.clone(), value(&addr), None)
            .await
            .expect("put");
        live.push_back(key);
        if live.len() > 10 {
            let old = live.pop_front().expect("oldest");
            client.delete(old, None).await.expect("delete");
        }
        if i % 50 == 49 {
            // The reader keeps up while the other reads nothing.
            let want: Vec<&str> = live.iter().map(String::as_str).collect();
            until_set(&mut reader, &mut reader_set, &want).await;
        }
    }
    let want: Vec<&str> = live.iter().map(String::as_str).collect();
    until_set(&mut reader, &mut reader_set, &want).await;
    // The stalled one reads again: past the lag limit its changes were
    // dropped, so it gets the whole current set at once (a Reset), not one
    // change per event.
    let mut changes = 0usize;
    let mut resets = 0usize;
    let mut want: Vec<String> = live.iter().cloned().collect();
    want.sort();
    while stalled_set.keys().cloned().collect::<Vec<_>>() != want {
        match tokio::time::timeout(WAIT, stalled.next()).await {
            Ok(Some(Change::Insert(k, e))) => {
                stalled_set.insert(k, e.addr().to_owned());
            }
            Ok(Some(Change::Remove(k))) => {
                stalled_set.remove(&k);
            }
            Ok(Some(Change::Reset(all))) => {
                resets += 1;
                stalled_set = all
                    .into_iter()
                    .map(|(k, e)| (k, e.addr().to_owned()))
                    .collect();
            }
            other => panic!("{other:?} with {} keys", stalled_set.len()),
        }
        changes += 1;
    }
    assert_eq!(
        resets, 1,
        "{changes} changes to catch up after {churn} puts"
    );
    assert!(
        changes <= 1 + 10,
        "{changes} changes to catch up after {churn} puts"
    );
    assert_eq!(stalled_set, reader_set);
}
