//! The freeze section (issues 15, 25): three `echo-server`s under
//! closed-loop C=16 load from our balancer (round robin, default adaptive
//! freeze detection), one of them SIGSTOPped for 5 s. Measures goodput
//! during the freeze against the seconds before it, the time from SIGSTOP
//! to the client leaving the server out of its picks (loadgen's `avoided`
//! event), and the calls that failed. Then that detection time over more
//! trials (a fresh client each, SIGSTOP 1 s), for its p99. Then the same
//! 5 s freeze under an open loop (calls started at a quarter of the closed
//! loop's rate before the freeze, whatever their answers), whose failed
//! calls are those sent to the server before it was left out. Then the
//! happy-path cost of detection: rps at C=32 and C=128 with freeze
//! detection and outlier ejection on vs off, alternating, same servers,
//! and the PINGs detection sent per minute of healthy load.
//!
//! `cargo xtask bench --only freeze` runs this section alone; its results
//! are `grey` in `target/bench/results.json`.

use std::{
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{Bench, Plan, mean, ms, ratio3, unix_us};
use crate::Result;

const FREEZE: Duration = Duration::from_secs(5);
const BEFORE: Duration = Duration::from_secs(4);
const AFTER: Duration = Duration::from_secs(3);
/// The baseline window: the seconds just before the SIGSTOP, after the
/// load's first second.
const BASELINE: Duration = Duration::from_secs(3);
const BUCKET: Duration = Duration::from_millis(100);

fn kill(signal: &str, pid: u32) -> u64 {
    let t = unix_us();
    let _ = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
    t
}

/// Successful calls per second over `[from, to)` (unix µs) of a loadgen
/// result with a timeline.
fn rate(result: &Value, from: u64, to: u64) -> Option<f64> {
    let start = result["start_unix_us"].as_u64()?;
    let width = result["timeline_ms"].as_u64()? * 1000;
    let counts = result["timeline"].as_array()?;
    let first = usize::try_from(from.checked_sub(start)? / width).ok()?;
    let last = usize::try_from(to.checked_sub(start)? / width).ok()?;
    let n: u64 = counts
        .get(first..last.min(counts.len()))?
        .iter()
        .filter_map(Value::as_u64)
        .sum();
    let secs = (last - first) as f64 * width as f64 / 1e6;
    (secs > 0.0).then(|| n as f64 / secs)
}

/// loadgen's arguments for C=16 round robin over `servers` for `duration`,
/// reporting the endpoints it stops picking (`--events`).
fn watched_load(duration: Duration, servers: &[String]) -> Vec<String> {
    watched(&["--concurrency", "16"], duration, servers)
}

/// [`watched_load`] with the load given by `load` (e.g. `--rate N`).
fn watched(load: &[&str], duration: Duration, servers: &[String]) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--mode", "balancer"].map(String::from).to_vec();
    args.extend(load.iter().map(|a| a.to_string()));
    args.extend(["--warmup".into(), "0s".into(), "--duration".into()]);
    args.push(format!("{}ms", duration.as_millis()));
    args.push("--events".into());
    args.extend(servers.iter().cloned());
    args
}

pub(super) fn run(bench: &mut Bench<'_>, plan: &Plan) -> Result<Value> {
    bench.check_interrupt()?;
    let env = format!("{}-freeze", bench.env);
    let mut servers = Vec::new();
    for id in ["1", "2", "3"] {
        let (i, addr, _) = bench.server(id, &env, "0ms")?;
        servers.push((i, id, addr));
    }
    let list: Vec<String> = servers
        .iter()
        .flat_map(|(_, id, addr)| ["--server".to_string(), format!("{id}={addr}")])
        .collect();

    eprintln!("xtask bench: freeze, SIGSTOP one of 3 servers for 5 s under C=16");
    let (frozen, frozen_id, _) = servers[2].clone();
    let pid = bench.procs[frozen].pid();
    let freeze = five_seconds(
        bench,
        "loadgen-freeze",
        watched_load(total(), &list),
        pid,
        frozen_id,
    )?;

    // Detection time over more trials: a fresh client each (it reports a
    // server left out once), the server stopped for 1 s.
    let trials = if plan.quick { 5 } else { 10 };
    let mut detection_ms = Vec::new();
    let mut trial_failed = 0u64;
    for trial in 0..trials {
        bench.check_interrupt()?;
        let args = watched_load(Duration::from_millis(2500), &list);
        let lg = bench.loadgen(&format!("loadgen-detect-{trial}"), &args)?;
        bench.procs[lg].expect(Duration::from_secs(30), "start", |l| {
            l.contains("\"started\"")
        })?;
        thread::sleep(Duration::from_millis(800));
        let t_stop = kill("-STOP", pid);
        let avoided = bench.procs[lg].expect(Duration::from_secs(1), "avoided event", |l| {
            l.contains("\"avoided\"") && l.contains(&format!("\"id\":\"{frozen_id}\""))
        });
        thread::sleep(
            Duration::from_secs(1).saturating_sub(Duration::from_micros(unix_us() - t_stop)),
        );
        kill("-CONT", pid);
        if let Ok((_, line)) = avoided {
            let event: Value = serde_json::from_str(&line)?;
            if let Some(t) = event["t_us"].as_u64() {
                detection_ms.push((ms(t, t_stop) * 10.0).round() / 10.0);
            }
        }
        let r = bench.result(lg, Duration::from_secs(60))?;
        trial_failed += r["total_errors"].as_u64().unwrap_or(0);
    }
    let mut sorted = detection_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let detection = json!({
        "trials": trials,
        "detected": sorted.len(),
        "ms": detection_ms,
        "p50_ms": sorted.get(sorted.len() / 2),
        // With 5 or 10 trials, the p99 is the largest.
        "p99_ms": sorted.last(),
        "failed_calls": trial_failed,
    });

    // The same freeze under an open loop at a quarter of the closed loop's
    // rate: calls start on schedule, each its own task (dearer than the
    // closed loop's), so it has room on a busy machine; the frozen server's
    // share of the calls until it is left out is what fails, whatever the
    // rate.
    let rate = freeze["before_rps"].as_f64().unwrap_or(10_000.0) / 4.0;
    eprintln!(
        "xtask bench: freeze, SIGSTOP one of 3 servers for 5 s under an open loop of {rate:.0}/s"
    );
    let rate_arg = format!("{rate:.0}");
    let args = watched(&["--rate", &rate_arg], total(), &list);
    let mut open = five_seconds(bench, "loadgen-freeze-open", args, pid, frozen_id)?;
    open["rate"] = json!(rate.round());

    // Happy path: detection on vs off, alternating so drift hits both, at
    // C=32 and C=128.
    let rounds = if plan.quick { 2 } else { 4 };
    let mut happy = serde_json::Map::new();
    for concurrency in [32u32, 128] {
        let mut rps = json!({"on": [], "off": []});
        let mut probes = 0u64;
        let mut on_seconds = 0.0;
        for round in 0..rounds {
            for on in if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            } {
                bench.check_interrupt()?;
                let mut args: Vec<String> = [
                    "run",
                    "--mode",
                    "balancer",
                    "--concurrency",
                    &concurrency.to_string(),
                    "--warmup",
                    &format!("{}ms", plan.warmup.as_millis()),
                    "--duration",
                    &format!("{}ms", plan.window.as_millis()),
                ]
                .map(String::from)
                .to_vec();
                if !on {
                    args.push("--no-grey-detection".into());
                }
                args.extend(list.iter().cloned());
                let side = if on { "on" } else { "off" };
                eprintln!(
                    "xtask bench: freeze detection {side}, C={concurrency} (round {})",
                    round + 1
                );
                let lg = bench.loadgen(
                    &format!("loadgen-grey-{side}-c{concurrency}-r{round}"),
                    &args,
                )?;
                let r = bench.result(lg, plan.warmup + plan.window + Duration::from_secs(60))?;
                if let Some(a) = rps[side].as_array_mut() {
                    a.push(r["rps"].clone());
                }
                if on {
                    probes += r["probes"].as_u64().unwrap_or(0);
                    on_seconds += (plan.warmup + plan.window).as_secs_f64();
                }
            }
        }
        let mean_rps = |side: &str| {
            mean(
                rps[side]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64),
            )
        };
        happy.insert(
        format!("c{concurrency}"),
        json!({
            "rps_on": rps["on"],
            "rps_off": rps["off"],
            "ratio": ratio3(mean_rps("on"), mean_rps("off")),
            "pings_per_minute": (probes as f64 / on_seconds.max(1.0) * 60.0 * 10.0).round() / 10.0,
        }),
    );
    }
    for (i, _, _) in &servers {
        bench.stop(*i);
    }
    happy.insert("pinned".into(), json!(bench.pin));
    Ok(json!({
        "freeze": freeze,
        "open_loop": open,
        "detection": detection,
        "happy_path": happy,
    }))
}

fn total() -> Duration {
    BEFORE + FREEZE + AFTER
}

/// "… with N calls in flight …" of a suspicion's reason.
fn in_flight(why: &Value) -> Value {
    why.as_str()
        .and_then(|w| {
            w.split_once(" with ")?
                .1
                .split_once(" calls in flight")
                .map(|(n, _)| n.parse::<u64>().ok())
        })
        .flatten()
        .map_or(Value::Null, |n| json!(n))
}

/// Runs loadgen with `args` (a `watched` load of `total()`), SIGSTOPs the
/// server `pid` (instance `frozen_id`) for [`FREEZE`] after [`BEFORE`], and
/// measures goodput during the freeze against the seconds before, the time
/// to the `avoided` event and the failed calls.
fn five_seconds(
    bench: &mut Bench<'_>,
    name: &str,
    mut args: Vec<String>,
    pid: u32,
    frozen_id: &str,
) -> Result<Value> {
    args.extend(["--timeline".into(), format!("{}ms", BUCKET.as_millis())]);
    let lg = bench.loadgen(name, &args)?;
    bench.procs[lg].expect(Duration::from_secs(30), "start", |l| {
        l.contains("\"started\"")
    })?;
    thread::sleep(BEFORE);
    let t_stop = kill("-STOP", pid);
    let stopped = Instant::now();
    let avoided = bench.procs[lg].expect(FREEZE, "avoided event", |l| {
        l.contains("\"avoided\"") && l.contains(&format!("\"id\":\"{frozen_id}\""))
    });
    thread::sleep(FREEZE.saturating_sub(stopped.elapsed()));
    let t_cont = kill("-CONT", pid);
    let result = bench.result(lg, AFTER + Duration::from_secs(60))?;
    let (suspect_ms, why) = match &avoided {
        Ok((_, line)) => {
            let event: Value = serde_json::from_str(line)?;
            let t = event["t_us"].as_u64().unwrap_or(t_stop);
            (
                json!((ms(t, t_stop) * 10.0).round() / 10.0),
                event["why"].clone(),
            )
        }
        Err(_) => (
            Value::Null,
            json!("not left out of the picks during the freeze"),
        ),
    };
    let started = result["start_unix_us"].as_u64().unwrap_or(t_stop);
    let baseline_from = (t_stop - BASELINE.as_micros() as u64).max(started + 1_000_000);
    let before = rate(&result, baseline_from, t_stop);
    let during = rate(&result, t_stop, t_cont);
    let ratio = ratio3(during, before);
    Ok(json!({
        "before_rps": before.map(f64::round),
        "during_rps": during.map(f64::round),
        "goodput_ratio": ratio,
        "suspect_ms": suspect_ms,
        "why": why,
        "failed": result["total_errors"],
        "error_samples": result["error_samples"],
        "frozen_s": ms(t_cont, t_stop) / 1000.0,
        "in_flight_at_suspicion": in_flight(&why),
        "per_instance": result["per_instance"],
    }))
}

/// The `grey` entry of `results.json`.
pub(super) fn results(d: &Value) -> Value {
    if d.is_null() {
        return Value::Null;
    }
    json!({
        "goodput_ratio": d["freeze"]["goodput_ratio"],
        "suspect_ms": d["freeze"]["suspect_ms"],
        "failed": d["freeze"]["failed"],
        "in_flight_at_suspicion": d["freeze"]["in_flight_at_suspicion"],
        "open_loop_goodput_ratio": d["open_loop"]["goodput_ratio"],
        "open_loop_suspect_ms": d["open_loop"]["suspect_ms"],
        "open_loop_failed": d["open_loop"]["failed"],
        "detection_p99_ms": d["detection"]["p99_ms"],
        "happy_path_ratio_c32": d["happy_path"]["c32"]["ratio"],
        "happy_path_ratio_c128": d["happy_path"]["c128"]["ratio"],
        "pings_per_minute_c128": d["happy_path"]["c128"]["pings_per_minute"],
    })
}

pub(super) fn print(d: &Value) {
    let f = &d["freeze"];
    let t = &d["detection"];
    let h = &d["happy_path"];
    println!(
        "\n## Grey failures (3 servers, one SIGSTOPped, C=16 closed loop, adaptive detection)"
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| goodput during a 5 s freeze / the 3 s before | {} ({} rps / {} rps) |",
        f["goodput_ratio"], f["during_rps"], f["before_rps"]
    );
    println!(
        "| SIGSTOP → left out of the picks, 5 s freeze | {} ms ({}) |",
        f["suspect_ms"], f["why"]
    );
    println!(
        "| failed calls, 5 s freeze | {} (in flight on it when left out: {}) |",
        f["failed"], f["in_flight_at_suspicion"]
    );
    let o = &d["open_loop"];
    println!(
        "| open loop of {}/s: goodput during the 5 s freeze / before | {} ({} rps / {} rps) |",
        o["rate"], o["goodput_ratio"], o["during_rps"], o["before_rps"]
    );
    println!(
        "| open loop: SIGSTOP → left out of the picks; failed calls | {} ms; {} failed (in flight on it when left out: {}) |",
        o["suspect_ms"], o["failed"], o["in_flight_at_suspicion"]
    );
    println!(
        "| SIGSTOP → left out of the picks, {} trials of 1 s | p50 {} ms, p99 (max) {} ms, all {} ({} detected; {} calls failed) |",
        t["trials"], t["p50_ms"], t["p99_ms"], t["ms"], t["detected"], t["failed_calls"]
    );
    for c in ["c32", "c128"] {
        println!(
            "| happy path {}, detection on / off | {} (on {} rps, off {} rps; pinned: {}); PINGs per minute {} |",
            c.to_uppercase().replace('C', "C="),
            h[c]["ratio"],
            h[c]["rps_on"],
            h[c]["rps_off"],
            h["pinned"],
            h[c]["pings_per_minute"]
        );
    }
}
