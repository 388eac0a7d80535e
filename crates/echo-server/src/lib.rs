//! The echo server: serves `grpc.examples.echo.Echo`, registers itself in etcd
//! through `registry`, and drains on shutdown.
//!
//! Every reply is `<message> (from <id>)`. Besides the Echo service the
//! server answers `grpc.health.v1.Health` (tonic-health) and gRPC server
//! reflection (v1 and v1alpha, so `grpcurl` works without the proto). It
//! binds its address, registers `discovery/<env>/<service>/<bound addr>`
//! with the id as metadata (a JSON string, what Go's `endpoints.Manager`
//! writes), and on shutdown goes: health `NOT_SERVING` → delete the key and
//! revoke the lease → wait the drain delay → stop gracefully, bounded by a
//! timeout. Stopping a server under load fails no call.
//!
//! Must not depend on the resolver or the balancer.
//!
//! # Library
//!
//! ```no_run
//! use echo_server::{Config, Server};
//!
//! # async fn run() -> Result<(), echo_server::Error> {
//! let mut config = Config::new("1");
//! config.etcd = vec!["http://127.0.0.1:2379".into()];
//! let server = Server::bind(config).await?;
//! println!("serving on {}", server.local_addr());
//! // Runs until Ctrl-C, then drains and returns.
//! server.run(async { tokio::signal::ctrl_c().await.unwrap() }).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Command line
//!
//! ```text
//! echo-server --id <ID> [--env dev] [--service game] [--etcd URL]...
//!             [--addr 127.0.0.1:0] [--ttl 60s] [--drain 1s] [--shutdown-timeout 10s]
//! ```
//!
//! | flag | default | meaning |
//! |---|---|---|
//! | `--id` | required | instance id, in replies and in the etcd metadata |
//! | `--env`, `--service` | `dev`, `game` | key prefix `discovery/<env>/<service>` |
//! | `--etcd` | `http://127.0.0.1:2379`, or `ETCD_ENDPOINTS` (comma list) | etcd URLs, repeatable |
//! | `--addr` | `127.0.0.1:0` | listen address; the bound one is registered |
//! | `--ttl` | `60s` (≥ 2s) | lease TTL |
//! | `--drain` | `1s` | delay between deregistering and stopping |
//! | `--shutdown-timeout` | `10s` | limit for in-flight calls when stopping |
//!
//! Durations are humantime (`0ms`, `200ms`, `1s`, `2m`). Logs go to stderr
//! (`RUST_LOG` respected, default `info`); the `listening on <addr>` and
//! `registered <key>` lines say where the server is. On SIGINT or SIGTERM
//! it drains as above and exits 0; a second signal exits at once (code 130).
//! If etcd cannot be reached at start (5 s), it prints
//! `error: cannot register in etcd at <urls>: …` and exits 1. A bad flag or
//! value prints one line (`error: invalid value '0' for '--ttl <TTL>': the
//! lease TTL must be at least 2s`) and exits 2.

mod config;
mod error;
mod server;
mod service;

pub mod cli;

pub use config::{Config, DEFAULT_ETCD_ENDPOINT, EtcdAuth, Password};
pub use error::{Error, ErrorKind};
pub use server::{Server, run, tls_config};
pub use service::{EchoService, ReplyStream};
