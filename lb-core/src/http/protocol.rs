//! What a [`Balancer`](crate::Balancer) does with HTTP, the [`Http`] protocol: the hash
//! key and the endpoint to avoid come from the request's extensions, a 5xx is a failure,
//! and the request's guard rides in the response body ([`TrackedBody`]) until the body
//! ends. [`Builder::http`](crate::Builder::http) sets it.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::balance::Balance;
use crate::endpoint::EndpointId;
use crate::load::InFlight;
use crate::protocol::{Avoid, AvoidHint, HashKey, Protocol};
use crate::service::Builder;

impl<P: Balance, R> Builder<P, R> {
    /// Speaks HTTP ([`Http`]): the request counts as in flight until its response body
    /// ends, a 5xx counts as a failure, and the hash key ([`HashKey`]) and the endpoint
    /// to avoid ([`Avoid`]) are read from the request's extensions.
    pub fn http(self) -> Builder<P, Http> {
        self.protocol(Http)
    }
}

/// The [`Protocol`] of `http::Request`s and `http::Response`s.
///
/// - The hash key is the request's [`HashKey`] extension (a router puts it there; for a
///   key read from a header or a cookie, a `map_request` layer in front of the balancer
///   computes it), and the endpoint to avoid its [`Avoid`] extension (a retry policy
///   puts it there).
/// - The guard rides in the response body ([`TrackedBody`]) until the body ends: a long
///   download counts as load for its whole length. A 5xx status counts as a failure for
///   passive health (as Linkerd's and Envoy's outlier detection do); so does a body that
///   ends in an error. A body dropped before its end is a cancellation (the caller's
///   choice, not the endpoint's fault): its latency, measured at the response head,
///   stands, and nothing else is recorded.
#[derive(Clone, Copy, Debug, Default)]
pub struct Http;

impl<B, RB: Body> Protocol<http::Request<B>, http::Response<RB>> for Http {
    type Output = http::Response<TrackedBody<RB>>;

    #[inline]
    fn key(&self, req: &http::Request<B>) -> Option<u64> {
        req.extensions().get::<HashKey>().map(|k| k.0)
    }

    #[inline]
    fn avoid<'r>(&self, req: &'r http::Request<B>) -> Option<&'r EndpointId> {
        req.avoid_hint()
    }

    fn complete(&self, response: http::Response<RB>, mut guard: InFlight) -> Self::Output {
        if response.status().is_server_error() {
            // A fast 503 is no sign of a fast endpoint: the failure's latency sample is
            // penalised when the guard drops.
            guard.fail();
        } else {
            guard.observe_latency();
        }
        if response.body().is_end_stream() {
            // Nothing to come (a 204, an empty body): the request is over now. A reader
            // may never poll such a body (hyper does not), so it would never see its end.
            guard.succeed();
            return response.map(|inner| TrackedBody { inner, guard: None });
        }
        response.map(|body| TrackedBody::new(body, guard))
    }
}

impl<B> AvoidHint for http::Request<B> {
    #[inline]
    fn avoid_hint(&self) -> Option<&EndpointId> {
        self.extensions().get::<Avoid>().map(|a| &a.0)
    }
}

pin_project! {
    /// A body that holds an [`InFlight`] guard until its last frame (a success, unless
    /// the head was a 5xx), an error (a failure), or until it is dropped (a
    /// cancellation).
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
    }
}

impl<B> fmt::Debug for TrackedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedBody").field("guard", &self.guard).finish()
    }
}

impl<B> TrackedBody<B> {
    /// Attaches `guard` to `inner`.
    pub fn new(inner: B, guard: InFlight) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }

    /// The guard, while the body has not ended.
    pub fn guard(&self) -> Option<&InFlight> {
        self.guard.as_ref()
    }

    /// Whether the guard is still held (the body has not ended).
    pub fn is_tracking(&self) -> bool {
        self.guard.is_some()
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let ready = this.inner.as_mut().poll_frame(cx);
        let end = match &ready {
            Poll::Ready(None) => true,
            // The last frame: a reader that checks `is_end_stream` (hyper does) will
            // not poll again, so the body ends here.
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut g) = this.guard.take() {
                    g.fail();
                }
                false
            }
            Poll::Pending => false,
        };
        if end {
            if let Some(mut g) = this.guard.take() {
                g.succeed();
            }
        }
        ready
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
