//! End-to-end tests against a real etcd. Run with `cargo xtask test`.

mod advertise;
mod cluster;
mod echo;
mod etcd;
mod grey;
mod health_probe;
mod interop;
mod metrics;
mod policies;
mod proxy;
mod security;
mod server;
