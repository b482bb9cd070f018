//! [`Balancer`], the tower service, its [`Builder`] and [`BalanceLayer`].

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use pin_project_lite::pin_project;
use tokio::sync::{mpsc, oneshot};
use tower_layer::Layer;
use tower_service::Service;

use crate::balance::{Balance, PickContext, WEIGHT_SCALE};
use crate::discover::Discover;
use crate::endpoint::{Endpoint, EndpointId};
use crate::error::{BoxError, Elapsed, EndpointError, NoEndpoints, UnknownEndpoint};
use crate::health::{CheckConfig, HealthCheck, OutlierConfig, SlowStart};
use crate::load::{BodyCompletion, CompleteOnResponse, InFlight, Release, TrackCompletion};
use crate::state::{Health, DEFAULT_FAILURE_PENALTY};
use crate::table::{empty_snapshot, Command, Config, Events, Shared, Writer};

/// Extracts a hash key from a request, for consistent hashing.
pub trait RequestKey<Req>: Clone {
    /// The request's key, if it has one.
    fn key(&self, req: &Req) -> Option<u64>;

    /// An endpoint this request should not go to if another can take it: the one a
    /// previous attempt failed on, for a retry (HAProxy's `redispatch`).
    fn avoid<'r>(&self, req: &'r Req) -> Option<&'r EndpointId> {
        let _ = req;
        None
    }
}

/// Asks, through `http::Request` extensions read by [`ExtensionKey`], that a retry go
/// to another endpoint than this one (when another is eligible).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Avoid(pub EndpointId);

/// No key: consistent hashing falls back to weighted random.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKey;

impl<Req> RequestKey<Req> for NoKey {
    #[inline]
    fn key(&self, _: &Req) -> Option<u64> {
        None
    }
}

/// A request's hash key carried in `http::Request` extensions; see [`ExtensionKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HashKey(pub u64);

/// Reads a [`HashKey`] (and an [`Avoid`]) from an `http::Request`'s extensions, where
/// a router put them.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExtensionKey;

impl<B> RequestKey<http::Request<B>> for ExtensionKey {
    #[inline]
    fn key(&self, req: &http::Request<B>) -> Option<u64> {
        req.extensions().get::<HashKey>().map(|k| k.0)
    }

    #[inline]
    fn avoid<'r>(&self, req: &'r http::Request<B>) -> Option<&'r EndpointId> {
        req.avoid_hint()
    }
}

/// A request that can name an endpoint to avoid, for a retry: what [`KeyFn`] reads
/// besides the key.
///
/// An `http::Request` names it with an [`Avoid`] in its extensions. Requests of other
/// types name none unless their type says otherwise: a request type of your own
/// implements it (`impl AvoidHint for MyRequest {}` for none); integers, strings,
/// byte vectors and `()` name none.
pub trait AvoidHint {
    /// The endpoint this request should not go to if another can take it.
    fn avoid_hint(&self) -> Option<&EndpointId> {
        None
    }
}

impl<B> AvoidHint for http::Request<B> {
    #[inline]
    fn avoid_hint(&self) -> Option<&EndpointId> {
        self.extensions().get::<Avoid>().map(|a| &a.0)
    }
}

macro_rules! avoids_nothing {
    ($($t:ty),* $(,)?) => { $(impl AvoidHint for $t {})* };
}

avoids_nothing!(
    (),
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    String,
    &str,
    Vec<u8>,
);

/// A key computed by a closure. The endpoint to avoid (a retry's [`Avoid`]) comes
/// from the request ([`AvoidHint`]), as with [`ExtensionKey`].
#[derive(Clone, Copy)]
pub struct KeyFn<F>(pub F);

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn")
    }
}

impl<Req: AvoidHint, F: Fn(&Req) -> Option<u64> + Clone> RequestKey<Req> for KeyFn<F> {
    #[inline]
    fn key(&self, req: &Req) -> Option<u64> {
        (self.0)(req)
    }

    #[inline]
    fn avoid<'r>(&self, req: &'r Req) -> Option<&'r EndpointId> {
        req.avoid_hint()
    }
}

/// A load-balancing [`Service`]: picks an endpoint per request and calls it.
///
/// Cheap to clone (one `Arc`); clones share one endpoint table, updated by a background
/// writer task that the builder spawns. No `Buffer` is needed and a pick takes no lock
/// and allocates nothing: it loads the current snapshot, asks the policy, takes an
/// [`InFlight`] guard on the endpoint and calls a clone of the endpoint's service.
///
/// `poll_ready` is always ready: when no endpoint is eligible the call fails at once
/// with [`NoEndpoints`], or after the bounded wait set by [`Builder::wait`].
///
/// A call's outcome is recorded against the endpoint it went to: a response is a
/// success, an error (or a response over the per-attempt [`Builder::timeout`]) a
/// failure, returned as an [`EndpointError`](crate::error::EndpointError) naming the
/// endpoint. A call whose future is dropped before it completes (a timeout or a
/// `select!` around the balancer) is a cancellation and counts as neither.
///
/// # Examples
///
/// ```
/// use std::convert::Infallible;
/// use lb_core::{balance::RoundRobin, discover, Balancer, Endpoint};
/// use tower::{service_fn, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let endpoints = ["127.0.0.1:9001", "127.0.0.1:9002"].map(|a| Endpoint::new(a.parse().unwrap()));
/// // The connector: one service per endpoint. Here, one that answers with its address.
/// let connect = service_fn(|ep: Endpoint| async move {
///     let addr = ep.addr();
///     Ok::<_, Infallible>(service_fn(move |_req: ()| async move { Ok::<_, Infallible>(addr) }))
/// });
/// let lb = Balancer::builder(RoundRobin::new()).spawn(discover::fixed(endpoints), connect);
/// lb.ready_endpoints(1).await;
/// let a = lb.clone().oneshot(()).await.unwrap();
/// let b = lb.clone().oneshot(()).await.unwrap();
/// assert_ne!(a, b);
/// # }
/// ```
pub struct Balancer<P: Balance, S, C = CompleteOnResponse, K = NoKey> {
    shared: Arc<Shared<P, S>>,
    completion: C,
    key: K,
}

impl<P: Balance, S, C: Clone, K: Clone> Clone for Balancer<P, S, C, K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            completion: self.completion.clone(),
            key: self.key.clone(),
        }
    }
}

impl<P: Balance, S, C, K> fmt::Debug for Balancer<P, S, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("name", &self.shared.config.name)
            .field("policy", &self.shared.policy.name())
            .finish()
    }
}

/// Configures and spawns a [`Balancer`].
pub struct Builder<P, C = CompleteOnResponse, K = NoKey> {
    policy: P,
    config: Config,
    completion: C,
    key: K,
}

impl<P: Balance, C, K> fmt::Debug for Builder<P, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("policy", &self.policy.name())
            .field("config", &self.config)
            .finish()
    }
}

impl<P: Balance> Balancer<P, (), CompleteOnResponse, NoKey> {
    /// Starts configuring a balancer that uses `policy`.
    pub fn builder(policy: P) -> Builder<P> {
        Builder {
            policy,
            config: Config {
                wait: None,
                max_in_flight: None,
                panic_threshold: 0.0,
                outlier: Some(OutlierConfig::default()),
                timeout: None,
                failure_penalty: DEFAULT_FAILURE_PENALTY,
                slow_start: None,
                health: None,
                default_rtt: Duration::from_millis(10),
                decay_ns: 10e9,
                track_latency: false,
                name: Arc::from("default"),
                admin_drained: Default::default(),
                connect_timeout: Duration::from_secs(10),
                connect_backoff: (Duration::from_millis(250), Duration::from_secs(30)),
            },
            completion: CompleteOnResponse,
            key: NoKey,
        }
    }
}

impl<P: Balance, C, K> Builder<P, C, K> {
    /// A name for logs and status. Default `"default"`.
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.config.name = Arc::from(name.as_ref());
        self
    }

    /// When no endpoint is eligible, wait up to `wait` for one before failing.
    /// Default: fail at once.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.config.wait = Some(wait);
        self
    }

    /// Endpoints to treat as drained by an operator from the start: a proxy that replaces
    /// a balancer (a changed config) carries its operator's drains over with this.
    pub fn drained(mut self, ids: impl IntoIterator<Item = EndpointId>) -> Self {
        self.config.admin_drained.extend(ids);
        self
    }

    /// At most `max` requests in flight per endpoint; a full endpoint is passed over,
    /// and when all are full the call fails with an overloaded [`NoEndpoints`].
    pub fn max_in_flight(mut self, max: u32) -> Self {
        self.config.max_in_flight = Some(max.max(1));
        self
    }

    /// When fewer than `threshold` (0.0 to 1.0) of the endpoints are eligible, ignore
    /// health and balance over all of them (Envoy's panic mode). Default 0: off.
    pub fn panic_threshold(mut self, threshold: f64) -> Self {
        self.config.panic_threshold = threshold.clamp(0.0, 1.0);
        self
    }

    /// Sets passive outlier detection, or turns it off with `None`.
    ///
    /// On by default, with [`OutlierConfig::default()`]: an endpoint that fails 5
    /// requests in a row (errors, timeouts, 5xx with [`http`](Self::http)) is ejected for
    /// a while. A `consecutive_failures` of 0 also turns it off.
    ///
    /// ```
    /// use lb_core::{balance::RoundRobin, health::OutlierConfig, Balancer};
    ///
    /// // Stricter than the default.
    /// let strict = Balancer::builder(RoundRobin::new())
    ///     .outlier_detection(OutlierConfig { consecutive_failures: 3, ..OutlierConfig::default() });
    /// // Off: failures never eject an endpoint.
    /// let off = Balancer::builder(RoundRobin::new()).outlier_detection(None);
    /// # let _ = (strict, off);
    /// ```
    pub fn outlier_detection(mut self, outlier: impl Into<Option<OutlierConfig>>) -> Self {
        self.config.outlier = outlier.into().filter(|o| o.consecutive_failures > 0);
        self
    }

    /// A time limit on each attempt: from the moment an endpoint is picked until its
    /// response arrives (the endpoint service's `poll_ready` and call). Default: none.
    ///
    /// An attempt over the limit fails with an [`EndpointError`] that names the
    /// endpoint (so a retry can [`Avoid`] it) and whose source is an
    /// [`Elapsed`]; [`is_timeout`](crate::error::is_timeout) detects it. It counts as a
    /// failure of that endpoint (outlier detection, the latency estimate), unlike a
    /// timeout layered *around* the balancer, which only cancels the request and blames
    /// no one (see [`load`](crate::load)). The time before an endpoint is picked (the
    /// [`wait`](Self::wait) for one) is not included, and with [`http`](Self::http)
    /// neither is the response body, which may stream for as long as it needs: the
    /// limit ends with the response head. The clock is tokio's, so a test can pause it.
    /// The timer costs one allocation per request; without a limit there is none.
    ///
    /// # Panics
    ///
    /// A response future polled outside a tokio runtime (with timers enabled) panics
    /// when a limit is set.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = Some(timeout);
        self
    }

    /// The least latency sample a failed request records when requests are timed (peak
    /// EWMA, or [`track_latency`](Self::track_latency)). Default 1 s.
    ///
    /// A failure is charged as a response at least this slow, however fast it came, so
    /// that an endpoint that fails fast does not look fast to a latency-aware policy:
    /// its estimate jumps to the penalty and decays back only once it stops failing.
    /// Set it well above the endpoints' normal latency; the per-attempt
    /// [`timeout`](Self::timeout), if there is one, is a natural choice (a fast failure
    /// is then charged like a request that timed out).
    pub fn failure_penalty(mut self, penalty: Duration) -> Self {
        self.config.failure_penalty = penalty;
        self
    }

    /// Turns on slow start.
    pub fn slow_start(mut self, slow_start: SlowStart) -> Self {
        self.config.slow_start = Some(slow_start);
        self
    }

    /// Turns on active health checks.
    pub fn health_check(mut self, check: impl HealthCheck, config: CheckConfig) -> Self {
        self.config.health = Some((Arc::new(check), config));
        self
    }

    /// The latency a new endpoint is assumed to have until measured (peak EWMA).
    /// Default 10 ms.
    pub fn default_rtt(mut self, rtt: Duration) -> Self {
        self.config.default_rtt = rtt;
        self
    }

    /// A time limit on each attempt of the connector (`make` in [`spawn`](Self::spawn))
    /// at making an endpoint's service. Default 10 s. An attempt over it fails like a
    /// connector error: retried after a backoff (see
    /// [`connect_backoff`](Self::connect_backoff)).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// The backoff between failed attempts of the connector for one endpoint: from
    /// `min`, doubling up to `max`, with jitter (a [`Backoff`](crate::discover::Backoff)).
    /// Default 250 ms to 30 s.
    pub fn connect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.connect_backoff = (min, max);
        self
    }

    /// Times every request, so [`EndpointStatus::ewma_latency`] is kept even when the
    /// policy does not need it (two clock reads per request). Policies that need
    /// latency (peak EWMA) turn it on themselves.
    pub fn track_latency(mut self, on: bool) -> Self {
        self.config.track_latency = on;
        self
    }

    /// Sets how long the guard lives; see [`TrackCompletion`].
    pub fn completion<C2>(self, completion: C2) -> Builder<P, C2, K> {
        Builder {
            policy: self.policy,
            config: self.config,
            completion,
            key: self.key,
        }
    }

    /// Tracks `http::Response` bodies: the request counts as in flight until its body
    /// ends, and a 5xx counts as a failure. Also reads hash keys from request
    /// extensions ([`HashKey`]).
    pub fn http(self) -> Builder<P, BodyCompletion, ExtensionKey> {
        self.completion(BodyCompletion).key(ExtensionKey)
    }

    /// Sets how a request's hash key is found; see [`RequestKey`].
    pub fn key<K2>(self, key: K2) -> Builder<P, C, K2> {
        Builder {
            policy: self.policy,
            config: self.config,
            completion: self.completion,
            key,
        }
    }

    /// Spawns the writer task on the current tokio runtime and returns the balancer.
    ///
    /// `make` turns each endpoint into the service that requests to it go through (a
    /// `MakeService`-shaped factory; see [`connect_fn`] for a plain closure). Its futures
    /// run concurrently, off the writer's loop, each within
    /// [`connect_timeout`](Self::connect_timeout); a failed one is retried with a
    /// [`connect_backoff`](Self::connect_backoff). An endpoint takes no request until its
    /// service is made; [`EndpointStatus::connection`] tells where that stands.
    ///
    /// Before returning, `spawn` applies what `discover` has ready at once (polled
    /// once, without waiting) and makes the services `make` can make at once (a
    /// [`connect_fn`], a connector whose future is ready when called): a call right
    /// after `spawn` goes to those endpoints. Endpoints a source or a connector only has
    /// later arrive through the writer task; a call that should wait for them sets
    /// [`wait`](Self::wait) (or awaits [`Balancer::ready_endpoints`]).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn spawn<D, M, S>(self, discover: D, make: M) -> Balancer<P, S, C, K>
    where
        D: Discover,
        M: Service<Endpoint, Response = S> + Send + 'static,
        M::Error: Into<BoxError>,
        M::Future: Send,
        S: Clone + Send + Sync + 'static,
    {
        let policy = Arc::new(self.policy);
        let events = Arc::new(Events::default());
        let mut config = self.config;
        *events
            .admin_drained
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::mem::take(&mut config.admin_drained);
        if let Some(d) = policy.latency_decay() {
            config.decay_ns = d.as_nanos().max(1) as f64;
        }
        let config = Arc::new(config);
        let (tx, rx) = mpsc::unbounded_channel();
        let timed = config.track_latency || policy.needs_latency();
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(empty_snapshot(&policy)),
            all: ArcSwap::from_pointee(Vec::new()),
            policy: policy.clone(),
            config: config.clone(),
            events: events.clone(),
            published: tokio::sync::Notify::new(),
            commands: tx,
            timed,
        });
        let mut writer = Writer::new(Arc::downgrade(&shared), policy, events, config, make, rx);
        let mut discover = Box::pin(discover);
        let discovering = writer.prime(discover.as_mut());
        tokio::spawn(writer.run(discover, discovering));
        Balancer {
            shared,
            completion: self.completion,
            key: self.key,
        }
    }
}

/// A connector from a plain closure: `connect_fn(|ep| make_service_for(ep))`.
pub fn connect_fn<F, S>(f: F) -> ConnectFn<F>
where
    F: FnMut(&Endpoint) -> S,
{
    ConnectFn(f)
}

/// See [`connect_fn`].
#[derive(Clone, Copy)]
pub struct ConnectFn<F>(F);

impl<F> fmt::Debug for ConnectFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnectFn")
    }
}

impl<F, S> Service<Endpoint> for ConnectFn<F>
where
    F: FnMut(&Endpoint) -> S,
{
    type Response = S;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<S, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ep: Endpoint) -> Self::Future {
        std::future::ready(Ok((self.0)(&ep)))
    }
}

/// One endpoint as the status page shows it.
#[derive(Clone, Debug)]
pub struct EndpointStatus {
    /// Its id.
    pub id: EndpointId,
    /// Its address.
    pub addr: std::net::SocketAddr,
    /// The configured weight.
    pub weight: u32,
    /// The effective weight now (slow start applied), or `None` if out of rotation.
    pub effective_weight: Option<f64>,
    /// Its state.
    pub health: Health,
    /// Requests in flight.
    pub in_flight: u32,
    /// Requests started.
    pub requests: u64,
    /// Requests failed.
    pub failures: u64,
    /// Times ejected by outlier detection.
    pub times_ejected: u32,
    /// The peak-EWMA latency (only measured when latency is tracked): successes' times,
    /// failures' penalised ones ([`Builder::failure_penalty`]); cancelled requests
    /// record nothing. Until a first sample ([`latency_measured`](Self::latency_measured)
    /// false) it is the assumed [`Builder::default_rtt`], not a measurement.
    pub ewma_latency: Duration,
    /// Whether [`ewma_latency`](Self::ewma_latency) comes from at least one measured
    /// request.
    pub latency_measured: bool,
    /// Whether the endpoint's service is made (an endpoint takes requests only then).
    pub connection: Connection,
    /// The last active health check.
    pub last_check: Option<crate::state::CheckRecord>,
    /// Metadata from discovery.
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// Where making an endpoint's service (the connector given to [`Builder::spawn`])
/// stands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Connection {
    /// The service is made: the endpoint can take requests.
    Ready,
    /// Being made, or waiting for the connector to be ready; not pickable yet.
    Connecting {
        /// Attempts so far, this one included (0: not started yet).
        attempts: u32,
    },
    /// The last attempt failed (an error, or over [`Builder::connect_timeout`]); another
    /// follows after a backoff. Not pickable.
    Failed {
        /// Attempts that failed in a row.
        attempts: u32,
        /// The last error, with its sources.
        error: Arc<str>,
    },
}

impl Connection {
    /// Whether the service is made.
    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Ready)
    }
}

/// A balancer as the status page shows it.
#[derive(Clone, Debug)]
pub struct BalancerStatus {
    /// The balancer's name.
    pub name: String,
    /// The policy's name.
    pub policy: &'static str,
    /// Whether panic mode is on (health ignored).
    pub panic: bool,
    /// How many endpoints are in rotation.
    pub eligible: usize,
    /// The snapshot generation: how many times the eligible set has been published.
    pub generation: u64,
    /// Every endpoint, draining ones included, ordered by id.
    pub endpoints: Vec<EndpointStatus>,
}

impl<P: Balance, S, C, K> Balancer<P, S, C, K> {
    /// The balancer's name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.shared.policy
    }

    /// How many endpoints are in rotation now.
    pub fn eligible(&self) -> usize {
        self.shared.snapshot.load().endpoints.len()
    }

    /// Waits until at least `n` endpoints are in rotation.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    pub async fn ready_endpoints(&self, n: usize) {
        loop {
            let notified = self.shared.published.notified();
            if self.eligible() >= n {
                return;
            }
            notified.await;
        }
    }

    /// A point-in-time view of every endpoint (allocates; not for the request path).
    pub fn status(&self) -> BalancerStatus {
        let snap = self.shared.snapshot.load();
        let all = self.shared.all.load();
        // Each state's place in the snapshot, by address: one pass, not a scan per endpoint.
        let index: std::collections::HashMap<*const crate::state::EndpointState, usize> = snap
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, s)| (Arc::as_ptr(s), i))
            .collect();
        let mut endpoints: Vec<EndpointStatus> = all
            .iter()
            .map(|listed| {
                let st = &listed.state;
                let ep = st.endpoint();
                let effective_weight = index
                    .get(&Arc::as_ptr(st))
                    .map(|&i| snap.weights[i] as f64 / WEIGHT_SCALE as f64);
                EndpointStatus {
                    id: ep.id().clone(),
                    addr: ep.addr(),
                    weight: ep.weight(),
                    effective_weight,
                    health: st.health(),
                    in_flight: st.in_flight(),
                    requests: st.requests(),
                    failures: st.failures(),
                    times_ejected: st.times_ejected(),
                    ewma_latency: st.ewma_latency(),
                    latency_measured: st.latency_measured(),
                    connection: listed.connection.clone(),
                    last_check: st.last_check(),
                    metadata: ep.metadata().clone(),
                }
            })
            .collect();
        endpoints.sort_by(|a, b| a.id.cmp(&b.id));
        BalancerStatus {
            name: self.shared.config.name.to_string(),
            policy: self.shared.policy.name(),
            panic: snap.panic,
            eligible: snap.endpoints.len(),
            generation: snap.generation,
            endpoints,
        }
    }

    /// Drains an endpoint by operator action: no new requests, in-flight ones finish.
    /// It stays drained until [`enable`](Self::enable)d, whatever discovery says. Returns
    /// once the snapshot without the endpoint is published.
    ///
    /// # Errors
    ///
    /// [`UnknownEndpoint`] if the balancer has no endpoint with that id.
    pub async fn drain(&self, id: impl Into<EndpointId>) -> Result<(), UnknownEndpoint> {
        self.admin(Command::Drain, id.into()).await
    }

    /// The ids an operator drained (with [`drain`](Self::drain) or
    /// [`Builder::drained`]) and has not enabled since, whether or not discovery has them
    /// now.
    pub fn drained_ids(&self) -> Vec<EndpointId> {
        self.shared
            .events
            .admin_drained
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Undoes [`drain`](Self::drain).
    ///
    /// # Errors
    ///
    /// [`UnknownEndpoint`] if the balancer has no endpoint with that id.
    pub async fn enable(&self, id: impl Into<EndpointId>) -> Result<(), UnknownEndpoint> {
        self.admin(Command::Enable, id.into()).await
    }

    async fn admin(
        &self,
        f: impl FnOnce(EndpointId, oneshot::Sender<Result<(), UnknownEndpoint>>) -> Command,
        id: EndpointId,
    ) -> Result<(), UnknownEndpoint> {
        let (tx, rx) = oneshot::channel();
        let missing = UnknownEndpoint(id.to_string());
        if self.shared.commands.send(f(id, tx)).is_err() {
            return Err(missing);
        }
        // The writer answers once the snapshot that reflects the command is published:
        // when this returns, no new pick reaches a drained endpoint.
        rx.await.unwrap_or(Err(missing))
    }
}

impl<P: Balance, S: Clone + Send + Sync + 'static, C, K> Balancer<P, S, C, K> {
    /// Picks an endpoint and takes its guard, without calling it. `None` if no
    /// endpoint is eligible. The building block of [`call`](Service::call), for
    /// callers that forward requests themselves (a TCP proxy). Such a caller reports
    /// how the request went with [`InFlight::succeed`] or [`InFlight::fail`] before
    /// dropping the guard: a guard dropped without an outcome is a cancellation, and
    /// counts neither way. The per-attempt [`Builder::timeout`] does not apply.
    pub fn pick(&self, key: Option<u64>) -> Option<Picked<S>> {
        self.shared.pick(key, None).ok()
    }

    /// [`pick`](Self::pick), but not `avoid` if another endpoint can take the request:
    /// for a retry after `avoid` failed.
    pub fn pick_with(&self, key: Option<u64>, avoid: Option<&EndpointId>) -> Option<Picked<S>> {
        self.shared.pick(key, avoid).ok()
    }
}

/// An endpoint picked for one request: its service and the guard.
#[derive(Debug)]
pub struct Picked<S> {
    /// A clone of the endpoint's service.
    pub service: S,
    /// The guard: set its outcome ([`InFlight::succeed`], [`InFlight::fail`]) and drop
    /// it when the request is over. [`InFlight::endpoint`] tells which endpoint it is.
    pub guard: InFlight,
}

impl<P: Balance, S: Clone + Send + Sync + 'static> Shared<P, S> {
    #[inline]
    fn pick(&self, key: Option<u64>, avoid: Option<&EndpointId>) -> Result<Picked<S>, bool> {
        // Timed requests read the clock once here: the pick (peak EWMA) and the
        // latency sample share the reading.
        let start = self.timed.then(tokio::time::Instant::now);
        let cx = PickContext {
            key,
            now: start.map_or(0, crate::state::ns_at),
        };
        // A guard, not a clone: the snapshot's reference count is shared by every
        // thread, and only policies that track releases need to keep the snapshot.
        let mut snap = self.snapshot.load();
        // A snapshot can go stale while a picker looks at it: if every endpoint in it
        // went out meanwhile (a whole set replaced, or this thread preempted across
        // several updates), a newer snapshot has the endpoints that replaced them.
        let mut reloads = 0;
        let mut full = 0;
        let i = loop {
            match self.find(&snap, &cx, avoid) {
                Ok(i) => {
                    let st = &snap.endpoints[i];
                    match self.config.max_in_flight {
                        None => st.acquire(),
                        // With a limit, check and count in one step: another thread
                        // may have taken the last place since `find` looked.
                        Some(max) => {
                            if !st.try_acquire(max) {
                                full += 1;
                                if full == 4 {
                                    return Err(true);
                                }
                                continue;
                            }
                        }
                    }
                    break i;
                }
                Err(overloaded) => {
                    let current = self.snapshot.load();
                    if reloads == 2 || Arc::ptr_eq(&current, &snap) {
                        return Err(overloaded);
                    }
                    snap = current;
                    reloads += 1;
                }
            }
        };
        let set = snap.candidates();
        snap.policy.on_acquire(&snap.state, &set, i);
        let service = snap.services[i].clone();
        let state = snap.endpoints[i].clone();
        let tracker = if snap.policy.tracks_release() {
            let full: Arc<crate::table::Snapshot<P, S>> = arc_swap::Guard::into_inner(snap);
            let rel: Arc<dyn Release> = full;
            Some((rel, i as u32))
        } else {
            None
        };
        Ok(Picked {
            service,
            guard: InFlight::new(state, tracker, start),
        })
    }

    /// A usable endpoint with room in `snap`, or whether some were full.
    #[inline]
    fn find(
        &self,
        snap: &crate::table::Snapshot<P, S>,
        cx: &PickContext,
        avoid: Option<&EndpointId>,
    ) -> Result<usize, bool> {
        let set = snap.candidates();
        let n = set.len();
        let max = self.config.max_in_flight;
        // An endpoint to avoid is passed over only when there is another.
        let avoid = avoid.filter(|_| n > 1);
        let fits = |i: usize| max.map_or(true, |m| set.endpoint(i).in_flight() < m);
        let allowed = |i: usize| avoid.map_or(true, |a| set.endpoint(i).id() != a);
        let mut overloaded = false;
        for _ in 0..3 {
            match snap.policy.pick(&snap.state, &set, cx) {
                Some(i) if i >= n => {
                    debug_assert!(
                        false,
                        "policy {} picked index {i} out of range (0..{n}): a bug in the policy",
                        snap.policy.name()
                    );
                    return Err(false);
                }
                Some(i) if snap.usable(i) && allowed(i) => {
                    if fits(i) {
                        return Ok(i);
                    }
                    overloaded = true;
                }
                Some(_) => {}
                None => return Err(false),
            }
        }
        // The snapshot is stale (an endpoint just went out) or endpoints are full:
        // the first usable endpoint with room, scanning from a rotating start.
        let start = self.snapshot_scan_start(n);
        let scan = |allowed: &dyn Fn(usize) -> bool| {
            (0..n)
                .map(|k| (start + k) % n.max(1))
                .find(|&i| snap.usable(i) && allowed(i) && fits(i))
        };
        // Avoiding an endpoint must not turn a pick into a failure: when no other can
        // take the request, the avoided one may.
        scan(&allowed)
            .or_else(|| avoid.and_then(|_| scan(&|_| true)))
            .ok_or(overloaded)
    }

    fn snapshot_scan_start(&self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (crate::state::now_ns() as usize) % n
        }
    }
}

impl<P, S, C, K, Req> Service<Req> for Balancer<P, S, C, K>
where
    P: Balance,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    C: TrackCompletion<S::Response>,
    K: RequestKey<Req>,
    Req: Send + 'static,
{
    type Response = C::Output;
    type Error = BoxError;
    type Future = ResponseFuture<P, S, C, Req>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let key = self.key.key(&req);
        let avoid = self.key.avoid(&req);
        let state = match self.shared.pick(key, avoid) {
            Ok(p) => State::Ready {
                service: p.service,
                req: Some(req),
                guard: Some(p.guard),
            },
            Err(overloaded) => match self.shared.config.wait {
                Some(wait) if !overloaded => State::Waiting {
                    wait: Box::pin(wait_for_endpoint(self.shared.clone(), key, avoid.cloned(), wait)),
                    req: Some(req),
                },
                _ => State::Failed {
                    err: Some(NoEndpoints::new(None, overloaded)),
                },
            },
        };
        ResponseFuture {
            state,
            timeout: self.shared.config.timeout,
            deadline: None,
            completion: self.completion.clone(),
            _p: PhantomData,
        }
    }
}

type WaitFuture<S> = Pin<Box<dyn Future<Output = Result<Picked<S>, NoEndpoints>> + Send>>;

async fn wait_for_endpoint<P: Balance, S: Clone + Send + Sync + 'static>(
    shared: Arc<Shared<P, S>>,
    key: Option<u64>,
    avoid: Option<EndpointId>,
    wait: Duration,
) -> Result<Picked<S>, NoEndpoints> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = shared.published.notified();
        match shared.pick(key, avoid.as_ref()) {
            Ok(p) => return Ok(p),
            Err(true) => return Err(NoEndpoints::new(Some(wait), true)),
            Err(false) => {}
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Err(NoEndpoints::new(Some(wait), false));
        }
    }
}

pin_project! {
    /// The future a [`Balancer`] call returns.
    ///
    /// Dropping it before it completes cancels the request: the endpoint's guard is
    /// released as a cancellation, which counts neither as a success nor as a failure
    /// (see [`load`](crate::load)).
    pub struct ResponseFuture<P: Balance, S: Service<Req>, C, Req> {
        #[pin]
        state: State<S, Req>,
        timeout: Option<Duration>,
        // The per-attempt limit, armed once an endpoint is picked.
        // Boxed, and only when a timeout is set: kept inline, the timer made every
        // response future (and so every call) larger and 5-20 ns slower.
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        completion: C,
        _p: PhantomData<fn() -> P>,
    }
}

impl<P: Balance, S: Service<Req>, C, Req> fmt::Debug for ResponseFuture<P, S, C, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Req>, Req> {
        Failed { err: Option<NoEndpoints> },
        Waiting { wait: WaitFuture<S>, req: Option<Req> },
        Ready { service: S, req: Option<Req>, guard: Option<InFlight> },
        Calling { #[pin] fut: S::Future, guard: Option<InFlight> },
        Done,
    }
}

/// Whether the per-attempt limit ran out. Checked only once the endpoint's service is
/// not ready or its response is not in: an answer that is in wins.
fn expired(deadline: &mut Option<Pin<Box<tokio::time::Sleep>>>, cx: &mut Context<'_>) -> bool {
    deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready())
}

/// Fails the attempt that `guard` holds with `err`: a failure of its endpoint.
fn endpoint_failure(guard: &mut Option<InFlight>, err: BoxError) -> BoxError {
    let mut g = guard.take().expect("polled after completion");
    g.fail();
    Box::new(EndpointError::new(g.endpoint().id().clone(), err))
}

impl<P, S, C, Req> Future for ResponseFuture<P, S, C, Req>
where
    P: Balance,
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: TrackCompletion<S::Response>,
{
    type Output = Result<C::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { err } => {
                    let err = err.take().expect("polled after completion");
                    this.state.set(State::Done);
                    return Poll::Ready(Err(err.into()));
                }
                StateProj::Waiting { wait, req } => {
                    let picked = ready!(wait.as_mut().poll(cx))?;
                    let req = req.take();
                    this.state.set(State::Ready {
                        service: picked.service,
                        req,
                        guard: Some(picked.guard),
                    });
                }
                StateProj::Ready { service, req, guard } => {
                    if let (Some(t), true) = (*this.timeout, this.deadline.is_none()) {
                        *this.deadline = Some(Box::pin(tokio::time::sleep(t)));
                    }
                    match service.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => {
                            let err = endpoint_failure(guard, e.into());
                            this.state.set(State::Done);
                            return Poll::Ready(Err(err));
                        }
                        Poll::Pending => {
                            if expired(this.deadline, cx) {
                                let t = this.timeout.unwrap_or_default();
                                let err = endpoint_failure(guard, Box::new(Elapsed::new(t)));
                                this.state.set(State::Done);
                                return Poll::Ready(Err(err));
                            }
                            return Poll::Pending;
                        }
                    }
                    let fut = service.call(req.take().expect("polled after completion"));
                    let guard = guard.take();
                    this.state.set(State::Calling { fut, guard });
                }
                StateProj::Calling { fut, guard } => {
                    let res = match fut.poll(cx) {
                        Poll::Ready(Ok(rsp)) => {
                            let g = guard.take().expect("polled after completion");
                            Ok(this.completion.track(rsp, g))
                        }
                        Poll::Ready(Err(e)) => Err(endpoint_failure(guard, e.into())),
                        Poll::Pending => {
                            if !expired(this.deadline, cx) {
                                return Poll::Pending;
                            }
                            let t = this.timeout.unwrap_or_default();
                            Err(endpoint_failure(guard, Box::new(Elapsed::new(t))))
                        }
                    };
                    // The endpoint's future goes now, not when this one is dropped.
                    this.state.set(State::Done);
                    *this.deadline = None;
                    return Poll::Ready(res);
                }
                StateProj::Done => panic!("polled after completion"),
            }
        }
    }
}

/// A [`Layer`] that balances over the services its inner connector makes.
///
/// `BalanceLayer::new(builder, discover)` wraps a connector `M: Service<Endpoint>`
/// into a [`Balancer`]. Anything a tower user has composes around it (timeouts,
/// retries, concurrency limits) or inside it, on the connector's services.
///
/// A discovery stream feeds one balancer, so the layer spawns one, the first time it is
/// applied. Applied again (tower's `ServiceBuilder::service` may apply a layer more
/// than once), it returns a handle to that same balancer, and the connector it is given
/// then is dropped unused. Applied again to a connector of another type (so a balancer
/// of another type), it cannot share.
///
/// # Panics
///
/// Applied a second time to a connector whose services are of another type than the
/// first time's (a programming error: one stream cannot feed two balancers).
pub struct BalanceLayer<P, D, C = CompleteOnResponse, K = NoKey> {
    state: std::sync::Mutex<Applied<P, D, C, K>>,
}

/// What a [`BalanceLayer`] holds until it is applied.
type Unapplied<P, D, C, K> = (Builder<P, C, K>, D);

/// A [`BalanceLayer`]'s builder until it is applied, then the balancer it spawned.
enum Applied<P, D, C, K> {
    Not(Option<Box<Unapplied<P, D, C, K>>>),
    Once(Box<dyn std::any::Any + Send>),
}

impl<P: Balance, D, C, K> fmt::Debug for BalanceLayer<P, D, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BalanceLayer")
    }
}

impl<P: Balance, D: Discover, C, K> BalanceLayer<P, D, C, K> {
    /// A layer that spawns one balancer, configured by `builder`, fed by `discover`.
    pub fn new(builder: Builder<P, C, K>, discover: D) -> Self {
        Self {
            state: std::sync::Mutex::new(Applied::Not(Some(Box::new((builder, discover))))),
        }
    }
}

impl<P, D, C, K, M, S> Layer<M> for BalanceLayer<P, D, C, K>
where
    P: Balance,
    D: Discover,
    C: Clone + Send + 'static,
    K: Clone + Send + 'static,
    M: Service<Endpoint, Response = S> + Send + 'static,
    M::Error: Into<BoxError>,
    M::Future: Send,
    S: Clone + Send + Sync + 'static,
{
    type Service = Balancer<P, S, C, K>;

    fn layer(&self, make: M) -> Self::Service {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *state {
            Applied::Not(unapplied) => {
                let (builder, discover) = *unapplied.take().expect("taken only here, under the lock");
                let lb = builder.spawn(discover, make);
                *state = Applied::Once(Box::new(lb.clone()));
                lb
            }
            Applied::Once(spawned) => spawned
                .downcast_ref::<Balancer<P, S, C, K>>()
                .expect(
                    "a BalanceLayer applied again to a connector of another type: its discovery stream \
                     already feeds a balancer of another type",
                )
                .clone(),
        }
    }
}
