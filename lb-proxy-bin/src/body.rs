//! The two bodies of a proxied request, and who is to blame when one breaks.
//!
//! - [`ClientBody`] is the client's request body on its way to an endpoint: it enforces
//!   `max_body_bytes` on a chunked body and `body_read_timeout` between two reads, and
//!   notes in a [`Fault`] when the client is the one that failed (it aborted, sent a bad
//!   chunk, sent too much, went quiet). An endpoint attempt that fails because of that
//!   is the client's failure: the proxy answers 400, 413 or 408 and the endpoint is not
//!   charged with it.
//! - [`UpstreamBody`] is an endpoint's response body on its way to the client: it holds
//!   the request's [`InFlight`] guard until the body ends, and reports the outcome (a
//!   success, a failure for a 5xx or a body that breaks off, nothing when the client's
//!   own body broke the exchange or the client went away).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::{Body as _, Frame, SizeHint};
use lb_core::http::server::RequestBody;
use lb_core::http::ResponseBody;
use lb_core::{EndpointId, InFlight};
use tokio::time::{Instant, Sleep};

/// What the client did wrong with its request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientFault {
    /// It broke off (a reset, a close mid-body) or sent a malformed chunk: 400.
    Aborted,
    /// It sent more than `max_body_bytes`: 413.
    TooLarge,
    /// It sent nothing for `body_read_timeout`: 408.
    Idle,
}

impl ClientFault {
    /// The status the client gets.
    pub(crate) fn status(self) -> http::StatusCode {
        match self {
            ClientFault::Aborted => http::StatusCode::BAD_REQUEST,
            ClientFault::TooLarge => http::StatusCode::PAYLOAD_TOO_LARGE,
            ClientFault::Idle => http::StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// Why, for the client and the log.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            ClientFault::Aborted => "the request body broke off or is malformed",
            ClientFault::TooLarge => "the request body is larger than the limit",
            ClientFault::Idle => "the request body stopped coming",
        }
    }

    fn code(self) -> u8 {
        match self {
            ClientFault::Aborted => 1,
            ClientFault::TooLarge => 2,
            ClientFault::Idle => 3,
        }
    }
}

/// Shared between a [`ClientBody`] and the request that sends it: whether the client
/// failed its body, and whether the body was read to its end.
#[derive(Debug, Default)]
pub(crate) struct Fault(AtomicU8);

const DONE: u8 = 0x80;

impl Fault {
    /// The client's fault, if it made one.
    pub(crate) fn get(&self) -> Option<ClientFault> {
        match self.0.load(Ordering::Acquire) & !DONE {
            1 => Some(ClientFault::Aborted),
            2 => Some(ClientFault::TooLarge),
            3 => Some(ClientFault::Idle),
            _ => None,
        }
    }

    /// Whether the body was read to its end (so an endpoint that is late is late on its
    /// own account).
    pub(crate) fn is_done(&self) -> bool {
        self.0.load(Ordering::Acquire) & DONE != 0
    }

    fn set(&self, f: ClientFault) {
        let _ = self
            .0
            .compare_exchange(0, f.code(), Ordering::AcqRel, Ordering::Acquire);
    }

    fn done(&self) {
        self.0.fetch_or(DONE, Ordering::AcqRel);
    }
}

/// The error a [`ClientBody`] ends with (the endpoint's request fails with it).
#[derive(Debug, thiserror::Error)]
#[error("client request body: {}", .0.reason())]
pub(crate) struct ClientBodyError(pub(crate) ClientFault);

/// A client's request body with its limits; see the module docs.
#[derive(Debug)]
pub(crate) struct ClientBody {
    inner: RequestBody,
    /// `max_body_bytes`, if any, and the bytes read so far.
    limit: Option<u64>,
    read: u64,
    idle: Duration,
    /// Armed while waiting for the client (made on the first wait only).
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    fault: Arc<Fault>,
}

impl ClientBody {
    /// Wraps `inner`; `fault` is where the client's failure is noted.
    pub(crate) fn new(inner: RequestBody, limit: Option<u64>, idle: Duration, fault: Arc<Fault>) -> Self {
        Self {
            inner,
            limit,
            read: 0,
            idle,
            timer: None,
            armed: false,
            fault,
        }
    }

    fn failed(&mut self, f: ClientFault) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        self.fault.set(f);
        Poll::Ready(Some(Err(ClientBodyError(f))))
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.armed = false;
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    if this.limit.is_some_and(|max| this.read > max) {
                        return this.failed(ClientFault::TooLarge);
                    }
                }
                if this.inner.is_end_stream() {
                    this.fault.done();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => this.failed(ClientFault::Aborted),
            Poll::Ready(None) => {
                this.fault.done();
                Poll::Ready(None)
            }
            Poll::Pending => {
                // The clock is read, and the timer set, once per wait, not per poll.
                if !this.armed {
                    let deadline = Instant::now() + this.idle;
                    match &mut this.timer {
                        Some(t) => t.as_mut().reset(deadline),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    this.armed = true;
                }
                let timer = this.timer.as_mut().expect("armed above");
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => this.failed(ClientFault::Idle),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An endpoint's response body, holding the request's guard; see the module docs.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    inner: ResponseBody,
    guard: Option<InFlight>,
    endpoint: EndpointId,
    fault: Option<Arc<Fault>>,
}

impl UpstreamBody {
    /// Takes an endpoint's response: a 5xx is the endpoint's failure (no latency
    /// sample), any other head is a latency sample; an empty body ends the request now.
    pub(crate) fn track(
        rsp: Response<ResponseBody>,
        mut guard: InFlight,
        fault: Option<Arc<Fault>>,
    ) -> Response<UpstreamBody> {
        if rsp.status().is_server_error() {
            guard.fail();
        } else {
            guard.observe_latency();
        }
        let endpoint = guard.endpoint().id().clone();
        let guard = if rsp.body().is_end_stream() {
            // Nothing to come: hyper never polls such a body.
            guard.succeed();
            None
        } else {
            Some(guard)
        };
        rsp.map(|inner| UpstreamBody {
            inner,
            guard,
            endpoint,
            fault,
        })
    }

    /// The endpoint that answered.
    pub(crate) fn endpoint(&self) -> &EndpointId {
        &self.endpoint
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = lb_core::http::ClientError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let ready = Pin::new(&mut this.inner).poll_frame(cx);
        let end = match &ready {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut g) = this.guard.take() {
                    // The client's body broke the exchange (its request was cut short):
                    // no outcome for the endpoint. Otherwise the endpoint broke off.
                    if this.fault.as_ref().and_then(|f| f.get()).is_none() {
                        g.fail();
                    }
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
