//! Active health checks: each endpoint probed on an interval, a verdict after `rise`
//! passes or `fall` failures in a row.
//!
//! The writer starts one probe task per endpoint ([`spawn`]) when the endpoint joins and
//! stops it when the endpoint leaves. The task runs the endpoint's checks one after
//! another and keeps the rise/fall streak itself ([`RiseFall`]); only the verdict (the
//! endpoint's `Unhealthy` flag, whether it was ever checked) and the last check's record
//! go into the endpoint's shared state. A verdict that flips wakes the writer, which
//! publishes a snapshot without (or with) the endpoint.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::HealthCheck;
use crate::state::{now_ns, CheckRecord, EndpointState, Flag};

/// How often and how strictly active checks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    /// Time between two probes of one endpoint. Default 2 s (HAProxy's `inter`).
    pub interval: Duration,
    /// A probe that takes longer fails. Default 1 s.
    pub timeout: Duration,
    /// Passes in a row to become healthy. Default 2.
    pub rise: u32,
    /// Failures in a row to become unhealthy. Default 3.
    pub fall: u32,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

/// The rise/fall rule over one endpoint's check results.
///
/// Before the first verdict the endpoint is `Unknown` (and eligible): `rise` passes in a
/// row make it healthy, `fall` failures in a row unhealthy, and a result that differs
/// from the previous one starts the streak over. After that, only results that disagree
/// with the verdict count: `fall` failures in a row make a healthy endpoint unhealthy,
/// `rise` passes bring it back; one agreeing result ends the streak.
#[derive(Debug, Default)]
pub(crate) struct RiseFall {
    /// Results in a row that would change the verdict.
    streak: u32,
    /// Before the first verdict: whether the previous result passed.
    last_ok: bool,
}

impl RiseFall {
    /// Records one result against `state`; returns the new verdict (`true`: healthy) if
    /// it changed.
    pub(crate) fn record(&mut self, state: &EndpointState, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let checked = state.is_checked();
        let unhealthy = state.is_unhealthy();
        if !checked {
            if self.streak > 0 && self.last_ok != ok {
                self.streak = 0;
            }
            self.last_ok = ok;
        }
        let disagrees = !checked || ok == unhealthy;
        if !disagrees {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let need = if ok { rise.max(1) } else { fall.max(1) };
        if self.streak < need {
            return None;
        }
        self.streak = 0;
        state.set_flag(Flag::Checked, true);
        if !checked && ok && !unhealthy {
            // Unknown -> healthy: no flag to clear.
            return Some(true);
        }
        state.set_flag(Flag::Unhealthy, !ok);
        Some(ok)
    }
}

/// Starts probing `state`'s endpoint every `config.interval`; `wake` wakes the writer
/// when the verdict flips. The task ends by itself once the endpoint drains (removed by
/// discovery; an operator's drain keeps it probed), or when the handle is aborted.
pub(crate) fn spawn(
    state: Arc<EndpointState>,
    check: Arc<dyn HealthCheck>,
    config: CheckConfig,
    wake: Arc<Notify>,
    name: Arc<str>,
) -> JoinHandle<()> {
    tokio::spawn(probe_loop(state, check, config, wake, name))
}

async fn probe_loop(
    state: Arc<EndpointState>,
    check: Arc<dyn HealthCheck>,
    cfg: CheckConfig,
    wake: Arc<Notify>,
    name: Arc<str>,
) {
    let mut rule = RiseFall::default();
    let mut interval = tokio::time::interval(cfg.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if state.is_draining() && !state.is_admin_drained() {
            return;
        }
        let ep = state.endpoint();
        let res = match tokio::time::timeout(cfg.timeout, check.check(&ep)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.0),
            Err(_) => Err(format!("timed out after {:?}", cfg.timeout)),
        };
        let ok = res.is_ok();
        state.set_last_check(CheckRecord {
            at: Duration::from_nanos(now_ns()),
            ok,
            error: res.err(),
        });
        if let Some(now_ok) = rule.record(&state, ok, cfg.rise, cfg.fall) {
            if now_ok {
                tracing::info!(balancer = %name, endpoint = %ep.id(), "health check passing");
            } else {
                let why = state.last_check().and_then(|c| c.error).unwrap_or_default();
                tracing::warn!(balancer = %name, endpoint = %ep.id(), error = %why, "health check failing; endpoint unhealthy");
            }
            wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoint;

    fn state() -> EndpointState {
        EndpointState::new(Endpoint::new("127.0.0.1:1".parse().unwrap()), Duration::from_millis(10))
    }

    #[test]
    fn unknown_becomes_healthy_after_rise_passes_in_a_row() {
        let (st, mut rule) = (state(), RiseFall::default());
        assert_eq!(rule.record(&st, true, 2, 3), None);
        assert_eq!(rule.record(&st, true, 2, 3), Some(true));
        assert_eq!(st.health(), crate::Health::Healthy);
    }

    #[test]
    fn before_a_verdict_a_different_result_starts_the_streak_over() {
        let (st, mut rule) = (state(), RiseFall::default());
        assert_eq!(rule.record(&st, false, 2, 3), None);
        assert_eq!(rule.record(&st, false, 2, 3), None);
        assert_eq!(rule.record(&st, true, 2, 3), None, "a pass breaks the failure streak");
        assert_eq!(rule.record(&st, false, 2, 3), None);
        assert_eq!(rule.record(&st, false, 2, 3), None);
        assert_eq!(rule.record(&st, false, 2, 3), Some(false));
        assert_eq!(st.health(), crate::Health::Unhealthy);
        assert!(!st.is_eligible());
    }

    #[test]
    fn after_a_verdict_one_agreeing_result_ends_the_streak() {
        let (st, mut rule) = (state(), RiseFall::default());
        rule.record(&st, true, 1, 2);
        assert_eq!(st.health(), crate::Health::Healthy);
        assert_eq!(rule.record(&st, false, 1, 2), None);
        assert_eq!(
            rule.record(&st, true, 1, 2),
            None,
            "agrees with healthy: the streak ends"
        );
        assert_eq!(rule.record(&st, false, 1, 2), None);
        assert_eq!(rule.record(&st, false, 1, 2), Some(false));
        assert_eq!(rule.record(&st, true, 1, 2), Some(true), "rise 1 brings it back");
        assert!(st.is_eligible());
    }
}
