//! The echo client: discovers servers through `resolver`, balances calls over
//! them through `balancer`, and has a load mode.
//!
//! [`Client`] follows `discovery/<env>/<service>` in etcd and sends each
//! `UnaryEcho` call to a READY instance — round robin, or the policy of
//! [`Config::lb`] (least request, ring hash of [`Config::hash_key`]) — or to
//! the instance named by [`Config::id`] (sticky, with a
//! [`Fallback`](balancer::Fallback), whatever the policy).
//! [`load`] runs a closed loop of concurrent calls and returns a
//! [`LoadReport`] with a latency histogram and per-instance counts.
//!
//! Must not depend on the registry.
//!
//! # Library
//!
//! ```no_run
//! use echo_client::{Client, Config};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect(Config {
//!     etcd: vec!["http://127.0.0.1:2379".into()],
//!     id: Some("1".into()), // every call to instance 1; None for round robin
//!     ..Config::default()
//! })
//! .await?;
//! client.wait_for_instances().await; // logs "waiting for instances of discovery/dev/game"
//! println!("{}", client.echo("hi").await?); // "hi (from 1)"
//!
//! let report = echo_client::load(&client, "hi", 16, std::time::Duration::from_secs(5)).await;
//! println!("{report}"); // per_instance 1=… / rps=… ok=… errs=… p50_us=… p99_us=…
//! # Ok(())
//! # }
//! ```
//!
//! # Command line
//!
//! ```text
//! echo-client [--id <ID>] [--env dev] [--service game] [--etcd URL]...
//!             [--message hi] [--interval 1s] [--count N] [--fallback rr|fail]
//!             [--lb round-robin|least-request|ring-hash] [--hash-key KEY [--hash-header NAME]]
//!             [--etcd-ca PEM [--etcd-cert PEM --etcd-key PEM]] [--etcd-user USER]
//!             [--tls-ca PEM [--tls-domain NAME]]
//! echo-client --concurrency C --duration D [same options]
//! ```
//!
//! | flag | default | meaning |
//! |---|---|---|
//! | `--id` | none | pin every call to this instance id |
//! | `--env`, `--service` | `dev`, `game` | key prefix `discovery/<env>/<service>` |
//! | `--etcd` | `http://127.0.0.1:2379`, or `ETCD_ENDPOINTS` (comma list) | etcd URLs, repeatable |
//! | `--message` | `hi` | message sent |
//! | `--interval` | `1s` | pause between calls |
//! | `--count` | unlimited | number of calls, then exit 0 |
//! | `--health-check [SERVICE]` | off | watch grpc.health.v1 for SERVICE (default `grpc.examples.echo.Echo`) on every server; NOT_SERVING ones get no new calls |
//! | `--fallback` | `rr` | sticky call to an unavailable instance: `rr` (where `--lb` picks) or `fail` |
//! | `--lb` | `round-robin` | policy of the calls that are not sticky: `round-robin`, `least-request` (fewest outstanding of two random instances), `ring-hash` (consistent hash of `--hash-key`) |
//! | `--hash-key` | none | the key `ring-hash` hashes to pick the instance; required with it, refused with other policies |
//! | `--hash-header` | none | send `--hash-key` as this request header (e.g. `x-player-id`) and let ring hash read it there (gRFC A76): the same instance |
//! | `--concurrency`, `--duration` | off | load mode (both required) |
//! | `--etcd-ca` | none | PEM file of the CA that signed etcd's certificate; endpoints `https://` |
//! | `--etcd-cert`, `--etcd-key` | none | client certificate and key PEM files (etcd `--client-cert-auth`); both, with `--etcd-ca` |
//! | `--etcd-user` | none | etcd user; the password comes from env `ETCD_PASSWORD` only (no flag, never logged) |
//! | `--tls-ca` | none (plaintext) | call the servers over TLS, trusting this CA (PEM) |
//! | `--tls-domain` | host of each address | the name the servers' certificates must hold (with `--tls-ca`) |
//!
//! Each reply is printed on its own line on stdout (`hi (from 1)`). A failed
//! call prints `error: call failed: <code>: <message>` on stderr (followed
//! by `(<addr>: <why it cannot be used>)` for instances that are not
//! connected) and exits 1. Load mode prints two lines at the end,
//! `per_instance 1=<n> 2=<n>` then `rps=<n> ok=<n> errs=<n> p50_us=<n>
//! p99_us=<n>` (rps counts answered calls), and counts failed calls instead
//! of stopping. With no instance yet, the client logs `waiting for
//! instances of discovery/dev/game` once and proceeds when one appears;
//! meanwhile it logs, once per instance and reason, why an instance it found
//! cannot be used, e.g. `cannot use instance 127.0.0.1:41234 (id 1): the
//! server answered with TLS; this client is configured for plaintext (set a
//! TLS CA) (the server serves TLS: give the CA that signed its certificate
//! with --tls-ca)`. With etcd down it keeps retrying (with `--etcd-user` it
//! exits 1: a token is needed first); TLS settings or a user etcd rejects
//! end it at once with `error: cannot resolve <prefix> from etcd at <urls>:
//! …` and exit code 1. Each call is limited to 10 s. Logs go to stderr
//! (`RUST_LOG` respected, default `info`). A bad flag or value prints one
//! line and exits 2, e.g. `error: invalid value '0' for '--concurrency
//! <CONCURRENCY>': 0 is not in 1..10000`; PEM files are read and checked
//! while parsing, and `--etcd-user` without `ETCD_PASSWORD` is a usage
//! error too. `docs/bad-input.md` lists every message.

mod client;
mod load;

pub mod cli;

pub use cli_support::{EtcdAuth, Password};
pub use client::{
    Client, Config, DEFAULT_ETCD_ENDPOINT, Error, Lb, WAIT_LOG_GRACE, describe_status, instance_of,
};
pub use load::{LOGGED_ERRORS, LoadReport, load};
