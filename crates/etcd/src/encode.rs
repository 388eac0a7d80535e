//! Writing the etcd value, byte-compatible with Go's `endpoints.Manager`
//! (its reading is `decode.rs`).

use serde::Serialize;
use serde_json::Value;

/// What grpc-go/etcd's `endpoints.Manager.AddEndpoint` stores
/// (`internal.Update`): field order and names matter for byte equality.
#[derive(Serialize)]
struct Update<'a> {
    #[serde(rename = "Op")]
    op: u8,
    #[serde(rename = "Addr")]
    addr: &'a str,
    #[serde(rename = "Metadata")]
    metadata: &'a Value,
}

/// The value a registration writes:
/// `{"Op":0,"Addr":"<addr>","Metadata":<metadata>}`, compact, byte for byte
/// what Go's `endpoints.Manager.AddEndpoint` writes. The address is not
/// validated here (the registry's `Registration::register` does that).
///
/// ```
/// let v = etcdlb_etcd::encode_value("127.0.0.1:41234", &serde_json::json!("1"));
/// assert_eq!(v, br#"{"Op":0,"Addr":"127.0.0.1:41234","Metadata":"1"}"#);
/// ```
pub fn encode_value(addr: &str, metadata: &Value) -> Vec<u8> {
    let update = Update {
        op: 0,
        addr,
        metadata,
    };
    // Serializing a struct of a str and a Value into a Vec cannot fail.
    serde_json::to_vec(&update).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_is_byte_identical_to_go_endpoints_manager() {
        let v = encode_value("127.0.0.1:41234", &Value::String("1".into()));
        assert_eq!(v, br#"{"Op":0,"Addr":"127.0.0.1:41234","Metadata":"1"}"#);
    }

    #[test]
    fn structured_metadata_is_embedded_as_json() {
        let v = encode_value("h:1", &serde_json::json!({"id": 7, "zone": "a"}));
        assert_eq!(
            v,
            br#"{"Op":0,"Addr":"h:1","Metadata":{"id":7,"zone":"a"}}"#
        );
    }
}
