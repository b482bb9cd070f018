//! What a balancer shows of itself: [`BalancerStatus`], one [`EndpointStatus`] per
//! endpoint, and where making each endpoint's service stands ([`Connection`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::endpoint::EndpointId;
use crate::state::{CheckRecord, Health};

/// One endpoint as the status page shows it.
#[derive(Clone, Debug)]
pub struct EndpointStatus {
    /// Its id.
    pub id: EndpointId,
    /// Its address.
    pub addr: SocketAddr,
    /// The configured weight.
    pub weight: u32,
    /// The effective weight now (slow start applied), or `None` if out of rotation.
    pub effective_weight: Option<f64>,
    /// Its state.
    pub health: Health,
    /// Requests in flight.
    pub in_flight: u32,
    /// Requests started.
    pub requests: u64,
    /// Requests failed.
    pub failures: u64,
    /// Times ejected by outlier detection.
    pub times_ejected: u32,
    /// The peak-EWMA latency (only measured when latency is tracked): successes' times,
    /// failures' penalised ones ([`Builder::failure_penalty`](crate::Builder::failure_penalty));
    /// cancelled requests record nothing. Until a first sample
    /// ([`latency_measured`](Self::latency_measured) false) it is the assumed
    /// [`Builder::default_rtt`](crate::Builder::default_rtt), not a measurement.
    pub ewma_latency: Duration,
    /// Whether [`ewma_latency`](Self::ewma_latency) comes from at least one measured
    /// request.
    pub latency_measured: bool,
    /// Whether the endpoint's service is made (an endpoint takes requests only then).
    pub connection: Connection,
    /// The last active health check.
    pub last_check: Option<CheckRecord>,
    /// Metadata from discovery.
    pub metadata: BTreeMap<String, String>,
}

/// Where making an endpoint's service (the connector given to
/// [`Builder::spawn`](crate::Builder::spawn)) stands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Connection {
    /// The service is made: the endpoint can take requests.
    Ready,
    /// Being made, or waiting for the connector to be ready; not pickable yet.
    Connecting {
        /// Attempts so far, this one included (0: not started yet).
        attempts: u32,
    },
    /// The last attempt failed (an error, or over
    /// [`Builder::connect_timeout`](crate::Builder::connect_timeout)); another follows
    /// after a backoff. Not pickable.
    Failed {
        /// Attempts that failed in a row.
        attempts: u32,
        /// The last error, with its sources.
        error: Arc<str>,
    },
}

impl Connection {
    /// Whether the service is made.
    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Ready)
    }
}

/// A balancer as the status page shows it.
#[derive(Clone, Debug)]
pub struct BalancerStatus {
    /// The balancer's name.
    pub name: String,
    /// The policy's name.
    pub policy: &'static str,
    /// Whether panic mode is on (health ignored).
    pub panic: bool,
    /// How many endpoints are in rotation.
    pub eligible: usize,
    /// The snapshot generation: how many times the eligible set has been published.
    pub generation: u64,
    /// Every endpoint, draining ones included, ordered by id.
    pub endpoints: Vec<EndpointStatus>,
}
