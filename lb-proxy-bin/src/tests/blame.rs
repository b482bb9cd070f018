//! Blame the right side: a client's broken body is the client's failure (400, 413),
//! never the endpoint's; a hung endpoint (504) is the endpoint's; outlier detection
//! turned off stays off.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use lb_core::Health;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::support::{
    bounded, client, endpoint_state, eventually, free_port, get, head, proxy, read_head, ready, send, service_with,
    Backend,
};

/// What no answer to a client may show: the endpoint's address, hyper's words.
fn assert_discreet(text: &str, backend: std::net::SocketAddr) {
    for secret in [
        backend.to_string(),
        "hyper".into(),
        "error from user".into(),
        "client error".into(),
        "body write aborted".into(),
    ] {
        assert!(
            !text.to_ascii_lowercase().contains(&secret.to_ascii_lowercase()),
            "the answer shows {secret:?}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_uploads_are_the_clients_fault_and_never_eject_the_endpoint() {
    bounded(async {
        let a = Backend::start("a").await;
        // A single failure would eject the endpoint (ten aborted uploads once did).
        let p = proxy(&service_with(
            "max_body_bytes = 16",
            &[&a],
            "retries = 0\noutlier = { consecutive_failures = 1, max_ejection_percent = 100 }",
        ))
        .await;
        ready(&p, "web", 1).await;
        let addr = p.http_addrs[0];
        let chunked = "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        // A malformed chunk size: 400.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("{chunked}5\r\nhello\r\nzz\r\n").as_bytes())
            .await
            .expect("write");
        let head = read_head(&mut s, Duration::from_secs(5)).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        assert_discreet(&head, a.addr);
        // A chunked body past max_body_bytes: 413.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("{chunked}a\r\n0123456789\r\na\r\n0123456789\r\n").as_bytes())
            .await
            .expect("write");
        let head = read_head(&mut s, Duration::from_secs(5)).await;
        assert!(head.starts_with("HTTP/1.1 413"), "{head}");
        assert_discreet(&head, a.addr);
        // Ten uploads the client breaks off, streamed and buffered.
        for i in 0..10 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let opening = if i % 2 == 0 {
                format!("{chunked}3\r\nabc\r\n")
            } else {
                "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\nabc".to_string()
            };
            s.write_all(opening.as_bytes()).await.expect("write");
            if i % 2 == 0 {
                // Streamed: abort once the endpoint has the request.
                eventually("the upload to reach the endpoint", Duration::from_secs(3), || {
                    a.in_flight() == 1
                })
                .await;
            }
            drop(s);
            eventually("the endpoint's request to end", Duration::from_secs(3), || {
                a.in_flight() == 0
            })
            .await;
        }
        // Whatever the proxy made of them, the endpoint was not charged.
        let (failures, health) = endpoint_state(&p, "web", a.addr);
        assert_eq!(failures, 0, "client failures were counted against the endpoint");
        assert!(matches!(health, Health::Unknown | Health::Healthy), "{health:?}");
        let r = get(&client(), addr, "/", &[]).await.expect("request");
        assert_eq!(r.status, 200, "{}", r.body);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_timeout_is_the_endpoints_failure() {
    bounded(async {
        let a = Backend::start("a").await;
        let p = proxy(&service_with(
            "",
            &[&a],
            "retries = 0\nresponse_timeout = \"150ms\"\n\
             outlier = { consecutive_failures = 2, max_ejection_percent = 100 }",
        ))
        .await;
        ready(&p, "web", 1).await;
        let cl = client();
        for _ in 0..2 {
            let r = get(&cl, p.http_addrs[0], "/gate", &[]).await.expect("request");
            assert_eq!(r.status, 504, "{}", r.body);
            assert!(r.body.contains("web"), "names the service: {}", r.body);
            assert_discreet(&r.body, a.addr);
        }
        // Two hung requests in a row: ejected, as HAProxy's `observe layer7` would.
        eventually("the hung endpoint to be ejected", Duration::from_secs(3), || {
            endpoint_state(&p, "web", a.addr).1 == Health::Ejected
        })
        .await;
        assert_eq!(endpoint_state(&p, "web", a.addr).0, 2, "both timeouts counted");
        a.release();
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_0_turns_outlier_detection_off() {
    bounded(async {
        let a = Backend::start("a").await;
        let dead = format!("127.0.0.1:{}", free_port());
        let text = format!(
            "{}[[services]]\nname = \"web\"\nendpoints = [\"{}\", \"{dead}\"]\n\
             outlier = {{ consecutive_failures = 0 }}\n\n[[routes]]\nservice = \"web\"\n",
            head(),
            a.addr
        );
        let p = proxy(&text).await;
        ready(&p, "web", 2).await;
        let cl = client();
        for _ in 0..20 {
            let r = get(&cl, p.http_addrs[0], "/", &[]).await.expect("request");
            assert_eq!(r.status, 200, "retried on the live one: {}", r.body);
        }
        let dead: std::net::SocketAddr = dead.parse().expect("addr");
        let (failures, health) = endpoint_state(&p, "web", dead);
        assert!(failures >= 10, "{failures} failures recorded");
        assert_ne!(
            health,
            Health::Ejected,
            "detection is off: the defaults must not come back"
        );
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failure_answer_does_not_show_the_endpoint() {
    bounded(async {
        let dead = format!("127.0.0.1:{}", free_port());
        let text = format!(
            "{}[[services]]\nname = \"web\"\nendpoints = [\"{dead}\"]\n\n[[routes]]\nservice = \"web\"\n",
            head()
        );
        let p = proxy(&text).await;
        ready(&p, "web", 1).await;
        let req = Request::post(format!("http://{}/x", p.http_addrs[0]))
            .body(Full::new(Bytes::from("payload")))
            .expect("req");
        let r = send(&client(), req).await.expect("request");
        assert_eq!(r.status, 502, "{}", r.body);
        assert!(r.body.contains("service web"), "{}", r.body);
        assert_discreet(&r.body, dead.parse().expect("addr"));
        p.shutdown().await;
    })
    .await;
}
