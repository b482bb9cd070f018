//! The connector, the per-endpoint connection pool and the per-endpoint service.
//!
//! Each endpoint has its own pool ([`Pool`]): a small stack of idle HTTP/1.1 connections,
//! or one shared HTTP/2 connection when [`ClientConfig::http2_only`] is set or when a TLS
//! server chose `h2` by ALPN. No pool key is hashed on the request path and no lock is
//! held beyond a push or a pop.
//!
//! HTTP/1.1 is spoken by the request's own future and its response body (the `h1`
//! module): no task per connection, no channel per request, and an idle pooled
//! connection holds no buffer. HTTP/2 is hyper's `client::conn::http2`, whose connection
//! runs as a task of its own (it multiplexes).
//!
//! The request body is written while the response head is awaited and, after it, while
//! the response body is read: an endpoint that answers before it has the whole request
//! body gets the rest only as fast as its answer is read (hyper's connection task wrote
//! on regardless).
//!
//! An idle connection the endpoint closes is closed within a second (a sweep per pool),
//! and one found closed when taken out is passed over.
//!
//! An HTTP/1.1 connection goes back to its pool when the response body ends (its last
//! frame, or a body that is empty or already read with the head); a body that fails or
//! is dropped before its end takes the connection with it, as does a `101 Switching
//! Protocols` answer or a `Connection: close`. A pooled connection found closed before
//! any of the answer came (the endpoint dropped it as the request went out) sends the
//! request again, once, on a new connection, when that cannot act twice: an idempotent
//! method, or a write that failed before any byte left.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tower_service::Service;

use super::h1::{Exchange, Failure, Head, Io, Replay};
use super::Body;
use crate::endpoint::Endpoint;

/// Settings of the per-endpoint connection pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// A connection attempt that takes longer fails (and may be retried elsewhere).
    /// Default 2 s.
    pub connect_timeout: Duration,
    /// Idle pooled connections older than this are closed instead of reused. Default 60 s.
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

/// Makes an [`EndpointService`] per endpoint, each with its own keep-alive pool.
///
/// Services made for the same address while an earlier one is still alive share its
/// pool.
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
    config: ClientConfig,
    pools: Arc<Mutex<Pools>>,
    #[cfg(feature = "tls")]
    tls: Option<super::tls::TlsClient>,
}

/// A pool's key: the endpoint's address and, over TLS, its server name.
type PoolKey = (SocketAddr, Option<Box<str>>);

/// The live pools by key, for services made again for the same endpoint.
#[derive(Default)]
struct Pools {
    by_addr: HashMap<PoolKey, Weak<Pool>>,
    /// Dead entries are swept when the map reaches this size (twice the live ones at
    /// the last sweep), so making services stays linear in their number.
    sweep_at: usize,
}

impl fmt::Debug for HttpConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HttpConnect");
        d.field("config", &self.config);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls);
        d.finish_non_exhaustive()
    }
}

impl HttpConnect {
    /// A connector whose services keep their connections alive as `config` says.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            pools: Arc::default(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Connects to endpoints over TLS (feature `tls`): each connection verifies the
    /// endpoint's certificate for the server name [`TlsConnect`](super::TlsConnect)
    /// chooses for that endpoint, and speaks HTTP/2 when the server picks `h2` by ALPN,
    /// HTTP/1.1 otherwise. [`ClientConfig::connect_timeout`] covers the TCP connect and
    /// the TLS handshake; a failed handshake (an untrusted certificate, a wrong name) is a
    /// connect error ([`ClientError::is_connect`]) with rustls' error in its chain.
    ///
    /// Pools are per address and server name. The returned connector shares no pool with
    /// `self`'s clones.
    ///
    /// # Examples
    ///
    /// ```
    /// use lb_core::http::{ClientConfig, HttpConnect, TlsConnect};
    ///
    /// # fn main() -> Result<(), lb_core::http::TlsError> {
    /// let roots = rustls::RootCertStore::empty(); // your CA's certificates
    /// let connect = HttpConnect::new(ClientConfig::default())
    ///     .with_tls(TlsConnect::with_roots(roots).server_name("api.internal")?);
    /// # let _ = connect; Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    pub fn with_tls(self, tls: super::TlsConnect) -> Self {
        Self {
            config: self.config,
            pools: Arc::default(),
            tls: Some(tls.into_client(self.config.http2_only)),
        }
    }

    /// The service for one endpoint (what [`Service::call`] returns).
    pub fn for_endpoint(&self, endpoint: &Endpoint) -> EndpointService {
        let addr = endpoint.addr();
        #[cfg(feature = "tls")]
        let tls = self.tls.as_ref().map(|t| t.for_endpoint(endpoint));
        #[cfg(feature = "tls")]
        let key: PoolKey = (addr, tls.as_ref().map(|t| t.name().into()));
        #[cfg(not(feature = "tls"))]
        let key: PoolKey = (addr, None);
        let mut pools = lock(&self.pools);
        if let Some(pool) = pools.by_addr.get(&key).and_then(Weak::upgrade) {
            return EndpointService { pool };
        }
        let pool = Pool::new(addr, self.config);
        #[cfg(feature = "tls")]
        let pool = pool.with_tls(tls);
        let pool = Arc::new(pool);
        // Outside a runtime (a service made before one starts) idle connections are
        // checked when taken out instead.
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep_idle(Arc::downgrade(&pool)));
        }
        if pools.by_addr.len() >= pools.sweep_at {
            pools.by_addr.retain(|_, p| p.strong_count() > 0);
            pools.sweep_at = (2 * pools.by_addr.len()).max(16);
        }
        pools.by_addr.insert(key, Arc::downgrade(&pool));
        EndpointService { pool }
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

/// Sends requests to one endpoint over its pool of keep-alive connections; clones share
/// the pool.
///
/// The request keeps the authority it names; the endpoint's address stands in only when
/// it names none:
///
/// - HTTP/1.1 requests are sent in origin form (path and query; a `CONNECT` keeps its
///   authority form). A `Host` header is kept as it is; a request without one gets the
///   authority of its URI (`https://api.internal/x` is sent as `/x` with
///   `Host: api.internal`), or the endpoint's address when the URI has none.
/// - HTTP/2 requests get an absolute URI whose authority (`:authority`) is the URI's
///   own, else the `Host` header's, else the endpoint's address; the scheme is `https`
///   over TLS, `http` otherwise.
///
/// User information (`user@`) in a URI's authority is not sent. Other headers are left
/// as they are.
#[derive(Clone)]
pub struct EndpointService {
    pool: Arc<Pool>,
}

impl fmt::Debug for EndpointService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("EndpointService");
        d.field("addr", &self.pool.addr);
        #[cfg(feature = "tls")]
        d.field("server_name", &self.pool.tls.as_ref().map(|t| t.name()));
        d.finish()
    }
}

impl Service<Request<Body>> for EndpointService {
    type Response = Response<ResponseBody>;
    type Error = ClientError;
    type Future = ResponseFuture;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let pool = &self.pool;
        let state = match pool.checkout_h2() {
            Some(tx) => State::send_h2(pool, tx, req, true),
            None if pool.config.http2_only => State::connect(pool, Pending::Request(req)),
            None => match pool.checkout_h1() {
                Some(io) => State::send_h1(pool, io, req, true),
                None => State::connect(pool, Pending::Request(req)),
            },
        };
        ResponseFuture {
            pool: self.pool.clone(),
            state,
        }
    }
}

/// One endpoint's connections.
struct Pool {
    addr: SocketAddr,
    /// `Host` for HTTP/1.1 requests that name no authority.
    host: HeaderValue,
    /// The authority of HTTP/2 requests that name none.
    authority: Authority,
    /// The scheme of HTTP/2 requests.
    scheme: Scheme,
    config: ClientConfig,
    /// Idle HTTP/1.1 connections, the most recently used on top.
    idle: Mutex<Vec<Idle>>,
    /// The shared HTTP/2 connection.
    h2: Mutex<Option<http2::SendRequest<Body>>>,
    /// Whether an HTTP/2 connection was ever made: until then, requests need not look
    /// for one (over TLS, the server's ALPN choice tells).
    speaks_h2: AtomicBool,
    #[cfg(feature = "tls")]
    tls: Option<super::tls::EndpointTls>,
}

struct Idle {
    io: Io,
    since: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    fn new(addr: SocketAddr, config: ClientConfig) -> Self {
        let text = addr.to_string();
        Self {
            addr,
            host: HeaderValue::from_str(&text).expect("a socket address is a header value"),
            authority: Authority::try_from(text).expect("a socket address is an authority"),
            scheme: Scheme::HTTP,
            config,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            speaks_h2: AtomicBool::new(false),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    #[cfg(feature = "tls")]
    fn with_tls(mut self, tls: Option<super::tls::EndpointTls>) -> Self {
        if tls.is_some() {
            self.scheme = Scheme::HTTPS;
        }
        self.tls = tls;
        self
    }

    /// Origin form, and a `Host` header: the request's own, else its URI's authority,
    /// else the endpoint's address. Idempotent (a request is prepared again when it
    /// goes to a new connection).
    fn prepare_h1(&self, req: &mut Request<Body>) {
        if !req.headers().contains_key(HOST) {
            let host = req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(without_userinfo(a.as_str())).ok())
                .unwrap_or_else(|| self.host.clone());
            req.headers_mut().insert(HOST, host);
        }
        let uri = req.uri();
        if (uri.scheme().is_some() || uri.authority().is_some()) && req.method() != Method::CONNECT {
            let pq = uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(pq);
            *req.uri_mut() = Uri::from_parts(parts).expect("a path is a URI");
        }
        if req.version() == Version::HTTP_2 {
            *req.version_mut() = Version::HTTP_11;
        }
    }

    /// An absolute URI whose authority is the URI's own, else the `Host` header's, else
    /// the endpoint's address. Idempotent.
    fn prepare_h2(&self, req: &mut Request<Body>) {
        let authority = match req.uri().authority() {
            Some(a) if a.as_str().contains('@') => Authority::try_from(without_userinfo(a.as_str())).ok(),
            Some(a) => Some(a.clone()),
            None => req
                .headers()
                .get(HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .filter(|a| !a.as_str().contains('@')),
        }
        .unwrap_or_else(|| self.authority.clone());
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path make a URI");
        *req.version_mut() = Version::HTTP_2;
    }

    /// Pops the most recently used idle connection that is still open and not expired.
    fn checkout_h1(&self) -> Option<Io> {
        loop {
            let mut idle = lock(&self.idle).pop()?;
            if idle.since.elapsed() > self.config.pool_idle_timeout {
                // Everything below is older still.
                let stale = std::mem::take(&mut *lock(&self.idle));
                drop((idle, stale));
                return None;
            }
            if idle.io.is_reusable() {
                return Some(idle.io);
            }
        }
    }

    /// Keeps a connection whose exchange is over for the next request.
    fn checkin_h1(&self, io: Io) {
        if self.config.pool_max_idle_per_host == 0 {
            return;
        }
        let now = Instant::now();
        let timeout = self.config.pool_idle_timeout;
        let mut idle = lock(&self.idle);
        // The oldest are at the bottom; drop those that expired (if the oldest did).
        let expired = |i: &Idle| now.saturating_duration_since(i.since) > timeout;
        if idle.first().is_some_and(expired) {
            let n = idle.partition_point(expired);
            idle.drain(..n);
        }
        if idle.len() < self.config.pool_max_idle_per_host {
            idle.push(Idle { io, since: now });
        }
    }

    /// Closes the idle connections that expired or that the endpoint closed (nothing else
    /// reads an idle connection, so its end would otherwise wait for the next checkout).
    fn sweep_h1(&self) {
        let now = Instant::now();
        let timeout = self.config.pool_idle_timeout;
        lock(&self.idle).retain_mut(|i| now.saturating_duration_since(i.since) <= timeout && i.io.is_reusable());
    }

    fn checkout_h2(&self) -> Option<http2::SendRequest<Body>> {
        if !self.speaks_h2.load(Ordering::Relaxed) {
            return None;
        }
        match &*lock(&self.h2) {
            Some(tx) if !tx.is_closed() => Some(tx.clone()),
            _ => None,
        }
    }

    /// Keeps a new HTTP/2 connection for the next requests unless a live one is there.
    fn store_h2(&self, tx: &http2::SendRequest<Body>) {
        let mut h2 = lock(&self.h2);
        if h2.as_ref().map_or(true, |t| t.is_closed()) {
            *h2 = Some(tx.clone());
            self.speaks_h2.store(true, Ordering::Relaxed);
        }
    }

    async fn connect(self: Arc<Self>) -> Result<Conn, ClientError> {
        let addr = self.addr;
        let opened = match tokio::time::timeout(self.config.connect_timeout, self.open()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ClientError::new(Kind::Connect, addr, e)),
            Err(_) => {
                #[cfg(feature = "tls")]
                let what = if self.tls.is_some() {
                    "connect and TLS handshake timed out"
                } else {
                    "connect timed out"
                };
                #[cfg(not(feature = "tls"))]
                let what = "connect timed out";
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, what);
                return Err(ClientError::new(Kind::Connect, addr, e));
            }
        };
        match opened {
            Opened::Tcp(stream) if self.config.http2_only => self.handshake_h2(TokioIo::new(stream)).await,
            Opened::Tcp(stream) => Ok(Conn::H1(Io::Tcp(stream))),
            #[cfg(feature = "tls")]
            Opened::Tls(stream, true) => self.handshake_h2(TokioIo::new(stream)).await,
            #[cfg(feature = "tls")]
            Opened::Tls(stream, false) => Ok(Conn::H1(Io::Tls(stream))),
        }
    }

    /// The TCP connection and, over TLS, the TLS handshake: what the connect timeout covers.
    async fn open(&self) -> Result<Opened, crate::BoxError> {
        let stream = TcpStream::connect(self.addr).await?;
        // Small requests and responses go out at once (Nagle would hold them back).
        let _ = stream.set_nodelay(true);
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            let (stream, h2) = tls.handshake(stream, self.config.http2_only).await?;
            return Ok(Opened::Tls(Box::new(stream), h2));
        }
        Ok(Opened::Tcp(stream))
    }

    /// The HTTP/2 handshake on a new connection, whose task it spawns.
    async fn handshake_h2<T>(&self, io: T) -> Result<Conn, ClientError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let addr = self.addr;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|e| ClientError::new(Kind::Connect, addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "endpoint connection (h2) ended with an error");
            }
        });
        self.store_h2(&tx);
        Ok(Conn::H2(tx))
    }
}

/// How often a pool's idle connections are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Sweeps a pool's idle connections while the pool lives.
async fn sweep_idle(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep_h1(),
            None => return,
        }
    }
}

/// A new transport, before the HTTP handshake.
enum Opened {
    Tcp(TcpStream),
    /// Over TLS, and whether it speaks HTTP/2.
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>, bool),
}

/// A URI authority without its user information (`user:password@`).
fn without_userinfo(authority: &str) -> &str {
    authority.rsplit_once('@').map_or(authority, |(_, host)| host)
}

/// A new connection.
enum Conn {
    H1(Io),
    H2(http2::SendRequest<Body>),
}

type SendFuture = Pin<Box<dyn Future<Output = Result<Response<Incoming>, TrySendError<Request<Body>>>> + Send>>;
type ConnectFuture = Pin<Box<dyn Future<Output = Result<Conn, ClientError>> + Send>>;

/// The future of [`EndpointService::call`].
///
/// Over HTTP/1.1 it writes the request and reads the response head itself, on the
/// caller's task: the exchange and its two buffers are allocated per request (the
/// response body takes the exchange over); a new connection costs one more.
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture {
    pool: Arc<Pool>,
    state: State,
}

/// What a new connection is for.
enum Pending {
    Request(Request<Body>),
    /// A request a stale pooled connection took.
    Replay(Replay),
}

enum State {
    Connecting {
        connect: ConnectFuture,
        /// Boxed: the request is large, and connecting is the slow path.
        pending: Box<Pending>,
    },
    /// An HTTP/1.1 exchange, until its response head.
    H1(Box<Exchange>),
    H2 {
        send: SendFuture,
        reused: bool,
    },
    Done,
}

impl State {
    fn connect(pool: &Arc<Pool>, pending: Pending) -> State {
        State::Connecting {
            connect: Box::pin(pool.clone().connect()),
            pending: Box::new(pending),
        }
    }

    fn send_h1(pool: &Pool, io: Io, mut req: Request<Body>, reused: bool) -> State {
        pool.prepare_h1(&mut req);
        State::H1(Exchange::start(io, req, reused))
    }

    fn send_h2(pool: &Pool, mut tx: http2::SendRequest<Body>, mut req: Request<Body>, reused: bool) -> State {
        pool.prepare_h2(&mut req);
        State::H2 {
            send: Box::pin(tx.try_send_request(req)),
            reused,
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Connecting { .. } => "connecting",
            State::H1(_) | State::H2 { .. } => "sending",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("addr", &self.pool.addr)
            .field("state", &state)
            .finish()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody>, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let addr = this.pool.addr;
        loop {
            match &mut this.state {
                State::H1(exchange) => {
                    let res = ready!(exchange.poll_head(cx));
                    let State::H1(exchange) = std::mem::replace(&mut this.state, State::Done) else {
                        unreachable!()
                    };
                    match res {
                        Ok(head) => return Poll::Ready(this.pool.answer_h1(exchange, head)),
                        // The pooled connection was closed under the request: once
                        // more, on a new connection.
                        Err(Failure::Stale(replay)) => {
                            tracing::debug!(%addr, "pooled connection closed, sending again");
                            this.state = State::connect(&this.pool, Pending::Replay(replay));
                        }
                        Err(Failure::NotSent(e)) => return Poll::Ready(Err(ClientError::new(Kind::Connect, addr, e))),
                        Err(Failure::Broken(e)) => return Poll::Ready(Err(ClientError::new(Kind::Send, addr, e))),
                    }
                }
                State::H2 { send, .. } => {
                    let res = ready!(send.as_mut().poll(cx));
                    let State::H2 { reused, .. } = std::mem::replace(&mut this.state, State::Done) else {
                        unreachable!()
                    };
                    match res {
                        Ok(rsp) => {
                            return Poll::Ready(Ok(rsp.map(|b| ResponseBody {
                                inner: Inner::H2(b, addr),
                            })))
                        }
                        Err(mut e) => match e.take_message() {
                            // The shared connection closed before it sent the request:
                            // once more, on a new connection.
                            Some(req) if reused => {
                                tracing::debug!(%addr, error = %e.error(), "pooled connection closed, sending again");
                                this.state = State::connect(&this.pool, Pending::Request(req));
                            }
                            Some(_) => return Poll::Ready(Err(ClientError::new(Kind::Connect, addr, e.into_error()))),
                            None => return Poll::Ready(Err(ClientError::new(Kind::Send, addr, e.into_error()))),
                        },
                    }
                }
                State::Connecting { connect, .. } => {
                    let res = ready!(connect.as_mut().poll(cx));
                    let State::Connecting { pending, .. } = std::mem::replace(&mut this.state, State::Done) else {
                        unreachable!()
                    };
                    this.state = match (res?, *pending) {
                        (Conn::H1(io), Pending::Request(req)) => State::send_h1(&this.pool, io, req, false),
                        (Conn::H1(io), Pending::Replay(replay)) => State::H1(Exchange::replay(io, replay)),
                        (Conn::H2(tx), Pending::Request(req)) => State::send_h2(&this.pool, tx, req, false),
                        (Conn::H2(_), Pending::Replay(_)) => {
                            let e = "the endpoint closed the connection before answering, and now speaks HTTP/2";
                            return Poll::Ready(Err(ClientError::new(Kind::Send, addr, e)));
                        }
                    };
                }
                State::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

impl Pool {
    /// The response to an HTTP/1.1 exchange. A body already read with the head (or none
    /// at all) ends the exchange now and the connection goes back to the pool; otherwise
    /// the body reads the rest from the connection.
    fn answer_h1(
        self: &Arc<Self>,
        mut exchange: Box<Exchange>,
        mut head: Head,
    ) -> Result<Response<ResponseBody>, ClientError> {
        exchange
            .expect_body(&mut head)
            .map_err(|e| ClientError::new(Kind::Send, self.addr, e))?;
        exchange.drop_replay();
        let mut rsp = Response::new(ResponseBody { inner: Inner::Empty });
        *rsp.status_mut() = head.status;
        *rsp.version_mut() = head.version;
        *rsp.headers_mut() = head.headers;
        if rsp.status() == StatusCode::SWITCHING_PROTOCOLS || exchange.is_tunnel(rsp.status()) {
            if !exchange.is_sent() {
                let e = "the endpoint switched protocols before the request was written";
                return Err(ClientError::new(Kind::Send, self.addr, e));
            }
            rsp.extensions_mut()
                .insert(super::upgrade::TakeOnce::new((*exchange).into_upgraded()));
            return Ok(rsp);
        }
        let whole = exchange.take_whole_body();
        if exchange.is_done() {
            if let Some(io) = (*exchange).into_reusable() {
                self.checkin_h1(io);
            }
            rsp.body_mut().inner = Inner::Full(whole);
        } else {
            rsp.body_mut().inner = Inner::H1(exchange, self.clone());
        }
        Ok(rsp)
    }
}

/// The body of a response from an [`EndpointService`]. Over HTTP/1.1 it reads the
/// endpoint's connection itself and returns the connection to the pool when it ends.
pub struct ResponseBody {
    inner: Inner,
}

enum Inner {
    Empty,
    /// Read with the head (taken by the first poll).
    Full(Option<Bytes>),
    H1(Box<Exchange>, Arc<Pool>),
    H2(Incoming, SocketAddr),
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner {
            Inner::Empty | Inner::Full(None) => "ended",
            Inner::Full(Some(_)) => "read",
            Inner::H1(..) => "http/1.1",
            Inner::H2(..) => "h2",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = ClientError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, ClientError>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(http_body::Frame::data(b)))),
            Inner::H2(body, addr) => {
                let addr = *addr;
                Pin::new(body)
                    .poll_frame(cx)
                    .map_err(|e| ClientError::new(Kind::Body, addr, e))
            }
            Inner::H1(exchange, pool) => {
                let res = ready!(exchange.poll_body(cx));
                let addr = pool.addr;
                if exchange.is_done() || matches!(res, Some(Err(_))) {
                    // Over: the connection goes back to the pool (or is dropped), now,
                    // since a body of known length is not polled after its last frame.
                    let Inner::H1(exchange, pool) = std::mem::replace(&mut this.inner, Inner::Empty) else {
                        unreachable!()
                    };
                    if let Some(io) = (*exchange).into_reusable() {
                        pool.checkin_h1(io);
                    }
                }
                Poll::Ready(res.map(|r| r.map_err(|e| ClientError::new(Kind::Body, addr, e))))
            }
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty | Inner::Full(None) => true,
            Inner::Full(Some(_)) => false,
            Inner::H1(exchange, _) => exchange.is_done(),
            Inner::H2(body, _) => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> http_body::SizeHint {
        match &self.inner {
            Inner::Empty | Inner::Full(None) => http_body::SizeHint::with_exact(0),
            Inner::Full(Some(b)) => http_body::SizeHint::with_exact(b.len() as u64),
            Inner::H1(exchange, _) => exchange
                .remaining()
                .map_or_else(http_body::SizeHint::default, http_body::SizeHint::with_exact),
            Inner::H2(body, _) => body.size_hint(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Connect,
    Send,
    Body,
}

/// Why an [`EndpointService`] got no response: it could not connect (see
/// [`is_connect`](Self::is_connect)), or the exchange failed; or why a
/// [`ResponseBody`] broke off.
pub struct ClientError {
    kind: Kind,
    addr: SocketAddr,
    source: crate::BoxError,
}

impl ClientError {
    fn new(kind: Kind, addr: SocketAddr, source: impl Into<crate::BoxError>) -> Self {
        Self {
            kind,
            addr,
            source: source.into(),
        }
    }

    /// The request never reached the endpoint: the connection could not be made (or
    /// closed before the request was written). Safe to retry elsewhere whatever the method.
    pub fn is_connect(&self) -> bool {
        self.kind == Kind::Connect
    }
}

impl fmt::Debug for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientError")
            .field("kind", &self.kind)
            .field("addr", &self.addr)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Connect => write!(f, "could not connect to {}", self.addr),
            Kind::Send => write!(f, "request to {} failed", self.addr),
            Kind::Body => write!(f, "the response from {} broke off", self.addr),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Whether an error (as a balancer returns it) means the request never reached the
/// endpoint: the connection could not be made. Such a request is safe to retry on
/// another endpoint whatever its method.
pub fn is_connect_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<ClientError>().is_some_and(ClientError::is_connect) {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::HeaderMap;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::http::{empty, full};

    /// What a scripted endpoint does after reading one request.
    #[derive(Clone, Copy)]
    enum Answer {
        /// Writes these bytes, in one write.
        Send(&'static [u8]),
        /// Writes these bytes one at a time.
        Trickle(&'static [u8]),
        /// Closes the connection without answering.
        Close,
        /// Answers once the request head is read, then reads and discards the rest until
        /// the client closes (a lingering close).
        Early(&'static [u8]),
    }

    /// A raw HTTP/1.1 endpoint on loopback. Connection `i` answers its requests with
    /// `script[i]` in turn, then closes. Returns its address, the number of connections
    /// accepted and the requests read (head and body, as received).
    async fn endpoint(script: Vec<Vec<Answer>>) -> (SocketAddr, Arc<AtomicUsize>, Arc<Mutex<Vec<Vec<u8>>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (accepted.clone(), requests.clone());
        tokio::spawn(async move {
            for answers in script {
                let (mut io, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for answer in answers {
                        if let Answer::Early(bytes) = answer {
                            let find = |b: &[u8]| b.windows(4).position(|w| w == b"\r\n\r\n");
                            while find(&buf).is_none() {
                                let mut chunk = [0u8; 4096];
                                match io.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            }
                            lock(&seen).push(buf.clone());
                            io.write_all(bytes).await.unwrap();
                            let mut sink = [0u8; 4096];
                            while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
                            return;
                        }
                        let Some(req) = read_request(&mut io, &mut buf).await else {
                            return;
                        };
                        lock(&seen).push(req);
                        match answer {
                            Answer::Send(bytes) => io.write_all(bytes).await.unwrap(),
                            Answer::Trickle(bytes) => {
                                for b in bytes {
                                    io.write_all(std::slice::from_ref(b)).await.unwrap();
                                    io.flush().await.unwrap();
                                }
                            }
                            Answer::Close => return,
                            Answer::Early(_) => unreachable!(),
                        }
                    }
                });
            }
        });
        (addr, accepted, requests)
    }

    /// One request (head, then a body by `content-length` or chunked), or `None` at the
    /// end of the stream.
    async fn read_request(io: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
        let find = |buf: &[u8], pat: &[u8]| buf.windows(pat.len()).position(|w| w == pat);
        loop {
            if let Some(end) = find(buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map(|n| n.trim().parse::<usize>().unwrap());
                let chunked = head.contains("transfer-encoding: chunked");
                let total = match (len, chunked) {
                    (Some(n), _) => Some(end + 4 + n),
                    // The last chunk, then its trailer fields up to an empty line.
                    (None, true) => find(&buf[end + 2..], b"\r\n0\r\n")
                        .and_then(|i| find(&buf[end + 2 + i + 3..], b"\r\n\r\n").map(|j| end + 2 + i + 3 + j + 4)),
                    (None, false) => Some(end + 4),
                };
                if let Some(total) = total.filter(|&t| t <= buf.len()) {
                    return Some(buf.drain(..total).collect());
                }
            }
            let mut chunk = [0u8; 4096];
            let n = io.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn service(addr: SocketAddr) -> EndpointService {
        HttpConnect::new(ClientConfig::default()).for_endpoint(&Endpoint::new(addr))
    }

    async fn text(rsp: Response<ResponseBody>) -> String {
        String::from_utf8(rsp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(empty()).unwrap()
    }

    const OK: Answer = Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");

    #[tokio::test]
    async fn connections_are_reused_and_requests_framed() {
        let (addr, accepted, requests) = endpoint(vec![vec![OK, OK, OK]]).await;
        let mut svc = service(addr);
        assert_eq!(text(svc.call(get("/a?x=1")).await.unwrap()).await, "ok");
        let post = Request::post("http://api.internal/b").body(full("hello")).unwrap();
        assert_eq!(text(svc.call(post).await.unwrap()).await, "ok");
        let empty_post = Request::post("/c").body(empty()).unwrap();
        assert_eq!(text(svc.call(empty_post).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let requests: Vec<String> = lock(&requests)
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect();
        assert_eq!(requests[0], format!("GET /a?x=1 HTTP/1.1\r\nhost: {addr}\r\n\r\n"));
        assert_eq!(
            requests[1],
            "POST /b HTTP/1.1\r\nhost: api.internal\r\ncontent-length: 5\r\n\r\nhello"
        );
        assert!(requests[2].ends_with("content-length: 0\r\n\r\n"), "{}", requests[2]);
    }

    #[tokio::test]
    async fn a_streamed_request_body_goes_chunked_with_its_trailers() {
        let (addr, _, requests) = endpoint(vec![vec![OK]]).await;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, crate::BoxError>>(4);
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let req = Request::put("/up").body(super::super::boxed(body)).unwrap();
        let rsp = tokio::spawn(service(addr).call(req));
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"hello, "))))
            .await
            .unwrap();
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"world"))))
            .await
            .unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("12"));
        tx.send(Ok(http_body::Frame::trailers(trailers))).await.unwrap();
        drop(tx);
        assert_eq!(text(rsp.await.unwrap().unwrap()).await, "ok");
        let req = String::from_utf8(lock(&requests)[0].clone()).unwrap();
        assert!(req.contains("transfer-encoding: chunked\r\n"), "{req}");
        assert!(
            req.ends_with("\r\n\r\n7\r\nhello, \r\n5\r\nworld\r\n0\r\nx-sum: 12\r\n\r\n"),
            "{req}"
        );
    }

    #[tokio::test]
    async fn a_request_body_longer_than_its_length_fails_the_exchange() {
        let (addr, _, _) = endpoint(vec![vec![OK]]).await;
        let body = http_body_util::StreamBody::new(futures_util::stream::iter([Ok::<_, crate::BoxError>(
            http_body::Frame::data(Bytes::from_static(b"toolong")),
        )]));
        let mut req = Request::post("/").body(super::super::boxed(body)).unwrap();
        req.headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        let err = service(addr).call(req).await.unwrap_err();
        assert!(!err.is_connect());
        assert!(
            format!("{:?}", err.source).contains("longer than its length"),
            "{err:?}"
        );
    }

    /// A chunked answer written a byte at a time, with an extension and trailers: the
    /// body and trailers come through whole and the connection serves the next request.
    #[tokio::test]
    async fn a_chunked_answer_is_decoded_across_any_split() {
        const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n1 \r\n,\r\n6\r\n world\r\n0\r\nx-check: yes\r\n\r\n";
        let (addr, accepted, _) = endpoint(vec![vec![Answer::Trickle(CHUNKED), OK]]).await;
        let mut svc = service(addr);
        let rsp = svc.call(get("/")).await.unwrap();
        let collected = rsp.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-check"], "yes");
        assert_eq!(collected.to_bytes(), "hello, world");
        assert_eq!(text(svc.call(get("/")).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// RFC 9112 6.3: what delimits a response body, and whether the connection is kept.
    #[tokio::test]
    async fn response_framing() {
        let (addr, accepted, _) = endpoint(vec![
            vec![
                // 1xx answers are passed over.
                Answer::Send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
                // HEAD: no body whatever the length says.
                Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
                Answer::Send(b"HTTP/1.1 204 No Content\r\n\r\n"),
                Answer::Send(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n"),
                // Neither length nor chunked: until the connection closes.
                Answer::Send(b"HTTP/1.1 200 OK\r\n\r\nto the end"),
            ],
            vec![
                // Both: chunked wins and the connection is not kept.
                Answer::Send(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                ),
                OK,
            ],
            vec![
                Answer::Send(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"),
                OK,
            ],
            vec![Answer::Send(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"), OK],
            vec![Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nok")],
            vec![OK],
        ])
        .await;
        let mut svc = service(addr);
        assert_eq!(text(svc.call(get("/")).await.unwrap()).await, "ok");
        let head = Request::head("/").body(empty()).unwrap();
        assert_eq!(text(svc.call(head).await.unwrap()).await, "");
        let rsp = svc.call(get("/")).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::NO_CONTENT);
        assert_eq!(text(rsp).await, "");
        assert_eq!(text(svc.call(get("/")).await.unwrap()).await, "");
        assert_eq!(text(svc.call(get("/")).await.unwrap()).await, "to the end");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(text(svc.call(get("/")).await.unwrap()).await, "ok");
        assert_eq!(text(svc.call(get("/")).await.unwrap()).await, "ok");
        assert_eq!(text(svc.call(get("/")).await.unwrap()).await, "ok");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            4,
            "close, HTTP/1.0 and TE with CL end a connection"
        );
        let err = svc.call(get("/")).await.unwrap_err();
        assert!(
            format!("{:?}", err.source).contains("invalid Content-Length"),
            "{err:?}"
        );
        assert_eq!(text(svc.call(get("/")).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 6);
    }

    /// A body cut short by the endpoint is an error of the body, and the connection is
    /// not reused.
    #[tokio::test]
    async fn a_body_cut_short_is_an_error() {
        let (addr, accepted, _) = endpoint(vec![
            vec![Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort")],
            vec![OK],
        ])
        .await;
        let mut svc = service(addr);
        let rsp = svc.call(get("/")).await.unwrap();
        let err = rsp.into_body().collect().await.unwrap_err();
        assert_eq!(err.kind, Kind::Body);
        assert_eq!(text(svc.call(get("/")).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// The race with an endpoint closing an idle connection: a GET that a pooled
    /// connection took and never answered is sent again on a new connection.
    #[tokio::test]
    async fn a_get_a_pooled_connection_dropped_is_sent_again() {
        let (addr, accepted, requests) = endpoint(vec![vec![OK, Answer::Close], vec![OK]]).await;
        let mut svc = service(addr);
        assert_eq!(text(svc.call(get("/1")).await.unwrap()).await, "ok");
        assert_eq!(text(svc.call(get("/2")).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        let requests = lock(&requests);
        assert_eq!(requests.len(), 3);
        assert_eq!(requests[1], requests[2], "the same bytes went again");
    }

    /// The same race with a POST: it may have been acted on, so it is not sent twice.
    #[tokio::test]
    async fn a_post_a_pooled_connection_dropped_is_not_sent_again() {
        let (addr, accepted, requests) = endpoint(vec![vec![OK, Answer::Close], vec![OK]]).await;
        let mut svc = service(addr);
        assert_eq!(text(svc.call(get("/1")).await.unwrap()).await, "ok");
        let err = svc
            .call(Request::post("/2").body(full("x")).unwrap())
            .await
            .unwrap_err();
        assert!(!err.is_connect());
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(lock(&requests).len(), 2);
    }

    /// A connection the endpoint closed while idle is found closed at checkout once its
    /// end has arrived, and the request goes on a new one.
    #[tokio::test]
    async fn a_connection_closed_while_idle_is_not_used() {
        let (addr, accepted, _) = endpoint(vec![vec![OK], vec![OK]]).await;
        let mut svc = service(addr);
        assert_eq!(text(svc.call(get("/")).await.unwrap()).await, "ok");
        // The endpoint's side ended after its one answer; wait for the pooled
        // connection to see it.
        let pool = svc.pool.clone();
        lb_test_support::eventually_async(
            "the pooled connection to be seen closed",
            Duration::from_secs(5),
            || {
                let pool = pool.clone();
                async move {
                    let mut idle = lock(&pool.idle);
                    idle.first_mut().is_some_and(|i| !i.io.is_reusable())
                }
            },
        )
        .await;
        assert_eq!(text(svc.call(get("/")).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A 101 hands the connection over with the bytes read past the head.
    #[tokio::test]
    async fn switching_protocols_hands_the_connection_over() {
        let (addr, _, _) = endpoint(vec![vec![Answer::Send(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\nfirst",
        )]])
        .await;
        let mut req = get("/");
        req.headers_mut()
            .insert(http::header::UPGRADE, HeaderValue::from_static("echo"));
        let mut rsp = service(addr).call(req).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::SWITCHING_PROTOCOLS);
        let mut up = crate::http::upgrade::take(&mut rsp).expect("an upgraded connection");
        let mut got = [0u8; 5];
        up.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"first");
    }

    #[tokio::test]
    async fn a_malformed_answer_is_an_error_of_the_request() {
        let (addr, _, _) = endpoint(vec![vec![Answer::Send(b"HTTP/1.1 2x0 OK\r\n\r\n")]]).await;
        let err = service(addr).call(get("/")).await.unwrap_err();
        assert_eq!(err.kind, Kind::Send);
        assert!(
            format!("{:?}", err.source).contains("malformed response head"),
            "{err:?}"
        );
    }

    /// An endpoint that answers before it has the request body (a 413 to an upload it
    /// refuses): the answer comes through, and the connection is not kept.
    #[tokio::test]
    async fn an_early_answer_to_an_unfinished_upload_comes_through() {
        const REFUSED: &[u8] = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\nconnection: close\r\n\r\nno\n";
        let (addr, accepted, _) = endpoint(vec![vec![Answer::Early(REFUSED)], vec![OK]]).await;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, crate::BoxError>>(1);
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"the first part"))))
            .await
            .unwrap();
        let mut svc = service(addr);
        let rsp = svc
            .call(Request::put("/big").body(super::super::boxed(body)).unwrap())
            .await
            .unwrap();
        assert_eq!(rsp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(text(rsp).await, "no\n");
        drop(tx);
        assert_eq!(text(svc.call(get("/")).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// An idle connection the endpoint closed leaves the pool without a request taking it.
    #[tokio::test]
    async fn idle_connections_the_endpoint_closed_are_swept() {
        let (addr, _, _) = endpoint(vec![vec![OK]]).await;
        let mut svc = service(addr);
        assert_eq!(text(svc.call(get("/")).await.unwrap()).await, "ok");
        assert_eq!(lock(&svc.pool.idle).len(), 1);
        let pool = svc.pool.clone();
        lb_test_support::eventually("the closed idle connection to be swept", Duration::from_secs(5), || {
            lock(&pool.idle).is_empty()
        })
        .await;
    }
}
