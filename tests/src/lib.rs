//! Fixtures for the end-to-end tests: a real etcd, unique key prefixes, free
//! ports.
//!
//! [`etcd_endpoints`] gives the shared etcd: `ETCD_ENDPOINTS` when set (as
//! `cargo xtask test` does), otherwise one etcd started for this test binary
//! through `etcd-provision` (the same provisioning as `cargo xtask`). Tests
//! that must kill and restart etcd take a private [`EtcdProcess`] instead,
//! and tests of member failover a private N-member [`Cluster`] ([`cluster`]:
//! kill / restart a member, which member leads).
//! Without any etcd a test fails with a message saying how to get one.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

pub use etcd_provision::{Cluster, EtcdProcess, GrpcProxy};

pub mod go;
pub mod pki;
pub mod process;

/// Client URLs of the etcd shared by all tests of this binary.
///
/// # Panics
/// When no etcd can be provided; the message says how to get one.
pub fn etcd_endpoints() -> Vec<String> {
    static SHARED: OnceLock<Result<Vec<String>, String>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        if let Ok(list) = std::env::var("ETCD_ENDPOINTS") {
            return etcd_provision::Etcd::external(&list)
                .map(|e| e.endpoints().to_vec())
                .map_err(|e| e.to_string());
        }
        // Started from a thread that lives as long as the test binary: the
        // process is tied to its spawning thread and dies with the binary.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || match etcd_provision::Etcd::provision() {
            Ok(etcd) => {
                let _ = tx.send(Ok(etcd.endpoints().to_vec()));
                // Keep `etcd` alive until the process exits.
                loop {
                    std::thread::park();
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
            }
        });
        rx.recv()
            .unwrap_or_else(|_| Err("etcd provisioning thread died".into()))
    });
    match shared {
        Ok(endpoints) => endpoints.clone(),
        Err(e) => panic!(
            "this test needs etcd: {e}. Run `cargo xtask test`, which provisions one, \
             or set ETCD_ENDPOINTS."
        ),
    }
}

/// Connects an etcd client to the shared etcd.
pub async fn etcd_client() -> etcd_client::Client {
    connect(&etcd_endpoints()).await
}

/// Connects an etcd client to `endpoints`, panicking with the reason.
pub async fn connect(endpoints: &[String]) -> etcd_client::Client {
    match etcd_client::Client::connect(endpoints, None).await {
        Ok(c) => c,
        Err(e) => panic!("cannot connect to etcd at {endpoints:?}: {e}"),
    }
}

/// A key prefix no other test (or test run) uses, e.g.
/// `test/registry_put/1234-7-1700000000000`.
pub fn unique_prefix(test: &str) -> String {
    format!("test/{test}/{}", unique_suffix())
}

/// An `--env` value no other test (or test run) uses, e.g.
/// `t1234-7-1700000000000-sigint`, so that `discovery/<env>/game` is empty
/// at the start of the test.
pub fn unique_env(test: &str) -> String {
    format!("t{}-{test}", unique_suffix())
}

/// `<pid>-<counter>-<unix millis>`: unique within this process and across
/// runs.
fn unique_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{}-{n}-{millis}", std::process::id())
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    etcd_provision::free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// A private etcd this test may kill and restart.
pub fn private_etcd() -> EtcdProcess {
    EtcdProcess::start_default().unwrap_or_else(|e| panic!("{e}"))
}

/// Starts the killed private `etcd` again, on a blocking thread so that the
/// runtime keeps running the code under test meanwhile; returns it once it
/// answers its health check.
///
/// # Panics
/// When etcd does not come back (the message says why).
pub async fn start_again(mut etcd: EtcdProcess) -> EtcdProcess {
    tokio::task::spawn_blocking(move || {
        etcd.start()
            .unwrap_or_else(|e| panic!("etcd did not start again: {e}"));
        etcd
    })
    .await
    .expect("the thread starting etcd")
}

/// A private local etcd cluster of `members` members on free ports, with
/// fast elections, that this test may kill and restart member by member
/// ([`Cluster::kill`], [`Cluster::restart`], [`Cluster::leader`]).
///
/// # Panics
/// Without an etcd binary (`ETCD_BIN` or `PATH`); the message says how to
/// get one.
pub fn cluster(members: usize) -> Cluster {
    Cluster::start_default(members).unwrap_or_else(|e| panic!("{e}"))
}
