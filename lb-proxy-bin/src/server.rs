//! Listeners: HTTP/1.1 and HTTP/2 (h2c with prior knowledge, h2 by ALPN over TLS), with
//! a deadline on every wait and a cap on open connections; graceful shutdown.
//!
//! Each connection is watched by a supervisor that knows whether a request is in flight:
//!
//! - with none in flight, the connection must bring its first request within
//!   `header_read_timeout` of the accept (TLS handshake, protocol detection and the
//!   HTTP/2 preface included), and a later one within `idle_timeout` of the last
//!   response; an HTTP/1.1 head must also be whole within `header_read_timeout` of
//!   its first byte, or it gets 408 (lb-core's server connection times it);
//! - with requests in flight, a response that waits for the client to take its next part
//!   for `send_timeout` (the client stopped reading) closes the connection; a request
//!   body that stops for `body_read_timeout` gets 408 ([`crate::body::ClientBody`]);
//! - HTTP/2 pings every 30 s and closes a connection whose peer does not answer in 20 s.
//!
//! The supervisor is lazy: a request or a response part costs it nothing (a few
//! atomics, no wake-up and no timer). It wakes at the next deadline that could be due,
//! finds what really is, and sleeps again, at most half the shortest of the three
//! timeouts: an idle connection is closed when its deadline is due (the supervisor
//! sees it idle before then and sleeps until it), and a stalled client is found by
//! sampling the response progress, so it is cut between one and two `send_timeout`s
//! after it stopped reading.
//!
//! Open client connections are capped ([`Conns`]): at the cap the listeners stop
//! accepting (new connections wait in the kernel's backlog, as under HAProxy's
//! `maxconn`) and idle connections are closed to make room, while every connection
//! with a request in flight goes on being served.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::future::Either;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lb_core::http::server::{self as h1, RequestBody, Transport};
use lb_core::http::Body;
use slab::Slab;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::{Forwarded, ServerConfig};
use crate::proxy;
use crate::runtime::Runtime;

/// HTTP/2 keepalive: a ping after this much silence...
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
/// ...that must be answered within this long.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// After a deadline asks a connection to close gracefully (HTTP/2: GOAWAY), how long it
/// has before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// File descriptors kept out of the default `max_connections`: listeners, the admin
/// listener's connections, health checks, files, DNS.
const RESERVED_FDS: u64 = 128;

/// `[server]`'s limits and deadlines, as each new connection and request reads them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Limits {
    pub(crate) max_header_bytes: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) body_read_timeout: Duration,
    pub(crate) send_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) forwarded: Forwarded,
}

impl Limits {
    /// The limits `[server]` sets.
    pub(crate) fn from_config(cfg: &ServerConfig) -> Self {
        Self {
            max_header_bytes: cfg.max_header_bytes,
            header_read_timeout: cfg.header_read_timeout,
            body_read_timeout: cfg.body_read_timeout,
            send_timeout: cfg.send_timeout,
            idle_timeout: cfg.idle_timeout,
            forwarded: cfg.forwarded,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::from_config(&ServerConfig::default())
    }
}

/// HTTP/1.1 (lb-core's server: no buffer held between requests), watching for HTTP/2's
/// preface.
fn h1_builder(limits: &Limits) -> h1::Builder {
    h1::Builder::new()
        .max_head_bytes(limits.max_header_bytes)
        .header_read_timeout(limits.header_read_timeout)
        .http2_preface(true)
}

/// HTTP/2, by hyper.
fn h2_builder(max_header_bytes: usize) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_header_list_size(max_header_bytes as u32)
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    b
}

// --- the file descriptor limit and max_connections ---

/// Raises the soft limit on open files to the hard limit, once; returns the limit in
/// force (`None` where there is none to read).
pub(crate) fn raise_fd_limit() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        #[cfg(unix)]
        {
            use rustix::process::{getrlimit, setrlimit, Resource};
            let lim = getrlimit(Resource::Nofile);
            let soft = lim.current;
            // Some systems (macOS) refuse a soft limit above a kernel maximum that the
            // hard limit does not show: try the hard limit, then a usual maximum.
            for want in [lim.maximum, Some(1 << 20), Some(10_240)] {
                if want.is_some_and(|w| soft.is_some_and(|s| w <= s)) {
                    break;
                }
                let next = rustix::process::Rlimit {
                    current: want,
                    maximum: lim.maximum,
                };
                if setrlimit(Resource::Nofile, next).is_ok() {
                    tracing::debug!(from = ?soft, to = ?want, "raised the open files limit");
                    return want.or(Some(u64::MAX));
                }
            }
            Some(soft.unwrap_or(u64::MAX))
        }
        #[cfg(not(unix))]
        {
            None
        }
    })
}

/// `max_connections` when the config gives none: half the file descriptors left after
/// [`RESERVED_FDS`] (each client connection may hold one to an endpoint too).
pub(crate) fn default_max_connections(fd_limit: Option<u64>) -> u32 {
    match fd_limit {
        Some(n) => (n.saturating_sub(RESERVED_FDS) / 2).clamp(16, 1 << 20) as u32,
        None => 10_000,
    }
}

// --- open connections ---

/// The client connections of a set of listeners: their cap, and how shutdown reaches
/// them.
#[derive(Debug)]
pub(crate) struct Conns {
    max: u32,
    slots: Arc<Semaphore>,
    /// Drain, close, and pressure (a new connection waits for a slot: idle ones close).
    signals: Signals,
    /// Open HTTP connections.
    open: watch::Sender<usize>,
    /// When the cap was last logged (seconds since `epoch`), so a flood logs once a second.
    warned: AtomicU64,
    epoch: Instant,
}

impl Conns {
    /// At most `max` connections at once.
    pub(crate) fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            slots: Arc::new(Semaphore::new(max as usize)),
            signals: Signals::default(),
            open: watch::channel(0).0,
            warned: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
        })
    }

    /// Logs that the cap is reached, at most once a second.
    fn warn_at_cap(&self, listener: &TcpListener) {
        let now = self.epoch.elapsed().as_secs();
        let last = self.warned.swap(now, Ordering::Relaxed);
        if last != now {
            tracing::warn!(listen = ?listener.local_addr().ok(), max_connections = self.max, "at max_connections: new connections wait; idle ones are closed to make room");
        }
    }

    /// HTTP connections being served now.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        *self.open.borrow()
    }

    /// Asks every HTTP connection to finish what is in flight and close.
    pub(crate) fn drain(&self) {
        self.signals.raise(DRAIN);
    }

    /// Closes every HTTP connection now.
    pub(crate) fn close(&self) {
        self.signals.raise(CLOSE);
    }

    /// Resolves once the connections are told to close now.
    async fn closing(self: Arc<Self>) {
        let mut listening = Listening::new(self);
        std::future::poll_fn(|cx| match listening.poll(cx) & CLOSE {
            0 => Poll::Pending,
            _ => Poll::Ready(()),
        })
        .await
    }

    /// Waits until no HTTP connection is open, or `deadline`; `false` if some still are.
    pub(crate) async fn closed_by(&self, deadline: Instant) -> bool {
        let mut rx = self.open.subscribe();
        let done = tokio::time::timeout_at(deadline, async { rx.wait_for(|n| *n == 0).await.is_ok() }).await;
        done.is_ok()
    }

    fn opened(self: &Arc<Self>) -> OpenConn {
        self.open.send_modify(|n| *n += 1);
        OpenConn(self.clone())
    }
}

/// [`Signals`]' bits: finish what is in flight, then close...
const DRAIN: u64 = 1;
/// ...close now...
const CLOSE: u64 = 2;
/// ...and, counted above these two, each time a new connection waited for a slot.
const PRESSURE: u64 = 4;

/// What every connection of a listener set is told, as one word that a connection reads
/// when its task wakes (an atomic load), and the wakers of those connections.
///
/// A connection's waker is registered once, not polled through a future for each
/// signal on every wake: the supervisor's `select!` over three such futures cost about
/// 2,000 instructions per request, and their room in every idle connection's task.
#[derive(Debug, Default)]
struct Signals {
    word: AtomicU64,
    wakers: Mutex<Slab<Waker>>,
}

impl Signals {
    /// Sets `DRAIN` or `CLOSE`, or counts one `PRESSURE`, and wakes every connection.
    fn raise(&self, signal: u64) {
        if signal == PRESSURE {
            self.word.fetch_add(PRESSURE, Ordering::AcqRel);
        } else {
            self.word.fetch_or(signal, Ordering::AcqRel);
        }
        for (_, w) in lock(&self.wakers).iter() {
            w.wake_by_ref();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One connection's hold on its listeners' [`Signals`]: woken when they change;
/// unregistered on drop.
struct Listening {
    conns: Arc<Conns>,
    /// The waker registered, and its key.
    registered: Option<(Waker, usize)>,
}

impl Listening {
    fn new(conns: Arc<Conns>) -> Self {
        Self {
            conns,
            registered: None,
        }
    }

    /// The signals now; the task of `cx` is woken when they next change. A task's waker
    /// does not change between polls: after the first, this is an atomic load.
    fn poll(&mut self, cx: &Context<'_>) -> u64 {
        match &mut self.registered {
            Some((w, _)) if w.will_wake(cx.waker()) => {}
            // Registered before the read: a raise after the read wakes this task.
            Some((w, k)) => {
                *w = cx.waker().clone();
                if let Some(slot) = lock(&self.conns.signals.wakers).get_mut(*k) {
                    *slot = w.clone();
                }
            }
            None => {
                let key = lock(&self.conns.signals.wakers).insert(cx.waker().clone());
                self.registered = Some((cx.waker().clone(), key));
            }
        }
        self.conns.signals.word.load(Ordering::Acquire)
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Some((_, k)) = self.registered {
            lock(&self.conns.signals.wakers).try_remove(k);
        }
    }
}

struct OpenConn(Arc<Conns>);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n -= 1);
    }
}

/// The next connection and its slot, or `None` once `stop` turns true (or its sender is
/// gone). A connection accepted at the cap waits for a slot (and the listener accepts no
/// other meanwhile: the rest wait in the kernel's backlog), while idle connections are
/// asked to make room. Accept errors (EMFILE and friends) are logged and retried after a
/// short pause rather than spun on.
pub(crate) async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
    conns: &Conns,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    loop {
        if *stop.borrow_and_update() {
            return None;
        }
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(listen = ?listener.local_addr().ok(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            r = stop.changed() => {
                if r.is_err() {
                    return None;
                }
                continue;
            }
        };
        if let Ok(p) = conns.slots.clone().try_acquire_owned() {
            return Some((stream, peer, p));
        }
        conns.warn_at_cap(listener);
        loop {
            conns.signals.raise(PRESSURE);
            tokio::select! {
                p = conns.slots.clone().acquire_owned() => match p {
                    Ok(p) => return Some((stream, peer, p)),
                    Err(_) => return None,
                },
                // Connections that turned idle meanwhile are asked too.
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        return None;
                    }
                }
            }
        }
    }
}

// --- serving ---

/// Accepts connections on `listener` until `stop` turns true and serves each one.
pub(crate) async fn serve_http(
    listener: TcpListener,
    ctx: Listener,
    state: Arc<ArcSwap<Runtime>>,
    mut stop: watch::Receiver<bool>,
    conns: Arc<Conns>,
) {
    let proto: &'static str = if ctx.tls.is_some() { "https" } else { "http" };
    let local = listener.local_addr().ok();
    while let Some((tcp, peer, permit)) = accept(&listener, &mut stop, &conns).await {
        let accepted = Instant::now();
        let _ = tcp.set_nodelay(true);
        let limits = state.load().limits;
        let conns = conns.clone();
        let state = state.clone();
        let tls = ctx.tls.clone();
        let http01 = ctx.http01.clone();
        let handler = move |req: Request<RequestBody>| {
            if let Some(answer) = http01.as_ref().and_then(|h| acme_challenge(h, &req)) {
                return Either::Left(std::future::ready(answer));
            }
            let rt = state.load_full();
            // Boxed here, once: the future is kilobytes, and each move of it (into the
            // connection's service future, then into that one's box) was a memcpy.
            Either::Right(Box::pin(proxy::handle(rt, req, peer, proto)))
        };
        // One future for each transport: a plain connection's task is not sized for the
        // TLS handshake and stream it never has (about half its memory).
        match tls {
            None => {
                tokio::spawn(async move {
                    let _slot = permit;
                    serve_conn(tcp, false, handler, limits, accepted, &conns, peer).await;
                });
            }
            Some(acc) => {
                tokio::spawn(async move {
                    let _slot = permit;
                    // The handshake is part of the wait for the first request.
                    let deadline = accepted + limits.header_read_timeout;
                    tokio::select! {
                        r = tokio::time::timeout_at(deadline, acc.accept(tcp)) => match r {
                            Ok(Ok(s)) if crate::tls::is_acme_validation(s.get_ref().1) => {
                                tracing::debug!(%peer, "tls-alpn-01 validation handshake");
                            }
                            Ok(Ok(s)) => {
                                let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                                serve_conn(s, h2, handler, limits, accepted, &conns, peer).await
                            }
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        },
                        () = conns.clone().closing() => {}
                    }
                });
            }
        }
    }
    tracing::info!(listen = ?local, "listener closed");
}

/// What one HTTP listener serves besides the routes.
#[derive(Clone, Default)]
pub(crate) struct Listener {
    /// TLS: this listener speaks HTTPS.
    pub(crate) tls: Option<TlsAcceptor>,
    /// ACME's http-01 answers under `/.well-known/acme-challenge/`.
    pub(crate) http01: Option<lb_tls::acme::Http01Responder>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("tls", &self.tls.is_some())
            .field("http01", &self.http01.is_some())
            .finish()
    }
}

/// Where ACME's http-01 challenge is asked (RFC 8555 8.3).
pub(crate) const ACME_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// The answer to an http-01 validation request, or `None` for any other request.
fn acme_challenge(http01: &lb_tls::acme::Http01Responder, req: &Request<RequestBody>) -> Option<Response<Body>> {
    let token = req.uri().path().strip_prefix(ACME_CHALLENGE_PATH)?;
    let (status, text) = match http01.respond(token) {
        Some(key_authorization) => (http::StatusCode::OK, key_authorization),
        None => (
            http::StatusCode::NOT_FOUND,
            "404 Not Found: no such ACME challenge\n".to_string(),
        ),
    };
    tracing::info!(target: "lb_proxy::access", path = %req.uri().path(), status = status.as_u16(), "acme challenge");
    let mut rsp = proxy::plain(status, text);
    if status == http::StatusCode::OK {
        rsp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/octet-stream"),
        );
    }
    Some(rsp)
}

/// What a connection's requests share with its supervisor, which reads it when it wakes
/// (nothing here wakes it).
#[derive(Debug)]
struct Tracker {
    in_flight: AtomicUsize,
    /// Responses that handed a part over and wait for the client side to take it.
    waiting: AtomicUsize,
    /// Parts of responses taken by the client side.
    progress: AtomicU64,
    /// Requests started on this connection.
    requests: AtomicU64,
    /// When the connection last had no request in flight (ns after `epoch`).
    idle_since: AtomicU64,
    epoch: Instant,
}

impl Tracker {
    fn new(epoch: Instant) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            progress: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            epoch,
        })
    }

    fn start(self: &Arc<Self>) -> InFlightRequest {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlightRequest(self.clone())
    }

    fn idle_since(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.idle_since.load(Ordering::Acquire))
    }
}

/// One request in flight on a connection, until its response body is done.
#[derive(Debug)]
struct InFlightRequest(Arc<Tracker>);

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        let t = &self.0;
        let since = Instant::now().saturating_duration_since(t.epoch).as_nanos() as u64;
        t.idle_since.store(since, Ordering::Release);
        t.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body on its way to the client: holds the request's place until it ends,
/// and tells the supervisor when it waits for the client to take the next part.
#[derive(Debug)]
pub(crate) struct ConnBody {
    inner: Body,
    request: Option<InFlightRequest>,
    waiting: bool,
}

impl ConnBody {
    fn new(inner: Body, request: InFlightRequest) -> Self {
        Self {
            inner,
            request: Some(request),
            waiting: false,
        }
    }

    fn stop_waiting(&mut self) {
        if self.waiting {
            self.waiting = false;
            if let Some(r) = &self.request {
                r.0.waiting.fetch_sub(1, Ordering::AcqRel);
                r.0.progress.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for ConnBody {
    fn drop(&mut self) {
        self.stop_waiting();
    }
}

impl http_body::Body for ConnBody {
    type Data = Bytes;
    type Error = lb_core::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        // Polled again: the client side took the last part.
        this.stop_waiting();
        let ready = Pin::new(&mut this.inner).poll_frame(cx);
        match &ready {
            Poll::Ready(Some(Ok(_))) if !this.inner.is_end_stream() => {
                if let Some(r) = &this.request {
                    this.waiting = true;
                    r.0.waiting.fetch_add(1, Ordering::AcqRel);
                }
            }
            Poll::Pending => {}
            _ => {
                this.request = None;
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

/// A connection being served: HTTP/1.1 by lb-core's server, HTTP/2 by hyper's.
enum Conn<A, B> {
    H1(A),
    H2(Pin<Box<B>>),
}

/// Serves one connection with `handler` until it ends, a deadline passes or shutdown
/// closes it; see the module docs. `h2`: ALPN chose HTTP/2; otherwise HTTP/1.1, or
/// HTTP/2 if the client opens with its preface.
///
/// Not an `async fn`: its future is a connection's whole task while the connection is
/// idle, and an `async fn` keeps its arguments beside what it makes of them. This one is
/// built here and owns only what it keeps between wakes.
pub(crate) fn serve_conn<I, F, Fut>(
    io: I,
    h2: bool,
    handler: F,
    limits: Limits,
    accepted: Instant,
    conns: &Arc<Conns>,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send + 'static
where
    I: Transport,
    F: Fn(Request<RequestBody>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let open = conns.opened();
    let tracker = Tracker::new(accepted);
    let handler = Arc::new(handler);
    let h1_svc = {
        let (tracker, handler) = (tracker.clone(), handler.clone());
        hyper::service::service_fn(move |req: Request<RequestBody>| {
            let request = tracker.start();
            let rsp = handler(req);
            async move { Ok::<_, Infallible>(rsp.await.map(|b| ConnBody::new(b, request))) }
        })
    };
    let h2_svc = {
        let tracker = tracker.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let request = tracker.start();
            let rsp = handler(req.map(RequestBody::from));
            async move { Ok::<_, Infallible>(rsp.await.map(|b| ConnBody::new(b, request))) }
        })
    };
    // HTTP/2 by hyper, from the start (ALPN) or taken over from HTTP/1.1 (the preface).
    let max_header_bytes = limits.max_header_bytes;
    let serve_h2 = move |io: Box<dyn Transport>| {
        Box::pin(h2_builder(max_header_bytes).serve_connection(TokioIo::new(io), h2_svc.clone()))
    };
    let mut conn = if h2 {
        Conn::H2(serve_h2(Box::new(io)))
    } else {
        Conn::H1(h1_builder(&limits).serve_connection(io, h1_svc))
    };
    macro_rules! graceful {
        () => {
            match &mut conn {
                Conn::H1(c) => Pin::new(c).graceful_shutdown(),
                Conn::H2(c) => c.as_mut().graceful_shutdown(),
            }
        };
    }
    let mut listening = Listening::new(conns.clone());
    // The signals already handled: a connection opened after a pressure was raised does
    // not answer it, but a drain or close raised before its first poll is seen there.
    let mut seen = conns.signals.word.load(Ordering::Acquire) & !(DRAIN | CLOSE);
    // Set once a deadline asked the connection to close: it is cut when this passes.
    let mut cut_at: Option<Instant> = None;
    // A response found waiting for the client at this progress, since then.
    let mut stall: Option<(u64, Instant)> = None;
    // The longest the supervisor sleeps: short enough that an idle deadline is seen
    // before it is due, and that a stalled client is sampled twice per send_timeout.
    let Limits {
        header_read_timeout,
        send_timeout,
        idle_timeout,
        ..
    } = limits;
    let check_every = (send_timeout / 2)
        .min(idle_timeout / 2)
        .min(header_read_timeout)
        .max(Duration::from_millis(1));
    let mut sleep = Box::pin(tokio::time::sleep_until(accepted + check_every));
    // Whether the sleep was polled since it was last set: until it is due, a wake for
    // the connection need not poll it again.
    let mut armed = false;
    // One hand-written poll rather than a `select!`: a wake costs the connection's poll,
    // one atomic load for the signals, and a look at the timer's state. It owns what it
    // keeps between wakes (borrowing each would add a pointer apiece to every
    // connection's task).
    let supervise = move |cx: &mut Context<'_>| loop {
        let polled = match &mut conn {
            Conn::H1(c) => Pin::new(c).poll(cx),
            Conn::H2(c) => c
                .as_mut()
                .poll(cx)
                .map(|r| r.map(|()| h1::Ended::Closed).map_err(Into::into)),
        };
        match polled {
            Poll::Ready(Ok(h1::Ended::Http2(io))) => {
                // HTTP/2 with prior knowledge: hyper takes the connection over.
                conn = Conn::H2(serve_h2(Box::new(io)));
                if seen & DRAIN != 0 || cut_at.is_some() {
                    graceful!();
                }
                continue;
            }
            Poll::Ready(Ok(h1::Ended::Closed)) => return Poll::Ready(None),
            Poll::Ready(Err(e)) => {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        let word = listening.poll(cx);
        if word != seen {
            if word & CLOSE != 0 {
                return Poll::Ready(Some("shutdown"));
            }
            if word & DRAIN != 0 && seen & DRAIN == 0 {
                graceful!();
            }
            if word / PRESSURE != seen / PRESSURE && tracker.in_flight.load(Ordering::Acquire) == 0 && cut_at.is_none()
            {
                tracing::debug!(%peer, "at max_connections: closing an idle connection");
                graceful!();
                let at = Instant::now() + CLOSE_GRACE;
                cut_at = Some(at);
                sleep.as_mut().reset(at);
                armed = false;
            }
            seen = word;
            // The connection may close now: poll it again.
            continue;
        }
        if armed && !sleep.is_elapsed() {
            return Poll::Pending;
        }
        armed = true;
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let now = Instant::now();
        if cut_at.is_some_and(|c| c <= now) {
            return Poll::Ready(Some("did not close when asked"));
        }
        let next = if tracker.in_flight.load(Ordering::Acquire) == 0 {
            stall = None;
            let (due, timeout, what) = if tracker.requests.load(Ordering::Relaxed) == 0 {
                (
                    accepted + header_read_timeout,
                    header_read_timeout,
                    "no request in time",
                )
            } else {
                (tracker.idle_since() + idle_timeout, idle_timeout, "idle")
            };
            if due <= now && cut_at.is_none() {
                tracing::debug!(%peer, ?timeout, "{what}; closing");
                graceful!();
                cut_at = Some(now + CLOSE_GRACE);
            }
            // Not due yet (a request came and went since this was armed): the real
            // deadline, or the next sample if a request comes meanwhile.
            if due > now {
                due.min(now + check_every)
            } else {
                now + check_every
            }
        } else {
            let waiting = tracker.waiting.load(Ordering::Acquire) > 0;
            let progress = tracker.progress.load(Ordering::Acquire);
            stall = match stall {
                Some((p, since)) if waiting && p == progress => Some((p, since)),
                _ if waiting => Some((progress, now)),
                _ => None,
            };
            if stall.is_some_and(|(_, since)| since + send_timeout <= now) {
                tracing::debug!(%peer, timeout = ?send_timeout, "the client stopped reading its response; closing");
                return Poll::Ready(Some("send timeout"));
            }
            now + check_every
        };
        sleep.as_mut().reset(cut_at.map_or(next, |c| c.min(next)));
        armed = false;
    };
    // Counted open until the connection is dropped, then no longer.
    let mut serving = Some((supervise, open));
    std::future::poll_fn(move |cx| {
        let Some((supervise, _)) = serving.as_mut() else {
            return Poll::Ready(());
        };
        let why = ready!(supervise(cx));
        if let Some(why) = why {
            tracing::debug!(%peer, why, "connection closed");
        }
        // A tuple drops in order: the connection first (it is in `supervise`), then its
        // place in the count.
        serving = None;
        Poll::Ready(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drain or close raised before a connection's task first runs (accepted just
    /// before a shutdown) reaches it there, not after its first deadline.
    #[tokio::test(start_paused = true)]
    async fn a_connection_first_served_after_drain_or_close_ends_at_once() {
        use tokio::io::AsyncReadExt;
        for what in ["drain", "close"] {
            let conns = Conns::new(4);
            match what {
                "drain" => conns.drain(),
                _ => conns.close(),
            }
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
                .await
                .expect("connect");
            let (server, peer) = listener.accept().await.expect("accept");
            let handler = |_req: Request<RequestBody>| async { Response::new(lb_core::http::empty()) };
            let limits = Limits {
                header_read_timeout: Duration::from_secs(3),
                ..Limits::default()
            };
            let started = Instant::now();
            let served = tokio::spawn(serve_conn(server, false, handler, limits, started, &conns, peer));
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(60), client.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{what}: the connection stayed open"));
            assert!(matches!(read, Ok(0) | Err(_)), "{what}: the client was sent {read:?}");
            assert!(
                started.elapsed() < limits.header_read_timeout,
                "{what}: closed only after {:?}",
                started.elapsed()
            );
            served.await.expect("served");
            assert_eq!(conns.in_use(), 0, "{what}: still counted open");
        }
    }

    #[test]
    fn default_max_connections_leaves_room() {
        assert_eq!(default_max_connections(Some(1024)), 448);
        assert_eq!(default_max_connections(Some(100)), 16, "never below 16");
        assert_eq!(default_max_connections(Some(u64::MAX)), 1 << 20);
        assert_eq!(default_max_connections(None), 10_000);
    }
}
