//! The echo server: serves `grpc.examples.echo.Echo`, registers itself in etcd
//! through `registry`, and drains on shutdown.
//!
//! Every reply is `<message> (from <id>)`. Besides the Echo service the
//! server answers `grpc.health.v1.Health` (tonic-health) and gRPC server
//! reflection (v1 and v1alpha, so `grpcurl` works without the proto). It
//! binds its address, registers `discovery/<env>/<service>/<addr>` (the
//! `--advertise` address, else the bound one, never a wildcard) with the id
//! as metadata (a JSON string, what Go's `endpoints.Manager`
//! writes), and on shutdown goes: health `NOT_SERVING` → delete the key and
//! revoke the lease → wait the drain delay → stop gracefully, bounded by a
//! timeout. Stopping a server under load fails no call. That lifecycle is
//! the [`serve`] crate's, which any tonic service can use; this crate is a
//! thin user of it.
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
//!             [--addr 127.0.0.1:0] [--advertise HOST[:PORT]] [--ttl 60s] [--drain 1s] [--shutdown-timeout 10s]
//!             [--etcd-ca PEM [--etcd-cert PEM --etcd-key PEM]] [--etcd-user USER]
//!             [--tls-cert PEM --tls-key PEM] [--delay 0ms]
//! ```
//!
//! | flag | default | meaning |
//! |---|---|---|
//! | `--id` | required | instance id, in replies and in the etcd metadata |
//! | `--env`, `--service` | `dev`, `game` | key prefix `discovery/<env>/<service>` |
//! | `--etcd` | `http://127.0.0.1:2379`, or `ETCD_ENDPOINTS` (comma list) | etcd URLs, repeatable |
//! | `--addr` | `127.0.0.1:0` | listen address |
//! | `--advertise` | the bound address; for a wildcard bind (`0.0.0.0`, `::`) a detected address of this host (first non-loopback interface address; loopback with a warning if there is none), logged | the address registered, `HOST[:PORT]` (no port: the bound one); never a wildcard |
//! | `--ttl` | `60s` (≥ 2s) | lease TTL |
//! | `--drain` | `1s` | delay between deregistering and stopping |
//! | `--shutdown-timeout` | `10s` | limit for in-flight calls when stopping |
//! | `--etcd-ca` | none | PEM file of the CA that signed etcd's certificate; endpoints `https://` |
//! | `--etcd-cert`, `--etcd-key` | none | client certificate and key PEM files (etcd `--client-cert-auth`); both, with `--etcd-ca` |
//! | `--etcd-user` | none | etcd user; the password comes from env `ETCD_PASSWORD` only (no flag, never logged) |
//! | `--tls-cert`, `--tls-key` | none (plaintext) | serve gRPC over TLS (Echo, health and reflection alike) with this certificate chain and key |
//! | `--delay` | `0ms` | wait this long before every Echo reply (a slow server, for demos and tests) |
//!
//! Durations are humantime (`0ms`, `200ms`, `1s`, `2m`). Logs go to stderr
//! (`RUST_LOG` respected, default `info`); the `listening on <addr>` and
//! `registered <key>` lines say where the server is. On SIGINT or SIGTERM
//! it drains as above and exits 0; a second signal exits at once (code 130).
//! If etcd cannot be reached at start (5 s), or rejects the TLS settings or
//! the user, it prints `error: cannot register <key> in etcd at <urls>: …`
//! with the reason and what to change, and exits 1. A bad flag or value
//! prints one line and exits 2: e.g. `error: invalid value '0' for '--ttl
//! <TTL>': the lease TTL must be at least 2s`; PEM files are read and
//! checked while parsing (`error: invalid value 'ca.pem' for '--etcd-ca
//! <PEM>': cannot read it: No such file or directory (os error 2)`), and so
//! are `--etcd-user` without `ETCD_PASSWORD` and a `--tls-key` that is not
//! the key of `--tls-cert`. `docs/bad-input.md` lists every message.

mod config;
mod server;
mod service;

pub mod cli;

pub use cli_support::{EtcdAuth, Password};
pub use config::{Config, DEFAULT_ETCD_ENDPOINT};
pub use serve::{Advertise, Error, ErrorKind};
pub use server::{Server, run};
pub use service::{EchoService, FailRate, ReplyStream};
