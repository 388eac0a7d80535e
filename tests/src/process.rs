//! The real `echo-server` and `echo-client` binaries as child processes:
//! built once per test binary, spawned with piped output, read line by line
//! with timeouts, signalled by pid, and killed when dropped.

use std::{
    fmt,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        OnceLock,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

/// Generous limit for anything a test waits for, on 2 busy cores.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Path of a binary of this workspace (`echo-server`, `echo-client`), next
/// to the test executable's target directory.
///
/// The first call runs `cargo build -p echo-server -p echo-client` (a no-op
/// when `cargo xtask test` built them already), so a test never runs a
/// stale binary.
///
/// # Panics
/// When the build fails; the message has cargo's output.
pub fn bin_path(name: &str) -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DIR.get_or_init(build_binaries) {
        Ok(dir) => dir.join(name),
        Err(e) => panic!("{e}"),
    }
}

fn build_binaries() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate the test binary: {e}"))?;
    // target/<profile>/deps/it-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected test binary location {}", exe.display()))?
        .to_path_buf();
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| format!("unexpected target dir {}", profile_dir.display()))?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--quiet", "-p", "echo-server", "-p", "echo-client"])
        .env("CARGO_TARGET_DIR", target_dir);
    // Cargo sets these for the test process; build scripts that track one
    // (ring tracks CARGO_MANIFEST_DIR) would otherwise be rebuilt here, and
    // again by the next ordinary `cargo build`.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&key)
        {
            cmd.env_remove(key);
        }
    }
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(profile_dir)
}

/// Which output a [`Line`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Out,
    /// Standard error.
    Err,
}

/// One line of a child's output, with the time it was read.
#[derive(Clone, Debug)]
pub struct Line {
    /// stdout or stderr.
    pub stream: Stream,
    /// The text, without the newline.
    pub text: String,
    /// When the reader thread got it.
    pub at: Instant,
}

/// A running binary. Dropping it kills the process (SIGKILL) and reaps it.
pub struct Proc {
    name: String,
    child: Child,
    lines: Receiver<Line>,
    history: Vec<Line>,
    /// Index in `history` of the first line not yet consumed by a wait.
    cursor: usize,
    status: Option<ExitStatus>,
}

impl fmt::Debug for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proc")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Proc {
    /// Spawns the workspace binary `bin` with `args`, naming it `name` in
    /// messages. `RUST_LOG` is set to `info` unless the caller sets it.
    pub fn spawn(name: &str, bin: &str, args: &[&str]) -> Self {
        Self::spawn_with(name, bin, args, &[])
    }

    /// [`spawn`](Self::spawn) with extra environment variables.
    pub fn spawn_with(name: &str, bin: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_exe(name, &bin_path(bin), args, env)
    }

    /// [`spawn_with`](Self::spawn_with) for the executable at `path`, e.g. a
    /// binary of another package (`env!("CARGO_BIN_EXE_<name>")` in its
    /// tests).
    pub fn spawn_exe(name: &str, path: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(path);
        cmd.args(args)
            .env_remove("ETCD_ENDPOINTS")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        read_lines(out, Stream::Out, tx.clone());
        read_lines(err, Stream::Err, tx);
        Self {
            name: name.to_owned(),
            child,
            lines,
            history: Vec::new(),
            cursor: 0,
            status: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the next line (after those already consumed) that `pred`
    /// accepts and returns it; lines skipped on the way are consumed.
    ///
    /// # Panics
    /// After `timeout`, or when the process's output ends first; the message
    /// shows everything it printed.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Line) -> bool,
    ) -> Line {
        match self.try_wait_for(timeout, pred) {
            Ok(line) => line,
            Err(why) => {
                let transcript = self.transcript();
                panic!(
                    "{}: {why} waiting for {what}; its output:\n{transcript}",
                    self.name
                )
            }
        }
    }

    /// [`wait_for`](Self::wait_for) that returns why instead of panicking.
    pub fn try_wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Line) -> bool,
    ) -> Result<Line, &'static str> {
        let deadline = Instant::now() + timeout;
        loop {
            while self.cursor < self.history.len() {
                let line = &self.history[self.cursor];
                self.cursor += 1;
                if pred(line) {
                    return Ok(line.clone());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.history.push(line),
                Err(RecvTimeoutError::Timeout) => return Err("timed out"),
                Err(RecvTimeoutError::Disconnected) => return Err("output ended"),
            }
        }
    }

    /// Waits for a line on stderr containing `needle`.
    pub fn wait_log(&mut self, needle: &str) -> Line {
        self.wait_for(&format!("a log line with {needle:?}"), PATIENCE, |l| {
            l.stream == Stream::Err && l.text.contains(needle)
        })
    }

    /// Waits for the next line on stdout.
    pub fn next_stdout(&mut self) -> Line {
        self.wait_for("a line on stdout", PATIENCE, |l| l.stream == Stream::Out)
    }

    /// Marks every line read so far as consumed: later waits see only what
    /// the process prints from now on.
    pub fn skip_pending(&mut self) {
        self.drain_available();
        self.cursor = self.history.len();
    }

    /// Every line read so far (consumed or not).
    pub fn history(&self) -> &[Line] {
        &self.history
    }

    /// Reads what is available without waiting, into the history.
    pub fn drain_available(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.history.push(line);
        }
    }

    /// Lines on stderr so far (read now) that contain `needle`.
    pub fn count_stderr(&mut self, needle: &str) -> usize {
        self.drain_available();
        self.history
            .iter()
            .filter(|l| l.stream == Stream::Err && l.text.contains(needle))
            .count()
    }

    /// Everything printed so far, one line each, prefixed `out|` or `err|`.
    pub fn transcript(&mut self) -> String {
        self.drain_available();
        self.history
            .iter()
            .map(|l| match l.stream {
                Stream::Out => format!("  out| {}\n", l.text),
                Stream::Err => format!("  err| {}\n", l.text),
            })
            .collect()
    }

    /// Sends `signal` (e.g. `libc::SIGINT`) to the process.
    pub fn signal(&self, signal: i32) {
        send_signal(self.child.id(), signal);
    }

    /// Waits for the process to exit and for its output to end; returns its
    /// status.
    ///
    /// # Panics
    /// After `timeout`, showing its output.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if self.status.is_none() {
                match self.child.try_wait() {
                    Ok(Some(status)) => self.status = Some(status),
                    Ok(None) => {}
                    Err(e) => panic!("{}: cannot wait: {e}", self.name),
                }
            }
            if let Some(status) = self.status {
                // The output ends shortly after the exit.
                let left = deadline.saturating_duration_since(Instant::now());
                while let Ok(line) = self.lines.recv_timeout(left.min(Duration::from_secs(5))) {
                    self.history.push(line);
                }
                return status;
            }
            if Instant::now() > deadline {
                let transcript = self.transcript();
                panic!(
                    "{} did not exit within {timeout:?}; its output:\n{transcript}",
                    self.name
                );
            }
            self.drain_available();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.status.is_none() && matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lines(from: impl Read + Send + 'static, stream: Stream, tx: mpsc::Sender<Line>) {
    std::thread::spawn(move || {
        for text in BufReader::new(from).lines() {
            let Ok(text) = text else { break };
            let line = Line {
                stream,
                text,
                at: Instant::now(),
            };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

/// Sends `signal` to process `pid`.
#[allow(unsafe_code)]
pub fn send_signal(pid: u32, signal: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// An `echo-server` with the given id, env and etcd, waited for until it is
/// registered; returns it and its bound address.
pub fn start_server(id: &str, env: &str, etcd: &[String], extra: &[&str]) -> (Proc, String) {
    start_registered(
        &format!("server {id}"),
        id,
        env,
        etcd,
        extra,
        |name, args| Proc::spawn(name, "echo-server", args),
    )
}

/// Starts a server with `spawn(name, args)` (`--id`, `--env`, `--etcd` and
/// `extra` as args) and waits until it logged its bound address and its
/// registration under `env`: echo-server and the Go peer log the same two
/// lines. Returns it and that address.
///
/// # Panics
/// When either line does not come in time (with the server's output).
pub fn start_registered(
    name: &str,
    id: &str,
    env: &str,
    etcd: &[String],
    extra: &[&str],
    spawn: impl FnOnce(&str, &[&str]) -> Proc,
) -> (Proc, String) {
    let etcd = etcd.join(",");
    let mut args = vec!["--id", id, "--env", env, "--etcd", &etcd];
    args.extend_from_slice(extra);
    let mut server = spawn(name, &args);
    let listening = server.wait_log("listening on ");
    let addr = listening
        .text
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {:?}", listening.text))
        .to_owned();
    server.wait_log(&format!("registered discovery/{env}/game/{addr}"));
    (server, addr)
}

/// An `echo-client` on `env` and `etcd` with extra flags.
pub fn start_client(name: &str, env: &str, etcd: &[String], extra: &[&str]) -> Proc {
    let etcd = etcd.join(",");
    let mut args = vec!["--env", env, "--etcd", &etcd];
    args.extend_from_slice(extra);
    Proc::spawn(name, "echo-client", &args)
}

/// The instance id of a reply `hi (from 1)`.
pub fn from_id(reply: &str) -> Option<&str> {
    reply.rsplit_once("(from ")?.1.strip_suffix(')')
}

/// Parses load mode's final lines into `(summary fields, per-instance
/// counts)`, e.g. `{"ok": 10, "errs": 0, …}` and `{"1": 5, "2": 5}`.
///
/// # Panics
/// When a line is missing or malformed.
pub fn parse_load_output(
    proc: &mut Proc,
) -> (
    std::collections::BTreeMap<String, u64>,
    std::collections::BTreeMap<String, u64>,
) {
    let out: Vec<String> = proc
        .history()
        .iter()
        .filter(|l| l.stream == Stream::Out)
        .map(|l| l.text.clone())
        .collect();
    let transcript = proc.transcript();
    let field_map = |line: &str| {
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                let v = v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad number in {line:?}:\n{transcript}"));
                (k.to_owned(), v)
            })
            .collect()
    };
    let summary = out
        .iter()
        .find(|l| l.starts_with("rps="))
        .unwrap_or_else(|| panic!("no rps= line:\n{transcript}"));
    let per = out
        .iter()
        .find(|l| l.starts_with("per_instance"))
        .unwrap_or_else(|| panic!("no per_instance line:\n{transcript}"));
    (field_map(summary), field_map(per))
}
