//! gRPC connectivity states.

/// gRPC connectivity state of one endpoint's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectivityState {
    /// Not connected and not trying (between a closed connection and the next
    /// attempt).
    Idle,
    /// A connection attempt is under way.
    Connecting,
    /// Connected and the server has spoken: requests may be sent.
    Ready,
    /// The last attempt failed; waiting for the backoff to end.
    TransientFailure,
}

impl ConnectivityState {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            Self::Idle => 0,
            Self::Connecting => 1,
            Self::Ready => 2,
            Self::TransientFailure => 3,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Connecting,
            2 => Self::Ready,
            3 => Self::TransientFailure,
            _ => Self::Idle,
        }
    }
}
