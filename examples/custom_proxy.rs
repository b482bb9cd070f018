//! Compose your own proxy: a listener, one balanced service, a discovery source.
//!
//! Everything `lb-proxy` does per request, in one page: endpoints come from a watched
//! TOML file (`lb-discovery-static`), a `Balancer` spreads requests over them with
//! least connections, passive outlier detection takes failing endpoints out, and
//! lb-core's `http` module forwards (hop-by-hop headers, `X-Forwarded-*`, pooled
//! keep-alive connections, bodies streamed both ways).
//!
//! ```text
//! cargo run -p examples --example custom_proxy -- 127.0.0.1:8080 endpoints.toml
//! # endpoints.toml:  endpoints = [{ addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002", weight = 2 }]
//! ```
//!
//! Edit `endpoints.toml` while it runs: traffic follows at once, with no reload.
//! Without arguments it starts two demo backends and a file of its own, sends a few
//! requests through itself, prints who answered, and exits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lb_core::balance::LeastConn;
use lb_core::health::OutlierConfig;
use lb_core::http::{boxed, forward, full, Body, ClientConfig, EndpointService, Http, HttpConnect};
use lb_core::Balancer;
use tokio::net::TcpListener;
use tower::ServiceExt;

type Lb = Balancer<LeastConn, EndpointService, Http>;

/// One request: prepare it for the hop, balance it, map failures to 502/503.
async fn handle(lb: Lb, req: hyper::Request<Incoming>, peer: SocketAddr) -> hyper::Response<Body> {
    let mut req = req.map(boxed);
    forward::prepare_request(&mut req, peer.ip(), "http");
    match lb.oneshot(req).await {
        Ok(mut rsp) => {
            forward::prepare_response(&mut rsp);
            rsp.map(boxed)
        }
        Err(e) => {
            let status = if lb_core::error::is_no_endpoints(&*e) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_GATEWAY
            };
            let mut rsp = hyper::Response::new(full(format!("{status}: {}\n", lb_core::error::chain(&*e))));
            *rsp.status_mut() = status;
            rsp
        }
    }
}

/// Accepts connections forever, HTTP/1.1 and HTTP/2.
async fn serve(listener: TcpListener, lb: Lb) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((io, peer)) = listener.accept().await else {
            continue;
        };
        let lb = lb.clone();
        let svc = hyper::service::service_fn(move |req| {
            let lb = lb.clone();
            async move { Ok::<_, Infallible>(handle(lb, req, peer).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
        tokio::spawn(conn);
    }
}

/// A tiny backend answering with its name, for the self-contained run.
async fn backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let addr = l.local_addr().expect("bound");
    tokio::spawn(async move {
        loop {
            let Ok((io, _)) = l.accept().await else { continue };
            let svc = hyper::service::service_fn(move |_req| async move {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(bytes::Bytes::from(name))))
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc));
        }
    });
    addr
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let demo = args.is_empty();
    let (listen, file) = if demo {
        // Self-contained: two backends and an endpoints file of our own.
        let (a, b) = (backend("a").await, backend("b").await);
        let dir = std::env::temp_dir().join(format!("lb-custom-proxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("endpoints.toml");
        std::fs::write(
            &file,
            format!("endpoints = [{{ addr = \"{a}\" }}, {{ addr = \"{b}\" }}]\n"),
        )
        .expect("write");
        ("127.0.0.1:0".to_string(), file)
    } else {
        (
            args[0].clone(),
            args.get(1).map(Into::into).unwrap_or_else(|| "endpoints.toml".into()),
        )
    };

    // The discovery source: the file, watched; names in it are resolved and refreshed.
    let updates = lb_discovery_static::EndpointsFile::new(file)
        .watch()
        .expect("read the endpoints file");
    // The balanced service.
    let lb: Lb = Balancer::builder(LeastConn::new())
        .name("custom")
        .http()
        .outlier_detection(OutlierConfig::default())
        .spawn(updates, HttpConnect::new(ClientConfig::default()));
    // The listener.
    let listener = TcpListener::bind(&listen).await.expect("bind the listen address");
    let addr = listener.local_addr().expect("bound");
    println!("custom proxy listening on http://{addr}");
    tokio::spawn(serve(listener, lb.clone()));

    if demo {
        lb.ready_endpoints(2).await;
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let mut who = Vec::new();
        for _ in 0..4 {
            let rsp = client
                .get(format!("http://{addr}/").parse().expect("uri"))
                .await
                .expect("request");
            let body = rsp.into_body().collect().await.expect("body").to_bytes();
            who.push(String::from_utf8_lossy(&body).into_owned());
        }
        println!("answered by: {}", who.join(" "));
        return;
    }
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
