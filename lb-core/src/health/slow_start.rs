//! Slow start: an endpoint that joins late, or comes back into rotation, ramps its
//! effective weight up over a window instead of taking its full share at once.
//!
//! The ramp is linear from `min_weight_percent` (HAProxy's `slowstart`, Envoy's
//! `slow_start_config` with aggression 1). The writer keeps one [`Ramp`] per endpoint,
//! applies its factor when it publishes effective weights, and wakes to publish again
//! while a ramp runs.

use std::time::Duration;

use tokio::time::Instant;

/// Slow start: the effective weight of an endpoint that joins late or recovers ramps
/// up over `window`, from `min_weight_percent` of its weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowStart {
    /// How long the ramp lasts.
    pub window: Duration,
    /// The share of the weight it starts at. Default 0.1.
    pub min_weight_percent: f64,
}

impl SlowStart {
    /// A linear ramp over `window` from 10%.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            min_weight_percent: 0.1,
        }
    }

    /// The factor applied to the weight `elapsed` after the ramp began.
    pub fn factor(&self, elapsed: Duration) -> f64 {
        if self.window.is_zero() || elapsed >= self.window {
            return 1.0;
        }
        let t = elapsed.as_secs_f64() / self.window.as_secs_f64();
        t.max(self.min_weight_percent.clamp(0.0, 1.0))
    }
}

/// One endpoint's ramp, kept by the writer.
#[derive(Debug)]
pub(crate) struct Ramp {
    /// When the running ramp began.
    from: Option<Instant>,
    /// Ramp once the endpoint's service is made (it joined after the first set).
    on_ready: bool,
}

impl Ramp {
    /// No ramp yet; one starts when the service is made if `joined_late`.
    pub(crate) fn new(joined_late: bool) -> Self {
        Self {
            from: None,
            on_ready: joined_late,
        }
    }

    /// The endpoint's service is made: a late joiner starts its ramp (once).
    pub(crate) fn made(&mut self, now: Instant, slow_start: Option<SlowStart>) {
        if std::mem::take(&mut self.on_ready) && slow_start.is_some() {
            self.from = Some(now);
        }
    }

    /// The endpoint came back into rotation (from ejection, unhealthy, a drain).
    pub(crate) fn back_in_rotation(&mut self, now: Instant, slow_start: Option<SlowStart>) {
        if slow_start.is_some() {
            self.from = Some(now);
        }
    }

    /// Forgets a ramp whose window is over.
    pub(crate) fn end_if_done(&mut self, now: Instant, slow_start: Option<SlowStart>) {
        if let (Some(from), Some(ss)) = (self.from, slow_start) {
            if now.duration_since(from) >= ss.window {
                self.from = None;
            }
        }
    }

    /// The factor on the endpoint's weight now: 1 without a running ramp.
    pub(crate) fn factor(&self, now: Instant, slow_start: Option<SlowStart>) -> f64 {
        match (self.from, slow_start) {
            (Some(from), Some(ss)) => ss.factor(now.duration_since(from)),
            _ => 1.0,
        }
    }

    /// When the writer must wake to publish the next step of a running ramp (about 16
    /// steps per window, at most every 50 ms), or to end it.
    pub(crate) fn next_wake(&self, now: Instant, slow_start: Option<SlowStart>) -> Option<Instant> {
        let (from, ss) = (self.from?, slow_start?);
        if now < from + ss.window {
            Some(now + (ss.window / 16).max(Duration::from_millis(50)))
        } else {
            Some(now)
        }
    }
}
