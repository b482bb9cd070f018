//! The watcher: one task per Docker Engine that keeps a [`Catalog`] of the labelled
//! containers current, from the events stream, with the list as the source of truth.
//!
//! The loop follows the resync algorithm Docker's own behaviour asks for (the daemon keeps
//! only its last 256 events and drops events for slow readers):
//!
//! 1. negotiate the API version, read the daemon's clock (`/info`; the local clock if a
//!    socket proxy refuses it);
//! 2. open `GET /events?since=<daemon time - 1 s>` *before* listing, so nothing that
//!    happens between the list and the stream is missed (a duplicate only causes an
//!    idempotent inspect);
//! 3. list the containers, inspect each, publish the whole catalog;
//! 4. on each event, inspect the one container it names (404: gone) and publish the
//!    catalog if it changed; every `resync_interval`, list everything again;
//! 5. on a broken stream or an error, back to 1 after a capped, jittered backoff, keeping
//!    the last published catalog: an unreachable daemon never empties anything.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, EventMessage, EventMessageTypeEnum, HealthStatusEnum};
use bollard::query_parameters::{EventsOptions, InspectContainerOptions, ListContainersOptions};
use bollard::Docker;
use futures_util::StreamExt;
use lb_core::discover::catalog::{self, Catalog, CatalogService};
use lb_core::discover::{Backoff, Update};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::labels::{evaluate, Member, Options, Verdict};

/// The lowest Engine API version the adapter speaks (Docker 20.10). Every field it reads
/// exists there.
pub const MIN_API_VERSION: (usize, usize) = (1, 41);

/// Why a watcher could not be set up. (Failures to reach the daemon are not errors: the
/// watcher keeps trying, and says so in its [`SourceStatus`].)
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint is not `unix:///path`, `tcp://host:port` or `http://host:port`.
    #[error("docker endpoint {endpoint:?}: {message}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was refused.
        message: String,
    },
}

/// What a watcher has seen, for logs, status pages and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// The endpoint it reads.
    pub endpoint: String,
    /// Whether the last attempt to talk to the daemon worked.
    pub reachable: bool,
    /// Whether a catalog was ever published (a first full listing succeeded).
    pub synced: bool,
    /// When the daemon stopped answering; `None` while it answers. While set, the catalog
    /// is the last good one, possibly stale.
    pub stale_since: Option<SystemTime>,
    /// The API version in use, once negotiated.
    pub api_version: Option<String>,
    /// Events received.
    pub events: u64,
    /// Full listings done (the first, each resync, each reconnect).
    pub relists: u64,
    /// Failed attempts (connect, list, inspect, broken stream).
    pub errors: u64,
    /// The last error, for the status page.
    pub last_error: Option<String>,
    /// Containers that are selected and eligible.
    pub containers: usize,
    /// Containers eligible but not in yet: no health check, and their port does not accept
    /// connections yet.
    pub pending: usize,
}

/// Builds a Docker watcher.
///
/// # Examples
///
/// ```no_run
/// use futures_util::StreamExt;
/// use lb_discovery_docker::DockerSource;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let docker = DockerSource::new().spawn()?;
/// // Every container labelled `lb.enable=true` and `lb.service=web`, as balancer updates:
/// let mut web = docker.service("web");
/// while let Some(Ok(update)) = web.next().await {
///     println!("{update:?}");
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct DockerSource {
    endpoint: Option<String>,
    options: Options,
    resync_interval: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    request_timeout: Duration,
}

impl Default for DockerSource {
    fn default() -> Self {
        Self::new()
    }
}

impl DockerSource {
    /// A watcher of the daemon named by `DOCKER_HOST`, else `unix:///var/run/docker.sock`,
    /// with [`Options::default`].
    pub fn new() -> Self {
        Self {
            endpoint: None,
            options: Options::default(),
            resync_interval: Duration::from_secs(60),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// The daemon: `unix:///path/docker.sock`, `tcp://host:port` or `http://host:port`.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// How containers are read (label prefix, network, address mode, Traefik labels).
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// How often everything is listed again, as a safety net for dropped events.
    /// Default 60 s.
    pub fn resync_interval(mut self, every: Duration) -> Self {
        self.resync_interval = every;
        self
    }

    /// The reconnect backoff: from `min`, doubling, capped at `max`, with jitter.
    /// Default 250 ms to 30 s.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }

    /// The endpoint this watcher reads, as it will be dialled.
    pub fn endpoint_name(&self) -> String {
        self.endpoint.clone().unwrap_or_else(|| {
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string())
        })
    }

    /// Starts the watcher task on the current Tokio runtime. The task ends when the last
    /// clone of the returned [`DockerHandle`] and every stream from
    /// [`DockerHandle::service`] are dropped (a receiver from [`DockerHandle::catalog`]
    /// alone does not keep it).
    ///
    /// # Errors
    ///
    /// [`Error::Endpoint`] if the endpoint's scheme is not supported. An unreachable
    /// daemon is not an error: the watcher retries until it answers.
    pub fn spawn(self) -> Result<DockerHandle, Error> {
        let endpoint = self.endpoint_name();
        check_endpoint(&endpoint)?;
        let (catalog_tx, catalog_rx) = watch::channel(Arc::new(Catalog::default()));
        let (status_tx, status_rx) = watch::channel(SourceStatus {
            endpoint: endpoint.clone(),
            ..SourceStatus::default()
        });
        let task = Task {
            source: self,
            endpoint,
            catalog: catalog_tx,
            status: status_tx,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            warned: HashSet::new(),
        };
        let handle = tokio::spawn(task.run());
        Ok(DockerHandle {
            catalog: catalog_rx,
            status: status_rx,
            task: Arc::new(AbortOnDrop(handle)),
        })
    }
}

fn check_endpoint(endpoint: &str) -> Result<(), Error> {
    let ok = ["unix://", "tcp://", "http://"]
        .iter()
        .any(|scheme| endpoint.starts_with(scheme) && endpoint.len() > scheme.len());
    if ok {
        Ok(())
    } else {
        Err(Error::Endpoint {
            endpoint: endpoint.to_string(),
            message: "expected unix:///path, tcp://host:port or http://host:port".to_string(),
        })
    }
}

/// A running watcher: its catalog, per-service update streams, and its status.
///
/// Cheap to clone; the watcher stops when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct DockerHandle {
    catalog: watch::Receiver<Arc<Catalog>>,
    status: watch::Receiver<SourceStatus>,
    task: Arc<AbortOnDrop>,
}

impl DockerHandle {
    /// The catalog of every selected service, as a watch: name -> endpoints + hints.
    pub fn catalog(&self) -> watch::Receiver<Arc<Catalog>> {
        self.catalog.clone()
    }

    /// The endpoint updates of one service: a `Reset` with its eligible containers each
    /// time that set changes. Hand it to a balancer's builder.
    pub fn service(
        &self,
        name: impl Into<String>,
    ) -> impl futures_core::Stream<Item = Result<Update, std::convert::Infallible>> + Send + Unpin + 'static {
        let keep = self.task.clone();
        catalog::service_updates(self.catalog.clone(), name).map(move |u| {
            let _ = &keep;
            u
        })
    }

    /// What the watcher has seen so far.
    pub fn status(&self) -> SourceStatus {
        self.status.borrow().clone()
    }

    /// The status as a watch, to wait for a change.
    pub fn status_watch(&self) -> watch::Receiver<SourceStatus> {
        self.status.clone()
    }
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Task {
    source: DockerSource,
    endpoint: String,
    catalog: watch::Sender<Arc<Catalog>>,
    status: watch::Sender<SourceStatus>,
    /// Selected and eligible containers by id.
    members: BTreeMap<String, Member>,
    /// Eligible containers without a health check whose port does not accept connections
    /// yet (the process has started but not bound): admitted once it does.
    pending: BTreeMap<String, Pending>,
    /// (container id, message) pairs already logged, so a warning is said once.
    warned: HashSet<(String, String)>,
}

/// A container waiting for its port to accept connections.
struct Pending {
    member: Member,
    since: Instant,
    next_check: Instant,
    warned: bool,
}

/// How often a pending container's port is tried, at first and after [`READY_SLOW`].
const READY_EVERY: Duration = Duration::from_millis(25);
const READY_SLOW_EVERY: Duration = Duration::from_secs(1);
/// After this long, a pending container is warned about and tried less often.
const READY_SLOW: Duration = Duration::from_secs(10);
/// Time one readiness connect may take.
const READY_CONNECT: Duration = Duration::from_millis(200);

/// A session that lasted this long was a good one: the backoff starts over after it.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// Why one session with the daemon ended.
#[derive(Debug)]
enum SessionEnd {
    Error(String),
}

impl Task {
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.source.backoff_min, self.source.backoff_max);
        let mut warned = false;
        loop {
            let began = tokio::time::Instant::now();
            let SessionEnd::Error(why) = self.session().await;
            // A session that followed the daemon for a while starts the backoff (and the
            // warning) over; one that fails right after listing (a proxy in front that
            // refuses `/events`, say) keeps backing off, and warns once.
            if self.status.borrow().reachable && began.elapsed() >= STABLE_SESSION {
                backoff.reset();
                warned = false;
            }
            let first_failure = !warned;
            warned = true;
            self.status.send_modify(|s| {
                s.reachable = false;
                s.errors += 1;
                s.last_error = Some(why.clone());
                s.stale_since.get_or_insert_with(SystemTime::now);
            });
            let wait = backoff.next_wait();
            if first_failure {
                tracing::warn!(endpoint = %self.endpoint, error = %why, retry_in = ?wait, "docker: daemon unreachable; keeping the last known containers");
            } else {
                tracing::debug!(endpoint = %self.endpoint, error = %why, retry_in = ?wait, "docker: still unreachable");
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.catalog.closed() => return,
            }
        }
    }

    fn connect(&self) -> Result<Docker, String> {
        let timeout = self.source.request_timeout.as_secs().max(1);
        let ep = &self.endpoint;
        let docker = if let Some(path) = ep.strip_prefix("unix://") {
            Docker::connect_with_unix(path, timeout, bollard::API_DEFAULT_VERSION)
        } else {
            let url = ep.replacen("tcp://", "http://", 1);
            Docker::connect_with_http(&url, timeout, bollard::API_DEFAULT_VERSION)
        };
        docker.map_err(|e| format!("cannot connect: {e}"))
    }

    async fn session(&mut self) -> SessionEnd {
        let docker = match self.connect() {
            Ok(d) => d,
            Err(e) => return SessionEnd::Error(e),
        };
        let docker = match docker.negotiate_version().await {
            Ok(d) => d,
            Err(e) => return SessionEnd::Error(format!("version negotiation: {e}")),
        };
        let version = docker.client_version();
        if (version.major_version, version.minor_version) < MIN_API_VERSION {
            return SessionEnd::Error(format!(
                "the daemon speaks API {version}, older than the {}.{} this adapter needs",
                MIN_API_VERSION.0, MIN_API_VERSION.1
            ));
        }
        // The daemon's clock, so `since` means the same thing to it as to us. `/info` is
        // optional: a socket proxy that refuses it leaves our own clock, a few seconds
        // back for skew (replayed events are harmless: each only triggers an inspect).
        let since = match docker.info().await {
            Ok(info) => info
                .system_time
                .as_deref()
                .and_then(parse_rfc3339_unix)
                .map(|t| format!("{}", t - 1))
                .unwrap_or_else(|| format!("{}", unix_now() - 5)),
            Err(e) => {
                tracing::debug!(endpoint = %self.endpoint, error = %e, "docker: /info refused; `since` from the local clock");
                format!("{}", unix_now() - 5)
            }
        };
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string(), "network".to_string()]),
            (
                "event".to_string(),
                [
                    "start",
                    "die",
                    "stop",
                    "kill",
                    "pause",
                    "unpause",
                    "destroy",
                    "rename",
                    "health_status",
                    "connect",
                    "disconnect",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ),
        ]);
        // The stream is lazy: a task polls it from now on, so the request is on its way
        // before the listing starts (and `since` covers the moment between the two).
        let mut stream = docker.events(Some(EventsOptions {
            since: Some(since),
            until: None,
            filters: Some(filters),
        }));
        let (tx, mut events) = tokio::sync::mpsc::channel(1024);
        let _forward = AbortOnDrop(tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                let end = ev.is_err();
                if tx.send(ev).await.is_err() || end {
                    return;
                }
            }
        }));
        tokio::task::yield_now().await;
        if let Err(e) = self.relist(&docker).await {
            return SessionEnd::Error(e);
        }
        let first_time = self.status.borrow().stale_since.is_some() || !self.status.borrow().reachable;
        self.status.send_modify(|s| {
            s.reachable = true;
            s.stale_since = None;
            s.api_version = Some(version.to_string());
        });
        if first_time {
            tracing::info!(endpoint = %self.endpoint, api = %version, containers = self.members.len(), "docker: connected; following events");
        }
        let mut resync = tokio::time::interval(self.source.resync_interval);
        resync.reset();
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Ok(ev)) => {
                        self.status.send_modify(|s| s.events += 1);
                        if let Some(id) = event_container(&ev) {
                            if let Err(e) = self.refresh(&docker, &id).await {
                                return SessionEnd::Error(e);
                            }
                        }
                    }
                    Some(Err(e)) => return SessionEnd::Error(format!("events stream: {e}")),
                    None => return SessionEnd::Error("events stream ended".to_string()),
                },
                _ = resync.tick() => {
                    if let Err(e) = self.relist(&docker).await {
                        return SessionEnd::Error(e);
                    }
                }
                _ = sleep_until(self.next_pending_check()) => {
                    if self.check_pending().await {
                        self.publish();
                    }
                }
                _ = self.catalog.closed() => return SessionEnd::Error("stopped".to_string()),
            }
        }
    }

    /// Lists every candidate container, inspects each, and publishes the whole catalog.
    async fn relist(&mut self, docker: &Docker) -> Result<(), String> {
        let opts = &self.source.options;
        let mut filters = HashMap::new();
        // Only containers with `lb.enable` can be selected, unless everything is exposed by
        // default or Traefik's own enable label counts too (labels filters AND, so the
        // daemon cannot OR the two).
        // By the key only: the value is judged here, where `True` counts as `true` too.
        if !opts.exposed_by_default && !opts.traefik {
            filters.insert("label".to_string(), vec![format!("{}.enable", opts.label_prefix)]);
        }
        let list = docker
            .list_containers(Some(ListContainersOptions {
                all: false,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| format!("list containers: {e}"))?;
        let mut judged = Vec::new();
        for summary in list {
            let Some(id) = summary.id else { continue };
            match docker.inspect_container(&id, None::<InspectContainerOptions>).await {
                Ok(c) => {
                    if let Some(m) = self.judge(&id, &c) {
                        judged.push((id, m, health_verified(&c)));
                    }
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(format!("inspect {id}: {e}")),
            }
        }
        let seen: HashSet<&String> = judged.iter().map(|(id, _, _)| id).collect();
        self.members.retain(|id, _| seen.contains(id));
        self.pending.retain(|id, _| seen.contains(id));
        for (id, m, verified) in judged {
            self.admit(id, m, verified).await;
        }
        self.status.send_modify(|s| s.relists += 1);
        self.publish();
        Ok(())
    }

    /// Inspects one container after an event and publishes the catalog if it changed.
    async fn refresh(&mut self, docker: &Docker, id: &str) -> Result<(), String> {
        match docker.inspect_container(id, None::<InspectContainerOptions>).await {
            Ok(c) => {
                let full_id = c.id.clone().unwrap_or_else(|| id.to_string());
                match self.judge(&full_id, &c) {
                    Some(m) => self.admit(full_id, m, health_verified(&c)).await,
                    None => {
                        self.members.remove(&full_id);
                        self.pending.remove(&full_id);
                    }
                }
            }
            Err(e) if is_not_found(&e) => {
                self.members.remove(id);
                self.pending.remove(id);
            }
            Err(e) => return Err(format!("inspect {id}: {e}")),
        }
        self.publish();
        Ok(())
    }

    /// Takes an eligible container in. One whose health Docker checked, or that is already
    /// in at the same address, is in at once; otherwise it is in once its port accepts a
    /// TCP connection, so that a container whose process has not bound yet gets no
    /// requests (they would fail and count against it).
    async fn admit(&mut self, id: String, m: Member, verified: bool) {
        let same = self
            .members
            .get(&id)
            .is_some_and(|old| old.endpoint.addr() == m.endpoint.addr());
        if verified || same {
            self.pending.remove(&id);
            self.members.insert(id, m);
            return;
        }
        if accepts(m.endpoint.addr()).await {
            self.pending.remove(&id);
            self.members.insert(id, m);
            return;
        }
        self.members.remove(&id);
        let now = Instant::now();
        match self.pending.get_mut(&id) {
            Some(p) => p.member = m,
            None => {
                tracing::debug!(endpoint = %m.endpoint.id(), addr = %m.endpoint.addr(), "docker: waiting for the container's port to accept connections");
                self.pending.insert(
                    id,
                    Pending {
                        member: m,
                        since: now,
                        next_check: now + READY_EVERY,
                        warned: false,
                    },
                );
            }
        }
    }

    /// Tries the ports of pending containers that are due; admits those that accept.
    /// `true` if any was admitted.
    async fn check_pending(&mut self) -> bool {
        let now = Instant::now();
        let due: Vec<(String, std::net::SocketAddr)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.next_check <= now)
            .map(|(id, p)| (id.clone(), p.member.endpoint.addr()))
            .collect();
        let results = futures_util::future::join_all(due.iter().map(|(_, addr)| accepts(*addr))).await;
        let mut admitted = false;
        for ((id, _), ok) in due.into_iter().zip(results) {
            if ok {
                if let Some(p) = self.pending.remove(&id) {
                    tracing::debug!(endpoint = %p.member.endpoint.id(), waited = ?p.since.elapsed(), "docker: the container's port accepts connections");
                    self.members.insert(id, p.member);
                    admitted = true;
                }
            } else if let Some(p) = self.pending.get_mut(&id) {
                let waited = p.since.elapsed();
                if waited >= READY_SLOW && !p.warned {
                    p.warned = true;
                    tracing::warn!(endpoint = %p.member.endpoint.id(), addr = %p.member.endpoint.addr(), "docker: the container runs but its port has not accepted a connection for {waited:?}; it gets no traffic until it does");
                }
                p.next_check = Instant::now()
                    + if waited >= READY_SLOW {
                        READY_SLOW_EVERY
                    } else {
                        READY_EVERY
                    };
            }
        }
        admitted
    }

    /// When the next pending container is due for a check.
    fn next_pending_check(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.next_check).min()
    }

    /// The verdict on one container, logging what deserves it once.
    fn judge(&mut self, id: &str, c: &ContainerInspectResponse) -> Option<Member> {
        let name = c.name.as_deref().unwrap_or(id).trim_start_matches('/').to_string();
        match evaluate(c, &self.source.options) {
            Verdict::Member(m) => {
                for w in &m.warnings {
                    if self.warned.insert((id.to_string(), w.clone())) {
                        tracing::warn!(container = %name, "docker: {w}");
                    }
                }
                Some(m)
            }
            Verdict::Invalid { label, message } => {
                let key = format!("{label}: {message}");
                if self.warned.insert((id.to_string(), key)) {
                    tracing::warn!(container = %name, label = %label, "docker: container skipped: {message}");
                }
                None
            }
            Verdict::Ineligible(why) => {
                tracing::debug!(container = %name, "docker: not eligible: {why}");
                None
            }
            Verdict::NotSelected => None,
        }
    }

    /// Publishes the catalog built from the members, if it differs from the last one.
    fn publish(&mut self) {
        let mut services: BTreeMap<String, CatalogService> = BTreeMap::new();
        // Members in container-name order, so the hints of a service come from the same
        // container every time.
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by(|a, b| a.endpoint.id().cmp(b.endpoint.id()));
        for m in members {
            let svc = services.entry(m.service.clone()).or_insert_with(|| CatalogService {
                endpoints: Vec::new(),
                hints: m.hints.clone(),
            });
            if svc.hints != m.hints && self.warned.insert((m.service.clone(), format!("{:?}", m.hints))) {
                tracing::warn!(service = %m.service, endpoint = %m.endpoint.id(), "docker: containers of one service disagree on their route or policy labels; the first container's are used");
            }
            svc.endpoints.push(m.endpoint.clone());
        }
        for svc in services.values_mut() {
            svc.endpoints.sort_by(|a, b| a.id().cmp(b.id()));
            svc.endpoints.dedup_by(|a, b| a.id() == b.id());
        }
        let next = Catalog::synced(services);
        let (containers, pending) = (self.members.len(), self.pending.len());
        self.status.send_modify(|s| {
            s.synced = true;
            s.containers = containers;
            s.pending = pending;
        });
        self.catalog.send_if_modified(|cur| {
            if **cur == next {
                false
            } else {
                *cur = Arc::new(next);
                true
            }
        });
    }
}

/// The container an event is about: the actor of a container event, the `container`
/// attribute of a network event.
fn event_container(ev: &EventMessage) -> Option<String> {
    let actor = ev.actor.as_ref()?;
    match ev.typ {
        Some(EventMessageTypeEnum::CONTAINER) => actor.id.clone(),
        Some(EventMessageTypeEnum::NETWORK) => actor.attributes.as_ref()?.get("container").cloned(),
        _ => None,
    }
}

/// Whether Docker's own health check says healthy (then the port is not tried).
fn health_verified(c: &ContainerInspectResponse) -> bool {
    c.state
        .as_ref()
        .and_then(|s| s.health.as_ref())
        .and_then(|h| h.status)
        .is_some_and(|s| s == HealthStatusEnum::HEALTHY)
}

/// Whether `addr` accepts a TCP connection within [`READY_CONNECT`].
async fn accepts(addr: std::net::SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(READY_CONNECT, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code: 404, .. })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Whole seconds since the epoch of an RFC 3339 time as the daemon writes it
/// (`2026-12-01T11:58:03.123456789Z`, or with a `+hh:mm` offset).
fn parse_rfc3339_unix(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // The offset: after the fraction, `Z` or `+hh:mm` / `-hh:mm`.
    let rest = &s[19..];
    let rest = rest.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let offset = match rest.as_bytes().first()? {
        b'Z' | b'z' => 0,
        sign @ (b'+' | b'-') => {
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let o = oh * 3600 + om * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse_as_the_daemon_writes_them() {
        assert_eq!(parse_rfc3339_unix("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_unix("2026-12-01T11:58:03.123456789Z"),
            Some(1_796_126_283)
        );
        assert_eq!(parse_rfc3339_unix("2026-12-01T12:58:03.5+01:00"), Some(1_796_126_283));
        assert_eq!(parse_rfc3339_unix("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(parse_rfc3339_unix("yesterday"), None);
        assert_eq!(parse_rfc3339_unix("2026-12-01T11:58:03"), None);
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(check_endpoint("unix:///var/run/docker.sock").is_ok());
        assert!(check_endpoint("tcp://127.0.0.1:2375").is_ok());
        assert!(check_endpoint("ssh://host").is_err());
        assert!(check_endpoint("unix://").is_err());
    }
}
