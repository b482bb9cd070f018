//! Certificates from an ACME (RFC 8555) directory, such as Let's Encrypt: obtained,
//! stored, served through a [`CertStore`] and renewed (feature `acme`).
//!
//! [`Acme`] manages one certificate per server name (its only subject alternative name).
//! It orders one when a name has no valid stored certificate, when
//! `renew_at` of the certificate's lifetime has passed, or when [`Acme::renew`] asks for
//! it, answering the directory's http-01 challenge (through an [`Http01Responder`] that
//! the HTTP listener serves on `/.well-known/acme-challenge/`) or tls-alpn-01 challenge
//! (through [`CertStore::set_challenge`], which TLS listeners built with
//! [`CertStore::server_config`] answer).
//!
//! # Storage
//!
//! Everything lives under [`AcmeConfig::storage`] (created with mode 0700):
//!
//! - `account.json`: the account's key and URL (mode 0600), reused across restarts; when
//!   the directory no longer knows the account (a test server restarted, an account
//!   deactivated), a new one is created and stored.
//! - `certs/NAME.crt` and `certs/NAME.key`: each name's chain and private key (mode 0600),
//!   each written to a temporary file and renamed. [`Acme::new`] serves every stored
//!   certificate at once, so a restart serves without ordering again.
//! - `locks/NAME.lock`: held while a name is ordered, so that several proxies sharing the
//!   directory do not order the same name at once. It holds the owner's pid and time; one
//!   older than 10 minutes is stale and taken over. A proxy that finds the lock held waits
//!   ([`AcmeConfig::lock_retry`]) and then re-reads the stored certificate, which the
//!   holder has written by then.
//!
//! # Failures
//!
//! A failed order never removes the certificate being served: the old one stays until a
//! new one is obtained. It is logged (a `tracing` warning naming the name and the error),
//! counted ([`AcmeStatus::orders_failed`]) and retried with jittered exponential backoff
//! ([`AcmeConfig::retry_base`] doubling up to [`AcmeConfig::retry_max`]). Every order has
//! a deadline ([`AcmeConfig::order_timeout`]) covering each request and the polling.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::CertStore;

mod order;
mod storage;

/// Let's Encrypt's production directory, the default [`AcmeConfig::directory`].
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Let's Encrypt's staging directory (untrusted certificates, generous rate limits).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// The path prefix of http-01 challenge requests (`GET /.well-known/acme-challenge/TOKEN`).
pub const HTTP01_PATH_PREFIX: &str = "/.well-known/acme-challenge/";

/// The [`CertStore`] id of a name's managed certificate, and its source.
const SOURCE: &str = "acme";

/// How long the driver sleeps at most before looking at the clock again (the wall clock
/// can jump, and other proxies can renew a shared certificate).
const MAX_IDLE: Duration = Duration::from_secs(3600);

/// A lock file older than this is stale: its owner died (orders are bounded well below).
const LOCK_STALE: Duration = Duration::from_secs(600);

/// A challenge type that [`Acme`] can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChallengeKind {
    /// `http-01`: the directory fetches `http://NAME/.well-known/acme-challenge/TOKEN`
    /// (port 80), answered by [`Http01Responder`].
    Http01,
    /// `tls-alpn-01` (RFC 8737): the directory opens TLS to `NAME:443` with ALPN
    /// `acme-tls/1`, answered by the [`CertStore`] with a challenge certificate.
    TlsAlpn01,
}

/// What [`Acme`] orders from where, and where it keeps it.
///
/// Built with [`AcmeConfig::new`]; every field can then be changed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AcmeConfig {
    /// The directory URL ([`LETS_ENCRYPT_PRODUCTION`] by default).
    pub directory: String,
    /// A PEM file whose (first) certificate is trusted for the directory's HTTPS, for
    /// private or test servers; `None`: the platform's trusted roots.
    pub directory_ca: Option<PathBuf>,
    /// A contact address for the account (`mailto:` is added).
    pub email: Option<String>,
    /// Where the account, certificates and locks are kept.
    pub storage: PathBuf,
    /// The fraction of a certificate's lifetime after which it is renewed (2/3 by
    /// default: day 60 of a 90-day certificate). Between 0 and 1.
    pub renew_at: f64,
    /// The challenge types to answer, in order of preference ([`ChallengeKind::Http01`]
    /// then [`ChallengeKind::TlsAlpn01`] by default). The first one the directory offers is
    /// used.
    pub challenges: Vec<ChallengeKind>,
    /// The delay before retrying after a first failed order (30 s by default); it doubles
    /// with each failure in a row, with jitter (each delay is 50-100 % of the nominal one).
    pub retry_base: Duration,
    /// The longest delay between retries (1 h by default).
    pub retry_max: Duration,
    /// How long to wait before re-checking a name whose lock another process holds (30 s
    /// by default).
    pub lock_retry: Duration,
    /// The deadline of one order, from the first request to the stored certificate,
    /// polling included (2 min by default; less than the 10 minutes after which a lock is
    /// stale).
    pub order_timeout: Duration,
}

impl AcmeConfig {
    /// The defaults, keeping everything under `storage`.
    pub fn new(storage: impl Into<PathBuf>) -> Self {
        Self {
            directory: LETS_ENCRYPT_PRODUCTION.to_owned(),
            directory_ca: None,
            email: None,
            storage: storage.into(),
            renew_at: 2.0 / 3.0,
            challenges: vec![ChallengeKind::Http01, ChallengeKind::TlsAlpn01],
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            lock_retry: Duration::from_secs(30),
            order_timeout: Duration::from_secs(120),
        }
    }

    fn check(&self) -> Result<(), AcmeError> {
        let bad = |what: &str| Err(AcmeError::Config(what.to_owned()));
        if self.directory.is_empty() {
            return bad("the directory URL is empty");
        }
        if !(self.renew_at > 0.0 && self.renew_at < 1.0) {
            return bad("renew_at must be between 0 and 1 (a fraction of the certificate's lifetime)");
        }
        if self.challenges.is_empty() {
            return bad("no challenge type to answer");
        }
        if self.retry_base.is_zero() || self.retry_max < self.retry_base {
            return bad("retry_base must be positive and at most retry_max");
        }
        if self.lock_retry.is_zero() {
            return bad("lock_retry must be positive");
        }
        if self.order_timeout.is_zero() || self.order_timeout >= LOCK_STALE {
            return bad("order_timeout must be positive and under 10 minutes (the age of a stale lock)");
        }
        Ok(())
    }
}

/// Why [`Acme::new`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// The storage directory could not be created or read.
    #[error("ACME storage {}: {source}", path.display())]
    Storage {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A setting is out of range; the message says which.
    #[error("ACME configuration: {0}")]
    Config(String),
}

/// Answers http-01 challenges: the HTTP listener calls [`respond`](Self::respond) for
/// `GET /.well-known/acme-challenge/TOKEN` and serves the key authorization it returns
/// (`200`, `text/plain`), or `404` for `None`. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Http01Responder {
    tokens: Arc<RwLock<HashMap<String, String>>>,
}

impl Http01Responder {
    /// The key authorization to answer for `token`, while its challenge is pending.
    pub fn respond(&self, token: &str) -> Option<String> {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }

    /// As [`respond`](Self::respond), for a request path: `None` unless it is
    /// `/.well-known/acme-challenge/TOKEN` with a pending token.
    pub fn respond_path(&self, path: &str) -> Option<String> {
        self.respond(path.strip_prefix(HTTP01_PATH_PREFIX)?)
    }

    /// Whether no challenge is pending.
    pub fn is_empty(&self) -> bool {
        self.tokens.read().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    fn publish(&self, token: &str, key_authorization: &str) {
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        tokens.insert(token.to_owned(), key_authorization.to_owned());
    }

    fn withdraw(&self, token: &str) {
        self.tokens.write().unwrap_or_else(|e| e.into_inner()).remove(token);
    }
}

impl fmt::Debug for Http01Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pending = self.tokens.read().unwrap_or_else(|e| e.into_inner()).len();
        f.debug_struct("Http01Responder").field("pending", &pending).finish()
    }
}

/// Where a name stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcmeState {
    /// No certificate yet, and no order started yet.
    Pending,
    /// An order is under way (the certificate served before, if any, stays meanwhile).
    Ordering,
    /// A certificate is served, valid until `not_after`; it is renewed in time.
    Valid {
        /// End of the certificate's validity.
        not_after: SystemTime,
    },
    /// Another process sharing the storage holds the name's lock (it is ordering); the
    /// stored certificate is read again at `retry_at`.
    Locked {
        /// When the lock and the stored certificate are checked again.
        retry_at: SystemTime,
    },
    /// The last order failed; the certificate served before, if any, stays.
    Failed {
        /// Why.
        error: String,
        /// When it is tried again.
        retry_at: SystemTime,
    },
}

/// What [`Acme::status`] reports of one name.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AcmeStatus {
    /// The server name.
    pub name: String,
    /// Where it stands.
    pub state: AcmeState,
    /// The end of validity of the certificate served for it, if any.
    pub not_after: Option<SystemTime>,
    /// Orders that ended with a certificate, since this manager started.
    pub orders_ok: u64,
    /// Orders that failed, since this manager started.
    pub orders_failed: u64,
    /// The error of the last failed order, if any (kept after a later success).
    pub last_error: Option<String>,
}

/// The ACME certificate manager: a cheap, clonable handle. [`run`](Self::run) is the
/// driver; the other methods can be called from anywhere, before or while it runs.
#[derive(Clone)]
pub struct Acme {
    inner: Arc<Inner>,
}

impl fmt::Debug for Acme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acme")
            .field("directory", &self.inner.cfg.directory)
            .field("storage", &self.inner.cfg.storage)
            .field("names", &self.inner.lock_state().wanted)
            .finish_non_exhaustive()
    }
}

/// A certificate held for a name.
#[derive(Debug, Clone)]
struct Held {
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Held {
    /// Reads the leaf of a PEM chain.
    fn parse(chain_pem: &[u8]) -> Result<Self, String> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let leaf = rustls_pemfile::certs(&mut &chain_pem[..])
            .next()
            .ok_or("no certificate in the chain")?
            .map_err(|e| format!("cannot read the chain: {e}"))?;
        let (_, cert) = X509Certificate::from_der(&leaf).map_err(|e| format!("cannot parse the certificate: {e}"))?;
        let validity = cert.validity();
        Ok(Self {
            not_before: from_unix(validity.not_before.timestamp()),
            not_after: from_unix(validity.not_after.timestamp()),
        })
    }

    /// When it is due for renewal: `renew_at` of its lifetime after `not_before`.
    fn renew_time(&self, renew_at: f64) -> SystemTime {
        let life = self.not_after.duration_since(self.not_before).unwrap_or_default();
        self.not_before + life.mul_f64(renew_at)
    }
}

fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// What a name's driver is doing.
#[derive(Debug, Default)]
enum Phase {
    #[default]
    Idle,
    Ordering,
    Locked {
        retry_at: SystemTime,
        next: Instant,
    },
    Failed {
        error: String,
        retry_at: SystemTime,
        next: Instant,
    },
}

#[derive(Debug, Default)]
struct NameEntry {
    cert: Option<Held>,
    phase: Phase,
    /// A renewal was asked for ([`Acme::renew`]).
    force: bool,
    /// Failed orders in a row, for the backoff.
    failures: u32,
    orders_ok: u64,
    orders_failed: u64,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    /// The names wanted now.
    wanted: BTreeSet<String>,
    /// Every name with a certificate served or wanted.
    names: BTreeMap<String, NameEntry>,
}

/// How one attempt ended.
#[derive(Debug)]
enum Outcome {
    /// A new certificate is served (and stored, unless `store_error`).
    Ordered {
        held: Held,
        store_error: Option<String>,
    },
    /// Another process had stored a certificate that is not yet due; it is served now.
    Loaded(Held),
    /// Another process holds the lock.
    Locked,
    Failed(String),
}

struct Inner {
    cfg: AcmeConfig,
    store: CertStore,
    http01: Http01Responder,
    state: Mutex<State>,
    wake: Notify,
    accounts: order::Accounts,
}

impl Acme {
    /// A manager ordering from `cfg.directory` into `store`. Creates the storage
    /// directory if needed and serves every certificate stored there at once; orders
    /// start when [`run`](Self::run) runs. A stored certificate that cannot be loaded is
    /// skipped with a warning (its name is ordered again if wanted).
    pub fn new(cfg: AcmeConfig, store: CertStore) -> Result<Acme, AcmeError> {
        cfg.check()?;
        storage::prepare(&cfg.storage)?;
        let mut names = BTreeMap::new();
        for name in storage::stored_names(&cfg.storage)? {
            let Some(name) = normalize_name(&name) else {
                tracing::warn!(name = %name, "ACME storage: skipping a certificate whose file name is no server name");
                continue;
            };
            match load_stored(&cfg, &store, &name) {
                Ok(Some(held)) => {
                    tracing::info!(name = %name, not_after = ?held.not_after, "ACME: serving the stored certificate");
                    names.insert(
                        name,
                        NameEntry {
                            cert: Some(held),
                            ..NameEntry::default()
                        },
                    );
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(name = %name, %error, "ACME storage: cannot load the stored certificate"),
            }
        }
        Ok(Acme {
            inner: Arc::new(Inner {
                cfg,
                store,
                http01: Http01Responder::default(),
                state: Mutex::new(State {
                    wanted: BTreeSet::new(),
                    names,
                }),
                wake: Notify::new(),
                accounts: order::Accounts::default(),
            }),
        })
    }

    /// The http-01 responder to serve on the plain-HTTP listener.
    pub fn http01(&self) -> Http01Responder {
        self.inner.http01.clone()
    }

    /// Sets the names wanted now (replacing the previous set; lower-cased, a trailing dot
    /// removed). A new name is ordered if it has no valid stored certificate; a name no
    /// longer wanted is no longer renewed (its certificate is served until it expires).
    /// Names that cannot be ordered here (wildcards, IP addresses, malformed ones) are
    /// skipped with a warning.
    pub fn set_names(&self, names: BTreeSet<String>) {
        let mut wanted = BTreeSet::new();
        for name in names {
            match normalize_name(&name) {
                Some(n) => {
                    wanted.insert(n);
                }
                None => {
                    tracing::warn!(name = %name, "ACME: not a server name that can be ordered by http-01 or tls-alpn-01; skipped")
                }
            }
        }
        self.inner.lock_state().wanted = wanted;
        self.inner.wake.notify_one();
    }

    /// Renews `name` now, even if its certificate is not due (an order under way counts).
    /// Returns false if the name is not wanted ([`set_names`](Self::set_names)).
    pub fn renew(&self, name: &str) -> bool {
        let Some(name) = normalize_name(name) else {
            return false;
        };
        let mut state = self.inner.lock_state();
        if !state.wanted.contains(&name) {
            return false;
        }
        let entry = state.names.entry(name).or_default();
        entry.force = true;
        if let Phase::Failed { retry_at, next, .. } | Phase::Locked { retry_at, next } = &mut entry.phase {
            *retry_at = SystemTime::now();
            *next = Instant::now();
        }
        drop(state);
        self.inner.wake.notify_one();
        true
    }

    /// Each wanted name, in order, with its state and counters.
    pub fn status(&self) -> Vec<AcmeStatus> {
        let state = self.inner.lock_state();
        state
            .wanted
            .iter()
            .map(|name| {
                let entry = state.names.get(name);
                let not_after = entry.and_then(|e| e.cert.as_ref()).map(|c| c.not_after);
                let phase = entry.map(|e| &e.phase).unwrap_or(&Phase::Idle);
                let state = match phase {
                    Phase::Ordering => AcmeState::Ordering,
                    Phase::Locked { retry_at, .. } => AcmeState::Locked { retry_at: *retry_at },
                    Phase::Failed { error, retry_at, .. } => AcmeState::Failed {
                        error: error.clone(),
                        retry_at: *retry_at,
                    },
                    Phase::Idle => match not_after {
                        Some(not_after) => AcmeState::Valid { not_after },
                        None => AcmeState::Pending,
                    },
                };
                AcmeStatus {
                    name: name.clone(),
                    state,
                    not_after,
                    orders_ok: entry.map_or(0, |e| e.orders_ok),
                    orders_failed: entry.map_or(0, |e| e.orders_failed),
                    last_error: entry.and_then(|e| e.last_error.clone()),
                }
            })
            .collect()
    }

    /// The driver: orders and renews the wanted names, each in its own task, until `stop`
    /// resolves. Orders under way are then abandoned (their challenges withdrawn, their
    /// locks released); certificates stay served.
    pub async fn run(self, stop: impl Future<Output = ()> + Send) {
        let mut stop = pin!(stop);
        let mut tasks = JoinSet::new();
        loop {
            let (due, wait) = self.inner.schedule();
            for (name, force) in due {
                let inner = self.inner.clone();
                tasks.spawn(async move { inner.attempt(name, force).await });
            }
            tokio::select! {
                () = &mut stop => break,
                () = self.inner.wake.notified() => {}
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            tracing::error!(error = %e, "ACME: an order task panicked");
                        }
                    }
                }
                () = tokio::time::sleep(wait.min(MAX_IDLE)) => {}
            }
        }
        tasks.shutdown().await;
    }
}

impl Inner {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change under the lock leaves the state whole, so a poisoned lock is fine.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the names due now as ordering and returns them (with their `force` flag),
    /// and how long until the next one is due. Drops expired certificates of names no
    /// longer wanted.
    fn schedule(&self) -> (Vec<(String, bool)>, Duration) {
        let now = SystemTime::now();
        let instant = Instant::now();
        let mut state = self.lock_state();
        let State { wanted, names } = &mut *state;
        names.retain(|name, entry| {
            let keep = wanted.contains(name)
                || matches!(entry.phase, Phase::Ordering)
                || entry.cert.as_ref().is_some_and(|c| c.not_after > now);
            if !keep && entry.cert.is_some() {
                tracing::info!(name = %name, "ACME: the certificate of a name no longer wanted expired; no longer served");
                self.store.remove_managed(&managed_id(name));
            }
            keep
        });
        let mut due = Vec::new();
        let mut wait = MAX_IDLE;
        for name in wanted.iter() {
            let entry = names.entry(name.clone()).or_default();
            let until = match &entry.phase {
                Phase::Ordering => continue,
                // Also when forced: `renew` brings the retry forward once.
                Phase::Failed { next, .. } | Phase::Locked { next, .. } => next.saturating_duration_since(instant),
                Phase::Idle if entry.force => Duration::ZERO,
                Phase::Idle => match &entry.cert {
                    None => Duration::ZERO,
                    Some(held) => held
                        .renew_time(self.cfg.renew_at)
                        .duration_since(now)
                        .unwrap_or(Duration::ZERO),
                },
            };
            if until.is_zero() {
                entry.phase = Phase::Ordering;
                due.push((name.clone(), entry.force));
            } else {
                wait = wait.min(until);
            }
        }
        (due, wait)
    }

    /// One attempt for `name`, within the order deadline; its outcome is recorded even if
    /// the task is aborted (then the name is simply idle again).
    async fn attempt(self: Arc<Self>, name: String, force: bool) {
        let mut record = Record {
            inner: &self,
            name: &name,
            outcome: None,
        };
        let outcome = match tokio::time::timeout(self.cfg.order_timeout, self.obtain(&name, force)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Failed(format!(
                "no certificate within the order deadline ({:?})",
                self.cfg.order_timeout
            )),
        };
        record.outcome = Some(outcome);
    }

    async fn obtain(&self, name: &str, force: bool) -> Outcome {
        let lock = match storage::Lock::acquire(&self.cfg.storage, name) {
            Ok(Some(lock)) => lock,
            Ok(None) => return Outcome::Locked,
            Err(e) => return Outcome::Failed(format!("cannot take the lock: {e}")),
        };
        if !force {
            // Another process may have renewed it while we were waiting for the lock or
            // since we started (they share the storage).
            match load_stored(&self.cfg, &self.store, name) {
                Ok(Some(held)) if SystemTime::now() < held.renew_time(self.cfg.renew_at) => {
                    return Outcome::Loaded(held);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(name = %name, %error, "ACME storage: cannot load the stored certificate; ordering a new one")
                }
            }
        }
        let (chain, key) = match order::order(self, name).await {
            Ok(pair) => pair,
            Err(e) => return Outcome::Failed(e),
        };
        let held = match Held::parse(chain.as_bytes()) {
            Ok(held) => held,
            Err(e) => return Outcome::Failed(format!("the issued certificate: {e}")),
        };
        if let Err(e) = self
            .store
            .set_managed(&managed_id(name), chain.as_bytes(), key.as_bytes(), SOURCE)
        {
            return Outcome::Failed(format!("the issued certificate cannot be served: {e}"));
        }
        let store_error = storage::write_cert(&self.cfg.storage, name, chain.as_bytes(), key.as_bytes())
            .err()
            .map(|e| format!("the certificate is served but could not be stored: {e}"));
        drop(lock);
        Outcome::Ordered { held, store_error }
    }

    fn record(&self, name: &str, outcome: Option<Outcome>) {
        let now = SystemTime::now();
        let instant = Instant::now();
        let mut state = self.lock_state();
        let Some(entry) = state.names.get_mut(name) else {
            return;
        };
        match outcome {
            None => entry.phase = Phase::Idle,
            Some(Outcome::Ordered { held, store_error }) => {
                tracing::info!(name = %name, not_after = ?held.not_after, "ACME: new certificate served");
                if let Some(error) = store_error {
                    tracing::warn!(name = %name, %error, "ACME storage");
                    entry.last_error = Some(error);
                }
                entry.cert = Some(held);
                entry.phase = Phase::Idle;
                entry.force = false;
                entry.failures = 0;
                entry.orders_ok += 1;
            }
            Some(Outcome::Loaded(held)) => {
                tracing::info!(name = %name, not_after = ?held.not_after, "ACME: serving the certificate stored by another process");
                entry.cert = Some(held);
                entry.phase = Phase::Idle;
                entry.failures = 0;
            }
            Some(Outcome::Locked) => {
                let wait = self.cfg.lock_retry;
                tracing::info!(name = %name, retry_in = ?wait, "ACME: another process is ordering this name; waiting for its certificate");
                entry.phase = Phase::Locked {
                    retry_at: now + wait,
                    next: instant + wait,
                };
            }
            Some(Outcome::Failed(error)) => {
                entry.failures = entry.failures.saturating_add(1);
                entry.orders_failed += 1;
                let wait = backoff(
                    self.cfg.retry_base,
                    self.cfg.retry_max,
                    entry.failures,
                    random_fraction(),
                );
                tracing::warn!(
                    name = %name,
                    %error,
                    retry_in = ?wait,
                    "ACME order failed; the certificate served before, if any, stays"
                );
                entry.last_error = Some(error.clone());
                entry.phase = Phase::Failed {
                    error,
                    retry_at: now + wait,
                    next: instant + wait,
                };
            }
        }
        drop(state);
        self.wake.notify_one();
    }
}

/// Records an attempt's outcome when dropped (also when its task is aborted).
struct Record<'a> {
    inner: &'a Inner,
    name: &'a str,
    outcome: Option<Outcome>,
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        self.inner.record(self.name, self.outcome.take());
    }
}

/// Serves the certificate stored for `name`, if any, and returns it.
fn load_stored(cfg: &AcmeConfig, store: &CertStore, name: &str) -> Result<Option<Held>, String> {
    let Some((chain, key)) = storage::read_cert(&cfg.storage, name).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let held = Held::parse(&chain)?;
    store
        .set_managed(&managed_id(name), &chain, &key, SOURCE)
        .map_err(|e| e.to_string())?;
    Ok(Some(held))
}

fn managed_id(name: &str) -> String {
    format!("{SOURCE}:{name}")
}

/// Lower case, no trailing dot; `None` unless a DNS name of letters, digits and hyphens
/// (which also makes it a safe file name).
fn normalize_name(name: &str) -> Option<String> {
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 || name.parse::<IpAddr>().is_ok() {
        return None;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    name.split('.').all(label_ok).then_some(name)
}

/// The delay before retry number `failures` (1 for the first): `base` doubling, capped at
/// `max`, scaled by 50-100 % (`fraction` in 0..1).
fn backoff(base: Duration, max: Duration, failures: u32, fraction: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    let nominal = base.saturating_mul(1u32 << doublings).min(max);
    nominal.mul_f64(0.5 + 0.5 * fraction.clamp(0.0, 1.0))
}

/// A number in 0..1, different at each call (for jitter; not for secrets).
fn random_fraction() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_and_unsafe_ones_refused() {
        assert_eq!(normalize_name("WWW.Example.COM.").as_deref(), Some("www.example.com"));
        for bad in [
            "",
            "*.example.com",
            "127.0.0.1",
            "::1",
            "a..b",
            "../etc",
            "a/b",
            "-a.com",
            "a b",
        ] {
            assert_eq!(normalize_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_within_half() {
        let base = Duration::from_secs(30);
        let max = Duration::from_secs(3600);
        assert_eq!(backoff(base, max, 1, 1.0), base);
        assert_eq!(backoff(base, max, 1, 0.0), base / 2);
        assert_eq!(backoff(base, max, 3, 1.0), base * 4);
        assert_eq!(backoff(base, max, 20, 1.0), max);
        assert_eq!(backoff(base, max, u32::MAX, 1.0), max);
        for _ in 0..100 {
            let f = random_fraction();
            assert!((0.0..1.0).contains(&f));
        }
    }

    #[test]
    fn renewal_is_due_at_the_configured_fraction_of_the_lifetime() {
        let held = Held {
            not_before: UNIX_EPOCH + Duration::from_secs(1000),
            not_after: UNIX_EPOCH + Duration::from_secs(1000 + 90 * 86400),
        };
        assert_eq!(
            held.renew_time(2.0 / 3.0),
            UNIX_EPOCH + Duration::from_secs(1000 + 60 * 86400)
        );
    }

    #[test]
    fn config_out_of_range_is_refused() {
        let mut cfg = AcmeConfig::new("x");
        assert!(cfg.check().is_ok());
        cfg.renew_at = 1.0;
        assert!(cfg.check().is_err());
        let mut cfg = AcmeConfig::new("x");
        cfg.challenges.clear();
        assert!(cfg.check().is_err());
        let mut cfg = AcmeConfig::new("x");
        cfg.order_timeout = LOCK_STALE;
        assert!(cfg.check().is_err());
    }

    #[test]
    fn http01_responder_answers_pending_tokens_only() {
        let r = Http01Responder::default();
        assert!(r.is_empty());
        r.publish("tok", "tok.thumb");
        assert_eq!(r.respond("tok").as_deref(), Some("tok.thumb"));
        assert_eq!(
            r.respond_path("/.well-known/acme-challenge/tok").as_deref(),
            Some("tok.thumb")
        );
        assert_eq!(r.respond_path("/tok"), None);
        r.withdraw("tok");
        assert_eq!(r.respond("tok"), None);
        assert!(r.is_empty());
    }
}
