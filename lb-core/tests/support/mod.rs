//! Shared fakes and helpers for lb-core's integration tests.
//!
//! Endpoint `i` has the id `ep{i:03}` (so ids sort like indices and a snapshot's order
//! is the index order) and the address `127.0.0.1:(10000 + i)`; the inner service made
//! for it is a [`Backend`] that answers with `i`, read back from the address so that it
//! survives an id change (tower interop renames endpoints).

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lb_core::balance::WEIGHT_SCALE;
use lb_core::{connect_fn, Balancer, BalancerStatus, Endpoint, EndpointId, EndpointState, EndpointStatus, Health};
use tower::Service;

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

// The in-memory endpoint services are lb-test-support's, shared with other crates.
// Each test binary uses some of them.
#[allow(unused_imports)]
pub use lb_test_support::mock::{Act, Backend, Down, Script, Scripted, Switches, MAX_ENDPOINTS};

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

/// Waits (at most `tries` steps of `step`, on tokio's clock) until `cond` holds; panics
/// with `what` otherwise. lb-test-support's `eventually`, with the deadline these tests
/// count in steps.
pub async fn eventually(what: &str, step: Duration, tries: usize, cond: impl FnMut() -> bool) {
    lb_test_support::eventually(what, step * tries as u32, cond).await;
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
    connect_fn(move |ep: &Endpoint| Scripted::new(index_of(ep), script.clone()))
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
