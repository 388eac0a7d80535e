//! The Go stack side by side with ours (issue 16): two servers and one
//! closed-loop client, each side grpc-go (the Go peer of `interop/go`) or
//! ours (`echo-client` load mode, `echo-server`), in all four pairings, in
//! one run and with one load shape (C workers discovering through etcd, one
//! unary call in flight each). Unpinned, as users run them, and pinned
//! (client CPU 0, servers CPU 1).
//!
//! Per configuration: rps, p50/p99, errors, and CPU µs per call of the client
//! and of the two servers together, from `/proc/<pid>/stat` over the middle
//! of the run divided by `rps × seconds`. Syscalls per call come from a
//! separate short unpinned run per configuration with `perf stat` counting
//! syscall tracepoints of the client and of the servers (an attached
//! `strace` would slow every syscall and change the batching it counts).
//! The two load CLIs print the same report (`rps=… p50_us=… p99_us=…`);
//! neither prints p999 (their format is fixed by DESIGN.md), so none is
//! reported here.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{Bench, CLIENT_CPU, Plan, SERVER_CPU, mean, unix_us};
use crate::Result;

/// The four pairings: (key, client side, server side).
const CONFIGS: [(&str, Side, Side); 4] = [
    ("go_go", Side::Go, Side::Go),
    ("rust_rust", Side::Rust, Side::Rust),
    ("go_rust", Side::Go, Side::Rust),
    ("rust_go", Side::Rust, Side::Go),
];
const CONCURRENCY: usize = 32;
/// Syscalls counted by `perf stat` (tracepoint names after `sys_enter_`);
/// the first is every syscall.
const SYSCALLS: [&str; 14] = [
    "raw_syscalls:sys_enter",
    "read",
    "write",
    "readv",
    "writev",
    "recvfrom",
    "sendto",
    "sendmsg",
    "futex",
    "epoll_wait",
    "epoll_pwait",
    "nanosleep",
    "sched_yield",
    "tgkill",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Go,
    Rust,
}

struct Shape {
    warmup: Duration,
    window: Duration,
    rounds: usize,
    pinnings: Vec<bool>,
    syscall_window: Duration,
}

impl Shape {
    fn new(plan: &Plan, can_pin: bool) -> Self {
        let mut pinnings = vec![false];
        if can_pin && !plan.quick {
            pinnings.push(true);
        }
        if plan.quick {
            Self {
                warmup: Duration::from_millis(700),
                window: Duration::from_secs(2),
                rounds: 1,
                pinnings,
                syscall_window: Duration::from_millis(1500),
            }
        } else {
            Self {
                warmup: Duration::from_secs(1),
                window: Duration::from_secs(6),
                rounds: 2,
                pinnings,
                syscall_window: Duration::from_secs(3),
            }
        }
    }
}

/// The servers of one side, running under their own prefix.
struct Pair {
    env: String,
    procs: Vec<usize>,
}

impl Bench<'_> {
    /// Runs the Go-stack comparison; a Go peer that cannot be built is
    /// reported in the result (`error`) instead of failing the whole bench.
    pub(super) fn go_stack(&mut self, plan: &Plan) -> Result<Value> {
        self.check_interrupt()?;
        let go_peer = match crate::provision_go_peer() {
            Ok(path) => path,
            Err(e) => {
                eprintln!("xtask bench: Go stack not measured: {e}");
                return Ok(json!({"error": e.to_string()}));
            }
        };
        let shape = Shape::new(plan, self.pin);
        let mut out = json!({
            "concurrency": CONCURRENCY,
            "warmup_s": shape.warmup.as_secs_f64(),
            "window_s": shape.window.as_secs_f64(),
            "rounds": shape.rounds,
        });
        for &pinned in &shape.pinnings {
            let label = if pinned { "pinned" } else { "unpinned" };
            let rust = self.pair(&go_peer, Side::Rust, pinned)?;
            let go = self.pair(&go_peer, Side::Go, pinned)?;
            let mut runs: Vec<(&str, Value)> = Vec::new();
            for round in 0..shape.rounds {
                let mut order = CONFIGS.to_vec();
                if round % 2 == 1 {
                    order.reverse();
                }
                for (key, client, server) in order {
                    self.check_interrupt()?;
                    let servers = if server == Side::Go { &go } else { &rust };
                    eprintln!(
                        "xtask bench: Go stack {key} {label} C={CONCURRENCY} (round {})",
                        round + 1
                    );
                    let name = format!("gostack-{key}-{label}-r{round}");
                    let r = self.stack_run(&name, &go_peer, client, servers, pinned, &shape)?;
                    runs.push((key, r));
                }
            }
            let mut section = json!({});
            for (key, _, _) in CONFIGS {
                let rs: Vec<&Value> = runs
                    .iter()
                    .filter(|(k, _)| *k == key)
                    .map(|(_, r)| r)
                    .collect();
                section[key] = average(&rs);
            }
            if !pinned {
                for (key, client, server) in CONFIGS {
                    self.check_interrupt()?;
                    let servers = if server == Side::Go { &go } else { &rust };
                    eprintln!("xtask bench: Go stack {key}: syscalls (perf stat, short run)");
                    section[key]["syscalls_per_call"] =
                        self.syscall_run(key, &go_peer, client, servers, &shape)?;
                }
            }
            for i in rust.procs.into_iter().chain(go.procs) {
                self.stop(i);
            }
            out[label] = section;
        }
        Ok(out)
    }

    /// Starts two servers of `side` under a prefix of their own.
    fn pair(&mut self, go_peer: &Path, side: Side, pinned: bool) -> Result<Pair> {
        let tag = if side == Side::Go { "go" } else { "rust" };
        let env = format!("{}-gs-{tag}-{}", self.env, if pinned { "p" } else { "u" });
        let mut procs = Vec::new();
        for id in ["1", "2"] {
            let port = etcd_provision::free_port()?;
            let addr = format!("127.0.0.1:{port}");
            let (path, mut args): (PathBuf, Vec<String>) = match side {
                Side::Go => (go_peer.to_path_buf(), vec!["server".into()]),
                Side::Rust => (self.bin_dir.join("echo-server"), vec![]),
            };
            args.extend(
                [
                    "--id", id, "--env", &env, "--etcd", &self.etcd, "--addr", &addr, "--ttl",
                    "10s", "--drain", "0ms",
                ]
                .map(String::from),
            );
            let mut cmd = self.pinned_command(pinned.then_some(SERVER_CPU), &path);
            cmd.args(&args).env("RUST_LOG", "info");
            self.next_server += 1;
            let name = format!("gostack-{tag}-server-{id}-{}", self.next_server);
            let i = self.spawn(&name, cmd, true)?;
            // Both log "… listening on <addr>" and then "… registered <key>".
            self.procs[i].expect(Duration::from_secs(30), "registration", |l| {
                l.contains("registered discovery/") && !l.contains("deregistered")
            })?;
            procs.push(i);
        }
        Ok(Pair { env, procs })
    }

    fn pinned_command(&self, cpu: Option<&str>, path: &Path) -> Command {
        let mut cmd = match cpu {
            Some(cpu) if self.pin => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpu]).arg(path);
                c
            }
            _ => Command::new(path),
        };
        cmd.env("NO_COLOR", "1");
        cmd
    }

    /// The load client of `side` for `servers`, running `total`.
    fn stack_client(
        &mut self,
        name: &str,
        go_peer: &Path,
        side: Side,
        servers: &Pair,
        pinned: bool,
        total: Duration,
    ) -> Result<usize> {
        let (path, mut args): (PathBuf, Vec<String>) = match side {
            Side::Go => (go_peer.to_path_buf(), vec!["load".into()]),
            Side::Rust => (self.bin_dir.join("echo-client"), vec![]),
        };
        args.extend([
            "--env".into(),
            servers.env.clone(),
            "--etcd".into(),
            self.etcd.clone(),
            "--concurrency".into(),
            CONCURRENCY.to_string(),
            "--duration".into(),
            format!("{}ms", total.as_millis()),
        ]);
        let mut cmd = self.pinned_command(pinned.then_some(CLIENT_CPU), &path);
        cmd.args(&args).env("RUST_LOG", "warn");
        self.spawn(name, cmd, false)
    }

    /// One measured run: CPU of every process over the window after the
    /// warm-up, and the client's report.
    fn stack_run(
        &mut self,
        name: &str,
        go_peer: &Path,
        client: Side,
        servers: &Pair,
        pinned: bool,
        shape: &Shape,
    ) -> Result<Value> {
        // The window ends well before the client stops, so every process is
        // still at full load when it is read.
        let total = shape.warmup + shape.window + Duration::from_millis(500);
        let c = self.stack_client(name, go_peer, client, servers, pinned, total)?;
        let started = Instant::now();
        thread::sleep(shape.warmup);
        let pids: Vec<u32> = servers.procs.iter().map(|&i| self.procs[i].pid()).collect();
        let client_pid = self.procs[c].pid();
        let (c0, s0, t0) = (cpu_s(client_pid), cpu_sum(&pids), Instant::now());
        thread::sleep(shape.window);
        let (c1, s1, t1) = (cpu_s(client_pid), cpu_sum(&pids), Instant::now());
        let report = self.report(c, total + Duration::from_secs(60))?;
        let secs = (t1 - t0).as_secs_f64();
        let calls = report.rps * secs;
        let per_call = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if calls > 0.0 => {
                json!(((b - a) * 1e6 / calls * 10.0).round() / 10.0)
            }
            _ => Value::Null,
        };
        Ok(json!({
            "rps": report.rps,
            "p50_us": report.p50,
            "p99_us": report.p99,
            "errors": report.errors,
            "client_cpu_us": per_call(c0, c1),
            "server_cpu_us": per_call(s0, s1),
            "run_s": started.elapsed().as_secs_f64(),
        }))
    }

    /// A short run with `perf stat` counting the syscalls of the client and
    /// of the servers; per call.
    fn syscall_run(
        &mut self,
        key: &str,
        go_peer: &Path,
        client: Side,
        servers: &Pair,
        shape: &Shape,
    ) -> Result<Value> {
        if !perf_works() {
            return Ok(json!({"error": "perf stat with syscall tracepoints is not available"}));
        }
        let total = shape.warmup + shape.syscall_window + Duration::from_millis(500);
        let name = format!("gostack-{key}-syscalls");
        let c = self.stack_client(&name, go_peer, client, servers, false, total)?;
        thread::sleep(shape.warmup);
        let client_pid = self.procs[c].pid().to_string();
        let server_pids: Vec<String> = servers
            .procs
            .iter()
            .map(|&i| self.procs[i].pid().to_string())
            .collect();
        let t0 = unix_us();
        let count = |pids: String, out: PathBuf| {
            Command::new("perf")
                .args(["stat", "-x,", "-o"])
                .arg(&out)
                .arg("-e")
                .arg(events())
                .args(["-p", &pids, "--", "sleep"])
                .arg(format!("{}", shape.syscall_window.as_secs_f64()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        };
        let client_out = self.logs.join(format!("{name}-client.perf"));
        let server_out = self.logs.join(format!("{name}-servers.perf"));
        let mut a = count(client_pid, client_out.clone())?;
        let mut b = count(server_pids.join(","), server_out.clone())?;
        let _ = a.wait();
        let _ = b.wait();
        let secs = (unix_us() - t0) as f64 / 1e6;
        let report = self.report(c, total + Duration::from_secs(60))?;
        let calls = report.rps * secs.min(shape.syscall_window.as_secs_f64());
        Ok(json!({
            "rps": report.rps,
            "client": per_call_counts(&client_out, calls),
            "servers": per_call_counts(&server_out, calls),
        }))
    }

    /// Waits for the load report (`rps=… ok=… errs=… p50_us=… p99_us=…`).
    pub(super) fn report(&mut self, i: usize, limit: Duration) -> Result<Report> {
        self.procs[i].stdin.take();
        let (_, line) = self.procs[i].expect(limit, "load report", |l| l.starts_with("rps="))?;
        let _ = self.procs[i].child.wait();
        Report::parse(&line).ok_or_else(|| format!("cannot read the load report {line:?}").into())
    }
}

/// The summary line of a load client (`echo-client` or the Go peer).
pub(super) struct Report {
    pub(super) rps: f64,
    pub(super) p50: u64,
    pub(super) p99: u64,
    pub(super) errors: u64,
}

impl Report {
    fn parse(line: &str) -> Option<Self> {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some(Self {
            rps: field("rps")? as f64,
            p50: field("p50_us")?,
            p99: field("p99_us")?,
            errors: field("errs")?,
        })
    }
}

fn average(rs: &[&Value]) -> Value {
    let mean_of = |k: &str| {
        mean(rs.iter().filter_map(|r| r[k].as_f64()))
            .map_or(Value::Null, |m| json!((m * 10.0).round() / 10.0))
    };
    json!({
        "rps": mean_of("rps"),
        "p50_us": mean_of("p50_us"),
        "p99_us": mean_of("p99_us"),
        "errors": rs.iter().filter_map(|r| r["errors"].as_u64()).sum::<u64>(),
        "client_cpu_us": mean_of("client_cpu_us"),
        "server_cpu_us": mean_of("server_cpu_us"),
        "runs": rs,
    })
}

fn events() -> String {
    SYSCALLS
        .iter()
        .map(|s| {
            if s.contains(':') {
                (*s).to_string()
            } else {
                format!("syscalls:sys_enter_{s}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `perf stat -x,` output → syscalls per call, by name (`all` = every one),
/// leaving out those never made.
fn per_call_counts(path: &Path, calls: f64) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = json!({});
    for line in text.lines() {
        let mut f = line.split(',');
        let (Some(n), Some(_), Some(event)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<f64>() else { continue };
        let name = match event.strip_prefix("syscalls:sys_enter_") {
            Some(name) => name,
            None if event.starts_with("raw_syscalls") => "all",
            None => continue,
        };
        if n > 0.0 && calls > 0.0 {
            out[name] = json!((n / calls * 1000.0).round() / 1000.0);
        }
    }
    out
}

fn perf_works() -> bool {
    Command::new("perf")
        .args(["stat", "-e", "raw_syscalls:sys_enter", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// User + system CPU seconds of process `pid` (all its threads).
pub(super) fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields start after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

fn cpu_sum(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&p| cpu_s(p)).sum()
}

#[allow(unsafe_code)]
fn clock_ticks() -> f64 {
    // SAFETY: sysconf(3) has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 { n as f64 } else { 100.0 }
}

/// The `go_stack` keys of results.json: the unpinned figures.
pub(super) fn results(d: &Value) -> Value {
    let u = &d["unpinned"];
    let mut out = json!({});
    for (key, _, _) in CONFIGS {
        out[key] = json!({
            "rps": u[key]["rps"],
            "p99_us": u[key]["p99_us"],
            "client_cpu_us": u[key]["client_cpu_us"],
            "server_cpu_us": u[key]["server_cpu_us"],
        });
    }
    out
}

pub(super) fn print(d: &Value) {
    println!("\n## Go stack vs ours (C={CONCURRENCY}, 2 servers, discovery through etcd)");
    if let Some(e) = d["error"].as_str() {
        println!("not measured: {e}");
        return;
    }
    println!(
        "warm-up {} s, window {} s, {} round(s) averaged; CPU µs per call from /proc (servers: both together)",
        d["warmup_s"], d["window_s"], d["rounds"]
    );
    let num = |v: &Value| match v.as_f64() {
        Some(x) => format!("{x:.1}").trim_end_matches(".0").to_string(),
        None => "n/a".into(),
    };
    println!(
        "| pinning | client → servers | rps | p50 µs | p99 µs | errors | client CPU µs/call | servers CPU µs/call | rps vs go_go |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for label in ["unpinned", "pinned"] {
        let s = &d[label];
        if s.is_null() {
            continue;
        }
        let base = s["go_go"]["rps"].as_f64().unwrap_or(f64::NAN);
        for (key, client, server) in CONFIGS {
            let r = &s[key];
            let side = |x: Side| if x == Side::Go { "Go" } else { "ours" };
            println!(
                "| {label} | {} → {} | {} | {} | {} | {} | {} | {} | {:.3} |",
                side(client),
                side(server),
                num(&r["rps"]),
                num(&r["p50_us"]),
                num(&r["p99_us"]),
                num(&r["errors"]),
                num(&r["client_cpu_us"]),
                num(&r["server_cpu_us"]),
                r["rps"].as_f64().unwrap_or(f64::NAN) / base
            );
        }
    }
    let u = &d["unpinned"];
    println!("\nsyscalls per call (unpinned, perf stat on a short separate run)");
    println!("| client → servers | client | servers |");
    println!("|---|---|---|");
    let fmt = |v: &Value| -> String {
        match v.as_object() {
            Some(o) if !o.is_empty() => {
                let mut kv: Vec<(&String, f64)> = o
                    .iter()
                    .filter_map(|(k, v)| Some((k, v.as_f64()?)))
                    .filter(|(k, v)| *k == "all" || *v >= 0.01)
                    .collect();
                kv.sort_by(|a, b| {
                    (b.0 == "all")
                        .cmp(&(a.0 == "all"))
                        .then(b.1.total_cmp(&a.1))
                });
                kv.iter()
                    .map(|(k, v)| format!("{k} {v:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
            _ => v["error"].as_str().unwrap_or("n/a").to_string(),
        }
    };
    for (key, client, server) in CONFIGS {
        let side = |x: Side| if x == Side::Go { "Go" } else { "ours" };
        let s = &u[key]["syscalls_per_call"];
        println!(
            "| {} → {} | {} | {} |",
            side(client),
            side(server),
            fmt(&s["client"]),
            fmt(&s["servers"])
        );
    }
}
