//! `echo-server` binary: parses flags, sets up logging and signals, and runs
//! [`echo_server::run`]. See the crate docs for the flags.

use std::process::ExitCode;

use echo_server::cli::Args;

/// mimalloc rather than the system allocator: a call allocates and frees a
/// few dozen small blocks (h2 streams, tasks, headers). In the unpinned
/// Go-stack bench, echo-client and echo-server on glibc's malloc took 39.3 µs
/// of client CPU per call (0.74 futex calls per call) against 26.4 (0.34) on
/// mimalloc (BENCHMARKS.md). `loadgen` keeps the system allocator, so its
/// scale figures are the libraries' memory as a user who picks none gets it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse_or_exit();
    cli_support::init_logging();
    let runtime = cli_support::runtime_or_exit();
    runtime.block_on(async {
        // Installed before anything else, so that an early signal drains
        // instead of killing the process; a second one exits with 130.
        let shutdown = match serve::shutdown_signal() {
            Ok(shutdown) => shutdown,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(addr) = args.metrics
            && let Err(e) = cli_support::serve_metrics(addr)
        {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        match echo_server::run(args.into_config(), shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
