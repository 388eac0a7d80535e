//! The vocabulary of a changing endpoint set: [`Endpoint`] and [`Change`].
//!
//! One job: let a producer of endpoints (the `resolver` crate, reading etcd,
//! or a test building changes by hand) talk to their consumer (the `balancer`
//! crate) without either knowing the other. It must stay free of etcd, tonic
//! and tokio, like tower's `Discover`; beyond `thiserror` it depends only on
//! `serde_json`, for the endpoints' metadata.
//!
//! ```
//! use etcdlb_discover::{Change, Endpoint};
//!
//! let one = Endpoint::new("127.0.0.1:50051").unwrap().with_instance_id("1");
//! let changes = vec![
//!     Change::Insert("discovery/dev/game/127.0.0.1:50051".to_string(), one),
//!     Change::Remove("discovery/dev/game/127.0.0.1:50052".to_string()),
//! ];
//! assert_eq!(changes.len(), 2);
//! ```

use std::{fmt, sync::Arc};

/// One change to an endpoint set, keyed by a string the producer chooses (the
/// resolver uses the etcd key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Add the endpoint under this key, or replace the one already there.
    Insert(String, Endpoint),
    /// Remove the endpoint under this key; unknown keys are ignored.
    Remove(String),
    /// The complete set, e.g. after a reconnect: the consumer diffs it against
    /// what it has, so unchanged endpoints are left undisturbed.
    Reset(Vec<(String, Endpoint)>),
}

/// Where a server listens (`host:port`), optionally the instance id that
/// sticky requests name, and the whole metadata the server registered with
/// (any JSON, e.g. `{"zone":"a","weight":3}`), for policies to read.
///
/// ```
/// use etcdlb_discover::Endpoint;
///
/// let e = Endpoint::new("127.0.0.1:50051")
///     .unwrap()
///     .with_instance_id("1")
///     .with_metadata(serde_json::json!({"zone": "a"}));
/// assert_eq!(e.metadata()["zone"], "a");
/// assert!(Endpoint::new("127.0.0.1:1").unwrap().metadata().is_null());
/// ```
///
/// Equality (and the hash) compare the address, the instance id and an
/// object or array metadata; a scalar metadata (string, number, boolean) is
/// what the instance id was read from, so it adds nothing to compare.
#[derive(Clone)]
pub struct Endpoint {
    addr: Arc<str>,
    instance_id: Option<Arc<str>>,
    // Shared, so cloning an endpoint stays a few reference counts.
    metadata: Option<Arc<serde_json::Value>>,
}

impl Endpoint {
    /// The metadata that says more than the instance id: an object or array.
    fn structured_metadata(&self) -> Option<&serde_json::Value> {
        self.metadata
            .as_deref()
            .filter(|m| m.is_object() || m.is_array())
    }
}

impl PartialEq for Endpoint {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr
            && self.instance_id == other.instance_id
            && self.structured_metadata() == other.structured_metadata()
    }
}

impl Eq for Endpoint {}

impl std::hash::Hash for Endpoint {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.addr.hash(state);
        self.instance_id.hash(state);
        self.structured_metadata().hash(state);
    }
}

/// What [`Endpoint::metadata`] returns when there is none.
static NO_METADATA: serde_json::Value = serde_json::Value::Null;

/// An address that is not `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid endpoint address {addr:?}: {reason}")]
pub struct InvalidAddress {
    addr: String,
    reason: &'static str,
}

impl Endpoint {
    /// An endpoint at `host:port` (e.g. `127.0.0.1:50051`, `[::1]:50051`,
    /// `game-1.internal:50051`); an `http://` prefix is accepted and dropped.
    pub fn new(addr: &str) -> Result<Self, InvalidAddress> {
        let bad = |reason| InvalidAddress {
            addr: addr.to_string(),
            reason,
        };
        let trimmed = addr.strip_prefix("http://").unwrap_or(addr);
        let (host, port) = trimmed
            .rsplit_once(':')
            .ok_or_else(|| bad("missing :port"))?;
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        if host.contains(['/', ' ', '@', '?', '#']) {
            return Err(bad("host contains a character not allowed in an address"));
        }
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return Err(bad("an IPv6 host must be in brackets, e.g. [::1]:50051"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(bad("port must be a number from 1 to 65535")),
        }
        Ok(Self {
            addr: trimmed.into(),
            instance_id: None,
            metadata: None,
        })
    }

    /// Sets the instance id that sticky requests match.
    pub fn with_instance_id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// Sets the metadata (the whole decoded JSON value); `null` means none.
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = (!metadata.is_null()).then(|| Arc::new(metadata));
        self
    }

    /// The metadata the producer decoded (`Null` when there is none). The
    /// resolver gives the registration's whole `Metadata` JSON value: a
    /// string (the instance id, as grpc-go writes it), or an object such as
    /// `{"zone":"a"}`.
    pub fn metadata(&self) -> &serde_json::Value {
        self.metadata.as_deref().unwrap_or(&NO_METADATA)
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The instance id, if the producer knows one.
    pub fn instance_id(&self) -> Option<&str> {
        self.instance_id.as_deref()
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.instance_id {
            Some(id) => write!(f, "{}#{id}", self.addr),
            None => f.write_str(&self.addr),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_host_port_forms() {
        for ok in [
            "127.0.0.1:1",
            "[::1]:50051",
            "game-1:8080",
            "http://10.0.0.1:443",
        ] {
            assert!(Endpoint::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(Endpoint::new("http://a:1").unwrap().addr(), "a:1");
    }

    #[test]
    fn metadata_is_kept_whole_and_compared_when_structured() {
        let base = || Endpoint::new("a:1").unwrap().with_instance_id("1");
        let zoned = base().with_metadata(serde_json::json!({"zone": "a"}));
        assert_eq!(zoned.metadata()["zone"], "a");
        assert_ne!(zoned, base());
        assert_ne!(
            zoned,
            base().with_metadata(serde_json::json!({"zone": "b"}))
        );
        // A string metadata is the instance id: nothing more to compare.
        let string = base().with_metadata(serde_json::json!("1"));
        assert_eq!(string.metadata(), "1");
        assert_eq!(string, base());
        assert!(
            base()
                .with_metadata(serde_json::Value::Null)
                .metadata()
                .is_null()
        );
    }

    #[test]
    fn rejects_what_is_not_an_address_with_a_reason() {
        let cases = [
            ("", "missing :port"),
            ("127.0.0.1", "missing :port"),
            (":80", "missing host"),
            ("a:0", "port must be"),
            ("a:99999", "port must be"),
            ("::1:80", "IPv6"),
            ("a b:80", "not allowed"),
        ];
        for (addr, reason) in cases {
            let err = Endpoint::new(addr).unwrap_err().to_string();
            assert!(err.contains(reason), "{addr:?}: {err}");
        }
    }
}
