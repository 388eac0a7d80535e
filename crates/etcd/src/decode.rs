//! Decoding of the values stored under the discovery prefix.
//!
//! The format is the one Go's `endpoints.Manager.AddEndpoint` writes,
//! `{"Op":0,"Addr":"127.0.0.1:41234","Metadata":"1"}`, plus what people write
//! by hand with etcdctl (`{"Addr":..,"Metadata":..}`). Field names match
//! case-insensitively, exact spelling first, as Go's `encoding/json` does, so
//! whatever a Go reader accepts we accept too.

use std::{collections::BTreeMap, sync::Arc};

use discover::Endpoint;
use serde_json::value::RawValue;

/// One endpoint as registered in etcd: the [`Endpoint`] the balancer uses and
/// the raw `Metadata` JSON it came with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    endpoint: Endpoint,
    metadata: Option<Arc<str>>,
}

impl Entry {
    /// The endpoint, with its instance id when the metadata carried one.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The `Metadata` field as written (raw JSON text, e.g. `"1"` with its
    /// quotes, `7` or `{"zone":"a"}`); `None` when absent or `null`.
    pub fn metadata(&self) -> Option<&str> {
        self.metadata.as_deref()
    }
}

/// What a well-formed value says about its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// `"Op":0` or no `Op`: an endpoint is registered under the key.
    Endpoint(Entry),
    /// `"Op":1`: Go's delete operation; the key holds no endpoint.
    Delete,
}

/// A value that is not an endpoint registration; the reason says why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed endpoint value: {reason}")]
pub struct DecodeError {
    reason: String,
}

impl DecodeError {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// Why the value was rejected.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Decodes one etcd value of the discovery prefix.
///
/// Accepts Go's `{"Op":0,"Addr":..,"Metadata":..}` and etcdctl-style
/// `{"Addr":..,"Metadata":..}`; `"Op":1` is [`Decoded::Delete`]. `Metadata`
/// may be any JSON: a string gives the instance id (its content), a number or
/// a boolean gives its text as written; `null`, an object or an array give no
/// instance id. The whole decoded `Metadata` value is kept as the endpoint's
/// [`metadata`](Endpoint::metadata), e.g. for a zone-aware policy. `Addr`
/// must pass [`Endpoint::new`].
///
/// Total over all inputs: arbitrary bytes give an error, never a panic.
///
/// ```
/// use etcdlb_etcd::{decode_value, Decoded};
///
/// let Ok(Decoded::Endpoint(entry)) =
///     decode_value(br#"{"Op":0,"Addr":"127.0.0.1:41234","Metadata":"1"}"#)
/// else {
///     panic!("a Go registration decodes");
/// };
/// assert_eq!(entry.endpoint().addr(), "127.0.0.1:41234");
/// assert_eq!(entry.endpoint().instance_id(), Some("1"));
/// assert!(decode_value(b"not json").is_err());
///
/// let Ok(Decoded::Endpoint(zoned)) =
///     decode_value(br#"{"Addr":"127.0.0.1:1","Metadata":{"zone":"a"}}"#)
/// else {
///     panic!("an object metadata decodes");
/// };
/// assert_eq!(zoned.endpoint().metadata()["zone"], "a");
/// ```
pub fn decode_value(value: &[u8]) -> Result<Decoded, DecodeError> {
    let fields: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(value).map_err(|e| {
        // serde_json quotes the offending value (a whole JSON string,
        // say): keep the start and the end (what was expected, where).
        let message = excerpt_to(&e.to_string(), 160);
        DecodeError::new(format!("not a JSON object: {message}"))
    })?;

    match field(&fields, "Op").map(RawValue::get) {
        None | Some("null") | Some("0") => {}
        Some("1") => return Ok(Decoded::Delete),
        Some(other) => {
            return Err(DecodeError::new(format!(
                "unknown Op {} (0 = add, 1 = delete)",
                excerpt(other)
            )));
        }
    }

    let addr = match field(&fields, "Addr") {
        None => return Err(DecodeError::new("missing Addr")),
        Some(raw) => serde_json::from_str::<String>(raw.get()).map_err(|_| {
            DecodeError::new(format!("Addr must be a string, got {}", excerpt(raw.get())))
        })?,
    };
    let mut endpoint = Endpoint::new(&addr).map_err(|e| {
        // The message quotes the address: keep a long one to an excerpt
        // (found by fuzzing: a 400-byte Addr made a 1 kB log line).
        let quoted = format!("{addr:?}");
        DecodeError::new(e.to_string().replacen(&quoted, &shorten(&quoted), 1))
    })?;

    let metadata = field(&fields, "Metadata")
        .map(|raw| raw.get().trim())
        .filter(|raw| *raw != "null");
    if let Some(id) = metadata.and_then(instance_id) {
        endpoint = endpoint.with_instance_id(id);
    }
    // The whole value, for policies (a zone, a weight). It is valid JSON
    // already; nesting beyond serde_json's limit just leaves it out.
    if let Some(value) = metadata.and_then(|raw| serde_json::from_str(raw).ok()) {
        endpoint = endpoint.with_metadata(value);
    }
    Ok(Decoded::Endpoint(Entry {
        endpoint,
        metadata: metadata.map(Arc::from),
    }))
}

/// Looks a field up the way Go's `encoding/json` does: exact name first,
/// then case-insensitively.
fn field<'a>(fields: &'a BTreeMap<String, Box<RawValue>>, name: &str) -> Option<&'a RawValue> {
    fields
        .get(name)
        .or_else(|| {
            fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .map(AsRef::as_ref)
}

/// The instance id a raw (valid, trimmed) JSON metadata value names.
fn instance_id(raw: &str) -> Option<String> {
    match raw.as_bytes().first()? {
        b'"' => serde_json::from_str::<String>(raw).ok(),
        b'-' | b'0'..=b'9' | b't' | b'f' => Some(raw.to_string()),
        _ => None,
    }
}

/// [`shorten`] after escaping control characters (raw JSON may hold
/// newlines between tokens): a message stays one short line.
fn excerpt(s: &str) -> String {
    shorten(&escape_controls(s))
}

/// At most about `max` bytes of `s`, control characters escaped: its start
/// and its end with `…` between.
fn excerpt_to(s: &str, max: usize) -> String {
    let s = escape_controls(s);
    if s.len() <= max {
        return s;
    }
    let mut head = max / 2;
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - max / 2;
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}…{}", &s[..head], &s[tail..])
}

fn escape_controls(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escape = c.is_control().then(|| c.escape_default());
            let plain = escape.is_none().then_some(c);
            escape.into_iter().flatten().chain(plain)
        })
        .collect()
}

/// Enough of a value to recognise it in a log line.
pub fn shorten(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: &str) -> Entry {
        match decode_value(value.as_bytes()) {
            Ok(Decoded::Endpoint(e)) => e,
            other => panic!("{value}: {other:?}"),
        }
    }

    fn reason(value: &[u8]) -> String {
        decode_value(value).unwrap_err().to_string()
    }

    #[test]
    fn go_registration_gives_addr_and_string_instance_id() {
        let e = entry(r#"{"Op":0,"Addr":"127.0.0.1:41234","Metadata":"1"}"#);
        assert_eq!(e.endpoint().addr(), "127.0.0.1:41234");
        assert_eq!(e.endpoint().instance_id(), Some("1"));
        assert_eq!(e.metadata(), Some(r#""1""#));
    }

    #[test]
    fn etcdctl_style_value_without_op_is_an_endpoint() {
        let e = entry(r#"{"Addr":"10.0.0.1:80","Metadata":"a-b"}"#);
        assert_eq!(e.endpoint().addr(), "10.0.0.1:80");
        assert_eq!(e.endpoint().instance_id(), Some("a-b"));
    }

    #[test]
    fn op_1_is_a_delete() {
        assert_eq!(
            decode_value(br#"{"Op":1,"Addr":"127.0.0.1:1","Metadata":"1"}"#),
            Ok(Decoded::Delete)
        );
        assert_eq!(decode_value(br#"{"Op":1}"#), Ok(Decoded::Delete));
    }

    #[test]
    fn unknown_op_is_rejected() {
        assert!(reason(br#"{"Op":2,"Addr":"a:1"}"#).contains("unknown Op 2"));
        assert!(reason(br#"{"Op":"0","Addr":"a:1"}"#).contains("unknown Op"));
        // Go leaves a null Op at its zero value: add.
        entry(r#"{"Op":null,"Addr":"a:1"}"#);
    }

    #[test]
    fn number_and_bool_metadata_give_their_text_as_instance_id() {
        assert_eq!(
            entry(r#"{"Addr":"a:1","Metadata":7}"#)
                .endpoint()
                .instance_id(),
            Some("7")
        );
        assert_eq!(
            entry(r#"{"Addr":"a:1","Metadata": 1.50 }"#)
                .endpoint()
                .instance_id(),
            Some("1.50")
        );
        assert_eq!(
            entry(r#"{"Addr":"a:1","Metadata":-3e2}"#)
                .endpoint()
                .instance_id(),
            Some("-3e2")
        );
        assert_eq!(
            entry(r#"{"Addr":"a:1","Metadata":true}"#)
                .endpoint()
                .instance_id(),
            Some("true")
        );
    }

    #[test]
    fn null_absent_object_or_array_metadata_give_no_instance_id() {
        for v in [
            r#"{"Addr":"a:1"}"#,
            r#"{"Addr":"a:1","Metadata":null}"#,
            r#"{"Addr":"a:1","Metadata":{"id":"1"}}"#,
            r#"{"Addr":"a:1","Metadata":["1"]}"#,
        ] {
            assert_eq!(entry(v).endpoint().instance_id(), None, "{v}");
        }
        assert_eq!(entry(r#"{"Addr":"a:1","Metadata":null}"#).metadata(), None);
        assert_eq!(
            entry(r#"{"Addr":"a:1","Metadata":{"id":"1"}}"#).metadata(),
            Some(r#"{"id":"1"}"#)
        );
    }

    #[test]
    fn the_whole_metadata_value_reaches_the_endpoint() {
        let zoned = entry(r#"{"Addr":"a:1","Metadata":{"zone":"a","weight":3}}"#);
        assert_eq!(
            zoned.endpoint().metadata(),
            &serde_json::json!({"zone": "a", "weight": 3})
        );
        // Go's string form: the id, and the same string as the metadata.
        let go = entry(r#"{"Op":0,"Addr":"a:1","Metadata":"7"}"#);
        assert_eq!(go.endpoint().metadata(), "7");
        assert_eq!(go.endpoint().instance_id(), Some("7"));
        assert!(entry(r#"{"Addr":"a:1"}"#).endpoint().metadata().is_null());
    }

    #[test]
    fn escaped_string_metadata_is_unescaped() {
        assert_eq!(
            entry(r#"{"Addr":"a:1","Metadata":"\u00e9\"x"}"#)
                .endpoint()
                .instance_id(),
            Some("é\"x")
        );
    }

    #[test]
    fn field_names_match_case_insensitively_like_go() {
        let e = entry(r#"{"op":0,"addr":"a:1","metadata":"9"}"#);
        assert_eq!(e.endpoint().addr(), "a:1");
        assert_eq!(e.endpoint().instance_id(), Some("9"));
        // The exact spelling wins over another casing.
        assert_eq!(
            entry(r#"{"addr":"b:2","Addr":"a:1"}"#).endpoint().addr(),
            "a:1"
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        entry(r#"{"Addr":"a:1","Weight":3,"Extra":{"x":[1,2]}}"#);
    }

    #[test]
    fn malformed_values_are_errors_with_a_reason() {
        let cases: [(&[u8], &str); 10] = [
            (b"", "not a JSON object"),
            (b"garbage", "not a JSON object"),
            (b"\xff\xfe\x00", "not a JSON object"),
            (b"\"127.0.0.1:1\"", "not a JSON object"),
            (b"[1,2]", "not a JSON object"),
            (br#"{"Addr":"a:1"} trailing"#, "not a JSON object"),
            (br#"{"Metadata":"1"}"#, "missing Addr"),
            (br#"{"Addr":42}"#, "Addr must be a string"),
            (br#"{"Addr":"no-port"}"#, "missing :port"),
            (br#"{"Addr":"a:70000"}"#, "port must be"),
        ];
        for (value, want) in cases {
            let got = reason(value);
            assert!(got.contains(want), "{value:?}: {got}");
        }
    }

    #[test]
    fn deeply_nested_json_does_not_overflow_the_stack() {
        let nested = |n| format!("{}{}", "[".repeat(n), "]".repeat(n));
        // Valid JSON metadata is kept raw, whatever its depth: no instance id.
        let deep = format!(r#"{{"Addr":"a:1","Metadata":{}}}"#, nested(100_000));
        assert_eq!(entry(&deep).endpoint().instance_id(), None);
        assert!(reason(nested(100_000).as_bytes()).contains("not a JSON object"));
        let deep_op = format!(r#"{{"Op":{},"Addr":"a:1"}}"#, nested(100_000));
        assert!(reason(deep_op.as_bytes()).contains("unknown Op"));
    }

    #[test]
    fn a_long_or_multi_line_bad_value_gives_a_short_single_line_reason() {
        // JSON escapes: a newline and 300 DEL characters in the address.
        let long_addr = format!(r#"{{"Addr":"h:{}\n:"}}"#, r"\u007f".repeat(300));
        let msg = reason(long_addr.as_bytes());
        assert!(msg.contains("invalid endpoint address \"h:"), "{msg}");
        assert!(msg.len() < 200 && !msg.contains('\n'), "{msg}");
        let msg = reason(b"{\"Addr\": [1,\n2]}");
        assert_eq!(
            msg,
            r"malformed endpoint value: Addr must be a string, got [1,\n2]"
        );
        let msg = reason(format!("{{\"Op\": [{}\n]}}", "1,".repeat(100)).as_bytes());
        assert!(msg.len() < 200 && !msg.contains('\n'), "{msg}");
        // A long JSON string instead of an object (found by cargo fuzz).
        let msg = reason(format!("\"{}\"", "t:".repeat(500)).as_bytes());
        assert!(msg.len() < 250 && !msg.contains('\n'), "{msg}");
        assert!(
            msg.contains("expected a map at line 1 column 1002"),
            "{msg}"
        );
    }

    #[test]
    fn shorten_cuts_on_a_char_boundary() {
        let s = "é".repeat(100);
        assert!(shorten(&s).ends_with('…'));
        assert_eq!(shorten("abc"), "abc");
    }
}
