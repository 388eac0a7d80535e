//! One watch per prefix per process, and one watch stream per client:
//! resolutions of one prefix from one resolver (and its clones) share one
//! list + watch, and the watches of every prefix share one gRPC watch
//! stream, against private etcds whose `/metrics` count the watchers and
//! the watch streams they serve.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use discover::Change;
use etcdlb_resolver::{Resolution, Resolver};
use futures::StreamExt;
use integration_tests::{cluster, connect, private_etcd, unique_prefix};

const WAIT: Duration = Duration::from_secs(15);

/// etcd's watchers (what each watch of a prefix costs it).
const WATCHERS: &str = "etcd_debugging_mvcc_watcher_total";
/// etcd's gRPC watch streams.
const STREAMS: &str = "etcd_debugging_mvcc_watch_stream_total";

/// A gauge from etcd's `/metrics` (plain HTTP on its client URL, in etcd
/// 3.4 as in 3.6).
async fn metric(endpoint: &str, name: &'static str) -> u64 {
    let host = endpoint.trim_start_matches("http://").to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut tcp = std::net::TcpStream::connect(&host).expect("connect to etcd");
        write!(tcp, "GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("request");
        let mut body = String::new();
        tcp.read_to_string(&mut body).expect("metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or_else(|| panic!("{name} in {host}'s /metrics"))
    })
    .await
    .expect("metrics thread")
}

/// Waits until `name` summed over `endpoints` is `n`.
async fn until_metric(endpoints: &[String], name: &'static str, n: u64) {
    let give_up = tokio::time::Instant::now() + WAIT;
    loop {
        let mut now = 0;
        for endpoint in endpoints {
            now += metric(endpoint, name).await;
        }
        if now == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "etcd has {now} of {name}, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until etcd serves `n` watchers.
async fn until_watchers(endpoint: &str, n: u64) {
    until_metric(&[endpoint.to_owned()], WATCHERS, n).await;
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
    // Both watches on one stream.
    until_metric(std::slice::from_ref(&endpoint), STREAMS, 1).await;
    drop(other_resolution);

    drop(late);
    resolutions.clear();
    until_watchers(&endpoint, 0).await;
    until_metric(std::slice::from_ref(&endpoint), STREAMS, 0).await;
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
    let seed = format!("{prefix}/seed:1");
    client
        .put(seed.clone(), value("seed:1"), None)
        .await
        .expect("put");
    let mut stalled = resolver.clone().resolve();
    let mut stalled_set = BTreeMap::new();
    let mut reader = resolver.resolve();
    let mut reader_set = BTreeMap::new();
    // Both read the first set; then one stops reading.
    until_set(&mut stalled, &mut stalled_set, &[&seed]).await;
    until_set(&mut reader, &mut reader_set, &[&seed]).await;

    // Churn: each put a new key, the oldest deleted past 10 live keys, far
    // more changed keys than the lag limit allows the stalled one.
    let churn = 4 * LIMIT;
    let mut live = std::collections::VecDeque::from([seed]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watches_of_many_prefixes_share_one_stream_and_the_last_one_closes_it() {
    let etcd = private_etcd();
    let endpoints = vec![etcd.endpoint()];
    let mut client = connect(&endpoints).await;
    let base = unique_prefix("mux");
    let resolver = Resolver::connect(&endpoints, None, format!("{base}/s0"))
        .await
        .expect("resolver");
    const PREFIXES: usize = 20;
    let key = |p: usize, n: usize| format!("{base}/s{p}/10.0.{p}.{n}:1");
    let mut resolutions = Vec::new();
    for p in 0..PREFIXES {
        let k = key(p, 1);
        let addr = k.rsplit('/').next().expect("addr").to_owned();
        client.put(k, value(&addr), None).await.expect("put");
        let prefix = format!("{base}/s{p}");
        resolutions.push((p, resolver.for_prefix(prefix).resolve(), BTreeMap::new()));
    }
    for (p, r, set) in &mut resolutions {
        until_set(r, set, &[&key(*p, 1)]).await;
    }
    assert_eq!(resolver.watched_prefixes(), PREFIXES);
    until_metric(&endpoints, WATCHERS, PREFIXES as u64).await;
    until_metric(&endpoints, STREAMS, 1).await;

    // Each prefix's changes reach its own resolutions only.
    for p in 0..PREFIXES {
        let k = key(p, 2);
        let addr = k.rsplit('/').next().expect("addr").to_owned();
        client.put(k, value(&addr), None).await.expect("put");
    }
    for (p, r, set) in &mut resolutions {
        until_set(r, set, &[&key(*p, 1), &key(*p, 2)]).await;
    }

    // Half of them go: their watches are cancelled on the stream, which
    // carries the others on.
    resolutions.truncate(PREFIXES / 2);
    until_metric(&endpoints, WATCHERS, (PREFIXES / 2) as u64).await;
    until_metric(&endpoints, STREAMS, 1).await;
    client.delete(key(0, 1), None).await.expect("delete");
    let (p, r, set) = &mut resolutions[0];
    until_set(r, set, &[&key(*p, 2)]).await;

    // The last one closes the stream.
    resolutions.clear();
    until_metric(&endpoints, WATCHERS, 0).await;
    until_metric(&endpoints, STREAMS, 0).await;
}

/// What one prefix's resolution was told: every key ever inserted, and its
/// set now.
#[derive(Default)]
struct Told {
    inserted: BTreeSet<String>,
    set: BTreeSet<String>,
}

/// Retries an etcd write until it is taken: one in flight while a member
/// dies or an election runs fails, and a caller retries it.
async fn write(client: &mut etcd_client::Client, key: &str, put: bool) {
    let give_up = tokio::time::Instant::now() + WAIT;
    loop {
        let result = if put {
            let addr = key.rsplit('/').next().expect("addr");
            client.put(key, value(addr), None).await.map(drop)
        } else {
            client.delete(key, None).await.map(drop)
        };
        match result {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() < give_up => {
                eprintln!("write {key}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("write {key}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_member_that_carries_the_stream_moves_every_watch_and_loses_no_change() {
    let cluster = tokio::task::spawn_blocking(|| cluster(3))
        .await
        .expect("cluster thread");
    let cluster = Arc::new(Mutex::new(cluster));
    let endpoints = cluster.lock().expect("cluster").endpoints();
    let base = unique_prefix("mux_failover");
    let resolver = Resolver::connect(&endpoints, None, format!("{base}/s0"))
        .await
        .expect("resolver");
    const PREFIXES: usize = 8;
    const ROUNDS: usize = 60;
    const LIVE: usize = 10;
    let key = |p: usize, n: usize| format!("{base}/s{p}/10.0.{p}.{n}:1");

    let mut told = Vec::new();
    let mut readers = Vec::new();
    for p in 0..PREFIXES {
        let mut resolution = resolver.for_prefix(format!("{base}/s{p}")).resolve();
        let mut health = resolution.health();
        health
            .wait_for(|h| *h == etcdlb_resolver::Health::Following)
            .await
            .expect("health");
        let mine = Arc::new(Mutex::new(Told::default()));
        told.push(mine.clone());
        readers.push(tokio::spawn(async move {
            while let Some(change) = resolution.next().await {
                let mut t = mine.lock().expect("told");
                match change {
                    Change::Insert(k, _) => {
                        t.inserted.insert(k.clone());
                        t.set.insert(k);
                    }
                    Change::Remove(k) => {
                        t.set.remove(&k);
                    }
                    Change::Reset(all) => {
                        // Would hide changes; counted as a failure below.
                        t.set = all.into_iter().map(|(k, _)| k).collect();
                        t.inserted.insert("<reset>".into());
                    }
                }
            }
        }));
    }
    until_metric(&endpoints, WATCHERS, PREFIXES as u64).await;
    until_metric(&endpoints, STREAMS, 1).await;
    let mut carrier = None;
    for (i, endpoint) in endpoints.iter().enumerate() {
        if metric(endpoint, STREAMS).await == 1 {
            carrier = Some(i);
        }
    }
    let carrier = carrier.expect("a member carries the stream");
    eprintln!("member {carrier} carries the watch stream");

    let mut writer = etcd::connect(&endpoints, None, None, Duration::from_secs(2))
        .await
        .expect("writer")
        .client;
    for n in 0..ROUNDS {
        if n == ROUNDS / 3 {
            let cluster = cluster.clone();
            tokio::task::spawn_blocking(move || cluster.lock().expect("cluster").kill(carrier))
                .await
                .expect("kill thread");
        }
        for p in 0..PREFIXES {
            write(&mut writer, &key(p, n), true).await;
            if n >= LIVE {
                write(&mut writer, &key(p, n - LIVE), false).await;
            }
        }
    }

    // Every resolution ends with the exact set, having been told of every
    // key: its watch was resumed from its own revision, not listed again.
    let give_up = tokio::time::Instant::now() + WAIT;
    for (p, t) in told.iter().enumerate() {
        let want: BTreeSet<String> = (ROUNDS - LIVE..ROUNDS).map(|n| key(p, n)).collect();
        while t.lock().expect("told").set != want {
            assert!(
                tokio::time::Instant::now() < give_up,
                "prefix {p} has {:?}, not {want:?}",
                t.lock().expect("told").set
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let all: BTreeSet<String> = (0..ROUNDS).map(|n| key(p, n)).collect();
        assert_eq!(t.lock().expect("told").inserted, all, "prefix {p}");
    }
    // The watches all moved to one stream on a live member.
    let live: Vec<String> = (0..endpoints.len())
        .filter(|&i| i != carrier)
        .map(|i| endpoints[i].clone())
        .collect();
    until_metric(&live, STREAMS, 1).await;
    until_metric(&live, WATCHERS, PREFIXES as u64).await;
    for reader in readers {
        reader.abort();
    }
}
