//! Test support: killable counting backends, an HTTP client, and starting the proxy.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::stack::Started;

/// The longest any one test may run.
pub(crate) const TEST_LIMIT: Duration = Duration::from_secs(10);

/// Runs a test body under [`TEST_LIMIT`].
pub(crate) async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test ran longer than its time limit");
}

/// Runs a test body on Tokio's paused clock under `limit` of that clock (so a test of
/// deadlines may wait through several of them), and under [`TEST_LIMIT`] of real time: a
/// test that spins without letting the clock move still fails.
pub(crate) async fn bounded_paused<F: std::future::Future<Output = ()>>(limit: Duration, f: F) {
    let (done, watched) = std::sync::mpsc::channel::<()>();
    let watchdog =
        std::thread::spawn(move || watched.recv_timeout(TEST_LIMIT) != Err(std::sync::mpsc::RecvTimeoutError::Timeout));
    tokio::time::timeout(limit, f)
        .await
        .expect("test ran longer than its time limit (paused clock)");
    let _ = done.send(());
    assert!(
        watchdog.join().unwrap_or(false),
        "test ran longer than its real-time limit"
    );
}

/// Shared state of one backend.
#[derive(Debug, Default)]
struct Inner {
    /// Requests answered or being answered (not counting `/healthz`).
    hits: AtomicUsize,
    /// Requests being answered now.
    in_flight: AtomicUsize,
    /// Connection and upgrade tasks, aborted by [`Backend::kill`].
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A real HTTP/1.1 backend on loopback.
///
/// Every response carries `x-backend: NAME` and the body `NAME path=PATH`. Behaviour by
/// request:
/// - `?delay_ms=N` (or a per-path delay given to [`Backend::with_delays`]) waits first;
/// - `/gate` waits until [`Backend::release`];
/// - `/headers` answers the request headers, one `name: value` per line;
/// - `/healthz` answers `ok` and is not counted;
/// - a request with `Upgrade` is answered `101` and the connection then echoes bytes.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    inner: Arc<Inner>,
    gate: watch::Sender<bool>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Backend {
    /// A backend with no per-path delays.
    pub(crate) async fn start(name: &str) -> Backend {
        Self::with_delays(name, &[]).await
    }

    /// A backend that waits `delay` before answering requests for `path`.
    pub(crate) async fn with_delays(name: &str, delays: &[(&str, Duration)]) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a backend");
        let addr = listener.local_addr().expect("backend address");
        let inner = Arc::new(Inner::default());
        let (gate, gate_rx) = watch::channel(false);
        let delays: Arc<HashMap<String, Duration>> =
            Arc::new(delays.iter().map(|(p, d)| (p.to_string(), *d)).collect());
        let accept = {
            let inner = inner.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                loop {
                    let Ok((io, _)) = listener.accept().await else { continue };
                    let ctx = Ctx {
                        name: name.clone(),
                        inner: inner.clone(),
                        delays: delays.clone(),
                        gate: gate_rx.clone(),
                    };
                    let svc = hyper::service::service_fn(move |req| ctx.clone().answer(req));
                    let task = tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(io), svc)
                            .with_upgrades()
                            .await;
                    });
                    let mut tasks = inner.tasks.lock().expect("tasks lock");
                    tasks.retain(|t| !t.is_finished());
                    tasks.push(task);
                }
            })
        };
        Backend {
            addr,
            inner,
            gate,
            accept: Mutex::new(Some(accept)),
        }
    }

    /// Requests seen (not counting health checks).
    pub(crate) fn hits(&self) -> usize {
        self.inner.hits.load(Ordering::SeqCst)
    }

    /// Requests being answered now.
    pub(crate) fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Lets every `/gate` request (waiting or to come) answer.
    pub(crate) fn release(&self) {
        let _ = self.gate.send(true);
    }

    /// Closes the port and every connection: afterwards a connect is refused and pooled
    /// connections see EOF.
    pub(crate) async fn kill(&self) {
        let accept = self.accept.lock().expect("accept lock").take();
        if let Some(a) = accept {
            a.abort();
            let _ = a.await;
        }
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().expect("tasks lock"));
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(a) = self.accept.lock().map(|mut a| a.take()).ok().flatten() {
            a.abort();
        }
        if let Ok(tasks) = self.inner.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

/// What one backend connection's requests see.
#[derive(Clone)]
struct Ctx {
    name: String,
    inner: Arc<Inner>,
    delays: Arc<HashMap<String, Duration>>,
    gate: watch::Receiver<bool>,
}

/// Decrements a counter when dropped (also when the request's task is aborted).
struct Count(Arc<Inner>);

impl Drop for Count {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ctx {
    async fn answer(mut self, mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path().to_string();
        if path == "/healthz" {
            return Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))));
        }
        self.inner.hits.fetch_add(1, Ordering::SeqCst);
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        let _count = Count(self.inner.clone());
        let query_delay = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("delay_ms=")))
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis);
        if let Some(d) = query_delay.or_else(|| self.delays.get(&path).copied()) {
            tokio::time::sleep(d).await;
        }
        if path == "/gate" {
            let _ = self.gate.wait_for(|open| *open).await;
        }
        let mut rsp = if let Some(proto) = req.headers().get(http::header::UPGRADE).cloned() {
            let on = hyper::upgrade::on(&mut req);
            let task = tokio::spawn(async move {
                let Ok(up) = on.await else { return };
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = io.shutdown().await;
            });
            self.inner.tasks.lock().expect("tasks lock").push(task);
            let mut rsp = Response::new(Full::new(Bytes::new()));
            *rsp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            rsp.headers_mut()
                .insert(http::header::CONNECTION, "upgrade".parse().expect("a header value"));
            rsp.headers_mut().insert(http::header::UPGRADE, proto);
            rsp
        } else if path == "/headers" {
            let mut text = String::new();
            for (k, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            Response::new(Full::new(Bytes::from(text)))
        } else {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = format!("{} path={path} body={}\n", self.name, body.len());
            Response::new(Full::new(Bytes::from(text)))
        };
        rsp.headers_mut()
            .insert("x-backend", self.name.parse().expect("a header value"));
        Ok(rsp)
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bind, read, drop): connecting to it
/// is refused.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A TOML endpoints list: `[{ addr = "..." }, ...]`, with weights if given.
pub(crate) fn endpoints(backends: &[&Backend], weights: Option<&[u32]>) -> String {
    let items: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| match weights {
            Some(w) => format!("{{ addr = \"{}\", weight = {} }}", b.addr, w[i]),
            None => format!("{{ addr = \"{}\" }}", b.addr),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// The `[server]` and `[admin]` tables of a test config: both on ephemeral ports.
pub(crate) fn head() -> String {
    "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n".to_string()
}

/// A config of one service `web` routed from `/`, with `extra` keys in the service.
pub(crate) fn one_service(balance: &str, backends: &[&Backend], weights: Option<&[u32]>, extra: &str) -> String {
    format!(
        "{}[[services]]\nname = \"web\"\nbalance = \"{balance}\"\nendpoints = {}\n{extra}\n\n\
         [[routes]]\npath_prefix = \"/\"\nservice = \"web\"\n",
        head(),
        endpoints(backends, weights),
    )
}

/// Starts the proxy from a config text (no reloads).
pub(crate) async fn proxy(text: &str) -> Started {
    proxy_at(text, None).await
}

/// Starts the proxy from a config text; `path` (holding the same text) enables reloads.
pub(crate) async fn proxy_at(text: &str, path: Option<PathBuf>) -> Started {
    let name = path.clone().unwrap_or_else(|| PathBuf::from("test.toml"));
    let cfg = crate::config::parse(text, &name).unwrap_or_else(|e| panic!("bad test config: {e}\n{text}"));
    crate::stack::start(cfg, path).await.expect("the proxy starts")
}

/// Health of every endpoint of `service` by address, from the balancer's status.
pub(crate) fn health(p: &Started, service: &str) -> Vec<(SocketAddr, lb_core::Health)> {
    let rt = p.state.load();
    let up = rt.upstream(service).expect("the service exists");
    up.balancer
        .status()
        .endpoints
        .iter()
        .map(|e| (e.addr, e.health))
        .collect()
}

/// Waits until `service` has at least `n` endpoints in rotation (bounded).
pub(crate) async fn ready(p: &Started, service: &str, n: usize) {
    let up = p.state.load().upstream(service).expect("the service exists").clone();
    tokio::time::timeout(Duration::from_secs(3), up.balancer.ready_endpoints(n))
        .await
        .expect("endpoints come into rotation");
}

/// A keep-alive HTTP/1.1 client.
pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new keep-alive client.
pub(crate) fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response, read in full.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Answer {
    /// The backend that answered (`x-backend`), or `""`.
    pub(crate) fn backend(&self) -> &str {
        self.headers
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends `req` and reads the whole answer (5 s limit); `Err` on a transport failure.
pub(crate) async fn send(c: &HttpClient, req: Request<Full<Bytes>>) -> Result<Answer, String> {
    let fut = async {
        let rsp = c.request(req).await.map_err(|e| format!("request: {e:?}"))?;
        let status = rsp.status();
        let headers = rsp.headers().clone();
        let body = rsp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// `GET http://addr{path}` with extra headers.
pub(crate) async fn get(
    c: &HttpClient,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let mut b = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(c, b.body(Full::new(Bytes::new())).expect("a request")).await
}

/// Sends raw bytes on a fresh connection, half-closes, and returns everything read back
/// (2 s limit). The peer may answer and close before taking all the bytes: a failed write
/// or a reset after some bytes came back still returns what was read.
pub(crate) async fn raw(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    if s.write_all(bytes).await.is_ok() {
        let _ = s.shutdown().await;
    }
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await {
        Ok(Err(e)) if out.is_empty() => Err(e),
        _ => Ok(out),
    }
}

/// A unique scratch directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "lb-proxy-test-{tag}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `cond` holds, checking every few milliseconds; panics naming `what` if it
/// does not within `limit`.
pub(crate) async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The `[server]` and `[admin]` tables of a test config with `server` keys added.
pub(crate) fn head_with(server: &str) -> String {
    format!("[server]\nlisten = [\"127.0.0.1:0\"]\n{server}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n")
}

/// A config of one service `web` over `backends`, routed from `/`, with `server` keys
/// in `[server]` and `extra` keys in the service.
pub(crate) fn service_with(server: &str, backends: &[&Backend], extra: &str) -> String {
    format!(
        "{}[[services]]\nname = \"web\"\nendpoints = {}\n{extra}\n\n[[routes]]\npath_prefix = \"/\"\nservice = \"web\"\n",
        head_with(server),
        endpoints(backends, None),
    )
}

/// One endpoint's status line of `service`: (failures, health).
pub(crate) fn endpoint_state(p: &Started, service: &str, addr: SocketAddr) -> (u64, lb_core::Health) {
    let rt = p.state.load();
    let up = rt.upstream(service).expect("the service exists");
    let st = up.balancer.status();
    let e = st
        .endpoints
        .iter()
        .find(|e| e.addr == addr)
        .expect("the endpoint is listed");
    (e.failures, e.health)
}

/// Reads from `s` until the end of a response head (or EOF), at most `limit`; the text.
pub(crate) async fn read_head(s: &mut tokio::net::TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                        // And the body, if it is short and already here.
                        let _ = end;
                        break;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(limit, read).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The body of `GET {path}` on the admin listener of `p` (no credentials configured);
/// panics unless it answers 200.
pub(crate) async fn admin_get(p: &Started, path: &str) -> String {
    let answer = get(&client(), p.admin_addr, path, &[])
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(answer.status, StatusCode::OK, "GET {path}: {}", answer.body);
    answer.body
}

/// `GET path` (HTTP/1.1, `Host: host`) over `stream`, which stays open; the whole answer
/// (head and a body as long as `Content-Length` says) as text.
pub(crate) async fn http1_over<S>(stream: &mut S, host: &str, path: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write the request");
    stream.flush().await.expect("flush the request");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.expect("read the answer");
        assert!(
            n > 0,
            "closed before the answer ended: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let len = text[..end]
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        if out.len() >= end + 4 + len {
            return text;
        }
    }
}
