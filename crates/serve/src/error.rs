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
    /// A setting cannot be used, e.g. a wildcard advertise address.
    InvalidConfig,
    /// The first registration in etcd failed (etcd down, invalid settings).
    Register,
    /// The gRPC server stopped with an error.
    Serve,
    /// The SIGINT/SIGTERM handlers could not be installed.
    Signal,
}

/// Why a server could not start or stopped early. Its `Display` is one line
/// meant for the user, e.g. `cannot listen on 127.0.0.1:80: …`.
///
/// ```
/// let err = etcdlb_serve::Advertise::parse("0.0.0.0").unwrap_err();
/// assert_eq!(err.kind(), etcdlb_serve::ErrorKind::InvalidConfig);
/// assert!(!err.to_string().contains('\n'));
/// ```
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// An error of `kind` with a one-line `message`, for programs built on
    /// this crate that report their own setup errors the same way.
    ///
    /// ```
    /// use etcdlb_serve::{Error, ErrorKind};
    /// let e = Error::new(ErrorKind::InvalidConfig, "no id");
    /// assert_eq!((e.kind(), e.to_string().as_str()), (ErrorKind::InvalidConfig, "no id"));
    /// ```
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
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

/// An error and its sources on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let shown = s.to_string();
        if !text.contains(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        source = s.source();
    }
    text
}
