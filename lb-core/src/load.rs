//! In-flight guards and completion tracking.
//!
//! A pick takes an [`InFlight`] guard on the chosen endpoint. The guard lives until the
//! request is really over: by default until the response arrives
//! ([`CompleteOnResponse`]); for HTTP, until the response body ends ([`BodyCompletion`]
//! and [`TrackedBody`]), so a long download counts as load for its whole length. When it
//! drops, the in-flight count goes down and the outcome (success or failure) feeds
//! passive health.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::state::EndpointState;

/// A policy that keeps derived state per snapshot (least-conn's tree, bounded
/// Maglev's total) hears about finished requests through the snapshot they came from.
/// Implemented by snapshots.
pub(crate) trait Release: Send + Sync + 'static {
    fn release(&self, index: u32);
}

/// Holds one request's place on an endpoint.
///
/// Dropping it ends the request: the endpoint's in-flight count goes down and the
/// outcome is recorded. It holds the endpoint's state (an `Arc`), and for policies that
/// track releases the snapshot it was picked from, not a copy of anything: taking and
/// dropping one allocates nothing, and threads picking different endpoints write no
/// shared cache line for it.
pub struct InFlight {
    state: Arc<EndpointState>,
    tracker: Option<(Arc<dyn Release>, u32)>,
    start: Option<Instant>,
    failed: bool,
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("endpoint", self.state.id())
            .field("failed", &self.failed)
            .finish()
    }
}

// === impl InFlight ===

impl InFlight {
    #[inline]
    pub(crate) fn new(
        state: Arc<EndpointState>,
        tracker: Option<(Arc<dyn Release>, u32)>,
        start: Option<Instant>,
    ) -> Self {
        Self {
            state,
            tracker,
            start,
            failed: false,
        }
    }

    /// Marks the request failed: when the guard drops, it counts toward passive
    /// outlier detection.
    pub fn fail(&mut self) {
        self.failed = true;
    }

    /// The endpoint this request went to.
    pub fn endpoint(&self) -> &EndpointState {
        &self.state
    }

    /// Whether it was marked failed.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Records the time from pick to now as the endpoint's latency sample (peak EWMA),
    /// once. Called when the response head arrives; a failed request records none (a
    /// refused connection is fast, not cheap).
    pub fn observe_latency(&mut self) {
        if let Some(start) = self.start.take() {
            self.state.observe_since(start);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.failed {
            self.observe_latency();
        }
        self.state.finish(self.failed);
        if let Some((snap, index)) = self.tracker.take() {
            snap.release(index);
        }
    }
}

/// Decides how long a request's guard lives, given its response.
pub trait TrackCompletion<Rsp>: Clone {
    /// The response handed back to the caller.
    type Output;

    /// Takes the response and the guard; returns the response, perhaps with the guard
    /// attached to it.
    fn track(&self, response: Rsp, guard: InFlight) -> Self::Output;
}

/// The guard drops when the response arrives: the request is over then.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompleteOnResponse;

impl<Rsp> TrackCompletion<Rsp> for CompleteOnResponse {
    type Output = Rsp;

    #[inline]
    fn track(&self, response: Rsp, guard: InFlight) -> Rsp {
        drop(guard);
        response
    }
}

/// For `http::Response`s: the guard rides in the body until it ends. A 5xx status
/// counts as a failure for passive health (as Linkerd's and Envoy's outlier detection
/// do); so does a body that ends in an error.
#[derive(Clone, Copy, Debug, Default)]
pub struct BodyCompletion;

impl<B> TrackCompletion<http::Response<B>> for BodyCompletion {
    type Output = http::Response<TrackedBody<B>>;

    fn track(&self, response: http::Response<B>, mut guard: InFlight) -> Self::Output {
        if response.status().is_server_error() {
            // A fast 503 is no sign of a fast endpoint: failures are not latency samples.
            guard.fail();
        } else {
            guard.observe_latency();
        }
        response.map(|body| TrackedBody::new(body, guard))
    }
}

pin_project! {
    /// A body that holds an [`InFlight`] guard until its last frame (or an error, or
    /// until it is dropped).
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
        let this = self.project();
        let ready = this.inner.poll_frame(cx);
        match &ready {
            Poll::Ready(None) => drop(this.guard.take()),
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut g) = this.guard.take() {
                    g.fail();
                }
            }
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
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
