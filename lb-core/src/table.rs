//! The endpoint table, its snapshots, and the single writer task that owns them.
//!
//! The writer task is the only code that changes the table. It reads discovery
//! updates, operator commands and health events, applies them to the table (stable
//! [`EndpointId`] -> live state), and publishes an immutable [`Snapshot`] of the
//! eligible endpoints, with whatever the policy precomputes from them, through one
//! atomic pointer swap. Pickers load the current snapshot without a lock. The task
//! runs whether or not traffic flows, so an idle balancer is always current, and it
//! ends when the last [`Balancer`](crate::Balancer) handle is dropped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use crate::balance::{Balance, Candidates, WEIGHT_SCALE};
use crate::discover::{Discover, Update};
use crate::endpoint::{Endpoint, EndpointId};
use crate::error::{BoxError, UnknownEndpoint};
use crate::health::{CheckConfig, HealthCheck, OutlierConfig, SlowStart};
use crate::load::Release;
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
    pub(crate) all: ArcSwap<Vec<Arc<EndpointState>>>,
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

struct Entry<S> {
    state: Arc<EndpointState>,
    service: S,
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
        }
    }

    /// Runs until every balancer handle is gone.
    pub(crate) async fn run<D: Discover>(mut self, discover: D) {
        let mut discover = Box::pin(discover);
        let mut discovering = true;
        let name = self.config.name.clone();
        loop {
            if self.events.closed.load(Relaxed) {
                tracing::debug!(balancer = %name, "balancer dropped; writer stops");
                return;
            }
            let wake = self.next_wake();
            tokio::select! {
                biased;
                u = discover.next(), if discovering => match u {
                    Some(Ok(update)) => {
                        self.apply(update).await;
                        // Take whatever else is ready before publishing once.
                        while let Some(Some(Ok(u))) = futures_util::FutureExt::now_or_never(discover.next()) {
                            self.apply(u).await;
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
                _ = sleep_until(wake) => {}
            }
            self.tick();
            self.publish();
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

    async fn make_service(&mut self, ep: &Endpoint) -> Option<S> {
        let ready: Result<&mut M, BoxError> = self.make.ready().await.map_err(Into::into);
        let made: Result<S, BoxError> = match ready {
            Ok(m) => m.call(ep.clone()).await.map_err(Into::into),
            Err(e) => Err(e),
        };
        match made {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(balancer = %self.config.name, endpoint = %ep.id(), error = %e, "could not make a service for endpoint; skipped");
                None
            }
        }
    }

    async fn apply(&mut self, update: Update) {
        match update {
            Update::Insert(ep) => self.insert(ep).await,
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
                    self.insert(ep).await;
                }
            }
        }
        self.seen_first_set = true;
    }

    async fn insert(&mut self, ep: Endpoint) {
        if let Some(entry) = self.table.get_mut(ep.id()) {
            let old = entry.state.endpoint();
            if *old == ep {
                return;
            }
            let readdr = old.addr() != ep.addr();
            tracing::debug!(balancer = %self.config.name, endpoint = %ep.id(), weight = ep.weight(), "endpoint updated in place");
            entry.state.set_endpoint(ep.clone());
            if readdr {
                if let Some(s) = self.make_service(&ep).await {
                    if let Some(entry) = self.table.get_mut(ep.id()) {
                        entry.service = s;
                    }
                }
            }
            return;
        }
        let Some(service) = self.make_service(&ep).await else {
            return;
        };
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
        let ramp_from = (self.seen_first_set && self.config.slow_start.is_some()).then(Instant::now);
        let probe = self.config.health.clone().map(|(check, cfg)| {
            tokio::spawn(probe_loop(
                state.clone(),
                check,
                cfg,
                self.events.clone(),
                self.config.name.clone(),
            ))
        });
        self.table.insert(
            ep.id().clone(),
            Entry {
                state,
                service,
                eject_until: None,
                last_eject_end: None,
                ramp_from,
                was_out: false,
                probe,
            },
        );
    }

    fn remove(&mut self, id: &EndpointId) {
        if let Some(entry) = self.table.remove(id) {
            // Flagged draining only once a snapshot without it is out (see `publish`):
            // the snapshot pickers use until then still offers it, and flagging it now
            // would leave them nothing usable while a whole set is being replaced.
            self.retiring.push(entry.state.clone());
            tracing::info!(balancer = %self.config.name, endpoint = %id, in_flight = entry.state.in_flight(), "endpoint removed; draining");
            if entry.state.in_flight() > 0 {
                self.draining.push(entry.state.clone());
            }
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
        let _ = reply.send(res);
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
        for e in self.table.values() {
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
            services.push(e.service.clone());
        }
        // Skip the rebuild when nothing a picker sees has changed.
        let cur = shared.snapshot.load();
        let same = cur.panic == panic
            && cur.weights[..] == weights[..]
            && cur.endpoints.len() == endpoints.len()
            && cur.endpoints.iter().zip(&endpoints).all(|(a, b)| Arc::ptr_eq(a, b))
            && self.generation > 0;
        let mut all: Vec<Arc<EndpointState>> = self.table.values().map(|e| e.state.clone()).collect();
        all.extend(self.draining.iter().cloned());
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
