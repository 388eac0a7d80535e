//! `cargo xtask <command>`: the one entry point for developers and CI.
//!
//! - `etcd`: start an etcd (`--members 3`: a local 3-member cluster) and
//!   print its endpoints until Ctrl-C;
//! - `test`: check formatting (`cargo fmt --check`) and lints (`cargo
//!   clippy -D warnings`), run the workspace's tests on etcd 3.6, package
//!   the published crates, then a compatibility subset on etcd 3.4 and 3.7;
//!   timed phases, each naming its etcd version;
//! - `demo`: replay the seed scenario with real processes;
//! - `bench`: throughput, latency, pick cost, propagation, failover, scale;
//! - `chaos`: load over real servers while servers and etcd are killed;
//! - `bench-authority`: only the `:authority` adapter's cost (on vs off);
//! - `go-peer`: build the Go interop peer (installing Go when needed) and
//!   print its path.
//!
//! xtask must build without `protoc`, so it never depends on `etcd-client`.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::mpsc,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use etcd_provision::Etcd;

mod bench;
mod demo;
mod outside;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start an etcd and print its endpoints until Ctrl-C.
    Etcd {
        /// Members of a local cluster on free ports (needs an etcd binary:
        /// ETCD_BIN or PATH); 1 provisions one etcd as `cargo xtask test`
        /// does.
        #[arg(long, default_value_t = 1)]
        members: usize,
        /// With --members: etcd's default election timing (heartbeat
        /// 100 ms, election 1 s) instead of the fast test timing (10/100 ms).
        #[arg(long, requires = "members")]
        default_elections: bool,
        /// Which etcd: 3.6 (the default) or 3.7, built from the Go module
        /// proxy and cached in target/etcd/, or 3.4, Debian's etcd-server.
        /// Sets ETCD_VERSION for this run.
        #[arg(long, value_parser = ["3.4", "3.6", "3.7"])]
        version: Option<String>,
    },
    /// Check fmt and clippy, provision etcd and run every test of the
    /// workspace against it.
    Test {
        /// Extra arguments passed to `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Replay the seed scenario: client, two servers, a sticky client, a drain.
    Demo,
    /// Run the benchmarks (throughput, pick cost, propagation, failover, scale).
    Bench {
        /// Short windows and fewer trials: about 3 minutes instead of 15.
        #[arg(long)]
        quick: bool,
        /// Run only these sections (comma-separated), e.g. `--only go_stack`
        /// or `--only throughput,go_stack`; default: all of them.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Only the benchmark of the :authority adapter (on vs off, C=32).
    BenchAuthority {
        /// Shorter windows: 2 pairs of runs instead of 4.
        #[arg(long)]
        quick: bool,
    },
    /// Build the Go interop peer (interop/go) and print its path; installs
    /// Go on Debian/Ubuntu as root when it is missing.
    GoPeer,
    /// Load over real servers while servers and etcd are killed and restarted.
    Chaos {
        /// How long the fault schedule runs (humantime: 20s, 2m).
        #[arg(long, default_value = "60s")]
        duration: String,
        /// Seed of the fault schedule (random when absent; printed).
        #[arg(long)]
        seed: Option<u64>,
        /// etcd members: 3 runs on a local cluster and adds member kills,
        /// leader kills and member restarts; 1 kills one etcd whole.
        #[arg(long, default_value_t = 3)]
        members: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Ctrl-C also reaches our children (same process group); we only need to
    // survive it long enough to clean up what we started.
    let (interrupt_tx, interrupt_rx) = mpsc::channel::<()>();
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = interrupt_tx.send(());
    }) {
        eprintln!("xtask: cannot install a Ctrl-C handler: {e}");
    }
    let result = match cli.command {
        Cmd::Etcd {
            members,
            default_elections,
            version,
        } => run_etcd(
            members,
            default_elections,
            version.as_deref(),
            &interrupt_rx,
        ),
        Cmd::Test { args } => run_tests(&args),
        Cmd::Demo => demo::run(&interrupt_rx),
        Cmd::Chaos {
            duration,
            seed,
            members,
        } => run_chaos(&duration, seed, members),
        Cmd::BenchAuthority { quick } => bench::authority::run_alone(quick, &interrupt_rx),
        Cmd::GoPeer => provision_go_peer().map(|peer| {
            println!("{}", peer.display());
            ExitCode::SUCCESS
        }),
        Cmd::Bench { quick, only } => bench::run(quick, &only, &interrupt_rx),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

fn run_etcd(
    members: usize,
    default_elections: bool,
    version: Option<&str>,
    interrupt: &mpsc::Receiver<()>,
) -> Result<ExitCode> {
    if members > 1 {
        let bin = match version {
            Some(v) => etcd_provision::etcd_binary(v)?,
            None => etcd_provision::find_etcd_binary().ok_or(etcd_provision::HOW_TO_GET_ETCD)?,
        };
        eprintln!(
            "xtask: starting a {members}-member cluster of {}",
            etcd_label(&bin)
        );
        let timing = if default_elections {
            (100, 1000)
        } else {
            (10, 100)
        };
        let cluster = etcd_provision::Cluster::start_with_timing(&bin, members, timing)?;
        let leader = cluster.wait_for_leader(Duration::from_secs(10))?;
        println!("ETCD_ENDPOINTS={}", cluster.endpoints().join(","));
        eprintln!(
            "xtask: cluster running (leader {}, data in {}); Ctrl-C to stop",
            cluster.endpoint(leader),
            cluster.dir().display()
        );
        let _ = interrupt.recv();
        drop(cluster);
        eprintln!("xtask: cluster stopped");
        return Ok(ExitCode::SUCCESS);
    }
    let etcd = match version {
        Some(v) => Etcd::spawn(&etcd_provision::etcd_binary(v)?)?,
        None => Etcd::provision()?,
    };
    eprintln!("xtask: {}", etcd_summary(&etcd));
    println!("ETCD_ENDPOINTS={}", etcd.endpoints().join(","));
    eprintln!("xtask: etcd running; Ctrl-C to stop");
    let _ = interrupt.recv();
    drop(etcd);
    eprintln!("xtask: etcd stopped");
    Ok(ExitCode::SUCCESS)
}

/// etcd versions the compatibility phases of `cargo xtask test` run on,
/// after the whole suite on [`etcd_provision::DEFAULT_VERSION`].
const COMPAT_VERSIONS: [&str; 2] = ["3.4", "3.7"];

/// The compatibility subset, about 30 s of tests: registration (lease,
/// keepalive, re-register after restarts and lease loss), a watch canceled
/// by compaction and one that resumes past a compacted revision, member loss
/// (etcd-client over our member failover, then servers and clients in a
/// 3-member cluster). `(target kind, target name, test binary arguments)`:
/// the test binaries the whole suite built, run again (a `cargo test -p`
/// would resolve features for fewer packages and compile them all again).
const COMPAT_TESTS: [(&str, &str, &[&str]); 5] = [
    ("test", "registration", &[]),
    ("lib", "etcdlb_resolver", &["compaction"]),
    ("test", "resolve", &["compact"]),
    ("test", "members", &[]),
    ("test", "it", &["cluster::"]),
];

/// A test executable of the workspace, as `cargo test --no-run` names it.
struct TestBinary {
    /// `lib`, `test`, `bin`…
    kind: String,
    /// The target's name (`it`, `etcdlb_resolver`).
    name: String,
    path: PathBuf,
    /// Its package's directory: cargo runs tests there.
    package_dir: PathBuf,
}

/// The test executables of `cargo test --workspace` (`--no-run`,
/// `--message-format=json`), with the environment of the whole suite's
/// command (`suite`), so that nothing is built again.
fn test_binaries(mut suite: Command) -> Result<Vec<TestBinary>> {
    let out = suite
        .args(["--no-run", "--message-format=json"])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("cargo test --no-run failed ({})", out.status).into());
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(path), Some(manifest), Some(kind), Some(name)) = (
            msg["executable"].as_str(),
            msg["manifest_path"].as_str(),
            msg["target"]["kind"][0].as_str(),
            msg["target"]["name"].as_str(),
        ) else {
            continue;
        };
        if msg["profile"]["test"] != true {
            continue;
        }
        binaries.push(TestBinary {
            kind: kind.to_owned(),
            name: name.to_owned(),
            path: PathBuf::from(path),
            package_dir: Path::new(manifest)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        });
    }
    Ok(binaries)
}

/// The phases of `cargo xtask test`, timed: each is announced with the
/// time since the start, a failure names its phase, and the durations are
/// listed at the end, whether the run passed or not.
struct Phases {
    started: Instant,
    done: Vec<(String, Duration, bool)>,
}

impl Phases {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            done: Vec::new(),
        }
    }

    fn run<T>(&mut self, name: &str, phase: impl FnOnce() -> Result<T>) -> Result<T> {
        eprintln!("xtask: [{:>4} s] {name}", self.started.elapsed().as_secs());
        let started = Instant::now();
        let result = phase();
        self.done
            .push((name.to_owned(), started.elapsed(), result.is_ok()));
        result.map_err(|e| format!("{name}: {e}").into())
    }

    fn summary(&self) {
        eprintln!("xtask: phases:");
        for (name, took, ok) in &self.done {
            let verdict = if *ok { "ok" } else { "FAILED" };
            eprintln!(
                "xtask:   {:>6.1} s  {verdict:<6} {name}",
                took.as_secs_f64()
            );
        }
        eprintln!(
            "xtask:   {:>6.1} s  total",
            self.started.elapsed().as_secs_f64()
        );
    }
}

fn run_tests(extra: &[String]) -> Result<ExitCode> {
    let mut phases = Phases::new();
    let result = test_phases(&mut phases, extra);
    phases.summary();
    result.map(|()| ExitCode::SUCCESS)
}

/// `etcd 3.6.16 at http://… (where it came from)`.
fn etcd_summary(etcd: &Etcd) -> String {
    let version = etcd
        .binary()
        .and_then(|b| etcd_provision::binary_version(b).ok())
        .map(|v| format!(" {v}"))
        .unwrap_or_default();
    format!(
        "etcd{version} at {} ({})",
        etcd.endpoints().join(","),
        etcd.describe()
    )
}

/// `name (version, path)` of an etcd binary, for phase names.
fn etcd_label(bin: &Path) -> String {
    match etcd_provision::binary_version(bin) {
        Ok(v) => format!("etcd {v} ({})", bin.display()),
        Err(e) => format!("etcd {} (version unknown: {e})", bin.display()),
    }
}

fn test_phases(phases: &mut Phases, extra: &[String]) -> Result<()> {
    let protoc = ensure_protoc()?;
    // Style first: it fails in seconds where the tests take minutes.
    phases.run("style: cargo fmt --check, cargo clippy -D warnings", || {
        check_style(&protoc)
    })?;
    // The end-to-end tests run these binaries (they would build them too,
    // from inside the test; doing it here shows the compiler output).
    phases.run("build echo-server and echo-client", || {
        build_binaries(&protoc)
    })?;
    // The Go interop tests run them; the fixture takes them from GO_PEER and
    // GRPC_HEALTH_PROBE.
    let (go_peer, probe) =
        phases.run("Go programs: the interop peer, grpc-health-probe", || {
            let go_peer = provision_go_peer()?;
            let probe = go_provision::health_probe(&workspace_root().join("target"))?;
            Ok((go_peer, probe))
        })?;
    let version = std::env::var("ETCD_VERSION")
        .unwrap_or_else(|_| etcd_provision::DEFAULT_VERSION.to_owned());
    // A filtered run (`cargo xtask test -- NAME`) has no compatibility
    // phases. Their binaries are had up front, so that a version that cannot
    // be had fails the run before the long phase.
    let compat: &[&str] = if extra.is_empty() {
        &COMPAT_VERSIONS
    } else {
        &[]
    };
    let bins = phases.run(
        &format!(
            "etcd binaries: {} (built or cached in target/etcd/)",
            [version.as_str()]
                .iter()
                .chain(compat)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ),
        || {
            let mut bins = vec![(version.clone(), etcd_provision::etcd_binary(&version)?)];
            for v in compat {
                bins.push(((*v).to_owned(), etcd_provision::etcd_binary(v)?));
            }
            Ok(bins)
        },
    )?;
    let (_, etcd_bin) = &bins[0];
    let etcd = Etcd::spawn(etcd_bin)?;
    // The whole suite's command, also used to list its test binaries.
    let suite = |etcd: &Etcd| {
        let mut cmd = cargo();
        // Every failing test binary is reported, not only the first.
        cmd.args(["test", "--workspace", "--no-fail-fast"])
            .env("PROTOC", &protoc)
            .env("GO_PEER", &go_peer)
            .env("GRPC_HEALTH_PROBE", &probe)
            .env("ETCD_VERSION", &version)
            .env("ETCD_BIN", etcd_bin)
            .env("ETCD_ENDPOINTS", etcd.endpoints().join(","));
        cmd
    };
    phases.run(
        &format!("the whole suite on {}", etcd_label(etcd_bin)),
        || {
            let mut cmd = suite(&etcd);
            cmd.args(extra);
            eprintln!("xtask: running {cmd:?}");
            let status = cmd.status()?;
            if !status.success() {
                return Err(format!("cargo test failed ({status})").into());
            }
            Ok(())
        },
    )?;
    let binaries = if compat.is_empty() {
        Vec::new()
    } else {
        test_binaries(suite(&etcd))?
    };
    phases.run(
        "packaging the published crates and building the outside project on them",
        || {
            outside::package(&protoc)?;
            outside::build_and_run(&protoc, etcd.endpoints())
        },
    )?;
    drop(etcd);
    for (compat, bin) in &bins[1..] {
        phases.run(
            &format!("the compatibility subset on {}", etcd_label(bin)),
            || {
                let etcd = Etcd::spawn(bin)?;
                for (kind, name, args) in COMPAT_TESTS {
                    let test = binaries
                        .iter()
                        .find(|b| b.kind == kind && b.name == name)
                        .ok_or_else(|| {
                            format!("the whole suite built no {kind} test target named {name}")
                        })?;
                    eprintln!("xtask: {kind} {name} {}", args.join(" "));
                    let status = Command::new(&test.path)
                        .arg("--quiet")
                        .args(args)
                        .current_dir(&test.package_dir)
                        .env("CARGO_MANIFEST_DIR", &test.package_dir)
                        .env("PROTOC", &protoc)
                        .env("ETCD_VERSION", compat)
                        .env("ETCD_BIN", bin)
                        .env("ETCD_ENDPOINTS", etcd.endpoints().join(","))
                        .status()
                        .map_err(|e| format!("cannot run {}: {e}", test.path.display()))?;
                    if !status.success() {
                        return Err(
                            format!("{kind} {name} {} failed ({status})", args.join(" ")).into(),
                        );
                    }
                }
                Ok(())
            },
        )?;
    }
    Ok(())
}

/// `cargo fmt --all --check`, then `cargo clippy --workspace --all-targets
/// -- -D warnings`; a failure names the command that fixes or shows it.
/// Clippy type-checks the workspace (no code generation), so it adds a
/// check build's time to a cold run and seconds to a warm one.
fn check_style(protoc: &Path) -> Result<()> {
    eprintln!("xtask: cargo fmt --all --check");
    let status = cargo().args(["fmt", "--all", "--check"]).status()?;
    if !status.success() {
        return Err("the code is not formatted (the diff is above): run `cargo fmt --all`".into());
    }
    let clippy = [
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ];
    eprintln!("xtask: cargo {}", clippy.join(" "));
    let status = cargo().args(clippy).env("PROTOC", protoc).status()?;
    if !status.success() {
        return Err(format!(
            "clippy found problems (above): fix them, then check with `cargo {}`",
            clippy.join(" ")
        )
        .into());
    }
    Ok(())
}

/// `cargo build -p echo-server -p echo-client`, for the demo and the
/// end-to-end tests.
fn build_binaries(protoc: &Path) -> Result<()> {
    eprintln!("xtask: building echo-server and echo-client");
    let status = cargo()
        .args(["build", "-p", "echo-server", "-p", "echo-client"])
        .env("PROTOC", protoc)
        .status()?;
    if !status.success() {
        return Err(format!("cargo build -p echo-server -p echo-client failed ({status})").into());
    }
    Ok(())
}

fn run_chaos(duration: &str, seed: Option<u64>, members: u64) -> Result<ExitCode> {
    let protoc = ensure_protoc()?;
    eprintln!("xtask: building echo-server and chaos");
    let status = cargo()
        .args(["build", "-p", "echo-server", "-p", "chaos"])
        .env("PROTOC", &protoc)
        .status()?;
    if !status.success() {
        return Err(format!("cargo build -p echo-server -p chaos failed ({status})").into());
    }
    // The run kills and restarts its own etcd, so it needs a binary; on
    // Debian as root, provisioning installs one.
    let etcd_bin = match etcd_provision::find_etcd_binary() {
        Some(bin) => bin,
        None => {
            drop(provision_etcd()?);
            etcd_provision::find_etcd_binary().ok_or_else(|| {
                format!(
                    "chaos needs an etcd binary: {}",
                    etcd_provision::HOW_TO_GET_ETCD
                )
            })?
        }
    };
    let bin_dir = workspace_root().join("target/debug");
    let mut cmd = Command::new(bin_dir.join("chaos"));
    cmd.args(["--duration", duration])
        .args(["--members", &members.to_string()])
        .arg("--etcd-bin")
        .arg(&etcd_bin)
        .arg("--server-bin")
        .arg(bin_dir.join("echo-server"));
    if let Some(seed) = seed {
        cmd.args(["--seed", &seed.to_string()]);
    }
    let status = cmd.status()?;
    Ok(exit_code(status.code()))
}

/// Builds the Go peer into `target/go-peer/` (cached until its sources or
/// the Go version change), installing Go first when `go-provision` can.
pub(crate) fn provision_go_peer() -> Result<PathBuf> {
    eprintln!("xtask: building the Go peer (interop/go)");
    let peer = go_provision::go_peer(&workspace_root().join("target"))?;
    eprintln!("xtask: Go peer at {}", peer.display());
    Ok(peer)
}

/// The etcd quickest to get ([`Etcd::provision_quick`]: one at hand, else
/// Debian's package, else a build of 3.6), for the demo and for chaos
/// without a binary; says which one and where it came from.
fn provision_etcd() -> Result<Etcd> {
    eprintln!("xtask: provisioning etcd");
    let etcd = Etcd::provision_quick()?;
    eprintln!("xtask: {}", etcd_summary(&etcd));
    Ok(etcd)
}

/// Puts the vendored `protoc` at `target/tools/bin/protoc` (with its
/// well-known `.proto` files in `target/tools/include`, where protoc looks for
/// them relative to itself), which `.cargo/config.toml` points `PROTOC` at for
/// plain cargo commands. Returns the `PROTOC` to use: the user's own wins.
fn ensure_protoc() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PROTOC") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
    }
    let vendored = protoc_bin_vendored::protoc_bin_path()
        .map_err(|e| format!("no vendored protoc for this platform: {e}"))?;
    let include = protoc_bin_vendored::include_path()
        .map_err(|e| format!("no vendored protoc includes: {e}"))?;
    let tools = workspace_root().join("target/tools");
    let dest = tools.join("bin/protoc");
    if !dest.is_file()
        || !tools
            .join("include/google/protobuf/descriptor.proto")
            .is_file()
    {
        eprintln!(
            "xtask: installing the vendored protoc at {}",
            dest.display()
        );
        copy_tree(&include, &tools.join("include"))?;
        std::fs::create_dir_all(tools.join("bin"))?;
        std::fs::copy(&vendored, &dest)
            .map_err(|e| format!("cannot copy protoc to {}: {e}", dest.display()))?;
    }
    Ok(dest)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn exit_code(code: Option<i32>) -> ExitCode {
    ExitCode::from(code.and_then(|c| u8::try_from(c).ok()).unwrap_or(1))
}
