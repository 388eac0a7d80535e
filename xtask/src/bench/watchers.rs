//! The watchers section: one process with 1 000 resolvers of one prefix on
//! a local 3-member etcd cluster, while registrations churn at 50/s.
//! Measures propagation to each watcher and to all of them, the members'
//! CPU during the churn (from /proc) and the client's RSS.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Bench, Plan};
use crate::Result;

const WATCHERS: &str = "1000";
const RATE: &str = "50";

/// utime + stime of `pid`, in seconds (0 when it cannot be read).
fn cpu_seconds(pid: u32) -> f64 {
    super::go_stack::cpu_s(pid).unwrap_or(0.0)
}

pub(super) fn run(bench: &mut Bench<'_>, plan: &Plan) -> Result<Value> {
    bench.check_interrupt()?;
    eprintln!(
        "xtask bench: watchers, {WATCHERS} resolvers on a 3-member etcd cluster, {RATE} registrations/s"
    );
    // etcd's default election timing: the fast test settings make members
    // of a busy machine call elections, which cancels every watch.
    let bin = etcd_provision::find_etcd_binary().ok_or(etcd_provision::HOW_TO_GET_ETCD)?;
    let cluster = etcd_provision::Cluster::start_with_timing(&bin, 3, (100, 1000))?;
    let endpoints = cluster.endpoints().join(",");
    let pids: Vec<u32> = (0..cluster.len()).filter_map(|i| cluster.pid(i)).collect();
    let duration = if plan.quick {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(20)
    };
    let prefix = format!("discovery/{}-watchers/game", bench.env);
    let args: Vec<String> = [
        "watchers",
        "--etcd",
        &endpoints,
        "--prefix",
        &prefix,
        "--watchers",
        WATCHERS,
        "--rate",
        RATE,
        "--duration",
        &format!("{}s", duration.as_secs()),
    ]
    .map(String::from)
    .to_vec();
    let lg = bench.loadgen("loadgen-watchers", &args)?;
    bench.procs[lg].expect(Duration::from_secs(120), "churn start", |l| {
        l.contains("\"churning\"")
    })?;
    let before: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
    let started = Instant::now();
    let (_, line) = bench.procs[lg].expect(duration + Duration::from_secs(60), "result", |l| {
        l.contains("\"event\":\"watchers\"")
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let members_cpu: Vec<f64> = pids
        .iter()
        .zip(&before)
        .map(|(&p, b)| ((cpu_seconds(p) - b) / elapsed * 1000.0).round() / 10.0)
        .collect();
    let _ = bench.procs[lg].child.wait();
    let mut result: Value = serde_json::from_str(&line)?;
    result["etcd_members_cpu_pct"] = json!(members_cpu);
    drop(cluster);
    Ok(result)
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
        None => "n/a".to_string(),
    }
}

pub(super) fn print(w: &Value) {
    println!(
        "\n## Watchers ({} resolvers in one process, 3-member etcd, {} puts/s)",
        num(&w["watchers"]),
        num(&w["rate_per_s"])
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| propagation to each watcher | p50 {} ms, p99 {} ms, max {} ms ({} deliveries) |",
        num(&w["per_watcher_p50_ms"]),
        num(&w["per_watcher_p99_ms"]),
        num(&w["per_watcher_max_ms"]),
        num(&w["deliveries"])
    );
    println!(
        "| propagation to all watchers | p50 {} ms, p99 {} ms, max {} ms ({} puts, {} not seen by all) |",
        num(&w["all_watchers_p50_ms"]),
        num(&w["all_watchers_p99_ms"]),
        num(&w["all_watchers_max_ms"]),
        num(&w["puts"]),
        num(&w["puts_not_seen_by_all"])
    );
    println!(
        "| etcd members' CPU during the churn | {} % of a core each |",
        w["etcd_members_cpu_pct"]
    );
    println!(
        "| client | RSS {} MiB watching ({} MiB before), CPU {} % of a core |",
        num(&w["client_rss_watching_mib"]),
        num(&w["client_rss_before_mib"]),
        num(&w["client_cpu_pct"])
    );
}
