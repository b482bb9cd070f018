//! One generation of the running configuration: services, routes, metrics.
//!
//! A reload builds a new `Runtime` and swaps it in atomically. Requests already routed
//! hold the old one (an `Arc`) and finish on it. A service whose configuration did not
//! change is carried over as it is, balancer and endpoint state included.

use std::collections::HashMap;
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::router::{Route, Router};
use crate::sources::Sources;
use crate::upstream::Upstream;

/// The services and routes of one configuration generation.
#[derive(Debug)]
pub(crate) struct Runtime {
    upstreams: Vec<Arc<Upstream>>,
    by_name: HashMap<String, usize>,
    router: Router,
    pub(crate) metrics: Arc<Metrics>,
    /// Bumped on every reload, for the status page.
    pub(crate) generation: u64,
    /// Request bodies larger than this are refused with 413.
    pub(crate) max_body: Option<u64>,
    /// `[server]`'s settings, read by each new connection and request (so a reload
    /// changes them for what comes next).
    pub(crate) limits: crate::server::Limits,
    /// The routes of each service, as text, in `upstreams` order (for the status page).
    routes: Vec<Vec<String>>,
    /// The discovery sources (shared by every generation), for status and metrics.
    pub(crate) sources: Arc<Sources>,
    /// Redirects and HSTS, when HTTPS is served.
    pub(crate) https: Option<Https>,
    /// The certificates and ACME (shared by every generation), when TLS is served.
    pub(crate) tls: Option<Arc<crate::tls::Tls>>,
}

/// What the listeners need of `[server]`'s HTTPS settings.
#[derive(Debug, Clone)]
pub(crate) struct Https {
    /// Plain requests are redirected unless their route says otherwise.
    pub(crate) redirect: bool,
    /// The port redirects name: `None` for 443, left out of the URL.
    pub(crate) port: Option<u16>,
    /// `Strict-Transport-Security` for HTTPS responses.
    pub(crate) hsts: Option<http::HeaderValue>,
}

impl Https {
    /// From `[server]`: `None` when nothing is served over HTTPS.
    pub(crate) fn from_config(server: &crate::config::ServerConfig) -> Option<Self> {
        if server.tls_listen.is_empty() && server.tls.is_none() {
            return None;
        }
        Some(Self {
            redirect: server.redirect_https,
            port: server.tls_listen.first().map(|a| a.port()).filter(|p| *p != 443),
            hsts: server.hsts.as_deref().and_then(|v| http::HeaderValue::from_str(v).ok()),
        })
    }
}

impl Runtime {
    pub(crate) fn new(
        upstreams: Vec<Arc<Upstream>>,
        router: Router,
        metrics: Arc<Metrics>,
        generation: u64,
        max_body: Option<u64>,
    ) -> Self {
        let by_name = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.to_string(), i))
            .collect();
        Self {
            upstreams,
            by_name,
            router,
            metrics,
            generation,
            max_body,
            limits: crate::server::Limits::default(),
            routes: Vec::new(),
            sources: Arc::default(),
            https: None,
            tls: None,
        }
    }

    /// Sets the routes of each service, in `upstreams` order.
    pub(crate) fn with_routes(mut self, routes: Vec<Vec<String>>) -> Self {
        self.routes = routes;
        self
    }

    /// Sets `[server]`'s settings.
    pub(crate) fn with_limits(mut self, limits: crate::server::Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the HTTPS settings and the TLS side.
    pub(crate) fn with_https(mut self, https: Option<Https>, tls: Option<Arc<crate::tls::Tls>>) -> Self {
        self.https = https;
        self.tls = tls;
        self
    }

    /// Sets the discovery sources.
    pub(crate) fn with_sources(mut self, sources: Arc<Sources>) -> Self {
        self.sources = sources;
        self
    }

    /// Every service with its routes, in config order.
    pub(crate) fn upstreams_with_routes(&self) -> impl Iterator<Item = (&Arc<Upstream>, &[String])> {
        self.upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u, self.routes.get(i).map_or(&[][..], |r| &r[..])))
    }

    /// Every service, in config order.
    pub(crate) fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.upstreams.iter()
    }

    /// A service by name.
    pub(crate) fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.by_name.get(name).map(|&i| &self.upstreams[i])
    }

    /// The service a request to `host` (an authority) and `path` goes to, with its route.
    pub(crate) fn route(&self, host: Option<&str>, path: &str) -> Option<(&Arc<Upstream>, &Route)> {
        self.router.find(host, path).map(|r| (&self.upstreams[r.target], r))
    }
}
