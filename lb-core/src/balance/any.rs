//! A policy chosen at run time, for proxies that read it from configuration.

use super::{
    Balance, Candidates, LeastConn, Maglev, MaglevTable, P2c, PeakEwma, PendingRequests, PickContext, Random,
    RoundRobin, Schedule, Tree, Weighted, WeightedRoundRobin,
};

/// Any of the built-in policies, picked at run time (from a config file, say).
///
/// Dispatch is one `match` per pick; the per-snapshot state is the chosen policy's.
///
/// # Examples
///
/// ```
/// use lb_core::balance::{AnyPolicy, Balance, LeastConn};
///
/// let p = AnyPolicy::from(LeastConn::new());
/// assert_eq!(p.name(), "least_conn");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyPolicy {
    /// [`RoundRobin`].
    RoundRobin(RoundRobin),
    /// [`WeightedRoundRobin`].
    WeightedRoundRobin(WeightedRoundRobin),
    /// [`LeastConn`].
    LeastConn(LeastConn),
    /// [`P2c`] over pending requests.
    P2c(P2c<PendingRequests>),
    /// [`P2c`] over peak EWMA.
    PeakEwma(P2c<PeakEwma>),
    /// [`Random`].
    Random(Random),
    /// [`Maglev`].
    Maglev(Maglev),
}

/// The per-snapshot state of [`AnyPolicy`]: the chosen policy's.
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyState {
    /// No state.
    None,
    /// A smooth WRR schedule.
    Schedule(Schedule),
    /// A least-conn tree.
    Tree(Tree),
    /// An alias table.
    Weighted(Weighted),
    /// A Maglev table.
    Maglev(MaglevTable),
}

macro_rules! from {
    ($($v:ident($t:ty)),*) => {
        $(impl From<$t> for AnyPolicy {
            fn from(p: $t) -> Self {
                AnyPolicy::$v(p)
            }
        })*
    };
}

from!(
    RoundRobin(RoundRobin),
    WeightedRoundRobin(WeightedRoundRobin),
    LeastConn(LeastConn),
    P2c(P2c<PendingRequests>),
    PeakEwma(P2c<PeakEwma>),
    Random(Random),
    Maglev(Maglev)
);

impl Balance for AnyPolicy {
    type State = AnyState;

    fn name(&self) -> &'static str {
        match self {
            AnyPolicy::RoundRobin(p) => p.name(),
            AnyPolicy::WeightedRoundRobin(p) => p.name(),
            AnyPolicy::LeastConn(p) => p.name(),
            AnyPolicy::P2c(p) => p.name(),
            AnyPolicy::PeakEwma(p) => p.name(),
            AnyPolicy::Random(p) => p.name(),
            AnyPolicy::Maglev(p) => p.name(),
        }
    }

    fn build(&self, set: &Candidates<'_>) -> AnyState {
        match self {
            AnyPolicy::RoundRobin(p) => {
                p.build(set);
                AnyState::None
            }
            AnyPolicy::WeightedRoundRobin(p) => AnyState::Schedule(p.build(set)),
            AnyPolicy::LeastConn(p) => AnyState::Tree(p.build(set)),
            AnyPolicy::P2c(p) => AnyState::Weighted(p.build(set)),
            AnyPolicy::PeakEwma(p) => AnyState::Weighted(p.build(set)),
            AnyPolicy::Random(p) => AnyState::Weighted(p.build(set)),
            AnyPolicy::Maglev(p) => AnyState::Maglev(p.build(set)),
        }
    }

    #[inline]
    fn pick(&self, state: &AnyState, set: &Candidates<'_>, cx: &PickContext) -> Option<usize> {
        match (self, state) {
            (AnyPolicy::RoundRobin(p), _) => p.pick(&(), set, cx),
            (AnyPolicy::WeightedRoundRobin(p), AnyState::Schedule(s)) => p.pick(s, set, cx),
            (AnyPolicy::LeastConn(p), AnyState::Tree(s)) => p.pick(s, set, cx),
            (AnyPolicy::P2c(p), AnyState::Weighted(s)) => p.pick(s, set, cx),
            (AnyPolicy::PeakEwma(p), AnyState::Weighted(s)) => p.pick(s, set, cx),
            (AnyPolicy::Random(p), AnyState::Weighted(s)) => p.pick(s, set, cx),
            (AnyPolicy::Maglev(p), AnyState::Maglev(s)) => p.pick(s, set, cx),
            _ => unreachable!("the state is built by the same policy"),
        }
    }

    #[inline]
    fn on_acquire(&self, state: &AnyState, set: &Candidates<'_>, index: usize) {
        match (self, state) {
            (AnyPolicy::LeastConn(p), AnyState::Tree(s)) => p.on_acquire(s, set, index),
            (AnyPolicy::Maglev(p), AnyState::Maglev(s)) => p.on_acquire(s, set, index),
            _ => {}
        }
    }

    #[inline]
    fn on_release(&self, state: &AnyState, set: &Candidates<'_>, index: usize) {
        match (self, state) {
            (AnyPolicy::LeastConn(p), AnyState::Tree(s)) => p.on_release(s, set, index),
            (AnyPolicy::Maglev(p), AnyState::Maglev(s)) => p.on_release(s, set, index),
            _ => {}
        }
    }

    fn needs_latency(&self) -> bool {
        matches!(self, AnyPolicy::PeakEwma(_))
    }

    fn latency_decay(&self) -> Option<std::time::Duration> {
        match self {
            AnyPolicy::PeakEwma(p) => p.latency_decay(),
            _ => None,
        }
    }

    fn tracks_release(&self) -> bool {
        match self {
            AnyPolicy::LeastConn(p) => p.tracks_release(),
            AnyPolicy::Maglev(p) => p.tracks_release(),
            _ => false,
        }
    }
}
