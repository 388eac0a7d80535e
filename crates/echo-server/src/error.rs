//! [`Error`]: why a server could not start or stopped early.

use std::fmt;

/// What went wrong, from [`Error::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The listen address could not be bound.
    Bind,
    /// The gRPC TLS certificate or key cannot be used.
    Tls,
    /// The first registration in etcd failed (etcd down, invalid settings).
    Register,
    /// The gRPC server stopped with an error.
    Serve,
}

/// Why a server could not start or stopped early. Its `Display` is one line
/// meant for the user, e.g. `cannot register in etcd: …`.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
