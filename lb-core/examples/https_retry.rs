//! An HTTPS client balanced over three endpoints, one of them down, retrying a failed
//! request on another endpoint.
//!
//! Starts two TLS backends on loopback with a self-signed certificate for
//! `api.internal` (one speaks HTTP/2, chosen by ALPN, the other HTTP/1.1) and takes a
//! third loopback address where nothing listens. The client verifies the certificate for
//! `api.internal` and sends requests to `https://api.internal/...` through a round-robin
//! [`Balancer`] inside a `tower::retry::Retry` whose policy retries
//!
//! - a connect error (the request never reached the endpoint: refused, a failed TLS
//!   handshake) whatever the method, and
//! - any other failure of an idempotent request (`GET`, `PUT`, ...),
//!
//! on another endpoint than the one that failed, with the body replayed from a clone of
//! its `Bytes`. Outlier detection takes the endpoint that is down out of rotation after
//! two failures. It prints each retry and each answer, then the endpoints' state, and
//! exits 0.
//!
//! ```text
//! cargo run -p lb-core --example https_retry --features tls
//! ```
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lb_core::balance::RoundRobin;
use lb_core::error::chain;
use lb_core::health::OutlierConfig;
use lb_core::http::{full, is_connect_error, ClientConfig, HttpConnect, TlsConnect};
use lb_core::{discover, Avoid, Balancer, BoxError, Endpoint, EndpointError};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tower::retry::Policy;
use tower::{ServiceBuilder, ServiceExt};

/// How many times one request is tried again at most.
const RETRIES: usize = 2;

/// Retries connect errors whatever the method, and other errors of idempotent
/// requests, on another endpoint. A clone per request (tower's `Retry` clones the
/// policy for each call), so `retries_left` counts one request's retries.
#[derive(Clone)]
struct RetryOnAnother {
    retries_left: usize,
}

impl<Res> Policy<Request<Bytes>, Res, BoxError> for RetryOnAnother {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, req: &mut Request<Bytes>, result: &mut Result<Res, BoxError>) -> Option<Self::Future> {
        let err = result.as_ref().err()?;
        let never_sent = is_connect_error(&**err);
        if self.retries_left == 0 || !(never_sent || req.method().is_idempotent()) {
            return None;
        }
        self.retries_left -= 1;
        let why = if never_sent { "connect error" } else { "failed" };
        // The chain names the endpoint, then the endpoint service's error, each once.
        println!("  retry ({why}): {}", chain(&**err));
        // The balancer names the endpoint that failed; the retry asks it for another.
        if let Some(failed) = err.downcast_ref::<EndpointError>() {
            req.extensions_mut().insert(Avoid(failed.endpoint().clone()));
        }
        Some(std::future::ready(()))
    }

    /// `req` is the request to send next; cloning its `Bytes` body copies no data.
    fn clone_request(&mut self, req: &Request<Bytes>) -> Option<Request<Bytes>> {
        let mut clone = Request::new(req.body().clone());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        Some(clone)
    }
}

/// A self-signed certificate for `api.internal`, and its key.
fn certificate() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["api.internal".to_string()]).expect("a certificate");
    let key = PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der());
    (ck.cert.der().clone(), key.into())
}

/// A TLS backend on loopback that answers with its name, the method and the body's size,
/// offering `alpn` (`h2` makes it speak HTTP/2).
async fn backend(
    name: &'static str,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    alpn: &[u8],
) -> SocketAddr {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("a server certificate");
    config.alpn_protocols = vec![alpn.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let method = req.method().clone();
                    let size = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                    Ok::<_, Infallible>(Response::new(full(format!("{name} ({method}, {size} bytes)"))))
                });
                let io = TokioIo::new(tls);
                let _ = if h2 {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await
                };
            });
        }
    });
    addr
}

/// A loopback address where nothing listens: a backend that is down.
async fn down() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address")
}

async fn run() -> Result<(), BoxError> {
    let (cert, key) = certificate();
    let a = backend("a", cert.clone(), key.clone_key(), b"h2").await;
    let b = backend("b", cert.clone(), key, b"http/1.1").await;
    let c = down().await;

    // Trust the self-signed certificate; verify every endpoint for `api.internal`.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let tls = TlsConnect::with_roots(roots).server_name("api.internal")?;
    let connect = HttpConnect::new(ClientConfig {
        connect_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    })
    .with_tls(tls);

    // Named endpoints: errors and the status say `down`, not an address.
    let endpoints = [(a, "a"), (b, "b"), (c, "down")].map(|(addr, id)| Endpoint::new(addr).with_id(id));
    let balancer = Balancer::builder(RoundRobin::new())
        .name("api")
        .timeout(Duration::from_secs(2))
        // Two failures in a row take an endpoint out for a while (connect errors count).
        .outlier_detection(OutlierConfig {
            consecutive_failures: 2,
            ..OutlierConfig::default()
        })
        .http()
        .spawn(discover::fixed(endpoints), connect);
    balancer.ready_endpoints(3).await;

    let client = ServiceBuilder::new()
        .retry(RetryOnAnother { retries_left: RETRIES })
        .map_request(|req: Request<Bytes>| req.map(full))
        .service(balancer.clone());

    let requests = [
        (Method::GET, "/items", ""),
        (Method::POST, "/items", "{\"name\":\"one\"}"),
        (Method::GET, "/items/1", ""),
        (Method::PUT, "/items/1", "{\"name\":\"uno\"}"),
        (Method::GET, "/items", ""),
        (Method::POST, "/items", "{\"name\":\"two\"}"),
    ];
    for (method, path, body) in requests {
        println!("{method} https://api.internal{path}");
        let req = Request::builder()
            .method(method)
            .uri(format!("https://api.internal{path}"))
            .body(Bytes::from_static(body.as_bytes()))?;
        let rsp = client.clone().oneshot(req).await?;
        let (status, version) = (rsp.status(), rsp.version());
        let answer = rsp.into_body().collect().await?.to_bytes();
        println!("  {status} {version:?} from {}", String::from_utf8_lossy(&answer));
    }

    println!("endpoints:");
    for ep in balancer.status().endpoints {
        let role = match ep.addr {
            addr if addr == a => "HTTP/2",
            addr if addr == b => "HTTP/1.1",
            _ => "nothing listens",
        };
        println!(
            "  {} ({}, {role}): {} requests, {} failed, {}",
            ep.id,
            ep.addr,
            ep.requests,
            ep.failures,
            ep.health.as_str()
        );
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Bounded: everything above is on loopback and takes well under a second.
    match tokio::time::timeout(Duration::from_secs(20), run()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("error: {}", chain(&*e));
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("error: did not finish within 20 s");
            std::process::exit(1);
        }
    }
}
