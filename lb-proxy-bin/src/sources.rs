//! Discovery sources shared by the whole process: one Docker watcher, whichever services
//! and providers read it.
//!
//! A source outlives every configuration generation: a reload that rebuilds a service
//! re-subscribes to the same watcher, so nothing reconnects and no event is lost.

use std::sync::OnceLock;

use lb_discovery_docker::{DockerHandle, DockerSource, SourceStatus};

use crate::config::{Config, DockerProviderConfig, ProviderConfig};

/// The process's discovery sources, started on first use.
#[derive(Debug, Default)]
pub(crate) struct Sources {
    /// The Docker provider's settings, if the config has one: the watcher reads the Engine
    /// with them (endpoint, labels, network, address mode), for provider services and for
    /// file services with `docker = {...}` alike.
    docker_cfg: Option<DockerProviderConfig>,
    docker: OnceLock<Result<DockerHandle, String>>,
}

impl Sources {
    /// Sources for `cfg`. The Docker watcher starts at once if the config has a Docker
    /// provider or a service reading Docker, else the first time a service asks for it.
    pub(crate) fn new(cfg: &Config) -> Self {
        let docker_cfg = cfg
            .providers
            .iter()
            .map(|p| match p {
                ProviderConfig::Docker(d) => d.clone(),
            })
            .next();
        let sources = Self {
            docker_cfg,
            docker: OnceLock::new(),
        };
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

    /// The Docker watcher's status, if it was started.
    pub(crate) fn docker_status(&self) -> Option<SourceStatus> {
        match self.docker.get() {
            Some(Ok(h)) => Some(h.status()),
            _ => None,
        }
    }
}
