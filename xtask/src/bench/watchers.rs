//! The watchers section: one process with 1 000 watchers of one prefix on
//! a local 3-member etcd cluster, while registrations churn at 50/s — ours
//! (loadgen: 1 000 resolutions from one resolver, which share one etcd
//! watch) then Go's (`go-peer watchers`: 1 000 `endpoints.Manager` watch
//! channels on one clientv3 client, which multiplexes them on one stream),
//! in the same run on the same cluster. Measures propagation to each
//! watcher and to all of them, the members' CPU during each churn (from
//! /proc) and each client's RSS and CPU.

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
        "xtask bench: watchers, {WATCHERS} watchers on a 3-member etcd cluster, {RATE} registrations/s, ours then Go's"
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
    let common: Vec<String> = [
        "--etcd",
        &endpoints,
        "--watchers",
        WATCHERS,
        "--rate",
        RATE,
        "--duration",
        &format!("{}s", duration.as_secs()),
    ]
    .map(String::from)
    .to_vec();
    // Ours: loadgen, N resolutions from one resolver.
    let mut args = vec!["watchers".to_owned(), "--prefix".to_owned()];
    args.push(format!("discovery/{}-watchers/game", bench.env));
    args.extend(common.iter().cloned());
    let lg = bench.loadgen("loadgen-watchers", &args)?;
    let ours = measure(bench, lg, &pids, duration)?;
    // Go's: N endpoints.Manager watch channels on one clientv3 client.
    let go = match crate::provision_go_peer() {
        Ok(peer) => {
            let mut args = vec!["watchers".to_owned(), "--prefix".to_owned()];
            args.push(format!("discovery/{}-gowatchers/game", bench.env));
            args.extend(common.iter().cloned());
            let mut cmd = std::process::Command::new(peer);
            cmd.args(&args);
            let i = bench.spawn("go-watchers", cmd, false)?;
            measure(bench, i, &pids, duration)?
        }
        Err(e) => {
            eprintln!("xtask bench: no Go peer, so no Go side for watchers: {e}");
            Value::Null
        }
    };
    drop(cluster);
    Ok(json!({"ours": ours, "go": go}))
}

/// Waits for `i`'s churn and result lines; its result with the members'
/// CPU over the churn.
fn measure(bench: &mut Bench<'_>, i: usize, pids: &[u32], duration: Duration) -> Result<Value> {
    bench.procs[i].expect(Duration::from_secs(120), "churn start", |l| {
        l.contains("\"churning\"")
    })?;
    let before: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
    let started = Instant::now();
    let (_, line) = bench.procs[i].expect(duration + Duration::from_secs(60), "result", |l| {
        l.contains("\"event\":\"watchers\"")
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let members_cpu: Vec<f64> = pids
        .iter()
        .zip(&before)
        .map(|(&p, b)| ((cpu_seconds(p) - b) / elapsed * 1000.0).round() / 10.0)
        .collect();
    let _ = bench.procs[i].child.wait();
    let mut result: Value = serde_json::from_str(&line)?;
    result["etcd_members_cpu_pct"] = json!(members_cpu);
    result["etcd_cpu_cores"] = json!((members_cpu.iter().sum::<f64>() / 10.0).round() / 10.0);
    Ok(result)
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
        None => "n/a".to_string(),
    }
}

fn ratio(ours: &Value, go: &Value) -> String {
    match (ours.as_f64(), go.as_f64()) {
        (Some(o), Some(g)) if g > 0.0 => format!("{:.2}", o / g),
        _ => "n/a".to_owned(),
    }
}

pub(super) fn print(w: &Value) {
    let (ours, go) = (&w["ours"], &w["go"]);
    println!(
        "\n## Watchers ({} watchers of one prefix in one process, 3-member etcd, {} puts/s)",
        num(&ours["watchers"]),
        num(&ours["rate_per_s"])
    );
    println!(
        "| measure | ours (N resolutions, one resolver) | Go (N endpoints.Manager watch channels, one client) | ours ÷ Go |"
    );
    println!("|---|---|---|---|");
    let row = |name: &str, key: &str| {
        println!(
            "| {name} | {} | {} | {} |",
            num(&ours[key]),
            num(&go[key]),
            ratio(&ours[key], &go[key])
        );
    };
    row("per-watcher p50 (ms)", "per_watcher_p50_ms");
    row("per-watcher p99 (ms)", "per_watcher_p99_ms");
    row("per-watcher max (ms)", "per_watcher_max_ms");
    row("put → all watchers p99 (ms)", "all_watchers_p99_ms");
    row("puts", "puts");
    row("puts not seen by all", "puts_not_seen_by_all");
    row("etcd members' CPU (cores)", "etcd_cpu_cores");
    row("client RSS watching (MiB)", "client_rss_watching_mib");
    row("client RSS after the churn (MiB)", "client_rss_after_mib");
    row("client CPU (% of a core)", "client_cpu_pct");
}
