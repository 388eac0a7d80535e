//! The balancer's own failures, typed: what went wrong before or around a
//! call, as opposed to the server's answer.

use std::{fmt, sync::Arc};

use tonic::{Code, Status};

/// What kind of failure the balancer reported; see [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No endpoint could take the call: none READY and the balancer fails
    /// fast, or none came within the configured wait limit
    /// ([`Builder::ready_timeout`](crate::Builder::ready_timeout)).
    NoReadyEndpoint,
    /// The call's own deadline (`grpc-timeout`) passed while it waited for
    /// an endpoint.
    DeadlineExceeded,
    /// A sticky call's instance is unavailable and the fallback is
    /// [`Fallback::Fail`](crate::Fallback::Fail).
    StickyUnavailable,
    /// No server processed the call, and it was retried as often as allowed
    /// ([`Builder::max_retries`](crate::Builder::max_retries)).
    NotProcessed,
    /// The connection failed while the call was in flight: the server may
    /// have processed it, so it was not retried.
    ConnectionLost,
    /// Every handle of the balancer was dropped while the call waited.
    Shutdown,
    /// A broken invariant of the balancer (a bug: please report it).
    Internal,
}

impl ErrorKind {
    /// The gRPC status code a call failed with this kind gets.
    pub fn code(self) -> Code {
        match self {
            Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::Internal => Code::Internal,
            Self::NoReadyEndpoint
            | Self::StickyUnavailable
            | Self::NotProcessed
            | Self::ConnectionLost
            | Self::Shutdown => Code::Unavailable,
        }
    }
}

/// A failure of the balancer itself, with its [`ErrorKind`] and a message
/// that names the balancer and what it saw.
///
/// Calls through the balancer fail with a `tonic::Status` (that is what
/// tonic's clients expect); when the balancer made that status, the status
/// carries this error as its source, so code can branch on the kind instead
/// of on message text:
///
/// ```
/// use etcdlb_balancer::{Error, ErrorKind};
///
/// let status = tonic::Status::from(Error::new(ErrorKind::NoReadyEndpoint, "no ready endpoint for game"));
/// assert_eq!(status.code(), tonic::Code::Unavailable);
/// assert_eq!(Error::of(&status).map(Error::kind), Some(ErrorKind::NoReadyEndpoint));
/// assert_eq!(Error::of(&tonic::Status::unavailable("from a server")), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message (also the status's message).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The balancer's error behind `status`, if the balancer made it.
    pub fn of(status: &Status) -> Option<&Error> {
        std::error::Error::source(status)?.downcast_ref::<Error>()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let mut status = Status::new(error.kind.code(), error.message.clone());
        status.set_source(Arc::new(error));
        status
    }
}

/// A status of `kind` saying `message`, with the typed error as its source.
pub(crate) fn status(kind: ErrorKind, message: impl Into<String>) -> Status {
    Error::new(kind, message).into()
}
