//! etcd tests that need the resolver's insides: a watch whose start revision
//! is compacted before it is created, and the task's lifetime.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use discover::{Change, Endpoint};
use futures::{FutureExt, StreamExt};
use integration_tests::{etcd_client, unique_prefix};

use crate::{Backoff, Resolver};

fn go_value(addr: &str, id: &str) -> String {
    format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":"{id}"}}"#)
}

/// Between the list at R and the watch from R + 1, keys change and etcd is
/// compacted past R + 1: the watch is canceled, the resolver lists again and
/// ends with the exact set.
#[tokio::test]
async fn watch_canceled_for_compaction_is_recovered_by_listing_again() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("etcdlb_resolver=info")
        .try_init();
    let prefix = unique_prefix("watch_start_compacted");
    let mut client = etcd_client().await;
    let key = |i: u32| format!("{prefix}/127.0.0.1:{}", 20000 + i);
    for i in 0..4 {
        let addr = format!("127.0.0.1:{}", 20000 + i);
        client
            .put(key(i), go_value(&addr, "old"), None)
            .await
            .unwrap();
    }

    let lists = Arc::new(AtomicUsize::new(0));
    let mut resolver = Resolver::new(client.clone(), &prefix).backoff(Backoff {
        base: Duration::from_millis(10),
        ..Backoff::default()
    });
    resolver.before_watch = Some({
        let lists = lists.clone();
        let client = client.clone();
        let key0 = key(0);
        let key1 = key(1);
        let key9 = key(9);
        Arc::new(move |_revision| {
            let first = lists.fetch_add(1, Ordering::SeqCst) == 0;
            let mut client = client.clone();
            let (key0, key1, key9) = (key0.clone(), key1.clone(), key9.clone());
            async move {
                if !first {
                    return;
                }
                client.delete(key0, None).await.unwrap();
                client
                    .put(key1, go_value("127.0.0.1:20001", "new"), None)
                    .await
                    .unwrap();
                let resp = client
                    .put(key9, go_value("127.0.0.1:20009", "new"), None)
                    .await
                    .unwrap();
                let revision = resp.header().unwrap().revision();
                client.compact(revision, None).await.unwrap();
            }
            .boxed()
        })
    });

    let mut resolution = resolver.resolve();
    let expected: HashMap<String, Endpoint> = [
        (key(1), "127.0.0.1:20001", "new"),
        (key(2), "127.0.0.1:20002", "old"),
        (key(3), "127.0.0.1:20003", "old"),
        (key(9), "127.0.0.1:20009", "new"),
    ]
    .into_iter()
    .map(|(k, a, id)| (k, Endpoint::new(a).unwrap().with_instance_id(id)))
    .collect();
    let mut seen = HashMap::new();
    while seen != expected {
        let change = tokio::time::timeout(Duration::from_secs(15), resolution.next())
            .await
            .unwrap_or_else(|_| panic!("not converged; seen {seen:?}"))
            .unwrap();
        match change {
            Change::Insert(k, e) => {
                seen.insert(k, e);
            }
            Change::Remove(k) => {
                seen.remove(&k);
            }
            Change::Reset(_) => unreachable!(),
        }
    }
    assert_eq!(lists.load(Ordering::SeqCst), 2, "listed exactly twice");
}

#[tokio::test]
async fn dropping_the_stream_stops_the_resolver_task() {
    let prefix = unique_prefix("drop_stops_task");
    let resolution = Resolver::new(etcd_client().await, &prefix).resolve();
    let shared = resolution.shared();
    drop(resolution);
    // The aborted task drops its handle on the shared state.
    tokio::time::timeout(Duration::from_secs(5), async {
        while shared.upgrade().is_some() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the resolver task is still running");
}
