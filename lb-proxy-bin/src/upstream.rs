//! One balanced service of the proxy: its balancer, discovery, and how requests to it
//! are sent (hash key, retries, timeouts).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use lb_core::balance::{hash_key, AnyPolicy};
use lb_core::http::{is_connect_error, Body, EndpointService};
use lb_core::{Balancer, EndpointId, Picked};
use tower::ServiceExt;

use crate::body::{ClientFault, Fault, UpstreamBody};
use crate::metrics::Metrics;

/// The balancer type every proxy service uses. The proxy picks with `pick_with` and
/// holds the guard in its own response body ([`UpstreamBody`]), so the balancer's
/// protocol is the default: it is never called as a service.
pub(crate) type ProxyBalancer = Balancer<AnyPolicy, EndpointService>;

/// What a request's hash key is taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeySource {
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
    Path,
}

impl KeySource {
    pub(crate) fn key<B>(&self, req: &Request<B>, peer: SocketAddr) -> Option<u64> {
        match self {
            KeySource::ClientIp => Some(client_ip_key(peer.ip())),
            KeySource::Header(name) => req.headers().get(name).map(|v| hash_key(v.as_bytes())),
            KeySource::Cookie(name) => req
                .headers()
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| hash_key(v.as_bytes())),
            KeySource::Path => Some(hash_key(req.uri().path().as_bytes())),
        }
    }
}

/// The hash key of a client address, the same for HTTP and TCP services (an IPv4
/// client and its IPv4-mapped IPv6 form hash alike).
pub(crate) fn client_ip_key(ip: std::net::IpAddr) -> u64 {
    let v6 = match ip {
        std::net::IpAddr::V4(ip) => ip.to_ipv6_mapped(),
        std::net::IpAddr::V6(ip) => ip,
    };
    hash_key(&v6.octets())
}

/// Request settings of one service.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    pub(crate) key: Option<KeySource>,
    pub(crate) retries: u32,
    pub(crate) response_timeout: Option<Duration>,
    /// Bodies up to this size are buffered so the request can be retried.
    pub(crate) replay_limit: usize,
}

/// A service as the proxy runs it.
pub(crate) struct Upstream {
    pub(crate) name: Arc<str>,
    pub(crate) balancer: ProxyBalancer,
    pub(crate) settings: Settings,
    /// The configuration it was built from: a reload keeps the service if it is equal.
    pub(crate) config: crate::config::ServiceConfig,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).finish()
    }
}

/// Why a request got no answer from an endpoint.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No endpoint could take it (503).
    NoEndpoints { overloaded: bool },
    /// The endpoint did not answer within `response_timeout` (504).
    Timeout,
    /// The endpoint failed it (502); the text is for the log, never for the client.
    Upstream(String),
    /// The client's own request body failed (400, 408 or 413); no endpoint is charged.
    Client(ClientFault),
}

impl Failure {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Failure::NoEndpoints { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::Upstream(_) => StatusCode::BAD_GATEWAY,
            Failure::Client(f) => f.status(),
        }
    }

    /// What the client is told: nothing of the endpoint's address or error.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Failure::NoEndpoints { overloaded: false } => "no healthy endpoint",
            Failure::NoEndpoints { overloaded: true } => "every endpoint is at its limit",
            Failure::Timeout => "the endpoint did not answer in time",
            Failure::Upstream(_) => "the endpoint failed to answer",
            Failure::Client(f) => f.reason(),
        }
    }

    /// What the log is told.
    pub(crate) fn detail(&self) -> String {
        match self {
            Failure::Upstream(e) => e.clone(),
            other => other.reason().to_string(),
        }
    }
}

/// Methods a failed attempt may be sent again for (RFC 9110 §9.2.2), TRACE excepted: it
/// echoes the request, and there is nothing to gain from echoing it twice.
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// The client's fault if it made one (so the endpoint is not blamed), else `None`.
fn client_fault(fault: Option<&Arc<Fault>>) -> Option<ClientFault> {
    fault.and_then(|f| f.get())
}

impl Upstream {
    /// Sends a prepared request to an endpoint picked by the balancer, retrying on
    /// another endpoint a request that never reached one (connect failed), and an
    /// idempotent one that failed before its response began.
    ///
    /// The proxy holds each attempt's guard itself, so that blame lands on the right
    /// side: an endpoint error or a response timeout is the endpoint's failure; a failure
    /// caused by the client's own body (`fault`) is no outcome for the endpoint at all.
    pub(crate) async fn send(
        &self,
        req: Request<Body>,
        key: Option<u64>,
        fault: Option<&Arc<Fault>>,
        metrics: &Metrics,
    ) -> Result<Response<UpstreamBody>, Failure> {
        let (mut parts, body) = req.into_parts();
        // Replayable: an empty body, or a small one we buffer.
        let (replay, mut body) = if body.is_end_stream() {
            (Some(Bytes::new()), None)
        } else if body
            .size_hint()
            .exact()
            .is_some_and(|n| n as usize <= self.settings.replay_limit)
        {
            match body.collect().await {
                Ok(c) => (Some(c.to_bytes()), None),
                // The client body notes its fault before it fails: aborted is the fallback.
                Err(_) => return Err(Failure::Client(client_fault(fault).unwrap_or(ClientFault::Aborted))),
            }
        } else {
            (None, Some(body))
        };
        let attempts = if replay.is_some() { self.settings.retries + 1 } else { 1 };
        let mut last: Option<String> = None;
        let mut avoid: Option<EndpointId> = None;
        for attempt in 0..attempts {
            let b = match &replay {
                // Empty: no allocation (an empty `full` boxes its `Bytes`).
                Some(bytes) if bytes.is_empty() => lb_core::http::empty(),
                Some(bytes) => lb_core::http::full(bytes.clone()),
                None => body.take().expect("one attempt without replay"),
            };
            let mut req = Request::new(b);
            *req.method_mut() = parts.method.clone();
            *req.version_mut() = parts.version;
            // The last attempt takes the URI and the headers; earlier ones copy them for
            // a retry.
            if attempt + 1 == attempts {
                *req.uri_mut() = std::mem::take(&mut parts.uri);
                *req.headers_mut() = std::mem::take(&mut parts.headers);
            } else {
                *req.uri_mut() = parts.uri.clone();
                *req.headers_mut() = parts.headers.clone();
            }
            // HAProxy's redispatch: a retry goes to another endpoint if one can take it.
            let Picked { service, mut guard } = match self.balancer.pick_with(key, avoid.as_ref()) {
                Ok(picked) => picked,
                // After a failed attempt, that failure is the answer (502).
                Err(e) => {
                    return Err(match last {
                        Some(prev) => Failure::Upstream(prev),
                        None => Failure::NoEndpoints {
                            overloaded: e.is_overloaded(),
                        },
                    })
                }
            };
            let endpoint = guard.endpoint().id().clone();
            let call = service.oneshot(req);
            let res = match self.settings.response_timeout {
                Some(t) => match tokio::time::timeout(t, call).await {
                    Ok(r) => r,
                    Err(_) => {
                        // A hung endpoint is a failing one (HAProxy's `observe layer7`),
                        // unless the client was still sending its body: then the wait
                        // was the client's, and counts for nothing.
                        if fault.map_or(true, |f| f.is_done()) {
                            guard.fail();
                        }
                        tracing::debug!(service = %self.name, endpoint = %endpoint, timeout = ?t, "endpoint did not answer in time");
                        return Err(Failure::Timeout);
                    }
                },
                None => call.await,
            };
            let e = match res {
                Ok(rsp) => return Ok(UpstreamBody::track(rsp, guard, fault.cloned())),
                Err(e) => e,
            };
            if let Some(f) = client_fault(fault) {
                // The client's body broke the attempt: no outcome for the endpoint.
                drop(guard);
                tracing::debug!(service = %self.name, endpoint = %endpoint, fault = f.reason(), "client request body failed");
                return Err(Failure::Client(f));
            }
            guard.fail();
            let retryable = is_connect_error(&e) || idempotent(&parts.method);
            let text = format!("endpoint {endpoint}: {}", lb_core::error::chain(&e));
            tracing::debug!(service = %self.name, attempt, error = %text, retryable, "endpoint request failed");
            metrics.retry(&self.name, retryable && attempt + 1 < attempts);
            last = Some(text);
            avoid = Some(endpoint);
            if !retryable {
                break;
            }
        }
        Err(Failure::Upstream(last.unwrap_or_else(|| "no attempt made".into())))
    }
}
