//! Saying no to bad requests: Host rules (RFC 9112 §3.2), upgrades only where a route
//! allows them (never h2c), Forwarded / X-Forwarded-For as configured, TRACE not retried.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::support::{bounded, client, get, head, head_with, proxy, ready, send, service_with, Backend};

/// Sends `bytes` on a fresh connection and reads the answer (until EOF or 2 s).
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    // One answer is enough.
                    let text = String::from_utf8_lossy(&out);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(str::to_owned)
                            })
                            .and_then(|n| n.trim().parse::<usize>().ok());
                        if len.is_some_and(|n| body.len() >= n) {
                            break;
                        }
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A config with a host route `app.example` to `web` and a catch-all to `other`.
fn two_routes(web: &Backend, other: &Backend) -> String {
    format!(
        "{}[[services]]\nname = \"web\"\nendpoints = [\"{}\"]\n\n\
         [[services]]\nname = \"other\"\nendpoints = [\"{}\"]\n\n\
         [[routes]]\nhost = \"app.example\"\nservice = \"web\"\n\n\
         [[routes]]\nservice = \"other\"\n",
        head(),
        web.addr,
        other.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_rules_of_rfc_9112() {
    bounded(async {
        let web = Backend::start("web").await;
        let other = Backend::start("other").await;
        let p = proxy(&two_routes(&web, &other)).await;
        ready(&p, "web", 1).await;
        ready(&p, "other", 1).await;
        let addr = p.http_addrs[0];
        for (what, request) in [
            ("no Host", "GET /headers HTTP/1.1\r\n\r\n"),
            (
                "two Hosts",
                "GET /headers HTTP/1.1\r\nHost: app.example\r\nHost: evil.example\r\n\r\n",
            ),
            (
                "the same Host twice",
                "GET /headers HTTP/1.1\r\nHost: app.example\r\nHost: app.example\r\n\r\n",
            ),
            ("user info", "GET /headers HTTP/1.1\r\nHost: me@app.example\r\n\r\n"),
            ("a bad port", "GET /headers HTTP/1.1\r\nHost: app.example:80a\r\n\r\n"),
            (
                "a port too large",
                "GET /headers HTTP/1.1\r\nHost: app.example:65536\r\n\r\n",
            ),
            (
                "no Host with an absolute URI",
                "GET http://app.example/headers HTTP/1.1\r\n\r\n",
            ),
        ] {
            let answer = exchange(addr, request.as_bytes()).await;
            assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
        }
        assert_eq!(web.hits() + other.hits(), 0, "no refused request reached an endpoint");
        // The absolute form's authority wins over Host, and is forwarded as the one Host.
        let answer = exchange(
            addr,
            b"GET http://app.example:8080/headers HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains("x-backend: web"),
            "routed by the URI's authority: {answer}"
        );
        assert!(answer.contains("host: app.example:8080\n"), "{answer}");
        assert!(!answer.contains("elsewhere"), "{answer}");
        // A trailing dot is the same name; case does not matter.
        let answer = exchange(addr, b"GET /headers HTTP/1.1\r\nHost: APP.example.:80\r\n\r\n").await;
        assert!(answer.contains("x-backend: web"), "{answer}");
        // HTTP/1.0 may leave Host out: the host-less route.
        let answer = exchange(addr, b"GET / HTTP/1.0\r\n\r\n").await;
        assert!(
            answer.starts_with("HTTP/1.0 200") && answer.contains("x-backend: other"),
            "{answer}"
        );
        // HTTP/2: :authority wins over a Host header.
        let cl = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<Bytes>>();
        let port = addr.port();
        let req = Request::get(format!("http://app.example:{port}/headers"))
            .header("host", "elsewhere.example")
            .body(Full::new(Bytes::new()))
            .expect("req");
        // Connect to the proxy whatever the name says.
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2");
        tokio::spawn(conn);
        let rsp = h2.send_request(req).await.expect("answer");
        assert_eq!(rsp.version(), Version::HTTP_2);
        assert_eq!(rsp.headers()["x-backend"], "web");
        let body = rsp.into_body().collect().await.expect("body").to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains(&format!("host: app.example:{port}\n")), "{body}");
        drop(cl);
        p.shutdown().await;
    })
    .await;
}

/// Sends an upgrade request for `proto` (with `extra` headers) on its own connection;
/// the status and the headers the backend saw (`/headers`).
async fn upgrade(addr: std::net::SocketAddr, proto: &str, extra: &[(&str, &str)]) -> (StatusCode, String) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn.with_upgrades());
    let mut req = Request::get("/headers")
        .header("host", "app.example")
        .header("connection", "Upgrade")
        .header("upgrade", proto);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let rsp = sender
        .send_request(req.body(Empty::<Bytes>::new()).expect("req"))
        .await
        .expect("response");
    let status = rsp.status();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return (status, String::new());
    }
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_pass_only_where_the_route_allows_and_never_h2c() {
    bounded(async {
        let a = Backend::start("a").await;
        let text = format!(
            "{}[[services]]\nname = \"web\"\nendpoints = [\"{}\"]\n\n\
             [[routes]]\npath_prefix = \"/\"\nservice = \"web\"\n\n\
             [[routes]]\npath_prefix = \"/echo\"\nservice = \"web\"\nupgrades = [\"x-echo\"]\n",
            head(),
            a.addr
        );
        let p = proxy(&text).await;
        ready(&p, "web", 1).await;
        let addr = p.http_addrs[0];
        // WebSocket passes by default (the backend answers 101 to any Upgrade it sees).
        assert_eq!(upgrade(addr, "websocket", &[]).await.0, StatusCode::SWITCHING_PROTOCOLS);
        // Another protocol is taken off the request: the backend sees a plain GET.
        let (status, seen) = upgrade(addr, "x-echo", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!seen.contains("upgrade"), "the backend saw an upgrade:\n{seen}");
        // h2c never passes, nor its settings.
        let (status, seen) = upgrade(
            addr,
            "h2c",
            &[
                ("connection", "HTTP2-Settings"),
                ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(!seen.contains("upgrade") && !seen.contains("http2-settings"), "{seen}");
        // A route that names the protocol passes it.
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn.with_upgrades());
        let req = Request::get("/echo")
            .header("host", "app.example")
            .header("connection", "upgrade")
            .header("upgrade", "x-echo")
            .body(Empty::<Bytes>::new())
            .expect("req");
        let rsp = sender.send_request(req).await.expect("response");
        assert_eq!(rsp.status(), StatusCode::SWITCHING_PROTOCOLS);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_the_client_did_not_ask_for_is_502() {
    bounded(async {
        // A backend that switches protocols whatever it is asked.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let backend = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n")
                        .await;
                    let _ = s.read(&mut buf).await;
                });
            }
        });
        let text = format!(
            "{}[[services]]\nname = \"web\"\nendpoints = [\"{backend}\"]\n\n[[routes]]\nservice = \"web\"\n",
            head()
        );
        let p = proxy(&text).await;
        ready(&p, "web", 1).await;
        for (what, request) in [
            ("a plain GET", "GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            (
                "an h2c upgrade",
                "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            ),
            (
                "a websocket upgrade",
                "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            ),
        ] {
            let answer = exchange(p.http_addrs[0], request.as_bytes()).await;
            assert!(answer.starts_with("HTTP/1.1 502"), "{what}: {answer}");
        }
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_append_by_default_and_replace_at_the_edge() {
    bounded(async {
        let a = Backend::start("a").await;
        let sent = [
            ("host", "app.example"),
            ("x-forwarded-for", "10.9.8.7"),
            ("forwarded", "for=10.9.8.7;proto=https"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ];
        let p = proxy(&service_with("", &[&a], "")).await;
        ready(&p, "web", 1).await;
        let r = get(&client(), p.http_addrs[0], "/headers", &sent)
            .await
            .expect("request");
        let lines: Vec<&str> = r.body.lines().collect();
        for want in [
            "x-forwarded-for: 10.9.8.7, 127.0.0.1",
            "forwarded: for=10.9.8.7;proto=https, for=127.0.0.1;proto=http",
            "x-forwarded-proto: http",
            "x-forwarded-host: app.example",
        ] {
            assert!(lines.contains(&want), "append: no {want:?}:\n{}", r.body);
        }
        p.shutdown().await;
        let p = proxy(&service_with("forwarded = \"replace\"", &[&a], "")).await;
        ready(&p, "web", 1).await;
        let r = get(&client(), p.http_addrs[0], "/headers", &sent)
            .await
            .expect("request");
        let lines: Vec<&str> = r.body.lines().collect();
        for want in [
            "x-forwarded-for: 127.0.0.1",
            "x-forwarded-proto: http",
            "x-forwarded-host: app.example",
        ] {
            assert!(lines.contains(&want), "replace: no {want:?}:\n{}", r.body);
        }
        assert!(
            !r.body.contains("10.9.8.7"),
            "replace keeps nothing of the client's:\n{}",
            r.body
        );
        assert!(!r.body.contains("forwarded:"), "{}", r.body);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_is_not_retried() {
    bounded(async {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        // Accepts, reads, closes without answering; counts connections.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let hole = l.local_addr().expect("addr");
        let conns = Arc::new(AtomicUsize::new(0));
        let n = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                n.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                });
            }
        });
        let text = format!(
            "{}[[services]]\nname = \"hole\"\nendpoints = [\"{hole}\"]\nretries = 2\n\
             outlier = {{ consecutive_failures = 0 }}\n\n[[routes]]\nservice = \"hole\"\n",
            head_with("")
        );
        let p = proxy(&text).await;
        ready(&p, "hole", 1).await;
        let cl = client();
        let trace = Request::builder()
            .method("TRACE")
            .uri(format!("http://{}/", p.http_addrs[0]))
            .body(Full::new(Bytes::new()))
            .expect("req");
        let r = send(&cl, trace).await.expect("request");
        assert_eq!(r.status, 502, "{}", r.body);
        assert_eq!(conns.load(Ordering::SeqCst), 1, "TRACE was sent once");
        let r = get(&cl, p.http_addrs[0], "/", &[]).await.expect("request");
        assert_eq!(r.status, 502, "{}", r.body);
        assert_eq!(conns.load(Ordering::SeqCst), 4, "GET is tried three times");
        p.shutdown().await;
    })
    .await;
}
