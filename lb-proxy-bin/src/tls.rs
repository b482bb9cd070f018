//! TLS termination: the certificate store (lb-tls), ACME, and the listeners' acceptors.
//!
//! One [`Tls`] per process, shared by every configuration generation: the certificate
//! files and ACME's certificates change at run time without a reload, and each
//! handshake reads the store's current table.

use std::collections::BTreeSet;
use std::sync::Arc;

use lb_tls::acme::{Acme, AcmeConfig as Manager, ChallengeKind, Http01Responder};
use lb_tls::{CertSource, CertStore};
use tokio_rustls::TlsAcceptor;

use crate::config::{AcmeChallenge, AcmeConfig, Config, HostMatch, TlsConfig};
use crate::stack::StackError;

/// The certificate sources of `[server.tls]`, in precedence order.
pub(crate) fn sources(cfg: &TlsConfig) -> Vec<CertSource> {
    keyed_sources(cfg).into_iter().map(|(_, source)| source).collect()
}

/// The certificate sources of `[server.tls]`, in precedence order, each with the key
/// path (under `server.tls`) that gives it.
fn keyed_sources(cfg: &TlsConfig) -> Vec<(Vec<String>, CertSource)> {
    let mut out = Vec::new();
    for (i, sni) in cfg.sni_certs.iter().enumerate() {
        let names = sni
            .sni
            .iter()
            .map(|h| match h {
                HostMatch::Exact(n) => n.clone(),
                HostMatch::Suffix(s) => format!("*{s}"),
            })
            .collect();
        out.push((
            vec!["certs".into(), i.to_string()],
            CertSource::Files {
                cert: sni.cert_key.cert.clone(),
                key: sni.cert_key.key.clone(),
                names,
            },
        ));
    }
    if let Some(d) = &cfg.default {
        out.push((
            vec!["cert".into()],
            CertSource::Files {
                cert: d.cert.clone(),
                key: d.key.clone(),
                names: Vec::new(),
            },
        ));
    }
    if let Some(var) = &cfg.env {
        out.push((
            vec!["env".into()],
            CertSource::Env {
                var: var.clone(),
                names: Vec::new(),
            },
        ));
    }
    if let Some(dir) = &cfg.dir {
        out.push((vec!["dir".into()], CertSource::Dir(dir.clone())));
    }
    out
}

/// Loads `[server.tls]`'s certificates as the proxy would, for `check`: each source
/// alone, so that a fault names its key (`server.tls.certs[1]`, `server.tls.dir`, ...).
pub(crate) fn check(cfg: &Config, path: &std::path::Path) -> Result<(), crate::config::ConfigError> {
    let Some(tls) = &cfg.server.tls else {
        return Ok(());
    };
    let store = CertStore::new();
    let keyed = keyed_sources(tls);
    for (key, source) in &keyed {
        if let Err(e) = store.load(std::slice::from_ref(source)) {
            let key: Vec<&str> = ["server", "tls"]
                .into_iter()
                .chain(key.iter().map(String::as_str))
                .collect();
            return Err(crate::config::fault_at(path, &key, e.to_string()));
        }
    }
    let all: Vec<CertSource> = keyed.into_iter().map(|(_, source)| source).collect();
    store
        .load(&all)
        .map_err(|e| crate::config::fault_at(path, &["server", "tls"], e.to_string()))
}

/// The names ACME should hold certificates for under `cfg`: routes with `acme = true`
/// and `[acme] names`.
pub(crate) fn acme_names(cfg: &Config) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = cfg.acme.iter().flat_map(|a| a.names.iter().cloned()).collect();
    for r in cfg.routes.iter().filter(|r| r.acme) {
        if let Some(HostMatch::Exact(h)) = &r.host {
            names.insert(h.clone());
        }
    }
    names
}

/// The process's TLS side.
pub(crate) struct Tls {
    /// Every certificate served, by SNI.
    pub(crate) store: CertStore,
    /// ACME, when `[acme]` is configured.
    pub(crate) acme: Option<Acme>,
    /// For HTTP listeners: ALPN h2 and http/1.1.
    pub(crate) http: TlsAcceptor,
    /// For TCP listeners: no application protocol offered.
    pub(crate) tcp: TlsAcceptor,
    /// The task watching the certificate files.
    watch: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("certificates", &self.store.certificates().len())
            .field("acme", &self.acme.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

impl Tls {
    /// Loads the certificates of `cfg` and starts watching their files; `None` when the
    /// config serves no TLS. ACME is set up here; `stack::start` spawns its driver.
    pub(crate) fn start(cfg: &Config) -> Result<Option<Arc<Self>>, StackError> {
        let serves = cfg.server.tls.is_some() || cfg.acme.is_some() || cfg.tcp.iter().any(|t| t.tls);
        if !serves {
            return Ok(None);
        }
        let store = CertStore::new();
        let sources = cfg.server.tls.as_ref().map(sources).unwrap_or_default();
        if !sources.is_empty() {
            store.load(&sources).map_err(|e| StackError::Tls(e.to_string()))?;
        }
        let watch = tokio::spawn(store.watch(sources));
        let acme = match &cfg.acme {
            Some(a) => Some(Acme::new(manager(a), store.clone()).map_err(|e| StackError::Tls(format!("acme: {e}")))?),
            None => None,
        };
        let http = TlsAcceptor::from(store.server_config(&[b"h2", b"http/1.1"]));
        let tcp = TlsAcceptor::from(store.server_config(&[]));
        Ok(Some(Arc::new(Self {
            store,
            acme,
            http,
            tcp,
            watch,
        })))
    }

    /// The http-01 answers, for the plain listeners.
    pub(crate) fn http01(&self) -> Option<Http01Responder> {
        self.acme.as_ref().map(Acme::http01)
    }
}

/// lb-tls's ACME settings from `[acme]`.
fn manager(cfg: &AcmeConfig) -> Manager {
    let mut m = Manager::new(cfg.storage.clone());
    m.directory = cfg.directory.clone();
    m.directory_ca = cfg.directory_ca.clone();
    m.email = cfg.email.clone();
    m.challenges = cfg
        .challenges
        .iter()
        .map(|c| match c {
            AcmeChallenge::Http01 => ChallengeKind::Http01,
            AcmeChallenge::TlsAlpn01 => ChallengeKind::TlsAlpn01,
        })
        .collect();
    m
}

/// Whether a finished handshake was a tls-alpn-01 validation (RFC 8737 3: the connection
/// carries nothing else and is closed).
pub(crate) fn is_acme_validation(conn: &rustls::ServerConnection) -> bool {
    conn.alpn_protocol() == Some(lb_tls::ACME_TLS_ALPN)
}
