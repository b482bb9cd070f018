//! A real HTTP/1.1 test backend on loopback: [`Backend`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::http::{Request, Response, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
/// Every response carries `x-backend: NAME` and the body `NAME path=PATH body=LEN`
/// (`LEN`: the length of the request's body). Behaviour by request:
/// - `?delay_ms=N` (or a per-path delay given to [`Backend::with_delays`]) waits first;
/// - `/gate` waits until [`Backend::release`];
/// - `/headers` answers the request headers, one `name: value` per line;
/// - `/healthz` answers `ok` and is not counted;
/// - a request with `Upgrade` is answered `101` and the connection then echoes bytes.
///
/// It runs as tasks of the current Tokio runtime, stopped by [`Backend::kill`] or on
/// drop.
#[derive(Debug)]
pub struct Backend {
    /// Where it listens (127.0.0.1, an ephemeral port).
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    gate: watch::Sender<bool>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Backend {
    /// A backend with no per-path delays.
    pub async fn start(name: &str) -> Backend {
        Self::with_delays(name, &[]).await
    }

    /// A backend that waits `delay` before answering requests for `path`.
    pub async fn with_delays(name: &str, delays: &[(&str, Duration)]) -> Backend {
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
    pub fn hits(&self) -> usize {
        self.inner.hits.load(Ordering::SeqCst)
    }

    /// Requests being answered now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Lets every `/gate` request (waiting or to come) answer.
    pub fn release(&self) {
        let _ = self.gate.send(true);
    }

    /// Closes the port and every connection: afterwards a connect is refused and pooled
    /// connections see EOF.
    pub async fn kill(&self) {
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
        let mut rsp = if let Some(proto) = req.headers().get(::http::header::UPGRADE).cloned() {
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
                .insert(::http::header::CONNECTION, "upgrade".parse().expect("a header value"));
            rsp.headers_mut().insert(::http::header::UPGRADE, proto);
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

#[cfg(test)]
mod tests {
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    use super::*;

    /// `GET path` on a new connection: status, `x-backend` and body.
    async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String, String), hyper_util::client::legacy::Error> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let rsp = client
            .get(format!("http://{addr}{path}").parse().expect("a URI"))
            .await?;
        let status = rsp.status().as_u16();
        let name = rsp
            .headers()
            .get("x-backend")
            .map(|v| v.to_str().expect("text").to_string())
            .unwrap_or_default();
        let body = rsp.into_body().collect().await.expect("a body").to_bytes();
        Ok((status, name, String::from_utf8_lossy(&body).into_owned()))
    }

    #[tokio::test]
    async fn answers_with_its_name_counts_holds_at_the_gate_and_dies() {
        let b = Backend::start("a").await;
        assert_eq!(
            get(b.addr, "/x").await.expect("GET"),
            (200, "a".into(), "a path=/x body=0\n".into())
        );
        assert_eq!(get(b.addr, "/healthz").await.expect("GET").2, "ok\n");
        assert_eq!(b.hits(), 1, "health checks are not counted");

        let addr = b.addr;
        let held = tokio::spawn(async move { get(addr, "/gate").await.expect("GET").2 });
        crate::eventually("the gated request", Duration::from_secs(5), || b.in_flight() == 1).await;
        assert!(!held.is_finished());
        b.release();
        assert_eq!(held.await.expect("the request"), "a path=/gate body=0\n");
        crate::eventually("no request in flight", Duration::from_secs(5), || b.in_flight() == 0).await;
        assert_eq!(b.hits(), 2);

        b.kill().await;
        assert!(
            tokio::net::TcpStream::connect(b.addr).await.is_err(),
            "the port is closed"
        );
    }
}
