//! Property tests of the value decoder: it is total over arbitrary bytes,
//! reads every value Go's `endpoints.Manager` (and our registry) writes, and
//! its error messages stay short.
//!
//! 256 cases per property keeps `cargo xtask test` fast; raise
//! `PROPTEST_CASES` for a longer run. The fuzz target in `fuzz/` covers the
//! same decoder with coverage guidance.

use etcdlb_resolver::{Decoded, decode_value};
use proptest::prelude::*;
use serde_json::Value;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(256),
        // Failures are printed with their minimal input; no files written
        // into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// `host:port` as servers register it: IPv4, bracketed IPv6 or a host name.
fn addr() -> impl Strategy<Value = String> {
    let host = prop_oneof![
        any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
        any::<[u16; 8]>().prop_map(|s| format!("[{}]", std::net::Ipv6Addr::from(s))),
        "[a-z][a-z0-9-]{0,15}(\\.[a-z0-9_-]{1,10}){0,3}",
    ];
    (host, 1..=u16::MAX).prop_map(|(h, p)| format!("{h}:{p}"))
}

/// A `Metadata` value and the instance id the decoder must read from it.
fn metadata() -> impl Strategy<Value = (Value, Option<String>)> {
    prop_oneof![
        // Any Unicode text, including quotes, backslashes and control
        // characters that JSON must escape.
        any::<String>().prop_map(|s| (Value::String(s.clone()), Some(s))),
        any::<i64>().prop_map(|n| (Value::from(n), Some(n.to_string()))),
        any::<u64>().prop_map(|n| (Value::from(n), Some(n.to_string()))),
        // A number is compared by its text as written.
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| {
                let v = Value::from(f);
                let text = v.to_string();
                (v, Some(text))
            }),
        any::<bool>().prop_map(|b| (Value::Bool(b), Some(b.to_string()))),
        Just((Value::Null, None)),
        ("[a-z]{1,8}", any::<i32>()).prop_map(|(k, n)| (serde_json::json!({ k: n }), None)),
        proptest::collection::vec(any::<u8>(), 0..4).prop_map(|v| (Value::from(v), None)),
    ]
}

/// Exactly what Go's `endpoints.Manager.AddEndpoint` writes: field order
/// `Op`, `Addr`, `Metadata`, compact.
fn go_value(addr: &str, metadata: &Value) -> String {
    format!(
        r#"{{"Op":0,"Addr":{},"Metadata":{}}}"#,
        Value::from(addr),
        metadata
    )
}

/// Bytes that look like JSON often enough to get past the first character.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        "[{}\\[\\]\":,.0-9eE+ \\\\nulltruefalseOpAdrMetdau-]{0,96}".prop_map(String::into_bytes),
        // Any text as Addr, long and with control characters (the fuzzer
        // found that a long bad Addr made a 1 kB message).
        proptest::collection::vec(any::<char>(), 0..300).prop_map(|addr| {
            let addr: String = addr.into_iter().collect();
            format!(r#"{{"Op":0,"Addr":{}}}"#, Value::from(addr)).into_bytes()
        }),
        // A long JSON string where an object belongs (serde_json quotes it
        // in its error; also found by the fuzzer).
        proptest::collection::vec(any::<char>(), 0..300).prop_map(|s| {
            Value::from(s.into_iter().collect::<String>())
                .to_string()
                .into_bytes()
        }),
        // A valid value with one byte replaced, one byte cut or bytes appended.
        (addr(), metadata(), any::<usize>(), any::<u8>(), 0..3u8).prop_map(
            |(a, (m, _), at, byte, how)| {
                let mut v = go_value(&a, &m).into_bytes();
                let at = at % v.len();
                match how {
                    0 => v[at] = byte,
                    1 => {
                        v.remove(at);
                    }
                    _ => v.push(byte),
                }
                v
            }
        ),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = decode_value(&bytes);
    }

    #[test]
    fn near_json_never_panics_and_errors_are_short(bytes in jsonish()) {
        if let Err(e) = decode_value(&bytes) {
            let msg = e.to_string();
            prop_assert!(msg.starts_with("malformed endpoint value: "), "{msg}");
            // Values are shortened in messages: a log line stays a line.
            prop_assert!(msg.len() < 400, "{} bytes: {msg}", msg.len());
            prop_assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn go_values_round_trip_with_addr_and_instance_id(
        addr in addr(),
        (metadata, id) in metadata(),
    ) {
        let value = go_value(&addr, &metadata);
        let Ok(Decoded::Endpoint(entry)) = decode_value(value.as_bytes()) else {
            return Err(TestCaseError::fail(format!("{value}: {:?}", decode_value(value.as_bytes()))));
        };
        prop_assert_eq!(entry.endpoint().addr(), addr.as_str());
        prop_assert_eq!(entry.endpoint().instance_id(), id.as_deref());
        // The raw metadata is kept as written (absent for null).
        let raw = (!metadata.is_null()).then(|| metadata.to_string());
        prop_assert_eq!(entry.metadata(), raw.as_deref());
    }

    #[test]
    fn etcdctl_values_without_op_and_any_field_casing_decode_alike(
        addr in addr(),
        (metadata, id) in metadata(),
        upper in proptest::collection::vec(any::<bool>(), 12),
    ) {
        // Go's encoding/json matches field names case-insensitively.
        let mut casing = upper.into_iter().cycle();
        let mut name = |n: &str| -> String {
            n.chars()
                .map(|c| if casing.next().unwrap_or(false) { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
                .collect()
        };
        let value = format!(
            r#"{{ {:?} : {} , {:?}:{} }}"#,
            name("Metadata"), metadata, name("Addr"), Value::from(addr.as_str())
        );
        let Ok(Decoded::Endpoint(entry)) = decode_value(value.as_bytes()) else {
            return Err(TestCaseError::fail(format!("{value}: {:?}", decode_value(value.as_bytes()))));
        };
        prop_assert_eq!(entry.endpoint().addr(), addr.as_str());
        prop_assert_eq!(entry.endpoint().instance_id(), id.as_deref());
    }

    #[test]
    fn op_1_is_a_delete_whatever_else_the_value_says(
        addr in "\\PC{0,20}",
        (metadata, _) in metadata(),
    ) {
        let value = format!(r#"{{"Op":1,"Addr":{},"Metadata":{}}}"#, Value::from(addr), metadata);
        prop_assert_eq!(decode_value(value.as_bytes()), Ok(Decoded::Delete));
    }

    #[test]
    fn any_op_other_than_0_or_1_is_rejected_naming_it(op in 2..i64::MAX, addr in addr()) {
        let value = format!(r#"{{"Op":{op},"Addr":{}}}"#, Value::from(addr));
        let err = decode_value(value.as_bytes()).unwrap_err();
        prop_assert!(err.reason().contains(&format!("unknown Op {op}")), "{err}");
    }

    #[test]
    fn addresses_without_a_port_are_rejected(host in "[a-z0-9.]{1,20}") {
        let value = format!(r#"{{"Op":0,"Addr":{},"Metadata":"1"}}"#, Value::from(host.as_str()));
        let err = decode_value(value.as_bytes()).unwrap_err();
        prop_assert!(err.reason().contains("missing :port"), "{err}");
    }

    #[test]
    fn the_registry_encoding_decodes_to_the_same_endpoint(
        addr in addr(),
        (metadata, id) in metadata(),
    ) {
        let value = registry::encode_value(&addr, &metadata);
        // Byte for byte what Go writes...
        let go = go_value(&addr, &metadata);
        prop_assert_eq!(value.as_slice(), go.as_bytes());
        // ...and what the resolver reads back.
        let Ok(Decoded::Endpoint(entry)) = decode_value(&value) else {
            return Err(TestCaseError::fail(format!("{:?}", String::from_utf8_lossy(&value))));
        };
        prop_assert_eq!(entry.endpoint().addr(), addr.as_str());
        prop_assert_eq!(entry.endpoint().instance_id(), id.as_deref());
    }
}
