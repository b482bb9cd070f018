//! The `Balancer` over HTTP (feature `http`): the guard rides in the response body until
//! it ends, a 5xx or a broken body is a failure, the per-attempt timeout ends at the
//! response head, and the hash key and the endpoint to avoid come from the request's
//! extensions.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use lb_core::balance::RoundRobin;
use lb_core::discover;
use lb_core::error::is_timeout;
use lb_core::{connect_fn, Balancer, Endpoint};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tower::{Service, ServiceExt};

use support::{ep, healthy_backends, id, settle, status_of, streak_of, Down};

// === completion tracking ===

type Chunk = Result<Frame<Bytes>, Down>;
type ChanBody = StreamBody<ReceiverStream<Chunk>>;

/// An http echo: the response body is the request body; the status comes from the
/// request's `x-status` header (200 by default).
fn echo() -> impl Service<http::Request<ChanBody>, Response = http::Response<ChanBody>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + Sync {
    tower::service_fn(|req: http::Request<ChanBody>| async move {
        let status = req
            .headers()
            .get("x-status")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(200);
        let mut rsp = http::Response::new(req.into_body());
        *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap();
        Ok::<_, Infallible>(rsp)
    })
}

fn chan_request(status: u16) -> (mpsc::Sender<Chunk>, http::Request<ChanBody>) {
    let (tx, rx) = mpsc::channel(4);
    let req = http::Request::builder()
        .header("x-status", status.to_string())
        .body(StreamBody::new(ReceiverStream::new(rx)))
        .unwrap();
    (tx, req)
}

#[tokio::test(start_paused = true)]
async fn body_completion_holds_the_request_until_the_body_ends() {
    let lb = Balancer::builder(RoundRobin::new())
        .http()
        .spawn(discover::fixed([ep(0)]), connect_fn(|_: &Endpoint| echo()));
    lb.ready_endpoints(1).await;
    let (tx, req) = chan_request(200);
    let mut rsp = lb.clone().oneshot(req).await.unwrap();
    assert!(rsp.body().is_tracking());
    assert_eq!(
        status_of(&lb, 0).in_flight,
        1,
        "headers are in, the body is not: still in flight"
    );
    tx.send(Ok(Frame::data(Bytes::from_static(b"hello")))).await.unwrap();
    let frame = rsp.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "hello");
    assert_eq!(status_of(&lb, 0).in_flight, 1, "a body frame is not the end");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(status_of(&lb, 0).in_flight, 1, "a slow body stays in flight");
    drop(tx);
    assert!(rsp.body_mut().frame().await.is_none());
    assert!(!rsp.body().is_tracking());
    let s = status_of(&lb, 0);
    assert_eq!((s.in_flight, s.requests, s.failures), (0, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn complete_on_response_ends_at_the_headers() {
    // The contrast: without body tracking the request ends with the response head.
    let lb = Balancer::builder(RoundRobin::new()).spawn(discover::fixed([ep(0)]), connect_fn(|_: &Endpoint| echo()));
    lb.ready_endpoints(1).await;
    let (_tx, req) = chan_request(200);
    let _rsp = lb.clone().oneshot(req).await.unwrap();
    assert_eq!(status_of(&lb, 0).in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn body_completion_counts_5xx_and_body_errors_as_failures() {
    let lb = Balancer::builder(RoundRobin::new())
        .http()
        .spawn(discover::fixed([ep(0)]), connect_fn(|_: &Endpoint| echo()));
    lb.ready_endpoints(1).await;

    // A 503 whose body ends cleanly: one failure.
    let (tx, req) = chan_request(503);
    let rsp = lb.clone().oneshot(req).await.unwrap();
    assert_eq!(rsp.status(), 503);
    drop(tx);
    let _ = rsp.into_body().collect().await.unwrap();
    let s = status_of(&lb, 0);
    assert_eq!((s.in_flight, s.failures), (0, 1));

    // A 200 whose body fails midway: another.
    let (tx, req) = chan_request(200);
    let mut rsp = lb.clone().oneshot(req).await.unwrap();
    tx.send(Err(Down(0))).await.unwrap();
    assert!(rsp.body_mut().frame().await.unwrap().is_err());
    let s = status_of(&lb, 0);
    assert_eq!((s.in_flight, s.failures), (0, 2));

    // A 200 dropped before its end: a cancellation, not a failure.
    let (tx, req) = chan_request(200);
    let rsp = lb.clone().oneshot(req).await.unwrap();
    assert_eq!(status_of(&lb, 0).in_flight, 1);
    drop(rsp);
    drop(tx);
    let s = status_of(&lb, 0);
    assert_eq!((s.in_flight, s.requests, s.failures), (0, 3, 2));
}

/// An http echo whose response head waits for the `x-delay-ms` header's milliseconds.
fn delayed_echo(
) -> impl Service<http::Request<ChanBody>, Response = http::Response<ChanBody>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + Sync {
    tower::service_fn(|req: http::Request<ChanBody>| async move {
        let delay = req
            .headers()
            .get("x-delay-ms")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        Ok::<_, Infallible>(http::Response::new(req.into_body()))
    })
}

/// With body tracking the limit ends at the response head: a body may stream for
/// longer; a head that comes late is a timeout.
#[tokio::test(start_paused = true)]
async fn with_http_the_timeout_ends_at_the_response_head() {
    let lb = Balancer::builder(RoundRobin::new())
        .http()
        .timeout(Duration::from_millis(100))
        .spawn(discover::fixed([ep(0)]), connect_fn(|_: &Endpoint| delayed_echo()));
    lb.ready_endpoints(1).await;

    let (tx, mut req) = chan_request(200);
    req.headers_mut().insert("x-delay-ms", "50".parse().unwrap());
    let mut rsp = lb.clone().oneshot(req).await.expect("the head is in time");
    tokio::time::sleep(Duration::from_secs(5)).await;
    tx.send(Ok(Frame::data(Bytes::from_static(b"late")))).await.unwrap();
    let frame = rsp.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "late");
    drop(tx);
    assert!(rsp.body_mut().frame().await.is_none());
    let s = status_of(&lb, 0);
    assert_eq!(
        (s.in_flight, s.requests, s.failures),
        (0, 1, 0),
        "a slow body is no timeout"
    );

    let (_tx, mut req) = chan_request(200);
    req.headers_mut().insert("x-delay-ms", "150".parse().unwrap());
    let err = lb.clone().oneshot(req).await.unwrap_err();
    assert!(is_timeout(&*err), "{err}");
    let s = status_of(&lb, 0);
    assert_eq!((s.in_flight, s.requests, s.failures), (0, 2, 1));
}

/// A body that says it has ended (`is_end_stream`) ends the request: a reader such as
/// hyper does not poll it again, and dropping it then is no cancellation.
#[tokio::test(start_paused = true)]
async fn a_body_at_its_end_ends_the_request() {
    use http_body_util::{Empty, Full};
    let full = |_: &Endpoint| {
        tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"one frame"))))
        })
    };
    let lb = Balancer::builder(RoundRobin::new())
        .http()
        .spawn(discover::fixed([ep(0)]), connect_fn(full));
    lb.ready_endpoints(1).await;
    // A failure first, so that the successes below have a streak to end.
    lb.pick(None).unwrap().guard.fail();
    assert_eq!(streak_of(&lb, 0), 1);
    let mut rsp = lb.clone().oneshot(http::Request::new(())).await.unwrap();
    assert!(rsp.body().is_tracking());
    let frame = rsp.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "one frame");
    assert!(!rsp.body().is_tracking(), "its last frame ends it");
    drop(rsp);
    assert_eq!(streak_of(&lb, 0), 0, "a success");

    let empty = |_: &Endpoint| {
        tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(Empty::<Bytes>::new()))
        })
    };
    let lb = Balancer::builder(RoundRobin::new())
        .http()
        .spawn(discover::fixed([ep(0)]), connect_fn(empty));
    lb.ready_endpoints(1).await;
    lb.pick(None).unwrap().guard.fail();
    let rsp = lb.clone().oneshot(http::Request::new(())).await.unwrap();
    assert!(!rsp.body().is_tracking(), "an empty body ends with the head");
    assert_eq!(status_of(&lb, 0).in_flight, 0);
    assert_eq!(streak_of(&lb, 0), 0, "a success");
}

// === every key source honours Avoid ===

#[tokio::test(start_paused = true)]
async fn a_key_fn_honours_avoid_on_http_requests() {
    use lb_core::{Avoid, KeyFn};
    let key = KeyFn(|req: &http::Request<()>| {
        req.headers()
            .get("x-user")
            .map(|v| v.as_bytes().iter().fold(7u64, |h, b| h.wrapping_mul(31) ^ *b as u64))
    });
    let lb = Balancer::builder(lb_core::balance::Maglev::new())
        .protocol(key)
        .spawn(discover::fixed([ep(0), ep(1), ep(2)]), healthy_backends());
    let request = |avoid: Option<usize>| {
        let mut req = http::Request::builder().header("x-user", "alice").body(()).unwrap();
        if let Some(i) = avoid {
            req.extensions_mut().insert(Avoid(id(i)));
        }
        req
    };
    let home = lb.clone().oneshot(request(None)).await.unwrap();
    for _ in 0..5 {
        assert_eq!(
            lb.clone().oneshot(request(None)).await.unwrap(),
            home,
            "the key stays on its endpoint"
        );
        let retry = lb.clone().oneshot(request(Some(home))).await.unwrap();
        assert_ne!(retry, home, "a retry goes to another endpoint than the one that failed");
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiting_call_keeps_its_avoid() {
    use lb_core::Avoid;
    let (publisher, subscription) = discover::channel();
    // Responses of any type: a key function reads `Avoid` from the extensions as `Http`
    // does.
    let lb = Balancer::builder(RoundRobin::new())
        .protocol(lb_core::KeyFn(|_: &http::Request<()>| None))
        .wait(Duration::from_secs(1))
        .spawn(subscription, healthy_backends());
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let mut req = http::Request::new(());
            req.extensions_mut().insert(Avoid(id(0)));
            lb.clone().oneshot(req)
        })
        .collect();
    let all = tokio::spawn(futures_util::future::join_all(calls));
    settle().await;
    publisher.reset([ep(0), ep(1)]);
    for got in all.await.unwrap() {
        assert_eq!(
            got.unwrap(),
            1,
            "a call that waited for an endpoint still avoids endpoint 0"
        );
    }
}

/// `Http` reads the hash key and the endpoint to avoid from the request's extensions.
#[test]
fn http_reads_key_and_avoid_from_extensions() {
    use lb_core::http::Http;
    use lb_core::{Avoid, HashKey, Protocol};
    type Rsp = http::Response<http_body_util::Empty<Bytes>>;
    let mut req = http::Request::new(());
    assert_eq!(<Http as Protocol<_, Rsp>>::key(&Http, &req), None);
    assert_eq!(<Http as Protocol<_, Rsp>>::avoid(&Http, &req), None);
    req.extensions_mut().insert(Avoid(id(1)));
    req.extensions_mut().insert(HashKey(42));
    assert_eq!(<Http as Protocol<_, Rsp>>::key(&Http, &req), Some(42));
    assert_eq!(<Http as Protocol<_, Rsp>>::avoid(&Http, &req), Some(&id(1)));
}
