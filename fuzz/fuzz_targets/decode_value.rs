//! Fuzzes `resolver::decode_value` with arbitrary bytes: it must never
//! panic, and what it accepts must be usable.

#![no_main]

use libfuzzer_sys::fuzz_target;
use resolver::{Decoded, decode_value};

fuzz_target!(|data: &[u8]| {
    match decode_value(data) {
        Ok(Decoded::Endpoint(entry)) => {
            // An accepted address is one the balancer can dial.
            let addr = entry.endpoint().addr();
            assert!(discover::Endpoint::new(addr).is_ok(), "{addr:?}");
            // Raw metadata is kept as valid JSON.
            if let Some(raw) = entry.metadata() {
                assert!(
                    serde_json::from_str::<Box<serde_json::value::RawValue>>(raw).is_ok(),
                    "{raw:?}"
                );
            }
        }
        Ok(Decoded::Delete) => {}
        Err(e) => {
            // The reason goes into one log line: bounded and single-line.
            let msg = e.to_string();
            assert!(msg.len() < 1024, "{} bytes", msg.len());
            assert!(!msg.contains('\n'), "{msg:?}");
        }
    }
});
