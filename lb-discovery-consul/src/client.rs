//! A small Consul HTTP client: GET and PUT on one agent, with a token, a deadline per
//! request, and TLS from a CA file for `https://` agents.
//!
//! Hand-written on hyper's HTTP/1 connection API: the adapter needs four requests, and the
//! Rust Consul crates either time blocking reads out at 5 s or pull in a second HTTP stack.
//! One connection per request keeps a stalled blocking read from holding anything else.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request to Consul failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is not `http://host:port`, `https://host:port` or `host:port`.
    #[error("consul address {address:?}: {message}")]
    Address {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        message: String,
    },
    /// TLS could not be set up (CA file).
    #[error("consul TLS: {0}")]
    Tls(String),
    /// The agent could not be reached or the connection broke.
    #[error("consul {agent}: {message}")]
    Transport {
        /// The agent, `host:port`.
        agent: String,
        /// What happened.
        message: String,
    },
    /// No answer within the deadline.
    #[error("consul {agent}: no answer within {after:?}")]
    Timeout {
        /// The agent, `host:port`.
        agent: String,
        /// The deadline.
        after: Duration,
    },
    /// The agent answered with an error status.
    #[error("consul {agent}: {status}: {body}")]
    Status {
        /// The agent, `host:port`.
        agent: String,
        /// The status.
        status: StatusCode,
        /// The body (Consul's error bodies are plain text), trimmed.
        body: String,
    },
    /// The body is not what the API documents.
    #[error("consul {agent}: unexpected answer: {message}")]
    Decode {
        /// The agent, `host:port`.
        agent: String,
        /// What did not parse.
        message: String,
    },
}

impl Error {
    /// Whether retrying later may help (transport errors, timeouts, 429 and 5xx), as
    /// opposed to a configuration problem (400, 403, 404, a filter the server rejects).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::Timeout { .. } => true,
            Error::Status { status, body, .. } => {
                let bad_filter = body.contains("Failed to create boolean expression evaluator");
                let no_dc = body.contains("No path to datacenter");
                (*status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()) && !bad_filter && !no_dc
            }
            Error::Address { .. } | Error::Tls(_) | Error::Decode { .. } => false,
        }
    }
}

/// An answer: status, headers, body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// One Consul agent.
#[derive(Clone)]
pub(crate) struct Client {
    host: String,
    port: u16,
    /// `host:port`, for errors and the `Host` header.
    agent: String,
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("agent", &self.agent)
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `CONSUL_HTTP_ADDR`, else `http://127.0.0.1:8500`.
pub(crate) fn default_address() -> String {
    std::env::var("CONSUL_HTTP_ADDR")
        .ok()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:8500".to_string())
}

impl Client {
    /// A client of `address` (`http://host:port`, `https://host:port`, or `host:port`),
    /// trusting `ca_file` for HTTPS (else `CONSUL_CACERT`).
    pub(crate) fn new(address: &str, token: Option<String>, ca_file: Option<&Path>) -> Result<Self, Error> {
        let bad = |message: &str| Error::Address {
            address: address.to_string(),
            message: message.to_string(),
        };
        let (https, rest) = if let Some(r) = address.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = address.strip_prefix("http://") {
            (false, r)
        } else if address.contains("://") {
            return Err(bad("expected http://, https:// or host:port"));
        } else {
            (
                std::env::var("CONSUL_HTTP_SSL").is_ok_and(|v| v == "true" || v == "1"),
                address,
            )
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(bad("expected host:port with no path"));
        }
        let default_port = if https { 8501 } else { 8500 };
        let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(bad("expected `]:port`")),
            };
            (h.to_string(), port)
        } else if authority.matches(':').count() > 1 {
            // A bare IPv6 literal: no port.
            (authority.to_string(), default_port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let tls = if https {
            let ca = ca_file
                .map(Path::to_path_buf)
                .or_else(|| std::env::var_os("CONSUL_CACERT").map(Into::into))
                .ok_or_else(|| Error::Tls("an https:// agent needs a CA file (ca_file, or CONSUL_CACERT)".into()))?;
            let pem = std::fs::read(&ca).map_err(|e| Error::Tls(format!("{}: {e}", ca.display())))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| Error::Tls(format!("{}: {e}", ca.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::Tls(format!("{}: {e}", ca.display())))?;
            }
            if roots.is_empty() {
                return Err(Error::Tls(format!("{}: no certificate", ca.display())));
            }
            let config =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| Error::Tls(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| Error::Tls(format!("server name {host:?}: {e}")))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let agent = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Self {
            host,
            port,
            agent,
            tls,
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// The agent, `host:port`.
    pub(crate) fn agent(&self) -> &str {
        &self.agent
    }

    /// GET `path_and_query`; the answer if its status is 2xx.
    pub(crate) async fn get(&self, path_and_query: &str, deadline: Duration) -> Result<Answer, Error> {
        self.request(Method::GET, path_and_query, Bytes::new(), deadline).await
    }

    /// GET `path_and_query` and decode its JSON body; the headers come along (the index).
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path_and_query: &str,
        deadline: Duration,
    ) -> Result<(HeaderMap, T), Error> {
        let a = self.get(path_and_query, deadline).await?;
        let value = serde_json::from_slice(&a.body).map_err(|e| Error::Decode {
            agent: self.agent.clone(),
            message: e.to_string(),
        })?;
        Ok((a.headers, value))
    }

    /// PUT `path_and_query` with a JSON body (empty for none).
    pub(crate) async fn put(&self, path_and_query: &str, body: Bytes, deadline: Duration) -> Result<Answer, Error> {
        self.request(Method::PUT, path_and_query, body, deadline).await
    }

    async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Bytes,
        deadline: Duration,
    ) -> Result<Answer, Error> {
        match tokio::time::timeout(deadline, self.exchange(method, path_and_query, body)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                agent: self.agent.clone(),
                after: deadline,
            }),
        }
    }

    async fn exchange(&self, method: Method, path_and_query: &str, body: Bytes) -> Result<Answer, Error> {
        let transport = |e: &dyn std::fmt::Display| Error::Transport {
            agent: self.agent.clone(),
            message: e.to_string(),
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| transport(&e))?;
        let _ = tcp.set_nodelay(true);
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(http::header::HOST, &self.agent)
            .header(
                http::header::USER_AGENT,
                concat!("lb-discovery-consul/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        if !body.is_empty() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body)).map_err(|e| transport(&e))?;
        let rsp = match &self.tls {
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(|e| transport(&e))?;
                send(TokioIo::new(tls), req).await
            }
            None => send(TokioIo::new(tcp), req).await,
        }
        .map_err(|e| transport(&e))?;
        let (parts, body) = rsp;
        if !parts.status.is_success() {
            return Err(Error::Status {
                agent: self.agent.clone(),
                status: parts.status,
                body: String::from_utf8_lossy(&body).trim().chars().take(512).collect(),
            });
        }
        Ok(Answer {
            headers: parts.headers,
            body,
        })
    }
}

/// Sends one request on a fresh HTTP/1.1 connection and reads the whole answer.
async fn send<I>(io: I, req: Request<Full<Bytes>>) -> Result<(http::response::Parts, Bytes), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let rsp = sender.send_request(req).await?;
        let (parts, body) = rsp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok((parts, body))
    }
    .await;
    conn.abort();
    result
}

/// Percent-encodes a query value or a path segment (RFC 3986 unreserved kept).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let c = Client::new("http://127.0.0.1:8500", None, None).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 8500));
        let c = Client::new("consul.local:18500", None, None).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.agent()),
            ("consul.local", 18500, "consul.local:18500")
        );
        let c = Client::new("http://[::1]:8500/", None, None).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.agent()), ("::1", 8500, "[::1]:8500"));
        let c = Client::new("http://consul", None, None).unwrap();
        assert_eq!(c.port, 8500);
        assert!(Client::new("unix://consul.sock", None, None).is_err());
        assert!(Client::new("http://h:port", None, None).is_err());
        assert!(Client::new("http://h:80/v1", None, None).is_err());
        assert!(matches!(
            Client::new("https://h:8501", None, Some(Path::new("/nonexistent/ca.pem"))),
            Err(Error::Tls(_))
        ));
    }

    #[test]
    fn encoding() {
        assert_eq!(encode(r#""lb" in Service.Tags"#), "%22lb%22%20in%20Service.Tags");
        assert_eq!(encode("web-1_a.b~"), "web-1_a.b~");
    }

    #[test]
    fn transient_errors() {
        let status = |s: u16, body: &str| Error::Status {
            agent: "a".into(),
            status: StatusCode::from_u16(s).unwrap(),
            body: body.into(),
        };
        assert!(status(500, "No cluster leader").is_transient());
        assert!(status(429, "").is_transient());
        assert!(status(503, "rate limit").is_transient());
        assert!(!status(400, "Invalid wait time").is_transient());
        assert!(!status(403, "ACL not found").is_transient());
        assert!(!status(500, "Failed to create boolean expression evaluator: 1:4").is_transient());
    }
}
