//! In-flight guards and completion tracking.
//!
//! A pick takes an [`InFlight`] guard on the chosen endpoint. The guard lives until the
//! request is really over, as the balancer's [`Protocol`](crate::Protocol) decides: by
//! default until the response arrives ([`Plain`](crate::Plain)); for HTTP (feature
//! `http`), until the response body ends (`http::Http` and `http::TrackedBody`), so a
//! long download counts as load for its whole length. When it drops, the in-flight count goes down and the request's
//! [`Outcome`] feeds passive health and the latency estimate:
//!
//! - a **success** ([`InFlight::succeed`]) ends the endpoint's failure streak and, when
//!   requests are timed, records its latency;
//! - a **failure** ([`InFlight::fail`]) extends the streak (outlier detection) and
//!   records a penalised latency sample (see [`Builder::failure_penalty`]);
//! - a guard dropped **without an outcome** is a cancellation: the caller gave up (the
//!   response future or body was dropped, a timeout around the balancer fired). It is
//!   neither: the streak is left as it is and no latency is recorded, so a request to
//!   a hung endpoint that the caller abandons can neither clear that endpoint's
//!   failures nor make it look fast. (To have a hung endpoint counted as failing, give
//!   the balancer a per-attempt [`Builder::timeout`].)
//!
//! The balancer's own call path sets the outcome; a caller that takes guards itself
//! ([`Balancer::pick`](crate::Balancer::pick)) calls [`succeed`](InFlight::succeed)
//! or [`fail`](InFlight::fail) before dropping the guard.
//!
//! [`Builder::failure_penalty`]: crate::Builder::failure_penalty
//! [`Builder::timeout`]: crate::Builder::timeout

use std::fmt;
use std::sync::Arc;

use tokio::time::Instant;

use crate::health::outlier;
use crate::state::EndpointState;

/// How a request ended, as reported to its [`InFlight`] guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The endpoint served the request.
    Success,
    /// The endpoint failed it (an error, a 5xx, a timeout, a body that broke off).
    Failure,
}

/// A policy that keeps derived state per snapshot (least-conn's tree, bounded
/// Maglev's total) hears about finished requests through the snapshot they came from.
/// Implemented by snapshots.
pub(crate) trait Release: Send + Sync + 'static {
    fn release(&self, index: u32);
}

/// Holds one request's place on an endpoint.
///
/// Dropping it ends the request: the endpoint's in-flight count goes down and the
/// outcome set with [`succeed`](Self::succeed) or [`fail`](Self::fail) is recorded; a
/// guard dropped with neither is a cancellation, which counts for nothing (see the
/// [module docs](self)). It holds the endpoint's state (an `Arc`), and for policies
/// that track releases the snapshot it was picked from, not a copy of anything: taking
/// and dropping one allocates nothing, and threads picking different endpoints write no
/// shared cache line for it.
pub struct InFlight {
    state: Arc<EndpointState>,
    tracker: Option<(Arc<dyn Release>, u32)>,
    /// When the request was picked, if requests are timed.
    start: Option<Instant>,
    /// Whether its latency sample is recorded already (at the response head).
    observed: bool,
    outcome: Option<Outcome>,
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("endpoint", self.state.id())
            .field("outcome", &self.outcome)
            .finish()
    }
}

// === impl InFlight ===

impl InFlight {
    #[inline]
    pub(crate) fn new(
        state: Arc<EndpointState>,
        tracker: Option<(Arc<dyn Release>, u32)>,
        start: Option<Instant>,
    ) -> Self {
        Self {
            state,
            tracker,
            start,
            observed: false,
            outcome: None,
        }
    }

    /// Marks the request failed: when the guard drops, it counts toward passive
    /// outlier detection and records a penalised latency sample. A failure is final:
    /// a later [`succeed`](Self::succeed) does not undo it.
    pub fn fail(&mut self) {
        self.outcome = Some(Outcome::Failure);
    }

    /// Marks the request served: when the guard drops, it ends the endpoint's failure
    /// streak and, if requests are timed and no sample was taken at the response head
    /// ([`observe_latency`](Self::observe_latency)), records the time from pick to the
    /// drop as its latency. Does nothing to a request already marked failed.
    pub fn succeed(&mut self) {
        if self.outcome.is_none() {
            self.outcome = Some(Outcome::Success);
        }
    }

    /// The outcome so far: `None` until [`succeed`](Self::succeed) or
    /// [`fail`](Self::fail) (and, if the guard drops so, a cancellation).
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// The endpoint this request went to.
    pub fn endpoint(&self) -> &EndpointState {
        &self.state
    }

    /// Whether it was marked failed.
    pub fn is_failed(&self) -> bool {
        self.outcome == Some(Outcome::Failure)
    }

    /// Records the time from pick to now as the endpoint's latency sample (peak EWMA),
    /// once, if requests are timed. Called when a good response head arrives, so that a
    /// long body does not count as latency. Not for a failed request: its sample is
    /// taken when the guard drops, penalised.
    pub fn observe_latency(&mut self) {
        if self.observed {
            return;
        }
        self.observed = true;
        if let Some(start) = self.start {
            self.state.observe_since(start);
        }
    }
}

impl Drop for InFlight {
    /// Ends the request: the outcome feeds passive health (the failure streak, and the
    /// writer's wake-up when it reaches the outlier threshold) and the latency estimate,
    /// then the endpoint's in-flight count goes down.
    #[inline]
    fn drop(&mut self) {
        match self.outcome {
            Some(Outcome::Success) => {
                self.observe_latency();
                self.state.record_success();
            }
            Some(Outcome::Failure) => {
                if self.start.is_some() {
                    self.state.observe_failure(self.start.filter(|_| !self.observed));
                }
                let streak = self.state.record_failure();
                outlier::failed(&self.state, streak);
            }
            // Cancelled: the caller stopped waiting. Nothing is known of the endpoint, so
            // the streak is neither ended nor extended.
            None => {}
        }
        self.state.release();
        if let Some((snap, index)) = self.tracker.take() {
            snap.release(index);
        }
    }
}
