//! HTTP: a pooled client per endpoint, forwarding headers, upgrades and an HTTP health
//! probe. Everything a proxy built from these crates needs besides its listener.
//!
//! - [`HttpConnect`] is the connector a [`Balancer`](crate::Balancer) takes: it turns
//!   each [`Endpoint`](crate::Endpoint) into an [`EndpointService`] that sends requests
//!   to that endpoint's address over keep-alive connections from that endpoint's own pool.
//!   HTTP/1.1 is spoken by the request's own future and response body (no task per
//!   connection, no channel per request; an idle connection holds no buffer), HTTP/2 by
//!   hyper.
//! - [`forward`] prepares a request for the hop to an endpoint (hop-by-hop headers
//!   removed, `X-Forwarded-For`/`-Proto`/`-Host` set, `Host` passed through) and the
//!   response for the hop back.
//! - [`upgrade`] splices an HTTP Upgrade (WebSocket) once the endpoint answers 101: the
//!   endpoint's side is its connection itself ([`upgrade::Upgraded`]).
//! - [`server`] serves HTTP/1.1 to clients with no buffer held between requests (a
//!   proxy's listener side); its [`RequestBody`](server::RequestBody) also carries
//!   hyper's HTTP/2 bodies.
//! - [`HttpProbe`] is an active health check: `GET path`, 2xx or 3xx passes.
//! - [`Http`] is the balancer's protocol for HTTP, what
//!   [`Builder::http`](crate::Builder::http) sets: a request is in flight until its
//!   response body ends ([`TrackedBody`]), a 5xx is a failure, and the hash key and the
//!   endpoint to avoid come from the request's extensions.
//! - `TlsConnect` (feature `tls`) makes [`HttpConnect`] reach endpoints over TLS.
//!
//! # Calling HTTPS endpoints (feature `tls`)
//!
//! Give the connector a `TlsConnect` with `HttpConnect::with_tls`: the roots that
//! verify the endpoints' certificates (`TlsConnect::system_roots`, a PEM bundle with
//! `TlsConnect::with_ca_file`, a `rustls::RootCertStore`, or a whole rustls client config
//! for client certificates) and, when every endpoint serves a certificate for one name,
//! that name (`TlsConnect::server_name`). Without it, each endpoint is verified for the
//! name in its metadata `tls_server_name` (`TLS_SERVER_NAME`), else its metadata `host`,
//! else its IP address.
//!
//! ALPN decides the protocol per connection: HTTP/2 (one multiplexed connection per
//! endpoint) when the server picks `h2`, pooled HTTP/1.1 otherwise. A handshake that
//! fails (an untrusted certificate, a name the certificate does not cover, a timeout:
//! [`ClientConfig::connect_timeout`] covers TCP and TLS) is a connect error, like a
//! refused connection: [`is_connect_error`] is true, so a retry may go to another
//! endpoint whatever the method, and outlier detection counts it against the endpoint.
//! The request keeps its authority: `https://api.internal/v1/items` goes out with
//! `Host: api.internal` (HTTP/1.1) or `:authority: api.internal` (HTTP/2), whatever
//! address the endpoint has.
//!
//! ```no_run
//! # #[cfg(feature = "tls")]
//! # async fn run() -> Result<(), lb_core::BoxError> {
//! use lb_core::balance::RoundRobin;
//! use lb_core::http::{empty, ClientConfig, HttpConnect, TlsConnect};
//! use lb_core::{discover, Balancer, Endpoint};
//! use tower::ServiceExt;
//!
//! let tls = TlsConnect::with_ca_file("certs/internal-ca.pem")?.server_name("api.internal")?;
//! let connect = HttpConnect::new(ClientConfig::default()).with_tls(tls);
//! let endpoints = ["10.0.0.7:8443", "10.0.0.8:8443"].map(|a| Endpoint::new(a.parse().unwrap()));
//! let client = Balancer::builder(RoundRobin::new()).http().spawn(discover::fixed(endpoints), connect);
//! let req = http::Request::get("https://api.internal/v1/items").body(empty())?;
//! let rsp = client.oneshot(req).await?;
//! # let _ = rsp; Ok(()) }
//! ```
//!
//! The example `https_retry` of this crate adds retries on another endpoint.

mod client;
pub mod forward;
mod h1;
mod probe;
mod protocol;
pub mod server;
#[cfg(feature = "tls")]
mod tls;
pub mod upgrade;

pub use self::client::{
    is_connect_error, ClientConfig, ClientError, EndpointService, HttpConnect, ResponseBody, ResponseFuture,
};
pub use self::probe::HttpProbe;
pub use self::protocol::{Http, TrackedBody};
#[cfg(feature = "tls")]
pub use self::tls::{TlsConnect, TlsError, TLS_SERVER_NAME};

/// The body type [`EndpointService`] sends and [`forward`] works with: any body of
/// `Bytes` whose error boxes, behind one concrete type.
///
/// A struct rather than an alias of `UnsyncBoxBody<Bytes, BoxError>`: with the alias,
/// the `dyn Error` inside the type parameters trips rustc's `Send` check of async
/// handlers ("implementation of `Service` is not general enough"); a struct hides it.
pub struct Body {
    inner: http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, crate::BoxError>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").finish_non_exhaustive()
    }
}

impl Default for Body {
    fn default() -> Self {
        empty()
    }
}

impl http_body::Body for Body {
    type Data = bytes::Bytes;
    type Error = crate::BoxError;

    #[inline]
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, crate::BoxError>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Boxes any body into [`Body`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::BoxError>,
{
    use http_body_util::BodyExt;
    Body {
        inner: body.map_err(Into::into).boxed_unsync(),
    }
}

/// An empty [`Body`].
pub fn empty() -> Body {
    boxed(http_body_util::Empty::new())
}

/// A [`Body`] holding `bytes`.
pub fn full(bytes: impl Into<bytes::Bytes>) -> Body {
    boxed(http_body_util::Full::new(bytes.into()))
}
