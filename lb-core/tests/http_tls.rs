//! TLS to endpoints against real TLS backends on loopback: the server name sent and
//! verified, ALPN choosing HTTP/2 or HTTP/1.1, handshake failures as connect errors, the
//! connect timeout over the handshake, the request's authority kept, and the CA file.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lb_core::error::chain;
use lb_core::http::{
    empty, full, is_connect_error, Body, ClientConfig, ClientError, EndpointService, HttpConnect, TlsConnect,
    TLS_SERVER_NAME,
};
use lb_core::Endpoint;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tower_service::Service;

/// A self-signed certificate for `names` (DNS names or IP addresses) and its key.
struct Cert {
    der: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    pem: String,
}

/// Its subject is `CN=<first name>`: certificates for different first names are
/// unrelated issuers.
fn self_signed(names: &[&str]) -> Cert {
    let mut params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, names[0]);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Cert {
        der: cert.der().clone(),
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        pem: cert.pem(),
    }
}

/// A TLS backend: counts TCP connections, serves HTTP/2 when ALPN chose `h2` and
/// HTTP/1.1 otherwise, and echoes what it saw in response headers: `x-sni`, `x-alpn`,
/// `x-version`, `x-target` (the request URI), `x-host` (the `Host` header) and
/// `x-authority` (the URI's authority, HTTP/2's `:authority`).
struct Backend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Backend {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn tls_backend(cert: &Cert, alpn: &[&[u8]]) -> Backend {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der.clone()], PrivateKeyDer::Pkcs8(cert.key.clone_key()))
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let conn = tls.get_ref().1;
                let sni = conn.server_name().unwrap_or("(none)").to_owned();
                let alpn = conn
                    .alpn_protocol()
                    .map_or("(none)".to_owned(), |p| String::from_utf8_lossy(p).into_owned());
                let h2 = alpn == "h2";
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let rsp = echo(&req, &sni, &alpn);
                    async move { Ok::<_, Infallible>(rsp) }
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
    Backend { addr, accepted }
}

fn echo(req: &Request<Incoming>, sni: &str, alpn: &str) -> Response<Body> {
    let mut rsp = Response::new(full("ok"));
    let h = rsp.headers_mut();
    h.insert("x-sni", sni.parse().unwrap());
    h.insert("x-alpn", alpn.parse().unwrap());
    h.insert("x-version", format!("{:?}", req.version()).parse().unwrap());
    h.insert("x-target", req.uri().to_string().parse().unwrap());
    if let Some(host) = req.headers().get(http::header::HOST) {
        h.insert("x-host", host.clone());
    }
    if let Some(a) = req.uri().authority() {
        h.insert("x-authority", a.as_str().parse().unwrap());
    }
    rsp
}

/// Trusts `cert` alone.
fn trusting(cert: &Cert) -> TlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    TlsConnect::with_roots(roots)
}

fn service(tls: TlsConnect, config: ClientConfig, endpoint: &Endpoint) -> EndpointService {
    HttpConnect::new(config).with_tls(tls).for_endpoint(endpoint)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(empty()).unwrap()
}

/// One request; the response head and whole body.
async fn fetch(svc: &EndpointService, req: Request<Body>) -> (http::response::Parts, Bytes) {
    let rsp = svc.clone().call(req).await.unwrap();
    let (head, body) = rsp.into_parts();
    (head, body.collect().await.unwrap().to_bytes())
}

fn header<'a>(head: &'a http::response::Parts, name: &str) -> &'a str {
    head.headers.get(name).map_or("(absent)", |v| v.to_str().unwrap())
}

/// The first error of type `E` in `err`'s chain of sources.
fn find<'a, E: std::error::Error + 'static>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a E> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

/// The call fails before reaching the endpoint: a connect error, in the service's error
/// and as the boxed error a balancer passes on.
fn assert_connect_error(err: &ClientError) {
    assert!(err.is_connect(), "{err:?}");
    assert!(is_connect_error(err));
}

#[tokio::test]
async fn a_request_over_tls_reaches_the_backend_with_the_configured_server_name() {
    let cert = self_signed(&["api.internal"]);
    let backend = tls_backend(&cert, &[b"http/1.1"]).await;
    let tls = trusting(&cert).server_name("api.internal").unwrap();
    let svc = service(tls, ClientConfig::default(), &Endpoint::new(backend.addr));
    for _ in 0..5 {
        let (head, body) = fetch(&svc, get("/hello")).await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(body, "ok");
        assert_eq!(header(&head, "x-sni"), "api.internal");
        assert_eq!(header(&head, "x-target"), "/hello");
    }
    // HTTP/1.1 over TLS is pooled as in the clear.
    assert_eq!(backend.accepted(), 1);
}

#[tokio::test]
async fn without_a_configured_name_the_endpoint_metadata_names_the_server() {
    let cert = self_signed(&["a.internal", "b.internal"]);
    let backend = tls_backend(&cert, &[]).await;

    let ep = Endpoint::new(backend.addr).with_metadata(TLS_SERVER_NAME, "a.internal");
    let (head, _) = fetch(&service(trusting(&cert), ClientConfig::default(), &ep), get("/")).await;
    assert_eq!(header(&head, "x-sni"), "a.internal");

    // `host` is read when `tls_server_name` is absent...
    let ep = Endpoint::new(backend.addr).with_metadata("host", "b.internal");
    let (head, _) = fetch(&service(trusting(&cert), ClientConfig::default(), &ep), get("/")).await;
    assert_eq!(header(&head, "x-sni"), "b.internal");

    // ...and `tls_server_name` comes first.
    let ep = Endpoint::new(backend.addr)
        .with_metadata("host", "b.internal")
        .with_metadata(TLS_SERVER_NAME, "a.internal");
    let (head, _) = fetch(&service(trusting(&cert), ClientConfig::default(), &ep), get("/")).await;
    assert_eq!(header(&head, "x-sni"), "a.internal");
}

#[tokio::test]
async fn a_configured_server_name_wins_over_the_endpoint_metadata() {
    let cert = self_signed(&["a.internal", "b.internal"]);
    let backend = tls_backend(&cert, &[]).await;
    let ep = Endpoint::new(backend.addr).with_metadata(TLS_SERVER_NAME, "a.internal");
    let tls = trusting(&cert).server_name("b.internal").unwrap();
    let (head, _) = fetch(&service(tls, ClientConfig::default(), &ep), get("/")).await;
    assert_eq!(header(&head, "x-sni"), "b.internal");
}

#[tokio::test]
async fn a_host_metadata_that_is_no_single_name_is_passed_over_for_the_ip_address() {
    let cert = self_signed(&["127.0.0.1"]);
    let backend = tls_backend(&cert, &[]).await;
    let ep = Endpoint::new(backend.addr).with_metadata("host", "a.internal,*.b.internal");
    let (head, _) = fetch(&service(trusting(&cert), ClientConfig::default(), &ep), get("/")).await;
    assert_eq!(header(&head, "x-sni"), "(none)");
}

#[tokio::test]
async fn an_endpoint_nothing_names_is_verified_by_its_ip_address_without_sni() {
    let cert = self_signed(&["127.0.0.1"]);
    let backend = tls_backend(&cert, &[]).await;
    let svc = service(trusting(&cert), ClientConfig::default(), &Endpoint::new(backend.addr));
    let (head, body) = fetch(&svc, get("/")).await;
    assert_eq!(body, "ok");
    // SNI carries DNS names only.
    assert_eq!(header(&head, "x-sni"), "(none)");

    // A certificate for a name only does not cover the address.
    let named = self_signed(&["api.internal"]);
    let backend = tls_backend(&named, &[]).await;
    let svc = service(trusting(&named), ClientConfig::default(), &Endpoint::new(backend.addr));
    let err = svc.clone().call(get("/")).await.unwrap_err();
    assert_connect_error(&err);
    assert!(find::<rustls::Error>(&err).is_some(), "{}", chain(&err));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_h2_when_the_server_offers_it_multiplexed_on_one_connection() {
    let cert = self_signed(&["api.internal"]);
    let backend = tls_backend(&cert, &[b"h2", b"http/1.1"]).await;
    let tls = trusting(&cert).server_name("api.internal").unwrap();
    let svc = service(tls, ClientConfig::default(), &Endpoint::new(backend.addr));
    let (head, body) = fetch(&svc, get("/first")).await;
    assert_eq!(body, "ok");
    assert_eq!(head.version, http::Version::HTTP_2);
    assert_eq!(header(&head, "x-alpn"), "h2");
    assert_eq!(header(&head, "x-version"), "HTTP/2.0");
    for _ in 0..3 {
        let calls: Vec<_> = (0..16).map(|_| svc.clone().call(get("/"))).collect();
        for rsp in futures_util::future::join_all(calls).await {
            let rsp = rsp.unwrap();
            assert_eq!(rsp.version(), http::Version::HTTP_2);
            assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "ok");
        }
    }
    assert_eq!(backend.accepted(), 1);
}

#[tokio::test]
async fn http1_when_the_server_offers_only_http1_or_no_alpn() {
    let cert = self_signed(&["api.internal"]);
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let backend = tls_backend(&cert, alpn).await;
        let tls = trusting(&cert).server_name("api.internal").unwrap();
        let svc = service(tls, ClientConfig::default(), &Endpoint::new(backend.addr));
        let (head, _) = fetch(&svc, get("/")).await;
        assert_eq!(head.version, http::Version::HTTP_11);
        assert_eq!(header(&head, "x-version"), "HTTP/1.1");
        let expected = if alpn.is_empty() { "(none)" } else { "http/1.1" };
        assert_eq!(header(&head, "x-alpn"), expected);
    }
}

#[tokio::test]
async fn http2_only_offers_only_h2() {
    let cert = self_signed(&["api.internal"]);
    let h2_only = ClientConfig {
        http2_only: true,
        ..ClientConfig::default()
    };
    let backend = tls_backend(&cert, &[b"http/1.1", b"h2"]).await;
    let tls = trusting(&cert).server_name("api.internal").unwrap();
    let (head, _) = fetch(&service(tls, h2_only, &Endpoint::new(backend.addr)), get("/")).await;
    assert_eq!(header(&head, "x-alpn"), "h2");
    assert_eq!(header(&head, "x-version"), "HTTP/2.0");

    // A server without h2 refuses the handshake: a connect error.
    let backend = tls_backend(&cert, &[b"http/1.1"]).await;
    let tls = trusting(&cert).server_name("api.internal").unwrap();
    let err = service(tls, h2_only, &Endpoint::new(backend.addr))
        .call(get("/"))
        .await
        .unwrap_err();
    assert_connect_error(&err);
    assert!(find::<rustls::Error>(&err).is_some(), "{}", chain(&err));
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_connect_error_naming_the_certificate_problem() {
    let served = self_signed(&["api.internal"]);
    let other = self_signed(&["other.internal", "api.internal"]);
    let backend = tls_backend(&served, &[]).await;
    let tls = trusting(&other).server_name("api.internal").unwrap();
    let err = service(tls, ClientConfig::default(), &Endpoint::new(backend.addr))
        .call(get("/"))
        .await
        .unwrap_err();
    assert_connect_error(&err);
    let boxed: lb_core::BoxError = err.into();
    assert!(is_connect_error(&*boxed));
    let text = chain(&*boxed);
    assert!(text.contains("api.internal"), "{text}");
    assert!(text.contains(&backend.addr.to_string()), "{text}");
    match find::<rustls::Error>(&*boxed) {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {}
        other => panic!("expected an unknown issuer, got {other:?}: {text}"),
    }
    assert!(text.contains("UnknownIssuer"), "{text}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_connect_error() {
    let cert = self_signed(&["api.internal"]);
    let backend = tls_backend(&cert, &[]).await;
    let tls = trusting(&cert).server_name("other.internal").unwrap();
    let err = service(tls, ClientConfig::default(), &Endpoint::new(backend.addr))
        .call(get("/"))
        .await
        .unwrap_err();
    assert_connect_error(&err);
    let text = chain(&err);
    assert!(
        matches!(find::<rustls::Error>(&err), Some(rustls::Error::InvalidCertificate(_))),
        "{text}"
    );
    assert!(text.contains("other.internal"), "{text}");
}

#[tokio::test]
async fn an_invalid_tls_server_name_in_metadata_fails_every_connection() {
    let cert = self_signed(&["api.internal"]);
    let backend = tls_backend(&cert, &[]).await;
    let ep = Endpoint::new(backend.addr).with_metadata(TLS_SERVER_NAME, "not a name");
    let err = service(trusting(&cert), ClientConfig::default(), &ep)
        .call(get("/"))
        .await
        .unwrap_err();
    assert_connect_error(&err);
    let text = chain(&err);
    assert!(text.contains(TLS_SERVER_NAME) && text.contains("not a name"), "{text}");
}

#[tokio::test]
async fn the_connect_timeout_covers_the_tls_handshake() {
    // Accepts and holds connections without ever answering the ClientHello.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            held.push(listener.accept().await.unwrap().0);
        }
    });
    let cert = self_signed(&["api.internal"]);
    let config = ClientConfig {
        connect_timeout: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    let tls = trusting(&cert).server_name("api.internal").unwrap();
    let started = tokio::time::Instant::now();
    let err = service(tls, config, &Endpoint::new(addr))
        .call(get("/"))
        .await
        .unwrap_err();
    assert_connect_error(&err);
    let io = find::<std::io::Error>(&err).expect("an I/O error in the chain");
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut, "{}", chain(&err));
    assert!(chain(&err).contains("TLS handshake"), "{}", chain(&err));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn the_http1_host_header_is_the_request_uri_authority() {
    let cert = self_signed(&["api.internal"]);
    let backend = tls_backend(&cert, &[b"http/1.1"]).await;
    let tls = trusting(&cert).server_name("api.internal").unwrap();
    let svc = service(tls, ClientConfig::default(), &Endpoint::new(backend.addr));

    let (head, _) = fetch(&svc, get("https://api.internal/x?y=1")).await;
    assert_eq!(header(&head, "x-target"), "/x?y=1");
    assert_eq!(header(&head, "x-host"), "api.internal");
    // A port and user information: the port stays, the user goes.
    let (head, _) = fetch(&svc, get("https://me@api.internal:8443/x")).await;
    assert_eq!(header(&head, "x-host"), "api.internal:8443");
    // A Host header the request has is kept.
    let req = Request::get("https://api.internal/x")
        .header("host", "vhost.internal")
        .body(empty())
        .unwrap();
    let (head, _) = fetch(&svc, req).await;
    assert_eq!(header(&head, "x-host"), "vhost.internal");
    // Neither: the endpoint's address.
    let (head, _) = fetch(&svc, get("/x")).await;
    assert_eq!(header(&head, "x-host"), backend.addr.to_string());
}

#[tokio::test]
async fn the_http2_authority_is_the_request_authority() {
    let cert = self_signed(&["api.internal"]);
    let backend = tls_backend(&cert, &[b"h2"]).await;
    let tls = trusting(&cert).server_name("api.internal").unwrap();
    let svc = service(tls, ClientConfig::default(), &Endpoint::new(backend.addr));

    let (head, _) = fetch(&svc, get("https://api.internal/x?y=1")).await;
    assert_eq!(header(&head, "x-version"), "HTTP/2.0");
    assert_eq!(header(&head, "x-target"), "https://api.internal/x?y=1");
    // From the Host header when the URI has no authority.
    let req = Request::get("/y")
        .header("host", "vhost.internal")
        .body(empty())
        .unwrap();
    let (head, _) = fetch(&svc, req).await;
    assert_eq!(header(&head, "x-authority"), "vhost.internal");
    // Neither: the endpoint's address.
    let (head, _) = fetch(&svc, get("/z")).await;
    assert_eq!(header(&head, "x-target"), format!("https://{}/z", backend.addr));
}

#[tokio::test]
async fn pools_are_per_address_and_server_name() {
    let cert = self_signed(&["a.internal", "b.internal"]);
    let backend = tls_backend(&cert, &[b"http/1.1"]).await;
    let connect = HttpConnect::new(ClientConfig::default()).with_tls(trusting(&cert));
    let named = |name: &str| {
        Endpoint::new(backend.addr)
            .with_id(name)
            .with_metadata(TLS_SERVER_NAME, name)
    };
    let (a, b) = (
        connect.for_endpoint(&named("a.internal")),
        connect.for_endpoint(&named("b.internal")),
    );
    for _ in 0..3 {
        let (head, _) = fetch(&a, get("/")).await;
        assert_eq!(header(&head, "x-sni"), "a.internal");
        let (head, _) = fetch(&b, get("/")).await;
        assert_eq!(header(&head, "x-sni"), "b.internal");
    }
    assert_eq!(backend.accepted(), 2);
    // A service made again for the same address and name shares its pool.
    let again = connect.for_endpoint(&named("a.internal"));
    fetch(&again, get("/")).await;
    assert_eq!(backend.accepted(), 2);
}

/// A file in the system's temporary directory, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(tag: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("lb-core-http-tls-{}-{tag}.pem", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn with_ca_file_trusts_a_pem_bundle() {
    let served = self_signed(&["api.internal"]);
    let other = self_signed(&["other.internal"]);
    let bundle = TempFile::new("bundle", &format!("{}{}", other.pem, served.pem));
    let backend = tls_backend(&served, &[]).await;
    let tls = TlsConnect::with_ca_file(&bundle.0)
        .unwrap()
        .server_name("api.internal")
        .unwrap();
    let (head, body) = fetch(
        &service(tls, ClientConfig::default(), &Endpoint::new(backend.addr)),
        get("/"),
    )
    .await;
    assert_eq!((head.status, &body[..]), (StatusCode::OK, &b"ok"[..]));
}

/// The only test that touches `SSL_CERT_FILE`, which `system_roots` reads (as OpenSSL
/// does) instead of the system's store.
#[tokio::test]
async fn system_roots_honours_ssl_cert_file() {
    let served = self_signed(&["api.internal"]);
    let bundle = TempFile::new("system", &served.pem);
    std::env::remove_var("SSL_CERT_DIR");
    std::env::set_var("SSL_CERT_FILE", &bundle.0);
    let tls = TlsConnect::system_roots();
    let empty = TempFile::new("system-empty", "no certificate here\n");
    std::env::set_var("SSL_CERT_FILE", &empty.0);
    let none = TlsConnect::system_roots();
    std::env::remove_var("SSL_CERT_FILE");

    let backend = tls_backend(&served, &[]).await;
    let tls = tls.unwrap().server_name("api.internal").unwrap();
    let (head, _) = fetch(
        &service(tls, ClientConfig::default(), &Endpoint::new(backend.addr)),
        get("/"),
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    let err = none.unwrap_err();
    assert!(err.to_string().contains("no usable root certificate"), "{err}");
}

#[test]
fn a_ca_file_that_cannot_be_used_is_an_error_naming_it() {
    let missing = std::env::temp_dir().join(format!("lb-core-http-tls-{}-missing.pem", std::process::id()));
    let err = TlsConnect::with_ca_file(&missing).unwrap_err();
    assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
    assert!(find::<std::io::Error>(&err).is_some(), "{err:?}");

    let empty = TempFile::new("empty", "no certificate here\n");
    let err = TlsConnect::with_ca_file(&empty.0).unwrap_err();
    assert!(err.to_string().contains(&empty.0.display().to_string()), "{err}");
    assert!(err.to_string().contains("no certificate"), "{err}");
}

#[test]
fn a_server_name_must_be_a_dns_name_or_an_ip_address() {
    let roots = rustls::RootCertStore::empty;
    assert!(TlsConnect::with_roots(roots()).server_name("api.internal").is_ok());
    assert!(TlsConnect::with_roots(roots()).server_name("10.0.0.1").is_ok());
    let err = TlsConnect::with_roots(roots()).server_name("not a name").unwrap_err();
    assert!(err.to_string().contains("not a name"), "{err}");
}
