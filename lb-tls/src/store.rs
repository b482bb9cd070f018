//! The certificate table and its resolver.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The ALPN protocol of the tls-alpn-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or variable could not be read or parsed; the message names it.
    #[error("{0}")]
    Load(String),
}

/// Where configured certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertSource {
    /// A PEM chain and its PEM private key. `names` (exact, or `*.suffix`) are the server
    /// names it is served for; empty: the default certificate, also served for the names
    /// in its subject alternative names.
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
        /// Server names; empty for the default certificate.
        names: Vec<String>,
    },
    /// Every `*.pem` (chain and key in one file) and `NAME.crt` + `NAME.key` pair in a
    /// directory, each served for the names in its subject alternative names.
    Dir(PathBuf),
    /// An environment variable holding a PEM chain and key (`\n` escapes accepted);
    /// `names` as for [`CertSource::Files`].
    Env {
        /// The variable's name.
        var: String,
        /// Server names; empty for the default certificate.
        names: Vec<String>,
    },
}

/// What the status page shows of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertInfo {
    /// The names it is served for (configured names, else its subject alternative names).
    pub names: Vec<String>,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Where it came from: a file path, `env:VAR`, `acme`.
    pub source: String,
    /// Served when no name matches.
    pub default: bool,
}

/// One certificate in the table.
#[derive(Debug)]
struct Entry {
    key: Arc<CertifiedKey>,
    info: CertInfo,
}

/// A snapshot of every certificate, indexed for the resolver.
#[derive(Debug, Default)]
struct Table {
    /// Exact server name (lower case) -> certificate.
    exact: HashMap<String, Arc<Entry>>,
    /// `.suffix` (lower case, leading dot) -> certificate, longest suffix first.
    wildcard: Vec<(String, Arc<Entry>)>,
    default: Option<Arc<Entry>>,
    /// Every entry once, for reports.
    all: Vec<Arc<Entry>>,
}

/// The certificates served by TLS listeners, chosen by SNI; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct CertStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    table: ArcSwap<Table>,
    /// tls-alpn-01 challenge certificates by name.
    challenges: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl CertStore {
    /// An empty store (every handshake fails until something is loaded).
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the configured certificates with those of `sources`, loaded now. On an
    /// error nothing changes, and the error names the file or variable.
    pub fn load(&self, sources: &[CertSource]) -> Result<(), Error> {
        let _ = sources;
        Err(Error::Load("not yet".into()))
    }

    /// Serves `chain_pem`/`key_pem` for the names in the chain's leaf certificate (a
    /// certificate obtained at run time, as from ACME), replacing the one managed under
    /// `id` before. Configured certificates for the same exact name take precedence.
    pub fn set_managed(&self, id: &str, chain_pem: &[u8], key_pem: &[u8], source: &str) -> Result<(), Error> {
        let _ = (id, chain_pem, key_pem, source);
        Err(Error::Load("not yet".into()))
    }

    /// Stops serving the certificate managed under `id`.
    pub fn remove_managed(&self, id: &str) {
        let _ = id;
    }

    /// Answers tls-alpn-01 handshakes for `name` (ALPN `acme-tls/1`) with `key`, or stops
    /// answering them (`None`).
    pub fn set_challenge(&self, name: &str, key: Option<Arc<CertifiedKey>>) {
        let mut map = HashMap::clone(&self.inner.challenges.load());
        match key {
            Some(k) => map.insert(name.to_ascii_lowercase(), k),
            None => map.remove(&name.to_ascii_lowercase()),
        };
        self.inner.challenges.store(Arc::new(map));
    }

    /// Every certificate served now, configured ones first.
    pub fn certificates(&self) -> Vec<CertInfo> {
        self.inner.table.load().all.iter().map(|e| e.info.clone()).collect()
    }

    /// Whether any certificate is loaded.
    pub fn is_empty(&self) -> bool {
        self.inner.table.load().all.is_empty()
    }

    /// A rustls server config resolving through this store, offering `alpn` (plus
    /// `acme-tls/1`, for tls-alpn-01 challenges).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut sc = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the safe default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.clone()));
        sc.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        sc.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        Arc::new(sc)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        if hello.alpn().is_some_and(|mut p| p.any(|p| p == ACME_TLS_ALPN)) {
            // RFC 8737 3: only the challenge certificate answers this protocol.
            return name.and_then(|n| self.inner.challenges.load().get(&n).cloned());
        }
        let table = self.inner.table.load();
        if let Some(name) = &name {
            if let Some(e) = table.exact.get(name) {
                return Some(e.key.clone());
            }
            if let Some((_, e)) = table
                .wildcard
                .iter()
                .find(|(s, _)| name.len() > s.len() && name.ends_with(s.as_str()))
            {
                return Some(e.key.clone());
            }
        }
        table.default.as_ref().map(|e| e.key.clone())
    }
}
