//! The echo client: discovers servers through `resolver`, balances calls over
//! them through `balancer`, and has a load mode.
//!
//! [`Client`] follows `discovery/<env>/<service>` in etcd and sends each
//! `UnaryEcho` call to a READY instance, round robin, or to the instance
//! named by [`Config::id`] (sticky, with a [`Fallback`](balancer::Fallback)).
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
//! | `--fallback` | `rr` | sticky call to an unavailable instance: `rr` (round robin) or `fail` |
//! | `--concurrency`, `--duration` | off | load mode (both required) |
//!
//! Each reply is printed on its own line on stdout (`hi (from 1)`). A failed
//! call prints `error: call failed: <code>: <message>` on stderr and exits 1.
//! Load mode prints two lines at the end, `per_instance 1=<n> 2=<n>` then
//! `rps=<n> ok=<n> errs=<n> p50_us=<n> p99_us=<n>` (rps counts answered
//! calls), and counts failed calls instead of stopping. With no instance
//! yet, the client logs `waiting for instances of discovery/dev/game` once
//! and proceeds when one appears; with etcd down it keeps retrying. Each
//! call is limited to 10 s. Logs go to stderr (`RUST_LOG` respected,
//! default `info`). A bad flag or value prints one line and exits 2, e.g.
//! `error: invalid value '0' for '--concurrency <CONCURRENCY>': 0 is not in 1..10000`.

mod client;
mod load;

pub mod cli;

pub use client::{
    Client, Config, DEFAULT_ETCD_ENDPOINT, Error, EtcdAuth, Password, WAIT_LOG_GRACE,
    describe_status, instance_of,
};
pub use load::{LOGGED_ERRORS, LoadReport, load};
