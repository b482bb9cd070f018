//! Zero heap allocations per request in the steady state, for every policy: a counting
//! global allocator counts the allocations made by this thread while it calls a
//! `Balancer` (pick, guard, inner call, response) and drops the response.

// A global allocator implements `GlobalAlloc`, an unsafe trait; the impl only forwards
// to `System` and counts.
#![allow(unsafe_code)]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::task::{Context, Poll};

use lb_core::balance::{
    Balance, LeastConn, Maglev, P2c, PeakEwma, PendingRequests, Random, RoundRobin, WeightedRoundRobin,
};
use lb_core::{discover, Balancer, KeyFn};
use tower::Service;

use support::{ep_w, healthy_backends};

struct Counting;

thread_local! {
    /// Whether this thread's allocations are being counted, and how many there were.
    /// `const` thread locals of `Cell`s need no lazy initialisation and no destructor
    /// registration, so reading them from the allocator cannot recurse into it.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: as above; `ptr` came from this allocator, which is `System`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// How many allocations this thread makes while running `f`.
fn allocations_in(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    ALLOCATIONS.with(|n| n.get())
}

const WARM_UP: usize = 2_000;
const CALLS: usize = 10_000;

/// Calls `svc` once per request, polls each response future to completion (the inner
/// services are always ready, so once is enough), and hands the response to `finish`.
fn drive<Svc, Req>(svc: &mut Svc, requests: Vec<Req>, finish: &mut impl FnMut(Svc::Response))
where
    Svc: Service<Req>,
    Svc::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    for req in requests {
        assert!(svc.poll_ready(&mut cx).is_ready());
        let fut = svc.call(req);
        let mut fut = std::pin::pin!(fut);
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(rsp)) => finish(rsp),
            Poll::Ready(Err(e)) => panic!("call failed: {e:?}"),
            Poll::Pending => panic!("an always-ready inner service left the call pending"),
        }
    }
}

/// Warms up, then counts allocations over `CALLS` calls.
fn steady_state<Svc, Req>(
    svc: &mut Svc,
    mut request: impl FnMut(usize) -> Req,
    mut finish: impl FnMut(Svc::Response),
) -> usize
where
    Svc: Service<Req>,
    Svc::Error: std::fmt::Debug,
{
    let warm: Vec<Req> = (0..WARM_UP).map(&mut request).collect();
    drive(svc, warm, &mut finish);
    // Requests are made before counting: only the balancer's work is measured.
    let requests: Vec<Req> = (0..CALLS).map(&mut request).collect();
    let mut requests = Some(requests);
    allocations_in(|| drive(svc, requests.take().unwrap(), &mut finish))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A balancer over three endpoints of weights 1, 2, 3; requests are `u64` keys.
fn keyed_allocations<P: Balance>(policy: P) -> usize {
    let rt = runtime();
    rt.block_on(async {
        let mut lb = Balancer::builder(policy).protocol(KeyFn(|k: &u64| Some(*k))).spawn(
            discover::fixed([ep_w(0, 1), ep_w(1, 2), ep_w(2, 3)]),
            healthy_backends(),
        );
        lb.ready_endpoints(3).await;
        steady_state(
            &mut lb,
            |i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            |idx: usize| assert!(idx < 3),
        )
    })
}

/// The same without a key (consistent hashing falls back to weighted random).
fn unkeyed_allocations<P: Balance>(policy: P) -> usize {
    let rt = runtime();
    rt.block_on(async {
        let mut lb = Balancer::builder(policy).spawn(
            discover::fixed([ep_w(0, 1), ep_w(1, 2), ep_w(2, 3)]),
            healthy_backends(),
        );
        lb.ready_endpoints(3).await;
        steady_state(&mut lb, |_| (), |idx: usize| assert!(idx < 3))
    })
}

/// With a per-attempt timeout: its timer is boxed (one allocation per request), so that
/// the futures of balancers without one stay small (kept inline, it made every call
/// 5-20 ns slower).
fn timeout_allocations<P: Balance>(policy: P) -> usize {
    let rt = runtime();
    rt.block_on(async {
        let mut lb = Balancer::builder(policy)
            .timeout(std::time::Duration::from_secs(5))
            .spawn(
                discover::fixed([ep_w(0, 1), ep_w(1, 2), ep_w(2, 3)]),
                healthy_backends(),
            );
        lb.ready_endpoints(3).await;
        steady_state(&mut lb, |_| (), |idx: usize| assert!(idx < 3))
    })
}

/// Through `Builder::http()` (feature `http`): the guard rides in the response body
/// until it ends.
#[cfg(feature = "http")]
mod http_body_tracking {
    use std::convert::Infallible;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body::Body;
    use http_body_util::Full;
    use lb_core::balance::Balance;
    use lb_core::{discover, Balancer};
    use tower::Service;

    use super::{runtime, steady_state};
    use crate::support::ep_w;

    /// An always-ready HTTP service answering 200 with a one-frame body.
    #[derive(Clone, Debug)]
    struct HttpOk;

    impl<B> Service<http::Request<B>> for HttpOk {
        type Response = http::Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<B>) -> Self::Future {
            std::future::ready(Ok(http::Response::new(Full::new(Bytes::from_static(b"ok")))))
        }
    }

    /// Through `Builder::http()`: the guard rides in the response body until it ends.
    pub(super) fn http_allocations<P: Balance>(policy: P) -> usize {
        let rt = runtime();
        rt.block_on(async {
            let mut lb = Balancer::builder(policy).http().spawn(
                discover::fixed([ep_w(0, 1), ep_w(1, 2), ep_w(2, 3)]),
                lb_core::connect_fn(|_: &lb_core::Endpoint| HttpOk),
            );
            lb.ready_endpoints(3).await;
            steady_state(
                &mut lb,
                |_| http::Request::new(()),
                |rsp: http::Response<lb_core::http::TrackedBody<Full<Bytes>>>| {
                    let body = rsp.into_body();
                    let mut body = std::pin::pin!(body);
                    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
                    assert!(body.as_mut().get_mut().is_tracking(), "in flight until the body ends");
                    assert!(matches!(body.as_mut().poll_frame(&mut cx), Poll::Ready(Some(Ok(_)))));
                    assert!(!body.is_tracking(), "the last frame ends the body");
                },
            )
        })
    }
}

#[test]
fn the_counter_counts() {
    let n = allocations_in(|| {
        let v: Vec<u64> = Vec::with_capacity(std::hint::black_box(16));
        std::hint::black_box(v);
    });
    assert_eq!(n, 1, "the counting allocator must see a Vec allocation");
}

#[test]
fn no_policy_allocates_per_request() {
    #[allow(unused_mut)]
    let mut results = vec![
        ("round_robin", unkeyed_allocations(RoundRobin::new())),
        ("weighted_round_robin", unkeyed_allocations(WeightedRoundRobin::new())),
        ("least_conn", unkeyed_allocations(LeastConn::new())),
        ("p2c pending", unkeyed_allocations(P2c::from_seed(PendingRequests, 1))),
        (
            "p2c peak_ewma",
            unkeyed_allocations(P2c::from_seed(PeakEwma::default(), 1)),
        ),
        ("random", unkeyed_allocations(Random::from_seed(1))),
        ("maglev, keyed", keyed_allocations(Maglev::new())),
        ("maglev, no key", unkeyed_allocations(Maglev::new())),
        ("maglev bounded, keyed", keyed_allocations(Maglev::bounded(1.25))),
        ("least_conn, keyed", keyed_allocations(LeastConn::new())),
    ];
    #[cfg(feature = "http")]
    results.extend([
        (
            "http body tracking, round_robin",
            http_body_tracking::http_allocations(RoundRobin::new()),
        ),
        (
            "http body tracking, peak_ewma",
            http_body_tracking::http_allocations(P2c::from_seed(PeakEwma::default(), 1)),
        ),
    ]);
    let report: Vec<String> = results.iter().map(|(name, n)| format!("{name}: {n}")).collect();
    assert!(
        results.iter().all(|&(_, n)| n == 0),
        "allocations over {CALLS} calls:\n{}",
        report.join("\n")
    );
}

#[test]
fn a_per_attempt_timeout_costs_one_allocation_per_request() {
    for (name, n) in [
        ("round_robin", timeout_allocations(RoundRobin::new())),
        (
            "p2c peak_ewma",
            timeout_allocations(P2c::from_seed(PeakEwma::default(), 1)),
        ),
    ] {
        assert_eq!(n, CALLS, "{name}: the timer, and nothing else, per call");
    }
}
