//! Errors.
//!
//! The errors here follow the `std::error::Error` convention: an error that returns
//! its cause from [`source`](std::error::Error::source) does not repeat the cause's
//! text in its own `Display`, so walking the chain shows each message once. [`chain`]
//! joins them into one line for a log or an error page.
//!
//! The error types are also at the crate root: `lb_core::{NoEndpoints, EndpointError,
//! Elapsed, UnknownEndpoint, BoxError}`.

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
///
/// Each message appears once. A source whose text its error already ends with (an
/// error that prints its cause and also returns it from `source()`, against the
/// convention) is not added again; its own sources still are.
///
/// ```
/// use lb_core::error::chain;
///
/// #[derive(Debug)]
/// struct Connect(std::io::Error);
///
/// impl std::fmt::Display for Connect {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("could not connect to 127.0.0.1:9")
///     }
/// }
///
/// impl std::error::Error for Connect {
///     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
///         Some(&self.0)
///     }
/// }
///
/// let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
/// assert_eq!(chain(&Connect(refused)), "could not connect to 127.0.0.1:9: connection refused");
/// ```
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(c) = cur {
        let text = c.to_string();
        let repeated = s == text || s.strip_suffix(text.as_str()).is_some_and(|rest| rest.ends_with(": "));
        if !text.is_empty() && !repeated {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// A request failed at an endpoint: the endpoint service's error, with the endpoint it
/// came from, so a retry can go elsewhere (see [`Avoid`](crate::Avoid)).
///
/// It displays as `endpoint <id> failed`; the endpoint service's error is its
/// [`source`](std::error::Error::source) (and [`inner`](Self::inner)), not repeated in
/// the message. Print it with [`chain`] to show both: `endpoint a failed: could not
/// connect to 127.0.0.1:9: connection refused`.
#[derive(Debug, thiserror::Error)]
#[error("endpoint {endpoint} failed")]
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

#[cfg(test)]
mod tests {
    use std::fmt;
    use std::io;

    use super::*;

    /// Like the HTTP connector's connect error: its own message, the I/O error as the
    /// source.
    #[derive(Debug)]
    struct ConnectError(io::Error);

    impl fmt::Display for ConnectError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("could not connect to 127.0.0.1:9")
        }
    }

    impl std::error::Error for ConnectError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn refused() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused")
    }

    #[test]
    fn endpoint_error_chain_names_each_part_once() {
        let err = EndpointError::new(crate::EndpointId::new("a"), Box::new(ConnectError(refused())));
        assert_eq!(err.to_string(), "endpoint a failed");
        let text = chain(&err);
        assert_eq!(
            text,
            "endpoint a failed: could not connect to 127.0.0.1:9: connection refused"
        );
        for part in ["endpoint a", "could not connect", "127.0.0.1:9", "connection refused"] {
            assert_eq!(text.matches(part).count(), 1, "{part:?} in {text:?}");
        }
        // Boxed, as a balancer returns it.
        let boxed: BoxError = Box::new(err);
        assert_eq!(chain(&*boxed), text);
    }

    #[test]
    fn endpoint_error_over_the_time_limit() {
        let err = EndpointError::new(
            crate::EndpointId::new("b"),
            Box::new(Elapsed::new(Duration::from_secs(1))),
        );
        assert_eq!(chain(&err), "endpoint b failed: no response within 1s");
        assert!(is_timeout(&err));
    }

    /// An error of someone else's that prints its cause and also returns it.
    #[derive(Debug, thiserror::Error)]
    #[error("request failed: {0}")]
    struct Repeats(#[source] ConnectError);

    #[test]
    fn chain_skips_a_cause_its_error_already_printed() {
        let text = chain(&Repeats(ConnectError(refused())));
        assert_eq!(
            text,
            "request failed: could not connect to 127.0.0.1:9: connection refused"
        );
    }

    #[test]
    fn chain_keeps_a_cause_that_only_looks_alike() {
        #[derive(Debug, thiserror::Error)]
        #[error("unexpected eof")]
        struct Outer(#[source] io::Error);
        let inner = io::Error::new(io::ErrorKind::UnexpectedEof, "eof");
        assert_eq!(chain(&Outer(inner)), "unexpected eof: eof");
    }
}
