//! Every wait on the client side has a deadline, and open connections have a cap.
//!
//! Where time is the subject the tests run on Tokio's paused clock (one thread): the
//! proxy, its backends and the clients all run on the test's runtime, so the clock moves
//! only when every socket is quiet, and a deadline fires exactly when it is due.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::support::{
    bounded, bounded_paused, client, endpoint_state, eventually, get, read_head, ready, service_with, Backend,
};

/// Reads until EOF or a reset; how long that took.
async fn until_closed(s: &mut TcpStream) -> Duration {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return t.elapsed(),
            Ok(_) => {}
        }
    }
}

#[tokio::test(start_paused = true)]
async fn silent_and_stalled_openings_are_closed_after_header_read_timeout() {
    bounded_paused(Duration::from_secs(60), async {
        let a = Backend::start("a").await;
        let p = super::support::proxy(&service_with("header_read_timeout = \"3s\"", &[&a], "")).await;
        let addr = p.http_addrs[0];
        for opening in [
            &b""[..],
            // Inside the HTTP/2 preface, then after it (no SETTINGS).
            b"PRI * HTTP/2.0\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            // Inside an HTTP/1.1 head.
            b"GET / HTTP/1.1\r\nHost: a\r\n",
        ] {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(opening).await.expect("write");
            let took = until_closed(&mut s).await;
            let what = String::from_utf8_lossy(opening);
            assert!(took >= Duration::from_secs(3), "{what:?} closed early, after {took:?}");
            assert!(took <= Duration::from_secs(5), "{what:?} closed after {took:?}");
        }
        assert_eq!(a.hits(), 0);
        eventually("every connection to be gone", Duration::from_secs(5), || {
            p.open_connections() == 0
        })
        .await;
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_closed_after_idle_timeout_http1_and_http2() {
    bounded_paused(Duration::from_secs(60), async {
        let a = Backend::start("a").await;
        let p = super::support::proxy(&service_with(
            "header_read_timeout = \"60s\"\nidle_timeout = \"5s\"",
            &[&a],
            "",
        ))
        .await;
        ready(&p, "web", 1).await;
        let addr = p.http_addrs[0];
        // HTTP/1.1, kept alive after one answer.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("write");
        let head = read_head(&mut s, Duration::from_secs(5)).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let took = until_closed(&mut s).await;
        assert!(
            took >= Duration::from_secs(4) && took <= Duration::from_secs(7),
            "HTTP/1.1 idle close after {took:?}"
        );
        // HTTP/2 with prior knowledge: one request, then quiet.
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
        let conn = tokio::spawn(conn);
        let rsp = send
            .send_request(
                Request::get(format!("http://{addr}/"))
                    .body(Empty::<Bytes>::new())
                    .expect("req"),
            )
            .await
            .expect("answer");
        assert_eq!(rsp.status(), 200);
        let t = Instant::now();
        let _ = conn.await;
        let took = t.elapsed();
        assert!(
            took >= Duration::from_secs(4) && took <= Duration::from_secs(7),
            "HTTP/2 idle close (GOAWAY) after {took:?}"
        );
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_request_body_that_stops_gets_408_and_the_endpoint_is_not_blamed() {
    bounded_paused(Duration::from_secs(60), async {
        let a = Backend::start("a").await;
        // One failure would eject the endpoint: a blamed endpoint shows at once.
        let p = super::support::proxy(&service_with(
            "body_read_timeout = \"2s\"",
            &[&a],
            "retries = 0\noutlier = { consecutive_failures = 1, max_ejection_percent = 100 }",
        ))
        .await;
        ready(&p, "web", 1).await;
        let addr = p.http_addrs[0];
        for (what, opening, reaches_backend) in [
            // Small and sized: buffered by the proxy for a retry, never sent.
            (
                "sized",
                &b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc"[..],
                false,
            ),
            // Chunked: streamed to the endpoint, which waits for the rest.
            (
                "chunked",
                b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
                true,
            ),
        ] {
            let before = a.hits();
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(opening).await.expect("write");
            let t = Instant::now();
            let head = read_head(&mut s, Duration::from_secs(30)).await;
            let took = t.elapsed();
            assert!(head.starts_with("HTTP/1.1 408"), "{what}: {head}");
            assert!(
                took >= Duration::from_secs(2) && took < Duration::from_secs(4),
                "{what}: after {took:?}"
            );
            assert!(
                !head.contains(&a.addr.to_string()),
                "{what}: the endpoint is named: {head}"
            );
            assert_eq!(a.hits() - before, usize::from(reaches_backend), "{what}");
            eventually("the endpoint's request to end", Duration::from_secs(5), || {
                a.in_flight() == 0
            })
            .await;
            let (failures, health) = endpoint_state(&p, "web", a.addr);
            assert_eq!(failures, 0, "{what}: the endpoint was charged with the client's stall");
            assert!(!matches!(health, lb_core::Health::Ejected), "{what}: {health:?}");
        }
        let r = get(&client(), addr, "/", &[]).await.expect("request");
        assert_eq!(r.status, 200, "{}", r.body);
        p.shutdown().await;
    })
    .await;
}

/// A backend whose answer to every request is an endless body of 64 KiB chunks, or one
/// chunk every `every`; `gone` turns true when a response stream is dropped (its
/// connection ended).
async fn streaming_backend(every: Option<Duration>) -> (std::net::SocketAddr, Arc<AtomicBool>, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let gone = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let (g, n) = (gone.clone(), sent.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (g, n) = (g.clone(), n.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                    struct Flag(Arc<AtomicBool>);
                    impl Drop for Flag {
                        fn drop(&mut self) {
                            self.0.store(true, Ordering::SeqCst);
                        }
                    }
                    let flag = Flag(g.clone());
                    let n = n.clone();
                    let chunks = futures_util::stream::unfold((flag, n), move |(flag, n)| async move {
                        if let Some(d) = every {
                            tokio::time::sleep(d).await;
                        }
                        n.fetch_add(1, Ordering::SeqCst);
                        let frame = Frame::data(Bytes::from_static(&[b'x'; 65536]));
                        Some((Ok::<_, Infallible>(frame), (flag, n)))
                    });
                    async move { Ok::<_, Infallible>(Response::new(StreamBody::new(chunks))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, gone, sent)
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_reads_is_cut_after_send_timeout_and_frees_the_endpoint() {
    bounded_paused(Duration::from_secs(120), async {
        let (backend, gone, _) = streaming_backend(None).await;
        let text = format!(
            "{}[[services]]\nname = \"web\"\nendpoints = [\"{backend}\"]\n\n[[routes]]\nservice = \"web\"\n",
            super::support::head_with("send_timeout = \"5s\"")
        );
        let p = super::support::proxy(&text).await;
        ready(&p, "web", 1).await;
        let mut s = TcpStream::connect(p.http_addrs[0]).await.expect("connect");
        s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        // Never read: the buffers fill, then nothing moves until the deadline.
        let t = Instant::now();
        eventually("the endpoint's response to be dropped", Duration::from_secs(60), || {
            gone.load(Ordering::SeqCst)
        })
        .await;
        assert!(t.elapsed() >= Duration::from_secs(5), "cut after {:?}", t.elapsed());
        eventually("the client connection to be closed", Duration::from_secs(5), || {
            p.open_connections() == 0
        })
        .await;
        assert_eq!(
            p.state.load().upstream("web").expect("web").balancer.status().endpoints[0].in_flight,
            0,
            "the endpoint's request is over"
        );
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_endpoint_is_not_a_client_that_stopped_reading() {
    bounded_paused(Duration::from_secs(60), async {
        // One chunk every 3 s against a 1 s send_timeout: the waits are the endpoint's.
        let (backend, _, sent) = streaming_backend(Some(Duration::from_secs(3))).await;
        let text = format!(
            "{}[[services]]\nname = \"web\"\nendpoints = [\"{backend}\"]\nresponse_timeout = \"0s\"\n\n\
             [[routes]]\nservice = \"web\"\n",
            super::support::head_with("send_timeout = \"1s\"")
        );
        let p = super::support::proxy(&text).await;
        ready(&p, "web", 1).await;
        let cl = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let rsp = cl
            .request(
                Request::get(format!("http://{}/slow", p.http_addrs[0]))
                    .body(Empty::new())
                    .expect("req"),
            )
            .await
            .expect("answer");
        assert_eq!(rsp.status(), 200);
        let mut body = rsp.into_body();
        let mut got = 0;
        while got < 5 * 65536 {
            let frame = body.frame().await.expect("more body").expect("no error");
            got += frame.data_ref().map_or(0, |d| d.len());
        }
        assert!(sent.load(Ordering::SeqCst) >= 5);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_idle_connections_make_room_and_busy_ones_are_served() {
    bounded(async {
        let a = Backend::start("a").await;
        let p = super::support::proxy(&service_with(
            "max_connections = 4\nheader_read_timeout = \"60s\"",
            &[&a],
            "",
        ))
        .await;
        ready(&p, "web", 1).await;
        let addr = p.http_addrs[0];
        // Four connections that say nothing fill the cap...
        let mut silent = Vec::new();
        for _ in 0..4 {
            silent.push(TcpStream::connect(addr).await.expect("connect"));
        }
        eventually("the four to be accepted", Duration::from_secs(3), || {
            p.open_connections() == 4
        })
        .await;
        // ...and a real client is served all the same: idle ones make room.
        let r = get(&client(), addr, "/", &[]).await.expect("served at the cap");
        assert_eq!(r.status, 200, "{}", r.body);
        for s in &mut silent {
            let took = until_closed(s).await;
            assert!(took < Duration::from_secs(5), "a silent connection kept its slot");
        }
        // Four requests in flight hold every slot: a fifth connection waits, none is cut.
        let held: Vec<_> = (0..4)
            .map(|_| {
                let cl = client();
                tokio::spawn(async move { get(&cl, addr, "/gate", &[]).await })
            })
            .collect();
        eventually("four requests in flight", Duration::from_secs(3), || a.in_flight() == 4).await;
        assert!(p.open_connections() <= 4, "{} open", p.open_connections());
        let fifth = tokio::spawn(async move { get(&client(), addr, "/after", &[]).await });
        a.release();
        for h in held {
            let r = h.await.expect("join").expect("a held request completes");
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let r = fifth
            .await
            .expect("join")
            .expect("the fifth is served once a slot frees");
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(p.open_connections() <= 4);
        p.shutdown().await;
    })
    .await;
}

#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit() {
    let got = crate::server::raise_fd_limit();
    #[cfg(unix)]
    {
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(got, Some(now.current.unwrap_or(u64::MAX)));
        if let (Some(soft), Some(hard)) = (now.current, now.maximum) {
            assert!(soft == hard || soft >= 10_240, "soft {soft}, hard {hard}");
        }
    }
    #[cfg(not(unix))]
    assert_eq!(got, None);
}
