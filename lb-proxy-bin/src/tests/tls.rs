//! HTTPS: HTTP/1.1 and HTTP/2 chosen by ALPN, and SNI choosing among certificates.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use lb_test_support::tls::{connector, Cert};

use super::support::{bounded, eventually, eventually_async, head, proxy, ready, Backend, TempDir};

/// A self-signed certificate for `names`, written as PEM files; returns (cert, key, DER).
fn cert(dir: &TempDir, tag: &str, names: &[&str]) -> (String, String, CertificateDer<'static>) {
    let c = Cert::self_signed(names);
    let (cert, key) = c.write_pem(dir.path(), tag);
    (cert.display().to_string(), key.display().to_string(), c.der)
}

/// One GET over TLS; returns (negotiated ALPN, status, body).
async fn get(
    addr: std::net::SocketAddr,
    tls: &TlsConnector,
    name: &str,
) -> Result<(Option<Vec<u8>>, u16, String), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let server = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let stream = tls.connect(server, tcp).await.map_err(|e| format!("handshake: {e}"))?;
    let alpn = stream.get_ref().1.alpn_protocol().map(|p| p.to_vec());
    let io = TokioIo::new(stream);
    let req = Request::get(format!("https://{name}/tls"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let rsp = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = req;
        req.headers_mut()
            .insert(http::header::HOST, name.parse().expect("host"));
        *req.uri_mut() = "/tls".parse().expect("uri");
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = rsp.status().as_u16();
    let body = rsp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((alpn, status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_alpn_and_sni() {
    bounded(async {
        let dir = TempDir::new("tls");
        let (dcert, dkey, droot) = cert(&dir, "default", &["web.localhost"]);
        let (acert, akey, aroot) = cert(&dir, "api", &["api.localhost"]);
        let a = Backend::start("a").await;
        let text = format!(
            "{}[server.tls]\ncert = \"{dcert}\"\nkey = \"{dkey}\"\n\
             [[server.tls.certs]]\ncert = \"{acert}\"\nkey = \"{akey}\"\nsni = [\"api.localhost\"]\n\n\
             [[services]]\nname = \"web\"\nendpoints = [\"{}\"]\n\n\
             [[routes]]\nservice = \"web\"\n",
            head(),
            a.addr
        );
        let p = proxy(&text).await;
        ready(&p, "web", 1).await;
        let addr = p.http_addrs[0];

        // HTTP/2 by ALPN, the default certificate.
        let (alpn, status, body) = get(addr, &connector(droot.clone(), &[b"h2", b"http/1.1"]), "web.localhost")
            .await
            .expect("h2 over TLS");
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("a path=/tls"), "{body}");

        // HTTP/1.1 by ALPN.
        let (alpn, status, _) = get(addr, &connector(droot.clone(), &[b"http/1.1"]), "web.localhost")
            .await
            .expect("http/1.1 over TLS");
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(status, 200);

        // SNI: api.localhost gets its own certificate; a client trusting only the
        // default one refuses it, a client trusting the api one accepts.
        let (_, status, _) = get(addr, &connector(aroot, &[b"h2"]), "api.localhost")
            .await
            .expect("sni cert");
        assert_eq!(status, 200);
        let wrong = get(addr, &connector(droot, &[b"h2"]), "api.localhost").await;
        assert!(
            wrong.is_err(),
            "the default certificate must not be served for api.localhost"
        );
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_client_silent_in_or_after_its_handshake_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    super::support::bounded_paused(std::time::Duration::from_secs(60), async {
        let dir = TempDir::new("tls-silent");
        let (dcert, dkey, droot) = cert(&dir, "default", &["web.localhost"]);
        let a = Backend::start("a").await;
        let text = format!(
            "{}[server.tls]\ncert = \"{dcert}\"\nkey = \"{dkey}\"\n\n\
             [[services]]\nname = \"web\"\nendpoints = [\"{}\"]\n\n[[routes]]\nservice = \"web\"\n",
            super::support::head_with("header_read_timeout = \"4s\""),
            a.addr
        );
        let p = proxy(&text).await;
        let addr = p.http_addrs[0];
        // Half a ClientHello's worth of nothing: connected, silent.
        let mut raw = TcpStream::connect(addr).await.expect("connect");
        let t = tokio::time::Instant::now();
        let mut buf = Vec::new();
        let _ = raw.read_to_end(&mut buf).await;
        let took = t.elapsed();
        assert!(
            took >= std::time::Duration::from_secs(4) && took <= std::time::Duration::from_secs(6),
            "{took:?}"
        );
        // A completed handshake, then nothing: the same deadline, counted from the accept.
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let t = tokio::time::Instant::now();
        let server = ServerName::try_from("web.localhost".to_string()).expect("name");
        let mut tls = connector(droot, &[b"h2", b"http/1.1"])
            .connect(server, tcp)
            .await
            .expect("handshake");
        let mut buf = [0u8; 1024];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let took = t.elapsed();
        assert!(
            took >= std::time::Duration::from_secs(4) && took <= std::time::Duration::from_secs(6),
            "{took:?}"
        );
        let _ = tls.shutdown().await;
        assert_eq!(a.hits(), 0);
        p.shutdown().await;
    })
    .await;
}

/// A plain HTTP/1.1 request over `stream`; returns the response head and body as text.
async fn raw_over<S>(stream: &mut S, host: &str, path: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    super::support::http1_over(stream, host, path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_tls_listeners_side_by_side_redirect_with_308_and_send_hsts() {
    bounded(async {
        let dir = TempDir::new("tls-side");
        let (dcert, dkey, droot) = cert(&dir, "default", &["web.localhost", "legacy.localhost"]);
        let a = Backend::start("a").await;
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\nredirect_https = true\nhsts = true\n\
             [server.tls]\ncert = \"{dcert}\"\nkey = \"{dkey}\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [[services]]\nname = \"web\"\nendpoints = [\"{}\"]\n\
             [[routes]]\nservice = \"web\"\n\
             [[routes]]\nhost = \"legacy.localhost\"\nservice = \"web\"\nredirect_https = false\n",
            a.addr
        );
        let p = proxy(&text).await;
        ready(&p, "web", 1).await;
        let (plain, https) = (p.http_addrs[0], p.https_addrs[0]);

        // The plain listener sends the client to HTTPS: same host, path and query.
        let mut tcp = TcpStream::connect(plain).await.expect("connect");
        let answer = raw_over(&mut tcp, "web.localhost:80", "/cart?item=7").await;
        assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
        let location = format!("location: https://web.localhost:{}/cart?item=7\r\n", https.port());
        assert!(answer.to_ascii_lowercase().contains(&location), "{answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("strict-transport-security"),
            "never HSTS over plain HTTP: {answer}"
        );
        // A route that keeps plain HTTP, and the ACME challenge path, are not redirected.
        let answer = raw_over(&mut tcp, "legacy.localhost", "/x").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("a path=/x"), "{answer}");
        let answer = raw_over(&mut tcp, "web.localhost", "/.well-known/acme-challenge/tok").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "served by the route: {answer}");

        // The TLS listener serves the route, with HSTS.
        let server = ServerName::try_from("web.localhost".to_string()).expect("name");
        let tcp = TcpStream::connect(https).await.expect("connect");
        let mut tls = connector(droot, &[b"http/1.1"])
            .connect(server, tcp)
            .await
            .expect("handshake");
        let answer = raw_over(&mut tls, "web.localhost", "/cart").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("strict-transport-security: max-age=63072000\r\n"),
            "{answer}"
        );
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_file_is_served_at_the_next_handshake_and_open_connections_stay() {
    bounded(async {
        let dir = TempDir::new("tls-rotate");
        let (dcert, dkey, old_root) = cert(&dir, "web", &["web.localhost"]);
        let a = Backend::start("a").await;
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n\
             [server.tls]\ncert = \"{dcert}\"\nkey = \"{dkey}\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [[services]]\nname = \"web\"\nendpoints = [\"{}\"]\n[[routes]]\nservice = \"web\"\n",
            a.addr
        );
        let p = proxy(&text).await;
        ready(&p, "web", 1).await;
        let https = p.https_addrs[0];
        let name = || ServerName::try_from("web.localhost".to_string()).expect("name");
        let tcp = TcpStream::connect(https).await.expect("connect");
        let mut held = connector(old_root.clone(), &[b"http/1.1"])
            .connect(name(), tcp)
            .await
            .expect("handshake with the first certificate");
        assert!(raw_over(&mut held, "web.localhost", "/1")
            .await
            .starts_with("HTTP/1.1 200"));

        // A renewal writes a new pair over the old files (a new key: a new certificate).
        let renewed = TempDir::new("tls-rotate-new");
        let (ncert, nkey, new_root) = cert(&renewed, "web", &["web.localhost"]);
        std::fs::copy(&nkey, &dkey).expect("replace the key");
        std::fs::copy(&ncert, &dcert).expect("replace the certificate");
        let new_tls = connector(new_root, &[b"http/1.1"]);
        eventually_async(
            "the new certificate to be served",
            std::time::Duration::from_secs(15),
            || async {
                let tcp = TcpStream::connect(https).await.expect("connect");
                new_tls.connect(name(), tcp).await.is_ok()
            },
        )
        .await;
        // A client trusting only the old certificate is refused now...
        let tcp = TcpStream::connect(https).await.expect("connect");
        assert!(connector(old_root, &[b"http/1.1"]).connect(name(), tcp).await.is_err());
        // ...and the connection opened before the change still serves.
        assert!(raw_over(&mut held, "web.localhost", "/2")
            .await
            .starts_with("HTTP/1.1 200"));
        // The status page reports the certificate served now.
        let status = super::support::admin_get(&p, "/api/status").await;
        let v: serde_json::Value = serde_json::from_str(&status).expect("json");
        let certs = v["certificates"].as_array().expect("certificates");
        assert_eq!(certs.len(), 1, "{status}");
        assert_eq!(certs[0]["names"], serde_json::json!(["web.localhost"]), "{status}");
        assert!(certs[0]["days_left"].as_f64().expect("days_left") > 300.0, "{status}");
        assert_eq!(certs[0]["default"], true, "{status}");
        assert!(
            certs[0]["source"].as_str().expect("source").ends_with("web.pem"),
            "{status}"
        );
        let metrics = super::support::admin_get(&p, "/metrics").await;
        assert!(
            metrics.contains("lb_tls_certificate_days_left{names=\"web.localhost\""),
            "{metrics}"
        );
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_service_terminates_tls_with_the_certificate_chosen_by_sni() {
    bounded(async {
        let dir = TempDir::new("tls-tcp");
        let (dcert, dkey, _) = cert(&dir, "default", &["web.localhost"]);
        let (dbcert, dbkey, dbroot) = cert(&dir, "db", &["db.localhost"]);
        let a = Backend::start("a").await;
        let text = format!(
            "{}[server.tls]\ncert = \"{dcert}\"\nkey = \"{dkey}\"\n\
             [[server.tls.certs]]\ncert = \"{dbcert}\"\nkey = \"{dbkey}\"\nsni = [\"db.localhost\"]\n\
             [[services]]\nname = \"db\"\nendpoints = [\"{}\"]\n\
             [[tcp]]\nlisten = \"127.0.0.1:0\"\nservice = \"db\"\ntls = true\n",
            head(),
            a.addr
        );
        let p = proxy(&text).await;
        ready(&p, "db", 1).await;
        let server = ServerName::try_from("db.localhost".to_string()).expect("name");
        let tcp = TcpStream::connect(p.tcp_addrs[0]).await.expect("connect");
        let mut tls = connector(dbroot, &[]).connect(server, tcp).await.expect("handshake");
        // The backend speaks HTTP: the bytes reach it in the clear.
        let answer = raw_over(&mut tls, "db.localhost", "/over-tcp").await;
        assert!(answer.contains("a path=/over-tcp"), "{answer}");
        // A TCP connection has no protocol-level close: shutting down waits for it.
        drop(tls);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_environment_variable_with_escaped_newlines() {
    bounded(async {
        let ck = Cert::self_signed(&["env.localhost"]);
        let pem = ck.combined_pem().replace('\n', "\\n");
        // A name no other test uses: the environment is the process's.
        std::env::set_var("LBTEST_SSL_CERT_ENV", pem);
        let a = Backend::start("a").await;
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n\
             [server.tls]\nenv = \"LBTEST_SSL_CERT_ENV\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [[services]]\nname = \"web\"\nendpoints = [\"{}\"]\n[[routes]]\nservice = \"web\"\n",
            a.addr
        );
        let p = proxy(&text).await;
        ready(&p, "web", 1).await;
        let server = ServerName::try_from("env.localhost".to_string()).expect("name");
        let tcp = TcpStream::connect(p.https_addrs[0]).await.expect("connect");
        let mut tls = connector(ck.der.clone(), &[b"http/1.1"])
            .connect(server, tcp)
            .await
            .expect("handshake with the certificate from the variable");
        assert!(raw_over(&mut tls, "env.localhost", "/")
            .await
            .starts_with("HTTP/1.1 200"));
        p.shutdown().await;
    })
    .await;
}

#[test]
fn check_loads_the_certificates_and_names_the_key_and_file_of_a_bad_one() {
    let dir = TempDir::new("tls-check");
    let (dcert, dkey, _) = cert(&dir, "default", &["web.localhost"]);
    let bad = dir.join("bad.pem");
    std::fs::write(&bad, "not a certificate\n").expect("write");
    let text = format!(
        "[server.tls]\ncert = \"{dcert}\"\nkey = \"{dkey}\"\n\
         [[server.tls.certs]]\ncert = \"{dcert}\"\nkey = \"{dkey}\"\nsni = [\"a.localhost\"]\n\
         [[server.tls.certs]]\ncert = \"{}\"\nkey = \"{dkey}\"\nsni = [\"b.localhost\"]\n",
        bad.display()
    );
    let file = dir.join("lb.toml");
    std::fs::write(&file, &text).expect("write config");
    let cfg = crate::config::load(&file).expect("the file itself is valid");
    let err = crate::tls::check(&cfg, &file)
        .expect_err("a bad certificate")
        .to_string();
    assert!(err.contains(":8:1: server.tls.certs[1]: "), "{err}");
    assert!(err.contains("bad.pem"), "{err}");
    // Without the bad entry the same check passes.
    let good = text
        .split("[[server.tls.certs]]")
        .take(2)
        .collect::<Vec<_>>()
        .join("[[server.tls.certs]]");
    std::fs::write(&file, good).expect("write config");
    let cfg = crate::config::load(&file).expect("valid");
    crate::tls::check(&cfg, &file).expect("loads");
}

/// An HTTPS backend on loopback with a certificate for `name`: answers every request
/// with the server name the client sent and the ALPN protocol agreed.
async fn tls_backend(dir: &TempDir, name: &str) -> (std::net::SocketAddr, String) {
    use hyper::service::service_fn;
    let ck = Cert::self_signed(&[name]);
    let ca = dir.write(format!("{name}-ca.pem"), &ck.cert_pem);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(ck.server_config(&[b"h2", b"http/1.1"])));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let (_, conn) = tls.get_ref();
                let sni = conn.server_name().unwrap_or("-").to_string();
                let alpn = String::from_utf8_lossy(conn.alpn_protocol().unwrap_or(b"-")).into_owned();
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let text = format!("tls sni={sni} alpn={alpn} path={}\n", req.uri().path());
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(Bytes::from(
                            text,
                        ))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, ca.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_over_tls_are_verified_with_the_route_host_as_server_name() {
    bounded(async {
        let dir = TempDir::new("tls-backend");
        let (addr, ca) = tls_backend(&dir, "api.localhost").await;
        let text = format!(
            "{}[[services]]\nname = \"api\"\nendpoints = [\"https://{addr}\"]\ntls_ca = \"{ca}\"\n\
             health = {{ path = \"/healthz\", interval = \"100ms\" }}\n\
             [[routes]]\nhost = \"api.localhost\"\nservice = \"api\"\n\
             [[services]]\nname = \"wrong\"\nendpoints = [\"https://{addr}\"]\ntls_ca = \"{ca}\"\ntls_server_name = \"other.localhost\"\nretries = 0\n\
             [[routes]]\nhost = \"wrong.localhost\"\nservice = \"wrong\"\n",
            head()
        );
        let p = proxy(&text).await;
        let plain = p.http_addrs[0];
        // The health probe speaks TLS too: the endpoint turns healthy.
        eventually("the endpoint over TLS passes its probe", std::time::Duration::from_secs(10), || {
            super::support::health(&p, "api")
                .iter()
                .any(|(_, h)| *h == lb_core::Health::Healthy)
        })
        .await;
        let mut tcp = TcpStream::connect(plain).await.expect("connect");
        let answer = raw_over(&mut tcp, "api.localhost", "/v1").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("tls sni=api.localhost alpn=h2 path=/v1"), "{answer}");
        // A name the certificate does not hold fails the handshake: a bad gateway, and
        // a connect failure of the endpoint.
        let answer = raw_over(&mut tcp, "wrong.localhost", "/v1").await;
        assert!(answer.starts_with("HTTP/1.1 502") || answer.starts_with("HTTP/1.1 503"), "{answer}");
        p.shutdown().await;
    })
    .await;
}
