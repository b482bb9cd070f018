//! Consistent hashing with a Maglev lookup table, optionally with bounded loads.
//!
//! Maglev (Eisenbud et al., NSDI 2016) fills a table of prime size `M` by letting each
//! endpoint claim slots in the order of its own permutation of `0..M`, taking turns.
//! A key maps to `table[hash % M]`: one lookup per pick. Each endpoint holds `M / n`
//! slots (±1 with equal weights); when one of `n` endpoints leaves, its slots are
//! shared out and only a small fraction of the others' slots move, so about `1/n` of
//! keys change endpoint.
//!
//! Weights: in each round an endpoint claims a slot only while its count is below
//! `round * weight / max_weight`, so shares follow weights.
//!
//! Bounded load (Mirrokni, Thorup, Zadimoghaddam 2018): with a factor `c > 1`, an
//! endpoint already holding more than `c` times its fair share of the requests in
//! flight is passed over and the walk continues to the next slots of the table, so a
//! hot key cannot overload one endpoint.
//!
//! The table size is the smallest prime at least `100 n` and at least 65,537; it is
//! rebuilt on the writer task when the set changes. Endpoint permutations are derived
//! from the endpoint id with a fixed hash, so every proxy instance computes the same
//! table for the same set.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::alias::AliasTable;
use super::rng::mix;
use super::{Balance, Candidates, PickContext, Rng};

/// Hashes bytes to a key for [`PickContext::key`]: FNV-1a followed by a 64-bit mixer.
/// Stable across processes, platforms and releases.
#[inline]
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix(h)
}

/// Consistent hashing over a Maglev table, optional bounded load.
#[derive(Debug)]
pub struct Maglev {
    bound: Option<f64>,
    total_in_flight: AtomicU64,
    rng: Rng,
    min_table: usize,
}

impl Maglev {
    /// Plain Maglev: a key always maps to the same endpoint while the set is unchanged.
    pub fn new() -> Self {
        Self {
            bound: None,
            total_in_flight: AtomicU64::new(0),
            rng: Rng::from_entropy(),
            min_table: 65_537,
        }
    }

    /// Maglev with bounded loads: an endpoint above `factor` times its fair share of
    /// the requests in flight is skipped. `factor` is clamped to at least 1.0; 1.25 is
    /// a common choice.
    pub fn bounded(factor: f64) -> Self {
        Self {
            bound: Some(factor.max(1.0)),
            ..Self::new()
        }
    }

    /// Sets the smallest table size (rounded up to a prime). Smaller tables build
    /// faster but spread keys less evenly.
    pub fn with_min_table_size(mut self, size: usize) -> Self {
        self.min_table = size.max(7);
        self
    }

    /// The bounded-load factor, if any.
    pub fn bound(&self) -> Option<f64> {
        self.bound
    }
}

impl Default for Maglev {
    fn default() -> Self {
        Self::new()
    }
}

/// The lookup table of one snapshot: [`Maglev`]'s per-snapshot state, opaque.
#[derive(Debug)]
pub struct Table {
    slots: Box<[u32]>,
    /// Used when a request carries no key.
    fallback: AliasTable,
    weight_sum: u64,
}

impl Table {
    /// The endpoint index behind each slot.
    #[cfg(test)]
    pub(crate) fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// The endpoint a key maps to, ignoring load.
    #[cfg(test)]
    pub(crate) fn lookup(&self, key: u64) -> Option<usize> {
        if self.slots.is_empty() {
            None
        } else {
            Some(self.slots[(key % self.slots.len() as u64) as usize] as usize)
        }
    }
}

fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

fn next_prime(mut n: usize) -> usize {
    while !is_prime(n) {
        n += 1;
    }
    n
}

/// Builds a Maglev table of at least `min` slots for endpoints with the given id
/// hashes and weights.
pub(crate) fn populate(ids: &[u64], weights: &[u32], min: usize) -> Box<[u32]> {
    let n = ids.len();
    if n == 0 {
        return Box::new([]);
    }
    let m = next_prime(min.max(100 * n));
    let offsets: Vec<u64> = ids.iter().map(|&h| mix(h ^ 0x5bd1_e995) % m as u64).collect();
    let skips: Vec<u64> = ids
        .iter()
        .map(|&h| mix(h ^ 0x2545_f491_4f6c_dd1d) % (m as u64 - 1) + 1)
        .collect();
    let max_w = weights.iter().copied().max().unwrap_or(1).max(1) as u64;
    let mut next = vec![0u64; n];
    let mut count = vec![0u64; n];
    let mut slots = vec![u32::MAX; m];
    let mut filled = 0;
    let mut round = 0u64;
    while filled < m {
        round += 1;
        for i in 0..n {
            // Weighted turns: claim only while below this round's quota.
            if count[i] * max_w >= round * weights[i] as u64 {
                continue;
            }
            let mut c = (offsets[i] + next[i] * skips[i]) % m as u64;
            while slots[c as usize] != u32::MAX {
                next[i] += 1;
                c = (offsets[i] + next[i] * skips[i]) % m as u64;
            }
            slots[c as usize] = i as u32;
            next[i] += 1;
            count[i] += 1;
            filled += 1;
            if filled == m {
                break;
            }
        }
    }
    slots.into_boxed_slice()
}

impl Balance for Maglev {
    type State = Table;

    fn name(&self) -> &'static str {
        "consistent_hash"
    }

    fn build(&self, set: &Candidates<'_>) -> Table {
        let ids: Vec<u64> = (0..set.len())
            .map(|i| hash_key(set.endpoint(i).id().as_str().as_bytes()))
            .collect();
        Table {
            slots: populate(&ids, set.weights(), self.min_table),
            fallback: AliasTable::new(set.weights()),
            weight_sum: set.weights().iter().map(|&w| w as u64).sum(),
        }
    }

    #[inline]
    fn pick(&self, table: &Table, set: &Candidates<'_>, cx: &PickContext) -> Option<usize> {
        if set.is_empty() {
            return None;
        }
        let Some(key) = cx.key else {
            return Some(table.fallback.sample(self.rng.next_u64()));
        };
        let m = table.slots.len();
        let start = (key % m as u64) as usize;
        let first = table.slots[start] as usize;
        let Some(c) = self.bound else {
            return Some(first);
        };
        // Capacity of endpoint i: ceil(c * (in_flight + 1) * w_i / W).
        let total = self.total_in_flight.load(Relaxed) + 1;
        let fits = |i: usize| {
            let cap = (c * total as f64 * set.weight(i) as f64 / table.weight_sum as f64).ceil();
            (set.endpoint(i).in_flight() as f64) < cap
        };
        if fits(first) {
            return Some(first);
        }
        // Walk on; give up after a bounded number of slots (all full means all are
        // at their cap, so the first choice is as good as any).
        let limit = m.min(64 * set.len());
        (1..limit)
            .map(|k| table.slots[(start + k) % m] as usize)
            .find(|&i| fits(i))
            .or(Some(first))
    }

    #[inline]
    fn on_acquire(&self, _: &Table, _: &Candidates<'_>, _: usize) {
        if self.bound.is_some() {
            self.total_in_flight.fetch_add(1, Relaxed);
        }
    }

    #[inline]
    fn on_release(&self, _: &Table, _: &Candidates<'_>, _: usize) {
        if self.bound.is_some() {
            self.total_in_flight.fetch_sub(1, Relaxed);
        }
    }

    fn tracks_release(&self) -> bool {
        self.bound.is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;
    use crate::endpoint::Endpoint;
    use crate::state::EndpointState;

    #[test]
    fn primes() {
        assert_eq!(next_prime(65_537), 65_537);
        assert_eq!(next_prime(100), 101);
    }

    #[test]
    fn equal_weights_fill_evenly() {
        let ids: Vec<u64> = (0..7).map(|i| hash_key(format!("ep{i}").as_bytes())).collect();
        let slots = populate(&ids, &[1; 7], 1000);
        let mut counts = [0usize; 7];
        for &s in slots.iter() {
            counts[s as usize] += 1;
        }
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(hi - lo <= 1, "counts {counts:?}");
    }

    /// Fresh states for endpoints `0..weights.len()` (endpoint `i` at port `10000 + i`)
    /// and their effective weights at full strength.
    fn states(weights: &[u32]) -> (Vec<Arc<EndpointState>>, Vec<u32>) {
        let states = (0..weights.len())
            .map(|i| {
                let ep = Endpoint::new(([127, 0, 0, 1], 10_000 + i as u16).into())
                    .with_id(format!("ep{i:03}"))
                    .with_weight(weights[i]);
                Arc::new(EndpointState::new(ep, Duration::from_millis(10)))
            })
            .collect();
        let eff = weights.iter().map(|&w| w * crate::balance::WEIGHT_SCALE).collect();
        (states, eff)
    }

    /// The index of an endpoint made by [`states`].
    fn index_of(ep: &Endpoint) -> usize {
        usize::from(ep.addr().port() - 10_000)
    }

    /// The endpoint id behind each slot of a Maglev table built over `states`.
    fn maglev_owners(policy: &Maglev, states: &[Arc<EndpointState>], eff: &[u32]) -> Vec<usize> {
        let set = Candidates::new(states, eff);
        let table = policy.build(&set);
        table
            .slots()
            .iter()
            .map(|&s| index_of(&set.endpoint(s as usize).endpoint()))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Removing one of `n` endpoints moves the keys it held (about `1/n`) and only a
        /// few others: the moved fraction of the (fixed-size) table is at most
        /// `1/n + 1%`.
        ///
        /// The slack: Maglev trades a little stability for evenness. Each endpoint claims
        /// slots in its own permutation order, taking turns; without the removed endpoint
        /// the others reach its preferred slots earlier in their turns, which shifts a
        /// cascade of later claims between surviving endpoints. With 65,537 slots that
        /// extra churn measures about 0.1% of the table at 10 endpoints, 0.3% at 20 and
        /// under 0.5% at 40 (0.53% at 60); 1% leaves a factor of two over the worst case
        /// tested here, while a policy that rehashed everything (mod-n) would move
        /// `1 - 1/n` of keys and fail at once.
        #[test]
        fn maglev_removal_moves_about_one_nth_of_keys(n in 2usize..=40, removed in any::<Index>()) {
            let r = removed.index(n);
            let policy = Maglev::new();
            let (st, eff) = states(&vec![1; n]);
            let before = maglev_owners(&policy, &st, &eff);
            let (mut st2, mut eff2) = (st.clone(), eff.clone());
            st2.remove(r);
            eff2.remove(r);
            let after = maglev_owners(&policy, &st2, &eff2);
            prop_assert_eq!(before.len(), after.len(), "same table size, so slots are keys");
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            let owned = before.iter().filter(|&&o| o == r).count();
            let m = before.len() as f64;
            prop_assert!(after.iter().all(|&o| o != r), "the removed endpoint still owns slots");
            let frac = moved as f64 / m;
            prop_assert!(
                frac <= 1.0 / n as f64 + 0.01,
                "removing 1 of {n} moved {frac:.4} of keys (it owned {:.4}); bound {:.4}",
                owned as f64 / m, 1.0 / n as f64 + 0.01
            );
            // Keys hashed through the public key function agree with the slot count.
            let keys = 20_000u64;
            let set_a = Candidates::new(&st, &eff);
            let set_b = Candidates::new(&st2, &eff2);
            let (ta, tb) = (policy.build(&set_a), policy.build(&set_b));
            let key_moved = (0..keys)
                .map(|k| hash_key(format!("user-{k}").as_bytes()))
                .filter(|&k| {
                    let a = index_of(&set_a.endpoint(ta.lookup(k).unwrap()).endpoint());
                    let b = index_of(&set_b.endpoint(tb.lookup(k).unwrap()).endpoint());
                    a != b
                })
                .count();
            let key_frac = key_moved as f64 / keys as f64;
            // 20 000 keys: the sampled fraction is within 0.015 of the slot fraction at 5 sd.
            prop_assert!(key_frac <= frac + 0.015, "keys moved {key_frac:.4}, slots moved {frac:.4}");
        }

        /// Each endpoint's share of the table follows its weight: within one slot of even
        /// for equal weights, and within 0.5% (plus two slots, for rounding in the weighted
        /// turns) of `M * w / W` for unequal ones.
        #[test]
        fn maglev_table_shares_follow_weights(weights in prop::collection::vec(1u32..=8, 1..=30)) {
            let (st, eff) = states(&weights);
            let owners = maglev_owners(&Maglev::new(), &st, &eff);
            let m = owners.len() as f64;
            let total: u32 = weights.iter().sum();
            let mut counts = vec![0usize; weights.len()];
            for &o in &owners {
                counts[o] += 1;
            }
            if weights.iter().all(|&w| w == weights[0]) {
                let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                prop_assert!(hi - lo <= 1, "equal weights, uneven slots {counts:?}");
            }
            for (i, &w) in weights.iter().enumerate() {
                let fair = m * w as f64 / total as f64;
                prop_assert!(
                    (counts[i] as f64 - fair).abs() <= 0.005 * fair + 2.0,
                    "endpoint {i} weight {w}: {} slots, fair {fair:.1}; all {counts:?}", counts[i]
                );
            }
        }

        /// Plain Maglev is consistent: a key maps to its table slot's endpoint, every time.
        #[test]
        fn maglev_pick_is_the_table_lookup(weights in prop::collection::vec(1u32..=4, 1..=10), keys in prop::collection::vec(any::<u64>(), 64)) {
            let (st, eff) = states(&weights);
            let set = Candidates::new(&st, &eff);
            let policy = Maglev::new();
            let table = policy.build(&set);
            for &k in &keys {
                let cx = PickContext::with_key(k);
                let a = policy.pick(&table, &set, &cx);
                prop_assert_eq!(a, table.lookup(k));
                prop_assert_eq!(policy.pick(&table, &set, &cx), a);
            }
        }
    }
}
