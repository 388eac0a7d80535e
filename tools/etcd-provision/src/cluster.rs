//! A local N-member etcd cluster on free loopback ports, whose members can be
//! killed and restarted one by one, and which tells which member leads.
//!
//! Members are started with fast election settings (`--heartbeat-interval=10
//! --election-timeout=100`), so a new leader is elected within a few hundred
//! milliseconds of the old one's death: fine for tests and the chaos run,
//! too tight for a busy production network.
//!
//! Leadership is read from etcd's gRPC gateway (`POST /v3/maintenance/status`,
//! plain HTTP/1.1 JSON), because this crate must not depend on `etcd-client`.
//!
//! ```no_run
//! use etcd_provision::Cluster;
//!
//! let mut cluster = Cluster::start_default(3).expect("a 3-member etcd");
//! println!("ETCD_ENDPOINTS={}", cluster.endpoints().join(","));
//! let leader = cluster.wait_for_leader(std::time::Duration::from_secs(5)).expect("a leader");
//! cluster.kill(leader); // SIGKILL, as a crash
//! cluster.restart(leader).expect("back");
//! ```

use std::{
    io::{self, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::{
    DIR_PREFIX, Error, HOW_TO_GET_ETCD, MemberSpec, connect, die_with_parent, find_etcd_binary,
    free_port, sweep_stale_dirs, wait_healthy,
};

/// Heartbeat and election timeout (ms) for tests: a new leader within a few
/// hundred milliseconds.
const FAST_TIMING: (u64, u64) = (10, 100);

/// One member's fixed identity: its name, ports and data dir survive
/// restarts.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// A local etcd cluster of N members (see the module docs).
///
/// Dropping it kills every member and removes the data dirs. Members are
/// spawned from a thread the cluster owns, so they are tied to the cluster's
/// lifetime rather than to whichever thread asked for a restart (on Linux a
/// child dies with the thread that spawned it).
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    /// `--heartbeat-interval` and `--election-timeout`, in ms.
    timing: (u64, u64),
    dir: tempfile::TempDir,
    members: Vec<Member>,
    spawner: Spawner,
}

impl Cluster {
    /// Starts `members` members of `bin` on free ports and waits until every
    /// one is healthy (the cluster has a leader).
    pub fn start(bin: &Path, members: usize) -> Result<Self, Error> {
        Self::start_with_timing(bin, members, FAST_TIMING)
    }

    /// Like [`start`](Self::start) with etcd's `--heartbeat-interval` and
    /// `--election-timeout` (ms) instead of the fast ones. On a loaded
    /// machine the fast settings make a member that misses a few heartbeats
    /// call elections; etcd's defaults, `(100, 1000)`, do not.
    pub fn start_with_timing(
        bin: &Path,
        members: usize,
        (heartbeat_ms, election_ms): (u64, u64),
    ) -> Result<Self, Error> {
        let timing = (heartbeat_ms, election_ms);
        if members == 0 {
            return Err(Error::new("a cluster needs at least one member"));
        }
        let parent = std::env::temp_dir();
        sweep_stale_dirs(&parent);
        let mut last = None;
        // Ports were free a moment ago; another process may take one before
        // etcd binds it, so try a few times with fresh ones.
        for _ in 0..3 {
            match Self::try_start(bin, members, &parent, timing) {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::new("etcd cluster did not start")))
    }

    /// Finds a binary the way [`Etcd::provision`](crate::Etcd::provision)
    /// does (`ETCD_BIN`, then `PATH`) and starts `members` members of it.
    pub fn start_default(members: usize) -> Result<Self, Error> {
        let bin = find_etcd_binary().ok_or_else(|| {
            Error::new(format!(
                "an etcd cluster needs an etcd binary (ETCD_BIN or PATH): {HOW_TO_GET_ETCD}"
            ))
        })?;
        Self::start(&bin, members)
    }

    fn try_start(bin: &Path, n: usize, parent: &Path, timing: (u64, u64)) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-cluster-", std::process::id()))
            .tempdir_in(parent)
            .map_err(|e| Error::new(format!("cannot create a temp dir for etcd: {e}")))?;
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            members.push(Member {
                name: format!("m{i}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                child: None,
            });
        }
        let mut cluster = Self {
            bin: bin.to_path_buf(),
            timing,
            dir,
            members,
            spawner: Spawner::new()?,
        };
        // All members must run before any can be healthy: health needs a
        // leader, and a leader needs a quorum.
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_healthy(i)?;
        }
        Ok(cluster)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize) -> Result<(), Error> {
        if self.members[i].child.is_some() {
            return Ok(());
        }
        let m = &self.members[i];
        let spec = MemberSpec {
            name: &m.name,
            data_dir: self.dir.path().join(&m.name),
            client_port: m.client_port,
            peer_port: m.peer_port,
            initial_cluster: self.initial_cluster(),
            token: Some(format!("etcd-provision-{}", self.members[0].peer_port)),
            timing: self.timing,
        };
        let cmd = spec.command(&self.bin, &self.log_path(i))?;
        let child = self
            .spawner
            .spawn(cmd)
            .map_err(|e| Error::new(format!("cannot run {}: {e}", self.bin.display())))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    fn wait_healthy(&mut self, i: usize) -> Result<(), Error> {
        let who = format!(
            "etcd member {} ({})",
            self.members[i].name,
            self.bin.display()
        );
        let (log_path, port) = (self.log_path(i), self.members[i].client_port);
        wait_healthy(&mut self.members[i].child, port, &who, &log_path)
    }

    /// How many members the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members (never: [`start`](Self::start)
    /// refuses 0).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's client URL, in member order, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Member `i`'s client URL.
    ///
    /// # Panics
    /// When `i` is not a member index.
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client_url()
    }

    /// Member `i`'s process id while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Whether member `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// The directory holding every member's data dir and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills member `i` with SIGKILL (as a crash would) and waits for it to
    /// exit; its data dir is kept for [`restart`](Self::restart).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its ports and data dir and waits until it
    /// is healthy, i.e. back in a cluster that has a leader. A no-op for a
    /// running member.
    pub fn restart(&mut self, i: usize) -> Result<(), Error> {
        self.spawn(i)?;
        self.wait_healthy(i)
    }

    /// Starts member `i` again without waiting for it: for bringing back
    /// several members of a cluster that lost its quorum, none of which can
    /// be healthy alone. Follow with [`wait_healthy_all`](Self::wait_healthy_all).
    pub fn start_member(&mut self, i: usize) -> Result<(), Error> {
        self.spawn(i)
    }

    /// Waits until every running member is healthy.
    pub fn wait_healthy_all(&mut self) -> Result<(), Error> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_some() {
                self.wait_healthy(i)?;
            }
        }
        Ok(())
    }

    /// The index of the member that is the leader now, as the running
    /// members see it; `None` when none of them knows a leader (or the one
    /// they name is not a member of this cluster).
    pub fn leader(&self) -> Option<usize> {
        let mut ids = vec![None; self.members.len()];
        let mut named = None;
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let Ok(status) = member_status(&format!("127.0.0.1:{}", m.client_port)) else {
                continue;
            };
            ids[i] = Some(status.member_id);
            if status.leader != 0 {
                named = Some(status.leader);
            }
        }
        let leader = named?;
        ids.iter().position(|id| *id == Some(leader))
    }

    /// Waits (polling every 10 ms) until a running member is the leader.
    pub fn wait_for_leader(&self, limit: Duration) -> Result<usize, Error> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = self.leader() {
                return Ok(i);
            }
            if Instant::now() > deadline {
                return Err(Error::new(format!(
                    "no member of the etcd cluster became leader within {limit:?}"
                )));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Makes member `to` the leader (etcd's MoveLeader, asked of the current
    /// leader through the JSON gateway) and waits until it is.
    pub fn move_leader(&self, to: usize) -> Result<(), Error> {
        let limit = Duration::from_secs(10);
        let leader = self.wait_for_leader(limit)?;
        if leader == to {
            return Ok(());
        }
        let host = |i: usize| format!("127.0.0.1:{}", self.members[i].client_port);
        let target = member_status(&host(to))
            .map_err(|e| Error::new(format!("member {to} does not answer: {e}")))?
            .member_id;
        post(
            &host(leader),
            "/v3/maintenance/transfer-leadership",
            &format!(r#"{{"targetID":"{target}"}}"#),
        )
        .map_err(|e| Error::new(format!("moving the leadership to member {to}: {e}")))?;
        let deadline = Instant::now() + limit;
        while self.leader() != Some(to) {
            if Instant::now() > deadline {
                return Err(Error::new(format!(
                    "member {to} did not become leader within {limit:?}"
                )));
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// A running member that is not the leader, if there is one.
    pub fn follower(&self) -> Option<usize> {
        let leader = self.leader();
        (0..self.members.len()).find(|&i| self.is_running(i) && Some(i) != leader)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// What `/v3/maintenance/status` says about a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// This member's id.
    pub member_id: u64,
    /// The id of the leader it knows, 0 for none.
    pub leader: u64,
}

/// Asks the member at `host_port` (its client port) for its id and the
/// leader it knows, through etcd's JSON gateway (plain HTTP/1.1).
pub fn member_status(host_port: &str) -> io::Result<MemberStatus> {
    let response = post(host_port, "/v3/maintenance/status", "{}")?;
    let bad = || io::Error::other(format!("unexpected status answer: {response:.200}"));
    // The gateway writes 64-bit ids as JSON strings: "member_id":"1234".
    let member_id = json_u64(&response, "member_id").ok_or_else(bad)?;
    let leader = json_u64(&response, "leader").unwrap_or(0);
    Ok(MemberStatus { member_id, leader })
}

/// POSTs a JSON `body` to etcd's gateway; the whole response, or an error
/// for a status other than 200.
fn post(host_port: &str, path: &str, body: &str) -> io::Result<String> {
    let mut stream = connect(host_port)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {host_port}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(io::Error::other(format!(
            "{path}: {}",
            response.lines().last().unwrap_or("no answer")
        )));
    }
    Ok(response)
}

/// The number after `"field":` (quoted or not) in a flat JSON text.
fn json_u64(text: &str, field: &str) -> Option<u64> {
    let pattern = format!("\"{field}\":");
    let at = text.find(&pattern)? + pattern.len();
    let rest = text[at..].trim_start().trim_start_matches('"');
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A thread that spawns children for the cluster and lives as long as it,
/// so a member does not die with a short-lived caller thread.
#[derive(Debug)]
struct Spawner {
    jobs: Option<mpsc::Sender<(Command, mpsc::Sender<io::Result<Child>>)>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Spawner {
    fn new() -> Result<Self, Error> {
        let (tx, rx) = mpsc::channel::<(Command, mpsc::Sender<io::Result<Child>>)>();
        let thread = thread::Builder::new()
            .name("etcd-cluster-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    die_with_parent(&mut cmd);
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map_err(|e| Error::new(format!("cannot start the etcd spawner thread: {e}")))?;
        Ok(Self {
            jobs: Some(tx),
            thread: Some(thread),
        })
    }

    fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let (reply_tx, reply_rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("spawner stopped"))?
            .send((cmd, reply_tx))
            .map_err(|_| io::Error::other("spawner thread is gone"))?;
        reply_rx
            .recv()
            .map_err(|_| io::Error::other("spawner thread is gone"))?
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_quoted_or_not() {
        let text = r#"{"header":{"cluster_id":"1","member_id":"10276657743932975437","revision":"1"},"leader":"42","raftIndex":"8"}"#;
        assert_eq!(json_u64(text, "member_id"), Some(10276657743932975437));
        assert_eq!(json_u64(text, "leader"), Some(42));
        assert_eq!(json_u64(r#"{"leader": 7}"#, "leader"), Some(7));
        assert_eq!(json_u64(text, "absent"), None);
    }
}
