//! The Go peer (`interop/go`, built by `go-provision`) as child processes:
//! seed-style grpc-go servers and clients for the interop tests.

use std::{path::PathBuf, sync::OnceLock};

use crate::process::{PATIENCE, Proc};

/// Path of the built Go peer: `GO_PEER` when set (`cargo xtask test` sets
/// it), else the first call builds it (or finds it cached under
/// `target/go-peer/`), installing Go when `go-provision` can.
///
/// # Panics
/// When there is no Go; the message says how to get it.
pub fn go_peer() -> PathBuf {
    static PEER: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let peer = PEER.get_or_init(|| {
        if let Some(peer) = std::env::var_os("GO_PEER").filter(|p| !p.is_empty()) {
            let peer = PathBuf::from(peer);
            return if peer.is_file() {
                Ok(peer)
            } else {
                Err(format!("GO_PEER={} is not a file", peer.display()))
            };
        }
        let target = target_dir()?;
        go_provision::go_peer(&target).map_err(|e| e.to_string())
    });
    match peer {
        Ok(p) => p.clone(),
        Err(e) => panic!(
            "this test needs the Go peer: {e}. Run `cargo xtask test` (it needs Go 1.26+ and \
             the Go module proxy), or see interop/go/README.md"
        ),
    }
}

/// Path of `grpc-health-probe` (pinned in `tools/go/grpc-health-probe`):
/// `GRPC_HEALTH_PROBE` when set (`cargo xtask test` sets it), else the first
/// call builds it (or finds it cached under `target/go-tools/`).
///
/// # Panics
/// When there is no Go, or the Go module proxy cannot be reached for the
/// first build; the message says how to get them.
pub fn health_probe() -> PathBuf {
    static PROBE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let probe = PROBE.get_or_init(|| {
        if let Some(probe) = std::env::var_os("GRPC_HEALTH_PROBE").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(probe));
        }
        let target = target_dir()?;
        go_provision::health_probe(&target).map_err(|e| e.to_string())
    });
    match probe {
        Ok(p) => p.clone(),
        Err(e) => panic!("this test needs grpc-health-probe: {e}. Run `cargo xtask test`"),
    }
}

/// `target/` of this workspace, from the test executable's location
/// (`target/<profile>/deps/<test>`).
fn target_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate the test binary: {e}"))?;
    exe.ancestors()
        .nth(3)
        .map(PathBuf::from)
        .ok_or_else(|| format!("unexpected test binary location {}", exe.display()))
}

/// Runs the Go peer in `mode` (`server`, `client`, `load`, `list`) with
/// `args`.
pub fn spawn(name: &str, mode: &str, args: &[&str]) -> Proc {
    spawn_with(name, mode, args, &[])
}

/// [`spawn`] with extra environment variables (e.g. grpc-go's
/// `GRPC_GO_LOG_VERBOSITY_LEVEL`).
pub fn spawn_with(name: &str, mode: &str, args: &[&str], vars: &[(&str, &str)]) -> Proc {
    let mut all = vec![mode];
    all.extend_from_slice(args);
    Proc::spawn_exe(name, &go_peer(), &all, vars)
}

/// A Go server (`go-peer server`) with the given id, env and etcd, waited
/// for until it is registered; returns it and its bound address.
pub fn start_server(id: &str, env: &str, etcd: &[String], extra: &[&str]) -> (Proc, String) {
    start_server_with(id, env, etcd, extra, &[])
}

/// [`start_server`] with extra environment variables.
pub fn start_server_with(
    id: &str,
    env: &str,
    etcd: &[String],
    extra: &[&str],
    vars: &[(&str, &str)],
) -> (Proc, String) {
    crate::process::start_registered(
        &format!("go server {id}"),
        id,
        env,
        etcd,
        extra,
        |name, args| spawn_with(name, "server", args, vars),
    )
}

/// A Go client (`go-peer client` or `go-peer load`) on `env` and `etcd`.
pub fn start_client(name: &str, mode: &str, env: &str, etcd: &[String], extra: &[&str]) -> Proc {
    let etcd = etcd.join(",");
    let mut args = vec!["--env", env, "--etcd", &etcd];
    args.extend_from_slice(extra);
    spawn(name, mode, &args)
}

/// Runs a Go client to its end and returns its stdout lines, panicking
/// (with its output) when it fails.
pub fn run_client(
    name: &str,
    mode: &str,
    env: &str,
    etcd: &[String],
    extra: &[&str],
) -> Vec<String> {
    let mut client = start_client(name, mode, env, etcd, extra);
    let status = client.wait_exit(PATIENCE);
    let transcript = client.transcript();
    assert!(status.success(), "{name} failed ({status}):\n{transcript}");
    stdout_lines(&client)
}

/// Everything a process printed on stdout so far.
pub fn stdout_lines(proc: &Proc) -> Vec<String> {
    proc.history()
        .iter()
        .filter(|l| l.stream == crate::process::Stream::Out)
        .map(|l| l.text.clone())
        .collect()
}
