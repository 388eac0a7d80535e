//! `echo-server` binary: parses flags, sets up logging and signals, and runs
//! [`echo_server::run`]. See the crate docs for the flags.

use std::process::ExitCode;

use echo_server::cli::Args;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let args = Args::parse_or_exit();
    cli_support::init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        // Installed before anything else, so that an early signal drains
        // instead of killing the process.
        let (mut int, mut term) = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(i), Ok(t)) => (i, t),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("error: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(async move {
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            tracing::info!("signal received: draining (signal again to exit at once)");
            let _ = first_tx.send(());
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        });
        let shutdown = async {
            let _ = first_rx.await;
        };
        match echo_server::run(args.into_config(), shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
