//! Health: active probes, passive outlier detection, the panic threshold, slow start.
//!
//! Health is a state, not a deletion. An endpoint that fails its active check
//! (`fall` times in a row) becomes [`Unhealthy`](crate::Health::Unhealthy) and comes back
//! after `rise` passes; one that fails `consecutive_failures` requests in a row is
//! [`Ejected`](crate::Health::Ejected) for `base_ejection * times_ejected` (capped at
//! `max_ejection`), as Envoy's outlier detection does, never more than
//! `max_ejection_percent` of the set at once (but at least one). Both stay in the table
//! with their counters and come back on their own. Outlier detection is on by default
//! ([`OutlierConfig::default()`]); `Builder::outlier_detection(None)` turns it off.
//!
//! A failure is an error from the endpoint's service, a response over the per-attempt
//! `Builder::timeout`, or (HTTP) a 5xx or a body that breaks off; a success ends the
//! streak. A request the caller cancels (its future or body dropped, a timeout layered
//! around the balancer) is neither, and leaves the streak as it was.
//!
//! If fewer than `panic_threshold` of the endpoints are eligible, the balancer stops
//! trusting health and balances over all of them (Envoy's panic mode): a bad health
//! check must not black-hole a service.
//!
//! An endpoint that joins after the first set, or comes back from ejection or
//! unhealthy, ramps its effective weight linearly from 10% over `slow_start` (HAProxy's
//! `slowstart`, Envoy's `slow_start_config` with aggression 1).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::endpoint::Endpoint;

mod tcp;

pub use self::tcp::TcpProbe;

/// A boxed, sendable future, as probes return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeError(pub String);

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProbeError {}

/// An active health check: one probe of one endpoint.
///
/// The balancer runs it every `interval` for each endpoint, under `timeout`, and counts
/// passes and failures against `rise` and `fall`.
pub trait HealthCheck: Send + Sync + 'static {
    /// Probes `endpoint` once.
    fn check(&self, endpoint: &Endpoint) -> BoxFuture<Result<(), ProbeError>>;

    /// The balancer no longer probes `endpoint` (it left, or its address changed): a
    /// probe that keeps something per endpoint (a connection) lets it go. By default,
    /// nothing.
    fn forget(&self, endpoint: &Endpoint) {
        let _ = endpoint;
    }
}

impl<F, Fut> HealthCheck for F
where
    F: Fn(&Endpoint) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), ProbeError>> + Send + 'static,
{
    fn check(&self, endpoint: &Endpoint) -> BoxFuture<Result<(), ProbeError>> {
        Box::pin(self(endpoint))
    }
}

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
