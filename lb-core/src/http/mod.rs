//! HTTP: a pooled hyper client per endpoint, forwarding headers, upgrades and an HTTP
//! health probe. Everything a proxy built from these crates needs besides its listener.
//!
//! - [`HttpConnect`] is the connector a [`Balancer`](crate::Balancer) takes: it turns
//!   each [`Endpoint`](crate::Endpoint) into an [`EndpointService`] that sends requests
//!   to that endpoint's address over keep-alive connections from that endpoint's own pool.
//! - [`forward`] prepares a request for the hop to an endpoint (hop-by-hop headers
//!   removed, `X-Forwarded-For`/`-Proto`/`-Host` set, `Host` passed through) and the
//!   response for the hop back.
//! - [`upgrade`] splices an HTTP Upgrade (WebSocket) once the endpoint answers 101.
//! - [`HttpProbe`] is an active health check: `GET path`, 2xx or 3xx passes.

mod client;
pub mod forward;
mod probe;
pub mod upgrade;

pub use self::client::{
    is_connect_error, ClientConfig, ClientError, EndpointService, HttpConnect, ResponseBody, ResponseFuture,
};
pub use self::probe::HttpProbe;

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
