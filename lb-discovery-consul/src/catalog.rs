//! Catalog mode: every service tagged `<prefix>.enable=true`, with route and policy hints
//! from its tags, as one [`Catalog`] watch (the same shape as the Docker adapter's).
//!
//! A blocking watch of `GET /v1/catalog/services` (name -> the union of its instances'
//! tags) selects the services; each selected service gets a blocking watch of its health
//! with `tag=<prefix>.enable=true`, so untagged instances of the same service stay out.
//! Hints come from tags `<prefix>.host=...`, `<prefix>.path_prefix=...`,
//! `<prefix>.balance=...`, `<prefix>.hash_key=...`, `<prefix>.health.path=...` and
//! `<prefix>.health.interval=...` (the same keys and grammar as the Docker labels) of the
//! service's first instance.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use lb_core::discover::catalog::{Catalog, CatalogService, Hints};
use tokio::sync::{watch, Notify};

use crate::client::{Client, Error};
use crate::service::{AbortOnDrop, ConsulService, ConsulStatus, Cursor, ServiceHandle};

/// Builds a catalog-mode watch.
#[derive(Debug, Clone)]
pub struct ConsulCatalog {
    template: ConsulService,
    tag_prefix: String,
}

impl ConsulCatalog {
    /// Every service tagged `lb.enable=true` on the agent at `CONSUL_HTTP_ADDR` (else
    /// `http://127.0.0.1:8500`).
    pub fn new() -> Self {
        Self {
            template: ConsulService::new(""),
            tag_prefix: "lb".to_string(),
        }
    }

    /// The tag prefix, without the dot. Default `lb`.
    pub fn tag_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.tag_prefix = prefix.into();
        self
    }

    /// The settings every service watch uses (address, token, statuses, consistency,
    /// wait, backoff, dc); its service name and tags are ignored.
    pub fn watch_settings(mut self, template: ConsulService) -> Self {
        self.template = template;
        self
    }

    /// Starts the catalog watch on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// As [`ConsulService::spawn`].
    pub fn spawn(self) -> Result<CatalogHandle, Error> {
        let t = &self.template;
        let token = t.token.clone().or_else(|| std::env::var("CONSUL_HTTP_TOKEN").ok());
        let client = Client::new(&t.agent_address(), token, t.ca_file.as_deref())?;
        let (cat_tx, cat_rx) = watch::channel(Arc::new(Catalog::default()));
        let (status_tx, status_rx) = watch::channel(ConsulStatus {
            agent: client.agent().to_string(),
            watching: "catalog".to_string(),
            ..ConsulStatus::default()
        });
        let task = tokio::spawn(
            CatalogTask {
                enable: format!("{}.enable=true", self.tag_prefix),
                prefix: format!("{}.", self.tag_prefix),
                cfg: self,
                client,
                catalog: cat_tx,
                status: status_tx,
                watches: BTreeMap::new(),
                changed: Arc::new(Notify::new()),
                warned: Default::default(),
                tags: HashMap::new(),
                synced_once: false,
            }
            .run(),
        );
        Ok(CatalogHandle {
            catalog: cat_rx,
            status: status_rx,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }
}

impl Default for ConsulCatalog {
    fn default() -> Self {
        Self::new()
    }
}

/// A running catalog watch.
#[derive(Debug, Clone)]
pub struct CatalogHandle {
    catalog: watch::Receiver<Arc<Catalog>>,
    status: watch::Receiver<ConsulStatus>,
    _task: Arc<AbortOnDrop>,
}

impl CatalogHandle {
    /// Every selected service: name -> endpoints + hints. Not synced until the catalog
    /// and every selected service have answered once.
    pub fn catalog(&self) -> watch::Receiver<Arc<Catalog>> {
        self.catalog.clone()
    }

    /// The endpoint updates of one service of the catalog.
    pub fn service(
        &self,
        name: impl Into<String>,
    ) -> impl futures_core::Stream<Item = Result<lb_core::discover::Update, std::convert::Infallible>> + Send + Unpin + 'static
    {
        let keep = self._task.clone();
        futures_util::StreamExt::map(
            lb_core::discover::catalog::service_updates(self.catalog.clone(), name),
            move |u| {
                let _ = &keep;
                u
            },
        )
    }

    /// The catalog watch's own status (the per-service watches are summed in `errors`).
    pub fn status(&self) -> ConsulStatus {
        self.status.borrow().clone()
    }
}

struct CatalogTask {
    cfg: ConsulCatalog,
    enable: String,
    prefix: String,
    client: Client,
    catalog: watch::Sender<Arc<Catalog>>,
    status: watch::Sender<ConsulStatus>,
    watches: BTreeMap<String, ServiceHandle>,
    changed: Arc<Notify>,
    /// Warnings already logged.
    warned: std::collections::HashSet<String>,
    /// Each selected service's tags, from the catalog.
    tags: HashMap<String, Vec<String>>,
    /// Whether a catalog was published (every selected service had answered).
    synced_once: bool,
}

impl CatalogTask {
    async fn run(mut self) {
        let t = self.cfg.template.clone();
        let mut cursor = Cursor::new(&t);
        let query =
            t.dc.as_ref()
                .map(|d| format!("dc={}", crate::client::encode(d)))
                .unwrap_or_default();
        // The catalog request runs as a future of its own, so service watches' changes
        // are published while it blocks.
        type Catalogued = Result<(http::HeaderMap, HashMap<String, Vec<String>>), Error>;
        type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Catalogued> + Send>>;
        let mut pending: Option<Pending> = None;
        loop {
            if pending.is_none() {
                cursor.ready().await;
                let (url, deadline) = cursor.request("/v1/catalog/services", &query);
                self.status.send_modify(|s| s.requests += 1);
                let client = self.client.clone();
                pending = Some(Box::pin(async move { client.get_json(&url, deadline).await }));
            }
            let fut = pending.as_mut().expect("set above");
            tokio::select! {
                answer = fut => {
                    pending = None;
                    match answer {
                        Ok((headers, names)) => {
                            cursor.answered(&headers, &self.status);
                            self.select(&names);
                            self.publish();
                        }
                        Err(e) => {
                            let wait = cursor.failed(&e, &self.status);
                            if cursor.failures() == 1 {
                                tracing::warn!(error = %e, retry_in = ?wait, "consul: catalog read failed; keeping the last services");
                            }
                            // Service watches' changes are still published while the catalog
                            // read waits to be retried.
                            let until = tokio::time::Instant::now() + wait;
                            loop {
                                tokio::select! {
                                    () = tokio::time::sleep_until(until) => break,
                                    () = self.changed.notified() => self.publish(),
                                    () = self.catalog.closed() => return,
                                }
                            }
                        }
                    }
                }
                () = self.changed.notified() => self.publish(),
                () = self.catalog.closed() => return,
            }
        }
    }

    /// Starts watches for newly selected services and stops those no longer selected; keeps
    /// each selected service's tags (the union over its instances, whatever their health)
    /// for its hints.
    fn select(&mut self, names: &HashMap<String, Vec<String>>) {
        self.tags = names
            .iter()
            .filter(|(_, tags)| tags.iter().any(|t| t == &self.enable))
            .map(|(n, tags)| {
                let mut tags = tags.clone();
                tags.sort();
                (n.clone(), tags)
            })
            .collect();
        let selected: BTreeSet<&String> = names
            .iter()
            .filter(|(_, tags)| tags.iter().any(|t| t == &self.enable))
            .map(|(n, _)| n)
            .collect();
        self.watches.retain(|name, _| {
            let keep = selected.contains(name);
            if !keep {
                tracing::info!(service = %name, "consul: service no longer tagged; its watch stops");
            }
            keep
        });
        for name in selected {
            if self.watches.contains_key(name) {
                continue;
            }
            let mut cfg = self.cfg.template.clone();
            cfg.service = name.clone();
            cfg.tags = vec![self.enable.clone()];
            match cfg.spawn_notifying(Some(self.changed.clone())) {
                Ok(h) => {
                    tracing::info!(service = %name, "consul: following a tagged service");
                    self.watches.insert(name.clone(), h);
                }
                Err(e) => tracing::warn!(service = %name, error = %e, "consul: cannot watch the service"),
            }
        }
    }

    /// Publishes the catalog. The first time, only once every selected service has
    /// answered (a synced catalog says what each service has); after that, a service that
    /// has not answered yet (newly tagged) is left out until it does, and the others go on.
    fn publish(&mut self) {
        let mut services = BTreeMap::new();
        let mut errors = 0;
        for (name, h) in &self.watches {
            errors += h.status().errors;
            let Some(set) = h.set.borrow().clone() else {
                if !self.synced_once {
                    return;
                }
                continue;
            };
            // Hints from the catalog's tags, which do not depend on health: with every
            // instance failing its check the service keeps its routes and policy.
            let tags = self.tags.get(name).cloned().unwrap_or_else(|| set.tags.clone());
            let mut hints = Hints::default();
            for tag in &tags {
                let Some((key, value)) = tag.strip_prefix(&self.prefix).and_then(|kv| kv.split_once('=')) else {
                    continue;
                };
                if key == "enable" {
                    continue;
                }
                match hints.apply(key, value) {
                    Ok(true) => {}
                    Ok(false) => tracing::debug!(service = %name, tag = %tag, "consul: unknown tag ignored"),
                    Err(e) => {
                        if self.warned.insert(format!("{name} {tag}")) {
                            tracing::warn!(service = %name, tag = %tag, error = %e, "consul: bad tag ignored");
                        }
                    }
                }
            }
            services.insert(
                name.clone(),
                CatalogService {
                    endpoints: set.endpoints.clone(),
                    hints,
                },
            );
        }
        let count = services.len();
        self.synced_once = true;
        let next = Catalog::synced(services);
        self.catalog.send_if_modified(|cur| {
            if **cur == next {
                false
            } else {
                *cur = Arc::new(next);
                true
            }
        });
        self.status.send_modify(|s| {
            s.instances = count;
            s.errors = s.errors.max(errors);
        });
    }
}
