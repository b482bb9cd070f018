//! Weighted random.

use super::alias::AliasTable;
use super::{Balance, Candidates, PickContext, Rng};

/// Weighted random: each pick draws an endpoint with probability proportional to its
/// effective weight, in O(1) through an alias table built per snapshot.
#[derive(Debug)]
pub struct Random {
    rng: Rng,
}

impl Random {
    /// Seeded from the clock.
    pub fn new() -> Self {
        Self {
            rng: Rng::from_entropy(),
        }
    }

    /// Seeded, so a single-threaded sequence of picks repeats exactly.
    pub fn from_seed(seed: u64) -> Self {
        Self {
            rng: Rng::from_seed(seed),
        }
    }
}

impl Default for Random {
    fn default() -> Self {
        Self::new()
    }
}

/// The per-snapshot state of [`Random`] and [`P2c`](super::P2c): an alias table.
#[derive(Debug)]
pub struct Weighted(pub(crate) AliasTable);

impl Balance for Random {
    type State = Weighted;

    fn name(&self) -> &'static str {
        "random"
    }

    fn build(&self, set: &Candidates<'_>) -> Weighted {
        Weighted(AliasTable::new(set.weights()))
    }

    #[inline]
    fn pick(&self, state: &Weighted, set: &Candidates<'_>, _: &PickContext) -> Option<usize> {
        if set.is_empty() {
            return None;
        }
        Some(state.0.sample(self.rng.next_u64()))
    }
}
