//! Least request: the power of d choices over outstanding requests.

use crate::{Candidate, PickRequest, Picker, Policy};

/// The most choices a pick samples (gRPC's A48 bound).
const MAX_CHOICES: usize = 10;

/// Least request (gRFC A48, Envoy's `LEAST_REQUEST`): each pick samples
/// `choices` distinct READY endpoints at random and takes the one with the
/// fewest [outstanding](crate::Signals::outstanding) requests (ties: the
/// first sampled). A slow or stuck server accumulates outstanding calls and
/// so stops being chosen, without any timing.
///
/// Choices default to 2 ("power of two choices") and are kept within
/// 2..=10, as A48 does; with fewer endpoints than choices every endpoint is
/// compared.
///
/// ```
/// let builder = etcdlb_balancer::Balancer::builder().policy(etcdlb_balancer::LeastRequest::new().choices(3));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeastRequest {
    choices: usize,
}

impl LeastRequest {
    /// Two choices per pick.
    pub fn new() -> Self {
        Self { choices: 2 }
    }

    /// Endpoints sampled per pick, kept within 2..=10.
    pub fn choices(mut self, choices: usize) -> Self {
        self.choices = choices.clamp(2, MAX_CHOICES);
        self
    }

    /// The number of choices in effect.
    pub fn choice_count(&self) -> usize {
        self.choices
    }
}

impl Default for LeastRequest {
    fn default() -> Self {
        Self::new()
    }
}

impl Policy for LeastRequest {
    fn build(&self, _ready: &[Candidate]) -> Box<dyn Picker> {
        Box::new(LeastRequestPicker {
            choices: self.choices,
        })
    }

    fn name(&self) -> &str {
        "least-request"
    }
}

struct LeastRequestPicker {
    choices: usize,
}

impl Picker for LeastRequestPicker {
    fn pick(&self, _request: &PickRequest<'_>, ready: &[Candidate]) -> Option<usize> {
        let n = ready.len();
        let load = |i: usize| ready[i].signals().outstanding();
        match n {
            0 => None,
            1 => Some(0),
            _ if self.choices >= n => (0..n).min_by_key(|&i| load(i)),
            _ if self.choices == 2 => {
                // Two distinct endpoints: the second is drawn from the n - 1
                // others, so a slow one is never compared with itself.
                let first = fastrand::usize(..n);
                let mut second = fastrand::usize(..n - 1);
                if second >= first {
                    second += 1;
                }
                Some(if load(second) < load(first) {
                    second
                } else {
                    first
                })
            }
            _ => {
                let mut seen = [usize::MAX; MAX_CHOICES];
                let mut best = (u64::MAX, 0);
                for slot in 0..self.choices {
                    let mut i = fastrand::usize(..n);
                    while seen[..slot].contains(&i) {
                        i = fastrand::usize(..n);
                    }
                    seen[slot] = i;
                    let l = load(i);
                    if l < best.0 {
                        best = (l, i);
                    }
                }
                Some(best.1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_stay_within_a48_bounds() {
        assert_eq!(LeastRequest::new().choice_count(), 2);
        assert_eq!(LeastRequest::new().choices(0).choice_count(), 2);
        assert_eq!(LeastRequest::new().choices(5).choice_count(), 5);
        assert_eq!(LeastRequest::new().choices(99).choice_count(), 10);
    }
}
