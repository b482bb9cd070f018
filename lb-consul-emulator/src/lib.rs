//! An in-process emulator of the parts of Consul's HTTP API that lb's Consul
//! discovery uses, for tests on machines without a Consul binary.
//!
//! The emulator is one agent (node `agent-a`, address `127.0.0.1`) that is
//! also the cluster's leader, in one datacenter. It serves:
//!
//! - `GET /v1/health/service/:name` with `passing`, `tag`, `filter`, `dc`,
//!   `node-meta`, blocking (`index`, `wait`) and the consistency flags;
//! - `GET /v1/catalog/services` (blocking, name -> union of tags);
//! - `PUT /v1/agent/service/register`, `PUT /v1/agent/service/deregister/:id`,
//!   `PUT /v1/agent/check/{pass,warn,fail,update}/:id` (TTL checks with real
//!   timers), `PUT /v1/agent/service/maintenance/:id`;
//! - `GET /v1/status/leader` and `GET /v1/agent/self` for readiness probes.
//!
//! Everything else under `/v1/` is a 404, as on an agent for an unknown path.
//! Writes through the agent endpoints are visible to reads at once (a real
//! agent syncs them to the servers shortly after). The crate's README lists
//! which behaviours come from Consul's documentation, which from its source,
//! and where the emulator knowingly differs.
//!
//! Tests also drive the state directly ([`Emulator::register`],
//! [`Emulator::set_check`], [`Emulator::set_node_health`], ...) and inject
//! faults ([`Emulator::fail_next`], [`Emulator::rewind_index`],
//! [`Emulator::spurious_wakeup`], [`Emulator::stop`]).
//!
//! ```no_run
//! # async fn demo() {
//! use lb_consul_emulator::Emulator;
//! let consul = Emulator::start().await;
//! consul
//!     .register("agent-a", serde_json::json!({"Name": "api", "Port": 8080, "Check": {"TTL": "10s", "Status": "passing"}}))
//!     .unwrap();
//! let url = format!("{}/v1/health/service/api?passing", consul.url());
//! # let _ = url;
//! # }
//! ```

mod acl;
mod filter;
mod goparse;
mod http;
mod register;
mod state;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::http::{lock, Running};
use crate::register::parse_registration;
use crate::state::{valid_status, Effects, State, TtlArm, TtlError};

/// The node the emulated agent runs on; the HTTP agent endpoints act on it.
pub const AGENT_NODE: &str = "agent-a";

/// How an emulator is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// The local datacenter (`dc1` by default); `?dc=` naming another one fails.
    pub datacenter: String,
    /// Add Consul's random extra of up to `wait/16` to blocking queries
    /// (off by default so that tests are deterministic).
    pub jitter: bool,
    /// `Some` turns ACLs on with this token table (secret, grants); the
    /// anonymous token then grants nothing (default policy deny).
    pub acl_tokens: Option<Vec<(String, Access)>>,
    /// The raft index the emulator starts at (10 by default, at least 1).
    pub start_index: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            datacenter: "dc1".to_owned(),
            jitter: false,
            acl_tokens: None,
            start_index: 10,
        }
    }
}

/// What a token may do when ACLs are on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A valid token whose policies grant nothing: reads come back filtered,
    /// writes are refused.
    Deny,
    /// `service:read`, `node:read` and `agent:read` on everything.
    Read,
    /// [`Access::Read`] plus `service:write` and `node:write` on everything.
    Write,
    /// `service:read` (and `service:write` if `write`) on services whose name
    /// starts with `prefix`, `node:read` on every node, no `agent:read`.
    ServicePrefix {
        /// The service name prefix (`service_prefix "<prefix>"`).
        prefix: String,
        /// Whether the rule's policy is `write` rather than `read`.
        write: bool,
    },
}

/// A fault for the next requests ([`Emulator::fail_next`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and plain-text body (e.g. 500, 429, 503).
    Status(u16, String),
    /// Close the connection without answering.
    Drop,
    /// Answer nothing for this long, then handle the request normally.
    Stall(Duration),
    /// Handle the request normally but send `X-Consul-Index: 0` (pre-1.4 servers).
    IndexZero,
    /// Handle the request normally but leave out `X-Consul-Index`.
    NoIndex,
}

/// A request as the emulator received it.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The path as sent (still percent-encoded).
    pub path: String,
    /// The query string as sent (percent-encoded, without `?`).
    pub raw_query: String,
    /// The decoded query pairs, in order (`?passing` gives `("passing", "")`).
    pub query: Vec<(String, String)>,
    /// The headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// When it arrived (tokio's clock, so paused-clock tests can count per second).
    pub at: tokio::time::Instant,
}

impl LoggedRequest {
    /// The first value of a query parameter.
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every value of a query parameter.
    pub fn query_values(&self, name: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether the query has the parameter (with or without a value).
    pub fn has_query(&self, name: &str) -> bool {
        self.query.iter().any(|(k, _)| k == name)
    }

    /// The first value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// A check as the catalog holds it ([`Emulator::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckState {
    /// `passing`, `warning` or `critical`.
    pub status: String,
    /// The last output.
    pub output: String,
    /// The check type (`ttl`, `http`, `maintenance`, `""` for serf, ...).
    pub kind: String,
    /// The service it belongs to, `""` for node checks.
    pub service_id: String,
    /// Its `ModifyIndex`.
    pub modify_index: u64,
}

/// A running emulator: a handle to a server on `127.0.0.1` and its state.
/// Clones share the server; it shuts down when the last clone is dropped
/// (or on [`Emulator::stop`]).
#[derive(Clone)]
pub struct Emulator {
    inner: Arc<Inner>,
}

impl fmt::Debug for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.inner.addr)
            .field("datacenter", &self.inner.opts.datacenter)
            .field("index", &self.index())
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) opts: Options,
    addr: SocketAddr,
    pub(crate) state: Mutex<State>,
    /// Ticks on every write; parked queries wake on it.
    pub(crate) changes: watch::Sender<u64>,
    /// How many blocking queries are parked.
    pub(crate) parked: watch::Sender<usize>,
    pub(crate) faults: Mutex<VecDeque<Fault>>,
    pub(crate) log: Mutex<Vec<LoggedRequest>>,
    runtime: tokio::runtime::Handle,
    server: tokio::sync::Mutex<Option<Running>>,
    ttl_tasks: Mutex<HashMap<(String, String), AbortHandle>>,
    rng: Mutex<u64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(running) = self.server.get_mut().take() {
            running.abort();
        }
        for (_, task) in lock(&self.ttl_tasks).drain() {
            task.abort();
        }
    }
}

impl Inner {
    /// Runs a write under the state lock, starts/stops the TTL timers it
    /// asks for, and wakes parked queries.
    pub(crate) fn write<E>(self: &Arc<Self>, f: impl FnOnce(&mut State) -> Result<Effects, E>) -> Result<(), E> {
        let mut st = lock(&self.state);
        let result = f(&mut st);
        if let Ok(fx) = &result {
            let mut tasks = lock(&self.ttl_tasks);
            for key in &fx.disarm {
                if let Some(task) = tasks.remove(key) {
                    task.abort();
                }
            }
            for arm in &fx.arm {
                let key = (arm.node.clone(), arm.check_id.clone());
                if let Some(task) = tasks.insert(key, self.spawn_ttl(arm.clone())) {
                    task.abort();
                }
            }
        }
        self.changes.send_modify(|tick| *tick += 1);
        drop(st);
        result.map(|_| ())
    }

    /// A TTL report: the write plus restarting the check's timer.
    pub(crate) fn write_ttl(
        self: &Arc<Self>,
        f: impl FnOnce(&mut State) -> Result<TtlArm, TtlError>,
    ) -> Result<(), TtlError> {
        self.write(|st| {
            f(st).map(|arm| Effects {
                changed: true,
                arm: vec![arm],
                disarm: Vec::new(),
            })
        })
    }

    fn spawn_ttl(self: &Arc<Self>, arm: TtlArm) -> AbortHandle {
        let weak = Arc::downgrade(self);
        self.runtime
            .spawn(async move {
                tokio::time::sleep(arm.ttl).await;
                if let Some(inner) = weak.upgrade() {
                    let _ = inner.write(|st| {
                        st.ttl_expired(&arm.node, &arm.check_id, arm.generation);
                        Ok::<_, ()>(Effects::default())
                    });
                }
            })
            .abort_handle()
    }

    /// A cheap pseudo-random number (jitter only).
    pub(crate) fn random(&self) -> u64 {
        let mut x = lock(&self.rng);
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }
}

impl Emulator {
    /// Starts an emulator with [`Options::default`] on `127.0.0.1:0`.
    pub async fn start() -> Emulator {
        Emulator::start_with(Options::default()).await
    }

    /// Starts an emulator on `127.0.0.1:0`.
    ///
    /// # Panics
    ///
    /// If no port can be bound on `127.0.0.1`, or outside a tokio runtime.
    pub async fn start_with(opts: Options) -> Emulator {
        let listener =
            http::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("bind the Consul emulator on 127.0.0.1");
        let addr = listener.local_addr().expect("the emulator's listening address");
        let mut state = State::new(opts.datacenter.clone(), opts.start_index);
        state.add_node(AGENT_NODE, "127.0.0.1", true);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
            | 1;
        let inner = Arc::new(Inner {
            opts,
            addr,
            state: Mutex::new(state),
            changes: watch::channel(0).0,
            parked: watch::channel(0).0,
            faults: Mutex::new(VecDeque::new()),
            log: Mutex::new(Vec::new()),
            runtime: tokio::runtime::Handle::current(),
            server: tokio::sync::Mutex::new(None),
            ttl_tasks: Mutex::new(HashMap::new()),
            rng: Mutex::new(seed),
        });
        *inner.server.lock().await = Some(http::serve(&inner, listener));
        Emulator { inner }
    }

    /// The listening address (`127.0.0.1:PORT`; the same after [`Emulator::resume`]).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The options the emulator runs with.
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// Adds a node (with a passing `serfHealth` check), or moves an existing
    /// node to `address`. Instances on other nodes stand for other agents.
    pub fn add_node(&self, name: &str, address: &str) {
        let _ = self.inner.write(|st| {
            let changed = st.add_node(name, address, false);
            Ok::<_, ()>(Effects {
                changed,
                ..Effects::default()
            })
        });
    }

    /// Registers a service on `node` from an agent registration body (the
    /// JSON of `PUT /v1/agent/service/register`), with the same validation;
    /// an error is the text the endpoint would answer with. No ACL check.
    pub fn register(&self, node: &str, registration: serde_json::Value) -> Result<(), String> {
        let reg = parse_registration(&registration).map_err(|e| e.message)?;
        self.inner.write(|st| st.register(node, &reg, false))
    }

    /// Removes a service instance and its checks; `false` if there was none.
    pub fn deregister(&self, node: &str, service_id: &str) -> bool {
        self.inner.write(|st| st.deregister(node, service_id).ok_or(())).is_ok()
    }

    /// Sets any check's status (`passing`, `warning` or `critical`) and
    /// output, as a check run would. TTL timers are left alone. `false` if
    /// the check does not exist or the status is not one of the three.
    pub fn set_check(&self, node: &str, check_id: &str, status: &str, output: &str) -> bool {
        if !valid_status(status) {
            return false;
        }
        self.inner
            .write(|st| {
                if st.update_check_status(node, check_id, status, output) {
                    Ok(Effects::default())
                } else {
                    Err(())
                }
            })
            .is_ok()
    }

    /// Sets a node's `serfHealth` check: `critical` is "node failed", every
    /// instance on it then fails `?passing`. Unknown nodes are ignored.
    ///
    /// # Panics
    ///
    /// If `status` is not `passing`, `warning` or `critical`.
    pub fn set_node_health(&self, node: &str, status: &str) {
        assert!(
            valid_status(status),
            "a check status is passing, warning or critical, not {status:?}"
        );
        let _ = self.inner.write(|st| {
            st.set_node_health(node, status);
            Ok::<_, ()>(Effects::default())
        });
    }

    /// Turns maintenance mode of a service instance on or off (the effect of
    /// `PUT /v1/agent/service/maintenance/:id` on any node); `false` if the
    /// instance does not exist.
    pub fn set_maintenance(&self, node: &str, service_id: &str, enable: bool, reason: &str) -> bool {
        self.inner
            .write(|st| st.maintenance(node, service_id, enable, reason).ok_or(()))
            .is_ok()
    }

    /// A check's current state, or `None` if there is no such check.
    pub fn check(&self, node: &str, check_id: &str) -> Option<CheckState> {
        lock(&self.inner.state)
            .checks
            .get(&(node.to_owned(), check_id.to_owned()))
            .map(|c| CheckState {
                status: c.status.clone(),
                output: c.output.clone(),
                kind: c.kind.clone(),
                service_id: c.service_id.clone(),
                modify_index: c.modify_index,
            })
    }

    /// A TTL report on any node, as `PUT /v1/agent/check/update/:id` makes
    /// on the agent's: sets status and output and restarts the TTL timer.
    /// Errors are the endpoint's texts.
    pub fn update_ttl(&self, node: &str, check_id: &str, status: &str, output: &str) -> Result<(), String> {
        if !valid_status(status) {
            return Err(format!("Invalid check status: '{status}'"));
        }
        self.inner
            .write_ttl(|st| st.update_ttl(node, check_id, status, output))
            .map_err(|e| match e {
                TtlError::UnknownCheck => {
                    format!("Unknown check ID {check_id:?}. Ensure that the check ID is passed, not the check name.")
                }
                TtlError::NotTtl => format!("CheckID {check_id:?} does not have associated TTL"),
            })
    }

    /// Waits until the raft index is above `above` (a write happened, e.g.
    /// a TTL lapsed) and returns it.
    pub async fn wait_for_index(&self, above: u64) -> u64 {
        let mut changes = self.inner.changes.subscribe();
        loop {
            {
                let st = lock(&self.inner.state);
                changes.borrow_and_update();
                if st.raft_index > above {
                    return st.raft_index;
                }
            }
            if changes.changed().await.is_err() {
                return self.index();
            }
        }
    }

    /// The current raft index.
    pub fn index(&self) -> u64 {
        lock(&self.inner.state).raft_index
    }

    /// The index `/v1/health/service/:name` would answer with now.
    pub fn service_index(&self, name: &str) -> u64 {
        lock(&self.inner.state).service_index(name).max(1)
    }

    /// A snapshot restore: the raft index and every stored index drop to at
    /// most `to`, parked queries answer at once with the lower index, and a
    /// later query with a higher `index` waits until the index overtakes it
    /// or its wait ends.
    pub fn rewind_index(&self, to: u64) {
        let _ = self.inner.write(|st| {
            st.rewind(to);
            Ok::<_, ()>(Effects::default())
        });
    }

    /// The next `n` requests, whatever their path, get `fault` (queued after
    /// faults already pending).
    pub fn fail_next(&self, n: usize, fault: Fault) {
        lock(&self.inner.faults).extend(std::iter::repeat(fault).take(n));
    }

    /// Bumps the index of every query without changing any data, waking
    /// every parked query: they answer with the same data and a higher index.
    pub fn spurious_wakeup(&self) {
        let _ = self.inner.write(|st| {
            st.spurious();
            Ok::<_, ()>(Effects::default())
        });
    }

    /// Every request received since the start or the last [`Emulator::clear_requests`].
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.inner.log).clone()
    }

    /// Forgets the logged requests.
    pub fn clear_requests(&self) {
        lock(&self.inner.log).clear();
    }

    /// How many blocking queries are parked right now.
    pub fn parked(&self) -> usize {
        *self.inner.parked.borrow()
    }

    /// Waits until at least `n` blocking queries are parked (a condition to
    /// wait on instead of sleeping).
    pub async fn wait_parked(&self, n: usize) {
        let mut rx = self.inner.parked.subscribe();
        let _ = rx.wait_for(|parked| *parked >= n).await;
    }

    /// Waits until at most `n` blocking queries are parked (e.g. after a
    /// client went away).
    pub async fn wait_parked_at_most(&self, n: usize) {
        let mut rx = self.inner.parked.subscribe();
        let _ = rx.wait_for(|parked| *parked <= n).await;
    }

    /// "Consul down": stops listening and closes every connection, parked
    /// queries included; connecting is refused until [`Emulator::resume`].
    /// State (and running TTL timers) are kept.
    pub async fn stop(&self) {
        let running = self.inner.server.lock().await.take();
        if let Some(running) = running {
            running.stop().await;
        }
    }

    /// Listens again on the same port with the state kept. No-op if running.
    ///
    /// # Panics
    ///
    /// If the port cannot be bound again (another process took it).
    pub async fn resume(&self) {
        let mut server = self.inner.server.lock().await;
        if server.is_none() {
            let listener = http::bind(self.inner.addr).expect("bind the Consul emulator's port again");
            *server = Some(http::serve(&self.inner, listener));
        }
    }

    /// Whether the emulator is listening (not [`Emulator::stop`]ped).
    pub async fn is_running(&self) -> bool {
        self.inner.server.lock().await.is_some()
    }

    /// The AccessorID the emulator reports for a token secret in
    /// `Permission denied` messages.
    pub fn accessor_id(secret: &str) -> String {
        acl::accessor_id(secret)
    }
}
