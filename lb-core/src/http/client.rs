//! The connector, the per-endpoint connection pool and the per-endpoint service.
//!
//! Each endpoint has its own pool ([`Pool`]): a small stack of idle HTTP/1.1 connections
//! (hyper's `client::conn::http1`, each driven by its own spawned task), or one shared
//! HTTP/2 connection when [`ClientConfig::http2_only`] is set or when a TLS server chose
//! `h2` by ALPN. No pool key is hashed on the request path and no lock is held beyond a
//! push or a pop.
//!
//! An HTTP/1.1 connection goes back to its pool when the response body ends (its last
//! frame, or a body that is empty from the start); a body that fails or is dropped before
//! its end takes the connection with it, as does a `101 Switching Protocols` answer or a
//! `Connection: close`. A request that a pooled connection closed before writing (the
//! endpoint dropped an idle connection at the same moment) is sent again, once, on a new
//! connection.

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
use http::header::{HeaderMap, HeaderValue, CONNECTION, HOST};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tower_service::Service;

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
            None if pool.config.http2_only => State::connect(pool, req),
            None => State::checkout_h1(pool, req),
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
    tx: http1::SendRequest<Body>,
    since: Instant,
}

/// A request body up to this size (exact size hint) is written with its head, so the
/// connection is idle (or about to be) when the response ends.
const SMALL_BODY: u64 = 64 * 1024;

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
    fn checkout_h1(&self) -> Option<http1::SendRequest<Body>> {
        loop {
            let idle = lock(&self.idle).pop()?;
            if idle.since.elapsed() > self.config.pool_idle_timeout {
                // Everything below is older still.
                let stale = std::mem::take(&mut *lock(&self.idle));
                drop((idle, stale));
                return None;
            }
            if !idle.tx.is_closed() {
                return Some(idle.tx);
            }
        }
    }

    /// Returns a connection whose response has ended. `small_request`: the request's
    /// body was written with its head; otherwise the connection may still be writing it
    /// and is kept only if it is ready now.
    fn checkin_h1(&self, tx: http1::SendRequest<Body>, small_request: bool) {
        if self.config.pool_max_idle_per_host == 0 || tx.is_closed() || (!small_request && !tx.is_ready()) {
            return;
        }
        let now = Instant::now();
        let timeout = self.config.pool_idle_timeout;
        let mut idle = lock(&self.idle);
        // The oldest are at the bottom; drop those that expired.
        let expired = idle.partition_point(|i| now.saturating_duration_since(i.since) > timeout);
        if expired > 0 {
            idle.drain(..expired);
        }
        if idle.len() < self.config.pool_max_idle_per_host {
            idle.push(Idle { tx, since: now });
        }
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
            Opened::Tcp(stream) => self.handshake(TokioIo::new(stream), self.config.http2_only).await,
            #[cfg(feature = "tls")]
            Opened::Tls(stream, h2) => self.handshake(TokioIo::new(stream), h2).await,
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

    /// The HTTP handshake on a new connection, whose task it spawns.
    async fn handshake<T>(&self, io: T, h2: bool) -> Result<Conn, ClientError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let addr = self.addr;
        if h2 {
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
        } else {
            let (tx, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|e| ClientError::new(Kind::Connect, addr, e))?;
            tokio::spawn(async move {
                // `with_upgrades`: a 101 answer hands the connection to `hyper::upgrade::on`.
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(%addr, error = %e, "endpoint connection ended with an error");
                }
            });
            Ok(Conn::H1(tx))
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
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

type SendFuture = Pin<Box<dyn Future<Output = Result<Response<Incoming>, TrySendError<Request<Body>>>> + Send>>;
type ConnectFuture = Pin<Box<dyn Future<Output = Result<Conn, ClientError>> + Send>>;

/// The future of [`EndpointService::call`].
///
/// It owns the request until a connection takes it: an idle one from the pool (waiting
/// for it to be ready, if it is finishing its last exchange) or a new one. One
/// allocation per request (hyper's send future); a new connection costs another.
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture {
    pool: Arc<Pool>,
    state: State,
}

enum State {
    /// An idle HTTP/1.1 connection that is not ready yet (it is finishing the exchange
    /// before; it will be ready or closed in a moment).
    Waiting {
        tx: http1::SendRequest<Body>,
        req: Request<Body>,
    },
    Connecting {
        connect: ConnectFuture,
        req: Request<Body>,
    },
    Sending {
        send: SendFuture,
        /// The HTTP/1.1 connection, to return to the pool when the response ends.
        tx: Option<http1::SendRequest<Body>>,
        /// A pooled connection (a request it never wrote is sent again on a new one).
        reused: bool,
        small_request: bool,
    },
    Done,
}

impl State {
    fn checkout_h1(pool: &Arc<Pool>, req: Request<Body>) -> State {
        match pool.checkout_h1() {
            Some(tx) if tx.is_ready() => State::send_h1(pool, tx, req, true),
            Some(tx) => State::Waiting { tx, req },
            None => State::connect(pool, req),
        }
    }

    fn connect(pool: &Arc<Pool>, req: Request<Body>) -> State {
        State::Connecting {
            connect: Box::pin(pool.clone().connect()),
            req,
        }
    }

    fn send_h1(pool: &Pool, mut tx: http1::SendRequest<Body>, mut req: Request<Body>, reused: bool) -> State {
        pool.prepare_h1(&mut req);
        let small_request = {
            use http_body::Body as _;
            let body = req.body();
            body.is_end_stream() || body.size_hint().exact().is_some_and(|n| n <= SMALL_BODY)
        };
        State::Sending {
            send: Box::pin(tx.try_send_request(req)),
            tx: Some(tx),
            reused,
            small_request,
        }
    }

    fn send_h2(pool: &Pool, mut tx: http2::SendRequest<Body>, mut req: Request<Body>, reused: bool) -> State {
        pool.prepare_h2(&mut req);
        State::Sending {
            send: Box::pin(tx.try_send_request(req)),
            tx: None,
            reused,
            small_request: true,
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Waiting { .. } => "waiting for an idle connection",
            State::Connecting { .. } => "connecting",
            State::Sending { .. } => "sending",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("addr", &self.pool.addr)
            .field("state", &state)
            .finish()
    }
}

impl Drop for ResponseFuture {
    fn drop(&mut self) {
        // Cancelled before the idle connection it waited for was used: keep it.
        if let State::Waiting { .. } = self.state {
            if let State::Waiting { tx, .. } = std::mem::replace(&mut self.state, State::Done) {
                self.pool.checkin_h1(tx, true);
            }
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody>, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Sending { send, .. } => {
                    let res = ready!(send.as_mut().poll(cx));
                    let State::Sending {
                        tx,
                        reused,
                        small_request,
                        ..
                    } = std::mem::replace(&mut this.state, State::Done)
                    else {
                        unreachable!()
                    };
                    match res {
                        Ok(rsp) => return Poll::Ready(Ok(this.pool.answer(rsp, tx, small_request))),
                        Err(mut e) => match e.take_message() {
                            // The pooled connection closed before it wrote the request:
                            // once more, on a new connection.
                            Some(req) if reused => {
                                tracing::debug!(addr = %this.pool.addr, error = %e.error(), "pooled connection closed, sending again");
                                this.state = State::connect(&this.pool, req);
                            }
                            // A new connection that closed before writing the request.
                            Some(_) => {
                                return Poll::Ready(Err(ClientError::new(
                                    Kind::Connect,
                                    this.pool.addr,
                                    e.into_error(),
                                )))
                            }
                            None => {
                                return Poll::Ready(Err(ClientError::new(Kind::Send, this.pool.addr, e.into_error())))
                            }
                        },
                    }
                }
                State::Waiting { tx, .. } => {
                    let ready = ready!(tx.poll_ready(cx)).is_ok();
                    let State::Waiting { tx, req } = std::mem::replace(&mut this.state, State::Done) else {
                        unreachable!()
                    };
                    this.state = if ready {
                        State::send_h1(&this.pool, tx, req, true)
                    } else {
                        // Closed: the next idle one, or a new one.
                        State::checkout_h1(&this.pool, req)
                    };
                }
                State::Connecting { connect, .. } => {
                    let res = ready!(connect.as_mut().poll(cx));
                    let State::Connecting { req, .. } = std::mem::replace(&mut this.state, State::Done) else {
                        unreachable!()
                    };
                    this.state = match res {
                        Ok(Conn::H1(tx)) => State::send_h1(&this.pool, tx, req, false),
                        Ok(Conn::H2(tx)) => State::send_h2(&this.pool, tx, req, false),
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                }
                State::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

impl Pool {
    /// Wraps the response body; an HTTP/1.1 connection goes back to the pool when it ends.
    fn answer(
        self: &Arc<Self>,
        rsp: Response<Incoming>,
        tx: Option<http1::SendRequest<Body>>,
        small_request: bool,
    ) -> Response<ResponseBody> {
        let checkin = match tx {
            Some(tx) if rsp.status() != StatusCode::SWITCHING_PROTOCOLS && !says_close(rsp.headers()) => {
                if http_body::Body::is_end_stream(rsp.body()) {
                    self.checkin_h1(tx, small_request);
                    None
                } else {
                    Some(Checkin {
                        pool: self.clone(),
                        tx,
                        small_request,
                    })
                }
            }
            _ => None,
        };
        rsp.map(|inner| ResponseBody { inner, checkin })
    }
}

/// Whether a `Connection` header lists `close`.
fn says_close(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// The body of a response from an [`EndpointService`]: hyper's [`Incoming`], returning its
/// HTTP/1.1 connection to the pool when it ends.
pub struct ResponseBody {
    inner: Incoming,
    checkin: Option<Checkin>,
}

struct Checkin {
    pool: Arc<Pool>,
    tx: http1::SendRequest<Body>,
    small_request: bool,
}

impl ResponseBody {
    fn release(&mut self) {
        if let Some(c) = self.checkin.take() {
            c.pool.checkin_h1(c.tx, c.small_request);
        }
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .field("pooled", &self.checkin.is_some())
            .finish()
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        match &res {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(_))) => {
                // A body of known length ends with its last frame: callers (hyper's
                // server among them) stop polling once `is_end_stream` says so.
                if this.checkin.is_some() && this.inner.is_end_stream() {
                    this.release();
                }
            }
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Err(_))) => this.checkin = None,
        }
        res
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Connect,
    Send,
}

/// Why an [`EndpointService`] got no response: it could not connect (see
/// [`is_connect`](Self::is_connect)), or the exchange failed.
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

    use http_body_util::BodyExt;
    use tokio::net::TcpListener;

    use super::*;

    /// A request queued on a pooled connection that closes before taking it (the race
    /// with an endpoint closing an idle connection) is sent again on a new connection.
    #[tokio::test]
    async fn a_request_a_pooled_connection_never_wrote_is_sent_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (io, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(super::super::full("ok")))
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc));
            }
        });
        let pool = Arc::new(Pool::new(addr, ClientConfig::default()));
        let stream = TcpStream::connect(addr).await.unwrap();
        let (tx, conn) = http1::handshake::<_, Body>(TokioIo::new(stream)).await.unwrap();
        let mut conn = Box::pin(conn);
        // Polled once, the idle connection asks for a request.
        let pending = std::future::poll_fn(|cx| Poll::Ready(conn.as_mut().poll(cx).is_pending())).await;
        assert!(pending && tx.is_ready());
        pool.checkin_h1(tx, true);

        let mut svc = EndpointService { pool };
        let rsp = svc.call(Request::get("/").body(super::super::empty()).unwrap());
        // The request is queued on the pooled connection, which now goes away unused.
        drop(conn);
        let rsp = rsp.await.unwrap();
        assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn connection_close() {
        let mut h = HeaderMap::new();
        assert!(!says_close(&h));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!says_close(&h));
        h.append(CONNECTION, HeaderValue::from_static("Upgrade, Close"));
        assert!(says_close(&h));
    }
}
