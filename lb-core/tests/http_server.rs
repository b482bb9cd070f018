//! lb-core's HTTP/1.1 server connection against raw clients on loopback: keep-alive and
//! pipelining, request framing (length, chunked with trailers), response framing
//! (length, chunked, close-delimited for HTTP/1.0, none for HEAD), `100 Continue`,
//! refusals (400, 431, 408), a client that goes away mid-request, and HTTP/2's preface.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use lb_core::http::server::{Builder, Ended, RequestBody};
use lb_core::http::{boxed, full, Body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Every wait in these tests ends by this.
const DEADLINE: Duration = Duration::from_secs(10);

/// Serves one connection with `builder` and `handler`; returns the address and the
/// connection's task.
async fn serve<F, Fut>(builder: Builder, handler: F) -> (SocketAddr, JoinHandle<Result<Ended, lb_core::BoxError>>)
where
    F: Fn(Request<RequestBody>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let handler = Arc::new(handler);
        let svc = hyper::service::service_fn(move |req| {
            let rsp = handler(req);
            async move { Ok::<_, Infallible>(rsp.await) }
        });
        builder.serve_connection(tcp, svc).await
    });
    (addr, task)
}

/// Echoes the method, path and body, with the trailers' names.
async fn echo(req: Request<RequestBody>) -> Response<Body> {
    let head = format!("{} {}", req.method(), req.uri());
    let collected = req.into_body().collect().await.expect("the body");
    let trailers = collected
        .trailers()
        .map(|t| t.keys().map(|k| k.as_str()).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    Response::new(full(format!("{head} [{body}] trailers={trailers}")))
}

/// Reads until `done` says the text is complete, or the connection closes.
async fn read_until(c: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        let mut buf = [0u8; 4096];
        loop {
            if done(&String::from_utf8_lossy(&out)) {
                break;
            }
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the answer within the deadline");
    String::from_utf8_lossy(&out).into_owned()
}

/// A client connection that has sent `bytes`.
async fn connect_and_send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(bytes).await.unwrap();
    c
}

/// Reads until the server closes the connection.
async fn read_to_close(c: &mut TcpStream) -> String {
    read_until(c, |_| false).await
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (addr, _task) = serve(Builder::new(), echo).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    // Two requests in one write, the second with a body framed by its length.
    c.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nPOST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let text = read_until(&mut c, |t| t.contains("[hello]")).await;
    let one = text.find("GET /one []").expect("the first answer");
    let two = text.find("POST /two [hello]").expect("the second answer");
    assert!(one < two, "{text}");
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
    assert!(text.contains("content-length: 21\r\n"), "framed by length: {text}");
    assert!(text.contains("\r\ndate: "), "a Date field: {text}");
    // The connection is still open for a third.
    c.write_all(b"GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_close(&mut c).await;
    assert!(text.contains("GET /three []"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
}

#[tokio::test]
async fn a_chunked_request_body_with_trailers_is_decoded() {
    let (addr, _task) = serve(Builder::new(), echo).await;
    let mut c = connect_and_send(
        addr,
        b"PUT /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    )
    .await;
    c.write_all(b"2;ext=1\r\nde\r\n0\r\nx-sum: 5\r\n\r\n").await.unwrap();
    let text = read_until(&mut c, |t| t.contains("trailers=x-sum")).await;
    assert!(text.contains("PUT /up [abcde] trailers=x-sum"), "{text}");
}

#[tokio::test]
async fn a_body_of_unknown_length_is_chunked_to_http11_and_closes_http10() {
    let streamed = |_req: Request<RequestBody>| async {
        let parts = ["ab", "cd"].map(|p| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(p))));
        Response::new(boxed(StreamBody::new(futures_util::stream::iter(parts))))
    };
    let (addr, _task) = serve(Builder::new(), streamed).await;
    let mut c = connect_and_send(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let text = read_until(&mut c, |t| t.ends_with("0\r\n\r\n")).await;
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"), "{text:?}");

    let (addr, _task) = serve(Builder::new(), streamed).await;
    let mut c = connect_and_send(addr, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await;
    let text = read_to_close(&mut c).await;
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nabcd"), "ended by closing: {text:?}");
}

#[tokio::test]
async fn head_answers_carry_the_length_and_no_body() {
    let (addr, _task) = serve(Builder::new(), |_req| async {
        let mut rsp = Response::new(full(""));
        rsp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from_static("42"));
        rsp
    })
    .await;
    let mut c = connect_and_send(
        addr,
        b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nHEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = read_to_close(&mut c).await;
    assert_eq!(text.matches("content-length: 42\r\n").count(), 2, "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no body bytes: {text:?}");
}

#[tokio::test]
async fn expect_100_continue_is_answered_when_the_body_is_read() {
    let (addr, _task) = serve(Builder::new(), echo).await;
    let mut c = connect_and_send(
        addr,
        b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    )
    .await;
    // The body is sent only after the interim answer, as a client that waits does.
    let interim = read_until(&mut c, |t| t.ends_with("\r\n\r\n")).await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"ok").await.unwrap();
    let text = read_until(&mut c, |t| t.contains("[ok]")).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
}

#[tokio::test]
async fn malformed_and_oversized_heads_are_refused_and_closed() {
    for (request, status) in [
        (&b"GARBAGE\x01 nonsense\r\n\r\n"[..], "400"),
        (b"GET / HTTP/1.1\r\nbad line\r\n\r\n", "400"),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "400",
        ),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "400"),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "400"),
    ] {
        let (addr, _task) = serve(Builder::new(), echo).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(request).await.unwrap();
        let text = read_to_close(&mut c).await;
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{:?}: {text}",
            String::from_utf8_lossy(request)
        );
        assert!(text.contains("connection: close\r\n"), "{text}");
    }
    let (addr, _task) = serve(Builder::new().max_head_bytes(1024), echo).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let long = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "x".repeat(4096));
    c.write_all(long.as_bytes()).await.unwrap();
    let text = read_to_close(&mut c).await;
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_head_that_stalls_gets_408() {
    let (addr, task) = serve(Builder::new().header_read_timeout(Duration::from_secs(5)), echo).await;
    let mut c = connect_and_send(addr, b"GET / HTTP/1.1\r\nHost:").await;
    let started = tokio::time::Instant::now();
    let text = read_to_close(&mut c).await;
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(started.elapsed() >= Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(matches!(task.await.unwrap(), Ok(Ended::Closed)));
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_request() {
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let started_tx = std::sync::Mutex::new(Some(started_tx));
    let flag = dropped.clone();
    let (addr, task) = serve(Builder::new(), move |_req| {
        let guard = Dropped(flag.clone());
        if let Some(tx) = started_tx.lock().unwrap().take() {
            let _ = tx.send(());
        }
        async move {
            let _guard = guard;
            std::future::pending::<Response<Body>>().await
        }
    })
    .await;
    let c = connect_and_send(addr, b"GET /forever HTTP/1.1\r\nHost: a\r\n\r\n").await;
    tokio::time::timeout(DEADLINE, started_rx).await.unwrap().unwrap();
    drop(c);
    let ended = tokio::time::timeout(DEADLINE, task).await.expect("the connection ends");
    assert!(matches!(ended.unwrap(), Ok(Ended::Closed)));
    assert!(dropped.load(Ordering::SeqCst), "the request's future was dropped");
}

#[tokio::test]
async fn http2_preface_hands_the_connection_over_with_its_bytes() {
    let (addr, task) = serve(Builder::new().http2_preface(true), echo).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // In two parts: the first is not yet enough to tell.
    c.write_all(&PREFACE[..10]).await.unwrap();
    tokio::task::yield_now().await;
    c.write_all(&PREFACE[10..]).await.unwrap();
    c.write_all(b"more").await.unwrap();
    let ended = tokio::time::timeout(DEADLINE, task)
        .await
        .expect("handed over")
        .unwrap();
    let Ok(Ended::Http2(mut io)) = ended else {
        panic!("not handed over: {ended:?}");
    };
    let mut got = vec![0u8; PREFACE.len() + 4];
    tokio::time::timeout(DEADLINE, io.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..PREFACE.len()], PREFACE);
    assert_eq!(&got[PREFACE.len()..], b"more");
    // Without the option, the preface is a malformed HTTP/1.1 request.
    let (addr, _task) = serve(Builder::new(), echo).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(PREFACE).await.unwrap();
    let text = read_to_close(&mut c).await;
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
}

#[tokio::test]
async fn graceful_shutdown_closes_an_idle_connection_and_finishes_a_busy_one() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shut_tx, shut_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let svc = hyper::service::service_fn(move |_req: Request<RequestBody>| {
            let mut release = release_rx.clone();
            async move {
                let _ = release.wait_for(|r| *r).await;
                Ok::<_, Infallible>(Response::new(full("done")))
            }
        });
        let conn = Builder::new().serve_connection(tcp, svc);
        tokio::pin!(conn);
        tokio::select! {
            biased;
            _ = shut_rx => conn.as_mut().graceful_shutdown(),
            r = conn.as_mut() => return r,
        }
        conn.await
    });
    let mut c = connect_and_send(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    // Wait until the request is in hand: the service is waiting for the release.
    tokio::time::timeout(DEADLINE, async {
        while release_tx.receiver_count() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the request reached the service");
    shut_tx.send(()).unwrap();
    release_tx.send_replace(true);
    let text = read_to_close(&mut c).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(text.ends_with("done"), "{text}");
    assert!(matches!(task.await.unwrap(), Ok(Ended::Closed)));
}

#[tokio::test]
async fn a_response_can_stream_the_request_body_back_as_it_comes() {
    // The response's body is the request's: written while it is still being read.
    let (addr, _task) = serve(Builder::new(), |req: Request<RequestBody>| async move {
        Response::new(boxed(req.into_body()))
    })
    .await;
    let mut c = connect_and_send(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
    )
    .await;
    // The first part comes back before the second is sent.
    let text = read_until(&mut c, |t| t.contains("first")).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    c.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await.unwrap();
    let text = read_until(&mut c, |t| t.ends_with("0\r\n\r\n")).await;
    assert!(text.contains("second"), "{text}");
}

#[tokio::test]
async fn an_early_answer_sends_no_100_continue_and_closes_when_the_body_is_not_here() {
    let (addr, _task) = serve(Builder::new(), |_req| async {
        let mut rsp = Response::new(full("too large"));
        *rsp.status_mut() = http::StatusCode::PAYLOAD_TOO_LARGE;
        rsp
    })
    .await;
    let mut c = connect_and_send(
        addr,
        b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n",
    )
    .await;
    let text = read_to_close(&mut c).await;
    assert!(text.starts_with("HTTP/1.1 413 "), "no interim answer first: {text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(
        text.contains("connection: close\r\n"),
        "the unread body ends the connection: {text}"
    );
    // A small body that did arrive whole is passed over, and the connection kept.
    let (addr, _task) = serve(Builder::new(), |req: Request<RequestBody>| async move {
        Response::new(full(format!("{}", req.uri())))
    })
    .await;
    let mut c = connect_and_send(addr, b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    let text = read_to_close(&mut c).await;
    assert!(text.contains("\r\n\r\n/a") && text.ends_with("\r\n\r\n/b"), "{text}");
}

#[tokio::test]
async fn a_response_that_asks_to_close_closes() {
    let (addr, task) = serve(Builder::new(), |_req| async {
        let mut rsp = Response::new(full("bye"));
        rsp.headers_mut()
            .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        rsp
    })
    .await;
    let mut c = connect_and_send(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let text = read_to_close(&mut c).await;
    assert!(text.ends_with("bye"), "{text}");
    let ended = tokio::time::timeout(DEADLINE, task)
        .await
        .expect("closed by the server");
    assert!(matches!(ended.unwrap(), Ok(Ended::Closed)));
}

#[tokio::test]
async fn requests_sent_before_the_client_closes_its_side_are_answered() {
    let (addr, _task) = serve(Builder::new(), echo).await;
    let mut c = connect_and_send(
        addr,
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    c.shutdown().await.unwrap();
    let text = read_to_close(&mut c).await;
    assert!(text.contains("GET /a []") && text.contains("GET /b []"), "{text}");
}
