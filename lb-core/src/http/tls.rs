//! TLS to endpoints (feature `tls`): [`TlsConnect`], handed to
//! [`HttpConnect::with_tls`](super::HttpConnect::with_tls).
//!
//! rustls with the ring provider. Each connection verifies the endpoint's certificate
//! against the configured roots and one server name per endpoint (see [`TlsConnect`]),
//! and offers ALPN `h2` and `http/1.1`; what the server picks decides the protocol.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::RootCertStore;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::endpoint::Endpoint;
use crate::BoxError;

/// The endpoint metadata key whose value is the server name to send (SNI) and to verify
/// the endpoint's certificate against, when the [`TlsConnect`] sets none for all
/// endpoints: `tls_server_name`.
///
/// Discovery sources copy metadata from where endpoints are declared (a static list's
/// `metadata = { tls_server_name = "api.internal" }`, Consul service meta), so an
/// endpoint found by its address can still be verified by its name.
pub const TLS_SERVER_NAME: &str = "tls_server_name";

/// The endpoint metadata key read after [`TLS_SERVER_NAME`]: `host`, used when its
/// value is one DNS name (a list or a wildcard is not a server name and is passed over).
const HOST_KEY: &str = "host";

/// How [`HttpConnect`](super::HttpConnect) reaches endpoints over TLS: the trusted roots
/// (or a whole rustls client config) and, optionally, the server name for every endpoint.
///
/// The server name sent (SNI) and verified for an endpoint is, in this order:
///
/// 1. the one set with [`server_name`](Self::server_name);
/// 2. the endpoint's metadata [`TLS_SERVER_NAME`] (`tls_server_name`); a value that is
///    no valid name makes every connection to that endpoint fail;
/// 3. the endpoint's metadata `host`, when it is a single DNS name;
/// 4. the endpoint's IP address (no SNI is sent; the certificate must name the IP).
///
/// ALPN offers `h2` and `http/1.1` (only `h2` with
/// [`ClientConfig::http2_only`](super::ClientConfig::http2_only)), unless a config given
/// to [`from_config`](Self::from_config) lists protocols of its own.
///
/// # Examples
///
/// ```no_run
/// use lb_core::http::{ClientConfig, HttpConnect, TlsConnect};
///
/// # fn main() -> Result<(), lb_core::http::TlsError> {
/// let tls = TlsConnect::with_ca_file("certs/internal-ca.pem")?.server_name("api.internal")?;
/// let connect = HttpConnect::new(ClientConfig::default()).with_tls(tls);
/// # let _ = connect; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsConnect {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for TlsConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnect")
            .field("server_name", &self.server_name)
            .field("alpn", &Alpn(&self.config.alpn_protocols))
            .finish_non_exhaustive()
    }
}

struct Alpn<'a>(&'a [Vec<u8>]);

impl fmt::Debug for Alpn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|p| String::from_utf8_lossy(p)))
            .finish()
    }
}

impl TlsConnect {
    /// Trusts the operating system's root certificates (read once, now), or those of
    /// the PEM file `SSL_CERT_FILE` and the directories `SSL_CERT_DIR` name when either
    /// is set (as with OpenSSL).
    ///
    /// # Errors
    ///
    /// When the system store yields no usable certificate; the error says why.
    /// Certificates that do not load while others do are logged (`warn`) and skipped.
    pub fn system_roots() -> Result<Self, TlsError> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let mut message = String::from("no usable root certificate in the system's certificate store");
            for e in &found.errors {
                message.push_str("; ");
                message.push_str(&e.to_string());
            }
            return Err(TlsError::new(message, None));
        }
        for e in &found.errors {
            tracing::warn!(error = %e, "some of the system's root certificates could not be read");
        }
        if ignored > 0 {
            tracing::warn!(
                ignored,
                "some of the system's root certificates are not usable and were skipped"
            );
        }
        Ok(Self::with_roots(roots))
    }

    /// Trusts the certificates of a PEM file (a CA bundle: one or more `BEGIN
    /// CERTIFICATE` blocks; other blocks are skipped).
    ///
    /// # Errors
    ///
    /// When the file cannot be read, holds no certificate, or a certificate in it does
    /// not parse; the error names the file.
    pub fn with_ca_file(path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let path = path.as_ref();
        let pem = std::fs::read(path)
            .map_err(|e| TlsError::new(format!("cannot read the CA file {}", path.display()), Some(e.into())))?;
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| {
                TlsError::new(
                    format!("the CA file {} is not valid PEM", path.display()),
                    Some(e.into()),
                )
            })?;
            roots.add(cert).map_err(|e| {
                TlsError::new(
                    format!("a certificate in the CA file {} is not usable", path.display()),
                    Some(e.into()),
                )
            })?;
        }
        if roots.is_empty() {
            return Err(TlsError::new(
                format!(
                    "the CA file {} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)",
                    path.display()
                ),
                None,
            ));
        }
        Ok(Self::with_roots(roots))
    }

    /// Trusts `roots`, with rustls' safe default protocol versions and the ring provider.
    pub fn with_roots(roots: RootCertStore) -> Self {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self::from_config(Arc::new(config))
    }

    /// Uses a rustls client config as it is: for client certificates, other roots or
    /// verifiers. Its ALPN protocols, when it lists any, are offered instead of
    /// `h2` and `http/1.1`.
    pub fn from_config(config: Arc<rustls::ClientConfig>) -> Self {
        Self {
            config,
            server_name: None,
        }
    }

    /// Sends and verifies `name` (a DNS name or an IP address) for every endpoint,
    /// whatever their metadata says: for endpoints that all serve one certificate.
    ///
    /// # Errors
    ///
    /// When `name` is neither a DNS name nor an IP address.
    pub fn server_name(mut self, name: impl Into<String>) -> Result<Self, TlsError> {
        let name = name.into();
        match ServerName::try_from(name.clone()) {
            Ok(n) => {
                self.server_name = Some(n);
                Ok(self)
            }
            Err(e) => Err(TlsError::new(
                format!("invalid TLS server name {name:?}"),
                Some(e.into()),
            )),
        }
    }

    /// The connector side, with ALPN set for `http2_only`.
    pub(crate) fn into_client(self, http2_only: bool) -> TlsClient {
        let mut config = self.config;
        if config.alpn_protocols.is_empty() {
            Arc::make_mut(&mut config).alpn_protocols = if http2_only {
                vec![b"h2".to_vec()]
            } else {
                vec![b"h2".to_vec(), b"http/1.1".to_vec()]
            };
        }
        TlsClient {
            connector: TlsConnector::from(config),
            server_name: self.server_name,
        }
    }
}

/// A [`TlsConnect`] inside an `HttpConnect`.
#[derive(Clone)]
pub(crate) struct TlsClient {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// The TLS side of one endpoint's connections: its server name, chosen as
    /// [`TlsConnect`] says.
    pub(crate) fn for_endpoint(&self, endpoint: &Endpoint) -> EndpointTls {
        let name = if let Some(name) = &self.server_name {
            Ok(name.clone())
        } else if let Some(value) = endpoint.metadata().get(TLS_SERVER_NAME) {
            ServerName::try_from(value.clone()).map_err(|_| {
                tracing::warn!(endpoint = %endpoint.id(), value, "the endpoint's {TLS_SERVER_NAME} is no server name; connections to it fail");
                Arc::from(value.as_str())
            })
        } else if let Some(name) = endpoint
            .metadata()
            .get(HOST_KEY)
            .and_then(|v| ServerName::try_from(v.clone()).ok())
        {
            Ok(name)
        } else {
            Ok(ServerName::IpAddress(endpoint.addr().ip().into()))
        };
        EndpointTls {
            connector: self.connector.clone(),
            name,
        }
    }
}

/// The TLS side of one endpoint's connections.
pub(crate) struct EndpointTls {
    connector: TlsConnector,
    /// The server name, or the metadata value that is none.
    name: Result<ServerName<'static>, Arc<str>>,
}

impl EndpointTls {
    /// The server name as text: part of the pool key, and shown in errors.
    pub(crate) fn name(&self) -> Cow<'_, str> {
        match &self.name {
            Ok(n) => n.to_str(),
            Err(raw) => Cow::Borrowed(raw),
        }
    }

    /// The TLS handshake over `tcp`; `true` with it when the connection speaks HTTP/2
    /// (the server chose `h2`, or chose nothing and `http2_only` is set).
    pub(crate) async fn handshake(
        &self,
        tcp: TcpStream,
        http2_only: bool,
    ) -> Result<(TlsStream<TcpStream>, bool), BoxError> {
        let name = match &self.name {
            Ok(n) => n.clone(),
            Err(raw) => {
                return Err(
                    format!("the endpoint's {TLS_SERVER_NAME} {raw:?} is neither a DNS name nor an IP address").into(),
                )
            }
        };
        match self.connector.connect(name, tcp).await {
            Ok(stream) => {
                let h2 = match stream.get_ref().1.alpn_protocol() {
                    Some(p) => p == b"h2",
                    None => http2_only,
                };
                Ok((stream, h2))
            }
            Err(e) => {
                // tokio-rustls wraps rustls' error in an `io::Error`, whose `source()`
                // skips it: unwrapped, it is in the chain for callers to find.
                let source: BoxError = if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                    e.into_inner().expect("an io::Error with an inner error")
                } else {
                    Box::new(e)
                };
                Err(Box::new(HandshakeError {
                    name: self.name().into_owned(),
                    source,
                }))
            }
        }
    }
}

/// A TLS handshake that failed: the server name, and rustls' error (or the I/O error)
/// as the source.
#[derive(Debug)]
struct HandshakeError {
    name: String,
    source: BoxError,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS handshake failed (server name {})", self.name)
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// A [`TlsConnect`] that could not be made: roots that do not load, a bad server name.
/// The message names the file or the name; the cause, if any, is its
/// [`source`](std::error::Error::source).
#[derive(Debug)]
pub struct TlsError {
    message: String,
    source: Option<BoxError>,
}

impl TlsError {
    fn new(message: String, source: Option<BoxError>) -> Self {
        Self { message, source }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}
