//! The connector and the per-endpoint service.

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use tower_service::Service;

use super::Body;
use crate::endpoint::Endpoint;

/// Settings of the shared connection pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// A connection attempt that takes longer fails (and may be retried elsewhere).
    /// Default 2 s.
    pub connect_timeout: Duration,
    /// Idle pooled connections close after this. Default 60 s.
    pub pool_idle_timeout: Duration,
    /// At most this many idle connections per endpoint. Default 256.
    pub pool_max_idle_per_host: usize,
    /// Speak HTTP/2 with prior knowledge (h2c) to endpoints. Default off (HTTP/1.1).
    pub http2_only: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle_per_host: 256,
            http2_only: false,
        }
    }
}

/// Makes an [`EndpointService`] per endpoint, all sharing one pool.
///
/// # Examples
///
/// ```
/// use lb_core::http::{ClientConfig, HttpConnect};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let connect = HttpConnect::new(ClientConfig::default());
/// # let _ = connect; }
/// ```
#[derive(Clone)]
pub struct HttpConnect {
    client: Client<HttpConnector, Body>,
}

impl fmt::Debug for HttpConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HttpConnect")
    }
}

impl HttpConnect {
    /// A connector with its own pool.
    pub fn new(config: ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .http2_only(config.http2_only)
            .build(http);
        Self { client }
    }

    /// The service for one endpoint (what [`Service::call`] returns).
    pub fn for_endpoint(&self, endpoint: &Endpoint) -> EndpointService {
        let authority = Authority::try_from(endpoint.addr().to_string()).expect("a socket address is an authority");
        EndpointService {
            client: self.client.clone(),
            authority,
        }
    }
}

impl Service<Endpoint> for HttpConnect {
    type Response = EndpointService;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<EndpointService, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        std::future::ready(Ok(self.for_endpoint(&endpoint)))
    }
}

/// Sends requests to one endpoint. The request's path and query are kept; scheme and
/// authority are replaced by the endpoint's. The `Host` header is left as it is.
#[derive(Clone)]
pub struct EndpointService {
    client: Client<HttpConnector, Body>,
    authority: Authority,
}

impl fmt::Debug for EndpointService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointService").field("authority", &self.authority).finish()
    }
}

impl Service<http::Request<Body>> for EndpointService {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path make a URI");
        self.client.request(req)
    }
}

/// Whether an error (as a balancer returns it) means the request never reached the
/// endpoint: the connection could not be made. Such a request is safe to retry on
/// another endpoint whatever its method.
pub fn is_connect_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            if h.is_connect() {
                return true;
            }
        }
        cur = e.source();
    }
    false
}
