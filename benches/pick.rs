//! Pick cost: what one request through a [`Balancer`] costs its caller.
//!
//! Each iteration sends one request through the balancer to an always-ready endpoint
//! service whose future is ready at once, and drops the response (and so the in-flight
//! guard): `poll_ready` + `call` + one poll of the response future + drop. The endpoint
//! does no work, so the figure is the balancer's own overhead: loading the snapshot,
//! the policy's pick, the guard, the service clone, the release.
//!
//! Groups, each over every policy and n = 2, 8, 64, 512, 10,000 endpoints:
//!
//! - `single`: one thread.
//! - `contended`: the same, while a second thread hammers a clone of the same balancer
//!   for the whole measurement (shared cursors, generators and counters contend).
//! - `churn`: one thread, while a publisher task removes and re-adds an endpoint every
//!   millisecond, so the writer task rebuilds and publishes a new snapshot about 1,000
//!   times a second (or as often as it can, where a build takes longer).
//! - `tower`: the reference, `tower::balance::p2c::Balance` over `PendingRequests` and
//!   over `PeakEwma`, with the same kind of endpoint services.
//!
//! Run with `cargo bench -p benches --bench pick`; the results are in
//! `docs/benchmarks.md`. A filter narrows it: `cargo bench -p benches --bench pick -- single/round_robin`.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion};
use futures_util::task::noop_waker_ref;
use futures_util::{FutureExt, Stream};
use lb_core::balance::{
    Balance, LeastConn, Maglev, P2c, PeakEwma, PendingRequests, Random, RoundRobin, WeightedRoundRobin,
};
use lb_core::discover::{self, Publisher, Update};
use lb_core::{connect_fn, Balancer, Builder, Endpoint, KeyFn, Protocol};
use tokio::runtime::Runtime;
use tower::Service;

/// Pool sizes.
const SIZES: [usize; 5] = [2, 8, 64, 512, 10_000];

/// Steps the per-request key (a Weyl sequence: every key differs, spread over `u64`).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// How often the churn publisher sends an update.
const CHURN_EVERY: Duration = Duration::from_millis(1);

/// An endpoint service that answers at once and does nothing.
#[derive(Clone, Copy, Debug)]
struct Svc;

impl Service<u64> for Svc {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, _: u64) -> Self::Future {
        ready(Ok(()))
    }
}

/// One request, as a caller makes it: `poll_ready`, `call`, poll the response future to
/// completion, drop the response.
#[inline]
fn one<S>(svc: &mut S, req: u64)
where
    S: Service<u64>,
    S::Error: Debug,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => panic!("poll_ready failed: {e:?}"),
        Poll::Pending => panic!("the balancer was not ready"),
    }
    let rsp = svc
        .call(req)
        .now_or_never()
        .expect("an always-ready endpoint answers at once")
        .expect("an always-ready endpoint does not fail");
    drop(black_box(rsp));
}

/// The policies measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    RoundRobin,
    WeightedRoundRobin,
    LeastConn,
    P2cPending,
    P2cPeakEwma,
    Random,
    Maglev,
}

impl Policy {
    const ALL: [Policy; 7] = [
        Policy::RoundRobin,
        Policy::WeightedRoundRobin,
        Policy::LeastConn,
        Policy::P2cPending,
        Policy::P2cPeakEwma,
        Policy::Random,
        Policy::Maglev,
    ];

    fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::WeightedRoundRobin => "weighted_round_robin",
            Policy::LeastConn => "least_conn",
            Policy::P2cPending => "p2c_pending",
            Policy::P2cPeakEwma => "p2c_peak_ewma",
            Policy::Random => "random",
            Policy::Maglev => "maglev",
        }
    }
}

/// How the picking thread is disturbed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Single,
    Contended,
    Churn,
}

impl Mode {
    fn group(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Contended => "contended",
            Mode::Churn => "churn",
        }
    }
}

/// `n` endpoints with distinct addresses; weights 1, 2, 3, 4, 1, 2, ... if `weighted`.
fn endpoints(n: usize, weighted: bool) -> Vec<Endpoint> {
    (0..n)
        .map(|i| {
            let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080));
            let ep = Endpoint::new(addr);
            if weighted {
                ep.with_weight(1 + (i % 4) as u32)
            } else {
                ep
            }
        })
        .collect()
}

/// A discovery source of either kind, boxed so one `spawn` serves both.
type Source = Pin<Box<dyn Stream<Item = Result<Update, Infallible>> + Send>>;

/// The request key for Maglev: the request itself.
fn request_key(req: &u64) -> Option<u64> {
    Some(*req)
}

/// Spawns a balancer on `rt` and waits until all `n` endpoints are in rotation.
fn start<P: Balance, R>(rt: &Runtime, builder: Builder<P, R>, src: Source, n: usize) -> Balancer<P, Svc, R> {
    let _enter = rt.enter();
    let lb = builder.spawn(src, connect_fn(|_: &Endpoint| Svc));
    rt.block_on(lb.ready_endpoints(n));
    lb
}

fn case(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, mode: Mode, policy: Policy, n: usize) {
    let eps = endpoints(n, policy == Policy::WeightedRoundRobin);
    let (src, publisher): (Source, Option<Publisher>) = if mode == Mode::Churn {
        let (publisher, subscription) = discover::channel();
        publisher.reset(eps.clone());
        (Box::pin(subscription), Some(publisher))
    } else {
        (Box::pin(discover::fixed(eps.clone())), None)
    };
    let churn = publisher.map(|p| (p, eps));
    let id = BenchmarkId::new(policy.name(), n);
    match policy {
        Policy::RoundRobin => {
            let lb = start(rt, Balancer::builder(RoundRobin::new()), src, n);
            measure(g, rt, mode, id, lb, churn);
        }
        Policy::WeightedRoundRobin => {
            let lb = start(rt, Balancer::builder(WeightedRoundRobin::new()), src, n);
            measure(g, rt, mode, id, lb, churn);
        }
        Policy::LeastConn => {
            let lb = start(rt, Balancer::builder(LeastConn::new()), src, n);
            measure(g, rt, mode, id, lb, churn);
        }
        Policy::P2cPending => {
            let lb = start(rt, Balancer::builder(P2c::new(PendingRequests)), src, n);
            measure(g, rt, mode, id, lb, churn);
        }
        Policy::P2cPeakEwma => {
            let lb = start(rt, Balancer::builder(P2c::new(PeakEwma::default())), src, n);
            measure(g, rt, mode, id, lb, churn);
        }
        Policy::Random => {
            let lb = start(rt, Balancer::builder(Random::new()), src, n);
            measure(g, rt, mode, id, lb, churn);
        }
        Policy::Maglev => {
            let builder = Balancer::builder(Maglev::new()).protocol(KeyFn(request_key as fn(&u64) -> Option<u64>));
            let lb = start(rt, builder, src, n);
            measure(g, rt, mode, id, lb, churn);
        }
    }
}

fn measure<P, R>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    mode: Mode,
    id: BenchmarkId,
    mut lb: Balancer<P, Svc, R>,
    churn: Option<(Publisher, Vec<Endpoint>)>,
) where
    P: Balance,
    R: Protocol<u64, ()> + Send + Sync + 'static,
{
    let churn_task = churn.map(|(publisher, eps)| {
        rt.spawn(async move {
            let mut tick = tokio::time::interval(CHURN_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            // Remove endpoint j, then put it back, then the next one: every update
            // changes the eligible set, so every batch the writer takes publishes.
            for i in 0usize.. {
                tick.tick().await;
                let ep = &eps[(i / 2) % eps.len()];
                let sent = if i % 2 == 0 {
                    publisher.remove(ep.id().clone())
                } else {
                    publisher.insert(ep.clone())
                };
                if !sent {
                    return;
                }
            }
        })
    });
    let generation = lb.status().generation;
    let began = Instant::now();
    let mut key = 0u64;
    match mode {
        Mode::Single | Mode::Churn => {
            g.bench_function(id, |b| {
                b.iter(|| {
                    key = key.wrapping_add(GAMMA);
                    one(&mut lb, key);
                })
            });
        }
        Mode::Contended => {
            g.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let stop = Arc::new(AtomicBool::new(false));
                    let started = Arc::new(AtomicBool::new(false));
                    let other = std::thread::spawn({
                        let (stop, started) = (stop.clone(), started.clone());
                        let mut lb = lb.clone();
                        move || {
                            let mut key = 1u64;
                            started.store(true, Ordering::Release);
                            while !stop.load(Ordering::Relaxed) {
                                key = key.wrapping_add(GAMMA);
                                one(&mut lb, key);
                            }
                        }
                    });
                    while !started.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                    let t = Instant::now();
                    for _ in 0..iters {
                        key = key.wrapping_add(GAMMA);
                        one(&mut lb, key);
                    }
                    let elapsed = t.elapsed();
                    stop.store(true, Ordering::Relaxed);
                    other.join().expect("the hammering thread panicked");
                    elapsed
                })
            });
        }
    }
    if let Some(task) = churn_task {
        task.abort();
        let published = lb.status().generation - generation;
        let secs = began.elapsed().as_secs_f64();
        // Skipped by a filter: nothing to say.
        if secs > 0.5 {
            eprintln!(
                "churn: {published} snapshots published in {secs:.1} s ({:.0}/s)",
                published as f64 / secs
            );
        }
    }
}

fn ours(c: &mut Criterion, mode: Mode) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut g = c.benchmark_group(mode.group());
    for policy in Policy::ALL {
        for n in SIZES {
            case(&mut g, &rt, mode, policy, n);
        }
    }
    g.finish();
}

fn single(c: &mut Criterion) {
    ours(c, Mode::Single);
}

fn contended(c: &mut Criterion) {
    ours(c, Mode::Contended);
}

fn churn(c: &mut Criterion) {
    ours(c, Mode::Churn);
}

/// tower's p2c `Balance`, one request: `poll_ready` (which also drives the ready cache)
/// + `call` + poll + drop.
fn tower_reference(c: &mut Criterion) {
    use tower::balance::p2c::Balance as TowerBalance;
    use tower::discover::ServiceList;
    use tower::load::{self, CompleteOnResponse as Complete};

    let mut g = c.benchmark_group("tower");
    for n in SIZES {
        let svcs: Vec<_> = (0..n)
            .map(|_| load::PendingRequests::new(Svc, Complete::default()))
            .collect();
        let mut lb: TowerBalance<_, u64> = TowerBalance::new(ServiceList::new::<u64>(svcs));
        let mut key = 0u64;
        g.bench_function(BenchmarkId::new("p2c_pending", n), |b| {
            b.iter(|| {
                key = key.wrapping_add(GAMMA);
                one(&mut lb, key);
            })
        });
    }
    for n in SIZES {
        let svcs: Vec<_> = (0..n)
            .map(|_| load::PeakEwma::new(Svc, Duration::from_millis(10), 10e9, Complete::default()))
            .collect();
        let mut lb: TowerBalance<_, u64> = TowerBalance::new(ServiceList::new::<u64>(svcs));
        let mut key = 0u64;
        g.bench_function(BenchmarkId::new("p2c_peak_ewma", n), |b| {
            b.iter(|| {
                key = key.wrapping_add(GAMMA);
                one(&mut lb, key);
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20)
}

fn main() {
    let mut c = config().configure_from_args();
    single(&mut c);
    contended(&mut c);
    churn(&mut c);
    tower_reference(&mut c);
    c.final_summary();
}
