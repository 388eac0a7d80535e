//! `loadgen`: see the library docs. Results are JSON lines on stdout; logs go
//! to stderr (`RUST_LOG`, default `warn`).

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use loadgen::load::{self, Mode, Servers};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Load generator and probes for `cargo xtask bench`"
)]
struct Cli {
    /// Tokio worker threads (default: the CPUs this process may run on).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Unary echo, closed loop (or open with `--rate`); prints one result
    /// line.
    Run {
        /// direct | balance_channel | balancer | sticky
        #[arg(long, value_parser = Mode::parse)]
        mode: Mode,
        /// A server as `<instance id>=<host:port>`; repeat for more.
        #[arg(long = "server", value_parser = parse_server)]
        servers: Vec<(String, String)>,
        /// A file of `<instance id>=<host:port>` lines, added to `--server`.
        #[arg(long)]
        servers_file: Option<std::path::PathBuf>,
        /// Discover servers in etcd instead (our balancer only).
        #[arg(long = "etcd")]
        etcd: Vec<String>,
        /// etcd prefix to discover, e.g. `discovery/dev/game`.
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Pause between two calls of one worker.
        #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Per-call deadline.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Instance id of sticky calls (default: the first server's).
        #[arg(long)]
        sticky_id: Option<String>,
        /// READY endpoints to wait for before starting.
        #[arg(long)]
        wait_ready: Option<usize>,
        /// Print an event line when an instance first answers; report the
        /// last answer time of each instance.
        #[arg(long)]
        events: bool,
        /// End the run early when stdin reaches end of file.
        #[arg(long)]
        stop_on_eof: bool,
        /// Our balancer without freeze detection and outlier ejection.
        #[arg(long)]
        no_grey_detection: bool,
        /// Count successful calls per bucket of this width (the result's
        /// `timeline`).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeline: Option<Duration>,
        /// Open loop: start this many calls per second whatever their
        /// answers (`--concurrency` and `--interval` are then unused).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Serve the echo service on N loopback ports until SIGINT/SIGTERM.
    Serve {
        #[arg(long, default_value = "host")]
        id: String,
        #[arg(long, default_value_t = 1)]
        ports: usize,
        /// Also write `<id>=<addr>` lines to this file.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Put N fake endpoints under an etcd prefix.
    Fill {
        #[arg(long = "etcd", required = true)]
        etcd: Vec<String>,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: usize,
    },
    /// Time the resolver listing a prefix of `expect` endpoints.
    Resolve {
        #[arg(long = "etcd", required = true)]
        etcd: Vec<String>,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        expect: usize,
        /// Delete the prefix afterwards.
        #[arg(long)]
        clear: bool,
    },
    /// Many resolvers of one prefix while registrations churn.
    Watchers {
        #[arg(long = "etcd", required = true, value_delimiter = ',')]
        etcd: Vec<String>,
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Puts per second; 0: only watch (another process churns), and
        /// end `--duration` + 2 s after the first put seen.
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// Keys kept under the prefix.
        #[arg(long, default_value_t = 100)]
        live: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Add `latencies` and `seen` (per put) to the result, for merging
        /// several processes.
        #[arg(long)]
        raw: bool,
    },
}

fn parse_server(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(id, addr)| (id.trim().to_string(), addr.trim().to_string()))
        .filter(|(id, addr)| !id.is_empty() && !addr.is_empty())
        .ok_or_else(|| {
            format!("server {s:?} must be <instance id>=<host:port>, e.g. 1=127.0.0.1:50051")
        })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        runtime.worker_threads(n.max(1));
    }
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Run {
            mode,
            mut servers,
            servers_file,
            etcd,
            prefix,
            concurrency,
            warmup,
            duration,
            interval,
            timeout,
            sticky_id,
            wait_ready,
            events,
            stop_on_eof,
            no_grey_detection,
            timeline,
            rate,
        } => {
            if let Some(file) = servers_file {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    servers.push(parse_server(line)?);
                }
            }
            let servers = match (prefix, servers.is_empty()) {
                (Some(prefix), true) => {
                    let endpoints = if etcd.is_empty() {
                        vec!["http://127.0.0.1:2379".to_string()]
                    } else {
                        etcd
                    };
                    Servers::Etcd { endpoints, prefix }
                }
                (None, false) => Servers::List(servers),
                (Some(_), false) => return Err("give --server(s) or --prefix, not both".into()),
                (None, true) => {
                    return Err("no server: give --server, --servers-file or --prefix".into());
                }
            };
            let result = load::run(load::Config {
                mode,
                servers,
                concurrency: concurrency.max(1),
                warmup,
                duration,
                interval,
                timeout,
                sticky_id,
                wait_ready,
                events,
                stop: stop_on_eof.then(stop_when_stdin_closes),
                no_grey_detection,
                timeline,
                rate: rate.filter(|r| *r > 0.0),
            })
            .await?;
            println!("{result}");
            Ok(())
        }
        Cmd::Serve { id, ports, out } => {
            let addrs = loadgen::serve::serve(&id, ports)
                .await
                .map_err(|e| format!("cannot listen: {e}"))?;
            if let Some(out) = out {
                let lines: String = addrs.iter().map(|a| format!("{id}={a}\n")).collect();
                std::fs::write(&out, lines)
                    .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            }
            let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            println!(
                "{}",
                serde_json::json!({"event": "serving", "addrs": addrs})
            );
            wait_for_signal().await;
            Ok(())
        }
        Cmd::Fill {
            etcd,
            prefix,
            count,
        } => {
            println!("{}", loadgen::scale::fill(&etcd, &prefix, count).await?);
            Ok(())
        }
        Cmd::Watchers {
            etcd,
            prefix,
            watchers,
            rate,
            live,
            duration,
            raw,
        } => {
            let result = loadgen::watchers::run(loadgen::watchers::Config {
                etcd,
                prefix,
                watchers,
                rate,
                live,
                duration,
                raw,
            })
            .await?;
            println!("{result}");
            Ok(())
        }
        Cmd::Resolve {
            etcd,
            prefix,
            expect,
            clear,
        } => {
            let result = loadgen::scale::resolve(&etcd, &prefix, expect).await;
            if clear {
                loadgen::scale::clear(&etcd, &prefix).await?;
            }
            println!("{}", result?);
            Ok(())
        }
    }
}

fn stop_when_stdin_closes() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    stop
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
