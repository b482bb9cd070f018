//! Property tests of every balancing policy's invariant, driven through the public
//! [`Balance`] trait (and, where in-flight counts matter, through a real `Balancer`).

mod support;

use std::collections::VecDeque;
use std::time::Duration;

use lb_core::balance::{
    hash_key, Balance, Candidates, LeastConn, Load, Maglev, P2c, PeakEwma, PendingRequests, PickContext, Random,
    RoundRobin, WeightedRoundRobin, WEIGHT_SCALE,
};
use lb_core::{discover, Balancer, EndpointState, Picked};
use proptest::prelude::*;
use proptest::sample::Index;

use support::{ep_w, healthy_backends, states, status_of, Backend};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The weights divided by their greatest common divisor.
fn reduced(weights: &[u32]) -> Vec<u64> {
    let g = weights.iter().fold(0, |g, &w| gcd(g, w as u64));
    weights.iter().map(|&w| w as u64 / g).collect()
}

/// `count` picks of `policy` over `set` with no request key.
fn picks<P: Balance>(policy: &P, set: &Candidates<'_>, count: usize) -> Vec<usize> {
    let state = policy.build(set);
    let cx = PickContext::default();
    (0..count)
        .map(|_| {
            policy
                .pick(&state, set, &cx)
                .expect("a non-empty set always gives a pick")
        })
        .collect()
}

/// Lengths of the maximal runs of equal picks, as `(endpoint, run length)`.
fn runs(seq: &[usize]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut k = 0;
    while k < seq.len() {
        let mut j = k;
        while j < seq.len() && seq[j] == seq[k] {
            j += 1;
        }
        out.push((seq[k], j - k));
        k = j;
    }
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A balancer over endpoints `0..weights.len()` with those weights, all eligible.
fn fixed_balancer<P: Balance>(rt: &tokio::runtime::Runtime, policy: P, weights: &[u32]) -> Balancer<P, Backend> {
    let eps: Vec<_> = weights.iter().enumerate().map(|(i, &w)| ep_w(i, w)).collect();
    let lb = rt.block_on(async { Balancer::builder(policy).spawn(discover::fixed(eps), healthy_backends()) });
    rt.block_on(lb.ready_endpoints(weights.len()));
    lb
}

// === every policy ===

#[test]
fn every_policy_gives_none_on_an_empty_set() {
    let set = Candidates::new(&[], &[]);
    let cx = PickContext::with_key(7);
    fn none<P: Balance>(p: P, set: &Candidates<'_>, cx: &PickContext) {
        let st = p.build(set);
        assert_eq!(p.pick(&st, set, cx), None, "{} picked from an empty set", p.name());
        assert_eq!(p.pick(&st, set, &PickContext::default()), None, "{}", p.name());
    }
    none(RoundRobin::new(), &set, &cx);
    none(WeightedRoundRobin::new(), &set, &cx);
    none(LeastConn::new(), &set, &cx);
    none(P2c::from_seed(PendingRequests, 1), &set, &cx);
    none(P2c::from_seed(PeakEwma::default(), 1), &set, &cx);
    none(Random::from_seed(1), &set, &cx);
    none(Maglev::new(), &set, &cx);
    none(Maglev::bounded(1.25), &set, &cx);
}

proptest! {
    #![proptest_config(config(64))]

    /// Whatever the weights, every policy's pick is an index of the set.
    #[test]
    fn every_policy_picks_in_range(
        eff in prop::collection::vec(1u32..=1_000, 1..=12),
        seed in any::<u64>(),
        keys in prop::collection::vec(any::<u64>(), 50),
    ) {
        let (st, _) = states(&vec![1; eff.len()]);
        let set = Candidates::new(&st, &eff);
        let n = eff.len();
        fn check<P: Balance>(p: P, set: &Candidates<'_>, keys: &[u64]) -> Result<(), TestCaseError> {
            let state = p.build(set);
            for &k in keys {
                for cx in [PickContext::default(), PickContext::with_key(k)] {
                    let i = p.pick(&state, set, &cx);
                    prop_assert!(matches!(i, Some(i) if i < set.len()), "{} picked {i:?} of {}", p.name(), set.len());
                }
            }
            Ok(())
        }
        check(RoundRobin::new(), &set, &keys)?;
        check(WeightedRoundRobin::new(), &set, &keys)?;
        check(LeastConn::new(), &set, &keys)?;
        check(P2c::from_seed(PendingRequests, seed), &set, &keys)?;
        check(P2c::from_seed(PeakEwma::default(), seed), &set, &keys)?;
        check(Random::from_seed(seed), &set, &keys)?;
        check(Maglev::new().with_min_table_size(101 * n), &set, &keys)?;
        check(Maglev::bounded(1.5).with_min_table_size(101 * n), &set, &keys)?;
    }
}

// === round robin ===

proptest! {
    #![proptest_config(config(128))]

    /// Any `n` consecutive picks over `n` endpoints visit each exactly once, from
    /// wherever the cursor stands; weights are ignored.
    #[test]
    fn round_robin_visits_each_endpoint_once_per_cycle(
        weights in prop::collection::vec(1u32..=20, 1..=16),
        skip in 0usize..100,
    ) {
        let (st, eff) = states(&weights);
        let set = Candidates::new(&st, &eff);
        let n = weights.len();
        let rr = RoundRobin::new();
        let seq = picks(&rr, &set, skip + 4 * n);
        for (k, window) in seq[skip..].windows(n).enumerate() {
            let mut seen = vec![false; n];
            for &i in window {
                prop_assert!(!seen[i], "endpoint {i} twice in the window at {k}: {window:?}");
                seen[i] = true;
            }
        }
    }
}

// === smooth weighted round robin ===

/// Names a pick sequence with letters, for messages and the nginx example.
fn letters(seq: &[usize]) -> String {
    seq.iter().map(|&i| (b'a' + i as u8) as char).collect()
}

#[test]
fn wrr_gives_the_nginx_sequence() {
    let (st, eff) = states(&[5, 1, 1]);
    let set = Candidates::new(&st, &eff);
    let seq = picks(&WeightedRoundRobin::new(), &set, 21);
    assert_eq!(
        letters(&seq),
        "aabacaa".repeat(3),
        "nginx's smooth WRR for weights 5, 1, 1"
    );
}

#[test]
fn wrr_with_equal_weights_is_round_robin() {
    let (st, eff) = states(&[4, 4, 4, 4]);
    let set = Candidates::new(&st, &eff);
    let seq = picks(&WeightedRoundRobin::new(), &set, 8);
    assert_eq!(seq, [0, 1, 2, 3, 0, 1, 2, 3]);
}

proptest! {
    #![proptest_config(config(128))]

    /// Over any window of one cycle (the sum of the gcd-reduced weights) of consecutive
    /// picks, every endpoint is picked exactly its reduced weight times. Effective
    /// weights are drawn directly, so slow-start ramps (not multiples of
    /// `WEIGHT_SCALE`) are covered too.
    #[test]
    fn wrr_gives_exact_shares_per_cycle(
        eff in prop::collection::vec(1u32..=60, 1..=8),
        scale in prop_oneof![Just(1u32), Just(WEIGHT_SCALE), Just(7)],
    ) {
        let eff: Vec<u32> = eff.iter().map(|w| w * scale).collect();
        let (st, _) = states(&vec![1; eff.len()]);
        let set = Candidates::new(&st, &eff);
        let red = reduced(&eff);
        let cycle: u64 = red.iter().sum();
        let seq = picks(&WeightedRoundRobin::new(), &set, 3 * cycle as usize);
        for (k, window) in seq.windows(cycle as usize).enumerate() {
            let mut counts = vec![0u64; eff.len()];
            for &i in window {
                counts[i] += 1;
            }
            prop_assert_eq!(&counts, &red, "shares in the cycle window starting at pick {}", k);
        }
    }

    /// Smooth WRR spreads picks: an endpoint is picked twice in a row only if it has
    /// the largest weight, anywhere in the (periodic) pick sequence, across cycle
    /// boundaries included.
    ///
    /// This is the strongest general statement that holds. The pigeonhole condition
    /// `w_i <= (sum of the others) + 1`, under which a schedule with no endpoint twice
    /// in a row exists, is *not* enough for smooth WRR once there are three or more
    /// endpoints: weights 2, 2, 5 give `c a b c c a c b c`, and even 38, 35, 35 repeats
    /// the first endpoint. See `wrr_two_endpoints_spread_optimally` for the two-endpoint
    /// case, where it is exact.
    #[test]
    fn wrr_repeats_only_the_heaviest_endpoint(eff in prop::collection::vec(1u32..=40, 2..=7)) {
        let (st, _) = states(&vec![1; eff.len()]);
        let set = Candidates::new(&st, &eff);
        let cycle: u64 = reduced(&eff).iter().sum();
        let seq = picks(&WeightedRoundRobin::new(), &set, 2 * cycle as usize);
        let max = *eff.iter().max().unwrap();
        for w in seq.windows(2) {
            if w[0] == w[1] {
                prop_assert_eq!(
                    eff[w[0]], max,
                    "endpoint {} (weight {}) picked twice in a row in {}", w[0], eff[w[0]], letters(&seq)
                );
            }
        }
    }

    /// With two endpoints of reduced weights `h >= l`, smooth WRR is as even as a
    /// sequence can be: every run of the heavier one is `floor(h / l)` or `ceil(h / l)`
    /// long, the lighter one never repeats, and within one cycle no endpoint is picked
    /// twice in a row exactly when `h <= l + 1`.
    #[test]
    fn wrr_two_endpoints_spread_optimally(a in 1u32..=80, b in 1u32..=80) {
        let eff = [a * WEIGHT_SCALE, b * WEIGHT_SCALE];
        let (st, _) = states(&[1, 1]);
        let set = Candidates::new(&st, &eff);
        let red = reduced(&eff);
        let (heavy, light) = if red[0] >= red[1] { (0, 1) } else { (1, 0) };
        let (h, l) = (red[heavy], red[light]);
        let cycle = (h + l) as usize;
        let seq = picks(&WeightedRoundRobin::new(), &set, 4 * cycle);
        let all = runs(&seq);
        // Runs at the ends of the sample may be cut short: judge the inner ones.
        for &(i, len) in &all[1..all.len().saturating_sub(1)] {
            if h == l {
                prop_assert_eq!(len, 1);
            } else if i == heavy {
                prop_assert!(
                    len as u64 == h / l || len as u64 == h.div_ceil(l),
                    "weights {h}:{l}: a run of {len} of the heavier endpoint in {}", letters(&seq)
                );
            } else {
                prop_assert_eq!(len, 1, "the lighter endpoint repeated in {}", letters(&seq));
            }
        }
        let one_cycle = &seq[..cycle];
        let repeats = one_cycle.windows(2).any(|w| w[0] == w[1]);
        prop_assert_eq!(repeats, h > l + 1, "weights {}:{} cycle {}", h, l, letters(one_cycle));
    }
}

// === least connections ===

#[derive(Clone, Debug)]
enum Op {
    /// Pick and hold the guard.
    Pick,
    /// Drop one held guard.
    Release(Index),
    /// Change one endpoint's weight through discovery (a new snapshot and tree).
    Reweight(Index, u32),
}

fn ops(reweight: bool) -> impl Strategy<Value = Vec<Op>> {
    let w = if reweight { 1 } else { 0 };
    prop::collection::vec(
        prop_oneof![
            6 => Just(Op::Pick),
            4 => any::<Index>().prop_map(Op::Release),
            w => (any::<Index>(), 1u32..=4).prop_map(|(i, w)| Op::Reweight(i, w)),
        ],
        1..150,
    )
}

/// The least-connections pick the model predicts: the least in-flight per unit of
/// weight, then the one picked longest ago, then the lowest index.
fn least_conn_expected(held: &[u64], weights: &[u32], last: &[u64]) -> usize {
    let mut best = 0;
    for i in 1..held.len() {
        // held[i] / w[i] against held[best] / w[best], cross-multiplied.
        let li = held[i] * weights[best] as u64;
        let lb = held[best] * weights[i] as u64;
        if li < lb || (li == lb && last[i] < last[best]) {
            best = i;
        }
    }
    best
}

proptest! {
    #![proptest_config(config(64))]

    /// Through a real balancer with held guards, in any sequence of holds and
    /// releases (and weight changes that publish new snapshots while guards from older
    /// ones are still held), least connections always picks an endpoint minimising
    /// in-flight / weight, and among those the one picked longest ago: ties rotate.
    #[test]
    fn least_conn_picks_a_minimum_and_ties_rotate(
        mut weights in prop::collection::vec(1u32..=4, 2..=6),
        ops in ops(true),
    ) {
        let rt = runtime();
        let n = weights.len();
        let (publisher, subscription) = discover::channel();
        publisher.reset(weights.iter().enumerate().map(|(i, &w)| ep_w(i, w)));
        let lb = rt.block_on(async { Balancer::builder(LeastConn::new()).spawn(subscription, healthy_backends()) });
        rt.block_on(lb.ready_endpoints(n));
        let mut guards: Vec<Picked<Backend>> = Vec::new();
        let mut held = vec![0u64; n];
        let mut last = vec![0u64; n];
        let mut seq = 0;
        for op in ops {
            match op {
                Op::Pick => {
                    let expected = least_conn_expected(&held, &weights, &last);
                    let p = lb.pick(None).expect("every endpoint is eligible");
                    let got = p.service.idx;
                    prop_assert_eq!(
                        got, expected,
                        "in flight {:?}, weights {:?}, last picks {:?}", held, weights, last
                    );
                    seq += 1;
                    held[got] += 1;
                    last[got] = seq;
                    prop_assert_eq!(p.guard.endpoint().in_flight() as u64, held[got]);
                    guards.push(p);
                }
                Op::Release(ix) => {
                    if !guards.is_empty() {
                        let p = guards.swap_remove(ix.index(guards.len()));
                        held[p.service.idx] -= 1;
                    }
                }
                Op::Reweight(ix, w) => {
                    let i = ix.index(n);
                    if weights[i] != w {
                        weights[i] = w;
                        publisher.insert(ep_w(i, w));
                        rt.block_on(support::eventually("the new weight is published", Duration::from_millis(1), 1000, || {
                            status_of(&lb, i).effective_weight == Some(w as f64)
                        }));
                    }
                }
            }
        }
        drop(guards);
        for i in 0..n {
            prop_assert_eq!(status_of(&lb, i).in_flight, 0, "endpoint {} still has requests in flight", i);
        }
    }
}

/// The concrete case behind the reweight ops above: guards taken from one snapshot are
/// released after a new snapshot (and tournament tree) is published. The released
/// endpoint must win the next pick at once.
#[test]
fn least_conn_sees_releases_of_guards_from_an_older_snapshot() {
    let rt = runtime();
    let (publisher, subscription) = discover::channel();
    publisher.reset((0..4).map(|i| ep_w(i, 1)));
    let lb = rt.block_on(async { Balancer::builder(LeastConn::new()).spawn(subscription, healthy_backends()) });
    rt.block_on(lb.ready_endpoints(4));
    let mut guards: Vec<Picked<Backend>> = (0..8).map(|_| lb.pick(None).unwrap()).collect();
    for i in 0..4 {
        assert_eq!(status_of(&lb, i).in_flight, 2, "ties rotate: two each");
    }
    // A new snapshot: endpoint 3 now has weight 2 (load 2/2 = 1, the others 2/1).
    publisher.insert(ep_w(3, 2));
    rt.block_on(support::eventually(
        "weight 2 published",
        Duration::from_millis(1),
        1000,
        || status_of(&lb, 3).effective_weight == Some(2.0),
    ));
    // Endpoint 0's requests end: its guards belong to the old snapshot.
    guards.retain(|p| p.service.idx != 0);
    assert_eq!(status_of(&lb, 0).in_flight, 0);
    let p = lb.pick(None).unwrap();
    assert_eq!(p.service.idx, 0, "endpoint 0 has nothing in flight and must win");
}

// === power of two choices ===

proptest! {
    #![proptest_config(config(32))]

    /// At zero load (ties go to the first draw, which is weighted), P2C's shares
    /// follow the weights: weight 3 against weight 1 gets three times the picks.
    #[test]
    fn p2c_pending_at_zero_load_follows_weights(seed in any::<u64>()) {
        let (st, eff) = states(&[3, 1]);
        let set = Candidates::new(&st, &eff);
        let seq = picks(&P2c::from_seed(PendingRequests, seed), &set, 40_000);
        let heavy = seq.iter().filter(|&&i| i == 0).count() as f64;
        let ratio = heavy / (seq.len() as f64 - heavy);
        // 40 000 Bernoulli(3/4) draws: the ratio's standard deviation is about 0.04.
        prop_assert!((2.75..=3.25).contains(&ratio), "weight 3 vs 1 got ratio {ratio}");
    }
}

/// A fresh endpoint's latency estimate is the configured default, not zero: peak EWMA
/// must not take an endpoint it has never measured for a free one.
#[test]
fn peak_ewma_starts_from_the_default_rtt() {
    let st = EndpointState::new(support::ep(0), Duration::from_millis(10));
    assert_eq!(st.ewma_latency(), Duration::from_millis(10));
    let load = PeakEwma::default().load(&st, 0);
    assert!(
        (load - 1e7).abs() < 1.0,
        "load of an idle, unmeasured endpoint: {load} ns"
    );

    let rt = runtime();
    let lb = rt.block_on(async {
        Balancer::builder(P2c::new(PeakEwma::default()))
            .default_rtt(Duration::from_millis(25))
            .spawn(discover::fixed([ep_w(0, 1), ep_w(1, 1)]), healthy_backends())
    });
    rt.block_on(lb.ready_endpoints(2));
    for i in 0..2 {
        assert_eq!(status_of(&lb, i).ewma_latency, Duration::from_millis(25));
    }
}

/// Closed loop: `concurrency` requests in flight at any time, each held for the same
/// number of picks, so in-flight counts track each endpoint's share and P2C compares
/// loads per unit of weight. Returns the heavier endpoint's share ratio.
fn p2c_closed_loop<L: lb_core::balance::Load>(load: L, seed: u64) -> f64 {
    let rt = runtime();
    let concurrency = 200;
    let lb = rt.block_on(async {
        Balancer::builder(P2c::from_seed(load, seed))
            // A latency estimate no real sample can exceed, so peak EWMA sees equal latency.
            .default_rtt(Duration::from_secs(1))
            .spawn(discover::fixed([ep_w(0, 3), ep_w(1, 1)]), healthy_backends())
    });
    rt.block_on(lb.ready_endpoints(2));
    let mut window: VecDeque<Picked<Backend>> = VecDeque::new();
    let mut counts = [0u64; 2];
    for k in 0..40_000 {
        let p = lb.pick(None).unwrap();
        if k >= 2_000 {
            counts[p.service.idx] += 1;
        }
        window.push_back(p);
        if window.len() > concurrency {
            window.pop_front();
        }
    }
    counts[0] as f64 / counts[1] as f64
}

#[test]
fn p2c_pending_requests_gives_weight_3_three_times_the_load() {
    for seed in [1, 2, 3] {
        let ratio = p2c_closed_loop(PendingRequests, seed);
        assert!(
            (2.7..=3.3).contains(&ratio),
            "seed {seed}: weight 3 vs 1 got ratio {ratio}"
        );
    }
}

#[test]
fn p2c_peak_ewma_gives_weight_3_three_times_the_load_at_equal_latency() {
    for seed in [1, 2, 3] {
        let ratio = p2c_closed_loop(PeakEwma::default(), seed);
        assert!(
            (2.7..=3.3).contains(&ratio),
            "seed {seed}: weight 3 vs 1 got ratio {ratio}"
        );
    }
}

// === weighted random ===

proptest! {
    #![proptest_config(config(64))]

    /// Weighted random's shares follow the effective weights within five standard
    /// deviations of the binomial count.
    #[test]
    fn random_shares_follow_weights(
        weights in prop::collection::vec(1u32..=10, 1..=6),
        seed in any::<u64>(),
    ) {
        let (st, eff) = states(&weights);
        let set = Candidates::new(&st, &eff);
        let draws = 20_000usize;
        let seq = picks(&Random::from_seed(seed), &set, draws);
        let total: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let p = w as f64 / total as f64;
            let expected = draws as f64 * p;
            let sd = (draws as f64 * p * (1.0 - p)).sqrt();
            let got = seq.iter().filter(|&&x| x == i).count() as f64;
            prop_assert!(
                (got - expected).abs() <= 5.0 * sd + 1.0,
                "endpoint {i} (weight {w} of {total}): {got} picks, expected {expected:.0} ± {:.0}", 5.0 * sd
            );
        }
    }
}

// === Maglev ===

// The Maglev table's own properties (moves on removal, shares, lookups) are unit
// tests of `src/balance/maglev.rs`: they read the table, which is not public.

#[derive(Clone, Debug)]
enum KeyOp {
    /// Pick with this hot key and hold the guard.
    Pick(u8),
    Release(Index),
}

proptest! {
    #![proptest_config(config(64))]

    /// Maglev with bounded load, through a balancer with held guards: right after each
    /// pick, the picked endpoint holds at most `ceil(c * T * w_i / W)` requests, `T`
    /// the total in flight (this one included), `W` the weight sum. Hot keys (a handful
    /// of them) make the bound bite.
    #[test]
    fn maglev_bounded_load_never_exceeds_the_cap(
        weights in prop::collection::vec(1u32..=4, 2..=6),
        factor in prop_oneof![Just(1.0f64), Just(1.25), Just(1.5), Just(2.0)],
        ops in prop::collection::vec(
            prop_oneof![3 => (0u8..3).prop_map(KeyOp::Pick), 1 => any::<Index>().prop_map(KeyOp::Release)],
            1..200,
        ),
    ) {
        let rt = runtime();
        let n = weights.len();
        let lb = fixed_balancer(&rt, Maglev::bounded(factor).with_min_table_size(1009), &weights);
        let total_w: u64 = weights.iter().map(|&w| (w * WEIGHT_SCALE) as u64).sum();
        let mut guards: Vec<Picked<Backend>> = Vec::new();
        let mut held = vec![0u64; n];
        for op in ops {
            match op {
                KeyOp::Pick(k) => {
                    let p = lb.pick(Some(hash_key(&[k]))).expect("eligible");
                    let i = p.service.idx;
                    held[i] += 1;
                    let t: u64 = held.iter().sum();
                    let cap = (factor * t as f64 * (weights[i] * WEIGHT_SCALE) as f64 / total_w as f64).ceil();
                    prop_assert!(
                        held[i] as f64 <= cap,
                        "endpoint {i} holds {} of {t} in flight, cap {cap} (c = {factor}, weights {weights:?})", held[i]
                    );
                    prop_assert_eq!(p.guard.endpoint().in_flight() as u64, held[i]);
                    guards.push(p);
                }
                KeyOp::Release(ix) => {
                    if !guards.is_empty() {
                        let p = guards.swap_remove(ix.index(guards.len()));
                        held[p.service.idx] -= 1;
                    }
                }
            }
        }
    }
}

/// The bound is not vacuous: one hot key held without release spreads over every
/// endpoint, in proportion to weight.
#[test]
fn maglev_bounded_load_spreads_one_hot_key() {
    let rt = runtime();
    let weights = [1, 1, 2, 4];
    let lb = fixed_balancer(&rt, Maglev::bounded(1.25), &weights);
    let guards: Vec<Picked<Backend>> = (0..80).map(|_| lb.pick(Some(hash_key(b"hot"))).unwrap()).collect();
    let mut held = [0usize; 4];
    for p in &guards {
        held[p.service.idx] += 1;
    }
    for (i, &w) in weights.iter().enumerate() {
        // Fair share 80 * w / 8; the cap is 1.25 times that, rounded up.
        let cap = (1.25 * 80.0 * w as f64 / 8.0f64).ceil() as usize;
        assert!(
            held[i] >= 1 && held[i] <= cap,
            "endpoint {i}: {} of 80 (cap {cap}); {held:?}",
            held[i]
        );
    }
    // Plain Maglev sends the hot key to one endpoint only.
    let plain = fixed_balancer(&rt, Maglev::new(), &weights);
    let first = plain.pick(Some(hash_key(b"hot"))).unwrap().service.idx;
    assert!((0..50).all(|_| plain.pick(Some(hash_key(b"hot"))).unwrap().service.idx == first));
}
