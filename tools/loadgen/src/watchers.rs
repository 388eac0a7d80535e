//! Many watchers of one prefix: N resolutions in this process from one
//! resolver (its clones: one failover etcd client and, since resolutions of
//! one prefix share it, one etcd watch, as balancers in one application
//! would), while a
//! writer churns registrations at a fixed rate. Measures how long each put
//! takes to reach each watcher and to reach all of them, and what this
//! process holds.
//!
//! Each put carries its wall-clock send time (unix µs) as the endpoint's
//! metadata, so a watcher's latency is its receive time minus that. The
//! writer keeps a rolling set of `live` keys: every tick puts a new key and,
//! past `live`, deletes the oldest, so the prefix stays small and every
//! event is one insert or one remove.
//!
//! With `rate` 0 this process only watches (one of several processes on a
//! prefix another one churns): it says `churning` once its watches follow
//! and ends `duration` + 2 s after the first put it sees. `raw` adds what a
//! harness needs to merge processes: `latencies` (`[µs, count]` pairs of
//! the per-watcher histogram) and `seen` (`[sent µs, watchers that saw it,
//! last arrival µs]` per put).

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use discover::Change;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// etcd client URLs (every member).
    pub etcd: Vec<String>,
    /// The prefix watched and churned.
    pub prefix: String,
    /// Resolvers in this process.
    pub watchers: usize,
    /// Puts per second (each followed, past `live`, by one delete); 0: only
    /// watch.
    pub rate: u32,
    /// Keys kept under the prefix.
    pub live: usize,
    /// How long the churn runs.
    pub duration: Duration,
    /// Add `latencies` and `seen` to the result.
    pub raw: bool,
}

/// Per put, keyed by its send time: (sent at, watchers that saw it, latest
/// arrival), all in unix µs.
type Seen = HashMap<u64, (u64, usize, u64)>;

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn cpu_seconds_self() -> f64 {
    // utime + stime, fields 14 and 15 of /proc/self/stat, in clock ticks.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// Runs the churn over `watchers` resolutions; one JSON line of results.
pub async fn run(config: Config) -> Result<Value, String> {
    let prefix = config.prefix.trim_end_matches('/').to_owned();
    let rss_before = crate::load::rss_mib();
    let connected = etcd::connect(&config.etcd, None, None, Duration::from_secs(2))
        .await
        .map_err(|e| format!("etcd: {e}"))?;
    let client = connected.client.clone();
    // Per put: (sent at, how many watchers saw it, latest arrival).
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let per_watcher = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let first_seen = Arc::new(tokio::sync::Notify::new());
    let mut ready = Vec::with_capacity(config.watchers);
    let mut tasks = Vec::with_capacity(config.watchers);
    let resolver = resolver::Resolver::new(client.clone(), prefix.as_str());
    for _ in 0..config.watchers {
        let mut resolution = resolver.clone().resolve();
        let (seen, per_watcher) = (seen.clone(), per_watcher.clone());
        let first_seen = first_seen.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        ready.push(ready_rx);
        tasks.push(tokio::spawn(async move {
            let mut health = resolution.health();
            let _ = health.wait_for(|h| *h == resolver::Health::Following).await;
            let _ = ready_tx.send(());
            while let Some(change) = resolution.next().await {
                let Change::Insert(_, endpoint) = change else {
                    continue;
                };
                let Some(sent) = endpoint.instance_id().and_then(|id| id.parse::<u64>().ok())
                else {
                    continue;
                };
                let now = unix_us();
                first_seen.notify_one();
                let latency = now.saturating_sub(sent).max(1);
                if let Ok(mut h) = per_watcher.lock() {
                    let _ = h.record(latency);
                }
                if let Ok(mut s) = seen.lock() {
                    let entry = s.entry(sent).or_insert((sent, 0, 0));
                    entry.1 += 1;
                    entry.2 = entry.2.max(now);
                }
            }
        }));
    }
    let started = Instant::now();
    for r in ready {
        let _ = r.await;
    }
    let ready_ms = started.elapsed().as_secs_f64() * 1e3;
    let rss_watching = crate::load::rss_mib();

    // The churn; the harness measures etcd's CPU from this line on.
    println!(
        "{}",
        json!({"event": "churning", "watchers": config.watchers})
    );
    let cpu_before = cpu_seconds_self();
    let mut writer = client.clone();
    let mut churn_started = Instant::now();
    let (mut puts, mut put_errors, mut churn_s) = (0, 0, 0.0);
    if config.rate > 0 {
        (puts, put_errors) = churn(&writer, &prefix, &config).await;
        churn_s = churn_started.elapsed().as_secs_f64();
        // Let the last events arrive.
        tokio::time::sleep(Duration::from_secs(2)).await;
    } else {
        let limit = config.duration + Duration::from_secs(60);
        if tokio::time::timeout(limit, first_seen.notified())
            .await
            .is_ok()
        {
            churn_started = Instant::now();
            tokio::time::sleep(config.duration + Duration::from_secs(2)).await;
        }
    }
    let cpu_s = cpu_seconds_self() - cpu_before;
    let measured_s = churn_started.elapsed().as_secs_f64();
    let rss_after = crate::load::rss_mib();
    for t in &tasks {
        t.abort();
    }
    if config.rate > 0 {
        let _ = writer
            .delete(
                format!("{prefix}/"),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await;
    }

    let per = per_watcher.lock().map_err(|_| "poisoned")?.clone();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut incomplete = 0u64;
    let mut seen_raw = Vec::new();
    for (sent, count, last) in seen.lock().map_err(|_| "poisoned")?.values() {
        if *count < config.watchers {
            incomplete += 1;
        }
        let _ = all.record(last.saturating_sub(*sent).max(1));
        seen_raw.push(json!([sent, count, last]));
    }
    let ms = |us: u64| (us as f64 / 100.0).round() / 10.0;
    let mut result = json!({
        "event": "watchers",
        "watchers": config.watchers,
        "rate_per_s": config.rate,
        "live_keys": config.live,
        "churn_s": (churn_s * 10.0).round() / 10.0,
        "puts": puts,
        "put_errors": put_errors,
        "deliveries": per.len(),
        "puts_not_seen_by_all": incomplete,
        "per_watcher_p50_ms": ms(per.value_at_quantile(0.5)),
        "per_watcher_p99_ms": ms(per.value_at_quantile(0.99)),
        "per_watcher_max_ms": ms(per.max()),
        "all_watchers_p50_ms": ms(all.value_at_quantile(0.5)),
        "all_watchers_p99_ms": ms(all.value_at_quantile(0.99)),
        "all_watchers_max_ms": ms(all.max()),
        "watch_ready_ms": (ready_ms * 10.0).round() / 10.0,
        "client_rss_before_mib": rss_before,
        "client_rss_watching_mib": rss_watching,
        "client_rss_after_mib": rss_after,
        "client_cpu_pct": (cpu_s / measured_s.max(0.001) * 1000.0).round() / 10.0,
        "members_ready": connected.members.ready(),
    });
    if config.raw {
        result["latencies"] = per
            .iter_recorded()
            .map(|v| {
                json!([
                    per.highest_equivalent(v.value_iterated_to()),
                    v.count_at_value()
                ])
            })
            .collect();
        result["seen"] = Value::Array(seen_raw);
    }
    Ok(result)
}

/// Puts a new key `config.rate` times a second for `config.duration`, each
/// put its own task (a slow answer does not lower the rate) whose value's
/// metadata is its send time, deleting the oldest key past `config.live`;
/// returns the puts that succeeded and failed.
async fn churn(writer: &etcd_client::Client, prefix: &str, config: &Config) -> (u64, u64) {
    let mut keys: VecDeque<String> = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / config.rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let churn_started = Instant::now();
    let puts = Arc::new(AtomicU64::new(0));
    let put_errors = Arc::new(AtomicU64::new(0));
    let mut writes = Vec::new();
    let mut n = 0u64;
    while churn_started.elapsed() < config.duration {
        tick.tick().await;
        n += 1;
        let addr = format!("10.{}.{}.{}:50051", n >> 16 & 255, n >> 8 & 255, n & 255);
        let key = format!("{prefix}/{addr}");
        let old = (keys.len() >= config.live)
            .then(|| keys.pop_front())
            .flatten();
        keys.push_back(key.clone());
        let (mut w, puts, put_errors) = (writer.clone(), puts.clone(), put_errors.clone());
        writes.push(tokio::spawn(async move {
            let sent = unix_us();
            let value = json!({"Op": 0, "Addr": addr, "Metadata": sent.to_string()}).to_string();
            match w.put(key.as_str(), value, None).await {
                Ok(_) => puts.fetch_add(1, Ordering::Relaxed),
                Err(_) => put_errors.fetch_add(1, Ordering::Relaxed),
            };
            if let Some(old) = old {
                let _ = w.delete(old, None).await;
            }
        }));
    }
    for w in writes {
        let _ = w.await;
    }
    (
        puts.load(Ordering::Relaxed),
        put_errors.load(Ordering::Relaxed),
    )
}
