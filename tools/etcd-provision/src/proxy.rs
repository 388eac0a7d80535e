//! [`GrpcProxy`]: `etcd grpc-proxy start` in front of a cluster, the fan-out
//! tier for fleets whose clients outgrow direct watches.

use std::{
    fs::File,
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::{Error, free_port, health};

/// An `etcd grpc-proxy` on a free loopback port, killed when dropped.
#[derive(Debug)]
pub struct GrpcProxy {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl GrpcProxy {
    /// Starts `bin grpc-proxy start --endpoints <members> --listen-addr
    /// 127.0.0.1:<free port>` and waits until it answers `/health` (which it
    /// proxies to the cluster).
    pub fn start(bin: &Path, members: &[String]) -> Result<Self, Error> {
        let port = free_port()?;
        let dir = tempfile::Builder::new()
            .prefix("etcd-grpc-proxy-")
            .tempdir()
            .map_err(|e| Error::new(format!("cannot create a temp dir: {e}")))?;
        let log = File::create(dir.path().join("proxy.log"))
            .map_err(|e| Error::new(format!("cannot create the proxy's log: {e}")))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::new(format!("cannot open the proxy's log: {e}")))?;
        let members: Vec<&str> = members
            .iter()
            .map(|m| m.trim_start_matches("http://"))
            .collect();
        let child = crate::etcd_command(bin)
            .args(["grpc-proxy", "start"])
            .arg(format!("--endpoints={}", members.join(",")))
            .arg(format!("--listen-addr=127.0.0.1:{port}"))
            // The proxy dials its own advertised address (its health
            // check); the default, 127.0.0.1:23790, is somebody else's.
            .arg(format!("--advertise-client-url=127.0.0.1:{port}"))
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| Error::new(format!("cannot start {} grpc-proxy: {e}", bin.display())))?;
        let mut proxy = Self {
            child: Some(child),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let host_port = format!("127.0.0.1:{port}");
        loop {
            if health(&host_port).is_ok() {
                return Ok(proxy);
            }
            if let Some(Ok(Some(status))) = proxy.child.as_mut().map(Child::try_wait) {
                return Err(Error::new(format!(
                    "etcd grpc-proxy exited ({status}); its log: {}",
                    std::fs::read_to_string(proxy.dir.path().join("proxy.log")).unwrap_or_default()
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::new(
                    "etcd grpc-proxy did not answer /health within 15 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its client URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for GrpcProxy {
    fn drop(&mut self) {
        self.kill();
    }
}
