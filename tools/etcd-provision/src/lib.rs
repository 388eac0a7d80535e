//! Finds or starts an etcd for development, tests, the demo and benchmarks.
//!
//! One job: hand back the client URL of a healthy etcd, and clean up whatever
//! was started for it. It is shared by `xtask` and the `integration-tests`
//! fixtures so provisioning is written once.
//!
//! It must not depend on `etcd-client` (even transitively): `etcd-client`'s
//! build script needs `protoc`, and `cargo xtask` is what provides `protoc`, so
//! xtask itself has to build without it. etcd is health-checked with a plain
//! HTTP/1.1 `GET /health` instead.
//!
//! The search order is [`Etcd::provision`]'s:
//! 1. `ETCD_ENDPOINTS` (comma-separated URLs) when set: used as is, after a
//!    health check;
//! 2. an `etcd` binary spawned on free loopback ports with a temporary data
//!    dir ([`find_etcd_binary`]): `ETCD_BIN`; else the version `ETCD_VERSION`
//!    names (default [`DEFAULT_VERSION`], 3.6): `3.6` and `3.7` are built
//!    from the Go module proxy (`tools/go/etcd-<version>`, a `main` calling
//!    `etcdmain.Main`) into `target/etcd/<version>/etcd` and cached there,
//!    `3.4` is Debian's `etcd-server`; else `etcd` on `PATH`;
//! 3. Docker (`quay.io/coreos/etcd`) when `docker info` answers;
//! 4. on Debian/Ubuntu as root, `apt-get install -y etcd-server` (announced on
//!    stderr), then 2.;
//! 5. otherwise an [`Error`] that names the ways to get one.
//!
//! ```no_run
//! let etcd = etcd_provision::Etcd::provision().expect("an etcd");
//! println!("etcd at {}", etcd.endpoints().join(","));
//! // Dropping `etcd` stops whatever was started and removes its data dir.
//! ```
//!
//! [`Etcd::provision_quick`] is the demo's: an etcd at hand (`ETCD_BIN`, a
//! 3.6 built before, `etcd` on `PATH`) before anything that builds, and
//! Debian's package (seconds) before a build of 3.6 (a minute from cold
//! caches). [`binary_version`] says which version a binary is.
//!
//! [`Cluster`] starts a local N-member cluster instead (tests of member
//! failover, `cargo xtask etcd --members 3`, the chaos run), with kill and
//! restart of one member and [`Cluster::leader`].

mod cluster;
mod proxy;

pub use cluster::{Cluster, MemberStatus, member_status};
pub use proxy::GrpcProxy;

use std::{
    env, fmt,
    fs::{self, File},
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The etcd version provisioned when `ETCD_VERSION` is not set: the one
/// users deploy today.
pub const DEFAULT_VERSION: &str = "3.6";

/// The versions [`etcd_binary`] can provide.
pub const VERSIONS: [&str; 3] = ["3.4", "3.6", "3.7"];

/// Docker image used when neither `ETCD_ENDPOINTS` nor an `etcd` binary is
/// available.
pub const DOCKER_IMAGE: &str = "quay.io/coreos/etcd:v3.5.17";

/// How long a freshly started etcd may take to answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Docker may have to pull the image first.
const DOCKER_START_TIMEOUT: Duration = Duration::from_secs(120);

/// Why no etcd could be provided. The message is one line meant for a human.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// What to tell a user who has no etcd at all.
pub const HOW_TO_GET_ETCD: &str = "no etcd found. Get one of: \
(1) a running etcd: set ETCD_ENDPOINTS=http://127.0.0.1:2379; \
(2) an etcd binary on PATH or in ETCD_BIN (Debian/Ubuntu: `apt-get install etcd-server`); \
(3) a Docker engine that can run quay.io/coreos/etcd";

/// A healthy etcd, and the means to stop it if we started it.
#[derive(Debug)]
pub struct Etcd {
    endpoints: Vec<String>,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    External,
    Process(EtcdProcess),
    Docker(DockerEtcd),
}

impl Etcd {
    /// Finds or starts an etcd, in the order given in the crate docs.
    pub fn provision() -> Result<Self, Error> {
        if let Ok(list) = env::var("ETCD_ENDPOINTS") {
            return Self::external(&list);
        }
        if let Some(bin) = find_etcd_binary() {
            return Self::spawn(&bin);
        }
        if docker_available() {
            eprintln!("etcd-provision: no etcd binary; starting {DOCKER_IMAGE} with Docker");
            let docker = DockerEtcd::start()?;
            return Ok(Self {
                endpoints: vec![docker.endpoint.clone()],
                backend: Backend::Docker(docker),
            });
        }
        if let Some(bin) = apt_install_etcd()? {
            return Self::spawn(&bin);
        }
        Err(Error::new(HOW_TO_GET_ETCD))
    }

    /// The etcd that is quickest to get, for the demo, where the version
    /// does not matter and a minute of building does: `ETCD_ENDPOINTS`, or
    /// the version `ETCD_VERSION` names, when set (as
    /// [`provision`](Self::provision)); else an etcd at hand
    /// ([`etcd_binary_at_hand`]); else, on Debian as root, the
    /// `etcd-server` package (3.4: seconds to install, where building 3.6
    /// from a cold Go cache takes about a minute); else as
    /// [`provision`](Self::provision).
    pub fn provision_quick() -> Result<Self, Error> {
        if env::var_os("ETCD_ENDPOINTS").is_some() || env::var_os("ETCD_VERSION").is_some() {
            return Self::provision();
        }
        if let Some(bin) = etcd_binary_at_hand() {
            return Self::spawn(&bin);
        }
        if let Some(bin) = apt_install_etcd()? {
            return Self::spawn(&bin);
        }
        Self::provision()
    }

    /// Uses an etcd somebody else runs; `list` is a comma-separated URL list.
    pub fn external(list: &str) -> Result<Self, Error> {
        let endpoints: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if endpoints.is_empty() {
            return Err(Error::new("ETCD_ENDPOINTS is set but empty"));
        }
        for url in &endpoints {
            check_reachable(url).map_err(|e| {
                Error::new(format!("ETCD_ENDPOINTS: {url} is not a usable etcd: {e}"))
            })?;
        }
        Ok(Self {
            endpoints,
            backend: Backend::External,
        })
    }

    /// Spawns the given etcd binary on free loopback ports.
    pub fn spawn(bin: &Path) -> Result<Self, Error> {
        let process = EtcdProcess::start_new(bin)?;
        Ok(Self {
            endpoints: vec![process.endpoint()],
            backend: Backend::Process(process),
        })
    }

    /// Client URLs, e.g. `["http://127.0.0.1:41234"]`.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The binary that was spawned, when this etcd is a local process.
    pub fn binary(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Process(p) => Some(&p.bin),
            _ => None,
        }
    }

    /// Where the etcd came from, for log lines.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::External => "ETCD_ENDPOINTS".to_string(),
            Backend::Process(p) => format!("{} (pid {})", p.bin.display(), p.pid().unwrap_or(0)),
            Backend::Docker(d) => format!("docker container {}", d.short_id()),
        }
    }
}

/// An etcd child process with a temporary data dir and fixed ports, which can
/// be killed and started again on the same data dir (to test restarts).
///
/// Dropping it kills the process and removes the data dir. On Linux the child
/// is also asked to die with the thread that spawned it, so a crashed test
/// run leaves no etcd behind.
#[derive(Debug)]
pub struct EtcdProcess {
    bin: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdProcess {
    /// Starts `bin` on free ports with a fresh data dir in the system's temp
    /// dir; retries with other ports if the chosen ones were taken meanwhile.
    pub fn start_new(bin: &Path) -> Result<Self, Error> {
        Self::start_new_in(bin, &env::temp_dir())
    }

    /// Like [`start_new`](Self::start_new), with the data dir under `parent`.
    ///
    /// Data dirs are named `etcd-provision-<pid>-…`; dirs left in `parent` by
    /// processes that no longer exist (a test binary that exited without
    /// running destructors) are removed first.
    pub fn start_new_in(bin: &Path, parent: &Path) -> Result<Self, Error> {
        sweep_stale_dirs(parent);
        let mut last = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
                .tempdir_in(parent)
                .map_err(|e| Error::new(format!("cannot create a temp dir for etcd: {e}")))?;
            let mut process = Self {
                bin: bin.to_path_buf(),
                dir,
                client_port: free_port()?,
                peer_port: free_port()?,
                child: None,
            };
            match process.start() {
                Ok(()) => return Ok(process),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::new("etcd did not start")))
    }

    /// Finds a binary the way [`Etcd::provision`] does and starts it.
    pub fn start_default() -> Result<Self, Error> {
        let bin = find_etcd_binary().ok_or_else(|| {
            Error::new(format!(
                "this test starts its own etcd and needs an etcd binary (ETCD_BIN or PATH): {HOW_TO_GET_ETCD}"
            ))
        })?;
        Self::start_new(&bin)
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The directory holding the data dir and etcd's log; removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts etcd (again) on the same ports and data dir and waits until it
    /// is healthy.
    pub fn start(&mut self) -> Result<(), Error> {
        if self.child.is_some() {
            return Ok(());
        }
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log_path = self.dir.path().join("etcd.log");
        let spec = MemberSpec {
            name: "default",
            data_dir: self.dir.path().join("data"),
            client_port: self.client_port,
            peer_port: self.peer_port,
            initial_cluster: format!("default={peer}"),
            token: None,
            // Fast elections: a restarted single node is leader in ~0.1 s.
            timing: (10, 100),
        };
        let mut cmd = spec.command(&self.bin, &log_path)?;
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| Error::new(format!("cannot run {}: {e}", self.bin.display())))?;
        self.child = Some(child);
        let started = wait_healthy(
            &mut self.child,
            self.client_port,
            &format!("etcd ({})", self.bin.display()),
            &log_path,
        );
        if started.is_err() {
            self.kill();
        }
        started
    }

    /// Kills etcd with SIGKILL (as a crash would) and waits for it to exit.
    /// The data dir is kept, so [`start`](Self::start) brings it back.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug)]
struct DockerEtcd {
    id: String,
    endpoint: String,
}

impl DockerEtcd {
    fn start() -> Result<Self, Error> {
        let port = free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let out = Command::new("docker")
            .args(["run", "-d", "--rm", "-p"])
            .arg(format!("127.0.0.1:{port}:2379"))
            .arg(DOCKER_IMAGE)
            .args([
                "etcd",
                "--listen-client-urls",
                "http://0.0.0.0:2379",
                "--advertise-client-urls",
            ])
            .arg(&url)
            .output()
            .map_err(|e| Error::new(format!("docker run failed: {e}")))?;
        if !out.status.success() {
            return Err(Error::new(format!(
                "docker run {DOCKER_IMAGE} failed: {}",
                first_line(&out.stderr)
            )));
        }
        let docker = Self {
            id: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            endpoint: url,
        };
        let deadline = Instant::now() + DOCKER_START_TIMEOUT;
        while health(&format!("127.0.0.1:{port}")).is_err() {
            if Instant::now() > deadline {
                return Err(Error::new(format!(
                    "etcd in docker container {} did not become healthy within {DOCKER_START_TIMEOUT:?}",
                    docker.short_id()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(docker)
    }

    fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

impl Drop for DockerEtcd {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

const DIR_PREFIX: &str = "etcd-provision-";

/// Removes `etcd-provision-<pid>-*` dirs whose process is gone (Linux: it
/// asks `/proc`; elsewhere nothing is swept).
fn sweep_stale_dirs(parent: &Path) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// `ETCD_BIN`; else [`etcd_binary`] of `ETCD_VERSION` (default
/// [`DEFAULT_VERSION`]); else `etcd` on `PATH`. A version that cannot be
/// had (no Go, no Go module proxy) is reported on stderr and skipped.
pub fn find_etcd_binary() -> Option<PathBuf> {
    if let Some(bin) = env::var_os("ETCD_BIN").filter(|b| !b.is_empty()) {
        return Some(PathBuf::from(bin));
    }
    let version = env::var("ETCD_VERSION").unwrap_or_else(|_| DEFAULT_VERSION.to_owned());
    match etcd_binary(&version) {
        Ok(bin) => return Some(bin),
        Err(e) => eprintln!("etcd-provision: no etcd {version}: {e}"),
    }
    find_on_path("etcd")
}

/// An etcd binary of `version`: `3.6` or `3.7` built with Go from
/// `tools/go/etcd-<version>` into `<target>/etcd/<version>/etcd` (cached
/// until its sources or the Go version change; on 2 cores about 55 s from
/// an empty Go module and build cache, 3.7 after 3.6 about 25 s, as they
/// share most packages; a line on stderr every 10 s meanwhile), `3.4`
/// Debian's `etcd-server` (installed with apt-get as root when missing).
pub fn etcd_binary(version: &str) -> Result<PathBuf, Error> {
    match version {
        "3.4" => {
            let debian = PathBuf::from("/usr/bin/etcd");
            if debian.is_file() {
                return Ok(debian);
            }
            apt_install_etcd()?.filter(|p| p.is_file()).ok_or_else(|| {
                Error::new(format!(
                    "etcd 3.4 is Debian's etcd-server: {HOW_TO_GET_ETCD}"
                ))
            })
        }
        "3.6" | "3.7" => {
            let target = target_dir();
            let out = built_path(version);
            let progress = Progress::start(version);
            let built = go_provision::build(
                &go_provision::tool_sources(&format!("etcd-{version}")),
                ".",
                &out,
                &target,
            );
            drop(progress);
            built.map_err(|e| Error::new(format!("cannot build etcd {version}: {e}")))
        }
        other => Err(Error::new(format!(
            "ETCD_VERSION={other}: expected one of {}",
            VERSIONS.join(", ")
        ))),
    }
}

/// Where [`etcd_binary`] builds a Go-built version: `<target>/etcd/<version>/etcd`.
fn built_path(version: &str) -> PathBuf {
    target_dir().join("etcd").join(version).join("etcd")
}

/// While a build runs, a line on stderr every [`PROGRESS_EVERY`]: a cold
/// build (modules downloaded, then compiled with an empty Go build cache)
/// says nothing for about a minute otherwise. A cached binary returns
/// before the first line is due, so nothing is printed then.
struct Progress {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often [`Progress`] reports.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    fn start(version: &str) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let version = version.to_owned();
        let started = Instant::now();
        let thread = std::thread::Builder::new()
            .name("etcd-build-progress".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(PROGRESS_EVERY)
                {
                    eprintln!(
                        "etcd-provision: still building etcd {version} ({} s; a first build \
                         downloads its Go modules and compiles them: a minute or more on 2 cores)",
                        started.elapsed().as_secs()
                    );
                }
            })
            .ok();
        Self {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The version an etcd binary reports (`etcd --version`'s first line),
/// e.g. `3.6.16`.
pub fn binary_version(bin: &Path) -> Result<String, Error> {
    let out = etcd_command(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::new(format!("cannot run {} --version: {e}", bin.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| {
            Error::new(format!(
                "{} --version did not say its version: {}",
                bin.display(),
                first_line(&out.stdout)
            ))
        })
}

/// An etcd binary that needs neither a build nor an install, for the demo:
/// `ETCD_BIN`; else a [`DEFAULT_VERSION`] built before in `target/etcd/`
/// (used as is, even when its sources changed since); else `etcd` on
/// `PATH` (on Debian, the `etcd-server` package's 3.4). `None` when none is
/// at hand.
pub fn etcd_binary_at_hand() -> Option<PathBuf> {
    if let Some(bin) = env::var_os("ETCD_BIN").filter(|b| !b.is_empty()) {
        return Some(PathBuf::from(bin));
    }
    Some(built_path(DEFAULT_VERSION))
        .filter(|p| p.is_file())
        .or_else(|| find_on_path("etcd"))
}

/// A command running `bin` without our `ETCD_*` settings in its
/// environment: etcd reads every `ETCD_<FLAG>` variable as a flag, so
/// `ETCD_VERSION=3.4` would make etcd 3.4 refuse to start ("invalid value
/// for ETCD_VERSION"), and `ETCD_ENDPOINTS` is no flag of the server.
pub fn etcd_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (name, _) in env::vars_os() {
        if name.to_string_lossy().starts_with("ETCD_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// `CARGO_TARGET_DIR`, else the workspace's `target/`.
fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            fs::canonicalize(&root).unwrap_or(root).join("target")
        })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn docker_available() -> bool {
    if find_on_path("docker").is_none() {
        return false;
    }
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// On Debian/Ubuntu as root, installs `etcd-server`. `Ok(None)` when this
/// machine is not one where that applies.
fn apt_install_etcd() -> Result<Option<PathBuf>, Error> {
    let debian = Path::new("/etc/debian_version").exists();
    if !debian || !is_root() || find_on_path("apt-get").is_none() {
        return Ok(None);
    }
    eprintln!("etcd-provision: no etcd found; installing Debian's etcd-server with apt-get");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "etcd-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        eprintln!("etcd-provision: apt-get install failed; running apt-get update and retrying");
        let _ = Command::new("apt-get")
            .args(["update", "-q"])
            .stdout(Stdio::null())
            .status();
        if !install() {
            return Err(Error::new(format!(
                "apt-get install etcd-server failed; {HOW_TO_GET_ETCD}"
            )));
        }
    }
    // The package may start its own service on the default port; we never use
    // it, our etcd runs on free ports with its own data dir.
    Some(PathBuf::from("/usr/bin/etcd"))
        .filter(|p| p.is_file())
        .or_else(|| find_on_path("etcd"))
        .map(Some)
        .ok_or_else(|| Error::new("apt-get installed etcd-server but no etcd binary was found"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Checks a URL: `/health` over HTTP/1.1 for `http://`, a TCP connect for
/// anything else (TLS endpoints cannot be checked without a TLS stack).
fn check_reachable(url: &str) -> io::Result<()> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let host_port = rest.split('/').next().unwrap_or(rest);
    if scheme == "http" {
        health(host_port)
    } else {
        connect(host_port).map(drop)
    }
}

fn connect(host_port: &str) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = host_port.to_socket_addrs()?.collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// `GET /health` on an etcd client port; `Ok` when it says `"health":"true"`.
pub fn health(host_port: &str) -> io::Result<()> {
    let mut stream = connect(host_port)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    if body.contains("\"health\":\"true\"") {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "/health did not say healthy: {}",
            body.lines().last().unwrap_or("")
        )))
    }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> Result<u16, Error> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::new(format!("cannot find a free loopback port: {e}")))
}

fn last_line(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)");
    line.chars().take(400).collect()
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// How to run one etcd member on loopback: what differs between a single
/// [`EtcdProcess`] and a [`Cluster`] member; the command line is built in
/// one place.
pub(crate) struct MemberSpec<'a> {
    pub(crate) name: &'a str,
    pub(crate) data_dir: PathBuf,
    pub(crate) client_port: u16,
    pub(crate) peer_port: u16,
    /// `--initial-cluster`: `name=peer-url,…` of every member.
    pub(crate) initial_cluster: String,
    /// `--initial-cluster-token`, so two clusters on one host never join.
    pub(crate) token: Option<String>,
    /// `--heartbeat-interval` and `--election-timeout`, in ms.
    pub(crate) timing: (u64, u64),
}

impl MemberSpec<'_> {
    /// The command: client and peer URLs on 127.0.0.1, a new cluster,
    /// stdin closed, stdout and stderr appended to `log_path` (kept across
    /// restarts, for [`last_line`] in errors).
    pub(crate) fn command(&self, bin: &Path, log_path: &Path) -> Result<Command, Error> {
        let cannot_open =
            |e: io::Error| Error::new(format!("cannot open {}: {e}", log_path.display()));
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(cannot_open)?;
        let log2 = log.try_clone().map_err(cannot_open)?;
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = etcd_command(bin);
        cmd.arg("--name")
            .arg(self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .args(["--initial-cluster-state", "new"]);
        if let Some(token) = &self.token {
            cmd.arg("--initial-cluster-token").arg(token);
        }
        cmd.arg("--heartbeat-interval")
            .arg(self.timing.0.to_string())
            .arg("--election-timeout")
            .arg(self.timing.1.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        Ok(cmd)
    }
}

/// Waits until the etcd on `client_port` reports healthy. Fails at once
/// when `child` exits (it is then `None`), and after [`START_TIMEOUT`];
/// `who` names it in the error, which ends with the log's last line.
pub(crate) fn wait_healthy(
    child: &mut Option<Child>,
    client_port: u16,
    who: &str,
    log_path: &Path,
) -> Result<(), Error> {
    let deadline = Instant::now() + START_TIMEOUT;
    let host_port = format!("127.0.0.1:{client_port}");
    loop {
        if health(&host_port).is_ok() {
            return Ok(());
        }
        if let Some(running) = child.as_mut()
            && let Ok(Some(status)) = running.try_wait()
        {
            *child = None;
            return Err(Error::new(format!(
                "{who} exited at start with {status}: {}",
                last_line(log_path)
            )));
        }
        if Instant::now() > deadline {
            return Err(Error::new(format!(
                "{who} did not become healthy within {START_TIMEOUT:?}: {}",
                last_line(log_path)
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asks the kernel to SIGKILL the child when the spawning thread exits, so a
/// test binary killed mid-run leaves no etcd behind.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}
