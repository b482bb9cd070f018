//! The per-endpoint HTTP client against real backends on loopback: keep-alive reuse,
//! concurrency, the idle cap and timeout, connections the backend closes, connect
//! errors, upgrades, streamed bodies and h2c.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lb_core::http::{boxed, empty, full, is_connect_error, Body, ClientConfig, EndpointService, HttpConnect};
use lb_core::Endpoint;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower_service::Service;

/// Accepted TCP connections of a backend.
#[derive(Clone, Default)]
struct Accepted(Arc<AtomicUsize>);

impl Accepted {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    H1,
    /// HTTP/1.1 answering `Connection: close` and closing after each response.
    H1Close,
    H2,
}

/// A hyper backend calling `handler` for each request, counting connections.
async fn backend<F, Fut>(proto: Proto, handler: F) -> (SocketAddr, Accepted)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Accepted::default();
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            count.0.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            let svc = hyper::service::service_fn(move |req| {
                let rsp = handler(req);
                async move { Ok::<_, Infallible>(rsp.await) }
            });
            let io = TokioIo::new(io);
            tokio::spawn(async move {
                let _ = match proto {
                    Proto::H1 => {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .with_upgrades()
                            .await
                    }
                    Proto::H1Close => {
                        hyper::server::conn::http1::Builder::new()
                            .keep_alive(false)
                            .serve_connection(io, svc)
                            .await
                    }
                    Proto::H2 => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await
                    }
                };
            });
        }
    });
    (addr, accepted)
}

/// A backend answering `ok`, echoing the request target and `Host` in headers.
async fn ok_backend(proto: Proto) -> (SocketAddr, Accepted) {
    backend(proto, |req: Request<Incoming>| async move {
        let mut rsp = Response::new(full("ok"));
        let target = req.uri().to_string();
        rsp.headers_mut().insert("x-target", target.parse().unwrap());
        if let Some(h) = req.headers().get(http::header::HOST) {
            rsp.headers_mut().insert("x-host", h.clone());
        }
        rsp.headers_mut()
            .insert("x-version", format!("{:?}", req.version()).parse().unwrap());
        rsp
    })
    .await
}

fn service(addr: SocketAddr, config: ClientConfig) -> EndpointService {
    HttpConnect::new(config).for_endpoint(&Endpoint::new(addr))
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(empty()).unwrap()
}

/// One GET, its status and whole body.
async fn fetch(svc: &EndpointService, path: &str) -> (StatusCode, Bytes) {
    let rsp = svc.clone().call(get(path)).await.unwrap();
    let status = rsp.status();
    (status, rsp.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let (addr, accepted) = ok_backend(Proto::H1).await;
    let svc = service(addr, ClientConfig::default());
    for _ in 0..50 {
        let (status, body) = fetch(&svc, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "ok");
    }
    assert_eq!(accepted.get(), 1);
    // A clone, and a service made again for the same address, share the pool.
    let again = HttpConnect::new(ClientConfig::default());
    let (a, b) = (
        again.for_endpoint(&Endpoint::new(addr)),
        again.for_endpoint(&Endpoint::new(addr)),
    );
    for _ in 0..5 {
        fetch(&a, "/").await;
        fetch(&b, "/").await;
        fetch(&svc.clone(), "/").await;
    }
    assert_eq!(accepted.get(), 2);
}

#[tokio::test]
async fn http1_goes_in_origin_form_with_the_request_authority_as_host() {
    let (addr, _) = ok_backend(Proto::H1).await;
    let svc = service(addr, ClientConfig::default());
    // An absolute URI: its authority is the Host, not the endpoint's address.
    let rsp = svc.clone().call(get("http://example.test/a/b?c=d")).await.unwrap();
    assert_eq!(rsp.headers()["x-target"], "/a/b?c=d");
    assert_eq!(rsp.headers()["x-host"], "example.test");
    assert_eq!(rsp.headers()["x-version"], "HTTP/1.1");
    // Its port stays, user information goes.
    let rsp = svc
        .clone()
        .call(get("http://me:secret@example.test:8080/"))
        .await
        .unwrap();
    assert_eq!(rsp.headers()["x-host"], "example.test:8080");
    // A Host header is kept, whatever the URI says.
    let req = Request::get("/x").header("host", "api.example").body(empty()).unwrap();
    let rsp = svc.clone().call(req).await.unwrap();
    assert_eq!(rsp.headers()["x-target"], "/x");
    assert_eq!(rsp.headers()["x-host"], "api.example");
    let req = Request::get("http://example.test/x")
        .header("host", "api.example")
        .body(empty())
        .unwrap();
    let rsp = svc.clone().call(req).await.unwrap();
    assert_eq!(rsp.headers()["x-host"], "api.example");
    // Neither a Host header nor an authority: the endpoint's address.
    let rsp = svc.clone().call(get("/y")).await.unwrap();
    assert_eq!(rsp.headers()["x-host"], addr.to_string().as_str());
}

#[tokio::test]
async fn h2c_sends_the_request_authority() {
    let (addr, _) = ok_backend(Proto::H2).await;
    let svc = service(
        addr,
        ClientConfig {
            http2_only: true,
            ..ClientConfig::default()
        },
    );
    let rsp = svc.clone().call(get("http://example.test/a?b=c")).await.unwrap();
    assert_eq!(rsp.headers()["x-target"], "http://example.test/a?b=c");
    // From the Host header when the URI has no authority.
    let req = Request::get("/x").header("host", "api.example").body(empty()).unwrap();
    let rsp = svc.clone().call(req).await.unwrap();
    assert_eq!(rsp.headers()["x-target"], "http://api.example/x");
    // Neither: the endpoint's address.
    let rsp = svc.clone().call(get("/y")).await.unwrap();
    assert_eq!(rsp.headers()["x-target"], format!("http://{addr}/y").as_str());
}

/// `n` requests at once, held by the backend until all `n` have arrived.
async fn parallel_round(svc: &EndpointService, n: usize) {
    let calls: Vec<_> = (0..n).map(|_| svc.clone().call(get("/"))).collect();
    let rsps = futures_util::future::join_all(calls).await;
    for rsp in rsps {
        let rsp = rsp.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        rsp.into_body().collect().await.unwrap();
    }
}

async fn barrier_backend(n: usize) -> (SocketAddr, Accepted) {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    backend(Proto::H1, move |_req| {
        let barrier = barrier.clone();
        async move {
            barrier.wait().await;
            Response::new(full("ok"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_requests_open_connections_then_reuse_them() {
    const N: usize = 8;
    let (addr, accepted) = barrier_backend(N).await;
    let svc = service(addr, ClientConfig::default());
    parallel_round(&svc, N).await;
    assert_eq!(accepted.get(), N);
    for _ in 0..3 {
        parallel_round(&svc, N).await;
    }
    assert_eq!(
        accepted.get(),
        N,
        "the second rounds reuse the first round's connections"
    );
}

#[tokio::test]
async fn idle_connections_are_capped() {
    let (addr, accepted) = barrier_backend(3).await;
    let svc = service(
        addr,
        ClientConfig {
            pool_max_idle_per_host: 1,
            ..ClientConfig::default()
        },
    );
    parallel_round(&svc, 3).await;
    assert_eq!(accepted.get(), 3);
    // One was kept: two more.
    parallel_round(&svc, 3).await;
    assert_eq!(accepted.get(), 5);
}

#[tokio::test]
async fn no_pooling_with_a_cap_of_zero() {
    let (addr, accepted) = ok_backend(Proto::H1).await;
    let svc = service(
        addr,
        ClientConfig {
            pool_max_idle_per_host: 0,
            ..ClientConfig::default()
        },
    );
    for _ in 0..3 {
        fetch(&svc, "/").await;
    }
    assert_eq!(accepted.get(), 3);
}

#[tokio::test]
async fn idle_connections_expire() {
    let (addr, accepted) = ok_backend(Proto::H1).await;
    let svc = service(
        addr,
        ClientConfig {
            pool_idle_timeout: Duration::from_millis(100),
            ..ClientConfig::default()
        },
    );
    fetch(&svc, "/").await;
    fetch(&svc, "/").await;
    assert_eq!(accepted.get(), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    fetch(&svc, "/").await;
    assert_eq!(accepted.get(), 2);
}

#[tokio::test]
async fn connection_close_is_not_reused() {
    let (addr, accepted) = ok_backend(Proto::H1Close).await;
    let svc = service(addr, ClientConfig::default());
    for i in 1..=10 {
        let (status, body) = fetch(&svc, "/").await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
        assert_eq!(accepted.get(), i);
    }
}

/// A raw HTTP/1.1 backend: answers one request per connection without `Connection:
/// close`, then closes after `linger` (as a keep-alive timeout does).
async fn closing_backend(linger: Duration) -> (SocketAddr, Accepted) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Accepted::default();
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut io, _) = listener.accept().await.unwrap();
            count.0.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match io.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                tokio::time::sleep(linger).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_connection_closed_while_idle_is_replaced() {
    let (addr, accepted) = closing_backend(Duration::from_millis(20)).await;
    let svc = service(addr, ClientConfig::default());
    for i in 1..=5 {
        let (status, body) = fetch(&svc, "/").await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
        assert_eq!(accepted.get(), i);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn connect_refused_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let svc = service(addr, ClientConfig::default());
    let err = svc.clone().call(get("/")).await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert!(is_connect_error(&err));
    let boxed: lb_core::BoxError = err.into();
    assert!(is_connect_error(&*boxed));
    assert!(
        lb_core::error::chain(&*boxed).contains(&addr.to_string()),
        "{}",
        lb_core::error::chain(&*boxed)
    );
}

#[tokio::test]
async fn a_request_the_endpoint_dropped_is_not_a_connect_error() {
    // Reads the request, then closes without answering.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut io, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = io.read(&mut buf).await;
        }
    });
    let svc = service(addr, ClientConfig::default());
    let err = svc.clone().call(get("/")).await.unwrap_err();
    assert!(!err.is_connect(), "{err:?}");
    assert!(!is_connect_error(&err));
}

#[tokio::test]
async fn upgrade_passes_through_and_is_not_pooled() {
    let (addr, accepted) = backend(Proto::H1, |mut req: Request<Incoming>| async move {
        if req.headers().contains_key(http::header::UPGRADE) {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = TokioIo::new(on.await.unwrap());
                let mut buf = [0u8; 4];
                io.read_exact(&mut buf).await.unwrap();
                io.write_all(b"pong").await.unwrap();
                io.write_all(&buf).await.unwrap();
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(http::header::CONNECTION, "upgrade")
                .header(http::header::UPGRADE, "test")
                .body(empty())
                .unwrap()
        } else {
            Response::new(full("ok"))
        }
    })
    .await;
    let svc = service(addr, ClientConfig::default());
    fetch(&svc, "/").await;
    let req = Request::get("/ws")
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "test")
        .body(empty())
        .unwrap();
    let mut rsp = svc.clone().call(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SWITCHING_PROTOCOLS);
    // The endpoint's connection itself, ready at once.
    let mut io = lb_core::http::upgrade::take(&mut rsp).expect("an upgrade in the response");
    io.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 8];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pongping");
    // The pooled connection served the upgrade; the next request needs a new one.
    assert_eq!(accepted.get(), 1);
    fetch(&svc, "/").await;
    assert_eq!(accepted.get(), 2);
    fetch(&svc, "/").await;
    assert_eq!(accepted.get(), 2);
}

#[tokio::test]
async fn a_streamed_body_keeps_its_connection_until_it_ends() {
    type Chunks = tokio::sync::mpsc::Sender<Result<http_body::Frame<Bytes>, Infallible>>;
    let (tx_slot, mut rx_slot) = tokio::sync::mpsc::unbounded_channel::<Chunks>();
    let (addr, accepted) = backend(Proto::H1, move |req: Request<Incoming>| {
        let tx_slot = tx_slot.clone();
        async move {
            if req.uri().path() == "/stream" {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tx_slot.send(tx).unwrap();
                let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                Response::new(boxed(body))
            } else {
                Response::new(full("ok"))
            }
        }
    })
    .await;
    let svc = service(addr, ClientConfig::default());
    let rsp = svc.clone().call(get("/stream")).await.unwrap();
    let chunks = rx_slot.recv().await.unwrap();
    let mut body = rsp.into_body();
    // Chunks arrive as the backend sends them, one at a time.
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 128; // 8 MiB
    let mut got = 0;
    for i in 0..CHUNKS {
        chunks
            .send(Ok(http_body::Frame::data(Bytes::from(vec![i as u8; CHUNK]))))
            .await
            .unwrap();
        let mut this_chunk = 0;
        while this_chunk < CHUNK {
            let frame = body.frame().await.unwrap().unwrap();
            let data = frame.into_data().unwrap();
            assert!(data.iter().all(|&b| b == i as u8));
            this_chunk += data.len();
        }
        got += this_chunk;
        if i == 0 {
            // The body is open: its connection is busy, another request needs a new one.
            fetch(&svc, "/").await;
            assert_eq!(accepted.get(), 2);
        }
    }
    assert_eq!(got, CHUNK * CHUNKS);
    drop(chunks);
    assert!(body.frame().await.is_none());
    // Both connections are idle now: no third.
    parallel_round(&svc, 2).await;
    assert_eq!(accepted.get(), 2);
}

#[tokio::test]
async fn a_body_dropped_early_takes_its_connection() {
    let (addr, accepted) = backend(Proto::H1, |_req| async move {
        Response::new(full(Bytes::from(vec![b'x'; 1 << 20])))
    })
    .await;
    let svc = service(addr, ClientConfig::default());
    let mut body = svc.clone().call(get("/")).await.unwrap().into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    let (_, body) = fetch(&svc, "/").await;
    assert_eq!(body.len(), 1 << 20);
    assert_eq!(accepted.get(), 2);
    fetch(&svc, "/").await;
    assert_eq!(accepted.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_multiplexes_on_one_connection() {
    let (addr, accepted) = ok_backend(Proto::H2).await;
    let svc = service(
        addr,
        ClientConfig {
            http2_only: true,
            ..ClientConfig::default()
        },
    );
    let rsp = svc.clone().call(get("/first?x=1")).await.unwrap();
    assert_eq!(rsp.headers()["x-version"], "HTTP/2.0");
    assert_eq!(rsp.headers()["x-target"], format!("http://{addr}/first?x=1").as_str());
    rsp.into_body().collect().await.unwrap();
    for _ in 0..3 {
        let calls: Vec<_> = (0..16).map(|_| svc.clone().call(get("/"))).collect();
        for rsp in futures_util::future::join_all(calls).await {
            let body = rsp.unwrap().into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "ok");
        }
    }
    assert_eq!(accepted.get(), 1);
}

/// A backend answering 200 that counts its open connections (accepted, not yet closed).
async fn counting_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let count = open.clone();
    tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let count = count.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async { Ok::<_, Infallible>(Response::new(full("ok"))) });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

/// Waits (at most 5 s) until `cond` holds.
async fn until(what: &str, cond: impl FnMut() -> bool) {
    lb_test_support::eventually(what, Duration::from_secs(5), cond).await;
}

#[tokio::test]
async fn the_http_probe_closes_its_connection_to_an_endpoint_that_leaves() {
    use lb_core::health::CheckConfig;
    use lb_core::http::HttpProbe;
    use lb_core::{balance::RoundRobin, discover, Balancer};

    let (addr, open) = counting_backend().await;
    let (publisher, subscription) = discover::channel();
    let checks = CheckConfig {
        interval: Duration::from_millis(20),
        timeout: Duration::from_secs(1),
        rise: 1,
        fall: 1,
    };
    let lb = Balancer::builder(RoundRobin::new())
        .health_check(HttpProbe::new("/healthz"), checks)
        .spawn(subscription, lb_core::connect_fn(|_: &Endpoint| ()));
    publisher.insert(Endpoint::new(addr));
    until("the probe connects", || open.load(Ordering::SeqCst) == 1).await;
    publisher.remove(Endpoint::new(addr).id().clone());
    until("the probe's connection is closed", || open.load(Ordering::SeqCst) == 0).await;
    drop(lb);
}
