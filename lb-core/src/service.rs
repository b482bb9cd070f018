//! [`Balancer`], the tower service, its [`Builder`] and [`BalanceLayer`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::{mpsc, oneshot};
use tower_layer::Layer;
use tower_service::Service;

use crate::balance::{Balance, WEIGHT_SCALE};
use crate::discover::Discover;
use crate::endpoint::{Endpoint, EndpointId};
use crate::error::{BoxError, Elapsed, EndpointError, NoEndpoints, UnknownEndpoint};
use crate::health::{CheckConfig, HealthCheck, OutlierConfig, SlowStart};
use crate::load::InFlight;
use crate::pick::{NoPick, Picked, Shared};
use crate::protocol::{Plain, Protocol};
use crate::state::{EndpointState, DEFAULT_FAILURE_PENALTY};
use crate::status::{BalancerStatus, EndpointStatus};
use crate::table::{Command, Config, Events, Published, Readers, Writer};

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
pub struct Balancer<P: Balance, S, R = Plain> {
    shared: Arc<Shared<P, S>>,
    protocol: R,
}

impl<P: Balance, S, R: Clone> Clone for Balancer<P, S, R> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            protocol: self.protocol.clone(),
        }
    }
}

impl<P: Balance, S, R> fmt::Debug for Balancer<P, S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("name", &self.shared.config.name)
            .field("policy", &self.shared.policy.name())
            .finish()
    }
}

/// Configures and spawns a [`Balancer`].
pub struct Builder<P, R = Plain> {
    policy: P,
    config: Config,
    protocol: R,
}

impl<P: Balance, R> fmt::Debug for Builder<P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("policy", &self.policy.name())
            .field("config", &self.config)
            .finish()
    }
}

impl<P: Balance> Balancer<P, (), Plain> {
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
            protocol: Plain,
        }
    }
}

impl<P: Balance, R> Builder<P, R> {
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
    /// requests in a row (errors, timeouts, 5xx with `http()`) is ejected for
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
    /// endpoint (so a retry can [`Avoid`](crate::Avoid) it) and whose source is an
    /// [`Elapsed`]; [`is_timeout`](crate::error::is_timeout) detects it. It counts as a
    /// failure of that endpoint (outlier detection, the latency estimate), unlike a
    /// timeout layered *around* the balancer, which only cancels the request and blames
    /// no one (see [`load`](crate::load)). The time before an endpoint is picked (the
    /// [`wait`](Self::wait) for one) is not included, and with `http()` (feature `http`)
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

    /// Sets the [`Protocol`]: how a request's hash key and the endpoint to avoid are
    /// read, and how long its guard lives. Default [`Plain`]: none, and until the
    /// response. `http()` (feature `http`) sets `http::Http`.
    pub fn protocol<R2>(self, protocol: R2) -> Builder<P, R2> {
        Builder {
            policy: self.policy,
            config: self.config,
            protocol,
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
    pub fn spawn<D, M, S>(self, discover: D, make: M) -> Balancer<P, S, R>
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
            published: Published::new(&policy),
            policy: policy.clone(),
            config: config.clone(),
            events: events.clone(),
            commands: tx,
            timed,
        });
        let readers: std::sync::Weak<dyn Readers<P, S>> = Arc::downgrade(&shared) as _;
        let mut writer = Writer::new(readers, policy, events, config, make, rx);
        let mut discover = Box::pin(discover);
        let discovering = writer.prime(discover.as_mut());
        tokio::spawn(writer.run(discover, discovering));
        Balancer {
            shared,
            protocol: self.protocol,
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

impl<P: Balance, S, R> Balancer<P, S, R> {
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
        self.shared.published.snapshot.load().endpoints.len()
    }

    /// Waits until at least `n` endpoints are in rotation.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    pub async fn ready_endpoints(&self, n: usize) {
        loop {
            let notified = self.shared.published.notify.notified();
            if self.eligible() >= n {
                return;
            }
            notified.await;
        }
    }

    /// A point-in-time view of every endpoint (allocates; not for the request path).
    pub fn status(&self) -> BalancerStatus {
        let snap = self.shared.published.snapshot.load();
        let all = self.shared.published.all.load();
        // Each state's place in the snapshot, by address: one pass, not a scan per endpoint.
        let index: std::collections::HashMap<*const EndpointState, usize> = snap
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

impl<P: Balance, S: Clone + Send + Sync + 'static, R> Balancer<P, S, R> {
    /// Picks an endpoint and takes its guard, without calling it. The building block of
    /// [`call`](Service::call), for callers that forward requests themselves (a TCP
    /// proxy). Such a caller reports how the request went with [`InFlight::succeed`] or
    /// [`InFlight::fail`] before dropping the guard: a guard dropped without an outcome
    /// is a cancellation, and counts neither way. The per-attempt [`Builder::timeout`]
    /// does not apply, nor does [`Builder::wait`].
    ///
    /// # Errors
    ///
    /// [`NoEndpoints`] when no endpoint is eligible, or, with
    /// [`Builder::max_in_flight`], when every eligible one is full
    /// ([`NoEndpoints::is_overloaded`]).
    pub fn pick(&self, key: Option<u64>) -> Result<Picked<S>, NoEndpoints> {
        self.pick_with(key, None)
    }

    /// [`pick`](Self::pick), but not `avoid` if another endpoint can take the request:
    /// for a retry after `avoid` failed.
    ///
    /// # Errors
    ///
    /// As [`pick`](Self::pick).
    pub fn pick_with(&self, key: Option<u64>, avoid: Option<&EndpointId>) -> Result<Picked<S>, NoEndpoints> {
        self.shared.pick(key, avoid).map_err(|why| why.into_error(None))
    }
}

impl<P, S, R, Req> Service<Req> for Balancer<P, S, R>
where
    P: Balance,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    R: Protocol<Req, S::Response>,
    Req: Send + 'static,
{
    type Response = R::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S, R, Req>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let key = self.protocol.key(&req);
        let avoid = self.protocol.avoid(&req);
        let state = match self.shared.pick(key, avoid) {
            Ok(p) => State::Ready {
                service: p.service,
                req: Some(req),
                guard: Some(p.guard),
            },
            Err(why) => match self.shared.config.wait {
                // Waiting is for endpoints to come, not for full ones to empty.
                Some(wait) if why != NoPick::Overloaded => State::Waiting {
                    wait: Box::pin(self.shared.clone().pick_within(key, avoid.cloned(), wait)),
                    req: Some(req),
                },
                _ => State::Failed {
                    err: Some(why.into_error(None)),
                },
            },
        };
        ResponseFuture {
            state,
            timeout: self.shared.config.timeout,
            deadline: None,
            protocol: self.protocol.clone(),
        }
    }
}

type WaitFuture<S> = Pin<Box<dyn Future<Output = Result<Picked<S>, NoEndpoints>> + Send>>;

pin_project! {
    /// The future a [`Balancer`] call returns.
    ///
    /// Dropping it before it completes cancels the request: the endpoint's guard is
    /// released as a cancellation, which counts neither as a success nor as a failure
    /// (see [`load`](crate::load)).
    pub struct ResponseFuture<S: Service<Req>, R, Req> {
        #[pin]
        state: State<S, Req>,
        timeout: Option<Duration>,
        // The per-attempt limit, armed once an endpoint is picked.
        // Boxed, and only when a timeout is set: kept inline, the timer made every
        // response future (and so every call) larger and 5-20 ns slower.
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        protocol: R,
    }
}

impl<S: Service<Req>, R, Req> fmt::Debug for ResponseFuture<S, R, Req> {
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

impl<S, R, Req> Future for ResponseFuture<S, R, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    R: Protocol<Req, S::Response>,
{
    type Output = Result<R::Output, BoxError>;

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
                            Ok(this.protocol.complete(rsp, g))
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
pub struct BalanceLayer<P, D, R = Plain> {
    state: std::sync::Mutex<Applied<P, D, R>>,
}

/// What a [`BalanceLayer`] holds until it is applied.
type Unapplied<P, D, R> = (Builder<P, R>, D);

/// A [`BalanceLayer`]'s builder until it is applied, then the balancer it spawned.
enum Applied<P, D, R> {
    Not(Option<Box<Unapplied<P, D, R>>>),
    Once(Box<dyn std::any::Any + Send>),
}

impl<P: Balance, D, R> fmt::Debug for BalanceLayer<P, D, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BalanceLayer")
    }
}

impl<P: Balance, D: Discover, R> BalanceLayer<P, D, R> {
    /// A layer that spawns one balancer, configured by `builder`, fed by `discover`.
    pub fn new(builder: Builder<P, R>, discover: D) -> Self {
        Self {
            state: std::sync::Mutex::new(Applied::Not(Some(Box::new((builder, discover))))),
        }
    }
}

impl<P, D, R, M, S> Layer<M> for BalanceLayer<P, D, R>
where
    P: Balance,
    D: Discover,
    R: Clone + Send + 'static,
    M: Service<Endpoint, Response = S> + Send + 'static,
    M::Error: Into<BoxError>,
    M::Future: Send,
    S: Clone + Send + Sync + 'static,
{
    type Service = Balancer<P, S, R>;

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
                .downcast_ref::<Balancer<P, S, R>>()
                .expect(
                    "a BalanceLayer applied again to a connector of another type: its discovery stream \
                     already feeds a balancer of another type",
                )
                .clone(),
        }
    }
}
