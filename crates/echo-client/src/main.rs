//! `echo-client` binary.
fn main() {}
