//! The reconciler: the one writer of the running configuration.
//!
//! It merges the file's config (handed over by `reload`) with each provider's latest
//! desired set of services and routes, builds the next [`Runtime`] through the same path
//! a reload uses (unchanged services carried over, balancer state and all) and swaps it in.
//!
//! - Endpoint changes never come here: a new container of a known service reaches that
//!   service's balancer through its own discovery stream, and the desired set is unchanged.
//! - A change of the provider's set is applied after a short debounce, and at most once
//!   per [`MIN_INTERVAL`], so a burst of containers (50 started at once) costs a handful of
//!   rebuilds, not 50.
//! - A provider service whose last container left keeps its routes for the provider's
//!   `linger` (answering 503, so a restart does not 404), then goes.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use lb_core::discover::catalog::Catalog;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::admin::AdminAuth;
use crate::config::{Config, Origin};
use crate::metrics::Metrics;
use crate::providers::{self, Provided};
use crate::runtime::Runtime;
use crate::sources::Sources;
use crate::stack::build_runtime;

/// Quiet time after a provider change before it is applied, to gather a burst.
const DEBOUNCE: Duration = Duration::from_millis(25);
/// Least time between two rebuilds caused by providers.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(1000);

/// A new file config and why it was read.
/// Whether it was applied (or was what already ran) is sent back, so that the reloader
/// compares the next read with what runs, not with a config that was refused.
pub(crate) type FileUpdate = (Config, &'static str, tokio::sync::oneshot::Sender<bool>);

/// What the reconciler writes: the running configuration, and the admin listener's
/// credentials.
#[derive(Debug)]
pub(crate) struct Outputs {
    pub(crate) state: Arc<ArcSwap<Runtime>>,
    pub(crate) admin_auth: Arc<ArcSwap<AdminAuth>>,
}

/// The settings of `next` that differ from `started`'s and apply on restart only, by
/// key: listeners, TLS and ACME, the connection cap, the shutdown grace, TCP listeners and
/// providers. Everything else applies at once (limits and timeouts to new connections
/// and requests).
pub(crate) fn restart_only_changes(started: &Config, next: &Config) -> Vec<&'static str> {
    let (a, b) = (&started.server, &next.server);
    [
        ("server.listen", a.listen != b.listen),
        ("server.tls_listen", a.tls_listen != b.tls_listen),
        ("server.tls", a.tls != b.tls),
        ("acme", started.acme != next.acme),
        ("server.max_connections", a.max_connections != b.max_connections),
        ("server.shutdown_grace", a.shutdown_grace != b.shutdown_grace),
        ("admin.listen", started.admin.listen != next.admin.listen),
        ("tcp", started.tcp != next.tcp),
        ("providers", started.providers != next.providers),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// Runs until `stop`.
pub(crate) async fn run(
    file: Config,
    mut files: mpsc::UnboundedReceiver<FileUpdate>,
    sources: Arc<Sources>,
    out: Outputs,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut r = Reconciler {
        started: file.clone(),
        file,
        sources: sources.clone(),
        state: out.state,
        admin_auth: out.admin_auth,
        metrics,
        present: BTreeMap::new(),
        lingering: BTreeMap::new(),
        applied: None,
        warned: HashSet::new(),
        last_provider_apply: None,
    };
    // The providers' catalogs: Docker's first (it wins a name both have), then Consul's.
    let mut catalogs: Vec<(Origin, watch::Receiver<Arc<Catalog>>)> = Vec::new();
    if sources.docker_provider().is_some() {
        match sources.docker() {
            Ok(h) => catalogs.push((Origin::Docker, h.catalog())),
            Err(e) => tracing::error!(error = %e, "docker provider not started"),
        }
    }
    if sources.consul_provider().is_some() {
        match sources.consul_catalog() {
            Ok(h) => catalogs.push((Origin::Consul, h.catalog())),
            Err(e) => tracing::error!(error = %e, "consul provider not started"),
        }
    }
    if !catalogs.is_empty() {
        r.read_catalogs(&mut catalogs);
        r.apply("start").await;
    }
    let mut due: Option<Instant> = None;
    loop {
        let linger_due = r.lingering.values().map(|(_, at)| *at).min();
        let next = match (due, linger_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            f = files.recv() => match f {
                Some((cfg, why, done)) => {
                    let restart = restart_only_changes(&r.started, &cfg);
                    if !restart.is_empty() {
                        tracing::warn!(
                            settings = %restart.join(", "),
                            "these settings differ from the running ones and apply on restart only: {}",
                            restart.join(", ")
                        );
                    }
                    let previous = std::mem::replace(&mut r.file, cfg);
                    let applied = r.apply(why).await;
                    if !applied {
                        // The refused file must not ride along with the next provider change.
                        r.file = previous;
                    }
                    let _ = done.send(applied);
                }
                None => return,
            },
            changed = any_changed(&mut catalogs) => {
                if let Err(i) = changed {
                    catalogs.remove(i);
                    continue;
                }
                if r.read_catalogs(&mut catalogs) && due.is_none() {
                    let earliest = r.last_provider_apply.map_or_else(Instant::now, |t| t + MIN_INTERVAL);
                    due = Some(earliest.max(Instant::now() + DEBOUNCE));
                }
            }
            _ = sleep_until(next) => {
                let now = Instant::now();
                if due.is_some_and(|d| d <= now) {
                    due = None;
                }
                r.expire(now);
                r.last_provider_apply = Some(now);
                r.apply("providers").await;
            }
            _ = stop.changed() => return,
        }
    }
}

/// Waits for any catalog to change: `Ok(i)`, or `Err(i)` if catalog `i`'s source is gone.
async fn any_changed(catalogs: &mut [(Origin, watch::Receiver<Arc<Catalog>>)]) -> Result<usize, usize> {
    if catalogs.is_empty() {
        return std::future::pending().await;
    }
    let waits = catalogs
        .iter_mut()
        .enumerate()
        .map(|(i, (_, rx))| Box::pin(async move { rx.changed().await.map(|()| i).map_err(|_| i) }));
    futures_util::future::select_all(waits).await.0
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct Reconciler {
    /// The file's config the process started with: restart-only settings are its.
    started: Config,
    file: Config,
    sources: Arc<Sources>,
    state: Arc<ArcSwap<Runtime>>,
    admin_auth: Arc<ArcSwap<AdminAuth>>,
    metrics: Arc<Metrics>,
    /// What the provider asks for now.
    present: BTreeMap<String, Provided>,
    /// Services the provider no longer has, kept until their deadline.
    lingering: BTreeMap<String, (Provided, Instant)>,
    /// The merged config last swapped in.
    applied: Option<Config>,
    /// Warnings already logged.
    warned: HashSet<String>,
    last_provider_apply: Option<Instant>,
}

impl Reconciler {
    /// Reads the providers' current catalogs; `true` if the desired set of services and
    /// routes changed (more than endpoints). A catalog not synced yet contributes nothing.
    fn read_catalogs(&mut self, catalogs: &mut [(Origin, watch::Receiver<Arc<Catalog>>)]) -> bool {
        let sources = self.sources.clone();
        let mut said = Vec::new();
        let mut next: BTreeMap<String, Provided> = BTreeMap::new();
        for (origin, rx) in catalogs.iter_mut() {
            let cat = rx.borrow_and_update().clone();
            let provided = match origin {
                Origin::Docker => match sources.docker_provider() {
                    Some(p) => providers::from_docker(&cat, p, &mut |w| said.push(w)),
                    None => continue,
                },
                Origin::Consul => match sources.consul_provider() {
                    Some(p) => providers::from_consul(&cat, p, &mut |w| said.push(w)),
                    None => continue,
                },
                Origin::File => continue,
            };
            if !cat.synced {
                // Not listed yet: keep what this provider had, so a slow start empties nothing.
                for (name, p) in &self.present {
                    if p.service.origin == *origin {
                        next.entry(name.clone()).or_insert_with(|| p.clone());
                    }
                }
                continue;
            }
            for (name, p) in provided {
                match next.get(&name) {
                    Some(first) => said.push(format!(
                        "{} service {name:?} ignored: the {} provider has a service of that name",
                        origin.as_str(),
                        first.service.origin.as_str()
                    )),
                    None => {
                        next.insert(name, p);
                    }
                }
            }
        }
        self.warn_all(said);
        if next == self.present {
            return false;
        }
        let now = Instant::now();
        for (name, p) in &self.present {
            if !next.contains_key(name) {
                let linger = match p.service.origin {
                    Origin::Docker => sources.docker_provider().map(|d| d.linger),
                    Origin::Consul => sources.consul_provider().map(|c| c.linger),
                    Origin::File => None,
                }
                .unwrap_or_default();
                tracing::info!(service = %name, source = p.service.origin.as_str(), linger = ?linger, "the service's last endpoint left its provider; its routes stay (503) for the linger time");
                self.lingering.insert(name.clone(), (p.clone(), now + linger));
            }
        }
        for name in next.keys() {
            self.lingering.remove(name);
        }
        self.present = next;
        true
    }

    /// Drops lingering services whose time is up.
    fn expire(&mut self, now: Instant) {
        self.lingering.retain(|name, (_, at)| {
            let keep = *at > now;
            if !keep {
                tracing::info!(service = %name, "provider service removed (no endpoint for the linger time)");
            }
            keep
        });
    }

    fn warn_all(&mut self, said: Vec<String>) {
        for w in said {
            if self.warned.insert(w.clone()) {
                tracing::warn!("{w}");
            }
        }
    }

    /// Builds and swaps in the merged config, if it differs from the running one; `false`
    /// if it could not be built (the running one stays).
    async fn apply(&mut self, why: &'static str) -> bool {
        let mut said = Vec::new();
        let provided = self.present.values().chain(self.lingering.values().map(|(p, _)| p));
        let merged = providers::merge(&self.file, provided, self.applied.as_ref(), &mut |w| said.push(w));
        self.warn_all(said);
        if self.applied.as_ref() == Some(&merged) {
            return true;
        }
        let old = self.state.load_full();
        let generation = old.generation + 1;
        match build_runtime(&merged, Some(&old), &self.metrics, generation, &self.sources) {
            Ok(rt) => {
                // New balancers are empty until their discovery runs: swapping one in
                // at once would answer 503 for a moment.
                crate::stack::settle(&rt, crate::stack::SETTLE_LIMIT).await;
                self.state.store(Arc::new(rt));
                let auth = crate::stack::admin_auth(&merged.admin);
                if self.applied.as_ref().map_or(true, |a| a.admin != merged.admin) {
                    if self.applied.is_some() {
                        tracing::info!("admin credentials changed: applied");
                    }
                    self.admin_auth.store(Arc::new(auth));
                }
                if why != "providers" && why != "start" {
                    self.metrics.reload(true);
                }
                tracing::info!(
                    reason = why,
                    generation,
                    services = merged.services.len(),
                    routes = merged.routes.len(),
                    "configuration applied"
                );
                // Names from routes (the file's and the providers') get certificates.
                if let Some(acme) = self.state.load().tls.as_ref().and_then(|t| t.acme.as_ref()) {
                    acme.set_names(crate::tls::acme_names(&merged));
                }
                self.applied = Some(merged);
                self.sources.prune(self.applied.as_ref().expect("just set"));
                true
            }
            Err(e) => {
                if why != "providers" && why != "start" {
                    self.metrics.reload(false);
                }
                tracing::error!(reason = why, error = %e, "configuration refused; the running one stays");
                false
            }
        }
    }
}
