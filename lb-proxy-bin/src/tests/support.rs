//! Test support: an HTTP client, configs and starting the proxy. The backends ([`Backend`]),
//! waits ([`eventually`]) and scratch directories come from lb-test-support.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) use lb_test_support::http::Backend;
pub(crate) use lb_test_support::{eventually, eventually_async, free_port, TempDir};

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
