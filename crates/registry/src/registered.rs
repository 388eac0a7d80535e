//! The handle of a live registration.

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{Error, task::Command};

/// Where a registration stands, as seen by its background task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// The key is in etcd with a lease that is being kept alive.
    Registered,
    /// The lease or the key was lost (etcd restart, network failure, lease
    /// revoked or expired); re-granting and re-putting with backoff.
    Reconnecting,
    /// Deregistered or dropped: nothing is kept alive any more.
    Stopped,
}

/// A registration kept alive by a background task; returned by
/// [`Registration::register`](crate::Registration::register).
///
/// Call [`deregister`](Self::deregister) on shutdown. Dropping it without
/// doing so stops the keepalive and logs a warning; the key then disappears
/// when its lease expires (after the TTL).
#[derive(Debug)]
pub struct Registered {
    key: String,
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<State>,
}

impl Registered {
    pub(crate) fn new(
        key: String,
        commands: mpsc::Sender<Command>,
        state: watch::Receiver<State>,
    ) -> Self {
        Self {
            key,
            commands,
            state,
        }
    }

    /// The etcd key, `<prefix>/<address>`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The current [`State`] and its changes.
    pub fn state(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// Replaces the metadata in etcd, keeping the key's lease: one
    /// transaction that writes only if the key still carries our lease, so
    /// readers never see the key missing.
    ///
    /// The new metadata is also used by every later re-registration. While
    /// etcd is unreachable this returns an [`ErrorKind::Unavailable`] error
    /// and the value is written once the registration is restored.
    ///
    /// [`ErrorKind::Unavailable`]: crate::ErrorKind::Unavailable
    pub async fn update_metadata(&self, metadata: Value) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::UpdateMetadata(metadata, reply))
            .await
            .is_err()
        {
            return Err(Error::stopped(&self.key));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(Error::stopped(&self.key)))
    }

    /// Deletes the key (if it still carries our lease), revokes the lease and
    /// stops the background task.
    ///
    /// Idempotent: later calls return `Ok(())`. If etcd cannot be reached the
    /// task stops anyway and the error is returned; the key then expires with
    /// its lease.
    pub async fn deregister(&self) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Deregister(reply))
            .await
            .is_err()
        {
            return Ok(());
        }
        answer.await.unwrap_or(Ok(()))
    }
}
