//! Round robin: each endpoint once per cycle, weights ignored.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::{Balance, Candidates, PickContext};

/// Round robin over the eligible endpoints, weights ignored.
///
/// One shared cursor, one `fetch_add` per pick: any `n` consecutive picks over a set of
/// `n` endpoints visit each exactly once. The cursor lives in the policy, not in the
/// snapshot, so a discovery update does not send the next request back to the first
/// endpoint (the reset that pingora's round robin suffers on every rebuild).
///
/// For weights, use [`WeightedRoundRobin`](super::WeightedRoundRobin).
#[derive(Debug, Default)]
pub struct RoundRobin {
    cursor: AtomicUsize,
}

impl RoundRobin {
    /// A round robin starting at the first endpoint.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Balance for RoundRobin {
    type State = ();

    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn build(&self, _: &Candidates<'_>) {}

    #[inline]
    fn pick(&self, _: &(), set: &Candidates<'_>, _: &PickContext) -> Option<usize> {
        let n = set.len();
        if n == 0 {
            return None;
        }
        Some(self.cursor.fetch_add(1, Relaxed) % n)
    }
}
