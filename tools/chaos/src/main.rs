//! `chaos`: runs [`chaos::run`] and prints its report; exit code 1 when an
//! invariant did not hold, 2 for bad flags. Usually started by
//! `cargo xtask chaos`.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "chaos", about = "Chaos run over real echo-servers and etcd")]
struct Args {
    /// How long the fault schedule runs (humantime: 20s, 2m).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Seed of the fault schedule (random when absent).
    #[arg(long)]
    seed: Option<u64>,
    /// The echo-server binary (default: next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The etcd binary (default: ETCD_BIN, else etcd on PATH).
    #[arg(long)]
    etcd_bin: Option<PathBuf>,
    /// etcd members: 1 (one etcd, killed whole) or a local cluster of 3 or
    /// more whose members and leader are killed one at a time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=7))]
    members: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Some(etcd_bin) = args.etcd_bin.or_else(etcd_provision::find_etcd_binary) else {
        eprintln!(
            "chaos: needs an etcd binary it can kill and restart: {}",
            etcd_provision::HOW_TO_GET_ETCD
        );
        return ExitCode::from(2);
    };
    let server_bin = args.server_bin.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("echo-server")))
            .unwrap_or_else(|| PathBuf::from("echo-server"))
    });
    let mut config = chaos::Config::new(server_bin, etcd_bin);
    config.duration = args.duration;
    config.members = args.members as usize;
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    eprintln!(
        "chaos: {} servers, {} concurrent calls, {} etcd member(s), {:?} of faults, seed {}",
        config.servers, config.concurrency, config.members, config.duration, config.seed
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(chaos::run(config)) {
        Ok(report) => {
            println!("{report}");
            if report.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("chaos: {e}");
            ExitCode::FAILURE
        }
    }
}
