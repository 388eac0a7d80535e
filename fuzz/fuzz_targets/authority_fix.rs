//! Fuzzes `authority_fix` (the `:authority` adapter for HTTP/2 server
//! connections) with arbitrary client streams: it must never panic, never
//! change a stream's length, change nothing when it rewrote nothing, and
//! hold back no more than its header block limit plus one read.
//!
//! The first byte picks the read sizes and whether the HTTP/2 preface is
//! prepended (so the fuzzer spends its time on frames, not on the preface).

#![no_main]

use authority_fix::{Config, process};
use libfuzzer_sys::fuzz_target;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let mut input = Vec::with_capacity(rest.len() + PREFACE.len());
    if control & 0x80 != 0 {
        input.extend_from_slice(PREFACE);
    }
    input.extend_from_slice(rest);
    let read = usize::from(control & 0x7f) + 1;
    let reads = [read, read * 7 + 3, 1];
    let config = Config {
        max_header_block: 4096,
        ..Config::default()
    };
    let (out, stats) = process(&input, &reads, config);
    assert_eq!(out.len(), input.len());
    if stats.rewritten == 0 {
        assert_eq!(out, input);
    }
    assert!(stats.held_peak <= config.max_header_block + 2 * read * 7 + 16);
});
