//! The power-of-two-choices result, checked on the library's own policies.
//!
//! n requests that never complete, thrown at n endpoints through a real balancer: the
//! most loaded endpoint holds Θ(ln n / ln ln n) under one random choice and
//! ln ln n / ln 2 + O(1) under two choices. At n = 10,000 that is 6 to 9 for random
//! and 3 or 4 for p2c (so two choices always beat one). Seeded, so each case is
//! deterministic; several seeds guard against a lucky one.

use examples::sim;
use lb_core::balance::{P2c, PendingRequests, Random};

const N: usize = 10_000;
const SEEDS: [u64; 4] = [1, 2, 3, 42];

#[test]
fn random_choice_max_load_is_ln_n_over_ln_ln_n() {
    for seed in SEEDS {
        let bins = sim::max_load(Random::from_seed(seed), N);
        assert_eq!(
            bins.loads.iter().map(|&l| l as usize).sum::<usize>(),
            N,
            "every request landed"
        );
        assert!(
            (6..=9).contains(&bins.max()),
            "seed {seed}: one random choice should leave the most loaded of {N} endpoints with 6 to 9 \
             requests, got {} (endpoints by load: {:?})",
            bins.max(),
            bins.histogram()
        );
    }
}

#[test]
fn two_choices_max_load_is_ln_ln_n_over_ln_2() {
    let (_, theory) = sim::predicted(N);
    for seed in SEEDS {
        let bins = sim::max_load(P2c::from_seed(PendingRequests, seed), N);
        assert_eq!(
            bins.loads.iter().map(|&l| l as usize).sum::<usize>(),
            N,
            "every request landed"
        );
        assert!(
            (3..=4).contains(&bins.max()),
            "seed {seed}: two choices should leave the most loaded of {N} endpoints with 3 or 4 requests \
             (ln ln n / ln 2 = {theory:.2}, plus a constant), got {} (endpoints by load: {:?})",
            bins.max(),
            bins.histogram()
        );
    }
}
