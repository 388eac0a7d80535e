//! [`Snapshot`]: the immutable view of the endpoint set that the request
//! path reads without a lock; the owner task (`set.rs`) publishes a new one
//! on every change.

use std::{collections::HashMap, sync::Arc};

use crate::{
    policy::{Candidate, NoEndpoint, Picker},
    state::EndpointShared,
};

/// An immutable view of the endpoint set, swapped in whole on every change.
pub(crate) struct Snapshot {
    /// READY endpoints, in no particular order: what the policy picks from
    /// (an endpoint left out here is invisible to every policy).
    pub(crate) ready: Vec<Candidate>,
    /// Under [`Scope::All`]: every known endpoint with its state, sorted by
    /// key (empty under [`Scope::Ready`], where the picker sees `ready`).
    pub(crate) known: Vec<Candidate>,
    /// Whether the picker sees `known` rather than `ready`.
    pub(crate) all_scope: bool,
    /// The policy's picker over [`candidates`](Self::candidates).
    pub(crate) picker: Arc<dyn Picker>,
    /// Instance id → best state among the endpoints carrying it.
    pub(crate) instances: HashMap<Arc<str>, Slot>,
    /// Every known endpoint.
    pub(crate) all: Vec<Arc<EndpointShared>>,
    pub(crate) connecting: usize,
    pub(crate) failed: usize,
    /// READY but not picked (see [`Exclusion`]).
    pub(crate) excluded: usize,
    /// Whether the discovery stream has delivered anything yet.
    pub(crate) discovered: bool,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            ready: Vec::new(),
            known: Vec::new(),
            all_scope: false,
            picker: Arc::new(NoEndpoint),
            instances: HashMap::new(),
            all: Vec::new(),
            connecting: 0,
            failed: 0,
            excluded: 0,
            discovered: false,
        }
    }
}

impl Snapshot {
    /// What the picker picks among.
    #[inline]
    pub(crate) fn candidates(&self) -> &[Candidate] {
        if self.all_scope {
            &self.known
        } else {
            &self.ready
        }
    }
}

/// Where an instance id stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    Ready(usize),
    Connecting,
    Failed,
}

impl Slot {
    pub(crate) fn rank(self) -> u8 {
        match self {
            Self::Ready(_) => 2,
            Self::Connecting => 1,
            Self::Failed => 0,
        }
    }
}
