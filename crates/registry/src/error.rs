//! The crate's error type.

use std::{fmt, time::Duration};

/// What went wrong, in categories a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A value given to [`Registration`](crate::Registration) is invalid
    /// (address, prefix, TTL, interval, endpoint URL). Nothing was sent to
    /// etcd. Retrying will not help.
    InvalidConfig,
    /// etcd could not be reached or did not answer in time.
    Unavailable,
    /// etcd answered with an error (e.g. permission denied).
    Etcd,
    /// etcd's TLS certificate is not trusted, or etcd rejected the user name
    /// or password (or requires one). Retrying will not help.
    Security,
    /// The registration was already stopped ([`deregister`] was called).
    ///
    /// [`deregister`]: crate::Registered::deregister
    Stopped,
}

/// The error of this crate: a [`kind`](Error::kind) plus a message meant for
/// the person running the program.
///
/// The message includes the cause reported by etcd or the transport, so
/// printing it with `{}` tells the whole story.
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidConfig, message)
    }

    pub(crate) fn stopped(key: &str) -> Self {
        Self::new(
            ErrorKind::Stopped,
            format!("the registration of {key} is stopped (deregistered)"),
        )
    }

    /// Wraps an etcd-client error that happened while `doing` something.
    pub(crate) fn etcd(doing: &str, e: &etcd_client::Error) -> Self {
        let kind = if etcd::is_transient(e) {
            ErrorKind::Unavailable
        } else {
            ErrorKind::Etcd
        };
        Self::new(kind, format!("{doing}: {}", etcd::describe(e)))
    }

    pub(crate) fn timeout(doing: &str, after: Duration) -> Self {
        Self::new(
            ErrorKind::Unavailable,
            format!("{doing}: etcd did not answer within {after:?}"),
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl std::error::Error for Error {}
