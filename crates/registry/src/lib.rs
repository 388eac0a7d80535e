//! Registers a server's address in etcd under a lease that it keeps alive.
//!
//! Must not depend on the resolver or the balancer.
