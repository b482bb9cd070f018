//! The endpoint table, its snapshots, and the single writer task that owns them.
//!
//! The writer task is the only code that changes the table. It reads discovery
//! updates, operator commands and health events, applies them to the table (stable
//! [`EndpointId`] -> live state), and publishes an immutable [`Snapshot`] of the
//! eligible endpoints, with whatever the policy precomputes from them, through one
//! atomic pointer swap. Pickers load the current snapshot without a lock. The task
//! runs whether or not traffic flows, so an idle balancer is always current, and it
//! ends when the last [`Balancer`](crate::Balancer) handle is dropped.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower_service::Service;

use crate::balance::{Balance, Candidates, WEIGHT_SCALE};
use crate::discover::{Backoff, Discover, Update};
use crate::endpoint::{Endpoint, EndpointId};
use crate::error::{BoxError, Elapsed, UnknownEndpoint};
use crate::health::{CheckConfig, HealthCheck, OutlierConfig, SlowStart};
use crate::load::Release;
use crate::service::Connection;
use crate::state::{EndpointState, Flag, Link};

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
    pub(crate) admin_drained: std::collections::BTreeSet<EndpointId>,
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

/// What the request path tells the writer, without a channel send.
#[derive(Debug, Default)]
pub(crate) struct Events {
    pub(crate) notify: Notify,
    pub(crate) closed: AtomicBool,
    /// Ids an operator drained: the drain outlives the endpoint's state, so an endpoint
    /// that discovery removes and adds back stays drained until enabled.
    pub(crate) admin_drained: std::sync::Mutex<std::collections::BTreeSet<EndpointId>>,
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

/// What every balancer handle shares.
pub(crate) struct Shared<P: Balance, S> {
    pub(crate) snapshot: ArcSwap<Snapshot<P, S>>,
    /// Every endpoint the table holds, draining ones included, for status.
    pub(crate) all: ArcSwap<Vec<Listed>>,
    pub(crate) policy: Arc<P>,
    pub(crate) config: Arc<Config>,
    pub(crate) events: Arc<Events>,
    pub(crate) published: Notify,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) timed: bool,
}

impl<P: Balance, S> Drop for Shared<P, S> {
    fn drop(&mut self) {
        self.events.closed.store(true, Relaxed);
        self.events.notify.notify_one();
    }
}

impl<P: Balance, S> std::fmt::Debug for Shared<P, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("policy", &self.policy.name())
            .field("generation", &self.snapshot.load().generation)
            .finish()
    }
}

pub(crate) fn empty_snapshot<P: Balance, S>(policy: &Arc<P>) -> Snapshot<P, S> {
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

/// Where making an endpoint's service stands.
#[derive(Debug, Clone, PartialEq)]
enum Connect {
    /// Made: the entry has its service.
    Ready,
    /// Waiting for the connector to be ready.
    Queued,
    /// The connector's future for attempt `seq` runs.
    Connecting(u64),
    /// The last attempt failed; the next one starts at `retry_at`.
    Failed { error: Arc<str>, retry_at: Instant },
}

struct Entry<S> {
    state: Arc<EndpointState>,
    /// `None` until the connector made it: the endpoint is not pickable until then.
    service: Option<S>,
    connect: Connect,
    /// Attempts at making the current service, failed or running.
    attempts: u32,
    backoff: Backoff,
    /// Slow start begins when the service is made (an endpoint that joined late).
    ramp_on_ready: bool,
    eject_until: Option<Instant>,
    last_eject_end: Option<Instant>,
    ramp_from: Option<Instant>,
    was_out: bool,
    probe: Option<JoinHandle<()>>,
}

impl<S> Drop for Entry<S> {
    fn drop(&mut self) {
        if let Some(p) = self.probe.take() {
            p.abort();
        }
    }
}

/// One finished attempt of the connector.
struct Made<S> {
    id: EndpointId,
    seq: u64,
    result: Result<S, BoxError>,
}

type MakeFuture<S> = Pin<Box<dyn Future<Output = Made<S>> + Send>>;

/// A reply to an operator, sent once the snapshot that reflects the command is out.
type Reply = (
    oneshot::Sender<Result<(), UnknownEndpoint>>,
    Result<(), UnknownEndpoint>,
);

pub(crate) struct Writer<P: Balance, S, M> {
    pub(crate) shared: Weak<Shared<P, S>>,
    pub(crate) policy: Arc<P>,
    pub(crate) events: Arc<Events>,
    pub(crate) config: Arc<Config>,
    pub(crate) make: M,
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
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
    M: Service<Endpoint, Response = S> + Send + 'static,
    M::Error: Into<BoxError>,
    M::Future: Send,
{
    pub(crate) fn new(
        shared: Weak<Shared<P, S>>,
        policy: Arc<P>,
        events: Arc<Events>,
        config: Arc<Config>,
        make: M,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        Self {
            shared,
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

    /// Runs until every balancer handle is gone.
    pub(crate) async fn run<D: Discover>(mut self, mut discover: Pin<Box<D>>, mut discovering: bool) {
        let name = self.config.name.clone();
        loop {
            if self.events.closed.load(Relaxed) {
                tracing::debug!(balancer = %name, "balancer dropped; writer stops");
                return;
            }
            self.start_connects(&mut Context::from_waker(futures_util::task::noop_waker_ref()));
            let wake = self.next_wake();
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
                _ = self.events.notify.notified() => {}
                Some(made) = self.connecting.next(), if connecting => self.made(made),
                r = std::future::poll_fn(|cx| self.make.poll_ready(cx)), if queued => match r {
                    Ok(()) => self.start_next_connect(),
                    Err(e) => {
                        if let Some(id) = self.queue.pop_front() {
                            self.connect_failed(&id, e.into());
                        }
                    }
                },
                _ = sleep_until(wake) => {}
            }
            self.tick();
            self.publish();
            for (reply, res) in self.replies.drain(..) {
                let _ = reply.send(res);
            }
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        for e in self.table.values() {
            if let Some(t) = e.eject_until {
                at(t);
            }
            if let Connect::Failed { retry_at, .. } = e.connect {
                at(retry_at);
            }
            if let (Some(from), Some(ss)) = (e.ramp_from, self.config.slow_start) {
                if now < from + ss.window {
                    at(now + (ss.window / 16).max(Duration::from_millis(50)));
                } else {
                    at(now);
                }
            }
        }
        if !self.draining.is_empty() {
            at(now + Duration::from_millis(250));
        }
        wake
    }

    /// Starts the connector on queued endpoints while it is ready.
    fn start_connects(&mut self, cx: &mut Context<'_>) {
        loop {
            self.skip_stale();
            if self.queue.is_empty() {
                return;
            }
            match self.make.poll_ready(cx) {
                Poll::Pending => return,
                Poll::Ready(Ok(())) => self.start_next_connect(),
                Poll::Ready(Err(e)) => {
                    if let Some(id) = self.queue.pop_front() {
                        self.connect_failed(&id, e.into());
                    }
                }
            }
        }
    }

    /// Drops queued ids that no longer wait for a connect (removed, or queued twice).
    fn skip_stale(&mut self) {
        while let Some(id) = self.queue.front() {
            if self.table.get(id).is_some_and(|e| e.connect == Connect::Queued) {
                return;
            }
            self.queue.pop_front();
        }
    }

    /// Calls the connector (just found ready) for the first queued endpoint.
    fn start_next_connect(&mut self) {
        self.skip_stale();
        let Some(id) = self.queue.pop_front() else {
            return;
        };
        let Some(entry) = self.table.get_mut(&id) else {
            return;
        };
        self.next_seq += 1;
        let seq = self.next_seq;
        entry.connect = Connect::Connecting(seq);
        entry.attempts += 1;
        let fut = self.make.call((*entry.state.endpoint()).clone());
        let timeout = self.config.connect_timeout;
        self.connecting.push(Box::pin(async move {
            let result = match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(Box::new(Elapsed::new(timeout)) as BoxError),
            };
            Made { id, seq, result }
        }));
    }

    /// An attempt finished.
    fn made(&mut self, made: Made<S>) {
        let Some(entry) = self.table.get_mut(&made.id) else {
            return;
        };
        if entry.connect != Connect::Connecting(made.seq) {
            return; // An attempt for an address the endpoint no longer has.
        }
        match made.result {
            Ok(service) => {
                entry.service = Some(service);
                entry.connect = Connect::Ready;
                entry.attempts = 0;
                entry.backoff.reset();
                if std::mem::take(&mut entry.ramp_on_ready) && self.config.slow_start.is_some() {
                    entry.ramp_from = Some(Instant::now());
                }
                self.dirty = true;
                tracing::debug!(balancer = %self.config.name, endpoint = %made.id, "service made for endpoint");
            }
            Err(e) => self.connect_failed(&made.id, e),
        }
    }

    /// The connector failed for `id`: retried after a backoff.
    fn connect_failed(&mut self, id: &EndpointId, error: BoxError) {
        let Some(entry) = self.table.get_mut(id) else {
            return;
        };
        let wait = entry.backoff.next_wait();
        let error = crate::error::chain(&*error);
        tracing::warn!(balancer = %self.config.name, endpoint = %id, attempts = entry.attempts, retry_in = ?wait, error = %error, "could not make a service for endpoint; will retry");
        entry.connect = Connect::Failed {
            error: Arc::from(error),
            retry_at: Instant::now() + wait,
        };
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
        // An endpoint that comes back while still draining keeps its state.
        let revived = self
            .draining
            .iter()
            .position(|s| s.id() == ep.id())
            .map(|i| self.draining.swap_remove(i));
        let state = match revived {
            Some(st) => {
                st.set_endpoint(ep.clone());
                st.set_flag(Flag::Draining, false);
                self.retiring.retain(|s| !Arc::ptr_eq(s, &st));
                tracing::info!(balancer = %self.config.name, endpoint = %ep.id(), "endpoint re-added while draining; state kept");
                st
            }
            None => {
                tracing::info!(balancer = %self.config.name, endpoint = %ep.id(), addr = %ep.addr(), weight = ep.weight(), "endpoint added");
                let st = EndpointState::new(ep.clone(), self.config.default_rtt);
                let drained = self
                    .events
                    .admin_drained
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .contains(ep.id());
                if drained {
                    st.set_flag(Flag::AdminDrain, true);
                    tracing::info!(balancer = %self.config.name, endpoint = %ep.id(), "endpoint back; still drained by operator");
                }
                st.link(Link {
                    events: self.events.clone(),
                    outlier_threshold: self.config.outlier.map(|o| o.consecutive_failures).unwrap_or(0),
                    decay_ns: self.config.decay_ns,
                    failure_penalty: self.config.failure_penalty,
                });
                Arc::new(st)
            }
        };
        let probe = self.config.health.clone().map(|(check, cfg)| {
            tokio::spawn(probe_loop(
                state.clone(),
                check,
                cfg,
                self.events.clone(),
                self.config.name.clone(),
            ))
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
                ramp_on_ready: self.seen_first_set,
                eject_until: None,
                last_eject_end: None,
                ramp_from: None,
                was_out: false,
                probe,
            },
        );
        self.queue.push_back(ep.id().clone());
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
                    let mut ids = self
                        .events
                        .admin_drained
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
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

    /// Ejections, re-admissions, drains finished.
    fn tick(&mut self) {
        let now = Instant::now();
        let name = self.config.name.clone();
        // Re-admit.
        for (id, e) in self.table.iter_mut() {
            if e.eject_until.is_some_and(|t| t <= now) {
                e.eject_until = None;
                e.last_eject_end = Some(now);
                e.state.set_flag(Flag::Ejected, false);
                tracing::info!(balancer = %name, endpoint = %id, "ejection over; endpoint re-admitted");
            }
        }
        // Eject.
        if let Some(o) = self.config.outlier {
            let n = self.table.len();
            let cap = ((n as f64 * o.max_ejection_percent).floor() as usize).max(1);
            let mut ejected = self.table.values().filter(|e| e.eject_until.is_some()).count();
            for (id, e) in self.table.iter_mut() {
                if e.eject_until.is_some() || e.state.consecutive_failures() < o.consecutive_failures {
                    continue;
                }
                if ejected >= cap {
                    tracing::debug!(balancer = %name, endpoint = %id, "would eject, but {ejected} of {n} are out already");
                    continue;
                }
                if e.last_eject_end.is_some_and(|t| now.duration_since(t) > o.max_ejection) {
                    e.state.forgive_ejections();
                }
                let times = e.state.note_ejected();
                let dur = (o.base_ejection * times).min(o.max_ejection);
                e.eject_until = Some(now + dur);
                e.state.set_flag(Flag::Ejected, true);
                ejected += 1;
                tracing::warn!(balancer = %name, endpoint = %id, times, ejected_for = ?dur, "endpoint ejected after consecutive failures");
            }
        }
        // Connects to retry.
        for (id, e) in self.table.iter_mut() {
            if matches!(e.connect, Connect::Failed { retry_at, .. } if retry_at <= now) {
                e.connect = Connect::Queued;
                self.queue.push_back(id.clone());
            }
        }
        // Drains finished.
        self.draining.retain(|s| {
            let busy = s.in_flight() > 0;
            if !busy {
                tracing::debug!(balancer = %name, endpoint = %s.id(), "endpoint drained");
            }
            busy
        });
    }

    fn publish(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let name = self.config.name.clone();
        let mut active = 0usize;
        let mut eligible = 0usize;
        for (id, e) in self.table.iter_mut() {
            if e.service.is_none() {
                continue; // Not made yet: neither in rotation nor out of it.
            }
            let weighted = e.state.endpoint().weight() > 0;
            let admin = e.state.is_admin_drained();
            if weighted && !admin {
                active += 1;
            }
            let out = !e.state.is_eligible();
            if weighted && !out {
                eligible += 1;
            }
            if e.was_out && !out {
                if self.config.slow_start.is_some() {
                    e.ramp_from = Some(now);
                }
                tracing::info!(balancer = %name, endpoint = %id, "endpoint back in rotation");
            } else if !e.was_out && out {
                tracing::warn!(balancer = %name, endpoint = %id, state = %e.state.health(), "endpoint out of rotation");
            }
            e.was_out = out;
            if let (Some(from), Some(ss)) = (e.ramp_from, self.config.slow_start) {
                if now.duration_since(from) >= ss.window {
                    e.ramp_from = None;
                }
            }
        }
        let panic = active > 0 && (eligible as f64) < self.config.panic_threshold * active as f64;
        let prev_panic = shared.snapshot.load().panic;
        if panic != prev_panic {
            if panic {
                tracing::warn!(balancer = %name, eligible, active, "too few healthy endpoints: panic mode, balancing over all");
            } else {
                tracing::info!(balancer = %name, eligible, active, "panic mode over");
            }
        }
        let mut endpoints = Vec::with_capacity(self.table.len());
        let mut weights = Vec::with_capacity(self.table.len());
        let mut services = Vec::with_capacity(self.table.len());
        // Removed endpoints are held in rotation while nothing else can serve and the
        // endpoints that replace them are still being made (a blue/green `Reset`), so
        // that a slow connector never leaves a gap; otherwise they leave now.
        let warming = self
            .table
            .values()
            .any(|e| e.service.is_none() && matches!(e.connect, Connect::Queued | Connect::Connecting(_)));
        let servable = self
            .table
            .values()
            .any(|e| e.service.is_some() && e.state.endpoint().weight() > 0 && !e.state.is_admin_drained());
        if servable || !warming {
            for e in std::mem::take(&mut self.held) {
                self.retire_entry(e);
            }
        }
        for e in self.table.values().chain(&self.held) {
            let Some(service) = &e.service else {
                continue;
            };
            let w = e.state.endpoint().weight();
            if w == 0 || e.state.is_admin_drained() {
                continue;
            }
            if !panic && !e.state.is_eligible() {
                continue;
            }
            let factor = match (e.ramp_from, self.config.slow_start) {
                (Some(from), Some(ss)) => ss.factor(now.duration_since(from)),
                _ => 1.0,
            };
            let eff = ((w as f64 * WEIGHT_SCALE as f64 * factor).round() as u32).max(1);
            endpoints.push(e.state.clone());
            weights.push(eff);
            services.push(service.clone());
        }
        // Skip the rebuild when nothing a picker sees has changed.
        let cur = shared.snapshot.load();
        let same = cur.panic == panic
            && cur.weights[..] == weights[..]
            && cur.endpoints.len() == endpoints.len()
            && cur.endpoints.iter().zip(&endpoints).all(|(a, b)| Arc::ptr_eq(a, b))
            && self.generation > 0
            && !self.dirty;
        self.dirty = false;
        let mut all: Vec<Listed> = self
            .table
            .values()
            .chain(&self.held)
            .map(|e| Listed {
                state: e.state.clone(),
                connection: match &e.connect {
                    Connect::Ready => Connection::Ready,
                    // An endpoint made again for a new address is still served.
                    _ if e.service.is_some() => Connection::Ready,
                    Connect::Queued | Connect::Connecting(_) => Connection::Connecting { attempts: e.attempts },
                    Connect::Failed { error, .. } => Connection::Failed {
                        attempts: e.attempts,
                        error: error.clone(),
                    },
                },
            })
            .collect();
        all.extend(self.draining.iter().map(|st| Listed {
            state: st.clone(),
            connection: Connection::Ready,
        }));
        if same {
            self.retire();
            shared.all.store(Arc::new(all));
            return;
        }
        drop(cur);
        self.generation += 1;
        let state = self.policy.build(&Candidates::new(&endpoints, &weights));
        let snap = Snapshot {
            generation: self.generation,
            endpoints: endpoints.into_boxed_slice(),
            weights: weights.into_boxed_slice(),
            services: services.into_boxed_slice(),
            state,
            policy: self.policy.clone(),
            panic,
        };
        tracing::debug!(balancer = %name, generation = self.generation, eligible = snap.endpoints.len(), "snapshot published");
        shared.snapshot.store(Arc::new(snap));
        // In this order: once the status no longer lists a removed endpoint (or lists
        // it out of rotation), no new pick can reach it.
        self.retire();
        shared.all.store(Arc::new(all));
        shared.published.notify_waiters();
    }

    /// Flags the endpoints removed before this publish as draining.
    fn retire(&mut self) {
        for st in self.retiring.drain(..) {
            st.set_flag(Flag::Draining, true);
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn probe_loop(
    state: Arc<EndpointState>,
    check: Arc<dyn HealthCheck>,
    cfg: CheckConfig,
    events: Arc<Events>,
    name: Arc<str>,
) {
    let mut interval = tokio::time::interval(cfg.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if state.is_draining() && !state.is_admin_drained() {
            return;
        }
        let ep = state.endpoint();
        let res = match tokio::time::timeout(cfg.timeout, check.check(&ep)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.0),
            Err(_) => Err(format!("timed out after {:?}", cfg.timeout)),
        };
        let ok = res.is_ok();
        if let Some(now_ok) = state.record_check(ok, res.err(), cfg.rise, cfg.fall) {
            if now_ok {
                tracing::info!(balancer = %name, endpoint = %ep.id(), "health check passing");
            } else {
                let why = state.last_check().and_then(|c| c.error).unwrap_or_default();
                tracing::warn!(balancer = %name, endpoint = %ep.id(), error = %why, "health check failing; endpoint unhealthy");
            }
            events.notify.notify_one();
        }
    }
}
