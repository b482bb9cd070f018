//! Errors.

use std::time::Duration;

/// The boxed error a [`Balancer`](crate::Balancer) returns: one of the errors in this
/// module, or the endpoint service's own error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// No endpoint could take the request: the set is empty, every endpoint is out
/// (draining, ejected, unhealthy, at its in-flight limit), or the bounded wait for
/// one ran out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(*.waited, *.overloaded))]
pub struct NoEndpoints {
    waited: Option<Duration>,
    overloaded: bool,
}

fn describe(waited: Option<Duration>, overloaded: bool) -> String {
    let what = if overloaded {
        "every eligible endpoint is at its in-flight limit"
    } else {
        "no eligible endpoint"
    };
    match waited {
        Some(w) => format!("{what} (waited {w:?})"),
        None => what.to_string(),
    }
}

impl NoEndpoints {
    pub(crate) fn new(waited: Option<Duration>, overloaded: bool) -> Self {
        Self { waited, overloaded }
    }

    /// How long the balancer waited before giving up, if it was configured to.
    pub fn waited(&self) -> Option<Duration> {
        self.waited
    }

    /// Whether endpoints were there but all at their in-flight limit.
    pub fn is_overloaded(&self) -> bool {
        self.overloaded
    }
}

/// Whether `err` (as returned by a balancer) means no endpoint could take the request.
pub fn is_no_endpoints(err: &(dyn std::error::Error + 'static)) -> bool {
    err.downcast_ref::<NoEndpoints>().is_some()
}

/// An endpoint did not answer within the balancer's per-attempt time limit
/// ([`Builder::timeout`](crate::Builder::timeout)).
///
/// The balancer returns it as the source of an [`EndpointError`] naming the endpoint, so
/// a retry can avoid that endpoint; the attempt counts as a failure of the endpoint.
/// Detect it with [`is_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no response within {timeout:?}")]
pub struct Elapsed {
    timeout: std::time::Duration,
}

impl Elapsed {
    pub(crate) fn new(timeout: std::time::Duration) -> Self {
        Self { timeout }
    }

    /// The time limit that ran out.
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
    }
}

/// Whether `err`, or an error in its chain of sources, is a timeout: this crate's
/// [`Elapsed`] (an endpoint over the balancer's per-attempt limit), tower's
/// `tower::timeout::error::Elapsed` or tokio's `tokio::time::error::Elapsed` (a timeout
/// layered inside or around the balancer).
///
/// ```
/// use lb_core::error::{is_timeout, BoxError};
///
/// let err: BoxError = Box::new(tower::timeout::error::Elapsed::new());
/// assert!(is_timeout(&*err));
/// let err: BoxError = "connection refused".into();
/// assert!(!is_timeout(&*err));
/// ```
pub fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<Elapsed>() || e.is::<tower::timeout::error::Elapsed>() || e.is::<tokio::time::error::Elapsed>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// An administrative action named an endpoint the balancer does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no endpoint with id {0:?}")]
pub struct UnknownEndpoint(pub String);

/// An error and its sources, joined by `": "`: what a log line or an error page
/// should show (hyper's outer errors alone say little, e.g. "client error (Connect)").
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A request failed at an endpoint: the endpoint service's error, with the endpoint it
/// came from, so a retry can go elsewhere (see [`Avoid`](crate::Avoid)).
#[derive(Debug, thiserror::Error)]
#[error("endpoint {endpoint}: {source}")]
pub struct EndpointError {
    endpoint: crate::EndpointId,
    #[source]
    source: BoxError,
}

impl EndpointError {
    pub(crate) fn new(endpoint: crate::EndpointId, source: BoxError) -> Self {
        Self { endpoint, source }
    }

    /// The endpoint the request failed at.
    pub fn endpoint(&self) -> &crate::EndpointId {
        &self.endpoint
    }

    /// The endpoint service's own error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}
