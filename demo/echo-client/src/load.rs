//! Load mode: a closed loop of concurrent calls, and its report.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use tokio::time::Instant;
use tracing::warn;

use crate::{Client, describe_status, instance_of};

/// How many failed calls load mode logs one by one before going quiet.
pub const LOGGED_ERRORS: u64 = 20;

/// What a [`load`] run measured.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// Calls answered.
    pub ok: u64,
    /// Calls failed.
    pub errs: u64,
    /// From the first call to the last reply.
    pub elapsed: Duration,
    /// Latency of answered calls, in microseconds.
    pub latency: Histogram<u64>,
    /// Answered calls per instance id (from `(from <id>)`; `?` when a reply
    /// names none).
    pub per_instance: BTreeMap<String, u64>,
}

impl LoadReport {
    fn new() -> Self {
        Self {
            ok: 0,
            errs: 0,
            elapsed: Duration::ZERO,
            // 1 µs to 1 h, 3 significant digits.
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
            per_instance: BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: &Self) {
        self.ok += other.ok;
        self.errs += other.errs;
        let _ = self.latency.add(&other.latency);
        for (id, n) in &other.per_instance {
            *self.per_instance.entry(id.clone()).or_default() += n;
        }
    }

    /// Answered calls per second.
    pub fn rps(&self) -> u64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            (self.ok as f64 / secs).round() as u64
        } else {
            0
        }
    }

    /// `rps=<n> ok=<n> errs=<n> p50_us=<n> p99_us=<n>`.
    pub fn summary_line(&self) -> String {
        format!(
            "rps={} ok={} errs={} p50_us={} p99_us={}",
            self.rps(),
            self.ok,
            self.errs,
            self.latency.value_at_quantile(0.5),
            self.latency.value_at_quantile(0.99),
        )
    }

    /// `per_instance 1=<n> 2=<n>`, ids in numeric order when numbers.
    pub fn per_instance_line(&self) -> String {
        let mut ids: Vec<_> = self.per_instance.iter().collect();
        ids.sort_by(
            |(a, _), (b, _)| match (a.parse::<u64>(), b.parse::<u64>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                (Ok(_), Err(_)) => std::cmp::Ordering::Less,
                (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
                (Err(_), Err(_)) => a.cmp(b),
            },
        );
        let mut line = String::from("per_instance");
        for (id, n) in ids {
            line.push_str(&format!(" {id}={n}"));
        }
        line
    }
}

impl fmt::Display for LoadReport {
    /// The two lines load mode prints: per instance, then the summary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n{}", self.per_instance_line(), self.summary_line())
    }
}

/// Runs `concurrency` workers, each calling `UnaryEcho` with `message` in a
/// closed loop (the next call when the last one ended) until `duration` has
/// passed; calls in flight then finish and count. Failed calls are counted
/// (the first [`LOGGED_ERRORS`] are logged with their status), never fatal.
///
/// Call [`Client::wait_for_instances`] first to leave discovery out of the
/// measurement.
///
/// # Panics
/// Outside a tokio runtime.
pub async fn load(
    client: &Client,
    message: &str,
    concurrency: usize,
    duration: Duration,
) -> LoadReport {
    let start = Instant::now();
    let deadline = start + duration;
    let logged = Arc::new(AtomicU64::new(0));
    let message: Arc<str> = message.into();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let client = client.clone();
            let logged = logged.clone();
            let message = message.clone();
            tokio::spawn(async move {
                let mut report = LoadReport::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    match client.echo(&message).await {
                        Ok(reply) => {
                            report.ok += 1;
                            let micros = sent.elapsed().as_micros();
                            report
                                .latency
                                .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
                            let id = instance_of(&reply).unwrap_or("?");
                            *report.per_instance.entry(id.to_owned()).or_default() += 1;
                        }
                        Err(status) => {
                            report.errs += 1;
                            let n = logged.fetch_add(1, Ordering::Relaxed);
                            if n < LOGGED_ERRORS {
                                warn!("call failed: {}", describe_status(&status));
                            } else if n == LOGGED_ERRORS {
                                warn!("more calls failed; no longer logging each one");
                            }
                        }
                    }
                }
                report
            })
        })
        .collect();
    let mut total = LoadReport::new();
    for worker in workers {
        match worker.await {
            Ok(report) => total.merge(&report),
            Err(e) => warn!(error = %e, "a load worker failed"),
        }
    }
    total.elapsed = start.elapsed();
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_documented_format() {
        let mut report = LoadReport::new();
        report.ok = 300;
        report.errs = 1;
        report.elapsed = Duration::from_secs(3);
        for v in [100, 200, 300] {
            report.latency.record(v).unwrap();
        }
        for (id, n) in [("10", 1), ("2", 149), ("1", 150)] {
            report.per_instance.insert(id.into(), n);
        }
        assert_eq!(report.per_instance_line(), "per_instance 1=150 2=149 10=1");
        assert_eq!(
            report.summary_line(),
            "rps=100 ok=300 errs=1 p50_us=200 p99_us=300"
        );
    }
}
