//! Passive outlier detection: an endpoint that fails `consecutive_failures` requests in a
//! row is ejected for a while.
//!
//! Two halves. On the request path, a failed request's guard reports the new failure
//! streak ([`failed`]): the one that reaches the threshold wakes the balancer's writer.
//! On the writer, each wake-up re-admits the endpoints whose ejection is over and ejects
//! those over the threshold ([`Ejection`]), within [`OutlierConfig::max_ejection_percent`]
//! of the set. The `k`-th ejection lasts `k * base_ejection`, capped at `max_ejection`;
//! an endpoint that stayed in for longer than `max_ejection` since its last one starts
//! over at one.

use std::time::Duration;

use tokio::time::Instant;

use crate::endpoint::EndpointId;
use crate::state::{EndpointState, Flag};

/// Passive outlier detection: on by default in a [`Builder`](crate::Builder), with
/// these defaults; see [`Builder::outlier_detection`](crate::Builder::outlier_detection).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutlierConfig {
    /// Failures in a row (errors, timeouts, or 5xx for HTTP) that eject an endpoint;
    /// cancelled requests neither count nor break the streak. Default 5; 0 turns
    /// outlier detection off.
    pub consecutive_failures: u32,
    /// The first ejection lasts this long; the k-th, k times as long. Default 10 s.
    pub base_ejection: Duration,
    /// No ejection lasts longer. Default 300 s.
    pub max_ejection: Duration,
    /// At most this share of endpoints is ejected at once (at least one may always be).
    /// Default 0.5.
    pub max_ejection_percent: f64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 0.5,
        }
    }
}

/// A request to `state` failed and its failure streak is now `streak`: wakes the
/// balancer's writer once, when the streak reaches the threshold. The writer looks at
/// every endpoint on each wake-up, so one held back by the ejection cap is found on a
/// later one.
#[inline]
pub(crate) fn failed(state: &EndpointState, streak: u32) {
    if let Some(link) = state.linked() {
        if link.outlier_threshold > 0 && streak == link.outlier_threshold {
            link.wake.notify_one();
        }
    }
}

/// One endpoint's ejection, kept by the writer.
#[derive(Debug, Default)]
pub(crate) struct Ejection {
    /// When the current ejection ends, if the endpoint is ejected.
    until: Option<Instant>,
    /// When the last ejection ended.
    last_end: Option<Instant>,
}

impl Ejection {
    /// Whether the endpoint is ejected now.
    pub(crate) fn is_ejected(&self) -> bool {
        self.until.is_some()
    }

    /// When the writer must wake to re-admit it.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        self.until
    }

    /// Re-admits the endpoint if its ejection is over.
    pub(crate) fn readmit_if_due(&mut self, now: Instant, state: &EndpointState, id: &EndpointId, name: &str) {
        if self.until.is_some_and(|t| t <= now) {
            self.until = None;
            self.last_end = Some(now);
            state.set_flag(Flag::Ejected, false);
            tracing::info!(balancer = %name, endpoint = %id, "ejection over; endpoint re-admitted");
        }
    }

    /// Ejects the endpoint if its failure streak reached the threshold and `cap` has
    /// room.
    pub(crate) fn eject_if_failing(
        &mut self,
        config: &OutlierConfig,
        cap: &mut Cap,
        now: Instant,
        state: &EndpointState,
        id: &EndpointId,
        name: &str,
    ) {
        if self.until.is_some() || state.consecutive_failures() < config.consecutive_failures {
            return;
        }
        if cap.ejected >= cap.max {
            tracing::debug!(balancer = %name, endpoint = %id, "would eject, but {} of {} are out already", cap.ejected, cap.of);
            return;
        }
        if self
            .last_end
            .is_some_and(|t| now.duration_since(t) > config.max_ejection)
        {
            state.forgive_ejections();
        }
        let times = state.note_ejected();
        let dur = (config.base_ejection * times).min(config.max_ejection);
        self.until = Some(now + dur);
        state.set_flag(Flag::Ejected, true);
        cap.ejected += 1;
        tracing::warn!(balancer = %name, endpoint = %id, times, ejected_for = ?dur, "endpoint ejected after consecutive failures");
    }
}

/// How many endpoints may be ejected at once, and how many are.
#[derive(Debug)]
pub(crate) struct Cap {
    max: usize,
    ejected: usize,
    of: usize,
}

impl Cap {
    /// `max_ejection_percent` of `total` endpoints (at least one), `ejected` of them out
    /// already.
    pub(crate) fn new(config: &OutlierConfig, total: usize, ejected: usize) -> Self {
        Self {
            max: ((total as f64 * config.max_ejection_percent).floor() as usize).max(1),
            ejected,
            of: total,
        }
    }
}
