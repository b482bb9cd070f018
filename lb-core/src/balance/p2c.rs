//! Power of two choices over a pluggable load.
//!
//! Draw two endpoints at random, send to the less loaded. Mitzenmacher showed that
//! with `n` requests over `n` endpoints this cuts the most loaded endpoint's share from
//! Θ(ln n / ln ln n) (one random choice) to ln ln n / ln 2 + O(1), at O(1) cost per pick
//! and without the herding of a full least-loaded scan when many balancers work
//! independently.
//!
//! Weights count twice over, so that a weight-3 endpoint takes about three times the
//! share of a weight-1 one at equal latency (tower's p2c cannot, tower issue 696):
//! the two candidates are drawn in proportion to weight, and their loads are compared
//! per unit of weight.

use std::time::Duration;

use super::alias::AliasTable;
use super::random::Weighted;
use super::{bounded, Balance, Candidates, PickContext, Rng};
use crate::state::{now_ns, EndpointState};

/// How loaded an endpoint is, for [`P2c`]. Lower is better.
///
/// Not tower's `tower::load::Load`, though it measures the same thing: tower's is
/// implemented by an endpoint's *service* (a wrapper that counts its own requests), this
/// one by a *measure* that reads the endpoint's shared state ([`EndpointState`]), which the
/// balancer keeps for every endpoint whatever its service. Import one of the two under
/// another name if a module needs both.
pub trait Load: Send + Sync + 'static {
    /// The endpoint's load at `now` (nanoseconds on the process clock, or 0 when
    /// [`needs_clock`](Load::needs_clock) is false). Compared per unit of weight.
    fn load(&self, endpoint: &EndpointState, now: u64) -> f64;

    /// Whether [`load`](Load::load) reads the clock (one clock read per pick).
    fn needs_clock(&self) -> bool {
        false
    }

    /// Whether requests must be timed for this load to work.
    fn needs_latency(&self) -> bool {
        false
    }

    /// The time constant of the latency average, if the load reads latency.
    fn decay(&self) -> Option<Duration> {
        None
    }

    /// A short name, used in the policy name.
    fn name(&self) -> &'static str;
}

/// Load = requests in flight (their response bodies included).
///
/// The measure of tower's `tower::load::PendingRequests`, but not a service wrapper: a
/// unit value handed to [`P2c`], reading the count the balancer keeps per endpoint.
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingRequests;

impl Load for PendingRequests {
    #[inline]
    fn load(&self, endpoint: &EndpointState, _: u64) -> f64 {
        endpoint.in_flight() as f64
    }

    fn name(&self) -> &'static str {
        "p2c"
    }
}

/// Load = peak-EWMA round-trip time × (in flight + 1): Finagle's and Envoy's cost.
///
/// The estimate jumps to a higher sample at once and decays toward lower ones with
/// time constant `decay`; with no traffic it decays toward zero, so an endpoint that
/// was slow once is tried again. A failed request is sampled as at least the
/// balancer's failure penalty ([`Builder::failure_penalty`](crate::Builder::failure_penalty),
/// default 1 s), so an endpoint that fails fast looks slow, not fast; a cancelled one
/// is no sample. Times are read from tokio's clock, which a test can pause.
///
/// The measure of tower's `tower::load::PeakEwma`, but not a service wrapper: the
/// estimate lives in the endpoint's shared state and survives discovery updates; this
/// value only holds the decay time. Unlike tower's, a failure is sampled as at least
/// the failure penalty, and weights count (a weight-3 endpoint at equal cost takes three
/// times the share).
#[derive(Clone, Copy, Debug)]
pub struct PeakEwma {
    decay_ns: f64,
}

impl PeakEwma {
    /// A peak EWMA with the given decay time (Envoy and Linkerd use 10 s).
    pub fn new(decay: Duration) -> Self {
        Self {
            decay_ns: decay.as_nanos().max(1) as f64,
        }
    }

    /// The decay time constant in nanoseconds.
    pub fn decay_ns(&self) -> f64 {
        self.decay_ns
    }
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

impl Load for PeakEwma {
    #[inline]
    fn load(&self, endpoint: &EndpointState, now: u64) -> f64 {
        endpoint.rtt_estimate(now, self.decay_ns) * (endpoint.in_flight() as f64 + 1.0)
    }

    fn needs_clock(&self) -> bool {
        true
    }

    fn needs_latency(&self) -> bool {
        true
    }

    fn decay(&self) -> Option<Duration> {
        Some(Duration::from_nanos(self.decay_ns as u64))
    }

    fn name(&self) -> &'static str {
        "peak_ewma"
    }
}

/// Power of two choices: the less loaded of two weighted random draws.
#[derive(Debug)]
pub struct P2c<L = PendingRequests> {
    load: L,
    rng: Rng,
}

impl<L: Load> P2c<L> {
    /// P2C over `load`, seeded from the clock.
    pub fn new(load: L) -> Self {
        Self {
            load,
            rng: Rng::from_entropy(),
        }
    }

    /// P2C over `load`, seeded, so a single-threaded sequence repeats.
    pub fn from_seed(load: L, seed: u64) -> Self {
        Self {
            load,
            rng: Rng::from_seed(seed),
        }
    }

    /// The load in use.
    pub fn load(&self) -> &L {
        &self.load
    }
}

impl Default for P2c<PendingRequests> {
    fn default() -> Self {
        Self::new(PendingRequests)
    }
}

impl<L: Load> Balance for P2c<L> {
    type State = Weighted;

    fn name(&self) -> &'static str {
        self.load.name()
    }

    fn build(&self, set: &Candidates<'_>) -> Weighted {
        Weighted(AliasTable::new(set.weights()))
    }

    #[inline]
    fn pick(&self, state: &Weighted, set: &Candidates<'_>, cx: &PickContext) -> Option<usize> {
        let n = set.len();
        match n {
            0 => return None,
            1 => return Some(0),
            _ => {}
        }
        let (a, b) = if state.0.is_uniform() {
            // Unweighted: two distinct indices from one random number, no redraws.
            let r = self.rng.next_u64();
            let a = bounded(r, n);
            let b = (a + 1 + bounded(r.rotate_left(32), n - 1)) % n;
            (a, b)
        } else {
            let a = state.0.sample(self.rng.next_u64());
            let mut b = state.0.sample(self.rng.next_u64());
            // Distinct candidates; a dominant weight may need a few draws.
            let mut tries = 0;
            while b == a && tries < 4 {
                b = state.0.sample(self.rng.next_u64());
                tries += 1;
            }
            if b == a {
                return Some(a);
            }
            (a, b)
        };
        let now = match (self.load.needs_clock(), cx.now) {
            (false, _) => 0,
            (true, 0) => now_ns(),
            (true, t) => t,
        };
        let la = self.load.load(set.endpoint(a), now);
        let lb = self.load.load(set.endpoint(b), now);
        // la / wa <= lb / wb, without division; ties go to the first draw.
        if lb * (set.weight(a) as f64) < la * (set.weight(b) as f64) {
            Some(b)
        } else {
            Some(a)
        }
    }

    fn needs_latency(&self) -> bool {
        self.load.needs_latency()
    }

    fn latency_decay(&self) -> Option<Duration> {
        self.load.decay()
    }
}
