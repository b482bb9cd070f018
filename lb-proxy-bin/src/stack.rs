//! Config -> stack: builds services and routes from a config, binds listeners, runs,
//! reloads, shuts down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use lb_core::balance::{AnyPolicy, LeastConn, Maglev, P2c, PeakEwma, Random, WeightedRoundRobin};
use lb_core::health::{CheckConfig, OutlierConfig, SlowStart, TcpProbe};
use lb_core::http::{ClientConfig, HttpConnect, HttpProbe};
use lb_core::Balancer;
use lb_discovery_static::{EndpointSpec, EndpointsFile};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{self, Balance, Config, ConfigError, EndpointSource, HashKey, Probe, ServiceConfig};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::runtime::Runtime;
use crate::sources::Sources;
use crate::upstream::{KeySource, Settings, Upstream};
use crate::{server, tcp, EXIT_CONFIG, EXIT_RUNTIME};

/// Why the proxy could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StackError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TLS material could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl StackError {
    /// The process exit code for this error.
    pub(crate) fn code(&self) -> u8 {
        match self {
            StackError::Config(_) | StackError::Tls(_) => EXIT_CONFIG,
            StackError::Bind { .. } | StackError::Other(_) => EXIT_RUNTIME,
        }
    }
}

fn policy(cfg: &ServiceConfig) -> AnyPolicy {
    match cfg.balance {
        Balance::RoundRobin => WeightedRoundRobin::new().into(),
        Balance::LeastConn => LeastConn::new().into(),
        Balance::P2c => P2c::default().into(),
        Balance::PeakEwma => P2c::new(PeakEwma::default()).into(),
        Balance::Random => Random::new().into(),
        Balance::ConsistentHash => Maglev::new().into(),
    }
}

fn key_source(cfg: &ServiceConfig) -> Option<KeySource> {
    Some(match cfg.hash_key.as_ref()? {
        HashKey::ClientIp => KeySource::ClientIp,
        HashKey::Header(h) => KeySource::Header(http::HeaderName::from_bytes(h.as_bytes()).ok()?),
        HashKey::Cookie(c) => KeySource::Cookie(c.clone()),
        HashKey::Path => KeySource::Path,
    })
}

/// TLS to a service's endpoints: its CA file or the system's roots, and the name sent
/// and verified (`tls_server_name`, else `route_host`, else each endpoint's own name).
fn backend_tls(
    cfg: &ServiceConfig,
    tls: &config::BackendTls,
    route_host: Option<&str>,
) -> Result<lb_core::http::TlsConnect, StackError> {
    use lb_core::http::TlsConnect;
    let connect = match &tls.ca_file {
        Some(ca) => TlsConnect::with_ca_file(ca),
        None => TlsConnect::system_roots(),
    }
    .map_err(|e| StackError::Tls(format!("service {}: {e}", cfg.name)))?;
    match tls.server_name.as_deref().or(route_host) {
        Some(name) => connect
            .server_name(name)
            .map_err(|e| StackError::Tls(format!("service {}: {e}", cfg.name))),
        None => Ok(connect),
    }
}

/// Builds one service: its balancer, fed by its discovery source. `route_host` is the
/// service's one exact route host, if it has exactly one: the name TLS to its endpoints
/// verifies by default.
pub(crate) fn build_upstream(
    cfg: &ServiceConfig,
    metrics: &Arc<Metrics>,
    sources: &Sources,
    drained: Vec<lb_core::EndpointId>,
    route_host: Option<&str>,
) -> Result<Upstream, StackError> {
    let mut b = Balancer::builder(policy(cfg))
        .drained(drained)
        .name(&cfg.name)
        .track_latency(true)
        .panic_threshold(cfg.panic_threshold as f64 / 100.0);
    // On in lb-core by default: `consecutive_failures = 0` (`None` here) turns it off
    // explicitly, and must not bring the defaults back.
    let outlier = cfg.outlier.clone().filter(|o| o.consecutive_failures > 0);
    b = b.outlier_detection(outlier.map(|outlier| OutlierConfig {
        consecutive_failures: outlier.consecutive_failures,
        base_ejection: outlier.base_ejection,
        max_ejection: outlier.max_ejection,
        max_ejection_percent: outlier.max_ejection_percent as f64 / 100.0,
    }));
    if let Some(ss) = cfg.slow_start {
        b = b.slow_start(SlowStart::new(ss));
    }
    if let Some(max) = cfg.max_in_flight {
        b = b.max_in_flight(max);
    }
    // One TLS client config (roots read once) for requests and probes.
    let tls = cfg
        .tls
        .as_ref()
        .map(|tls| backend_tls(cfg, tls, route_host))
        .transpose()?;
    if let Some(h) = &cfg.health {
        let cc = CheckConfig {
            interval: h.interval,
            timeout: h.timeout,
            rise: h.rise,
            fall: h.fall,
        };
        b = match &h.probe {
            Probe::Http { path } => {
                let mut probe = HttpProbe::new(path.clone());
                if let Some(tls) = &tls {
                    // Probes speak TLS too, on connections of their own.
                    let connect = HttpConnect::new(ClientConfig {
                        connect_timeout: h.timeout,
                        pool_max_idle_per_host: 1,
                        ..ClientConfig::default()
                    });
                    probe = probe.with_connect(connect.with_tls(tls.clone()));
                }
                b.health_check(probe, cc)
            }
            Probe::Tcp => b.health_check(TcpProbe, cc),
        };
    }
    let updates = match &cfg.endpoints {
        EndpointSource::Static(list) => {
            let specs = list
                .iter()
                .map(|e| EndpointSpec::new(e.addr.clone()).with_weight(e.weight))
                .collect();
            lb_discovery_static::resolve_stream(specs, cfg.dns_refresh).boxed()
        }
        EndpointSource::File(path) => EndpointsFile::new(path.clone())
            .dns_refresh(cfg.dns_refresh)
            .watch()
            .map_err(|e| StackError::Other(format!("service {}: {e}", cfg.name)))?
            .boxed(),
        EndpointSource::Docker { service } => {
            let docker = sources
                .docker()
                .map_err(|e| StackError::Other(format!("service {}: docker: {e}", cfg.name)))?;
            docker
                .service(service.clone())
                .map(|u| u.map_err(|never| -> lb_discovery_static::Error { match never {} }))
                .boxed()
        }
        EndpointSource::Consul(src) => {
            let watch = sources
                .consul_service(src)
                .map_err(|e| StackError::Other(format!("service {}: consul: {e}", cfg.name)))?;
            watch
                .updates()
                .map(|u| u.map_err(|never| -> lb_discovery_static::Error { match never {} }))
                .boxed()
        }
        EndpointSource::ConsulCatalog { service } => {
            let catalog = sources
                .consul_catalog()
                .map_err(|e| StackError::Other(format!("service {}: consul: {e}", cfg.name)))?;
            catalog
                .service(service.clone())
                .map(|u| u.map_err(|never| -> lb_discovery_static::Error { match never {} }))
                .boxed()
        }
    };
    let counted = {
        let metrics = metrics.clone();
        let name = cfg.name.clone();
        updates.inspect(move |u| {
            if u.is_ok() {
                metrics.discovery_update(&name);
            }
        })
    };
    let mut connect = HttpConnect::new(ClientConfig {
        connect_timeout: cfg.connect_timeout,
        ..ClientConfig::default()
    });
    if let Some(tls) = tls {
        connect = connect.with_tls(tls);
    }
    let balancer = b.spawn(counted, connect);
    Ok(Upstream {
        name: Arc::from(cfg.name.as_str()),
        balancer,
        settings: Settings {
            key: key_source(cfg),
            retries: cfg.retries,
            response_timeout: cfg.response_timeout,
            replay_limit: 64 * 1024,
        },
        config: cfg.clone(),
    })
}

/// Builds a runtime from `cfg`, carrying over services whose config is unchanged.
pub(crate) fn build_runtime(
    cfg: &Config,
    old: Option<&Runtime>,
    metrics: &Arc<Metrics>,
    generation: u64,
    sources: &Arc<Sources>,
) -> Result<Runtime, StackError> {
    let mut upstreams = Vec::with_capacity(cfg.services.len());
    // Each service's exact route hosts: with exactly one, TLS to its endpoints names it.
    let mut hosts: std::collections::HashMap<&str, Vec<&str>> = std::collections::HashMap::new();
    for r in &cfg.routes {
        if let Some(config::HostMatch::Exact(h)) = &r.host {
            hosts.entry(r.service.as_str()).or_default().push(h.as_str());
        }
    }
    let route_host = |name: &str| hosts.get(name).filter(|h| h.len() == 1).map(|h| h[0]);
    for s in &cfg.services {
        match old.and_then(|o| o.upstream(&s.name)).filter(|u| u.config == *s) {
            Some(u) => upstreams.push(u.clone()),
            None => {
                if old.is_some() {
                    tracing::info!(service = %s.name, "service added or changed; new balancer");
                }
                // An operator's drains outlive the balancer they were made on.
                let drained = old
                    .and_then(|o| o.upstream(&s.name))
                    .map(|u| u.balancer.drained_ids())
                    .unwrap_or_default();
                upstreams.push(Arc::new(build_upstream(
                    s,
                    metrics,
                    sources,
                    drained,
                    route_host(&s.name),
                )?));
            }
        }
    }
    let by_name: std::collections::HashMap<&str, usize> = cfg
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let index = |name: &str| *by_name.get(name).expect("validated: routes name services");
    let router = Router::with_upgrades(cfg.routes.iter().map(|r| {
        (
            r.host.as_ref().map(|h| h.to_string()),
            r.path_prefix.clone(),
            index(&r.service),
            r.upgrades.clone(),
            r.redirect_https,
        )
    }));
    let mut routes = vec![Vec::new(); cfg.services.len()];
    for r in &cfg.routes {
        routes[index(&r.service)].push(crate::providers::route_text(r));
    }
    Ok(Runtime::new(
        upstreams,
        router,
        metrics.clone(),
        generation,
        cfg.server.max_body_bytes,
    )
    .with_limits(server::Limits::from_config(&cfg.server))
    .with_routes(routes)
    .with_sources(sources.clone())
    .with_https(
        crate::runtime::Https::from_config(&cfg.server),
        old.and_then(|o| o.tls.clone()),
    ))
}

/// How long [`settle`] waits for new balancers to take their first endpoints.
pub(crate) const SETTLE_LIMIT: Duration = Duration::from_secs(2);

/// Waits (at most `limit`) until every balancer of `rt` has applied its first discovery
/// update. A balancer starts empty and its writer task fills it a moment later: serving
/// a runtime before that answers 503 (at start, and on every reload that adds or changes
/// a service). Carried-over balancers are done at once.
pub(crate) async fn settle(rt: &Runtime, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    for u in rt.upstreams() {
        while u.balancer.status().generation == 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(service = %u.name, "no endpoints discovered yet; serving anyway");
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A running proxy.
pub(crate) struct Started {
    stop: watch::Sender<bool>,
    /// The client connections of the HTTP and TCP listeners.
    conns: Arc<server::Conns>,
    grace: Duration,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// One clone per open TCP-service connection (and this one).
    tcp_open: Arc<()>,
    /// Listen addresses actually bound (port 0 resolved): plain HTTP, or HTTPS when
    /// `[server.tls]` is given without `tls_listen`.
    pub(crate) http_addrs: Vec<SocketAddr>,
    /// The `tls_listen` addresses actually bound.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) https_addrs: Vec<SocketAddr>,
    /// The admin address actually bound.
    pub(crate) admin_addr: SocketAddr,
    /// The `[[tcp]]` listen addresses actually bound, in config order.
    pub(crate) tcp_addrs: Vec<SocketAddr>,
    /// The running configuration (tests read it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) state: Arc<ArcSwap<Runtime>>,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("http", &self.http_addrs)
            .field("admin", &self.admin_addr)
            .field("tcp", &self.tcp_addrs)
            .finish()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StackError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StackError::Bind { addr, source })
}

/// The admin listener's credentials as `[admin]` gives them.
pub(crate) fn admin_auth(cfg: &config::AdminConfig) -> crate::admin::AdminAuth {
    crate::admin::AdminAuth {
        token: cfg.token.clone(),
        basic: cfg.basic.as_ref().map(|b| (b.user.clone(), b.password.clone())),
    }
}

/// Binds every listener and starts serving `cfg`. `path` enables reloads.
pub(crate) async fn start(cfg: Config, path: Option<PathBuf>) -> Result<Started, StackError> {
    for w in &cfg.warnings {
        tracing::warn!("config: {w}");
    }
    let metrics = Arc::new(Metrics::new());
    let grace = cfg.server.shutdown_grace;
    let tls = crate::tls::Tls::start(&cfg)?;
    let fd_limit = server::raise_fd_limit();
    let max_connections = cfg
        .server
        .max_connections
        .unwrap_or_else(|| server::default_max_connections(fd_limit));
    tracing::info!(max_connections, open_files_limit = ?fd_limit, "connection limit");
    // Bind everything first, so a port in use fails the start before anything runs.
    // Without `tls_listen`, `[server.tls]` makes every `listen` address HTTPS (as before
    // `tls_listen` existed).
    let every_listener_tls = cfg.server.tls_listen.is_empty() && cfg.server.tls.is_some();
    let mut http = Vec::new();
    for &addr in &cfg.server.listen {
        http.push((bind(addr).await?, every_listener_tls));
    }
    for &addr in &cfg.server.tls_listen {
        http.push((bind(addr).await?, true));
    }
    let admin = bind(cfg.admin.listen).await?;
    let mut tcps = Vec::new();
    for t in &cfg.tcp {
        tcps.push((bind(t.listen).await?, t.service.clone(), t.tls));
    }
    // Redirects name the HTTPS port: the one bound, where the file says 0 (tests).
    let mut cfg = cfg;
    for (i, (l, _)) in http.iter().skip(cfg.server.listen.len()).enumerate() {
        if cfg.server.tls_listen[i].port() == 0 {
            if let Ok(addr) = l.local_addr() {
                cfg.server.tls_listen[i] = addr;
            }
        }
    }
    let sources = Arc::new(Sources::new(&cfg));
    let mut runtime = build_runtime(&cfg, None, &metrics, 1, &sources)?;
    runtime.tls = tls.clone();
    settle(&runtime, SETTLE_LIMIT).await;
    let state = Arc::new(ArcSwap::from_pointee(runtime));
    let (stop, stop_rx) = watch::channel(false);
    let conns = server::Conns::new(max_connections);
    let tcp_open = Arc::new(());
    let mut tasks = Vec::new();
    let mut http_addrs = Vec::new();
    let mut https_addrs = Vec::new();
    for (l, secure) in http {
        let addr = l.local_addr().map_err(|e| StackError::Other(e.to_string()))?;
        let acceptor = match (&tls, secure) {
            (Some(t), true) => Some(t.http.clone()),
            _ => None,
        };
        tracing::info!(listen = %addr, tls = acceptor.is_some(), "proxy listening");
        if acceptor.is_some() && !cfg.server.tls_listen.is_empty() {
            https_addrs.push(addr);
        } else {
            http_addrs.push(addr);
        }
        let listener = server::Listener {
            // ACME's http-01 answers are served on plain listeners.
            http01: if acceptor.is_none() {
                tls.as_ref().and_then(|t| t.http01())
            } else {
                None
            },
            tls: acceptor,
        };
        tasks.push(tokio::spawn(server::serve_http(
            l,
            listener,
            state.clone(),
            stop_rx.clone(),
            conns.clone(),
        )));
    }
    let mut tcp_addrs = Vec::new();
    for (l, service, secure) in tcps {
        tcp_addrs.push(l.local_addr().map_err(|e| StackError::Other(e.to_string()))?);
        tracing::info!(listen = ?l.local_addr().ok(), service = %service, tls = secure, "tcp listening");
        let acceptor = if secure {
            tls.as_ref().map(|t| t.tcp.clone())
        } else {
            None
        };
        tasks.push(tokio::spawn(tcp::serve_tcp(
            l,
            service,
            acceptor,
            state.clone(),
            stop_rx.clone(),
            tcp_open.clone(),
            conns.clone(),
        )));
    }
    if let Some(acme) = tls.as_ref().and_then(|t| t.acme.clone()) {
        acme.set_names(crate::tls::acme_names(&cfg));
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(acme.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }
    let admin_addr = admin.local_addr().map_err(|e| StackError::Other(e.to_string()))?;
    tracing::info!(listen = %admin_addr, "admin listening");
    // Read per request: a reload that changes the credentials changes them at once.
    let auth = Arc::new(ArcSwap::from_pointee(admin_auth(&cfg.admin)));
    tasks.push(tokio::spawn(crate::admin::serve_admin(
        admin,
        state.clone(),
        auth.clone(),
        stop_rx.clone(),
    )));
    // The reconciler is the one writer of `state` (and of the admin credentials): reloads
    // of the file and providers' services both go through it.
    let (files_tx, files_rx) = tokio::sync::mpsc::unbounded_channel();
    if let Some(path) = path {
        // Watching before `start` returns: a change made as soon as the proxy is up is
        // seen.
        let file = lb_discovery_static::WatchedFile::new(path.clone());
        tasks.push(tokio::spawn(crate::reload::watch(
            path,
            file,
            cfg.clone(),
            files_tx,
            metrics.clone(),
            stop_rx.clone(),
        )));
    } else {
        // No file to watch: the channel stays open (and empty) while the proxy runs.
        std::mem::forget(files_tx);
    }
    tasks.push(tokio::spawn(crate::reconcile::run(
        cfg,
        files_rx,
        sources,
        crate::reconcile::Outputs {
            state: state.clone(),
            admin_auth: auth,
        },
        metrics,
        stop_rx.clone(),
    )));
    Ok(Started {
        stop,
        conns,
        grace,
        tasks,
        tcp_open,
        http_addrs,
        https_addrs,
        admin_addr,
        tcp_addrs,
        state,
    })
}

impl Started {
    /// Waits for SIGINT or SIGTERM, then shuts down gracefully; a second signal during
    /// the shutdown ends the process at once.
    pub(crate) async fn wait(self, signals: &mut crate::signals::Signals) -> Result<(), StackError> {
        let first = signals.stop().await;
        tracing::info!(
            signal = first,
            "shutting down: no new connections; finishing requests in flight (a second signal exits at once)"
        );
        let shutdown = self.shutdown();
        tokio::pin!(shutdown);
        tokio::select! {
            () = &mut shutdown => Ok(()),
            second = signals.stop() => {
                tracing::warn!(signal = second, "second signal: exiting now, cutting what is in flight");
                std::process::exit(i32::from(EXIT_RUNTIME));
            }
        }
    }

    /// Stops accepting, then waits up to the grace period for requests in flight.
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + self.grace;
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
        // Requests in flight finish; idle connections close (HTTP/2: GOAWAY).
        self.conns.drain();
        if !self.conns.closed_by(deadline).await {
            tracing::warn!(grace = ?self.grace, "grace period over; closing remaining HTTP connections");
            self.conns.close();
        }
        // TCP connections have no protocol-level close: they get what is left of the
        // grace period to finish on their own.
        while Arc::strong_count(&self.tcp_open) > 1 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    open = Arc::strong_count(&self.tcp_open) - 1,
                    "grace period over; closing remaining TCP connections"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!("stopped");
    }

    /// HTTP client connections being served now (tests read it).
    #[cfg(test)]
    pub(crate) fn open_connections(&self) -> usize {
        self.conns.in_use()
    }
}

/// `lb-proxy run --config FILE`. A stop signal while it starts ends it.
pub(crate) async fn run_file(path: PathBuf, mut signals: crate::signals::Signals) -> Result<(), StackError> {
    let load = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || config::load(&path))
    };
    let starting = async {
        let cfg = load
            .await
            .map_err(|e| StackError::Other(format!("reading the config: {e}")))?
            .map_err(StackError::Config)?;
        start(cfg, Some(path)).await
    };
    let started = tokio::select! {
        s = starting => s?,
        sig = signals.stop() => {
            tracing::info!(signal = sig, "stopped while starting");
            return Ok(());
        }
    };
    started.wait(&mut signals).await
}
