//! The one load generator of `cargo xtask bench`.
//!
//! - [`load`]: unary echo, closed loop with C workers (or open loop at a
//!   fixed rate, `rate`), over (a) a direct tonic
//!   `Channel`, (b) tonic's `balance_channel`, (c) our balancer, (d) our
//!   balancer with every call sticky; warm-up, measured window,
//!   hdrhistogram; also the discovery and failover probes (servers found in
//!   etcd, per-instance first/last answer times, error timestamps).
//! - [`serve`]: an echo host on many loopback ports in one process.
//! - [`scale`]: fill an etcd prefix and time the resolver listing it.
//! - [`watchers`]: many resolvers of one prefix in one process while
//!   registrations churn: propagation to each and to all, memory, CPU.
//!
//! Every result is one JSON line on stdout, for the harness to read.
//!
//! ```no_run
//! # async fn run() -> Result<(), String> {
//! use std::time::Duration;
//! use loadgen::load::{Config, Mode, Servers, run};
//!
//! let result = run(Config {
//!     mode: Mode::Balancer,
//!     servers: Servers::List(vec![("1".into(), "127.0.0.1:50051".into())]),
//!     concurrency: 32,
//!     warmup: Duration::from_secs(2),
//!     duration: Duration::from_secs(10),
//!     interval: Duration::ZERO,
//!     timeout: Duration::from_secs(5),
//!     sticky_id: None,
//!     wait_ready: None,
//!     events: false,
//!     stop: None,
//!     no_grey_detection: false,
//!     timeline: None,
//!     rate: None,
//! })
//! .await?;
//! println!("{result}");
//! # Ok(())
//! # }
//! ```

pub mod load;
pub mod scale;
pub mod serve;
pub mod watchers;
