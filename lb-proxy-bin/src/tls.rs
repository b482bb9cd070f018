//! TLS: rustls with ALPN (h2, http/1.1) and SNI for several certificates.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::{CertKey, HostMatch, TlsConfig};
use crate::stack::StackError;

fn certified_key(ck: &CertKey) -> Result<CertifiedKey, StackError> {
    let certs = load_certs(&ck.cert)?;
    let key = load_key(&ck.key)?;
    let key =
        any_supported_type(&key).map_err(|e| StackError::Tls(format!("{}: unsupported key: {e}", ck.key.display())))?;
    Ok(CertifiedKey::new(certs, key))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, StackError> {
    let f = File::open(path).map_err(|e| StackError::Tls(format!("{}: {e}", path.display())))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut BufReader::new(f)).collect();
    let certs = certs.map_err(|e| StackError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(StackError::Tls(format!("{}: no PEM certificate found", path.display())));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, StackError> {
    let f = File::open(path).map_err(|e| StackError::Tls(format!("{}: {e}", path.display())))?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|e| StackError::Tls(format!("{}: {e}", path.display())))?
        .ok_or_else(|| StackError::Tls(format!("{}: no PEM private key found", path.display())))
}

/// A certificate resolver: an exact SNI name, then a `*.suffix`, then the default.
#[derive(Debug)]
struct Resolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            let name = name.to_ascii_lowercase();
            if let Some(ck) = self.exact.get(&name) {
                return Some(ck.clone());
            }
            if let Some((_, ck)) = self
                .wildcard
                .iter()
                .find(|(s, _)| name.len() > s.len() && name.ends_with(s.as_str()))
            {
                return Some(ck.clone());
            }
        }
        self.default.clone()
    }
}

/// Builds the acceptor for `[server.tls]`.
pub(crate) fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, StackError> {
    let mut exact = HashMap::new();
    let mut wildcard = Vec::new();
    for sni in &cfg.sni_certs {
        let ck = Arc::new(certified_key(&sni.cert_key)?);
        for name in &sni.sni {
            match name {
                HostMatch::Exact(n) => {
                    exact.insert(n.to_ascii_lowercase(), ck.clone());
                }
                HostMatch::Suffix(s) => wildcard.push((s.to_ascii_lowercase(), ck.clone())),
            }
        }
    }
    let default = cfg.default.as_ref().map(certified_key).transpose()?.map(Arc::new);
    if default.is_none() && exact.is_empty() && wildcard.is_empty() {
        return Err(StackError::Tls("no certificate configured".into()));
    }
    let resolver = Arc::new(Resolver {
        exact,
        wildcard,
        default,
    });
    let mut sc = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| StackError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(sc)))
}
