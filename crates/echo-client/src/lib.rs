//! The echo client: discovers servers through `resolver`, balances calls over
//! them through `balancer`, and has a load mode.
//!
//! Must not depend on the registry.
