//! Turning [`EndpointSpec`]s into endpoints, re-resolving names as they change.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::{pending, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_util::stream::{FuturesUnordered, StreamExt};
use lb_core::discover::Update;
use lb_core::Endpoint;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

use crate::error::Error;
use crate::spec::{lookup, EndpointSpec, LookupFuture, NameKey, Target};

/// How often names are re-resolved by default.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);

/// The first retry delay after a failed lookup; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Resolves `specs` into endpoints and keeps them current.
///
/// The stream yields `Update::Reset` with the whole set once every name has been looked
/// up once (literal addresses need no lookup), then again each time the set changes.
/// Names are re-resolved every `dns_refresh`; each address a name resolves to is one
/// endpoint, with the id `"{id or host:port}/{ip:port}"`. A failed lookup is logged and
/// keeps that name's last good addresses (none, if it never resolved) and is retried
/// with a backoff from 0.5 s doubling up to 30 s. A malformed spec is yielded once as
/// an `Err` and left out.
///
/// The stream never ends. It does its work while it is polled (a balancer polls its
/// source all the time), so it needs no task of its own, but it must be polled inside
/// a Tokio runtime with the time and IO drivers enabled.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// use futures_util::StreamExt;
/// use lb_core::discover::Update;
/// use lb_discovery_static::{resolve_stream, EndpointSpec};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let specs = vec![
///     EndpointSpec::new("127.0.0.1:9001").with_weight(2),
///     EndpointSpec::new("localhost:9002"),
/// ];
/// let mut updates = resolve_stream(specs, Duration::from_secs(5));
/// let Some(Ok(Update::Reset(set))) = updates.next().await else { panic!("expected a Reset") };
/// assert_eq!(set[0].id().as_str(), "127.0.0.1:9001");
/// assert!(set[1..].iter().all(|ep| ep.id().as_str().starts_with("localhost:9002/")));
/// # }
/// ```
pub fn resolve_stream(specs: Vec<EndpointSpec>, dns_refresh: Duration) -> Updates {
    let (tx, rx) = mpsc::channel(4);
    let engine = Engine::new(dns_refresh, tx, Arc::new(lookup));
    Updates::new(rx, engine.run(specs, None))
}

/// A discovery stream from this crate: `Update::Reset`s of whole sets.
///
/// It is driven by its own polling (no spawned task); dropping it stops everything,
/// including a file watcher. It is `Send + Sync + 'static`, so it is a
/// [`Discover`](lb_core::discover::Discover) source.
pub struct Updates {
    /// The work behind the stream. The mutex is never locked (polling has `&mut`); it
    /// only makes `Updates` `Sync`.
    driver: Option<Mutex<Pin<Box<dyn Future<Output = ()> + Send>>>>,
    rx: mpsc::Receiver<Result<Update, Error>>,
}

// === impl Updates ===

impl Updates {
    pub(crate) fn new(
        rx: mpsc::Receiver<Result<Update, Error>>,
        driver: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        Self {
            driver: Some(Mutex::new(Box::pin(driver))),
            rx,
        }
    }
}

impl Stream for Updates {
    type Item = Result<Update, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(driver) = self.driver.as_mut() {
            let driver = driver.get_mut().unwrap_or_else(PoisonError::into_inner);
            if driver.as_mut().poll(cx).is_ready() {
                self.driver = None;
            }
        }
        self.rx.poll_recv(cx)
    }
}

impl fmt::Debug for Updates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Updates")
            .field("running", &self.driver.is_some())
            .finish_non_exhaustive()
    }
}

/// A name lookup; the system resolver, or a fake in tests.
pub(crate) type LookupFn = Arc<dyn Fn(&NameKey) -> LookupFuture + Send + Sync>;

type Lookup = Pin<Box<dyn Future<Output = (NameKey, io::Result<Vec<SocketAddr>>)> + Send>>;

/// The state of one name.
#[derive(Debug)]
struct NameState {
    /// The last good answer; `None` until a lookup succeeds.
    addrs: Option<Vec<SocketAddr>>,
    /// Whether a lookup has finished, well or not.
    attempted: bool,
    in_flight: bool,
    failures: u32,
    next_at: Instant,
}

/// Holds the current specs and their names' answers; emits a `Reset` when the set of
/// endpoints they make changes.
pub(crate) struct Engine {
    dns_refresh: Duration,
    lookup: LookupFn,
    specs: Vec<(EndpointSpec, Target)>,
    names: HashMap<NameKey, NameState>,
    lookups: FuturesUnordered<Lookup>,
    /// The last emitted set, sorted by id.
    last: Option<Vec<Endpoint>>,
    dirty: bool,
    tx: mpsc::Sender<Result<Update, Error>>,
}

// === impl Engine ===

impl Engine {
    pub(crate) fn new(dns_refresh: Duration, tx: mpsc::Sender<Result<Update, Error>>, lookup: LookupFn) -> Self {
        Self {
            dns_refresh: dns_refresh.max(Duration::from_millis(10)),
            lookup,
            specs: Vec::new(),
            names: HashMap::new(),
            lookups: FuturesUnordered::new(),
            last: None,
            dirty: false,
            tx,
        }
    }

    /// Runs until the receiving side is gone. `more` brings new spec sets (from a
    /// watched file); the current value is taken to be `specs` already.
    pub(crate) async fn run(
        mut self,
        specs: Vec<EndpointSpec>,
        mut more: Option<watch::Receiver<Arc<Vec<EndpointSpec>>>>,
    ) {
        if !self.set_specs(&specs).await {
            return;
        }
        loop {
            self.start_due_lookups();
            if self.dirty && !self.emit().await {
                return;
            }
            let next_due = self.names.values().filter(|n| !n.in_flight).map(|n| n.next_at).min();
            tokio::select! {
                changed = next_specs(&mut more) => match changed {
                    Some(specs) => {
                        if !self.set_specs(&specs).await {
                            return;
                        }
                    }
                    None => more = None,
                },
                (name, result) = next_lookup(&mut self.lookups) => self.on_lookup(name, result),
                () = sleep_until_opt(next_due) => {}
                () = self.tx.closed() => return,
            }
        }
    }

    /// Replaces the specs; reports malformed ones. `false` if the receiver is gone.
    async fn set_specs(&mut self, specs: &[EndpointSpec]) -> bool {
        let mut parsed = Vec::with_capacity(specs.len());
        let mut errors = Vec::new();
        for spec in specs {
            match spec.target() {
                Ok(target) => parsed.push((spec.clone(), target)),
                Err(e) => errors.push(e),
            }
        }
        let wanted: HashSet<&NameKey> = parsed
            .iter()
            .filter_map(|(_, t)| match t {
                Target::Name(name) => Some(name),
                Target::Addr(_) => None,
            })
            .collect();
        self.names.retain(|name, _| wanted.contains(name));
        let now = Instant::now();
        for name in wanted {
            if !self.names.contains_key(name) {
                tracing::debug!(%name, "resolving a new name");
                self.names.insert(
                    name.clone(),
                    NameState {
                        addrs: None,
                        attempted: false,
                        in_flight: false,
                        failures: 0,
                        next_at: now,
                    },
                );
            }
        }
        self.specs = parsed;
        self.dirty = true;
        for e in errors {
            tracing::warn!(error = %e, "ignoring a malformed endpoint");
            if self.tx.send(Err(e)).await.is_err() {
                return false;
            }
        }
        true
    }

    fn start_due_lookups(&mut self) {
        let now = Instant::now();
        for (name, state) in &mut self.names {
            if !state.in_flight && state.next_at <= now {
                state.in_flight = true;
                let name = name.clone();
                let fut = (self.lookup)(&name);
                self.lookups.push(Box::pin(async move { (name, fut.await) }));
            }
        }
    }

    fn on_lookup(&mut self, name: NameKey, result: io::Result<Vec<SocketAddr>>) {
        // A name dropped from the specs while its lookup ran.
        let Some(state) = self.names.get_mut(&name) else {
            return;
        };
        state.in_flight = false;
        if !state.attempted {
            state.attempted = true;
            self.dirty = true;
        }
        match result {
            Ok(addrs) => {
                state.failures = 0;
                state.next_at = Instant::now() + self.dns_refresh;
                if state.addrs.as_ref() != Some(&addrs) {
                    tracing::debug!(%name, ?addrs, "name resolved");
                    state.addrs = Some(addrs);
                    self.dirty = true;
                }
            }
            Err(error) => {
                state.failures += 1;
                let backoff = MIN_BACKOFF
                    .saturating_mul(1 << (state.failures - 1).min(16))
                    .min(MAX_BACKOFF);
                state.next_at = Instant::now() + backoff;
                let kept = state.addrs.as_ref().map_or(0, Vec::len);
                tracing::warn!(
                    %name,
                    %error,
                    failures = state.failures,
                    retry_in = ?backoff,
                    kept_addresses = kept,
                    "cannot resolve an endpoint name; keeping its last good addresses"
                );
            }
        }
    }

    /// Emits the current set if every name has had its first answer and the set
    /// differs from the last one emitted. `false` if the receiver is gone.
    async fn emit(&mut self) -> bool {
        if self.names.values().any(|n| !n.attempted) {
            return true;
        }
        self.dirty = false;
        let mut set = Vec::new();
        let mut seen = HashSet::new();
        let mut duplicates = Vec::new();
        for (spec, target) in &self.specs {
            let endpoints = match target {
                Target::Addr(addr) => vec![spec.endpoint(*addr, None)],
                Target::Name(name) => self.names[name]
                    .addrs
                    .iter()
                    .flatten()
                    .map(|addr| spec.endpoint(*addr, Some(name)))
                    .collect(),
            };
            for ep in endpoints {
                if seen.insert(ep.id().clone()) {
                    set.push(ep);
                } else {
                    duplicates.push(ep.id().clone());
                }
            }
        }
        let mut sorted = set.clone();
        sorted.sort_by(|a, b| a.id().cmp(b.id()));
        if self.last.as_ref() == Some(&sorted) {
            return true;
        }
        if !duplicates.is_empty() {
            tracing::warn!(?duplicates, "endpoints with the same id; keeping the first of each");
        }
        tracing::info!(endpoints = set.len(), "endpoint set changed");
        self.last = Some(sorted);
        self.tx.send(Ok(Update::Reset(set))).await.is_ok()
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("dns_refresh", &self.dns_refresh)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

async fn next_specs(more: &mut Option<watch::Receiver<Arc<Vec<EndpointSpec>>>>) -> Option<Arc<Vec<EndpointSpec>>> {
    match more {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(rx.borrow_and_update().clone()),
            Err(_) => None,
        },
        None => pending().await,
    }
}

async fn next_lookup(lookups: &mut FuturesUnordered<Lookup>) -> (NameKey, io::Result<Vec<SocketAddr>>) {
    match lookups.next().await {
        Some(done) => done,
        None => pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver whose answers the test sets: `None` fails the lookup.
    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<HashMap<String, Option<Vec<SocketAddr>>>>>);

    impl Fake {
        fn set(&self, host: &str, addrs: Option<&[&str]>) {
            let addrs = addrs.map(|a| a.iter().map(|s| s.parse().unwrap()).collect());
            self.0.lock().unwrap().insert(host.to_string(), addrs);
        }

        fn stream(&self, specs: Vec<EndpointSpec>, refresh: Duration) -> Updates {
            let (tx, rx) = mpsc::channel(4);
            let fake = self.clone();
            let lookup: LookupFn = Arc::new(move |name: &NameKey| -> LookupFuture {
                let answer = fake.0.lock().unwrap().get(&name.host).cloned().flatten();
                Box::pin(async move { answer.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "fake failure")) })
            });
            Updates::new(rx, Engine::new(refresh, tx, lookup).run(specs, None))
        }
    }

    fn ids(update: Option<Result<Update, Error>>) -> Vec<String> {
        match update {
            Some(Ok(Update::Reset(set))) => set.iter().map(|ep| ep.id().to_string()).collect(),
            other => panic!("expected a Reset, got {other:?}"),
        }
    }

    async fn quiet(updates: &mut Updates, d: Duration) {
        if let Ok(u) = tokio::time::timeout(d, updates.next()).await {
            panic!("expected nothing, got {u:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_lookup_keeps_last_good_and_retries() {
        let fake = Fake::default();
        fake.set("web", Some(&["10.0.0.1:80", "10.0.0.2:80"]));
        let specs = vec![EndpointSpec::new("10.0.0.9:80"), EndpointSpec::new("web:80")];
        let mut updates = fake.stream(specs, Duration::from_secs(5));
        assert_eq!(
            ids(updates.next().await),
            ["10.0.0.9:80", "web:80/10.0.0.1:80", "web:80/10.0.0.2:80"]
        );

        // The resolver fails: nothing is emitted, the last addresses stay.
        fake.set("web", None);
        quiet(&mut updates, Duration::from_secs(20)).await;

        // It recovers with a new answer: the retry (backoff at most 4 s by now) sees it.
        fake.set("web", Some(&["10.0.0.2:80", "10.0.0.3:80"]));
        let next = tokio::time::timeout(Duration::from_secs(10), updates.next()).await;
        assert_eq!(
            ids(next.expect("a retry within the backoff")),
            ["10.0.0.9:80", "web:80/10.0.0.2:80", "web:80/10.0.0.3:80"]
        );

        // An unchanged answer emits nothing.
        quiet(&mut updates, Duration::from_secs(30)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_that_never_resolves_does_not_block_the_rest() {
        let fake = Fake::default();
        let specs = vec![EndpointSpec::new("10.0.0.9:80"), EndpointSpec::new("gone:80")];
        let mut updates = fake.stream(specs, Duration::from_secs(5));
        assert_eq!(ids(updates.next().await), ["10.0.0.9:80"]);
        fake.set("gone", Some(&["10.0.0.1:80"]));
        assert_eq!(ids(updates.next().await), ["10.0.0.9:80", "gone:80/10.0.0.1:80"]);
    }

    #[tokio::test(start_paused = true)]
    async fn malformed_specs_are_reported_and_skipped() {
        let fake = Fake::default();
        let specs = vec![EndpointSpec::new("nope"), EndpointSpec::new("10.0.0.9:80")];
        let mut updates = fake.stream(specs, Duration::from_secs(5));
        assert!(matches!(updates.next().await, Some(Err(Error::InvalidSpec { .. }))));
        assert_eq!(ids(updates.next().await), ["10.0.0.9:80"]);
        quiet(&mut updates, Duration::from_secs(60)).await;
    }
}
