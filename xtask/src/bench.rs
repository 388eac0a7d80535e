//! `cargo xtask bench [--quick] [--only SECTION,...]`: throughput and latency against a direct
//! channel and tonic's `balance_channel`, pick cost, discovery propagation,
//! failover and scale, and the cost of the `:authority` adapter
//! (`bench/authority.rs`), with real `echo-server` processes and one load
//! generator (`loadgen`) for every configuration; and the Go stack (the Go
//! peer's client and servers) side by side with ours, crossed both ways
//! (`bench/go_stack.rs`); and a frozen server's cost (`bench/freeze.rs`).
//!
//! Results: a table on stdout, `target/bench/results.json` (the keys of
//! issue 8, `go_stack` of issue 16 and `grey` of issue 15),
//! `target/bench/details.json` (everything measured),
//! process logs in `target/bench/logs/`. Ratios are the claims: the machine is
//! shared and noisy.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitCode, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

use crate::{Result, cargo, ensure_protoc, provision_etcd, workspace_root};

pub(crate) mod authority;
mod freeze;
mod go_stack;
mod slow;
mod watchers;

/// CPU of the load generator and CPU of the servers when pinning works.
const CLIENT_CPU: &str = "0";
const SERVER_CPU: &str = "1";
const MODES: [&str; 4] = ["direct", "balance_channel", "balancer", "balancer_sticky"];
/// The sections, in the order they run; `--only` takes these names.
const SECTIONS: [&str; 10] = [
    "throughput",
    "authority",
    "pick",
    "propagation",
    "failover",
    "scale",
    "watchers",
    "freeze",
    "slow",
    "go_stack",
];

struct Plan {
    quick: bool,
    warmup: Duration,
    window: Duration,
    concurrencies: Vec<usize>,
    rounds: usize,
    trials: usize,
    failover_before: Duration,
    failover_after: Duration,
    pick_args: Vec<&'static str>,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                warmup: Duration::from_secs(1),
                window: Duration::from_secs(3),
                concurrencies: vec![32],
                rounds: 1,
                trials: 5,
                failover_before: Duration::from_secs(1),
                failover_after: Duration::from_secs(2),
                pick_args: vec!["--warm-up-time", "0.5", "--measurement-time", "1"],
            }
        } else {
            Self {
                quick,
                warmup: Duration::from_secs(2),
                window: Duration::from_secs(10),
                concurrencies: vec![32, 128],
                rounds: 2,
                trials: 20,
                failover_before: Duration::from_secs(3),
                failover_after: Duration::from_secs(4),
                pick_args: vec![],
            }
        }
    }
}

pub(crate) fn run(quick: bool, only: &[String], interrupt: &Receiver<()>) -> Result<ExitCode> {
    if let Some(unknown) = only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
        return Err(format!(
            "unknown bench section {unknown:?}: expected one of {}",
            SECTIONS.join(", ")
        )
        .into());
    }
    let wanted = |section: &str| only.is_empty() || only.iter().any(|s| s == section);
    let plan = Plan::new(quick);
    let started = Instant::now();
    let protoc = ensure_protoc()?;
    eprintln!(
        "xtask bench: building echo-server, echo-client, loadgen and the pick benchmark (release)"
    );
    build_release(&["echo-server", "echo-client", "loadgen"], &protoc)?;
    if wanted("pick") {
        let status = cargo()
            .args(["bench", "-p", "balancer", "--bench", "pick", "--no-run"])
            .env("PROTOC", &protoc)
            .status()?;
        if !status.success() {
            return Err(format!("building the pick benchmark failed ({status})").into());
        }
    }
    let out_dir = workspace_root().join("target/bench");
    let etcd = provision_etcd()?;
    let mut bench = Bench::new(&out_dir, etcd.endpoints().join(","), interrupt)?;
    let pinning = if bench.pin {
        format!(
            "loadgen on CPU {CLIENT_CPU}, echo servers on CPU {SERVER_CPU} (taskset); etcd and the pick benchmark unpinned"
        )
    } else {
        "not pinned (taskset missing or fewer than 2 CPUs): expect more noise".to_string()
    };
    eprintln!("xtask bench: {pinning}");

    let mut details = json!({
        "quick": quick,
        "only": only,
        "date_unix": unix_us() / 1_000_000,
        "cpus": thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "pinning": pinning,
        "warmup_s": plan.warmup.as_secs_f64(),
        "window_s": plan.window.as_secs_f64(),
        "rounds": plan.rounds,
    });
    // Others' work on this machine shows here: report it with the numbers.
    let loadavg_before = loadavg();
    details["build_s"] = json!(started.elapsed().as_secs());
    let measuring = Instant::now();
    let mut sections = json!({});
    let mut timed = |name: &str, v: Value| {
        sections[name] = json!(measuring.elapsed().as_secs());
        v
    };
    if wanted("throughput") {
        details["throughput"] = timed("throughput", bench.throughput(&plan)?);
    }
    if wanted("authority") {
        details["authority"] = timed("authority", bench.authority(&plan)?);
    }
    if wanted("pick") {
        details["pick"] = timed("pick", bench.pick(&plan, &protoc)?);
    }
    if wanted("propagation") {
        details["propagation"] = timed("propagation", bench.propagation(&plan)?);
    }
    if wanted("failover") {
        details["failover"] = timed("failover", bench.failover(&plan)?);
    }
    if wanted("scale") {
        details["scale"] = timed("scale", bench.scale(&plan)?);
    }
    if wanted("watchers") {
        details["watchers"] = timed("watchers", watchers::run(&mut bench, &plan)?);
    }
    if wanted("freeze") {
        details["grey"] = timed("freeze", freeze::run(&mut bench, &plan)?);
    }
    if wanted("slow") {
        details["policies"] = timed("slow", slow::run(&mut bench, &plan)?);
    }
    if wanted("go_stack") {
        // A Go-stack failure is reported with the other sections' results
        // rather than losing them.
        let go_stack = match bench.go_stack(&plan) {
            Ok(v) => v,
            Err(e) if e.to_string() == "interrupted" => return Err(e),
            Err(e) => {
                eprintln!("xtask bench: Go stack failed: {e}");
                json!({"error": e.to_string()})
            }
        };
        details["go_stack"] = timed("go_stack", go_stack);
    }
    details["done_at_s"] = sections;
    details["elapsed_s"] = json!(measuring.elapsed().as_secs());
    details["loadavg_before"] = json!(loadavg_before);
    details["loadavg_after"] = json!(loadavg());
    drop(bench);
    drop(etcd);

    let results = results(&details);
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    std::fs::write(
        out_dir.join("details.json"),
        serde_json::to_string_pretty(&details)? + "\n",
    )?;
    print_table(&details);
    authority::print(&details);
    println!(
        "\nresults: {} (details: {})",
        out_dir.join("results.json").display(),
        out_dir.join("details.json").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A spawned process and the lines it prints, each stamped with the wall
/// clock when read (the clock loadgen stamps its events with).
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<(u64, String)>,
}

impl Proc {
    /// Waits for a line matching `f`; returns its time and text.
    fn expect(
        &mut self,
        limit: Duration,
        what: &str,
        f: impl Fn(&str) -> bool,
    ) -> Result<(u64, String)> {
        let until = Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, line)) if f(&line) => return Ok((t, line)),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("{}: no {what} within {limit:?}", self.name).into());
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "{}: exited before {what} (see target/bench/logs)",
                        self.name
                    )
                    .into());
                }
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

struct Bench<'a> {
    bin_dir: PathBuf,
    logs: PathBuf,
    etcd: String,
    pin: bool,
    procs: Vec<Proc>,
    interrupt: &'a Receiver<()>,
    env: String,
    next_server: usize,
}

/// `cargo build --release -p <package>…` with the vendored protoc.
fn build_release(packages: &[&str], protoc: &Path) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--release"]);
    for package in packages {
        cmd.args(["-p", package]);
    }
    let status = cmd.env("PROTOC", protoc).status()?;
    if !status.success() {
        return Err(format!("cargo build --release failed ({status})").into());
    }
    Ok(())
}

impl<'a> Bench<'a> {
    /// Release binaries, logs under `out_dir/logs`, servers registered in
    /// the etcd at `etcd` (comma-separated URLs).
    fn new(out_dir: &Path, etcd: String, interrupt: &'a Receiver<()>) -> Result<Self> {
        std::fs::create_dir_all(out_dir.join("logs"))?;
        Ok(Self {
            bin_dir: workspace_root().join("target/release"),
            logs: out_dir.join("logs"),
            etcd,
            pin: taskset_works(),
            procs: Vec::new(),
            interrupt,
            env: format!("bench{}", std::process::id()),
            next_server: 0,
        })
    }
}

impl Drop for Bench<'_> {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

impl Bench<'_> {
    fn check_interrupt(&self) -> Result<()> {
        if self.interrupt.try_recv().is_ok() {
            return Err("interrupted".into());
        }
        Ok(())
    }

    fn command(&self, cpu: &str, bin: &str) -> Command {
        let path = self.bin_dir.join(bin);
        let mut cmd = if self.pin {
            let mut c = Command::new("taskset");
            c.args(["-c", cpu]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.env("NO_COLOR", "1");
        cmd
    }

    /// Spawns `cmd`, reading `read_stderr ? stderr : stdout` line by line;
    /// the other stream goes to a log file.
    fn spawn(&mut self, name: &str, mut cmd: Command, read_stderr: bool) -> Result<usize> {
        let log = File::create(self.logs.join(format!("{name}.log")))?;
        cmd.stdin(Stdio::piped());
        if read_stderr {
            cmd.stdout(log).stderr(Stdio::piped());
        } else {
            cmd.stdout(Stdio::piped()).stderr(log);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stream: Box<dyn std::io::Read + Send> = if read_stderr {
            Box::new(child.stderr.take().ok_or("no stderr")?)
        } else {
            Box::new(child.stdout.take().ok_or("no stdout")?)
        };
        let (tx, lines) = mpsc::channel();
        let mut copy = File::create(self.logs.join(format!("{name}.out")))?;
        thread::spawn(move || {
            for line in BufReader::new(stream)
                .lines()
                .map_while(std::result::Result::ok)
            {
                let now = unix_us();
                let _ = writeln!(copy, "{line}");
                if tx.send((now, line)).is_err() {
                    // Keep draining so the child never blocks on a full pipe.
                }
            }
        });
        let stdin = child.stdin.take();
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            stdin,
            lines,
        });
        Ok(self.procs.len() - 1)
    }

    /// Starts an `echo-server` registered under `discovery/<env>/game`;
    /// returns its index, address and the time it logged "registered".
    /// The times are those of its "listening on" and "registered" log lines.
    fn server(&mut self, id: &str, env: &str, drain: &str) -> Result<(usize, String, (u64, u64))> {
        self.server_with(id, env, drain, &[], "echo-server")
    }

    /// [`server`](Self::server) with `extra` flags, its logs named after
    /// `name`.
    fn server_with(
        &mut self,
        id: &str,
        env: &str,
        drain: &str,
        extra: &[&str],
        name: &str,
    ) -> Result<(usize, String, (u64, u64))> {
        let port = etcd_provision::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = self.command(SERVER_CPU, "echo-server");
        cmd.args([
            "--id", id, "--env", env, "--etcd", &self.etcd, "--addr", &addr,
        ])
        .args(["--ttl", "10s", "--drain", drain])
        .args(extra)
        .env("RUST_LOG", "info");
        self.next_server += 1;
        let name = format!("{name}-{id}-{}", self.next_server);
        let i = self.spawn(&name, cmd, true)?;
        let (t_listening, _) = self.procs[i].expect(Duration::from_secs(30), "listening", |l| {
            l.contains("listening on")
        })?;
        let (t_registered, _) =
            self.procs[i].expect(Duration::from_secs(30), "registration", |l| {
                l.contains("registered discovery/") && !l.contains("deregistered")
            })?;
        Ok((i, addr, (t_listening, t_registered)))
    }

    fn loadgen(&mut self, name: &str, args: &[String]) -> Result<usize> {
        let mut cmd = self.command(CLIENT_CPU, "loadgen");
        cmd.args(args);
        self.spawn(name, cmd, false)
    }

    /// Waits for loadgen's result line and its exit.
    fn result(&mut self, i: usize, limit: Duration) -> Result<Value> {
        self.procs[i].stdin.take();
        let (_, line) = self.procs[i].expect(limit, "result", |l| l.contains("\"result\""))?;
        let _ = self.procs[i].child.wait();
        Ok(serde_json::from_str(&line)?)
    }

    fn signal_int(&mut self, i: usize) -> u64 {
        let t = unix_us();
        send_sigint(self.procs[i].pid());
        t
    }

    fn stop(&mut self, i: usize) {
        send_sigint(self.procs[i].pid());
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.procs[i].child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.procs[i].child.kill();
        let _ = self.procs[i].child.wait();
    }

    fn throughput(&mut self, plan: &Plan) -> Result<Value> {
        let env = format!("{}-tp", self.env);
        let (s1, a1, _) = self.server("1", &env, "0ms")?;
        let (s2, a2, _) = self.server("2", &env, "0ms")?;
        let mut runs: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for round in 0..plan.rounds {
            for &c in &plan.concurrencies {
                // Alternate the order between rounds so drift hits all alike.
                let mut modes = MODES.to_vec();
                if round % 2 == 1 {
                    modes.reverse();
                }
                for mode in modes {
                    self.check_interrupt()?;
                    let mut args = vec![
                        "run".into(),
                        "--mode".into(),
                        mode.into(),
                        "--concurrency".into(),
                        c.to_string(),
                        "--warmup".into(),
                        format!("{}ms", plan.warmup.as_millis()),
                        "--duration".into(),
                        format!("{}ms", plan.window.as_millis()),
                        "--server".into(),
                        format!("1={a1}"),
                    ];
                    if mode != "direct" {
                        args.extend(["--server".into(), format!("2={a2}")]);
                    }
                    eprintln!("xtask bench: throughput {mode} C={c} (round {})", round + 1);
                    let i = self.loadgen(&format!("loadgen-{mode}-c{c}-r{round}"), &args)?;
                    let r = self.result(i, plan.warmup + plan.window + Duration::from_secs(60))?;
                    runs.entry(format!("{mode}@{c}")).or_default().push(r);
                }
            }
        }
        self.stop(s1);
        self.stop(s2);
        let mut out = json!({});
        for (key, rs) in runs {
            let mean = |k: &str| {
                let sum: f64 = rs.iter().filter_map(|r| r[k].as_f64()).sum();
                (sum / rs.len() as f64).round()
            };
            let errors: u64 = rs.iter().filter_map(|r| r["errors"].as_u64()).sum();
            out[key] = json!({
                "rps": mean("rps"),
                "p50_us": mean("p50_us"),
                "p99_us": mean("p99_us"),
                "p999_us": mean("p999_us"),
                "errors": errors,
                "rps_runs": rs.iter().map(|r| r["rps"].clone()).collect::<Vec<_>>(),
                "per_instance": rs.last().map(|r| r["per_instance"].clone()),
            });
        }
        Ok(out)
    }

    fn pick(&mut self, plan: &Plan, protoc: &Path) -> Result<Value> {
        self.check_interrupt()?;
        eprintln!(
            "xtask bench: pick cost (criterion, unpinned: the 2-thread cases need both CPUs)"
        );
        let output = cargo()
            .args(["bench", "-p", "balancer", "--bench", "pick", "--"])
            .args(["--output-format", "bencher"])
            .args(&plan.pick_args)
            .env("PROTOC", protoc)
            .stderr(Stdio::inherit())
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        std::fs::write(self.logs.join("pick.out"), text.as_bytes())?;
        if !output.status.success() {
            return Err(format!("the pick benchmark failed ({})", output.status).into());
        }
        // `test pick/rr/1000 ... bench:         150 ns/iter (+/- 16)`
        let mut out = json!({});
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("test pick/") else {
                continue;
            };
            let Some((name, value)) = rest.split_once(" ... bench:") else {
                continue;
            };
            let ns: String = value
                .split_whitespace()
                .next()
                .unwrap_or("")
                .replace(',', "");
            if let Ok(ns) = ns.parse::<f64>() {
                out[name.replace('/', "_")] = json!(ns);
            }
        }
        Ok(out)
    }

    fn propagation(&mut self, plan: &Plan) -> Result<Value> {
        self.check_interrupt()?;
        let env = format!("{}-prop", self.env);
        let prefix = format!("discovery/{env}/game");
        let (base, _, _) = self.server("base", &env, "1s")?;
        // Light load: 4 workers, 1 ms apart, so an instance is seen within
        // ~0.25 ms of being routable without starving etcd of CPU.
        let args: Vec<String> = [
            "run",
            "--mode",
            "balancer",
            "--prefix",
            &prefix,
            "--etcd",
            &self.etcd,
            "--concurrency",
            "4",
            "--interval",
            "1ms",
            "--warmup",
            "0s",
            "--duration",
            "1h",
            "--events",
            "--stop-on-eof",
        ]
        .map(String::from)
        .to_vec();
        let lg = self.loadgen("loadgen-propagation", &args)?;
        self.procs[lg].expect(Duration::from_secs(30), "start", |l| {
            l.contains("\"started\"")
        })?;
        let mut register = Vec::new();
        let mut register_from_listening = Vec::new();
        let mut deregister_pending = Vec::new();
        for trial in 0..plan.trials {
            self.check_interrupt()?;
            let id = format!("p{trial}");
            let (s, _, (t_listening, t_registered)) = self.server(&id, &env, "1s")?;
            let needle = format!("\"id\":\"{id}\"");
            let (t_first, _) =
                self.procs[lg].expect(Duration::from_secs(10), "first answer", |l| {
                    l.contains("\"first\"") && l.contains(&needle)
                })?;
            register.push(ms(t_first, t_registered));
            register_from_listening.push(ms(t_first, t_listening));
            thread::sleep(Duration::from_millis(200));
            let t_sigint = self.signal_int(s);
            let (t_deregistered, _) =
                self.procs[s].expect(Duration::from_secs(10), "deregistration", |l| {
                    l.contains("deregistered")
                })?;
            deregister_pending.push((id, t_sigint, t_deregistered));
            // Let it drain and exit before the next trial.
            let _ = self.procs[s].child.wait();
            eprintln!(
                "xtask bench: propagation trial {}/{}: register {:.1} ms",
                trial + 1,
                plan.trials,
                register.last().copied().unwrap_or(0.0)
            );
        }
        let result = self.result(lg, Duration::from_secs(30))?;
        self.stop(base);
        let mut deregister = Vec::new();
        let mut deregister_from_sigint = Vec::new();
        for (id, t_sigint, t_deregistered) in deregister_pending {
            let last = result["last_seen_us"][&id].as_u64().ok_or_else(|| {
                format!("propagation: instance {id} never answered the load generator")
            })?;
            deregister.push(ms(last, t_deregistered));
            deregister_from_sigint.push(ms(last, t_sigint));
        }
        Ok(json!({
            "trials": plan.trials,
            "register_ms": summary(&register),
            "register_from_listening_ms": summary(&register_from_listening),
            "deregister_ms": summary(&deregister),
            "deregister_from_sigint_ms": summary(&deregister_from_sigint),
            "load_errors": result["total_errors"],
        }))
    }

    fn failover(&mut self, plan: &Plan) -> Result<Value> {
        self.check_interrupt()?;
        let env = format!("{}-fo", self.env);
        let prefix = format!("discovery/{env}/game");
        let (f1, _, _) = self.server("f1", &env, "1s")?;
        let (f2, _, _) = self.server("f2", &env, "1s")?;
        let total = plan.failover_before + plan.failover_after;
        let etcd = self.etcd.clone();
        let args = |d: Duration| -> Vec<String> {
            vec![
                "run".into(),
                "--mode".into(),
                "balancer".into(),
                "--prefix".into(),
                prefix.clone(),
                "--etcd".into(),
                etcd.clone(),
                "--concurrency".into(),
                "32".into(),
                "--warmup".into(),
                "0s".into(),
                "--duration".into(),
                format!("{}ms", d.as_millis()),
                "--wait-ready".into(),
                "2".into(),
            ]
        };
        eprintln!("xtask bench: failover, SIGINT under C=32");
        let lg = self.loadgen("loadgen-failover-sigint", &args(total))?;
        self.procs[lg].expect(Duration::from_secs(30), "start", |l| {
            l.contains("\"started\"")
        })?;
        thread::sleep(plan.failover_before);
        self.signal_int(f1);
        let sigint = self.result(lg, total + Duration::from_secs(60))?;
        let _ = self.procs[f1].child.wait();

        self.check_interrupt()?;
        let (f3, _, _) = self.server("f3", &env, "1s")?;
        eprintln!("xtask bench: failover, SIGKILL under C=32");
        let lg = self.loadgen("loadgen-failover-sigkill", &args(total))?;
        self.procs[lg].expect(Duration::from_secs(30), "start", |l| {
            l.contains("\"started\"")
        })?;
        thread::sleep(plan.failover_before);
        let t_kill = unix_us();
        let _ = self.procs[f2].child.kill();
        let sigkill = self.result(lg, total + Duration::from_secs(60))?;
        let _ = self.procs[f2].child.wait();
        self.stop(f3);
        let error_times: Vec<u64> = sigkill["error_times_us"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let recovery = error_times
            .iter()
            .max()
            .map(|&last| ms(last, t_kill).max(0.0))
            .unwrap_or(0.0);
        Ok(json!({
            "sigint_errors": sigint["total_errors"],
            "sigint_rps": sigint["rps"],
            "sigint_error_samples": sigint["error_samples"],
            "sigkill_errors": sigkill["total_errors"],
            "sigkill_recovery_ms": (recovery * 10.0).round() / 10.0,
            "sigkill_rps": sigkill["rps"],
            "sigkill_error_samples": sigkill["error_samples"],
        }))
    }

    fn scale(&mut self, plan: &Plan) -> Result<Value> {
        self.check_interrupt()?;
        let prefix = format!("discovery/{}-scale/game", self.env);
        eprintln!("xtask bench: scale, resolver listing 10 000 endpoints");
        let fill = self.loadgen(
            "loadgen-fill",
            &[
                "fill",
                "--etcd",
                &self.etcd.clone(),
                "--prefix",
                &prefix,
                "--count",
                "10000",
            ]
            .map(String::from),
        )?;
        self.procs[fill].expect(Duration::from_secs(120), "fill", |l| {
            l.contains("\"filled\"")
        })?;
        let _ = self.procs[fill].child.wait();
        // Go's first (the same keys): a fresh endpoints.Manager watch
        // channel, what etcd's naming resolver opens per ClientConn.
        let go_listing = match crate::provision_go_peer() {
            Ok(peer) => {
                let mut cmd = self.command(CLIENT_CPU, &peer.display().to_string());
                cmd.args(["listing", "--etcd", &self.etcd, "--prefix", &prefix]);
                cmd.args(["--endpoints", "10000"]);
                let go = self.spawn("go-listing", cmd, false)?;
                let (_, line) =
                    self.procs[go].expect(Duration::from_secs(120), "listing", |l| {
                        l.contains("\"listing\"")
                    })?;
                let _ = self.procs[go].child.wait();
                serde_json::from_str::<Value>(&line)?
            }
            Err(e) => {
                eprintln!("xtask bench: no Go peer, so no Go listing: {e}");
                Value::Null
            }
        };
        let resolve = self.loadgen(
            "loadgen-resolve",
            &[
                "resolve",
                "--etcd",
                &self.etcd.clone(),
                "--prefix",
                &prefix,
                "--expect",
                "10000",
                "--clear",
            ]
            .map(String::from),
        )?;
        let (_, line) =
            self.procs[resolve].expect(Duration::from_secs(120), "resolution", |l| {
                l.contains("\"resolved\"")
            })?;
        let resolved: Value = serde_json::from_str(&line)?;

        self.check_interrupt()?;
        eprintln!("xtask bench: scale, one client balancing over 1 000 endpoints");
        let file = self.logs.join("scale-1k-servers.txt");
        let mut cmd = self.command(SERVER_CPU, "loadgen");
        cmd.args(["serve", "--id", "host", "--ports", "1000", "--out"])
            .arg(&file);
        let host = self.spawn("loadgen-serve-1k", cmd, false)?;
        self.procs[host].expect(Duration::from_secs(30), "listening", |l| {
            l.contains("\"serving\"")
        })?;
        let window = if plan.quick {
            plan.window
        } else {
            Duration::from_secs(5)
        };
        let args = vec![
            "run".to_string(),
            "--mode".into(),
            "balancer".into(),
            "--servers-file".into(),
            file.display().to_string(),
            "--concurrency".into(),
            "32".into(),
            "--warmup".into(),
            format!("{}ms", plan.warmup.as_millis()),
            "--duration".into(),
            format!("{}ms", window.as_millis()),
        ];
        let lg = self.loadgen("loadgen-client-1k", &args)?;
        let client = self.result(lg, Duration::from_secs(180))?;
        self.stop(host);
        Ok(json!({
            "resolve_10k_ms": resolved["ms"],
            "resolve_10k_rss_mib": resolved["rss_mib"],
            "resolve_10k_rss_before_mib": resolved["rss_before_mib"],
            "go_list_10k_ms": go_listing["cold_ms"],
            "go_list_10k_warm_ms": go_listing["warm_median_ms"],
            "go_list_10k_rss_mib": go_listing["client_rss_listed_mib"],
            "go_list_10k_rss_before_mib": go_listing["client_rss_before_mib"],
            "client_1k_rps": client["rps"],
            "client_1k_p99_us": client["p99_us"],
            "client_1k_errors": client["errors"],
            "client_rss_mib_1k": client["rss_mib"],
            "client_1k_ready": client["ready_endpoints"],
        }))
    }
}

/// The keys of issue 8 and, under `go_stack`, of issue 16; nothing else.
fn results(d: &Value) -> Value {
    let tp = |mode: &str| {
        let r = &d["throughput"][format!("{mode}@32")];
        json!({"rps": r["rps"], "p50_us": r["p50_us"], "p99_us": r["p99_us"], "errors": r["errors"]})
    };
    let p = &d["propagation"];
    json!({
        "throughput": {
            "direct": tp("direct"),
            "balance_channel": tp("balance_channel"),
            "balancer": tp("balancer"),
            "balancer_sticky": tp("balancer_sticky"),
        },
        "pick_ns": {
            "rr_1": d["pick"]["rr_1"],
            "rr_1000": d["pick"]["rr_1000"],
            "rr_10000": d["pick"]["rr_10000"],
            "sticky_1000": d["pick"]["sticky_1000"],
        },
        "propagation_ms": {
            // Upper bounds: from the server's "listening" log line (before
            // its lease grant and put) and from SIGINT (before its delete).
            // The "registered"/"deregistered" lines are logged after etcd
            // answered, often after the client already saw the change.
            "register_p50": p["register_from_listening_ms"]["p50"],
            "register_p99": p["register_from_listening_ms"]["p99"],
            "deregister_p50": p["deregister_from_sigint_ms"]["p50"],
            "deregister_p99": p["deregister_from_sigint_ms"]["p99"],
        },
        "failover": {
            "sigint_errors": d["failover"]["sigint_errors"],
            "sigkill_errors": d["failover"]["sigkill_errors"],
            "sigkill_recovery_ms": d["failover"]["sigkill_recovery_ms"],
        },
        "scale": {
            "resolve_10k_ms": d["scale"]["resolve_10k_ms"],
            "resolve_10k_rss_mib": d["scale"]["resolve_10k_rss_mib"],
            "go_list_10k_ms": d["scale"]["go_list_10k_ms"],
            "go_list_10k_rss_mib": d["scale"]["go_list_10k_rss_mib"],
            "client_rss_mib_1k": d["scale"]["client_rss_mib_1k"],
        },
        "watchers": watchers::results(&d["watchers"]),
        "go_stack": go_stack::results(&d["go_stack"]),
        "grey": freeze::results(&d["grey"]),
        "policies": slow::results(&d["policies"]),
    })
}

fn print_table(d: &Value) {
    let num = |v: &Value| match v.as_f64() {
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
        None => "n/a".to_string(),
    };
    // Sections left out with `--only` are not printed.
    if !d["throughput"].is_null() {
        println!(
            "\n## Throughput & latency (unary echo, closed loop; {})",
            d["pinning"].as_str().unwrap_or("")
        );
        println!(
            "warm-up {} s, window {} s, {} round(s) averaged",
            d["warmup_s"], d["window_s"], d["rounds"]
        );
        println!(
            "| config | C | rps | p50 µs | p99 µs | p999 µs | errors | rps vs direct | rps vs balance_channel |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        let tp = &d["throughput"];
        let mut cs: Vec<u64> = tp
            .as_object()
            .map(|o| {
                o.keys()
                    .filter_map(|k| k.split_once('@')?.1.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        cs.sort_unstable();
        cs.dedup();
        for c in cs {
            let base = tp[format!("direct@{c}")]["rps"]
                .as_f64()
                .unwrap_or(f64::NAN);
            let bc = tp[format!("balance_channel@{c}")]["rps"]
                .as_f64()
                .unwrap_or(f64::NAN);
            for mode in MODES {
                let r = &tp[format!("{mode}@{c}")];
                let rps = r["rps"].as_f64().unwrap_or(f64::NAN);
                println!(
                    "| {mode} | {c} | {} | {} | {} | {} | {} | {:.3} | {:.3} |",
                    num(&r["rps"]),
                    num(&r["p50_us"]),
                    num(&r["p99_us"]),
                    num(&r["p999_us"]),
                    num(&r["errors"]),
                    rps / base,
                    rps / bc
                );
            }
        }
    }
    if !d["pick"].is_null() {
        println!(
            "\n## Pick cost (ns/pick, criterion; 2threads = two threads picking on one balancer)"
        );
        println!("| endpoints | rr | rr, 2 threads | sticky | sticky, 2 threads |");
        println!("|---|---|---|---|---|");
        let pk = &d["pick"];
        for n in [1, 10, 100, 1000, 10000] {
            println!(
                "| {n} | {} | {} | {} | {} |",
                num(&pk[format!("rr_{n}")]),
                num(&pk[format!("rr_2threads_{n}")]),
                num(&pk[format!("sticky_{n}")]),
                num(&pk[format!("sticky_2threads_{n}")]),
            );
        }
    }
    if !d["propagation"].is_null() {
        let p = &d["propagation"];
        println!("\n## Discovery propagation ({} trials, ms)", p["trials"]);
        println!("| event | p50 | p99 | max |");
        println!("|---|---|---|---|");
        for (label, key) in [
            (
                "listening (before lease+put) → first routed",
                "register_from_listening_ms",
            ),
            ("logged \"registered\" → first routed", "register_ms"),
            (
                "SIGINT (before delete) → last routed",
                "deregister_from_sigint_ms",
            ),
            ("logged \"deregistered\" → last routed", "deregister_ms"),
        ] {
            println!(
                "| {label} | {} | {} | {} |",
                num(&p[key]["p50"]),
                num(&p[key]["p99"]),
                num(&p[key]["max"])
            );
        }
    }
    if !d["failover"].is_null() {
        let f = &d["failover"];
        println!("\n## Failover (C=32, our balancer over two servers discovered in etcd)");
        println!("| event | failed calls | recovery ms | rps |");
        println!("|---|---|---|---|");
        println!(
            "| SIGINT one server | {} | - | {} |",
            num(&f["sigint_errors"]),
            num(&f["sigint_rps"])
        );
        println!(
            "| SIGKILL one server | {} | {} | {} |",
            num(&f["sigkill_errors"]),
            num(&f["sigkill_recovery_ms"]),
            num(&f["sigkill_rps"])
        );
    }
    if !d["scale"].is_null() {
        let s = &d["scale"];
        println!("\n## Scale");
        println!("| measure | value |");
        println!("|---|---|");
        println!(
            "| resolver listing 10 000 endpoints, cold start (ours) | {} ms, RSS {} MiB ({} MiB before) |",
            num(&s["resolve_10k_ms"]),
            num(&s["resolve_10k_rss_mib"]),
            num(&s["resolve_10k_rss_before_mib"])
        );
        println!(
            "| the same, Go (clientv3 + endpoints.Manager watch channel) | {} ms (warm channels: median {} ms), RSS {} MiB ({} MiB before) |",
            num(&s["go_list_10k_ms"]),
            num(&s["go_list_10k_warm_ms"]),
            num(&s["go_list_10k_rss_mib"]),
            num(&s["go_list_10k_rss_before_mib"])
        );
        println!(
            "| client over 1 000 endpoints (C=32) | {} rps, p99 {} µs, {} errors, RSS {} MiB |",
            num(&s["client_1k_rps"]),
            num(&s["client_1k_p99_us"]),
            num(&s["client_1k_errors"]),
            num(&s["client_rss_mib_1k"])
        );
    }
    if !d["watchers"].is_null() {
        watchers::print(&d["watchers"]);
    }
    if !d["grey"].is_null() {
        freeze::print(&d["grey"]);
    }
    if !d["policies"].is_null() {
        slow::print(&d["policies"]);
    }
    if !d["go_stack"].is_null() {
        go_stack::print(&d["go_stack"]);
    }
    println!(
        "\nmeasuring took {} s (sections done at {}), after {} s of build; load average before {}, after {}",
        d["elapsed_s"], d["done_at_s"], d["build_s"], d["loadavg_before"], d["loadavg_after"]
    );
}

/// p50, p99 (nearest rank) and max of `xs`, in ms with 0.1 precision.
fn summary(xs: &[f64]) -> Value {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if v.is_empty() {
            return Value::Null;
        }
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        json!((v[rank - 1] * 10.0).round() / 10.0)
    };
    json!({"p50": at(0.50), "p99": at(0.99), "max": at(1.0), "all": v.iter().map(|x| (x * 10.0).round() / 10.0).collect::<Vec<_>>()})
}

/// The mean of `xs`; `None` when there are none.
fn mean(xs: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = xs
        .into_iter()
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// `num / den` to three decimals; `null` when either is missing or `den`
/// is not positive.
fn ratio3(num: Option<f64>, den: Option<f64>) -> Value {
    match (num, den) {
        (Some(num), Some(den)) if den > 0.0 => json!((num / den * 1000.0).round() / 1000.0),
        _ => Value::Null,
    }
}

/// `later - earlier` in ms (negative if `later` is earlier).
fn ms(later: u64, earlier: u64) -> f64 {
    (later as f64 - earlier as f64) / 1000.0
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `/proc/loadavg`'s 1, 5 and 15 minute averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Whether `taskset` can pin to CPUs 0 and 1 here.
fn taskset_works() -> bool {
    let cpus = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    cpus >= 2
        && [CLIENT_CPU, SERVER_CPU].iter().all(|cpu| {
            Command::new("taskset")
                .args(["-c", cpu, "true"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

#[allow(unsafe_code)]
fn send_sigint(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
}
