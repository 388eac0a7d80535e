//! Turns an etcd key prefix into a stream of endpoint changes.
//!
//! Must not depend on the registry.
