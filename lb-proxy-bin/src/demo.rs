//! `lb-proxy demo`: three backends on loopback, balanced, with the status page.
//!
//! The demo writes an ordinary config (printed, so it can be copied) and runs it like
//! `lb-proxy run` would, after showing a few requests spread over the backends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::stack::{self, StackError};

/// Starts a backend that answers every request with its name; `/slow` takes 200 ms;
/// `/healthz` is its health check.
pub(crate) async fn backend(name: String) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((io, _)) = listener.accept().await else { continue };
            let name = name.clone();
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let name = name.clone();
                async move {
                    if req.uri().path() == "/slow" {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    let body = if req.uri().path() == "/healthz" {
                        "ok\n".to_string()
                    } else {
                        format!("hello from {name} ({addr}) path={}\n", req.uri().path())
                    };
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The demo's config text.
pub(crate) fn config_text(listen: SocketAddr, admin: SocketAddr, balance: &str, backends: &[SocketAddr]) -> String {
    let endpoints: Vec<String> = backends.iter().map(|a| format!("{{ addr = \"{a}\" }}")).collect();
    let hash = if balance == "consistent_hash" {
        "hash_key = \"header:x-user\"\n"
    } else {
        ""
    };
    format!(
        r#"[server]
listen = ["{listen}"]

[admin]
listen = "{admin}"

[[services]]
name = "demo"
balance = "{balance}"
{hash}endpoints = [{endpoints}]
health = {{ path = "/healthz", interval = "2s", timeout = "1s", rise = 2, fall = 3 }}

[[routes]]
path_prefix = "/"
service = "demo"
"#,
        endpoints = endpoints.join(", ")
    )
}

/// Runs the demo until interrupted.
pub(crate) async fn run(listen: SocketAddr, admin: SocketAddr, balance: &str) -> Result<(), StackError> {
    let mut backends = Vec::new();
    for i in 1..=3 {
        backends.push(
            backend(format!("backend-{i}"))
                .await
                .map_err(|e| StackError::Other(format!("demo backend: {e}")))?,
        );
    }
    let text = config_text(listen, admin, balance, &backends);
    let path = std::path::PathBuf::from("<demo>");
    let cfg = crate::config::parse(&text, &path).map_err(StackError::Config)?;
    let started = stack::start(cfg, None).await?;
    println!("lb-proxy demo: balancing 3 backends with {balance}\n");
    println!("config (save it and run `lb-proxy run --config FILE` for the same thing):\n");
    println!("{text}");
    // Show balancing at once.
    println!("six requests through the proxy:");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    for _ in 0..6 {
        let uri: hyper::Uri = format!("http://{listen}/")
            .parse()
            .expect("a socket address makes a URI");
        match client.get(uri).await {
            Ok(rsp) => {
                let body = rsp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                print!("  {}", String::from_utf8_lossy(&body));
            }
            Err(e) => println!("  request failed: {e}"),
        }
    }
    println!("\ntry:");
    println!("  curl http://{listen}/");
    println!("  for i in $(seq 9); do curl -s http://{listen}/; done");
    println!("  open http://{admin}/          (status page)   curl http://{admin}/metrics");
    println!("\nCtrl-C to stop.");
    let mut signals =
        crate::signals::Signals::install().map_err(|e| StackError::Other(format!("cannot handle signals: {e}")))?;
    started.wait(&mut signals).await
}
