//! HTTPS: HTTP/1.1 and HTTP/2 chosen by ALPN, and SNI choosing among certificates.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::support::{bounded, head, proxy, ready, Backend, TempDir};

/// A self-signed certificate for `names`, written as PEM files; returns (cert, key, DER).
fn cert(dir: &TempDir, tag: &str, names: &[&str]) -> (String, String, CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("generate a certificate");
    let cert = dir.0.join(format!("{tag}.pem"));
    let key = dir.0.join(format!("{tag}-key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write key");
    (
        cert.display().to_string(),
        key.display().to_string(),
        ck.cert.der().clone(),
    )
}

/// A TLS client that trusts only `root`, offering `alpn`.
fn connector(root: CertificateDer<'static>, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).expect("add root");
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
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
