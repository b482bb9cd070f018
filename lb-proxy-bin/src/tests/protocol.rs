//! What clients see: error statuses, forwarding headers, malformed requests, upgrades,
//! HTTP/2 with prior knowledge, and TCP services.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::support::{
    bounded, client, eventually, free_port, get, head, health, one_service, proxy, raw, ready, send, Backend,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_route_is_404() {
    bounded(async {
        let a = Backend::start("a").await;
        let text = format!(
            "{}[[services]]\nname = \"web\"\nendpoints = [\"{}\"]\n\n\
             [[routes]]\nhost = \"app.example\"\npath_prefix = \"/app\"\nservice = \"web\"\n",
            head(),
            a.addr
        );
        let p = proxy(&text).await;
        ready(&p, "web", 1).await;
        let addr = p.http_addrs[0];
        let cl = client();
        let r = get(&cl, addr, "/app/x", &[("host", "app.example")])
            .await
            .expect("request");
        assert_eq!(r.status, 200, "{}", r.body);
        let r = get(&cl, addr, "/other", &[("host", "app.example")])
            .await
            .expect("request");
        assert_eq!(r.status, 404, "{}", r.body);
        let r = get(&cl, addr, "/app/x", &[("host", "elsewhere.example")])
            .await
            .expect("request");
        assert_eq!(r.status, 404, "{}", r.body);
        assert_eq!(a.hits(), 1);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_eligible_endpoint_is_503_naming_the_service() {
    bounded(async {
        let a = Backend::start("a").await;
        let dead = format!("127.0.0.1:{}", free_port());
        let text = format!(
            "{}[[services]]\nname = \"idle\"\nendpoints = [{{ addr = \"{}\", weight = 0 }}]\n\n\
             [[services]]\nname = \"checked\"\nendpoints = [\"{dead}\"]\npanic_threshold = 0\n\
             health = {{ tcp = true, interval = \"50ms\", timeout = \"50ms\", rise = 1, fall = 1 }}\n\n\
             [[services]]\nname = \"ejected\"\nendpoints = [\"{dead}\"]\npanic_threshold = 0\nretries = 0\n\
             outlier = {{ consecutive_failures = 1, max_ejection_percent = 100 }}\n\n\
             [[routes]]\npath_prefix = \"/idle\"\nservice = \"idle\"\n\n\
             [[routes]]\npath_prefix = \"/checked\"\nservice = \"checked\"\n\n\
             [[routes]]\npath_prefix = \"/ejected\"\nservice = \"ejected\"\n",
            head(),
            a.addr
        );
        let p = proxy(&text).await;
        let addr = p.http_addrs[0];
        let cl = client();
        // Weight 0: kept, but sent no traffic.
        let r = get(&cl, addr, "/idle", &[]).await.expect("request");
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.body.contains("idle"), "body names the service: {}", r.body);
        assert_eq!(a.hits(), 0);
        // Failed health checks, panic mode off.
        eventually("the dead endpoint to turn unhealthy", Duration::from_secs(3), || {
            health(&p, "checked")
                .iter()
                .all(|(_, h)| *h == lb_core::Health::Unhealthy)
        })
        .await;
        let r = get(&cl, addr, "/checked", &[]).await.expect("request");
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.body.contains("checked"), "body names the service: {}", r.body);
        // Ejected by outlier detection after one failure.
        ready(&p, "ejected", 1).await;
        let r = get(&cl, addr, "/ejected", &[]).await.expect("request");
        assert_eq!(r.status, 502, "{}", r.body);
        // The balancer's writer applies the ejection a moment later.
        eventually("the failing endpoint to be ejected", Duration::from_secs(2), || {
            health(&p, "ejected")
                .iter()
                .all(|(_, h)| *h == lb_core::Health::Ejected)
        })
        .await;
        let r = get(&cl, addr, "/ejected", &[]).await.expect("request");
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.body.contains("ejected"), "body names the service: {}", r.body);
        p.shutdown().await;
    })
    .await;
}

/// A backend that accepts, reads the request, and closes without answering. Counts
/// connections.
async fn black_hole() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await;
            });
        }
    });
    (addr, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoints_are_502_and_only_safe_requests_are_retried() {
    bounded(async {
        use std::sync::atomic::Ordering;
        let dead = format!("127.0.0.1:{}", free_port());
        let (hole, conns) = black_hole().await;
        let text = format!(
            "{}[[services]]\nname = \"dead\"\nendpoints = [\"{dead}\"]\nretries = 2\n\n\
             [[services]]\nname = \"hole\"\nendpoints = [\"{hole}\"]\nretries = 2\n\n\
             [[routes]]\npath_prefix = \"/dead\"\nservice = \"dead\"\n\n\
             [[routes]]\npath_prefix = \"/hole\"\nservice = \"hole\"\n",
            head()
        );
        let p = proxy(&text).await;
        ready(&p, "dead", 1).await;
        ready(&p, "hole", 1).await;
        let addr = p.http_addrs[0];
        let cl = client();
        // Connection refused: retried (it never reached an endpoint), then 502.
        let req = Request::post(format!("http://{addr}/dead"))
            .body(Full::new(Bytes::from("payload")))
            .expect("req");
        let r = send(&cl, req).await.expect("request");
        assert_eq!(r.status, 502, "{}", r.body);
        assert!(r.body.contains("dead"), "body names the service: {}", r.body);
        // A POST that reached the endpoint is not replayed.
        let req = Request::post(format!("http://{addr}/hole"))
            .body(Full::new(Bytes::from("payload")))
            .expect("req");
        let r = send(&cl, req).await.expect("request");
        assert_eq!(r.status, 502, "{}", r.body);
        assert_eq!(conns.load(Ordering::SeqCst), 1, "the POST was sent once");
        // A GET is: 1 + 2 retries.
        let r = get(&cl, addr, "/hole", &[]).await.expect("request");
        assert_eq!(r.status, 502, "{}", r.body);
        assert_eq!(conns.load(Ordering::SeqCst), 4, "the GET was tried three times");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_streamed_body_to_a_dead_endpoint_is_502() {
    bounded(async {
        let dead = format!("127.0.0.1:{}", free_port());
        let text = format!(
            "{}[[services]]\nname = \"dead\"\nendpoints = [\"{dead}\"]\n\n\
             [[routes]]\npath_prefix = \"/\"\nservice = \"dead\"\n",
            head()
        );
        let p = proxy(&text).await;
        ready(&p, "dead", 1).await;
        let addr = p.http_addrs[0];
        let cl = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
        let chunks = futures_util::stream::iter(
            (0..4).map(|_| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(b"chunk")))),
        );
        let req = Request::post(format!("http://{addr}/upload"))
            .body(StreamBody::new(chunks))
            .expect("req");
        let rsp = tokio::time::timeout(Duration::from_secs(5), cl.request(req))
            .await
            .expect("in time")
            .expect("answer");
        assert_eq!(rsp.status(), 502);
        let body = rsp.into_body().collect().await.expect("body").to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("dead"));
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_endpoint_is_504() {
    bounded(async {
        let a = Backend::start("a").await;
        let p = proxy(&one_service("round_robin", &[&a], None, "response_timeout = \"100ms\"")).await;
        ready(&p, "web", 1).await;
        let addr = p.http_addrs[0];
        let cl = client();
        let t = Instant::now();
        let r = get(&cl, addr, "/?delay_ms=2000", &[]).await.expect("request");
        assert_eq!(r.status, 504, "{}", r.body);
        assert!(r.body.contains("web"), "body names the service: {}", r.body);
        assert!(t.elapsed() < Duration::from_millis(1000), "took {:?}", t.elapsed());
        let r = get(&cl, addr, "/?delay_ms=10", &[]).await.expect("request");
        assert_eq!(r.status, 200, "a fast answer passes: {}", r.body);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_and_host_passes_through() {
    bounded(async {
        let a = Backend::start("a").await;
        let p = proxy(&one_service("round_robin", &[&a], None, "")).await;
        ready(&p, "web", 1).await;
        let addr = p.http_addrs[0];
        let cl = client();
        let r = get(
            &cl,
            addr,
            "/headers",
            &[
                ("host", "app.example:8443"),
                ("x-forwarded-for", "10.9.8.7"),
                ("connection", "x-secret"),
                ("x-secret", "1"),
            ],
        )
        .await
        .expect("request");
        assert_eq!(r.status, 200);
        let lines: Vec<&str> = r.body.lines().collect();
        for want in [
            "host: app.example:8443",
            "x-forwarded-for: 10.9.8.7, 127.0.0.1",
            "x-forwarded-proto: http",
            "x-forwarded-host: app.example:8443",
        ] {
            assert!(lines.contains(&want), "backend saw no {want:?}:\n{}", r.body);
        }
        assert!(
            !r.body.contains("x-secret"),
            "a header named by Connection went through:\n{}",
            r.body
        );
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_and_the_proxy_keeps_serving() {
    bounded(async {
        let a = Backend::start("a").await;
        let p = proxy(&one_service("round_robin", &[&a], None, "")).await;
        ready(&p, "web", 1).await;
        let addr = p.http_addrs[0];
        for garbage in [
            &b"GARBAGE\x01\x02 nonsense\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nbad header line\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
        ] {
            let out = raw(addr, garbage).await.expect("the proxy accepts the connection");
            let text = String::from_utf8_lossy(&out);
            assert!(
                text.starts_with("HTTP/1.1 4"),
                "{:?} got {text:?}",
                String::from_utf8_lossy(garbage)
            );
        }
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nx-big: {}\r\n\r\n", "x".repeat(128 * 1024));
        let out = raw(addr, big.as_bytes())
            .await
            .expect("the proxy accepts the connection");
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 4"), "an oversized head got {text:?}");
        let r = get(&client(), addr, "/", &[]).await.expect("the proxy still serves");
        assert_eq!(r.status, 200);
        assert_eq!(a.hits(), 1, "no malformed request reached the backend");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_passes_through_and_echoes() {
    bounded(async {
        let a = Backend::start("a").await;
        let p = proxy(&one_service("round_robin", &[&a], None, "")).await;
        ready(&p, "web", 1).await;
        let addr = p.http_addrs[0];
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn.with_upgrades());
        let req = Request::get("/ws")
            .header("host", "app.example")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("req");
        let rsp = sender.send_request(req).await.expect("response");
        assert_eq!(rsp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(rsp.headers()["upgrade"], "websocket");
        let up = tokio::time::timeout(Duration::from_secs(2), hyper::upgrade::on(rsp))
            .await
            .expect("in time")
            .expect("upgraded");
        let mut io = TokioIo::new(up);
        for msg in [&b"ping"[..], b"second message", &[0u8, 1, 2, 255]] {
            io.write_all(msg).await.expect("write");
            let mut got = vec![0u8; msg.len()];
            tokio::time::timeout(Duration::from_secs(2), io.read_exact(&mut got))
                .await
                .expect("echo in time")
                .expect("read");
            assert_eq!(got, msg);
        }
        // Half-close: the echo side sees EOF and closes its side too.
        io.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), io.read_to_end(&mut rest))
            .await
            .expect("EOF in time")
            .expect("read");
        assert!(rest.is_empty());
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_client() {
    bounded(async {
        let a = Backend::start("a").await;
        let p = proxy(&one_service("round_robin", &[&a], None, "")).await;
        ready(&p, "web", 1).await;
        let addr = p.http_addrs[0];
        let cl = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<Bytes>>();
        for i in 0..5 {
            let req = Request::get(format!("http://{addr}/headers?i={i}"))
                .body(Full::new(Bytes::new()))
                .expect("req");
            let rsp = tokio::time::timeout(Duration::from_secs(3), cl.request(req))
                .await
                .expect("in time")
                .expect("answer");
            assert_eq!(rsp.version(), Version::HTTP_2);
            assert_eq!(rsp.status(), 200);
            let body = String::from_utf8_lossy(&rsp.into_body().collect().await.expect("body").to_bytes()).into_owned();
            assert!(
                body.contains(&format!("host: {addr}")),
                "the authority became Host:\n{body}"
            );
        }
        assert_eq!(a.hits(), 5);
        p.shutdown().await;
    })
    .await;
}

/// A TCP echo server: echoes until EOF, then closes its write side.
async fn tcp_echo() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A proxy with one TCP service in front of an echo backend; its TCP listen address.
async fn tcp_proxy() -> (crate::stack::Started, std::net::SocketAddr) {
    let echo = tcp_echo().await;
    let text = format!(
        "{}[[services]]\nname = \"echo\"\nendpoints = [\"{echo}\"]\n\n[[tcp]]\nlisten = \"127.0.0.1:0\"\nservice = \"echo\"\n",
        head()
    );
    let p = proxy(&text).await;
    let listen = p.tcp_addrs[0];
    ready(&p, "echo", 1).await;
    (p, listen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_service_copies_both_ways_and_honours_half_close() {
    bounded(async {
        let (p, listen) = tcp_proxy().await;
        // Small: write, half-close, still read the echo.
        let mut s = TcpStream::connect(listen).await.expect("connect to the TCP listener");
        s.write_all(b"hello over tcp").await.expect("write");
        s.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(got, b"hello over tcp");
        // Large, both directions at once.
        let s = TcpStream::connect(listen).await.expect("connect");
        let (mut r, mut w) = s.into_split();
        let data: Vec<u8> = (0..512 * 1024).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.expect("write");
            w.shutdown().await.expect("half-close");
        });
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut got))
            .await
            .expect("in time")
            .expect("read");
        writer.await.expect("join");
        assert!(
            got == data,
            "echoed {} of {} bytes, or changed them",
            got.len(),
            data.len()
        );
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_open_tcp_connections() {
    bounded(async {
        let (p, listen) = tcp_proxy().await;
        let mut s = TcpStream::connect(listen).await.expect("connect to the TCP listener");
        s.write_all(b"before").await.expect("write");
        let mut buf = [0u8; 6];
        s.read_exact(&mut buf).await.expect("echo");
        // Shut down while the connection is open: it keeps working until it ends.
        let stopping = tokio::spawn(p.shutdown());
        let t = Instant::now();
        while TcpStream::connect(listen).await.is_ok() {
            assert!(t.elapsed() < Duration::from_secs(3), "new connections during shutdown");
            tokio::task::yield_now().await;
        }
        s.write_all(b"during").await.expect("write during shutdown");
        s.read_exact(&mut buf).await.expect("echo during shutdown");
        assert_eq!(&buf, b"during");
        // The grace period is 10 s: only the connection's end can end the shutdown now.
        assert!(!stopping.is_finished(), "shutdown waits for the open TCP connection");
        s.shutdown().await.expect("half-close");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.expect("read to end");
        tokio::time::timeout(Duration::from_secs(3), stopping)
            .await
            .expect("shutdown ends once the connection closed")
            .expect("join");
    })
    .await;
}
