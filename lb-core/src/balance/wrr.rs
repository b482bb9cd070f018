//! Smooth weighted round robin, as nginx does it.
//!
//! Each endpoint has a running score. For each pick, every score grows by its
//! endpoint's weight, the highest score wins (the first in order on a tie) and the
//! winner's score drops by the sum of all weights. Over a cycle of `sum(weights)` picks
//! every endpoint is picked exactly `weight` times, and a heavy endpoint's picks are
//! spread through the cycle: weights 5, 1, 1 give `a a b a c a a`.
//!
//! nginx runs that loop on each request under a lock. Here the writer task runs it once
//! per snapshot to lay out a whole cycle, and a pick is one `fetch_add` on a cursor
//! into that schedule: the same sequence, lock-free.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::{gcd, Balance, Candidates, PickContext};

/// The longest schedule laid out; weights whose reduced sum is larger are scaled down
/// (shares then hold to within one pick per endpoint per cycle).
pub(crate) const MAX_CYCLE: u64 = 1 << 20;

/// Above this many score updates, the schedule is laid out by earliest deadline first
/// (Webster's method, O(cycle log n)) rather than nginx's O(cycle * n) loop: still exact
/// per cycle and spread out, but not always the nginx order.
const MAX_SMOOTH_WORK: u64 = 20_000_000;

/// Smooth weighted round robin (nginx's algorithm), lock-free.
///
/// With equal weights it is plain round robin. Effective weights include slow start.
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    cursor: AtomicUsize,
}

impl WeightedRoundRobin {
    /// A new policy.
    pub fn new() -> Self {
        Self::default()
    }
}

/// One laid-out cycle: [`WeightedRoundRobin`]'s per-snapshot state, opaque. Empty when
/// all weights are equal (the cursor then walks the set).
#[derive(Debug)]
pub struct Schedule {
    /// The endpoint indices of one cycle, in pick order.
    order: Box<[u32]>,
}

impl Balance for WeightedRoundRobin {
    type State = Schedule;

    fn name(&self) -> &'static str {
        "weighted_round_robin"
    }

    fn build(&self, set: &Candidates<'_>) -> Schedule {
        if set.uniform() {
            return Schedule { order: Box::new([]) };
        }
        Schedule {
            order: smooth_schedule(set.weights()).into_boxed_slice(),
        }
    }

    #[inline]
    fn pick(&self, state: &Schedule, set: &Candidates<'_>, _: &PickContext) -> Option<usize> {
        let n = set.len();
        if n == 0 {
            return None;
        }
        let c = self.cursor.fetch_add(1, Relaxed);
        if state.order.is_empty() {
            Some(c % n)
        } else {
            Some(state.order[c % state.order.len()] as usize)
        }
    }
}

/// Reduces weights by their common divisor and, if the cycle is still longer than
/// [`MAX_CYCLE`], scales them down (each stays at least 1).
pub(crate) fn reduce(weights: &[u32]) -> Vec<u64> {
    let g = weights.iter().fold(0u64, |g, &w| gcd(g, w as u64)).max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| x as u64 / g).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_CYCLE {
        for x in &mut w {
            *x = (*x * MAX_CYCLE / total).max(1);
        }
    }
    w
}

/// Lays out one cycle of smooth weighted round robin.
pub(crate) fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let w = reduce(weights);
    let n = w.len();
    let total: u64 = w.iter().sum();
    if total.saturating_mul(n as u64) > MAX_SMOOTH_WORK {
        return deadline_schedule(&w);
    }
    let mut current = vec![0i64; n];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..n {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        order.push(best as u32);
    }
    order
}

/// Earliest deadline first with Webster's midpoints: the k-th pick of endpoint i is
/// due at (k + 1/2) / w_i. Exact shares per cycle, spread out.
fn deadline_schedule(w: &[u64]) -> Vec<u32> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let total: u64 = w.iter().sum();
    // Deadlines compared as fractions (2k + 1) / (2 w) with cross-multiplication.
    #[derive(PartialEq, Eq)]
    struct Due {
        num: u64,
        den: u64,
        idx: u32,
    }
    impl Ord for Due {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            ((self.num as u128) * (o.den as u128))
                .cmp(&((o.num as u128) * (self.den as u128)))
                .then(self.idx.cmp(&o.idx))
        }
    }
    impl PartialOrd for Due {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    let mut heap: BinaryHeap<Reverse<Due>> = w
        .iter()
        .enumerate()
        .map(|(i, &wi)| {
            Reverse(Due {
                num: 1,
                den: 2 * wi,
                idx: i as u32,
            })
        })
        .collect();
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let Reverse(d) = heap.pop().expect("heap holds every endpoint");
        order.push(d.idx);
        heap.push(Reverse(Due { num: d.num + 2, ..d }));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_example() {
        let s: String = smooth_schedule(&[5, 1, 1])
            .iter()
            .map(|&i| (b'a' + i as u8) as char)
            .collect();
        assert_eq!(s, "aabacaa");
    }

    #[test]
    fn deadline_schedule_is_exact() {
        let order = deadline_schedule(&[5, 1, 1]);
        assert_eq!(order.len(), 7);
        assert_eq!(order.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(order.iter().filter(|&&i| i == 1).count(), 1);
    }

    #[test]
    fn common_divisor_is_reduced() {
        assert_eq!(smooth_schedule(&[10, 20]).len(), 3);
    }
}
