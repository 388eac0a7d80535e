//! The echo server: serves `grpc.examples.echo.Echo`, registers itself in etcd
//! through `registry`, and drains on SIGINT/SIGTERM.
//!
//! Must not depend on the resolver or the balancer.
