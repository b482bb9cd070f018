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
//!
//! Inside the crate, one file per concern: `active` (the probe task and the rise/fall
//! rule), `outlier` (the failure streak's wake-up, ejection and re-admission), and
//! `slow_start` (the ramp); the balancer's writer drives all three.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::endpoint::Endpoint;

pub(crate) mod active;
pub(crate) mod outlier;
pub(crate) mod slow_start;
mod tcp;

pub use self::active::CheckConfig;
pub use self::outlier::OutlierConfig;
pub use self::slow_start::SlowStart;
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
