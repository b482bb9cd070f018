//! Shared fakes and helpers for lb-core's integration tests.
//!
//! Endpoint `i` has the id `ep{i:03}` (so ids sort like indices and a snapshot's order
//! is the index order) and the address `127.0.0.1:(10000 + i)`; the inner service made
//! for it is a [`Backend`] that answers with `i`, read back from the address so that it
//! survives an id change (tower interop renames endpoints).

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lb_core::balance::WEIGHT_SCALE;
use lb_core::{connect_fn, Balancer, BalancerStatus, Endpoint, EndpointId, EndpointState, EndpointStatus, Health};
use tower::Service;

/// The most endpoints a test uses.
pub const MAX_ENDPOINTS: usize = 256;

/// The address of endpoint `i`.
pub fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16))
}

/// The id of endpoint `i`.
pub fn id(i: usize) -> EndpointId {
    EndpointId::new(format!("ep{i:03}"))
}

/// Endpoint `i`, weight 1.
pub fn ep(i: usize) -> Endpoint {
    Endpoint::new(addr(i)).with_id(id(i))
}

/// Endpoint `i` with a weight.
pub fn ep_w(i: usize, weight: u32) -> Endpoint {
    ep(i).with_weight(weight)
}

/// The index of an endpoint, from its address.
pub fn index_of(ep: &Endpoint) -> usize {
    usize::from(ep.addr().port() - 10_000)
}

/// The index of an endpoint id made by [`id`].
pub fn index_of_id(id: &EndpointId) -> usize {
    id.as_str()[2..].parse().expect("an id made by support::id")
}

/// Fresh endpoint states `0..weights.len()` and their effective weights at full
/// strength (configured weight times [`WEIGHT_SCALE`]), for driving a policy directly.
pub fn states(weights: &[u32]) -> (Vec<Arc<EndpointState>>, Vec<u32>) {
    let states = (0..weights.len())
        .map(|i| Arc::new(EndpointState::new(ep_w(i, weights[i]), Duration::from_millis(10))))
        .collect();
    let eff = weights.iter().map(|&w| w * WEIGHT_SCALE).collect();
    (states, eff)
}

/// Per-endpoint switches shared by the test and the backends.
#[derive(Debug)]
pub struct Switches(Vec<AtomicBool>);

impl Switches {
    pub fn new() -> Arc<Self> {
        Arc::new(Self((0..MAX_ENDPOINTS).map(|_| AtomicBool::new(false)).collect()))
    }

    pub fn set(&self, i: usize, on: bool) {
        self.0[i].store(on, SeqCst);
    }

    pub fn get(&self, i: usize) -> bool {
        self.0[i].load(SeqCst)
    }
}

/// The error of a failing [`Backend`]. Allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Down(pub usize);

impl fmt::Display for Down {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "endpoint {} is down", self.0)
    }
}

impl std::error::Error for Down {}

/// An always-ready inner service that answers with its endpoint's index, or fails
/// with [`Down`] while its switch in `failing` is on.
#[derive(Clone, Debug)]
pub struct Backend {
    pub idx: usize,
    failing: Arc<Switches>,
}

impl Backend {
    pub fn new(idx: usize, failing: Arc<Switches>) -> Self {
        Self { idx, failing }
    }
}

impl<Req> Service<Req> for Backend {
    type Response = usize;
    type Error = Down;
    type Future = std::future::Ready<Result<usize, Down>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Down>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Req) -> Self::Future {
        std::future::ready(if self.failing.get(self.idx) {
            Err(Down(self.idx))
        } else {
            Ok(self.idx)
        })
    }
}

/// A connector making [`Backend`]s that fail while their switch is on.
pub fn backends(
    failing: Arc<Switches>,
) -> impl Service<
    Endpoint,
    Response = Backend,
    Error = Infallible,
    Future = std::future::Ready<Result<Backend, Infallible>>,
> + Clone
       + Send
       + 'static {
    connect_fn(move |ep: &Endpoint| Backend::new(index_of(ep), failing.clone()))
}

/// A connector making [`Backend`]s that never fail.
pub fn healthy_backends() -> impl Service<
    Endpoint,
    Response = Backend,
    Error = Infallible,
    Future = std::future::Ready<Result<Backend, Infallible>>,
> + Clone
       + Send
       + 'static {
    backends(Switches::new())
}

/// The status of endpoint `i`, if the balancer holds it.
pub fn find(status: &BalancerStatus, i: usize) -> Option<&EndpointStatus> {
    let id = id(i);
    status.endpoints.iter().find(|e| e.id == id)
}

/// The status of endpoint `i`; panics if the balancer does not hold it.
pub fn status_of<P, S, R>(lb: &Balancer<P, S, R>, i: usize) -> EndpointStatus
where
    P: lb_core::balance::Balance,
{
    let status = lb.status();
    find(&status, i)
        .unwrap_or_else(|| panic!("endpoint {i} missing from status {status:#?}"))
        .clone()
}

/// The health of endpoint `i`, or `None` if the balancer no longer holds it.
pub fn health_of<P, S, R>(lb: &Balancer<P, S, R>, i: usize) -> Option<Health>
where
    P: lb_core::balance::Balance,
{
    find(&lb.status(), i).map(|e| e.health)
}

/// Waits (in steps of `step` of tokio time, at most `tries` of them) until `cond`
/// holds; panics with `what` otherwise.
pub async fn eventually(what: &str, step: Duration, tries: usize, mut cond: impl FnMut() -> bool) {
    for _ in 0..tries {
        if cond() {
            return;
        }
        tokio::time::sleep(step).await;
    }
    assert!(cond(), "never happened: {what}");
}

/// Lets the writer task run: a few short sleeps (on a paused clock these advance it
/// by a few milliseconds).
pub async fn settle() {
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Polls a future once with a no-op waker.
pub fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    std::pin::Pin::new(fut).poll(&mut cx)
}

/// What a [`Scripted`] endpoint does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Answers with its index after the delay.
    Answer,
    /// Fails with [`Down`] after the delay.
    Fail,
    /// Never answers (a hung endpoint).
    Hang,
    /// Never becomes ready (`poll_ready` stays pending).
    NotReady,
}

/// Per-endpoint behaviour of [`Scripted`] backends, changed by the test as it runs:
/// what each endpoint does, and after how long (on tokio's clock, so a paused test
/// controls it).
#[derive(Debug)]
pub struct Script(Vec<std::sync::Mutex<(Act, Duration)>>);

impl Script {
    /// Every endpoint answers at once.
    pub fn new() -> Arc<Self> {
        Arc::new(Self(
            (0..MAX_ENDPOINTS)
                .map(|_| std::sync::Mutex::new((Act::Answer, Duration::ZERO)))
                .collect(),
        ))
    }

    /// Endpoint `i` does `act` after `delay`.
    pub fn set(&self, i: usize, act: Act, delay: Duration) {
        *self.0[i].lock().unwrap() = (act, delay);
    }

    fn get(&self, i: usize) -> (Act, Duration) {
        *self.0[i].lock().unwrap()
    }
}

/// A backend that follows its endpoint's line of a [`Script`].
#[derive(Clone, Debug)]
pub struct Scripted {
    pub idx: usize,
    script: Arc<Script>,
}

impl<Req> Service<Req> for Scripted {
    type Response = usize;
    type Error = Down;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<usize, Down>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Down>> {
        if self.script.get(self.idx).0 == Act::NotReady {
            // Nothing will wake it: only a timeout gets the caller out.
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, _: Req) -> Self::Future {
        let (act, delay) = self.script.get(self.idx);
        let idx = self.idx;
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            match act {
                Act::Answer => Ok(idx),
                Act::Fail => Err(Down(idx)),
                Act::Hang | Act::NotReady => std::future::pending().await,
            }
        })
    }
}

/// A connector making [`Scripted`] backends.
pub fn scripted(
    script: Arc<Script>,
) -> impl Service<
    Endpoint,
    Response = Scripted,
    Error = Infallible,
    Future = std::future::Ready<Result<Scripted, Infallible>>,
> + Clone
       + Send
       + 'static {
    connect_fn(move |ep: &Endpoint| Scripted {
        idx: index_of(ep),
        script: script.clone(),
    })
}

/// Endpoint `i`'s current failure streak, read through a pick whose guard is dropped
/// at once (a cancellation: it changes no streak, but counts as a request started).
pub fn streak_of<P, S, R>(lb: &Balancer<P, S, R>, i: usize) -> u32
where
    P: lb_core::balance::Balance,
    S: Clone + Send + Sync + 'static,
{
    let status = lb.status();
    let _ = find(&status, i).unwrap_or_else(|| panic!("endpoint {i} missing from status {status:#?}"));
    // A pick may land elsewhere: try until endpoint i comes up (it must be eligible).
    for _ in 0..1_000 {
        let p = lb.pick(None).expect("an eligible endpoint");
        if p.guard.endpoint().id() == &id(i) {
            return p.guard.endpoint().consecutive_failures();
        }
    }
    panic!("endpoint {i} never picked");
}
