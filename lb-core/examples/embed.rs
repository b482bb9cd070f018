//! Client-side balancing: a hyper client spread over a static list of endpoints.
//!
//! Starts two small HTTP servers on loopback, then sends six requests through a
//! `BalanceLayer` over lb-core's hyper connector and prints who answered each.
//!
//! ```text
//! cargo run -p lb-core --example embed --features http
//! ```
use std::convert::Infallible;

use http_body_util::BodyExt;
use lb_core::balance::RoundRobin;
use lb_core::http::{empty, ClientConfig, HttpConnect};
use lb_core::{discover, BalanceLayer, Balancer, Endpoint};
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

/// A backend that answers with its own name.
async fn backend(name: &'static str) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            let svc = hyper::service::service_fn(move |_req| async move {
                Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                    name,
                ))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(io), svc),
            );
        }
    });
    addr
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = backend("a").await;
    let b = backend("b").await;

    // Endpoints from a static list; any discovery stream works the same way.
    let endpoints = discover::fixed([Endpoint::new(a), Endpoint::new(b)]);
    // Response bodies are tracked: a request is in flight until its body ends.
    let layer = BalanceLayer::new(Balancer::builder(RoundRobin::new()).http(), endpoints);
    let client = layer.layer(HttpConnect::new(ClientConfig::default()));
    client.ready_endpoints(2).await;

    let mut answers = Vec::new();
    for _ in 0..6 {
        let req = http::Request::get("/").body(empty()).unwrap();
        let rsp = client.clone().oneshot(req).await.unwrap();
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        answers.push(String::from_utf8_lossy(&body).into_owned());
    }
    println!("answered by: {}", answers.join(" "));
    // Round robin: the two alternate (which one starts depends on the ports).
    assert!(answers.windows(2).all(|w| w[0] != w[1]), "{answers:?}");
    assert_eq!(answers.iter().filter(|a| *a == "a").count(), 3);
}
