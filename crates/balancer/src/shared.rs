//! The state the owner task and every request share.

use std::sync::{Arc, atomic::AtomicU64};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::{config::Config, metrics::Metrics, snapshot::Snapshot};

/// State shared by the owner task and every request.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) changed: watch::Sender<u64>,
    pub(crate) sticky_fallbacks: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) ejections: AtomicU64,
    pub(crate) metrics: Metrics,
    /// Calls in flight over every endpoint (each endpoint's share is its
    /// [`Signals::outstanding`](crate::Signals::outstanding)): what the
    /// connections' write gate compares against.
    pub(crate) in_flight: Arc<AtomicU64>,
}
