//! Discovery sources shared by the whole process: one Docker watcher, one Consul catalog
//! watch, and one Consul watch per distinct `consul = {...}` source, whichever services and
//! providers read them.
//!
//! A source outlives every configuration generation: a reload that rebuilds a service
//! re-subscribes to the same watcher, so nothing reconnects and no event is lost.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use lb_discovery_consul::{CatalogHandle, ConsulCatalog, ConsulService, ConsulStatus, ServiceHandle};
use lb_discovery_docker::{DockerHandle, DockerSource, SourceStatus};

use crate::config::{Config, ConsulProviderConfig, ConsulSource, DockerProviderConfig, ProviderConfig};

/// The process's discovery sources, started on first use.
#[derive(Debug, Default)]
pub(crate) struct Sources {
    /// The Docker provider's settings, if the config has one: the watcher reads the Engine
    /// with them (endpoint, labels, network, address mode), for provider services and for
    /// file services with `docker = {...}` alike.
    docker_cfg: Option<DockerProviderConfig>,
    docker: OnceLock<Result<DockerHandle, String>>,
    /// The Consul provider's settings (catalog mode), if the config has one.
    consul_cfg: Option<ConsulProviderConfig>,
    consul_catalog: OnceLock<Result<CatalogHandle, String>>,
    /// Consul watches by their settings: services with the same `consul = {...}` share one.
    consul: Mutex<HashMap<ConsulService, ServiceHandle>>,
}

impl Sources {
    /// Sources for `cfg`. The Docker watcher starts at once if the config has a Docker
    /// provider or a service reading Docker, else the first time a service asks for it.
    pub(crate) fn new(cfg: &Config) -> Self {
        let docker_cfg = cfg.providers.iter().find_map(|p| match p {
            ProviderConfig::Docker(d) => Some(d.clone()),
            ProviderConfig::Consul(_) => None,
        });
        let consul_cfg = cfg.providers.iter().find_map(|p| match p {
            ProviderConfig::Consul(c) => Some(c.clone()),
            ProviderConfig::Docker(_) => None,
        });
        let sources = Self {
            docker_cfg,
            docker: OnceLock::new(),
            consul_cfg,
            consul_catalog: OnceLock::new(),
            consul: Mutex::default(),
        };
        if sources.consul_cfg.is_some() {
            let _ = sources.consul_catalog();
        }
        let reads_docker = cfg
            .services
            .iter()
            .any(|s| matches!(s.endpoints, crate::config::EndpointSource::Docker { .. }));
        if sources.docker_cfg.is_some() || reads_docker {
            let _ = sources.docker();
        }
        sources
    }

    /// The Docker provider's settings, if the config has a Docker provider.
    pub(crate) fn docker_provider(&self) -> Option<&DockerProviderConfig> {
        self.docker_cfg.as_ref()
    }

    /// The Docker watcher, started on first use (on the current Tokio runtime).
    pub(crate) fn docker(&self) -> Result<&DockerHandle, String> {
        self.docker
            .get_or_init(|| {
                let cfg = self.docker_cfg.clone().unwrap_or_default();
                let mut source = DockerSource::new().options(cfg.options()).resync_interval(cfg.resync);
                if let Some(ep) = &cfg.endpoint {
                    source = source.endpoint(ep.clone());
                }
                tracing::info!(endpoint = %source.endpoint_name(), "docker: watching the engine");
                source.spawn().map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The Consul provider's settings, if the config has a Consul provider.
    pub(crate) fn consul_provider(&self) -> Option<&ConsulProviderConfig> {
        self.consul_cfg.as_ref()
    }

    /// The Consul catalog watch (the provider's), started on first use.
    pub(crate) fn consul_catalog(&self) -> Result<&CatalogHandle, String> {
        self.consul_catalog
            .get_or_init(|| {
                let Some(cfg) = &self.consul_cfg else {
                    return Err("no consul provider".to_string());
                };
                let watch = cfg.source.watch();
                tracing::info!(agent = %watch.agent_address(), tag_prefix = %cfg.tag_prefix, "consul: following tagged services");
                ConsulCatalog::new()
                    .tag_prefix(cfg.tag_prefix.clone())
                    .watch_settings(watch)
                    .spawn()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The watch of a `consul = {...}` source: shared with every service that has the same
    /// settings, started on first use.
    pub(crate) fn consul_service(&self, src: &ConsulSource) -> Result<ServiceHandle, String> {
        let key = src.watch();
        let mut watches = self.consul.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = watches.get(&key) {
            return Ok(h.clone());
        }
        tracing::info!(agent = %key.agent_address(), service = %src.service, "consul: watching a service");
        let handle = key.clone().spawn().map_err(|e| e.to_string())?;
        watches.insert(key, handle.clone());
        Ok(handle)
    }

    /// Stops the Consul watches no service of `cfg` uses any more (a reload removed the
    /// service or changed its `consul = {...}`).
    pub(crate) fn prune(&self, cfg: &Config) {
        let used: std::collections::HashSet<ConsulService> = cfg
            .services
            .iter()
            .filter_map(|s| match &s.endpoints {
                crate::config::EndpointSource::Consul(src) => Some(src.watch()),
                _ => None,
            })
            .collect();
        let mut watches = self.consul.lock().unwrap_or_else(PoisonError::into_inner);
        watches.retain(|key, _| {
            let keep = used.contains(key);
            if !keep {
                tracing::info!(agent = %key.agent_address(), service = %key.service_name(), "consul: a watch no service uses any more is stopped");
            }
            keep
        });
    }

    /// Every Consul watch's status: the catalog's first, then the services' by name.
    pub(crate) fn consul_statuses(&self) -> Vec<ConsulStatus> {
        let mut out = Vec::new();
        if let Some(Ok(c)) = self.consul_catalog.get() {
            out.push(c.status());
        }
        let mut services: Vec<ConsulStatus> = self
            .consul
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(ServiceHandle::status)
            .collect();
        services.sort_by(|a, b| a.watching.cmp(&b.watching));
        out.extend(services);
        out
    }

    /// The Docker watcher's status, if it was started.
    pub(crate) fn docker_status(&self) -> Option<SourceStatus> {
        match self.docker.get() {
            Some(Ok(h)) => Some(h.status()),
            _ => None,
        }
    }
}
