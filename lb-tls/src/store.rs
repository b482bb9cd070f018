//! The certificate table and its resolver.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::load::{self, load_sources, Loaded};

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
    ///
    /// A `NAME.pem`, `NAME.crt` or `NAME.cert` file is a chain; its key is `NAME.key` if
    /// that exists, else in the same file (an error if neither). Other files, hidden files
    /// and sub-directories are skipped; links are followed. Files are taken in the order
    /// of their names, and the first is the default certificate unless a `Files` or `Env`
    /// source without names is given.
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
    /// The names it is served for: configured names, else its DNS subject alternative
    /// names, else its subject's common name (lower case; `*.suffix` for a wildcard).
    pub names: Vec<String>,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Where it came from: a file path, `env:VAR`, or the `source` given to
    /// [`CertStore::set_managed`] (as `acme`).
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

/// A certificate with the names it is served for, before it is placed in a [`Table`].
#[derive(Debug)]
struct Placed {
    entry: Arc<Entry>,
    /// Configured names: above every other kind of name.
    configured: Vec<String>,
    /// Names from the certificate itself (subject alternative names, else common name).
    own: Vec<String>,
}

impl Placed {
    fn new(loaded: Loaded) -> Self {
        let own = if loaded.names.is_empty() {
            loaded.leaf.names()
        } else {
            Vec::new()
        };
        let info = CertInfo {
            names: if loaded.names.is_empty() {
                own.clone()
            } else {
                loaded.names.clone()
            },
            issuer: loaded.leaf.issuer,
            not_before: loaded.leaf.not_before,
            not_after: loaded.leaf.not_after,
            source: loaded.source,
            default: loaded.default,
        };
        Self {
            entry: Arc::new(Entry { key: loaded.key, info }),
            configured: loaded.names,
            own,
        }
    }
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

impl Table {
    /// Indexes the configured and managed certificates. Names are placed by rank, the
    /// first certificate to claim a name at the highest rank keeping it: configured names,
    /// then managed certificates' own names, then configured certificates' own names.
    fn build(configured: &[Placed], managed: &BTreeMap<String, Placed>) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard: Vec<(String, Arc<Entry>)> = Vec::new();
        let mut place = |p: &Placed, names: &[String]| {
            for name in names {
                match name.strip_prefix('*') {
                    Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 && !suffix.contains('*') => {
                        if !wildcard.iter().any(|(s, _)| s == suffix) {
                            wildcard.push((suffix.to_owned(), p.entry.clone()));
                        }
                    }
                    // Not a wildcard a client name can match (`*`, `*x.example.com`).
                    Some(_) => {}
                    None => {
                        exact.entry(name.clone()).or_insert_with(|| p.entry.clone());
                    }
                }
            }
        };
        for p in configured {
            place(p, &p.configured);
        }
        for p in managed.values() {
            place(p, &p.own);
        }
        for p in configured {
            place(p, &p.own);
        }
        // Stable: among suffixes of one length, the order of ranks stays (irrelevant to a
        // lookup, since two suffixes of one length cannot both match a name).
        wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        let default = configured
            .iter()
            .find(|p| p.entry.info.default)
            .map(|p| p.entry.clone());
        let all = configured
            .iter()
            .chain(managed.values())
            .map(|p| p.entry.clone())
            .collect();
        Self {
            exact,
            wildcard,
            default,
            all,
        }
    }
}

/// The certificates served by TLS listeners, chosen by SNI; cheap to clone (shared).
///
/// # Which certificate a handshake gets
///
/// The server name the client sends (SNI, compared in lower case) is looked up in this
/// order; the first match is served:
///
/// 1. an exact name configured on a [`CertSource::Files`] or [`CertSource::Env`] source;
/// 2. an exact name of a managed certificate ([`set_managed`](Self::set_managed), as from
///    ACME), taken from its subject alternative names;
/// 3. an exact name from the subject alternative names of a configured certificate
///    without configured names: each one in a [`CertSource::Dir`], and the default;
/// 4. a wildcard (`*.example.com` matches any name ending in `.example.com`, not
///    `example.com` itself), from any of the above, the longest suffix first; among equal
///    suffixes, in the order of 1-3;
/// 5. the default certificate: the first `Files`/`Env` source without names, else the
///    first certificate (by file name) of the first directory. Managed certificates are
///    never the default.
///
/// Within one rank the source listed first (and in a directory, the file name sorting
/// first) wins. A handshake offering the ALPN protocol `acme-tls/1` ([`ACME_TLS_ALPN`])
/// gets only a tls-alpn-01 challenge certificate ([`set_challenge`](Self::set_challenge))
/// for its name, and fails when there is none. A handshake that matches nothing fails.
#[derive(Debug, Clone, Default)]
pub struct CertStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    table: ArcSwap<Table>,
    /// tls-alpn-01 challenge certificates by name.
    challenges: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// What the table is built from; held while a new table is built and stored, so that
    /// concurrent changes are not lost.
    sets: Mutex<Sets>,
}

#[derive(Debug, Default)]
struct Sets {
    /// From the sources of the last successful [`CertStore::load`], in order.
    configured: Vec<Placed>,
    /// By id.
    managed: BTreeMap<String, Placed>,
}

impl CertStore {
    /// An empty store (every handshake fails until something is loaded).
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the configured certificates with those of `sources`, loaded now. On an
    /// error nothing changes, and the error names the file or variable.
    ///
    /// Managed certificates ([`set_managed`](Self::set_managed)) stay. Reads files: from
    /// async code, call it where blocking a moment is fine (or in `spawn_blocking`).
    pub fn load(&self, sources: &[CertSource]) -> Result<(), Error> {
        let loaded = load_sources(sources)?;
        let placed = loaded.into_iter().map(Placed::new).collect();
        self.update(|sets| sets.configured = placed);
        Ok(())
    }

    /// Serves `chain_pem`/`key_pem` for the names in the chain's leaf certificate (a
    /// certificate obtained at run time, as from ACME), replacing the one managed under
    /// `id` before. Configured certificates for the same exact name take precedence.
    ///
    /// Exactly: a name configured on a `Files` or `Env` source wins over a managed
    /// certificate, and a managed certificate wins over the subject alternative names of
    /// configured certificates (see [`CertStore`]). Its names are its DNS subject
    /// alternative names (else its common name). `source` is what [`CertInfo::source`] reports (e.g. `acme`). On an error (the
    /// message names `source` and `id`) nothing changes.
    pub fn set_managed(&self, id: &str, chain_pem: &[u8], key_pem: &[u8], source: &str) -> Result<(), Error> {
        let label = format!("{source} ({id})");
        let (key, leaf) = load::parse_pair(chain_pem, key_pem, &label, &label)?;
        let placed = Placed::new(Loaded {
            key,
            leaf,
            source: source.to_owned(),
            names: Vec::new(),
            default: false,
        });
        self.update(|sets| {
            sets.managed.insert(id.to_owned(), placed);
        });
        Ok(())
    }

    /// Stops serving the certificate managed under `id`.
    pub fn remove_managed(&self, id: &str) {
        self.update(|sets| {
            sets.managed.remove(id);
        });
    }

    /// Changes the sets and stores the table built from them.
    fn update(&self, change: impl FnOnce(&mut Sets)) {
        // A panic elsewhere while holding the lock leaves the sets whole (every change is
        // one assignment), so a poisoned lock is still good.
        let mut sets = self.inner.sets.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut sets);
        self.inner
            .table
            .store(Arc::new(Table::build(&sets.configured, &sets.managed)));
    }

    /// Answers tls-alpn-01 handshakes for `name` (ALPN `acme-tls/1`) with `key`, or stops
    /// answering them (`None`).
    pub fn set_challenge(&self, name: &str, key: Option<Arc<CertifiedKey>>) {
        let name = name.to_ascii_lowercase();
        // Read-copy-update: challenges for several names set at once are all kept.
        self.inner.challenges.rcu(|map| {
            let mut map = HashMap::clone(map);
            match &key {
                Some(k) => map.insert(name.clone(), k.clone()),
                None => map.remove(&name),
            };
            map
        });
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
