//! Retry timing for discovery sources: a capped exponential backoff with jitter.
//!
//! Every source that talks to something remote (a Docker Engine, a Consul agent) retries
//! the same way: from a minimum, doubling, up to a cap, each wait scaled by a random factor
//! in [0.5, 1.5) so that many proxies that lost the same server do not come back in step.

use std::time::Duration;

use crate::balance::rng::Rng;

/// A capped exponential backoff with jitter.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lb_core::discover::Backoff;
///
/// let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
/// let first = b.next_wait();          // 125 ms .. 375 ms
/// assert!(first >= Duration::from_millis(125) && first < Duration::from_millis(375));
/// b.reset();                          // after a success
/// ```
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
    rng: Rng,
}

impl Backoff {
    /// From `min` (at least 1 ms), doubling, capped at `max` (at least `min`, at most a
    /// day).
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.clamp(Duration::from_millis(1), Duration::from_secs(86_400));
        Self {
            min,
            max: max.clamp(min, Duration::from_secs(86_400)),
            step: min,
            rng: Rng::from_entropy(),
        }
    }

    /// The next wait: the current step with jitter; the step then doubles, up to the cap.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.jitter(self.step);
        self.step = self.step.saturating_mul(2).min(self.max);
        wait
    }

    /// The cap with jitter, for a failure that will not fix itself soon (a configuration
    /// problem): it does not advance the step.
    pub fn longest_wait(&self) -> Duration {
        self.jitter(self.max)
    }

    /// Back to the minimum, after a success.
    pub fn reset(&mut self) {
        self.step = self.min;
    }

    /// `d` scaled by a random factor in [0.5, 1.5).
    fn jitter(&self, d: Duration) -> Duration {
        let unit = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        d.mul_f64(0.5 + unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let steps = [100, 200, 400, 800, 800];
        for ms in steps {
            let w = b.next_wait();
            let base = Duration::from_millis(ms);
            assert!(w >= base / 2 && w < base * 3 / 2, "{w:?} for a step of {base:?}");
        }
        let l = b.longest_wait();
        assert!(l >= Duration::from_millis(400) && l < Duration::from_millis(1200));
        b.reset();
        let w = b.next_wait();
        assert!(w < Duration::from_millis(150), "{w:?}");
    }

    #[test]
    fn extreme_bounds_neither_spin_nor_panic() {
        let mut zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert!(zero.next_wait() > Duration::ZERO, "a zero minimum would be a busy loop");
        let mut huge = Backoff::new(Duration::from_secs(1), Duration::MAX);
        for _ in 0..100 {
            huge.next_wait();
        }
        assert!(huge.longest_wait() <= Duration::from_secs(86_400 * 3 / 2));
    }

    #[test]
    fn jitter_spreads() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let waits: std::collections::BTreeSet<Duration> = (0..50).map(|_| b.longest_wait()).collect();
        assert!(waits.len() > 40, "50 waits, {} distinct", waits.len());
    }
}
