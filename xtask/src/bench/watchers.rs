//! The watchers section: many watchers of one prefix on a local 3-member
//! etcd cluster while registrations churn at 50/s, ours against Go's in the
//! same run on the same cluster. Ours is loadgen (`watchers`: N resolutions
//! from one resolver, which share one etcd watch); Go's is `go-peer
//! watchers` (N `endpoints.Manager` watch channels on one clientv3 client,
//! which multiplexes them on one stream). The cases:
//!
//! - 1 000 watchers in one process, direct to the members;
//! - the same through one `etcd grpc-proxy` (its CPU counted with etcd's);
//! - 20 processes × 50 watchers, direct: 19 processes only watch
//!   (`--rate 0`), the 20th also writes; their per-watcher latencies and
//!   per-put arrivals (`--raw`) are merged here;
//! - ours alone with 10 000 watchers in one process.
//!
//! Measured: propagation to each watcher and to all of them, puts some
//! watcher missed, the members' (and proxy's) CPU during each churn (from
//! /proc), the clients' RSS and CPU. Each side's processes run on the
//! client CPU when the bench pins.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Bench, CLIENT_CPU, Plan};
use crate::Result;

const RATE: &str = "50";

/// utime + stime of `pid`, in seconds (0 when it cannot be read).
fn cpu_seconds(pid: u32) -> f64 {
    super::go_stack::cpu_s(pid).unwrap_or(0.0)
}

/// Which client stack a side runs.
#[derive(Clone, Copy)]
enum Stack<'a> {
    Ours,
    Go(&'a PathBuf),
}

/// One side of a case: `processes` × `per_process` watchers of `prefix`
/// through `etcd`, whose CPU is read from `cpu_pids` during the churn.
struct Side<'a> {
    stack: Stack<'a>,
    etcd: &'a str,
    prefix: String,
    processes: usize,
    per_process: usize,
    duration: Duration,
    cpu_pids: &'a [u32],
}

pub(super) fn run(bench: &mut Bench<'_>, plan: &Plan) -> Result<Value> {
    bench.check_interrupt()?;
    eprintln!(
        "xtask bench: watchers on a 3-member etcd cluster, {RATE} registrations/s, ours then Go's: 1 000 in one process, direct and through a grpc-proxy; 20 processes x 50; ours alone with 10 000"
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
    let go = match crate::provision_go_peer() {
        Ok(peer) => Some(peer),
        Err(e) => {
            eprintln!("xtask bench: no Go peer, so no Go side for watchers: {e}");
            None
        }
    };
    let run = Run {
        env: bench.env.clone(),
        duration,
        go: go.as_ref(),
    };
    let one_process = run.pair(bench, "1000-direct", &endpoints, (1, 1000), &pids)?;
    let proxy = etcd_provision::GrpcProxy::start(&bin, &cluster.endpoints())?;
    let proxy_url = proxy.endpoint();
    let with_proxy: Vec<u32> = pids.iter().copied().chain(proxy.pid()).collect();
    let through_proxy = run.pair(bench, "1000-proxy", &proxy_url, (1, 1000), &with_proxy)?;
    drop(proxy);
    let processes = run.pair(bench, "20x50-direct", &endpoints, (20, 50), &pids)?;
    bench.check_interrupt()?;
    eprintln!("xtask bench: watchers, 10 000 in one process (ours)");
    let ten_thousand = run
        .side(Stack::Ours, &endpoints, "10000-ours", (1, 10_000), &pids)
        .run(bench)?;
    drop(cluster);
    Ok(json!({
        "one_process": one_process,
        "proxy": through_proxy,
        "processes": processes,
        "ten_thousand": ten_thousand,
    }))
}

/// What every case of the section shares.
struct Run<'a> {
    env: String,
    duration: Duration,
    go: Option<&'a PathBuf>,
}

impl<'a> Run<'a> {
    /// A side of `stack` with `shape` = (processes, watchers per process).
    fn side(
        &self,
        stack: Stack<'a>,
        etcd: &'a str,
        name: &str,
        shape: (usize, usize),
        cpu_pids: &'a [u32],
    ) -> Side<'a> {
        Side {
            stack,
            etcd,
            prefix: format!("discovery/{}-{name}/game", self.env),
            processes: shape.0,
            per_process: shape.1,
            duration: self.duration,
            cpu_pids,
        }
    }

    /// A case: ours, then Go's (`null` without a Go peer).
    fn pair(
        &self,
        bench: &mut Bench<'_>,
        label: &str,
        etcd: &'a str,
        shape: (usize, usize),
        cpu_pids: &'a [u32],
    ) -> Result<Value> {
        bench.check_interrupt()?;
        eprintln!("xtask bench: watchers, {label}");
        let ours = self
            .side(Stack::Ours, etcd, &format!("{label}-ours"), shape, cpu_pids)
            .run(bench)?;
        let go = match self.go {
            Some(peer) => self
                .side(
                    Stack::Go(peer),
                    etcd,
                    &format!("{label}-go"),
                    shape,
                    cpu_pids,
                )
                .run(bench)?,
            None => Value::Null,
        };
        Ok(json!({"ours": ours, "go": go}))
    }
}

impl Side<'_> {
    /// The `watchers` command line of one process of this side.
    fn command(&self, bench: &Bench<'_>, watchers: usize, rate: &str) -> Command {
        let mut cmd = match self.stack {
            Stack::Ours => bench.command(CLIENT_CPU, "loadgen"),
            // An absolute path: joined to the bench's binaries, it stays.
            Stack::Go(peer) => bench.command(CLIENT_CPU, &peer.display().to_string()),
        };
        cmd.args(["watchers", "--prefix", &self.prefix, "--etcd", self.etcd]);
        cmd.args(["--watchers", &watchers.to_string(), "--rate", rate]);
        cmd.arg("--duration")
            .arg(format!("{}s", self.duration.as_secs()));
        if self.processes > 1 {
            cmd.arg("--raw");
        }
        cmd
    }

    fn name(&self, i: usize) -> String {
        let stack = match self.stack {
            Stack::Ours => "loadgen",
            Stack::Go(_) => "go",
        };
        format!(
            "{stack}-watchers-{}x{}-{i}",
            self.processes, self.per_process
        )
    }

    /// Runs the side: the watch-only processes first (each up and watching
    /// before the next starts), then the writer; the result of one process,
    /// or the merge of all of them.
    fn run(&self, bench: &mut Bench<'_>) -> Result<Value> {
        let mut watching = Vec::new();
        for i in 1..self.processes {
            let cmd = self.command(bench, self.per_process, "0");
            let p = bench.spawn(&self.name(i), cmd, false)?;
            bench.procs[p].expect(Duration::from_secs(120), "watches up", |l| {
                l.contains("\"churning\"")
            })?;
            watching.push(p);
        }
        let cmd = self.command(bench, self.per_process, RATE);
        let writer = bench.spawn(&self.name(0), cmd, false)?;
        let result = measure(bench, writer, self.cpu_pids, self.duration)?;
        if watching.is_empty() {
            return Ok(result);
        }
        let mut all = vec![result.clone()];
        for p in watching {
            let (_, line) =
                bench.procs[p].expect(self.duration + Duration::from_secs(90), "result", |l| {
                    l.contains("\"event\":\"watchers\"")
                })?;
            let _ = bench.procs[p].child.wait();
            all.push(serde_json::from_str(&line)?);
        }
        Ok(merge(&result, &all, self.processes * self.per_process))
    }
}

/// Waits for `i`'s churn and result lines; its result with the CPU of
/// `pids` (etcd's members, and the proxy) over the churn.
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
    let cpu_pct: Vec<f64> = pids
        .iter()
        .zip(&before)
        .map(|(&p, b)| ((cpu_seconds(p) - b) / elapsed * 1000.0).round() / 10.0)
        .collect();
    let _ = bench.procs[i].child.wait();
    let mut result: Value = serde_json::from_str(&line)?;
    result["etcd_cpu_pct"] = json!(cpu_pct);
    result["etcd_cpu_cores"] = json!((cpu_pct.iter().sum::<f64>() / 10.0).round() / 10.0);
    Ok(result)
}

/// One result for several processes: the per-watcher quantiles of their
/// merged latencies, each put's arrival at the last of `watchers`, the
/// puts some watcher missed, the sum of their RSS and CPU; the writer's
/// puts and the etcd CPU measured over its churn.
fn merge(writer: &Value, all: &[Value], watchers: usize) -> Value {
    let mut latencies: BTreeMap<u64, u64> = BTreeMap::new();
    let mut seen: HashMap<u64, (u64, u64)> = HashMap::new();
    for r in all {
        for pair in r["latencies"].as_array().into_iter().flatten() {
            if let (Some(us), Some(n)) = (pair[0].as_u64(), pair[1].as_u64()) {
                *latencies.entry(us).or_default() += n;
            }
        }
        for put in r["seen"].as_array().into_iter().flatten() {
            if let (Some(sent), Some(n), Some(last)) =
                (put[0].as_u64(), put[1].as_u64(), put[2].as_u64())
            {
                let e = seen.entry(sent).or_default();
                e.0 += n;
                e.1 = e.1.max(last);
            }
        }
    }
    let per: Vec<(u64, u64)> = latencies.into_iter().collect();
    let mut to_all: Vec<(u64, u64)> = seen
        .iter()
        .map(|(sent, (_, last))| (last.saturating_sub(*sent).max(1), 1))
        .collect();
    to_all.sort_unstable();
    let puts = writer["puts"].as_u64().unwrap_or(0);
    let incomplete = seen.values().filter(|(n, _)| *n < watchers as u64).count() as u64
        + puts.saturating_sub(seen.len() as u64);
    let sum = |key: &str| -> f64 {
        let s: f64 = all.iter().filter_map(|r| r[key].as_f64()).sum();
        (s * 10.0).round() / 10.0
    };
    json!({
        "processes": all.len(),
        "watchers": watchers,
        "rate_per_s": writer["rate_per_s"],
        "puts": puts,
        "put_errors": writer["put_errors"],
        "deliveries": per.iter().map(|(_, n)| n).sum::<u64>(),
        "puts_not_seen_by_all": incomplete,
        "per_watcher_p50_ms": quantile_ms(&per, 0.5),
        "per_watcher_p99_ms": quantile_ms(&per, 0.99),
        "per_watcher_max_ms": quantile_ms(&per, 1.0),
        "all_watchers_p50_ms": quantile_ms(&to_all, 0.5),
        "all_watchers_p99_ms": quantile_ms(&to_all, 0.99),
        "all_watchers_max_ms": quantile_ms(&to_all, 1.0),
        "etcd_cpu_pct": writer["etcd_cpu_pct"],
        "etcd_cpu_cores": writer["etcd_cpu_cores"],
        "client_rss_watching_mib": sum("client_rss_watching_mib"),
        "client_rss_after_mib": sum("client_rss_after_mib"),
        "client_cpu_pct": sum("client_cpu_pct"),
    })
}

/// The `q` quantile, in ms with one decimal, of sorted `(µs, count)` pairs
/// (`Null` when there are none).
fn quantile_ms(sorted: &[(u64, u64)], q: f64) -> Value {
    let total: u64 = sorted.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return Value::Null;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (us, n) in sorted {
        seen += n;
        if seen >= rank {
            return json!((*us as f64 / 100.0).round() / 10.0);
        }
    }
    Value::Null
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
        None => "n/a".to_string(),
    }
}

/// ours ÷ go, when both are numbers and go's is positive.
fn ratio_of(ours: &Value, go: &Value) -> Option<f64> {
    match (ours.as_f64(), go.as_f64()) {
        (Some(o), Some(g)) if g > 0.0 => Some(o / g),
        _ => None,
    }
}

fn ratio(ours: &Value, go: &Value) -> String {
    ratio_of(ours, go).map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"))
}

/// The rows every table has: (label, result key).
const ROWS: [(&str, &str); 11] = [
    ("per-watcher p50 (ms)", "per_watcher_p50_ms"),
    ("per-watcher p99 (ms)", "per_watcher_p99_ms"),
    ("per-watcher max (ms)", "per_watcher_max_ms"),
    ("put → all watchers p99 (ms)", "all_watchers_p99_ms"),
    ("puts", "puts"),
    ("puts not seen by all", "puts_not_seen_by_all"),
    ("etcd's CPU (cores)", "etcd_cpu_cores"),
    ("client RSS watching (MiB)", "client_rss_watching_mib"),
    ("client RSS after the churn (MiB)", "client_rss_after_mib"),
    ("client CPU (% of a core)", "client_cpu_pct"),
    ("put errors", "put_errors"),
];

pub(super) fn print(w: &Value) {
    let cases = [
        (
            "one_process",
            "1 000 watchers of one prefix in one process, direct to a 3-member etcd",
        ),
        (
            "proxy",
            "1 000 watchers in one process through one etcd grpc-proxy (etcd's CPU: the members' and the proxy's)",
        ),
        (
            "processes",
            "20 processes × 50 watchers of one prefix, direct (each process one client)",
        ),
    ];
    for (key, title) in cases {
        let (ours, go) = (&w[key]["ours"], &w[key]["go"]);
        if ours.is_null() {
            continue;
        }
        println!(
            "\n## Watchers: {title}, {} puts/s",
            num(&ours["rate_per_s"])
        );
        println!(
            "| measure | ours (resolutions from one resolver per process) | Go (endpoints.Manager watch channels, one client per process) | ours ÷ Go |"
        );
        println!("|---|---|---|---|");
        for (name, k) in ROWS {
            println!(
                "| {name} | {} | {} | {} |",
                num(&ours[k]),
                num(&go[k]),
                ratio(&ours[k], &go[k])
            );
        }
    }
    let t = &w["ten_thousand"];
    if !t.is_null() {
        println!(
            "\n## Watchers: ours alone, 10 000 in one process, direct, {} puts/s",
            num(&t["rate_per_s"])
        );
        println!("| measure | ours |");
        println!("|---|---|");
        for (name, k) in ROWS {
            println!("| {name} | {} |", num(&t[k]));
        }
    }
}

/// The `watchers` entry of `results.json`: per case, ours and Go's
/// per-watcher p99, etcd's CPU and client RSS, and their ratios.
pub(super) fn results(w: &Value) -> Value {
    if w.is_null() {
        return Value::Null;
    }
    let mut out = serde_json::Map::new();
    for key in ["one_process", "proxy", "processes"] {
        let (ours, go) = (&w[key]["ours"], &w[key]["go"]);
        let mut case = serde_json::Map::new();
        for k in [
            "per_watcher_p99_ms",
            "all_watchers_p99_ms",
            "puts_not_seen_by_all",
            "etcd_cpu_cores",
            "client_rss_watching_mib",
        ] {
            case.insert(format!("ours_{k}"), ours[k].clone());
            case.insert(format!("go_{k}"), go[k].clone());
            let r = ratio_of(&ours[k], &go[k]).map(|r| (r * 100.0).round() / 100.0);
            case.insert(format!("ratio_{k}"), json!(r));
        }
        out.insert(key.to_owned(), Value::Object(case));
    }
    let t = &w["ten_thousand"];
    out.insert(
        "ten_thousand".to_owned(),
        json!({
            "per_watcher_p99_ms": t["per_watcher_p99_ms"],
            "client_rss_watching_mib": t["client_rss_watching_mib"],
            "puts_not_seen_by_all": t["puts_not_seen_by_all"],
        }),
    );
    Value::Object(out)
}
