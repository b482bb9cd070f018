//! One service's instances, followed with blocking queries on
//! `GET /v1/health/service/:service`.
//!
//! The loop follows Consul's client rules for blocking queries:
//!
//! - the next request carries `index` (the last `X-Consul-Index`) and `wait`; the client's
//!   deadline is `wait * 17/16 + 5 s`, since the server adds up to `wait/16` of jitter;
//! - an index that goes backwards (a snapshot restore) or a missing header resets the
//!   index to 0 (a plain read); the index of a blocking request is never below 1;
//! - the loop is rate-limited by a token bucket (a burst of 2, one token per
//!   `min_interval`, 100 ms by default), not by a sleep: in the happy path it re-asks at
//!   once;
//! - a wake-up is not a change: the set is compared with the last one published;
//! - errors (transport, 429, 5xx) back off with jitter from 250 ms doubling to 30 s,
//!   keeping the last good set; after three failures in a row the index is reset so the
//!   next success is a full read. An empty set is published only when Consul answers 200
//!   with no instance, never on an error.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lb_core::discover::Backoff;

use lb_core::discover::Update;
use lb_core::Endpoint;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::client::{encode, Client, Error};
use crate::types::{ServiceEntry, Status};

/// Read consistency (Consul's `?stale` / `?consistent`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// The leader answers (Consul's default).
    #[default]
    Default,
    /// Any server answers: cheaper, possibly a little behind.
    Stale,
    /// The leader checks it still leads first: slowest.
    Consistent,
}

/// What a watch has seen, for status pages and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsulStatus {
    /// The agent, `host:port`.
    pub agent: String,
    /// What is watched: a service name, or `catalog`.
    pub watching: String,
    /// The last `X-Consul-Index` seen (0 before the first answer).
    pub last_index: u64,
    /// When Consul last answered.
    pub last_success: Option<SystemTime>,
    /// Requests sent.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Failed requests in a row (0 while Consul answers).
    pub consecutive_failures: u32,
    /// The current backoff, while failing.
    pub backoff: Option<Duration>,
    /// The last error.
    pub last_error: Option<String>,
    /// Instances in the last set published (services, for a catalog watch).
    pub instances: usize,
    /// Index resets (a backwards index, a missing header, repeated failures).
    pub index_resets: u64,
}

/// A set of instances as published: endpoints (sorted by id) and the tags of the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Instances {
    pub(crate) endpoints: Vec<Endpoint>,
    /// The tags of the first instance (by id), for route hints.
    pub(crate) tags: Vec<String>,
}

/// Builds a watch of one Consul service.
///
/// # Examples
///
/// ```no_run
/// use futures_util::StreamExt;
/// use lb_discovery_consul::ConsulService;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lb_discovery_consul::Error> {
/// let api = ConsulService::new("api").tag("v2").spawn()?;   // CONSUL_HTTP_ADDR or 127.0.0.1:8500
/// let mut updates = api.updates();                          // a discovery stream for a Balancer
/// while let Some(Ok(update)) = updates.next().await {
///     println!("{update:?}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConsulService {
    pub(crate) address: Option<String>,
    pub(crate) service: String,
    pub(crate) tags: Vec<String>,
    pub(crate) filter: Option<String>,
    pub(crate) dc: Option<String>,
    pub(crate) statuses: BTreeSet<Status>,
    pub(crate) token: Option<String>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) consistency: Consistency,
    pub(crate) wait: Duration,
    pub(crate) min_interval: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
}

impl ConsulService {
    /// A watch of `service` on the agent at `CONSUL_HTTP_ADDR` (else
    /// `http://127.0.0.1:8500`), with the token of `CONSUL_HTTP_TOKEN`, passing instances
    /// only.
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            address: None,
            service: service.into(),
            tags: Vec::new(),
            filter: None,
            dc: None,
            statuses: BTreeSet::from([Status::Passing]),
            token: None,
            ca_file: None,
            consistency: Consistency::Default,
            wait: Duration::from_secs(60),
            min_interval: Duration::from_millis(100),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
        }
    }

    /// The agent: `http://host:port`, `https://host:port` or `host:port`.
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// Keep instances carrying this tag (repeatable: all of them; case-insensitive, as
    /// Consul's `tag` parameter).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// A server-side filter expression, such as `Service.Meta.env == "prod"`.
    pub fn filter(mut self, expression: impl Into<String>) -> Self {
        self.filter = Some(expression.into());
        self
    }

    /// Another datacenter.
    pub fn dc(mut self, dc: impl Into<String>) -> Self {
        self.dc = Some(dc.into());
        self
    }

    /// The statuses that keep an instance in: default passing only; passing and warning
    /// is the other common choice (a warning instance gets its `Weights.Warning`).
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = Status>) -> Self {
        self.statuses = statuses.into_iter().collect();
        if self.statuses.is_empty() {
            self.statuses.insert(Status::Passing);
        }
        self
    }

    /// The ACL token (`X-Consul-Token`); default `CONSUL_HTTP_TOKEN`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// A CA file (PEM) to trust for an `https://` agent; default `CONSUL_CACERT`.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// The read consistency.
    pub fn consistency(mut self, c: Consistency) -> Self {
        self.consistency = c;
        self
    }

    /// The longest a blocking read waits (Consul caps it at 10 minutes). Default 60 s.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait.clamp(Duration::from_millis(1), Duration::from_secs(600));
        self
    }

    /// The token bucket's refill period: after a burst of two, at most one request per
    /// this interval while answers come back at once (fast churn, or a missing index).
    /// Default 100 ms: ten requests a second per watch at most, which keeps a change
    /// that follows another closely from waiting long.
    pub fn min_interval(mut self, every: Duration) -> Self {
        self.min_interval = every;
        self
    }

    /// The error backoff: from `min`, doubling, capped at `max`, with jitter.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }

    /// The service this watch follows.
    pub fn service_name(&self) -> &str {
        &self.service
    }

    /// The agent this watch reads, as it will be dialled.
    pub fn agent_address(&self) -> String {
        self.address.clone().unwrap_or_else(crate::client::default_address)
    }

    /// Starts the watch on the current Tokio runtime. It stops when the returned handle
    /// and every stream taken from it are dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Address`] or [`Error::Tls`] if the agent's address or CA file is unusable.
    /// An unreachable agent is not an error: the watch retries.
    pub fn spawn(self) -> Result<ServiceHandle, Error> {
        self.spawn_notifying(None)
    }

    pub(crate) fn spawn_notifying(self, notify: Option<Arc<Notify>>) -> Result<ServiceHandle, Error> {
        let token = self.token.clone().or_else(|| std::env::var("CONSUL_HTTP_TOKEN").ok());
        let client = Client::new(&self.agent_address(), token, self.ca_file.as_deref())?;
        let (set_tx, set_rx) = watch::channel(None);
        let (status_tx, status_rx) = watch::channel(ConsulStatus {
            agent: client.agent().to_string(),
            watching: self.service.clone(),
            ..ConsulStatus::default()
        });
        let task = tokio::spawn(
            Watch {
                cfg: self,
                client,
                resolved: Default::default(),
                set: set_tx,
                status: status_tx,
                notify,
            }
            .run(),
        );
        Ok(ServiceHandle {
            set: set_rx,
            status: status_rx,
            task: Arc::new(AbortOnDrop(task)),
        })
    }

    /// The query string (without `index` and `wait`).
    fn query(&self) -> String {
        let mut q = Vec::new();
        if self.statuses == BTreeSet::from([Status::Passing]) {
            q.push("passing".to_string());
        }
        for t in &self.tags {
            q.push(format!("tag={}", encode(t)));
        }
        if let Some(f) = &self.filter {
            q.push(format!("filter={}", encode(f)));
        }
        if let Some(dc) = &self.dc {
            q.push(format!("dc={}", encode(dc)));
        }
        match self.consistency {
            Consistency::Default => {}
            Consistency::Stale => q.push("stale".into()),
            Consistency::Consistent => q.push("consistent".into()),
        }
        q.join("&")
    }
}

/// A running watch of one service.
///
/// Cheap to clone; the watch stops when the last clone and every stream from it are gone.
#[derive(Debug, Clone)]
pub struct ServiceHandle {
    pub(crate) set: watch::Receiver<Option<Arc<Instances>>>,
    status: watch::Receiver<ConsulStatus>,
    task: Arc<AbortOnDrop>,
}

impl ServiceHandle {
    /// The service's endpoints as a discovery stream: a `Reset` with the first good
    /// answer, then one each time the set changes. Errors are never yielded (the last set
    /// stays); the stream ends only when the watch does.
    pub fn updates(
        &self,
    ) -> impl futures_core::Stream<Item = Result<Update, std::convert::Infallible>> + Send + Unpin + 'static {
        let keep = self.task.clone();
        let rx = self.set.clone();
        Box::pin(futures_util::stream::unfold(
            (rx, true, keep),
            |(mut rx, first, keep)| async move {
                loop {
                    if !first || rx.borrow().is_none() {
                        rx.changed().await.ok()?;
                    }
                    let set = rx.borrow_and_update().clone();
                    if let Some(set) = set {
                        return Some((Ok(Update::Reset(set.endpoints.clone())), (rx, false, keep)));
                    }
                }
            },
        ))
    }

    /// The current endpoints (`None` before the first good answer).
    pub fn endpoints(&self) -> Option<Vec<Endpoint>> {
        self.set.borrow().as_ref().map(|s| s.endpoints.clone())
    }

    /// What the watch has seen so far.
    pub fn status(&self) -> ConsulStatus {
        self.status.borrow().clone()
    }
}

#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Watch {
    cfg: ConsulService,
    client: Client,
    /// The last address each instance's host name resolved to, by instance id.
    resolved: std::sync::Mutex<std::collections::HashMap<String, (String, u16, SocketAddr)>>,
    set: watch::Sender<Option<Arc<Instances>>>,
    status: watch::Sender<ConsulStatus>,
    notify: Option<Arc<Notify>>,
}

impl Watch {
    async fn run(self) {
        let path = format!("/v1/health/service/{}", encode(&self.cfg.service));
        let query = self.cfg.query();
        let mut cursor = Cursor::new(&self.cfg);
        loop {
            tokio::select! {
                () = cursor.ready() => {}
                () = self.set.closed() => return,
            }
            let (url, deadline) = cursor.request(&path, &query);
            self.status.send_modify(|s| s.requests += 1);
            let answer = tokio::select! {
                a = self.client.get_json::<Vec<ServiceEntry>>(&url, deadline) => a,
                () = self.set.closed() => return,
            };
            match answer {
                Ok((headers, entries)) => {
                    let was_failing = cursor.failures() > 0;
                    cursor.answered(&headers, &self.status);
                    let set = self.instances(entries).await;
                    let count = set.endpoints.len();
                    let changed = self.set.send_if_modified(|cur| {
                        if cur.as_deref() == Some(&set) {
                            false
                        } else {
                            *cur = Some(Arc::new(set));
                            true
                        }
                    });
                    self.status.send_modify(|s| s.instances = count);
                    if was_failing {
                        tracing::info!(service = %self.cfg.service, agent = %self.client.agent(), "consul: answering again");
                    }
                    if changed {
                        tracing::debug!(service = %self.cfg.service, instances = count, "consul: set changed");
                        if let Some(n) = &self.notify {
                            n.notify_one();
                        }
                    }
                }
                Err(e) => {
                    let wait = cursor.failed(&e, &self.status);
                    if cursor.failures() == 1 || !e.is_transient() {
                        tracing::warn!(service = %self.cfg.service, error = %e, retry_in = ?wait, "consul: read failed; keeping the last set");
                    } else {
                        tracing::debug!(service = %self.cfg.service, error = %e, retry_in = ?wait, failures = cursor.failures(), "consul: still failing");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.set.closed() => return,
                    }
                }
            }
        }
    }

    /// The endpoints of the entries whose status is accepted, sorted by id.
    async fn instances(&self, mut entries: Vec<ServiceEntry>) -> Instances {
        entries.sort_by(|a, b| (&a.node.name, &a.service.id).cmp(&(&b.node.name, &b.service.id)));
        let tags = entries.first().map(|e| e.service.tags.clone()).unwrap_or_default();
        let mut endpoints = Vec::with_capacity(entries.len());
        for e in entries {
            let status = e.status();
            if !self.cfg.statuses.contains(&status) {
                continue;
            }
            if e.service.port == 0 {
                tracing::debug!(service = %self.cfg.service, id = %e.service.id, "consul: instance without a port skipped");
                continue;
            }
            let host = if e.service.address.is_empty() {
                e.node.address.as_str()
            } else {
                e.service.address.as_str()
            };
            let id = format!("{}/{}", e.node.name, e.service.id);
            let addr = match resolve(host, e.service.port).await {
                Some(addr) => {
                    self.resolved
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(id.clone(), (host.to_string(), e.service.port, addr));
                    addr
                }
                None => {
                    // A resolver hiccup must not drain an instance Consul still lists:
                    // the last address it resolved to stands.
                    let cached = self
                        .resolved
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get(&id)
                        .filter(|(h, p, _)| h == host && *p == e.service.port)
                        .map(|(_, _, a)| *a);
                    match cached {
                        Some(addr) => {
                            tracing::warn!(service = %self.cfg.service, id = %e.service.id, host, "consul: instance address does not resolve now; keeping the last one");
                            addr
                        }
                        None => {
                            tracing::warn!(service = %self.cfg.service, id = %e.service.id, host, "consul: instance address does not resolve; skipped");
                            continue;
                        }
                    }
                }
            };
            let weight = if status == Status::Warning {
                e.service.weights.warning
            } else {
                e.service.weights.passing
            };
            let mut ep = Endpoint::new(addr)
                .with_id(id)
                .with_weight(weight)
                .with_metadata("consul.node", e.node.name.clone())
                .with_metadata("consul.service", e.service.name.clone())
                .with_metadata("consul.service_id", e.service.id.clone())
                .with_metadata("consul.status", status.as_str());
            if !e.service.tags.is_empty() {
                ep = ep.with_metadata("consul.tags", e.service.tags.join(","));
            }
            for (k, v) in e.service.meta {
                ep = ep.with_metadata(k, v);
            }
            endpoints.push(ep);
        }
        endpoints.sort_by(|a, b| a.id().cmp(b.id()));
        Instances { endpoints, tags }
    }
}

/// An IP literal, or the first address a name resolves to.
async fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        return Some(SocketAddr::new(ip, port));
    }
    let lookup = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(Duration::from_secs(5), lookup).await {
        Ok(Ok(mut addrs)) => addrs.next(),
        _ => None,
    }
}

/// A token bucket: `burst` tokens, one more every `every`.
pub(crate) struct TokenBucket {
    tokens: f64,
    burst: f64,
    every: Duration,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(burst: u32, every: Duration) -> Self {
        Self {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            every,
            last: Instant::now(),
        }
    }

    /// Waits for a token and takes it.
    pub(crate) async fn take(&mut self) {
        loop {
            let now = Instant::now();
            if self.every.is_zero() {
                return;
            }
            let gained = now.duration_since(self.last).as_secs_f64() / self.every.as_secs_f64();
            self.tokens = (self.tokens + gained).min(self.burst);
            self.last = now;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                return;
            }
            let missing = (1.0 - self.tokens) * self.every.as_secs_f64();
            tokio::time::sleep(Duration::from_secs_f64(missing)).await;
        }
    }
}

/// One blocking-query loop's state, with Consul's client rules in one place: the token
/// bucket, the index (reset when it goes backwards, is missing, or after three failures in
/// a row), the request's `index`/`wait` and deadline, and the error backoff. The service
/// and catalog watches both run on it.
pub(crate) struct Cursor {
    index: u64,
    failures: u32,
    wait: Duration,
    bucket: TokenBucket,
    backoff: Backoff,
}

impl Cursor {
    pub(crate) fn new(cfg: &ConsulService) -> Self {
        Self {
            index: 0,
            failures: 0,
            wait: cfg.wait,
            bucket: TokenBucket::new(2, cfg.min_interval),
            backoff: Backoff::new(cfg.backoff_min, cfg.backoff_max),
        }
    }

    /// Waits for the token bucket.
    pub(crate) async fn ready(&mut self) {
        self.bucket.take().await;
    }

    /// The request for `path` with `query` (and, when blocking, `index` and `wait`), and
    /// the client's deadline: `wait + wait/16 + 5 s` for a blocking read, since the server
    /// adds up to `wait/16` of jitter; 10 s for a plain one.
    pub(crate) fn request(&self, path: &str, query: &str) -> (String, Duration) {
        let mut params = query.to_string();
        let deadline = if self.index > 0 {
            if !params.is_empty() {
                params.push('&');
            }
            params.push_str(&format!("index={}&wait={}ms", self.index, self.wait.as_millis()));
            self.wait + self.wait / 16 + Duration::from_secs(5)
        } else {
            Duration::from_secs(10)
        };
        let url = if params.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{params}")
        };
        (url, deadline)
    }

    /// Takes a good answer to the request made at the current index: the next index by
    /// the rules, recorded in `status`. Returns the index Consul sent.
    pub(crate) fn answered(&mut self, headers: &http::HeaderMap, status: &watch::Sender<ConsulStatus>) -> Option<u64> {
        let got = headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let next = next_index(self.index, got);
        let reset = next == 0 && (self.index > 0 || got.is_none());
        if reset {
            tracing::debug!(prev = self.index, got = ?got, "consul: index reset");
        }
        self.index = next;
        self.failures = 0;
        self.backoff.reset();
        status.send_modify(|s| {
            s.last_index = got.unwrap_or(0);
            s.last_success = Some(SystemTime::now());
            s.consecutive_failures = 0;
            s.backoff = None;
            s.index_resets += u64::from(reset);
        });
        got
    }

    /// Takes a failure: the wait before the next try (the longest for a configuration
    /// problem, which will not fix itself soon), recorded in `status` with the error.
    pub(crate) fn failed(&mut self, e: &Error, status: &watch::Sender<ConsulStatus>) -> Duration {
        self.failures += 1;
        let reset = self.failures >= 3 && self.index != 0;
        if reset {
            self.index = 0;
        }
        let wait = if e.is_transient() {
            self.backoff.next_wait()
        } else {
            self.backoff.longest_wait()
        };
        let (failures, message) = (self.failures, e.to_string());
        status.send_modify(|s| {
            s.errors += 1;
            s.consecutive_failures = failures;
            s.backoff = Some(wait);
            s.last_error = Some(message);
            s.index_resets += u64::from(reset);
        });
        wait
    }

    /// Failed requests in a row.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }
}

/// The index for the next request, by Consul's client rules: a missing header or an index
/// that went backwards (a snapshot restore) means a plain read (0); otherwise the new
/// index, never below 1 (an index of 0 would never block).
pub(crate) fn next_index(sent: u64, got: Option<u64>) -> u64 {
    match got {
        None => 0,
        Some(new) if new < sent => 0,
        Some(new) => new.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_of_two_then_one_per_interval() {
        let mut b = TokenBucket::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        b.take().await;
        b.take().await;
        assert_eq!(t0.elapsed(), Duration::ZERO, "the burst is free");
        b.take().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        b.take().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        tokio::time::advance(Duration::from_secs(10)).await;
        let t1 = Instant::now();
        b.take().await;
        b.take().await;
        assert_eq!(t1.elapsed(), Duration::ZERO, "refilled to the burst, not beyond");
        b.take().await;
        assert_eq!(t1.elapsed(), Duration::from_secs(1));
    }

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, Some(57)), 57);
        assert_eq!(next_index(57, Some(60)), 60);
        assert_eq!(next_index(57, Some(57)), 57, "a timeout: the same index");
        assert_eq!(next_index(57, Some(3)), 0, "backwards: a plain read");
        assert_eq!(next_index(57, None), 0, "no header: a plain read");
        assert_eq!(next_index(0, Some(0)), 1, "never block on 0");
    }

    #[test]
    fn the_query_names_what_was_asked() {
        let q = ConsulService::new("api")
            .tag("v2")
            .tag("lb")
            .filter("Service.Meta.env == \"prod\"")
            .dc("dc2")
            .consistency(Consistency::Stale)
            .query();
        assert_eq!(
            q,
            "passing&tag=v2&tag=lb&filter=Service.Meta.env%20%3D%3D%20%22prod%22&dc=dc2&stale"
        );
        let q = ConsulService::new("api")
            .statuses([Status::Passing, Status::Warning])
            .query();
        assert_eq!(
            q, "",
            "with warning accepted, statuses are judged here, not by ?passing"
        );
    }
}
