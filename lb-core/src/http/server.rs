//! The HTTP/1.1 server side of one client connection, holding no buffer while it waits.
//!
//! hyper's server connection keeps, for as long as the client stays connected, an 8 KiB
//! read buffer, an 8 KiB buffer for response heads and room for the service's future:
//! about 20 KiB for each idle keep-alive client, where HAProxy and nginx keep well under
//! 1 KiB. [`Connection`] keeps none of them between requests. It waits for the next
//! request with nothing but its transport; the first read of a head goes to the stack
//! and is copied out only if something came, the service's future is boxed only while a
//! request is served, and the buffer for the response only while it is written.
//!
//! It speaks HTTP/1.1 and HTTP/1.0 (RFC 9112): requests framed by `Content-Length` or
//! chunked (with trailers), pipelined requests answered in order, `Expect:
//! 100-continue` answered when the service first reads the body, responses framed by
//! their length, chunked, or (to HTTP/1.0) by closing, `HEAD`/1xx/204/304 without a
//! body, a `Date` on every response, upgrades (`101 Switching Protocols`, `CONNECT`)
//! handed to the service as [`upgrade::OnUpgrade`](super::upgrade::OnUpgrade). A head
//! that is malformed gets `400`, one too long `431`, one that stalls past the header
//! read timeout `408`, and the connection closes. A client that goes away while its
//! request is served cancels it: the service's future is dropped.
//!
//! HTTP/2 is not spoken here: a server tells the two apart before (ALPN, or the client
//! preface) and gives HTTP/2 to hyper.
//!
//! ```no_run
//! # async fn run() -> Result<(), lb_core::BoxError> {
//! use lb_core::http::server::{Builder, RequestBody};
//! use lb_core::http::{full, Body};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! loop {
//!     let (tcp, _) = listener.accept().await?;
//!     let svc = hyper::service::service_fn(|req: http::Request<RequestBody>| async move {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(full(format!("{}\n", req.uri()))))
//!     });
//!     tokio::spawn(Builder::new().serve_connection(tcp, svc));
//! }
//! # }
//! ```

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING, UPGRADE};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Sleep;

use super::forward::connection_lists;
use super::h1::{self, Chunk, Framing, Sending, Span, MAX_HEADERS, READ_SIZE, READ_SIZE_MAX, WRITE_HIGH};
use super::upgrade::TakeOnce;
use crate::BoxError;

/// What a connection is served over: a TCP stream, a TLS stream, anything that reads
/// and writes.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}

/// A connection's settings.
#[derive(Clone, Copy, Debug)]
pub struct Builder {
    max_head: usize,
    header_read_timeout: Option<Duration>,
    http2_preface: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// Heads up to 64 KiB, no header read timeout.
    pub fn new() -> Self {
        Self {
            max_head: 64 * 1024,
            header_read_timeout: None,
            http2_preface: false,
        }
    }

    /// A request head (request line and fields) longer than `bytes` gets `431`.
    pub fn max_head_bytes(mut self, bytes: usize) -> Self {
        self.max_head = bytes;
        self
    }

    /// A request head must be whole within `timeout` of its first byte, or the client
    /// gets `408` and the connection closes. (How long an idle connection may wait for
    /// that first byte is the caller's to decide: drop the connection, or ask it to
    /// close with [`Connection::graceful_shutdown`].)
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = Some(timeout);
        self
    }

    /// A connection that opens with HTTP/2's client preface (prior knowledge, RFC 9113
    /// 3.3) ends with [`Ended::Http2`], handing the connection over for an HTTP/2
    /// server, instead of refusing it with `400`.
    pub fn http2_preface(mut self, detect: bool) -> Self {
        self.http2_preface = detect;
        self
    }

    /// Serves HTTP/1.1 on `io` with `service` until the client closes, a response asks
    /// to close, or [`Connection::graceful_shutdown`].
    pub fn serve_connection<I, S, B>(&self, io: I, service: S) -> Connection<S, B>
    where
        I: Transport,
        S: hyper::service::Service<Request<RequestBody>, Response = Response<B>>,
    {
        let shared: SharedIo = Arc::new(Mutex::new(Shared {
            rbuf: BytesMut::new(),
            read_size: READ_SIZE,
            recv: Framing::Length(0),
            body_open: false,
            continue_left: 0,
            io,
        }));
        Connection {
            shared,
            service,
            state: State::Head,
            builder: *self,
            shutdown: false,
            head_timer: None,
            first: true,
            scanned: 0,
        }
    }
}

/// How a [`Connection`] ended.
#[derive(Debug)]
pub enum Ended {
    /// The connection is closed.
    Closed,
    /// The client opened with HTTP/2's preface ([`Builder::http2_preface`]): here is
    /// its connection, the bytes read so far first, for an HTTP/2 server.
    Http2(Upgraded),
}

/// HTTP/2's client connection preface (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the connection, the request body and an upgraded connection share: the
/// transport and what has been read from it.
struct Shared<T: ?Sized> {
    /// Read and not yet taken: the rest of a head, body bytes, pipelined requests.
    rbuf: BytesMut,
    read_size: usize,
    /// The request body's framing; `Length(0)` once it has ended, or without one.
    recv: Framing,
    /// A [`RequestBody`] reads the transport: the connection leaves it alone.
    body_open: bool,
    /// The bytes of `100 Continue` still to write before the body is read.
    continue_left: u8,
    io: T,
}

type SharedIo = Arc<Mutex<Shared<dyn Transport>>>;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

fn lock(shared: &SharedIo) -> MutexGuard<'_, Shared<dyn Transport>> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared<dyn Transport> {
    /// Reads more into `rbuf`; `Ok(0)` at the end of the stream. `between`: waiting for
    /// a head, when with nothing buffered the read goes to the stack first, so a
    /// connection waiting for its next request holds no buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>, between: bool) -> Poll<io::Result<usize>> {
        if between && self.rbuf.is_empty() {
            self.rbuf = ready!(h1::poll_read_small(&mut self.io, cx))?;
            return Poll::Ready(Ok(self.rbuf.len()));
        }
        if self.rbuf.capacity() - self.rbuf.len() < self.read_size / 2 {
            self.rbuf.reserve(self.read_size);
        }
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.rbuf
        ))?;
        if n >= self.read_size && self.read_size < READ_SIZE_MAX {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Writes what is left of `100 Continue`, if anything, and flushes it.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.continue_left == 0 {
            return Poll::Ready(Ok(()));
        }
        while self.continue_left > 0 {
            let from = CONTINUE.len() - usize::from(self.continue_left);
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &CONTINUE[from..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.continue_left -= n as u8;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

// --- the request body ---

/// A request's body as a server hands it to its service: read from an HTTP/1.1
/// [`Connection`] as the service asks for it, or hyper's (HTTP/2).
pub struct RequestBody {
    inner: BodyInner,
}

enum BodyInner {
    Empty,
    H1 { shared: SharedIo, failed: bool },
    Hyper(hyper::body::Incoming),
}

impl RequestBody {
    /// A body with nothing in it.
    pub fn empty() -> Self {
        Self {
            inner: BodyInner::Empty,
        }
    }

    fn h1(shared: SharedIo) -> Self {
        Self {
            inner: BodyInner::H1 { shared, failed: false },
        }
    }
}

impl From<hyper::body::Incoming> for RequestBody {
    fn from(body: hyper::body::Incoming) -> Self {
        Self {
            inner: BodyInner::Hyper(body),
        }
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner {
            BodyInner::Empty => "empty",
            BodyInner::H1 { .. } => "http1",
            BodyInner::Hyper(_) => "hyper",
        };
        f.debug_tuple("RequestBody").field(&kind).finish()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let BodyInner::H1 { shared, .. } = &self.inner {
            lock(shared).body_open = false;
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let (shared, failed) = match &mut this.inner {
            BodyInner::Empty => return Poll::Ready(None),
            BodyInner::Hyper(b) => return Pin::new(b).poll_frame(cx).map_err(Into::into),
            BodyInner::H1 { failed: true, .. } => return Poll::Ready(None),
            BodyInner::H1 { shared, failed } => (shared, failed),
        };
        let mut guard = lock(shared);
        let sh = &mut *guard;
        let frame = loop {
            if let Err(e) = ready!(sh.poll_continue(cx)) {
                break Err(e);
            }
            match h1::decode(&mut sh.recv, &mut sh.rbuf) {
                Ok(Some(frame)) => break Ok(Some(frame)),
                Ok(None) if sh.recv == Framing::Length(0) => break Ok(None),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            match ready!(sh.poll_fill(cx, false)) {
                Ok(0) => {
                    break Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed the connection before the end of the body",
                    ))
                }
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        };
        let ended = sh.recv == Framing::Length(0);
        if ended {
            sh.body_open = false;
        }
        drop(guard);
        match frame {
            Err(e) => {
                *failed = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Ok(frame) => {
                if ended {
                    // Done with the transport: the connection reads again.
                    this.inner = BodyInner::Empty;
                }
                Poll::Ready(frame.map(Ok))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            BodyInner::Empty => true,
            BodyInner::H1 { failed, .. } => *failed,
            BodyInner::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            BodyInner::Empty => SizeHint::with_exact(0),
            BodyInner::H1 { shared, .. } => match lock(shared).recv {
                Framing::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
            BodyInner::Hyper(b) => b.size_hint(),
        }
    }
}

// --- upgrades ---

/// The client's connection after a `101 Switching Protocols` (or a `CONNECT` answered
/// 2xx) was written to it: the bytes it sent past its request, then the connection.
pub struct Upgraded {
    shared: SharedIo,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded").finish_non_exhaustive()
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut sh = lock(&self.shared);
        if !sh.rbuf.is_empty() {
            let n = sh.rbuf.len().min(buf.remaining());
            buf.put_slice(&sh.rbuf.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut sh.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut lock(&self.shared).io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.shared).io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.shared).io).poll_shutdown(cx)
    }
}

/// The request extension through which the service receives the client's
/// [`Upgraded`] connection, once the response that agrees to it is written.
pub(super) type PendingUpgrade = TakeOnce<oneshot::Receiver<Upgraded>>;

// --- the connection ---

/// One client connection served with HTTP/1.1; a future that ends when the connection
/// does. See the [module docs](self).
#[must_use = "a connection does nothing unless polled"]
pub struct Connection<S, B>
where
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>>,
{
    shared: SharedIo,
    service: S,
    state: State<S::Future, B>,
    builder: Builder,
    /// Asked to close once the request in hand (if any) is answered.
    shutdown: bool,
    /// The deadline of a head that has begun to arrive.
    head_timer: Option<Pin<Box<Sleep>>>,
    /// No request has come yet.
    first: bool,
    /// How much of a partial head was searched for its end already.
    scanned: usize,
}

impl<S, B> std::fmt::Debug for Connection<S, B>
where
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("builder", &self.builder)
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}

// The service and the response body are never pinned in place (the service's future is
// boxed): the connection can move freely.
impl<S, B> Unpin for Connection<S, B> where S: hyper::service::Service<Request<RequestBody>, Response = Response<B>> {}

enum State<F, B> {
    /// Waiting for a request head, or reading one.
    Head,
    /// The service is working on a request.
    Serving {
        future: Pin<Box<F>>,
        req: Asked,
    },
    /// Writing the response.
    Writing(Box<Answer<B>>),
    /// Closing the transport (a TLS close_notify, then FIN).
    Closing,
    Done,
}

/// What the connection keeps of a request while the service answers it.
struct Asked {
    version: Version,
    head_request: bool,
    connect: bool,
    keep_alive: bool,
    upgrade: Option<oneshot::Sender<Upgraded>>,
}

/// A response being written.
struct Answer<B> {
    wbuf: BytesMut,
    written: usize,
    body: Option<B>,
    send: Option<Sending>,
    keep_alive: bool,
    /// Given the transport once the head is written (a 101, or CONNECT's 2xx).
    upgrade: Option<oneshot::Sender<Upgraded>>,
}

impl<S, B> Connection<S, B>
where
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>>,
{
    /// Finishes the request in hand, if any, and closes; an idle connection closes at
    /// once. The next poll acts on it.
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        self.get_mut().shutdown = true;
    }
}

/// Why reading a head stopped.
enum HeadError {
    /// The client closed, or the transport failed: nothing to answer.
    Gone,
    /// The client speaks HTTP/2.
    Http2,
    /// Answer with this status, then close.
    Refuse(StatusCode),
}

impl<S, B> Future for Connection<S, B>
where
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<Ended, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Head => match ready!(this.poll_head(cx)) {
                    Ok(Some((req, asked))) => {
                        let future = Box::pin(this.service.call(req));
                        this.state = State::Serving { future, req: asked };
                    }
                    Ok(None) | Err(HeadError::Gone) => this.state = State::Closing,
                    Err(HeadError::Http2) => {
                        this.state = State::Done;
                        return Poll::Ready(Ok(Ended::Http2(Upgraded {
                            shared: this.shared.clone(),
                        })));
                    }
                    Err(HeadError::Refuse(status)) => this.state = State::Writing(refusal(status)),
                },
                State::Serving { future, .. } => {
                    let Poll::Ready(rsp) = future.as_mut().poll(cx) else {
                        if client_gone(&this.shared, this.builder.max_head, cx) {
                            // Dropping the future cancels the request.
                            this.state = State::Done;
                            return Poll::Ready(Ok(Ended::Closed));
                        }
                        return Poll::Pending;
                    };
                    let State::Serving { req, .. } = std::mem::replace(&mut this.state, State::Done) else {
                        unreachable!("serving")
                    };
                    this.state = match rsp {
                        Ok(rsp) => State::Writing(this.answer(rsp, req)),
                        Err(e) => {
                            tracing::debug!(error = %e.into(), "the service failed; answering 500");
                            State::Writing(refusal(StatusCode::INTERNAL_SERVER_ERROR))
                        }
                    };
                }
                State::Writing(answer) => {
                    match answer.poll_write(&this.shared, cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => {
                            this.state = State::Done;
                            return Poll::Ready(Err(e.into()));
                        }
                        Poll::Pending => {
                            // A response that waits for its body (a long poll, a
                            // stream) ends when the client goes.
                            if client_gone(&this.shared, this.builder.max_head, cx) {
                                this.state = State::Done;
                                return Poll::Ready(Ok(Ended::Closed));
                            }
                            return Poll::Pending;
                        }
                    }
                    let mut sh = lock(&this.shared);
                    // The request's body must have been read to its end for the next
                    // request to be found.
                    let clean = drain_unread(&mut sh);
                    if sh.rbuf.is_empty() {
                        // Nothing more in hand: the buffer goes until something comes.
                        sh.rbuf = BytesMut::new();
                    }
                    drop(sh);
                    let State::Writing(answer) = std::mem::replace(&mut this.state, State::Done) else {
                        unreachable!("writing")
                    };
                    if let Some(tx) = answer.upgrade {
                        let _ = tx.send(Upgraded {
                            shared: this.shared.clone(),
                        });
                        return Poll::Ready(Ok(Ended::Closed));
                    }
                    this.state = if answer.keep_alive && clean && !this.shutdown {
                        State::Head
                    } else {
                        State::Closing
                    };
                }
                State::Closing => {
                    let mut sh = lock(&this.shared);
                    let _ = ready!(Pin::new(&mut sh.io).poll_shutdown(cx));
                    drop(sh);
                    this.state = State::Done;
                }
                State::Done => return Poll::Ready(Ok(Ended::Closed)),
            }
        }
    }
}

impl<S, B> Connection<S, B>
where
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>>,
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Reads until a whole request head is in hand; `Ok(None)`: the client closed
    /// between requests, or shutdown was asked while idle.
    #[allow(clippy::type_complexity)]
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<(Request<RequestBody>, Asked)>, HeadError>> {
        loop {
            let mut sh = lock(&self.shared);
            let preface = self.first
                && self.builder.http2_preface
                && H2_PREFACE.starts_with(&sh.rbuf[..sh.rbuf.len().min(H2_PREFACE.len())]);
            if preface && sh.rbuf.len() >= H2_PREFACE.len() {
                return Poll::Ready(Err(HeadError::Http2));
            }
            if !sh.rbuf.is_empty() && !preface {
                // Parsed only once its end is here: a head sent a byte at a time is
                // searched once, not parsed again from the start on every read.
                let ended = head_ended(&sh.rbuf, &mut self.scanned);
                let parsed = if ended {
                    parse_request(&mut sh.rbuf, self.builder.max_head)
                } else if sh.rbuf.len() > self.builder.max_head {
                    Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
                } else {
                    Ok(None)
                };
                match parsed {
                    Ok(Some(head)) => {
                        self.head_timer = None;
                        self.first = false;
                        self.scanned = 0;
                        drop(sh);
                        return Poll::Ready(self.request(head).map(Some).map_err(HeadError::Refuse));
                    }
                    Ok(None) => {}
                    Err(status) => return Poll::Ready(Err(HeadError::Refuse(status))),
                }
            }
            if self.shutdown && sh.rbuf.is_empty() {
                return Poll::Ready(Ok(None));
            }
            match sh.poll_fill(cx, true) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(HeadError::Gone)),
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => {}
            }
            if sh.rbuf.is_empty() {
                return Poll::Pending;
            }
            drop(sh);
            // Part of a head is here: the rest must follow in time.
            let Some(timeout) = self.builder.header_read_timeout else {
                return Poll::Pending;
            };
            let timer = self
                .head_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
            ready!(timer.as_mut().poll(cx));
            self.head_timer = None;
            return Poll::Ready(Err(HeadError::Refuse(StatusCode::REQUEST_TIMEOUT)));
        }
    }

    /// The request for the service, from a parsed head: its body's framing (RFC 9112
    /// 6.3), whether the connection may be kept, its upgrade.
    fn request(&mut self, head: Head) -> Result<(Request<RequestBody>, Asked), StatusCode> {
        let Head {
            method,
            uri,
            version,
            mut headers,
        } = head;
        let mut keep_alive = match version {
            Version::HTTP_10 => connection_lists(&headers, "keep-alive"),
            _ => !connection_lists(&headers, "close"),
        };
        let recv = if headers.contains_key(TRANSFER_ENCODING) {
            // Only chunked, last, frames a request; never in HTTP/1.0; with a length
            // too, the length is dropped and the connection is not kept.
            if version == Version::HTTP_10 || !h1::chunked_last(&headers) {
                return Err(StatusCode::BAD_REQUEST);
            }
            if headers.remove(CONTENT_LENGTH).is_some() {
                keep_alive = false;
            }
            Framing::Chunked(Chunk::Size)
        } else {
            match h1::content_length(&headers) {
                Ok(n) => Framing::Length(n.unwrap_or(0)),
                Err(()) => return Err(StatusCode::BAD_REQUEST),
            }
        };
        let connect = method == Method::CONNECT;
        let wants_upgrade = connect || (headers.contains_key(UPGRADE) && connection_lists(&headers, "upgrade"));
        let body = if recv == Framing::Length(0) {
            RequestBody::empty()
        } else {
            let expects = version == Version::HTTP_11
                && headers
                    .get(EXPECT)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            let mut sh = lock(&self.shared);
            sh.recv = recv;
            sh.body_open = true;
            sh.continue_left = if expects { CONTINUE.len() as u8 } else { 0 };
            drop(sh);
            RequestBody::h1(self.shared.clone())
        };
        let head_request = method == Method::HEAD;
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = headers;
        let upgrade = wants_upgrade.then(|| {
            let (tx, rx) = oneshot::channel();
            req.extensions_mut().insert(PendingUpgrade::new(rx));
            tx
        });
        Ok((
            req,
            Asked {
                version,
                head_request,
                connect,
                keep_alive,
                upgrade,
            },
        ))
    }

    /// The response's head, framed for this client, and its body to write.
    fn answer(&self, rsp: Response<B>, req: Asked) -> Box<Answer<B>> {
        let (mut parts, body) = rsp.into_parts();
        let status = parts.status;
        let upgrading = req.upgrade.is_some()
            && (status == StatusCode::SWITCHING_PROTOCOLS || (req.connect && status.is_success()));
        let headers = &mut parts.headers;
        // A response may ask to close; a refused upgrade or CONNECT closes too, as the
        // client may have sent bytes for the other protocol already.
        let mut keep_alive =
            req.keep_alive && !self.shutdown && req.upgrade.is_none() && !connection_lists(headers, "close");
        let mut continue_left = 0;
        {
            let mut sh = lock(&self.shared);
            // Answered before the body was asked for: no 100 Continue after this (one
            // begun is finished first), and a body no one will read, if it is not all
            // here, means the connection cannot be kept, which the head says.
            if usize::from(sh.continue_left) < CONTINUE.len() {
                continue_left = sh.continue_left;
            }
            sh.continue_left = 0;
            if !drain_unread(&mut sh) && !sh.body_open {
                keep_alive = false;
            }
        }
        let no_body = req.head_request
            || upgrading
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        if upgrading || status.is_informational() || status == StatusCode::NO_CONTENT {
            // RFC 9110 8.6, 6.4.1: these have no body and say nothing of one.
            headers.remove(CONTENT_LENGTH);
            headers.remove(TRANSFER_ENCODING);
        }
        let send = if no_body {
            None
        } else {
            headers.remove(TRANSFER_ENCODING);
            match h1::content_length(headers) {
                Ok(Some(n)) => Some(Sending::Length(n)),
                _ => {
                    headers.remove(CONTENT_LENGTH);
                    if let Some(n) = body.size_hint().exact() {
                        headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
                        Some(Sending::Length(n))
                    } else if req.version == Version::HTTP_11 {
                        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
                        Some(Sending::Chunked)
                    } else {
                        keep_alive = false;
                        Some(Sending::Raw)
                    }
                }
            }
        };
        if !upgrading {
            if !keep_alive {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            } else if req.version == Version::HTTP_10 {
                headers.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
            }
        }
        let mut wbuf = BytesMut::with_capacity(128 + 32 * headers.len() + small_body(&body, send));
        wbuf.extend_from_slice(&CONTINUE[CONTINUE.len() - usize::from(continue_left)..]);
        wbuf.extend_from_slice(if req.version == Version::HTTP_10 {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        wbuf.extend_from_slice(status.as_str().as_bytes());
        wbuf.put_u8(b' ');
        wbuf.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        wbuf.extend_from_slice(b"\r\n");
        h1::put_fields(&mut wbuf, headers);
        if !headers.contains_key(DATE) {
            put_date(&mut wbuf);
        }
        wbuf.extend_from_slice(b"\r\n");
        Box::new(Answer {
            wbuf,
            written: 0,
            body: send.map(|_| body),
            send,
            keep_alive,
            upgrade: if upgrading { req.upgrade } else { None },
        })
    }
}

/// Whether the client closed (or its connection broke) while its request is served or
/// answered. Bytes of a next, pipelined request are kept, up to the head limit; a
/// client that sent its requests and then closed its side is served what it sent.
fn client_gone(shared: &SharedIo, max_head: usize, cx: &mut Context<'_>) -> bool {
    let mut sh = lock(shared);
    // The body reads the transport, or what follows is the rest of a body no one reads.
    if sh.body_open || sh.recv != Framing::Length(0) {
        return false;
    }
    while sh.rbuf.len() <= max_head {
        match sh.poll_fill(cx, true) {
            Poll::Ready(Ok(0)) => return sh.rbuf.is_empty(),
            Poll::Ready(Err(_)) => return true,
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => return false,
        }
    }
    false
}

/// Takes what has arrived of a request body no one reads any more, so the next request
/// can be found; whether it all had.
fn drain_unread(sh: &mut Shared<dyn Transport>) -> bool {
    if sh.body_open {
        return sh.recv == Framing::Length(0);
    }
    while sh.recv != Framing::Length(0) {
        match h1::decode(&mut sh.recv, &mut sh.rbuf) {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    sh.recv == Framing::Length(0)
}

/// Room for a body that will come whole with the head.
fn small_body<B: http_body::Body>(body: &B, send: Option<Sending>) -> usize {
    match (send, body.size_hint().exact()) {
        (Some(Sending::Length(_)), Some(n)) if n <= 16 * 1024 => n as usize,
        _ => 0,
    }
}

impl<B> Answer<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Writes the head and the body, gathering what the body has ready into few writes.
    /// The transport is locked only to write: the body (a proxied response) may read
    /// the request's body, which locks it too.
    fn poll_write(&mut self, shared: &SharedIo, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut body_pending = false;
            while let Some(body) = self.body.as_mut() {
                if self.wbuf.len() - self.written >= WRITE_HIGH {
                    break;
                }
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => {
                        body_pending = true;
                        break;
                    }
                    Poll::Ready(frame) => {
                        let frame = frame.map(|f| f.map_err(Into::into));
                        if h1::put_frame(&mut self.wbuf, &mut self.send, frame)? {
                            self.body = None;
                        }
                    }
                }
            }
            let mut sh = lock(shared);
            while self.written < self.wbuf.len() {
                let n = ready!(Pin::new(&mut sh.io).poll_write(cx, &self.wbuf[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
            }
            self.wbuf.clear();
            self.written = 0;
            if self.body.is_none() {
                return Pin::new(&mut sh.io).poll_flush(cx);
            }
            if body_pending {
                // What a TLS stream holds goes out now, not with the next part.
                ready!(Pin::new(&mut sh.io).poll_flush(cx))?;
                return Poll::Pending;
            }
        }
    }
}

/// A bodiless answer that closes the connection.
fn refusal<B>(status: StatusCode) -> Box<Answer<B>> {
    let mut wbuf = BytesMut::with_capacity(128);
    wbuf.extend_from_slice(b"HTTP/1.1 ");
    wbuf.extend_from_slice(status.as_str().as_bytes());
    wbuf.put_u8(b' ');
    wbuf.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    wbuf.extend_from_slice(b"\r\ncontent-length: 0\r\nconnection: close\r\n");
    put_date(&mut wbuf);
    wbuf.extend_from_slice(b"\r\n");
    Box::new(Answer {
        wbuf,
        written: 0,
        body: None,
        send: None,
        keep_alive: false,
        upgrade: None,
    })
}

/// `date: <IMF-fixdate>`, formatted once a second per thread.
fn put_date(dst: &mut BytesMut) {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        dst.extend_from_slice(b"date: ");
        dst.extend_from_slice(c.1.as_bytes());
        dst.extend_from_slice(b"\r\n");
    });
}

/// Whether `buf` holds the blank line that ends a head, searching only past `scanned`
/// (and noting how far it searched).
fn head_ended(buf: &[u8], scanned: &mut usize) -> bool {
    let from = scanned.saturating_sub(2);
    *scanned = buf.len();
    buf[from.min(buf.len())..]
        .windows(2)
        .enumerate()
        .any(|(i, w)| w == b"\n\n" || (w == b"\n\r" && buf.get(from + i + 2) == Some(&b'\n')))
}

/// A request head, parsed.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: http::HeaderMap,
}

/// Parses a request head at the start of `rbuf`, taking it out; `Ok(None)` until it is
/// whole. Leading empty lines are passed over (RFC 9112 2.2).
fn parse_request(rbuf: &mut BytesMut, max_head: usize) -> Result<Option<Head>, StatusCode> {
    let mut spans = [Span::default(); MAX_HEADERS];
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let base = rbuf.as_ptr() as usize;
    let len = match req.parse(rbuf) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if rbuf.len() <= max_head => return Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(_) => return Err(StatusCode::BAD_REQUEST),
    };
    let bad = |_| StatusCode::BAD_REQUEST;
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes()).map_err(bad)?;
    let path = req.path.unwrap_or_default();
    let path_at = path.as_ptr() as usize - base;
    let path_len = path.len();
    let version = if req.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let n = h1::field_spans(base, req.headers, &mut spans);
    let head = rbuf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path_at..path_at + path_len)).map_err(|_| StatusCode::BAD_REQUEST)?;
    // Room for what a proxy adds (`X-Forwarded-*`) without growing the map.
    let headers = h1::header_map(&head, &spans[..n], 4).map_err(|_| StatusCode::BAD_REQUEST)?;
    Ok(Some(Head {
        method,
        uri,
        version,
        headers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<Head>, StatusCode> {
        parse_request(&mut BytesMut::from(text), 1024)
    }

    #[test]
    fn request_heads() {
        let h = parse("\r\nGET /a?b HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
            .unwrap()
            .expect("whole");
        assert_eq!((h.method, h.version), (Method::GET, Version::HTTP_11));
        assert_eq!(h.uri, "/a?b");
        assert_eq!(h.headers.get_all("x-a").iter().count(), 2);
        let h = parse("CONNECT db:5432 HTTP/1.0\r\n\r\n").unwrap().expect("whole");
        assert_eq!(h.uri.authority().map(|a| a.as_str()), Some("db:5432"));
        assert_eq!(h.version, Version::HTTP_10);
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none(), "partial");
        assert_eq!(parse("GET / HTTP/9.9\r\n\r\n").err(), Some(StatusCode::BAD_REQUEST));
        assert_eq!(
            parse("GET / HTTP/1.1\r\nbad line\r\n\r\n").err(),
            Some(StatusCode::BAD_REQUEST)
        );
        let long = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "y".repeat(2000));
        assert_eq!(parse(&long).err(), Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        let partial_long = format!("GET / HTTP/1.1\r\nx: {}", "y".repeat(2000));
        assert_eq!(
            parse(&partial_long).err(),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("h{i}: v\r\n")).collect();
        assert_eq!(
            parse_request(
                &mut BytesMut::from(format!("GET / HTTP/1.1\r\n{many}\r\n").as_str()),
                1 << 20
            )
            .err(),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
    }

    #[test]
    fn the_date_is_an_imf_fixdate() {
        let mut b = BytesMut::new();
        put_date(&mut b);
        let text = std::str::from_utf8(&b).expect("ascii");
        let value = text
            .strip_prefix("date: ")
            .and_then(|t| t.strip_suffix("\r\n"))
            .expect("a field");
        assert_eq!(value.len(), 29, "{value}");
        assert!(httpdate::parse_http_date(value).is_ok(), "{value}");
    }
}
