//! `cargo xtask demo`: the seed scenario with real processes.
//!
//! client started first (waits) → server 1 (client proceeds on 1) → server 2
//! (client alternates 1 and 2) → a sticky `--id 1` client (only 1) → SIGINT
//! to server 2 (it drains and exits 0; the first client goes on, on 1,
//! without a single error). Every child's output is shown as it comes,
//! prefixed with its name; each step prints a verdict. Every process started
//! here is killed on the way out, on failure and on Ctrl-C too.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    time::{Duration, Instant},
};

use crate::{Result, build_binaries, ensure_protoc, provision_etcd, workspace_root};

/// How long any single expectation may take.
const PATIENCE: Duration = Duration::from_secs(15);
/// Pause between two calls of the demo's clients.
const INTERVAL: &str = "200ms";

pub(crate) fn run(interrupt: &Receiver<()>) -> Result<ExitCode> {
    let protoc = ensure_protoc()?;
    let etcd = provision_etcd()?;
    build_binaries(&protoc)?;
    let bin_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("debug");
    // A fresh etcd of ours is empty: use the seed's prefix. Someone else's
    // etcd may hold discovery/dev/game already: use a prefix of our own.
    let env = if std::env::var_os("ETCD_ENDPOINTS").is_some() {
        format!("demo-{}", std::process::id())
    } else {
        "dev".to_owned()
    };
    let mut demo = Demo::new(interrupt, &bin_dir, etcd.endpoints().join(","), env);
    let started = Instant::now();
    let passed = demo.play();
    demo.stop_all();
    drop(demo);
    drop(etcd);
    println!(
        "demo: {passed}/{} steps passed in {:.1} s",
        STEPS.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(if passed == STEPS.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

const STEPS: [&str; 5] = [
    "a client started first waits for instances",
    "server 1 starts: the client proceeds, on 1",
    "server 2 starts: the client alternates between 1 and 2",
    "a client with --id 1 reaches only 1",
    "SIGINT to server 2: it drains and exits 0; the first client goes on, on 1, without an error",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Out,
    Err,
}

enum Event {
    Line {
        name: String,
        stream: Stream,
        text: String,
    },
}

struct Proc {
    name: String,
    child: Child,
    /// Lines not yet looked at by an expectation.
    pending: VecDeque<(Stream, String)>,
    /// Every line, for the final checks.
    all: Vec<(Stream, String)>,
}

struct Demo<'a> {
    interrupt: &'a Receiver<()>,
    bin_dir: PathBuf,
    etcd: String,
    env: String,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    procs: Vec<Proc>,
    interrupted: bool,
}

type Step = std::result::Result<String, String>;

impl<'a> Demo<'a> {
    fn new(interrupt: &'a Receiver<()>, bin_dir: &Path, etcd: String, env: String) -> Self {
        let (tx, rx) = mpsc::channel();
        Self {
            interrupt,
            bin_dir: bin_dir.to_path_buf(),
            etcd,
            env,
            tx,
            rx,
            procs: Vec::new(),
            interrupted: false,
        }
    }

    /// Plays the steps in order, printing a verdict for each; stops at the
    /// first failure. Returns how many passed.
    fn play(&mut self) -> usize {
        println!(
            "demo: etcd {}, prefix discovery/{}/game",
            self.etcd, self.env
        );
        let mut passed = 0;
        for (i, title) in STEPS.iter().enumerate() {
            println!("\n=== step {}: {title}", i + 1);
            let result = match i {
                0 => self.step_client_waits(),
                1 => self.step_server_1(),
                2 => self.step_server_2(),
                3 => self.step_sticky_client(),
                _ => self.step_drain_server_2(),
            };
            match result {
                Ok(detail) => {
                    println!("=== step {}: PASS: {detail}", i + 1);
                    passed += 1;
                }
                Err(why) => {
                    println!("=== step {}: FAIL: {why}", i + 1);
                    for (j, title) in STEPS.iter().enumerate().skip(i + 1) {
                        println!("=== step {}: SKIPPED: {title}", j + 1);
                    }
                    break;
                }
            }
        }
        println!();
        passed
    }

    fn step_client_waits(&mut self) -> Step {
        self.spawn("client", "echo-client", &["--interval", INTERVAL])?;
        let needle = format!("waiting for instances of discovery/{}/game", self.env);
        self.expect("client", &needle, |s, l| {
            s == Stream::Err && l.contains(&needle)
        })?;
        Ok("the client logged that it is waiting".into())
    }

    fn step_server_1(&mut self) -> Step {
        self.spawn("server 1", "echo-server", &["--id", "1"])?;
        self.expect("server 1", "its registration", |s, l| {
            s == Stream::Err && l.contains("registered discovery/")
        })?;
        let reply = self.expect_reply("client")?;
        if reply != "hi (from 1)" {
            return Err(format!("expected \"hi (from 1)\", got {reply:?}"));
        }
        Ok(format!("first reply {reply:?}"))
    }

    fn step_server_2(&mut self) -> Step {
        self.spawn("server 2", "echo-server", &["--id", "2"])?;
        self.expect("server 2", "its registration", |s, l| {
            s == Stream::Err && l.contains("registered discovery/")
        })?;
        self.expect("client", "a reply from 2", |s, l| {
            s == Stream::Out && l == "hi (from 2)"
        })?;
        let ids = self.next_ids("client", 6)?;
        let alternates =
            ids.windows(2).all(|w| w[0] != w[1]) && ids.iter().all(|id| id == "1" || id == "2");
        if !alternates {
            return Err(format!(
                "replies came from {ids:?}, not alternating 1 and 2"
            ));
        }
        Ok(format!("replies from {}", ids.join(" ")))
    }

    fn step_sticky_client(&mut self) -> Step {
        self.spawn(
            "sticky",
            "echo-client",
            &["--id", "1", "--interval", INTERVAL],
        )?;
        let ids = self.next_ids("sticky", 5)?;
        if ids.iter().any(|id| id != "1") {
            return Err(format!("replies came from {ids:?}, not only 1"));
        }
        Ok(format!("replies from {}", ids.join(" ")))
    }

    fn step_drain_server_2(&mut self) -> Step {
        self.signal("server 2", Signal::Int)?;
        let status = self.wait_exit("server 2")?;
        if !status.success() {
            return Err(format!("server 2 exited with {status}"));
        }
        // What the client printed before server 2 was gone is not the point.
        self.proc_mut("client")?.pending.clear();
        let ids = self.next_ids("client", 5)?;
        if ids.iter().any(|id| id != "1") {
            return Err(format!(
                "after the drain replies came from {ids:?}, not only 1"
            ));
        }
        let client = self.proc_mut("client")?;
        if let Ok(Some(status)) = client.child.try_wait() {
            return Err(format!("the client exited ({status})"));
        }
        let errors: Vec<_> = client
            .all
            .iter()
            .filter(|(s, l)| {
                *s == Stream::Err && (l.contains("call failed") || l.contains(" ERROR "))
            })
            .map(|(_, l)| l.clone())
            .collect();
        if !errors.is_empty() {
            return Err(format!("the client reported errors: {errors:?}"));
        }
        let replies = client.all.iter().filter(|(s, _)| *s == Stream::Out).count();
        Ok(format!(
            "server 2 exited 0; the client got {replies} replies and no error, the last from {}",
            ids.join(" ")
        ))
    }

    fn spawn(&mut self, name: &str, bin: &str, args: &[&str]) -> std::result::Result<(), String> {
        let path = self.bin_dir.join(bin);
        let mut cmd = Command::new(&path);
        cmd.args(["--env", &self.env, "--etcd", &self.etcd])
            .args(args)
            .env_remove("ETCD_ENDPOINTS")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown: Vec<_> = std::iter::once(bin.to_owned())
            .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
            .collect();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
        println!("[{name:<8}] $ {} (pid {})", shown.join(" "), child.id());
        if let Some(out) = child.stdout.take() {
            forward(name, Stream::Out, out, self.tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            forward(name, Stream::Err, err, self.tx.clone());
        }
        self.procs.push(Proc {
            name: name.to_owned(),
            child,
            pending: VecDeque::new(),
            all: Vec::new(),
        });
        Ok(())
    }

    fn proc_mut(&mut self, name: &str) -> std::result::Result<&mut Proc, String> {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| format!("no process named {name}"))
    }

    /// Receives (and prints) output for at most `limit`; fails on Ctrl-C.
    fn pump(&mut self, limit: Duration) -> std::result::Result<(), String> {
        if self.interrupt.try_recv().is_ok() {
            self.interrupted = true;
        }
        if self.interrupted {
            return Err("interrupted (Ctrl-C)".into());
        }
        match self.rx.recv_timeout(limit.min(Duration::from_millis(100))) {
            Ok(Event::Line { name, stream, text }) => {
                println!("[{name:<8}] {}", shorten_log(&text));
                if let Some(p) = self.procs.iter_mut().find(|p| p.name == name) {
                    p.pending.push_back((stream, text.clone()));
                    p.all.push((stream, text));
                }
                Ok(())
            }
            Err(RecvTimeoutError::Timeout) => Ok(()),
            Err(RecvTimeoutError::Disconnected) => Err("output channel closed".into()),
        }
    }

    /// Waits for a line of `name` that `pred` accepts; returns it.
    fn expect(
        &mut self,
        name: &str,
        what: &str,
        pred: impl Fn(Stream, &str) -> bool,
    ) -> std::result::Result<String, String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let p = self.proc_mut(name)?;
            while let Some((stream, line)) = p.pending.pop_front() {
                if pred(stream, &line) {
                    return Ok(line);
                }
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                // Let its last lines arrive before giving up.
                let grace = Instant::now() + Duration::from_millis(300);
                while Instant::now() < grace {
                    self.pump(Duration::from_millis(50))?;
                }
                let p = self.proc_mut(name)?;
                if let Some(line) = p.pending.drain(..).find(|(s, l)| pred(*s, l)) {
                    return Ok(line.1);
                }
                return Err(format!("{name} exited ({status}) before {what}"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no {what} from {name} within {PATIENCE:?}"));
            }
            self.pump(left)?;
        }
    }

    fn expect_reply(&mut self, name: &str) -> std::result::Result<String, String> {
        self.expect(name, "reply", |s, _| s == Stream::Out)
    }

    /// The instance ids of the next `n` replies of `name`.
    fn next_ids(&mut self, name: &str, n: usize) -> std::result::Result<Vec<String>, String> {
        (0..n)
            .map(|_| {
                let reply = self.expect_reply(name)?;
                reply
                    .rsplit_once("(from ")
                    .and_then(|(_, rest)| rest.strip_suffix(')'))
                    .map(str::to_owned)
                    .ok_or_else(|| format!("unexpected reply {reply:?}"))
            })
            .collect()
    }

    fn signal(&mut self, name: &str, signal: Signal) -> std::result::Result<(), String> {
        let p = self.proc_mut(name)?;
        println!("[{name:<8}] <- {}", signal.name());
        send_signal(p.child.id(), signal);
        Ok(())
    }

    fn wait_exit(&mut self, name: &str) -> std::result::Result<ExitStatus, String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self
                .proc_mut(name)?
                .child
                .try_wait()
                .map_err(|e| e.to_string())?
            {
                println!("[{name:<8}] exited: {status}");
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("{name} did not exit within {PATIENCE:?}"));
            }
            self.pump(Duration::from_millis(50))?;
        }
    }

    /// Stops servers with SIGINT (so they deregister), clients with SIGKILL,
    /// and anything still running after a while with SIGKILL.
    fn stop_all(&mut self) {
        for p in &mut self.procs {
            if matches!(p.child.try_wait(), Ok(None)) {
                let signal = if p.name.starts_with("server") && !self.interrupted {
                    Signal::Int
                } else {
                    Signal::Kill
                };
                println!("[{:<8}] <- {}", p.name, signal.name());
                send_signal(p.child.id(), signal);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && self
                .procs
                .iter_mut()
                .any(|p| matches!(p.child.try_wait(), Ok(None)))
        {
            if self.interrupted {
                std::thread::sleep(Duration::from_millis(50));
            } else if self.pump(Duration::from_millis(50)).is_err() {
                // Ctrl-C during the cleanup: stop waiting, kill below.
                break;
            }
        }
    }
}

impl Drop for Demo<'_> {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if matches!(p.child.try_wait(), Ok(None)) {
                let _ = p.child.kill();
            }
            let _ = p.child.wait();
        }
    }
}

fn forward(
    name: &str,
    stream: Stream,
    from: impl std::io::Read + Send + 'static,
    tx: Sender<Event>,
) {
    use std::io::BufRead;
    let name = name.to_owned();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines() {
            let Ok(text) = line else { break };
            let event = Event::Line {
                name: name.clone(),
                stream,
                text,
            };
            if tx.send(event).is_err() {
                break;
            }
        }
    });
}

/// `2026-01-01T12:00:00.123456Z  INFO target: msg` → `12:00:00.123 INFO target: msg`.
fn shorten_log(line: &str) -> String {
    let bytes = line.as_bytes();
    if bytes.len() > 27
        && bytes[4] == b'-'
        && bytes[10] == b'T'
        && let Some(z) = line.find('Z')
    {
        let time = &line[11..z.min(23)];
        return format!("{time} {}", line[z + 1..].trim_start());
    }
    line.to_owned()
}

#[derive(Clone, Copy)]
enum Signal {
    Int,
    Kill,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Self::Int => "SIGINT",
            Self::Kill => "SIGKILL",
        }
    }
}

#[allow(unsafe_code)]
fn send_signal(pid: u32, signal: Signal) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    let signal = match signal {
        Signal::Int => libc::SIGINT,
        Signal::Kill => libc::SIGKILL,
    };
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}
