//! The endpoint table, its snapshots, and the single writer task that owns them.
//!
//! The writer task is the only code that changes the table. It reads discovery
//! updates, operator commands and wake-ups (health, a finished connect, a timer),
//! applies them to the table (stable [`EndpointId`] -> live state), and publishes an
//! immutable [`Snapshot`] of the eligible endpoints, with whatever the policy
//! precomputes from them, through one atomic pointer swap. Pickers load the current
//! snapshot without a lock. The task runs whether or not traffic flows, so an idle
//! balancer is always current, and it ends when the last
//! [`Balancer`](crate::Balancer) handle is dropped.
//!
//! - this file: the types the pickers share with the writer, the table's entries, the
//!   writer's loop and how it applies updates and commands;
//! - `connect`: making each endpoint's service with the connector, off the loop;
//! - `publish`: turning the table into the next snapshot, step by step.
//!
//! Health is decided in [`health`](crate::health) (probes, ejections, ramps); the
//! writer keeps each endpoint's part of it in its entry and runs it on its loop.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower_service::Service;

use crate::balance::{Balance, Candidates};
use crate::discover::{Backoff, Discover, Update};
use crate::endpoint::{Endpoint, EndpointId};
use crate::error::{BoxError, UnknownEndpoint};
use crate::health::outlier::{Cap, Ejection};
use crate::health::slow_start::Ramp;
use crate::health::{active, CheckConfig, HealthCheck, OutlierConfig, SlowStart};
use crate::load::Release;
use crate::state::{EndpointState, Flag, Link};
use crate::status::Connection;

mod connect;
mod publish;

use self::connect::{Connect, MakeFuture};

/// Balancer settings shared by the writer and the pickers.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) wait: Option<Duration>,
    pub(crate) max_in_flight: Option<u32>,
    pub(crate) panic_threshold: f64,
    /// `None`: off. Never with `consecutive_failures` 0 (the builder turns that off).
    pub(crate) outlier: Option<OutlierConfig>,
    /// The per-attempt time limit: an endpoint's `poll_ready` and call, until the
    /// response (head).
    pub(crate) timeout: Option<Duration>,
    /// The least latency sample a failure records.
    pub(crate) failure_penalty: Duration,
    pub(crate) slow_start: Option<SlowStart>,
    pub(crate) health: Option<(Arc<dyn HealthCheck>, CheckConfig)>,
    pub(crate) default_rtt: Duration,
    pub(crate) decay_ns: f64,
    pub(crate) track_latency: bool,
    pub(crate) name: Arc<str>,
    /// Endpoints drained by an operator before this balancer existed (carried over from
    /// a balancer it replaces).
    pub(crate) admin_drained: BTreeSet<EndpointId>,
    /// How long one attempt of the connector may take.
    pub(crate) connect_timeout: Duration,
    /// The backoff between failed attempts of the connector (least, most).
    pub(crate) connect_backoff: (Duration, Duration),
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("name", &self.name)
            .field("wait", &self.wait)
            .field("max_in_flight", &self.max_in_flight)
            .field("panic_threshold", &self.panic_threshold)
            .field("outlier", &self.outlier)
            .field("timeout", &self.timeout)
            .field("failure_penalty", &self.failure_penalty)
            .field("slow_start", &self.slow_start)
            .field("health", &self.health.as_ref().map(|h| h.1))
            .field("connect_timeout", &self.connect_timeout)
            .field("connect_backoff", &self.connect_backoff)
            .finish()
    }
}

/// What the request path and the balancer handles tell the writer, without a channel
/// send.
#[derive(Debug, Default)]
pub(crate) struct Events {
    /// Wakes the writer: a health verdict flipped, a failure streak reached the outlier
    /// threshold, the last handle went.
    pub(crate) notify: Arc<Notify>,
    /// The last balancer handle is gone: the writer stops.
    pub(crate) closed: AtomicBool,
    /// Ids an operator drained: the drain outlives the endpoint's state, so an endpoint
    /// that discovery removes and adds back stays drained until enabled.
    pub(crate) admin_drained: Mutex<BTreeSet<EndpointId>>,
}

/// One published view of the eligible endpoints.
pub(crate) struct Snapshot<P: Balance, S> {
    pub(crate) generation: u64,
    pub(crate) endpoints: Box<[Arc<EndpointState>]>,
    pub(crate) weights: Box<[u32]>,
    pub(crate) services: Box<[S]>,
    pub(crate) state: P::State,
    pub(crate) policy: Arc<P>,
    /// Too few endpoints are healthy: health is ignored (draining still counts).
    pub(crate) panic: bool,
}

impl<P: Balance, S> Snapshot<P, S> {
    /// The snapshot before the first publish: no endpoint.
    fn empty(policy: &Arc<P>) -> Self {
        Snapshot {
            generation: 0,
            endpoints: Box::new([]),
            weights: Box::new([]),
            services: Box::new([]),
            state: policy.build(&Candidates::new(&[], &[])),
            policy: policy.clone(),
            panic: false,
        }
    }

    /// The eligible set; checked when the snapshot was built (`publish` builds it with
    /// `Candidates::new`), so not again on every pick.
    #[inline]
    pub(crate) fn candidates(&self) -> Candidates<'_> {
        Candidates::trusted(&self.endpoints, &self.weights)
    }

    /// Whether `i` may take a new request right now.
    #[inline]
    pub(crate) fn usable(&self, i: usize) -> bool {
        let st = &self.endpoints[i];
        if self.panic {
            !st.is_draining()
        } else {
            st.is_eligible()
        }
    }
}

impl<P: Balance, S: Send + Sync + 'static> Release for Snapshot<P, S> {
    #[inline]
    fn release(&self, index: u32) {
        self.policy.on_release(&self.state, &self.candidates(), index as usize);
    }
}

/// What the writer publishes and the balancer handles read: the current snapshot (for
/// pickers), every endpoint the table holds (for status), and a notification after
/// each new snapshot (for callers waiting for an endpoint).
// `repr(C)`: the snapshot first, the one field pickers read.
#[repr(C)]
pub(crate) struct Published<P: Balance, S> {
    pub(crate) snapshot: ArcSwap<Snapshot<P, S>>,
    /// Every endpoint the table holds, draining ones included.
    pub(crate) all: ArcSwap<Vec<Listed>>,
    /// Notified after a new snapshot is stored.
    pub(crate) notify: Notify,
}

impl<P: Balance, S> Published<P, S> {
    /// Nothing published yet: an empty snapshot.
    pub(crate) fn new(policy: &Arc<P>) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::empty(policy)),
            all: ArcSwap::from_pointee(Vec::new()),
            notify: Notify::new(),
        }
    }
}

/// What the writer's readers (the balancer handles' shared part) hold: the writer
/// keeps them weakly, publishes into their [`Published`], and stops publishing when the
/// last of them is gone. A trait so that the table need not know the type that holds it.
pub(crate) trait Readers<P: Balance, S>: Send + Sync {
    fn published(&self) -> &Published<P, S>;
}

/// One endpoint the table holds, for status.
pub(crate) struct Listed {
    pub(crate) state: Arc<EndpointState>,
    pub(crate) connection: Connection,
}

/// An operator action, sent to the writer.
#[derive(Debug)]
pub(crate) enum Command {
    Drain(EndpointId, oneshot::Sender<Result<(), UnknownEndpoint>>),
    Enable(EndpointId, oneshot::Sender<Result<(), UnknownEndpoint>>),
}

/// One endpoint in the table.
struct Entry<S> {
    state: Arc<EndpointState>,
    /// `None` until the connector made it: the endpoint is not pickable until then.
    service: Option<S>,
    connect: Connect,
    /// Attempts at making the current service, failed or running.
    attempts: u32,
    backoff: Backoff,
    /// Passive outlier detection's part.
    ejection: Ejection,
    /// Slow start's part.
    ramp: Ramp,
    /// Out of rotation at the last publish.
    was_out: bool,
    /// The active check's task.
    probe: Option<JoinHandle<()>>,
}

impl<S> Drop for Entry<S> {
    fn drop(&mut self) {
        if let Some(p) = self.probe.take() {
            p.abort();
        }
    }
}

/// What the writer asks of its connector (what `Builder::spawn` asks of it), in one
/// name for the writer's impl blocks.
pub(crate) trait Connector<S>:
    Service<Endpoint, Response = S, Error: Into<BoxError>, Future: Send> + Send + 'static
{
}

impl<S, M> Connector<S> for M
where
    M: Service<Endpoint, Response = S> + Send + 'static,
    M::Error: Into<BoxError>,
    M::Future: Send,
{
}

/// A reply to an operator, sent once the snapshot that reflects the command is out.
type Reply = (
    oneshot::Sender<Result<(), UnknownEndpoint>>,
    Result<(), UnknownEndpoint>,
);

pub(crate) struct Writer<P: Balance, S, M> {
    readers: Weak<dyn Readers<P, S>>,
    policy: Arc<P>,
    events: Arc<Events>,
    config: Arc<Config>,
    make: M,
    commands: mpsc::UnboundedReceiver<Command>,
    table: BTreeMap<EndpointId, Entry<S>>,
    draining: Vec<Arc<EndpointState>>,
    /// Removed since the last publish; flagged draining right after it.
    retiring: Vec<Arc<EndpointState>>,
    generation: u64,
    seen_first_set: bool,
    /// Endpoints waiting for the connector (stale ids are skipped).
    queue: VecDeque<EndpointId>,
    /// The connector's running futures, polled by the writer's loop, never awaited
    /// inline: a slow connect holds up nothing else.
    connecting: FuturesUnordered<MakeFuture<S>>,
    next_seq: u64,
    /// Something a picker sees changed without changing the set or the weights (an
    /// endpoint's metadata, a service made again): the next publish rebuilds.
    dirty: bool,
    replies: Vec<Reply>,
    /// Removed, still in rotation until `publish` retires them (see there).
    held: Vec<Entry<S>>,
}

impl<P, S, M> Writer<P, S, M>
where
    P: Balance,
    S: Clone + Send + Sync + 'static,
    M: Connector<S>,
{
    pub(crate) fn new(
        readers: Weak<dyn Readers<P, S>>,
        policy: Arc<P>,
        events: Arc<Events>,
        config: Arc<Config>,
        make: M,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        Self {
            readers,
            policy,
            events,
            config,
            make,
            commands,
            table: BTreeMap::new(),
            draining: Vec::new(),
            retiring: Vec::new(),
            generation: 0,
            seen_first_set: false,
            queue: VecDeque::new(),
            connecting: FuturesUnordered::new(),
            next_seq: 0,
            dirty: false,
            replies: Vec::new(),
            held: Vec::new(),
        }
    }

    /// Applies what `discover` has ready now, makes the services that the connector can
    /// make without waiting, and publishes: called by `spawn` before it returns, so a
    /// call right after `spawn` sees the endpoints a source had ready (e.g.
    /// `discover::fixed`). Never waits: it polls with a no-op waker (the writer's loop
    /// polls everything again with its own). Returns whether discovery goes on.
    pub(crate) fn prime<D: Discover>(&mut self, mut discover: Pin<&mut D>) -> bool {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let mut discovering = true;
        // Bounded: a source that is always ready must not hold `spawn` forever.
        for _ in 0..1024 {
            match discover.as_mut().poll_next(&mut cx) {
                Poll::Ready(Some(Ok(u))) => self.apply(u),
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(balancer = %self.config.name, error = %e, "discovery error; keeping the last endpoint set");
                }
                Poll::Ready(None) => {
                    discovering = false;
                    break;
                }
                Poll::Pending => break,
            }
        }
        self.start_connects(&mut cx);
        while let Poll::Ready(Some(made)) = self.connecting.poll_next_unpin(&mut cx) {
            self.made(made);
        }
        self.publish();
        discovering
    }

    /// Runs until every balancer handle is gone: waits for the next thing to do, does
    /// it, runs the timers' work ([`tick`](Self::tick)), publishes, and answers the
    /// operator commands the new snapshot reflects.
    pub(crate) async fn run<D: Discover>(mut self, mut discover: Pin<Box<D>>, mut discovering: bool) {
        let name = self.config.name.clone();
        let wake = self.events.notify.clone();
        loop {
            if self.events.closed.load(Relaxed) {
                tracing::debug!(balancer = %name, "balancer dropped; writer stops");
                return;
            }
            self.start_connects(&mut Context::from_waker(futures_util::task::noop_waker_ref()));
            let deadline = self.next_wake();
            let queued = !self.queue.is_empty();
            let connecting = !self.connecting.is_empty();
            tokio::select! {
                biased;
                u = discover.next(), if discovering => match u {
                    Some(Ok(update)) => {
                        self.apply(update);
                        // Take whatever else is ready before publishing once.
                        while let Some(Some(Ok(u))) = futures_util::FutureExt::now_or_never(discover.next()) {
                            self.apply(u);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(balancer = %name, error = %e, "discovery error; keeping the last endpoint set");
                        continue;
                    }
                    None => {
                        tracing::debug!(balancer = %name, "discovery stream ended; keeping the last endpoint set");
                        discovering = false;
                    }
                },
                Some(cmd) = self.commands.recv() => self.command(cmd),
                _ = wake.notified() => {}
                Some(made) = self.connecting.next(), if connecting => self.made(made),
                r = std::future::poll_fn(|cx| self.make.poll_ready(cx)), if queued => match r {
                    Ok(()) => self.start_next_connect(),
                    Err(e) => {
                        if let Some(id) = self.queue.pop_front() {
                            self.connect_failed(&id, e.into());
                        }
                    }
                },
                _ = sleep_until(deadline) => {}
            }
            self.tick();
            self.publish();
            for (reply, res) in self.replies.drain(..) {
                let _ = reply.send(res);
            }
        }
    }

    /// The earliest timer: an ejection ending, a connect to retry, a ramp's next step, a
    /// drain to check on.
    fn next_wake(&self) -> Option<Instant> {
        let now = Instant::now();
        let slow_start = self.config.slow_start;
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        for e in self.table.values() {
            if let Some(t) = e.ejection.next_wake() {
                at(t);
            }
            if let Connect::Failed { retry_at, .. } = e.connect {
                at(retry_at);
            }
            if let Some(t) = e.ramp.next_wake(now, slow_start) {
                at(t);
            }
        }
        if !self.draining.is_empty() {
            at(now + Duration::from_millis(250));
        }
        wake
    }

    fn apply(&mut self, update: Update) {
        match update {
            Update::Insert(ep) => self.insert(ep),
            Update::Remove(id) => self.remove(&id),
            Update::Reset(set) => {
                let mut next: BTreeMap<EndpointId, Endpoint> = BTreeMap::new();
                for ep in set {
                    next.insert(ep.id().clone(), ep);
                }
                let gone: Vec<EndpointId> = self.table.keys().filter(|k| !next.contains_key(*k)).cloned().collect();
                for id in gone {
                    self.remove(&id);
                }
                for (_, ep) in next {
                    self.insert(ep);
                }
            }
        }
        self.seen_first_set = true;
    }

    fn insert(&mut self, ep: Endpoint) {
        if let Some(entry) = self.table.get_mut(ep.id()) {
            let old = entry.state.endpoint();
            if *old == ep {
                return;
            }
            let readdr = old.addr() != ep.addr();
            tracing::debug!(balancer = %self.config.name, endpoint = %ep.id(), weight = ep.weight(), "endpoint updated in place");
            entry.state.set_endpoint(ep.clone());
            // Metadata or weight: the policy state is rebuilt from the new values.
            self.dirty = true;
            if readdr {
                if let Some((check, _)) = &self.config.health {
                    check.forget(&old);
                }
                // The old service keeps serving until the new one is made.
                entry.connect = Connect::Queued;
                entry.attempts = 0;
                entry.backoff.reset();
                self.queue.push_back(ep.id().clone());
            }
            return;
        }
        // An endpoint removed and added back before it left keeps its entry (and is
        // then updated in place).
        if let Some(i) = self.held.iter().position(|e| e.state.id() == ep.id()) {
            let entry = self.held.swap_remove(i);
            self.table.insert(ep.id().clone(), entry);
            self.insert(ep);
            return;
        }
        let state = self.state_for(&ep);
        let probe = self.config.health.clone().map(|(check, cfg)| {
            active::spawn(
                state.clone(),
                check,
                cfg,
                self.events.notify.clone(),
                self.config.name.clone(),
            )
        });
        let (min, max) = self.config.connect_backoff;
        self.table.insert(
            ep.id().clone(),
            Entry {
                state,
                service: None,
                connect: Connect::Queued,
                attempts: 0,
                backoff: Backoff::new(min, max),
                ejection: Ejection::default(),
                ramp: Ramp::new(self.seen_first_set),
                was_out: false,
                probe,
            },
        );
        self.queue.push_back(ep.id().clone());
    }

    /// The state of an endpoint that joins: the one it had if it comes back while still
    /// draining, else a new one, linked to this balancer.
    fn state_for(&mut self, ep: &Endpoint) -> Arc<EndpointState> {
        let revived = self
            .draining
            .iter()
            .position(|s| s.id() == ep.id())
            .map(|i| self.draining.swap_remove(i));
        if let Some(st) = revived {
            st.set_endpoint(ep.clone());
            st.set_flag(Flag::Draining, false);
            self.retiring.retain(|s| !Arc::ptr_eq(s, &st));
            tracing::info!(balancer = %self.config.name, endpoint = %ep.id(), "endpoint re-added while draining; state kept");
            return st;
        }
        tracing::info!(balancer = %self.config.name, endpoint = %ep.id(), addr = %ep.addr(), weight = ep.weight(), "endpoint added");
        let st = EndpointState::new(ep.clone(), self.config.default_rtt);
        let drained = self
            .events
            .admin_drained
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(ep.id());
        if drained {
            st.set_flag(Flag::AdminDrain, true);
            tracing::info!(balancer = %self.config.name, endpoint = %ep.id(), "endpoint back; still drained by operator");
        }
        st.link(Link {
            wake: self.events.notify.clone(),
            outlier_threshold: self.config.outlier.map_or(0, |o| o.consecutive_failures),
            decay_ns: self.config.decay_ns,
            failure_penalty: self.config.failure_penalty,
        });
        Arc::new(st)
    }

    fn remove(&mut self, id: &EndpointId) {
        if let Some(entry) = self.table.remove(id) {
            tracing::info!(balancer = %self.config.name, endpoint = %id, in_flight = entry.state.in_flight(), "endpoint removed; draining");
            if entry.service.is_some() {
                // `publish` retires it, or holds it while its replacements are made.
                self.held.push(entry);
            } else {
                self.retire_entry(entry);
            }
        }
    }

    /// An endpoint leaves rotation for good: it drains.
    fn retire_entry(&mut self, entry: Entry<S>) {
        // Flagged draining only once a snapshot without it is out (see `publish`):
        // the snapshot pickers use until then still offers it, and flagging it now
        // would leave them nothing usable while a whole set is being replaced.
        self.retiring.push(entry.state.clone());
        if entry.state.in_flight() > 0 {
            self.draining.push(entry.state.clone());
        }
        // Its probe stops with the entry; the probe's connection to it goes too.
        if let Some((check, _)) = &self.config.health {
            check.forget(&entry.state.endpoint());
        }
    }

    fn command(&mut self, cmd: Command) {
        let (id, drain, reply) = match cmd {
            Command::Drain(id, r) => (id, true, r),
            Command::Enable(id, r) => (id, false, r),
        };
        let res = match self.table.get(&id) {
            Some(e) => {
                {
                    let mut ids = self.events.admin_drained.lock().unwrap_or_else(PoisonError::into_inner);
                    if drain {
                        ids.insert(id.clone());
                    } else {
                        ids.remove(&id);
                    }
                }
                if e.state.set_flag(Flag::AdminDrain, drain) {
                    tracing::info!(balancer = %self.config.name, endpoint = %id, "endpoint {} by operator", if drain { "drained" } else { "enabled" });
                }
                Ok(())
            }
            None => Err(UnknownEndpoint(id.to_string())),
        };
        // Answered after the next publish: the caller then knows the snapshot reflects it.
        self.replies.push((reply, res));
    }

    /// The timers' work: ejections over and new ones, connects due for a retry, drains
    /// finished.
    fn tick(&mut self) {
        let now = Instant::now();
        let name = &*self.config.name;
        for (id, e) in self.table.iter_mut() {
            e.ejection.readmit_if_due(now, &e.state, id, name);
        }
        if let Some(outlier) = &self.config.outlier {
            let ejected = self.table.values().filter(|e| e.ejection.is_ejected()).count();
            let mut cap = Cap::new(outlier, self.table.len(), ejected);
            for (id, e) in self.table.iter_mut() {
                e.ejection.eject_if_failing(outlier, &mut cap, now, &e.state, id, name);
            }
        }
        for (id, e) in self.table.iter_mut() {
            if matches!(e.connect, Connect::Failed { retry_at, .. } if retry_at <= now) {
                e.connect = Connect::Queued;
                self.queue.push_back(id.clone());
            }
        }
        self.draining.retain(|s| {
            let busy = s.in_flight() > 0;
            if !busy {
                tracing::debug!(balancer = %name, endpoint = %s.id(), "endpoint drained");
            }
            busy
        });
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
