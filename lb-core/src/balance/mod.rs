//! Balancing policies: one trait, one file per algorithm.
//!
//! A policy sees the eligible endpoints of one snapshot as [`Candidates`] and returns
//! the index of one of them. Whatever it can precompute from the set (a weighted
//! schedule, an alias table, a Maglev table) it builds once per snapshot in
//! [`Balance::build`], off the request path, on the balancer's writer task; whatever must
//! outlive a snapshot (a round-robin cursor, a random generator) it keeps in itself.
//!
//! | policy | picks | weights | source |
//! |---|---|---|---|
//! | [`RoundRobin`] | each endpoint once per cycle | ignored | |
//! | [`WeightedRoundRobin`] | smooth weighted round robin | exact shares per cycle | nginx `ngx_http_upstream_get_peer` |
//! | [`LeastConn`] | least in-flight / weight, ties rotate | yes | HAProxy `leastconn` |
//! | [`P2c`] | the cheaper of two weighted random draws | yes | Mitzenmacher; Finagle's peak EWMA |
//! | [`Random`] | weighted random | yes | |
//! | [`Maglev`] | consistent hash of a request key, optional bounded load | yes | Eisenbud et al. 2016; Mirrokni et al. 2018 |
//!
//! # Writing your own
//!
//! ```
//! use lb_core::balance::{Balance, Candidates, PickContext};
//!
//! /// Always the first endpoint: a fail-over pair.
//! #[derive(Debug)]
//! struct First;
//!
//! impl Balance for First {
//!     type State = ();
//!     fn name(&self) -> &'static str { "first" }
//!     fn build(&self, _: &Candidates<'_>) {}
//!     fn pick(&self, _: &(), set: &Candidates<'_>, _: &PickContext) -> Option<usize> {
//!         (!set.is_empty()).then_some(0)
//!     }
//! }
//! ```

use std::sync::Arc;

use crate::state::EndpointState;

mod alias;
mod any;
mod least_conn;
mod maglev;
mod p2c;
mod random;
pub(crate) mod rng;
mod round_robin;
mod wrr;

pub use self::any::{AnyPolicy, AnyState};
pub use self::least_conn::{LeastConn, Tree};
pub use self::maglev::{hash_key, Maglev, Table as MaglevTable};
pub use self::p2c::{Load, P2c, PeakEwma, PendingRequests};
pub use self::random::{Random, Weighted};
pub use self::round_robin::RoundRobin;
pub use self::wrr::{Schedule, WeightedRoundRobin};

pub(crate) use self::rng::Rng;

/// A balancing algorithm.
///
/// # Contract
///
/// - [`build`](Balance::build) runs on the writer task each time the eligible set or an
///   effective weight changes. It may allocate and take time (a Maglev table).
/// - [`pick`](Balance::pick) runs on the request path, possibly on many threads at once.
///   It must not block, lock or allocate, and must return an index below
///   `set.len()`, or `None` only when `set` is empty (or no endpoint can take the
///   request). The balancer re-checks the picked endpoint's eligibility and asks again
///   if it went out since the snapshot was built.
/// - [`on_acquire`](Balance::on_acquire) and [`on_release`](Balance::on_release) run
///   after the in-flight count of the picked endpoint went up, and after it went down
///   again (when the response body ended), for policies that keep derived state.
pub trait Balance: Send + Sync + 'static {
    /// What the policy precomputes from one eligible set. Dropped with the snapshot.
    type State: Send + Sync + 'static;

    /// A short name for logs and the status page (`"round_robin"`).
    fn name(&self) -> &'static str;

    /// Precomputes from a new eligible set.
    fn build(&self, set: &Candidates<'_>) -> Self::State;

    /// Picks one endpoint, by its index in `set`.
    fn pick(&self, state: &Self::State, set: &Candidates<'_>, cx: &PickContext) -> Option<usize>;

    /// Called once the picked endpoint's in-flight count has gone up.
    #[inline]
    fn on_acquire(&self, state: &Self::State, set: &Candidates<'_>, index: usize) {
        let _ = (state, set, index);
    }

    /// Called once a request to `set[index]` has ended (its in-flight count went down).
    #[inline]
    fn on_release(&self, state: &Self::State, set: &Candidates<'_>, index: usize) {
        let _ = (state, set, index);
    }

    /// Whether the policy reads latency; the balancer then times every request.
    fn needs_latency(&self) -> bool {
        false
    }

    /// The time constant of the latency average, for policies that read latency
    /// (peak EWMA). `None`: the balancer's default, 10 s.
    fn latency_decay(&self) -> Option<std::time::Duration> {
        None
    }

    /// Whether [`on_release`](Balance::on_release) does anything; when `false` the
    /// balancer skips the call.
    fn tracks_release(&self) -> bool {
        false
    }
}

/// What a request tells the policy about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PickContext {
    /// The request's hash key, for consistent hashing. See [`hash_key`].
    pub key: Option<u64>,
    /// The time of the pick on the process clock (nanoseconds), when the balancer
    /// read it anyway to time the request; 0 when it did not. Latency-aware loads use
    /// it rather than reading the clock again.
    pub now: u64,
}

impl PickContext {
    /// A context with a hash key.
    pub fn with_key(key: u64) -> Self {
        Self { key: Some(key), now: 0 }
    }
}

/// The eligible endpoints of one snapshot, as a policy sees them.
///
/// `weight(i)` is the *effective* weight: the configured weight scaled by slow start,
/// multiplied by [`WEIGHT_SCALE`] so a ramp can be finer than one unit. Policies
/// compare weights as ratios, so the scale never shows.
#[derive(Clone, Copy, Debug)]
pub struct Candidates<'a> {
    endpoints: &'a [Arc<EndpointState>],
    weights: &'a [u32],
}

/// The factor between a configured weight and an effective weight at full strength.
pub const WEIGHT_SCALE: u32 = 16;

impl<'a> Candidates<'a> {
    /// A view over endpoints and their effective weights (both of the same length, each
    /// weight at least 1).
    ///
    /// # Panics
    ///
    /// If the lengths differ or a weight is 0.
    pub fn new(endpoints: &'a [Arc<EndpointState>], weights: &'a [u32]) -> Self {
        assert_eq!(endpoints.len(), weights.len(), "one weight per endpoint");
        assert!(weights.iter().all(|&w| w > 0), "effective weights are at least 1");
        Self { endpoints, weights }
    }

    /// The same view without the checks, for the request path: snapshots are checked
    /// once when they are built, not on every pick (the check reads every weight).
    #[inline]
    pub(crate) fn trusted(endpoints: &'a [Arc<EndpointState>], weights: &'a [u32]) -> Self {
        debug_assert_eq!(endpoints.len(), weights.len());
        Self { endpoints, weights }
    }

    /// How many endpoints there are.
    #[inline]
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are none.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The live state of endpoint `i`.
    #[inline]
    pub fn endpoint(&self, i: usize) -> &'a EndpointState {
        &self.endpoints[i]
    }

    /// The effective weight of endpoint `i` (at least 1).
    #[inline]
    pub fn weight(&self, i: usize) -> u32 {
        self.weights[i]
    }

    /// All effective weights.
    #[inline]
    pub fn weights(&self) -> &'a [u32] {
        self.weights
    }

    /// Whether every endpoint has the same effective weight.
    pub fn uniform(&self) -> bool {
        self.weights.windows(2).all(|w| w[0] == w[1])
    }
}

/// Greatest common divisor, for reducing weight vectors.
pub(crate) fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A map from a 64-bit random number onto `0..n` without division (Lemire).
#[inline]
pub(crate) fn bounded(r: u64, n: usize) -> usize {
    ((r as u128 * n as u128) >> 64) as usize
}
