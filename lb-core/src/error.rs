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
