//! Convergence against the Consul emulator: how soon requests follow a registration or a
//! health change.
//!
//! ```text
//! cargo bench -p lb-discovery-consul --bench convergence           # 20 runs each
//! RUNS=50 cargo bench -p lb-discovery-consul --bench convergence
//! ```
//!
//! A balancer (lb-core, round robin, the HTTP connector) follows `api` through
//! [`ConsulService`]; one instance stays up throughout. Each run:
//!
//! - **register**: from the registration returning to the first request the new instance
//!   answers (requests sent back to back);
//! - **critical**: from its check turning critical to the last request it answers;
//! - then it is deregistered.
//!
//! Steps are 250 ms apart. All traffic goes to backends on loopback.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use lb_consul_emulator::Emulator;
use lb_core::balance::RoundRobin;
use lb_core::http::{empty, ClientConfig, HttpConnect};
use lb_core::{BalanceLayer, Balancer};
use lb_discovery_consul::ConsulService;
use serde_json::json;
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

async fn backend(name: String) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let name = name.clone();
            let svc = hyper::service::service_fn(move |_req| {
                let name = name.clone();
                async move {
                    Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                        name,
                    ))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(io), svc),
            );
        }
    });
    addr
}

fn registration(id: &str, addr: std::net::SocketAddr) -> serde_json::Value {
    json!({"ID": id, "Name": "api", "Address": addr.ip().to_string(), "Port": addr.port(),
           "Check": {"CheckID": format!("{id}-check"), "TTL": "1h", "Status": "passing"}})
}

fn report(what: &str, ms: &mut [f64]) {
    ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{what}: median {:.2}, min {:.2}, max {:.2}",
        ms[ms.len() / 2],
        ms[0],
        ms[ms.len() - 1]
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs: usize = std::env::var("RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let consul = Emulator::start().await;
        let anchor = backend("anchor".into()).await;
        consul
            .register("agent-a", registration("anchor", anchor))
            .expect("register");
        let api = ConsulService::new("api").address(consul.url()).spawn().expect("watch");
        let layer = BalanceLayer::new(Balancer::builder(RoundRobin::new()).http(), api.updates());
        let client = layer.layer(HttpConnect::new(ClientConfig::default()));
        client.ready_endpoints(1).await;
        let call = || {
            let client = client.clone();
            async move {
                let rsp = client
                    .oneshot(http::Request::get("/").body(empty()).expect("request"))
                    .await
                    .ok()?;
                let body = rsp.into_body().collect().await.ok()?.to_bytes();
                Some(String::from_utf8_lossy(&body).into_owned())
            }
        };
        let (mut register, mut critical) = (Vec::new(), Vec::new());
        let mut failed = 0u64;
        for i in 0..runs {
            // Changes a quarter of a second apart, as registrations and health changes
            // come in life; closer ones meet the watch's rate limit (a burst of 2, then
            // one request per 100 ms).
            tokio::time::sleep(Duration::from_millis(250)).await;
            let name = format!("run{i}");
            let addr = backend(name.clone()).await;
            let t0 = Instant::now();
            consul.register("agent-a", registration(&name, addr)).expect("register");
            let deadline = t0 + Duration::from_secs(10);
            loop {
                match call().await {
                    Some(who) if who == name => break,
                    Some(_) => {}
                    None => failed += 1,
                }
                assert!(Instant::now() < deadline, "{name} never answered");
            }
            register.push(t0.elapsed().as_secs_f64() * 1e3);

            tokio::time::sleep(Duration::from_millis(250)).await;
            let t1 = Instant::now();
            consul.set_check("agent-a", &format!("{name}-check"), "critical", "down");
            let mut last = t1;
            // Requests for 50 ms after the change, recording the last one it answered.
            let until = t1 + Duration::from_millis(50);
            for _ in 0..100_000 {
                if Instant::now() > until {
                    break;
                }
                match call().await {
                    Some(who) if who == name => last = Instant::now(),
                    Some(_) => {}
                    None => failed += 1,
                }
            }
            critical.push(last.duration_since(t1).as_secs_f64() * 1e3);
            consul.deregister("agent-a", &name);
        }
        println!("consul convergence over {runs} runs (ms), lb-core balancer + emulator on loopback");
        report("register -> first request answered by the new instance", &mut register);
        report("critical -> last request answered by that instance", &mut critical);
        println!("failed requests: {failed}");
    });
}
