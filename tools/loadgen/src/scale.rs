//! Discovery at scale: fill a prefix with many endpoints, then time how long
//! the `resolver` takes to list them all and what the process holds.

use std::{collections::HashSet, time::Instant};

use discover::Change;
use etcd_client::{Client, DeleteOptions, Txn, TxnOp};
use futures::StreamExt as _;
use serde_json::{Value, json};

/// Puts `count` endpoints (`10.x.y.z:50051`, Go's value format) under
/// `prefix`, 100 per transaction (etcd's default limit is 128 ops).
pub async fn fill(etcd: &[String], prefix: &str, count: usize) -> Result<Value, String> {
    let mut client = Client::connect(etcd, None)
        .await
        .map_err(|e| format!("etcd: {e}"))?;
    let started = Instant::now();
    let prefix = prefix.trim_end_matches('/');
    let mut i = 0;
    while i < count {
        let ops: Vec<TxnOp> = (i..count.min(i + 100))
            .map(|n| {
                let addr = format!("10.{}.{}.{}:50051", n >> 16 & 255, n >> 8 & 255, n & 255);
                let value = json!({"Op": 0, "Addr": addr, "Metadata": n.to_string()});
                TxnOp::put(format!("{prefix}/{addr}"), value.to_string(), None)
            })
            .collect();
        i += ops.len();
        client
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(|e| format!("etcd put: {e}"))?;
    }
    Ok(json!({"event": "filled", "count": count, "ms": started.elapsed().as_secs_f64() * 1e3}))
}

/// Deletes everything under `prefix`.
pub async fn clear(etcd: &[String], prefix: &str) -> Result<(), String> {
    let mut client = Client::connect(etcd, None)
        .await
        .map_err(|e| format!("etcd: {e}"))?;
    let prefix = format!("{}/", prefix.trim_end_matches('/'));
    client
        .delete(prefix, Some(DeleteOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("etcd delete: {e}"))?;
    Ok(())
}

/// Resolves `prefix` from a cold start until `expect` endpoints are known;
/// reports the time and this process's resident memory.
pub async fn resolve(etcd: &[String], prefix: &str, expect: usize) -> Result<Value, String> {
    let rss_before = crate::load::rss_mib();
    let started = Instant::now();
    let mut changes = resolver::Resolver::connect(etcd, None, prefix)
        .await
        .map_err(|e| format!("etcd: {e}"))?
        .resolve();
    let mut keys = HashSet::new();
    while keys.len() < expect {
        match changes.next().await {
            Some(Change::Insert(key, _)) => {
                keys.insert(key);
            }
            Some(Change::Remove(key)) => {
                keys.remove(&key);
            }
            Some(Change::Reset(all)) => keys = all.into_iter().map(|(k, _)| k).collect(),
            None => return Err(format!("resolution ended with {} keys", keys.len())),
        }
    }
    let ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(json!({
        "event": "resolved",
        "count": keys.len(),
        "ms": (ms * 10.0).round() / 10.0,
        "rss_mib": crate::load::rss_mib(),
        "rss_before_mib": rss_before,
    }))
}
