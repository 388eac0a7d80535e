//! Round-robin and sticky gRPC load balancing as a tower `Service`.
//!
//! Must not depend on etcd, the registry or the resolver.
