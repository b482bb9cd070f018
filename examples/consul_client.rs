//! A Rust service calling another through lb-core, with endpoints from Consul.
//!
//! Three `users` backends start on loopback and register themselves with Consul, each
//! with a TTL check that it keeps passing. The caller follows `users` with a blocking
//! query and balances its HTTP calls over whatever Consul says is passing: when one
//! backend's check fails, traffic leaves it within one round trip; when one deregisters
//! on shutdown, it is gone. No Consul binary is needed: the example runs the project's
//! Consul emulator on loopback (point `.agent(...)`/`.address(...)` at a real agent, or
//! set `CONSUL_HTTP_ADDR`, and nothing else changes).
//!
//! ```text
//! cargo run -p examples --example consul_client
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use http_body_util::BodyExt;
use lb_consul_emulator::Emulator;
use lb_core::balance::RoundRobin;
use lb_core::http::{empty, ClientConfig, EndpointService, Http, HttpConnect};
use lb_core::{BalanceLayer, Balancer, BoxError};
use lb_discovery_consul::{ConsulService, Registration};
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

/// A backend that answers with its own name.
async fn backend(name: &'static str) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
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

/// The caller's client: a balancer over lb-core's pooled hyper connector, speaking HTTP.
type Client = Balancer<RoundRobin, EndpointService, Http>;

/// One call; the name of the backend that answered.
async fn call(client: &Client) -> Result<String, BoxError> {
    let rsp = client.clone().oneshot(http::Request::get("/").body(empty())?).await?;
    let body = rsp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let consul = Emulator::start().await;
    println!("consul (emulated) at {}", consul.url());

    // The backends register themselves and keep their TTL checks passing.
    let mut registered = Vec::new();
    for name in ["users-a", "users-b", "users-c"] {
        let addr = backend(name).await;
        let me = Registration::new("users", addr)
            .agent(consul.url())
            .id(name)
            .ttl(Duration::from_secs(10))
            .register()
            .await?;
        registered.push(me);
    }

    // The caller: a balancer over Consul's passing `users` instances.
    let users = ConsulService::new("users").address(consul.url()).spawn()?;
    let layer = BalanceLayer::new(Balancer::builder(RoundRobin::new()).http(), users.updates());
    let client: Client = layer.layer(HttpConnect::new(ClientConfig::default()));
    client.ready_endpoints(3).await;

    let spread = |answers: &[String]| {
        let mut count = BTreeMap::new();
        for a in answers {
            *count.entry(a.clone()).or_insert(0) += 1;
        }
        count
    };

    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(call(&client).await?);
    }
    println!("three passing:       {:?}", spread(&answers));
    assert_eq!(spread(&answers).len(), 3);

    // users-b's check fails (its TTL lapses, or it reports critical): out at once.
    consul.set_check("agent-a", "users-b:ttl", "critical", "database unreachable");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while client
        .status()
        .endpoints
        .iter()
        .any(|e| e.id.as_str() == "agent-a/users-b")
    {
        assert!(tokio::time::Instant::now() < deadline, "users-b still balanced");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(call(&client).await?);
    }
    println!("users-b critical:    {:?}", spread(&answers));
    assert!(!answers.iter().any(|a| a == "users-b"));

    // users-c shuts down and deregisters.
    registered.pop().expect("users-c").deregister().await?;
    client.ready_endpoints(1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while client.status().endpoints.len() > 1 {
        assert!(tokio::time::Instant::now() < deadline, "users-c still balanced");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(call(&client).await?);
    }
    println!("users-c deregistered: {:?}", spread(&answers));
    assert!(answers.iter().all(|a| a == "users-a"));
    println!("consul watch: {:?}", users.status());
    Ok(())
}
