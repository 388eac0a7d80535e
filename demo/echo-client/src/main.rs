//! `echo-client` binary: parses flags, sets up logging, and runs the call
//! loop or the load mode of the `echo_client` library. See the crate docs.

use std::{io::Write, process::ExitCode};

use echo_client::{Client, cli::Args, describe_status};

/// mimalloc, as `echo-server` (its `main.rs` says what it was measured to
/// buy).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse_or_exit();
    cli_support::init_logging();
    let runtime = cli_support::runtime_or_exit();
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    if let Some(addr) = args.metrics
        && let Err(e) = cli_support::serve_metrics(addr)
    {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let client = match Client::connect(args.config()).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    client.wait_for_instances().await;
    let mut out = std::io::stdout();

    if let Some((concurrency, duration)) = args.load() {
        let report = echo_client::load(&client, &args.message, concurrency, duration).await;
        let _ = writeln!(out, "{report}");
        return ExitCode::SUCCESS;
    }

    let mut sent = 0;
    loop {
        match client.echo(&args.message).await {
            Ok(reply) => {
                if writeln!(out, "{reply}").is_err() {
                    // Nobody reads our output any more.
                    return ExitCode::SUCCESS;
                }
            }
            Err(status) => {
                // Why the instances cannot be used, if they cannot: e.g.
                // a TLS server and a plaintext client.
                let errors = client.endpoint_errors();
                let why = if errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", errors.join("; "))
                };
                eprintln!("error: call failed: {}{why}", describe_status(&status));
                return ExitCode::FAILURE;
            }
        }
        sent += 1;
        if args.count.is_some_and(|n| sent >= n) {
            return ExitCode::SUCCESS;
        }
        tokio::time::sleep(args.interval).await;
    }
}
