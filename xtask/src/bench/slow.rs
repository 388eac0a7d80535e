//! The slow-server section (issue 14): three `echo-server`s discovered in
//! etcd, one of them answering every call 20 ms late (`--delay 20ms`), and
//! `echo-client` load (closed loop, C=16) over them with round robin and
//! with least request, alternating, same servers. The claim is the rps
//! ratio least-request / round-robin: round robin keeps sending a third of
//! the calls into the delay, least request routes around it.
//!
//! `cargo xtask bench --only slow` runs this section alone; its results are
//! `policies` in `target/bench/results.json`.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Bench, CLIENT_CPU, Plan, mean, ratio3};
use crate::Result;

const DELAY: &str = "20ms";
const CONCURRENCY: usize = 16;
const POLICIES: [&str; 2] = ["round-robin", "least-request"];

pub(super) fn run(bench: &mut Bench<'_>, plan: &Plan) -> Result<Value> {
    bench.check_interrupt()?;
    let env = format!("{}-slow", bench.env);
    let mut servers = Vec::new();
    for (id, delay) in [("1", "0ms"), ("2", "0ms"), ("3", DELAY)] {
        let (i, _, _) =
            bench.server_with(id, &env, "0ms", &["--delay", delay], "echo-server-slow")?;
        servers.push(i);
    }
    let window = plan.window;
    let mut runs = json!({ "round-robin": [], "least-request": [] });
    for round in 0..plan.rounds {
        for lb in POLICIES {
            bench.check_interrupt()?;
            eprintln!(
                "xtask bench: one 20 ms server of three, {lb} C={CONCURRENCY} (round {})",
                round + 1
            );
            let mut cmd = bench.command(CLIENT_CPU, "echo-client");
            cmd.args(["--env", &env, "--etcd", &bench.etcd, "--lb", lb])
                .args(["--concurrency", &CONCURRENCY.to_string()])
                .args(["--duration", &format!("{}ms", window.as_millis())])
                .env("RUST_LOG", "warn");
            let c = bench.spawn(&format!("slow-{lb}-r{round}"), cmd, false)?;
            let report = bench.report(c, window + Duration::from_secs(60))?;
            if let Some(list) = runs[lb].as_array_mut() {
                list.push(json!({
                    "rps": report.rps,
                    "p50_us": report.p50,
                    "p99_us": report.p99,
                    "errors": report.errors,
                }));
            }
        }
    }
    for i in servers.into_iter().rev() {
        bench.stop(i);
    }
    let mean_rps = |lb: &str| {
        mean(
            runs[lb]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["rps"].as_f64()),
        )
    };
    let ratio = ratio3(mean_rps("least-request"), mean_rps("round-robin"));
    Ok(json!({
        "delay": DELAY,
        "concurrency": CONCURRENCY,
        "round_robin_rps": mean_rps("round-robin"),
        "least_request_rps": mean_rps("least-request"),
        "lr_over_rr": ratio,
        "runs": runs,
    }))
}

pub(super) fn results(d: &Value) -> Value {
    if d.is_null() {
        return Value::Null;
    }
    json!({ "slow_server_lr_over_rr": d["lr_over_rr"] })
}

pub(super) fn print(d: &Value) {
    println!("\n## One 20 ms server of three (echo-client load, C=16 closed loop)");
    println!("| policy | rps (mean) | runs |");
    println!("|---|---|---|");
    for (lb, key) in [
        ("round-robin", "round_robin_rps"),
        ("least-request", "least_request_rps"),
    ] {
        let runs: Vec<String> = d["runs"][lb]
            .as_array()
            .map(|a| a.iter().map(|r| r["rps"].to_string()).collect())
            .unwrap_or_default();
        println!("| {lb} | {} | {} |", d[key], runs.join(", "));
    }
    println!("least-request / round-robin rps: {}", d["lr_over_rr"]);
}
