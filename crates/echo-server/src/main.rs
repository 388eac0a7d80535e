//! `echo-server` binary.
fn main() {}
