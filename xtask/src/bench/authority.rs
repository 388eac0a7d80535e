//! The `authority` section of `cargo xtask bench`: the cost of the
//! `:authority` adapter (`authority-fix`) on our servers, on vs off, at
//! C=32 with the balancer's load generator.
//!
//! Two pairs of `echo-server`s run side by side: one pair with the adapter
//! (its default, `Mode::Fix`: every client header block is parsed), one with
//! `--no-authority-adapter` (connections not wrapped at all). Runs
//! alternate between the pairs (on, off, off, on, ...) so that drift on the
//! shared machine hits both alike; the claim is the ratio of the medians.

use std::{process::ExitCode, sync::mpsc::Receiver, time::Duration};

use serde_json::{Value, json};

use super::{Bench, Plan};
use crate::{Result, ensure_protoc, provision_etcd, workspace_root};

/// `cargo xtask bench-authority [--quick]`: this section alone, with the
/// same build, etcd and pinning as `cargo xtask bench`; writes
/// `target/bench/authority.json`.
pub(crate) fn run_alone(quick: bool, interrupt: &Receiver<()>) -> Result<ExitCode> {
    let plan = Plan::new(quick);
    let protoc = ensure_protoc()?;
    eprintln!("xtask bench-authority: building echo-server and loadgen (release)");
    super::build_release(&["echo-server", "loadgen"], &protoc)?;
    let out_dir = workspace_root().join("target/bench");
    let etcd = provision_etcd()?;
    let mut bench = Bench::new(&out_dir, etcd.endpoints().join(","), interrupt)?;
    let mut d = json!({ "quick": quick, "pinned": bench.pin });
    d["authority"] = bench.authority(&plan)?;
    drop(bench);
    drop(etcd);
    std::fs::write(
        out_dir.join("authority.json"),
        serde_json::to_string_pretty(&d)? + "\n",
    )?;
    print(&d);
    Ok(ExitCode::SUCCESS)
}

const CONCURRENCY: usize = 32;

impl Bench<'_> {
    /// An `echo-server` with extra flags; returns its index and address.
    fn authority_server(&mut self, id: &str, env: &str, extra: &[&str]) -> Result<(usize, String)> {
        let (i, addr, _) = self.server_with(id, env, "0ms", extra, "echo-server-authority")?;
        Ok((i, addr))
    }

    /// Measures rps and p99 with the adapter on and off; see the module docs.
    pub(super) fn authority(&mut self, plan: &Plan) -> Result<Value> {
        let env = format!("{}-authority", self.env);
        let (on1, a_on1) = self.authority_server("1", &format!("{env}-on"), &[])?;
        let (on2, a_on2) = self.authority_server("2", &format!("{env}-on"), &[])?;
        let off = ["--no-authority-adapter"];
        let (off1, a_off1) = self.authority_server("1", &format!("{env}-off"), &off)?;
        let (off2, a_off2) = self.authority_server("2", &format!("{env}-off"), &off)?;
        let pairs = if plan.quick { 2 } else { 4 };
        let mut runs: [Vec<Value>; 2] = [Vec::new(), Vec::new()];
        for pair in 0..pairs {
            let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                self.check_interrupt()?;
                let (a1, a2) = if which == 0 {
                    (&a_on1, &a_on2)
                } else {
                    (&a_off1, &a_off2)
                };
                let args: Vec<String> = vec![
                    "run".into(),
                    "--mode".into(),
                    "balancer".into(),
                    "--concurrency".into(),
                    CONCURRENCY.to_string(),
                    "--warmup".into(),
                    format!("{}ms", plan.warmup.as_millis()),
                    "--duration".into(),
                    format!("{}ms", plan.window.as_millis()),
                    "--server".into(),
                    format!("1={a1}"),
                    "--server".into(),
                    format!("2={a2}"),
                ];
                let label = ["on", "off"][which];
                eprintln!(
                    "xtask bench: authority adapter {label} C={CONCURRENCY} (pair {})",
                    pair + 1
                );
                let i = self.loadgen(&format!("loadgen-authority-{label}-p{pair}"), &args)?;
                let r = self.result(i, plan.warmup + plan.window + Duration::from_secs(60))?;
                runs[which].push(r);
            }
        }
        for i in [on1, on2, off1, off2] {
            self.stop(i);
        }
        let field = |rs: &[Value], k: &str| -> Vec<f64> {
            rs.iter().filter_map(|r| r[k].as_f64()).collect()
        };
        let median = |mut xs: Vec<f64>| -> f64 {
            xs.sort_by(f64::total_cmp);
            match xs.len() {
                0 => 0.0,
                n if n % 2 == 1 => xs[n / 2],
                n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
            }
        };
        let side = |rs: &[Value]| {
            json!({
                "rps_median": median(field(rs, "rps")),
                "p99_us_median": median(field(rs, "p99_us")),
                "errors": rs.iter().filter_map(|r| r["errors"].as_u64()).sum::<u64>(),
                "rps_runs": field(rs, "rps"),
                "p99_us_runs": field(rs, "p99_us"),
            })
        };
        let ratio = |k: &str| {
            let off = median(field(&runs[1], k));
            if off > 0.0 {
                median(field(&runs[0], k)) / off
            } else {
                0.0
            }
        };
        Ok(json!({
            "concurrency": CONCURRENCY,
            "mode": "balancer",
            "on": side(&runs[0]),
            "off": side(&runs[1]),
            "rps_ratio_on_over_off": (ratio("rps") * 1000.0).round() / 1000.0,
            "p99_ratio_on_over_off": (ratio("p99_us") * 1000.0).round() / 1000.0,
        }))
    }
}

/// One line for the end of the bench output.
pub(super) fn print(d: &Value) {
    let a = &d["authority"];
    if a.is_null() {
        return;
    }
    println!(
        "\n:authority adapter (authority-fix) on vs off, C={}, {} runs each: rps ratio {} \
         (median on {}, off {}), p99 ratio {} (median on {} us, off {} us)",
        a["concurrency"],
        a["on"]["rps_runs"].as_array().map_or(0, Vec::len),
        a["rps_ratio_on_over_off"],
        a["on"]["rps_median"],
        a["off"]["rps_median"],
        a["p99_ratio_on_over_off"],
        a["on"]["p99_us_median"],
        a["off"]["p99_us_median"],
    );
}
