//! A discrete-event simulator that drives lb-core's own balancer.
//!
//! No sockets and no real time: requests are events on a simulated clock. Each pick is
//! a real [`Balancer::pick`], so the policy code under test is the library's own, with
//! its real in-flight counts: a request holds the [`InFlight`] guard the balancer
//! handed out and drops it when its simulated response arrives, in simulated-time
//! order. Only the endpoints are fake: each answers after a latency drawn from its own
//! exponential distribution.
//!
//! Two experiments live here:
//!
//! - [`run`]: a closed loop of `requests` requests at a fixed `concurrency` over
//!   endpoints with skewed latencies; it reports each endpoint's share and the latency
//!   quantiles the callers saw (the `simulate` example prints them per policy).
//! - [`max_load`]: the balls-into-bins experiment. `n` requests that never complete
//!   are thrown at `n` endpoints; the most loaded endpoint then holds
//!   Θ(ln n / ln ln n) under one random choice and ln ln n / ln 2 + O(1) under the
//!   power of two choices (Azar, Broder, Karlin, Upfal 1994; Mitzenmacher 1996). The
//!   test `tests/p2c_theory.rs` checks both at n = 10,000.
//!
//! # Peak EWMA and the clock
//!
//! [`PeakEwma`](lb_core::balance::PeakEwma) measures latency with the process clock
//! (`std::time::Instant`, which a paused tokio clock does not affect): it times how long
//! a guard is held. In pure simulated time a guard is held for the microseconds the
//! simulator takes between events, whatever the simulated latency, so peak EWMA would
//! see noise. [`Pace::RealTime`] runs the same loop paced against the wall clock, one
//! simulated second taking `scale` real seconds, so the latencies peak EWMA measures
//! are the simulated ones times `scale` (plus the simulator's lateness, reported in
//! [`Report::max_lag`]). The balancer's own EWMA blend decays with a fixed 10 s time
//! constant in real time, which is `10 s / scale` in simulated time: in a short paced
//! run the estimate behaves as a running peak that decays with idleness only.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use lb_core::balance::Balance;
use lb_core::{connect_fn, discover, Balancer, Endpoint, InFlight};

/// One simulated endpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EndpointSpec {
    /// The mean of its exponential latency.
    pub mean: Duration,
    /// Its configured weight (policies that ignore weights ignore it).
    pub weight: u32,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The endpoints, in order; they are named `0`, `1`, ... in reports.
    pub endpoints: Vec<EndpointSpec>,
    /// How many requests to complete.
    pub requests: usize,
    /// How many requests are in flight at once (a closed loop: a new request starts
    /// whenever one ends).
    pub concurrency: usize,
    /// Seeds the latency draws and the hash keys, so runs repeat.
    pub seed: u64,
}

impl Workload {
    /// Ten endpoints with skewed latencies (means from 1 ms to 15 ms) and one slow one
    /// (250 ms), 100,000 requests, 100 at a time.
    pub fn skewed() -> Self {
        let means_ms = [1, 2, 3, 4, 5, 6, 8, 10, 15, 250];
        Self {
            endpoints: means_ms
                .iter()
                .map(|&ms| EndpointSpec {
                    mean: Duration::from_millis(ms),
                    weight: 1,
                })
                .collect(),
            requests: 100_000,
            concurrency: 100,
            seed: 1,
        }
    }

    /// The same endpoints, weighted by hand in inverse proportion to their mean latency
    /// (the best a static weighted round robin can do), each weight at least 1.
    pub fn weighted_by_speed(&self) -> Self {
        let fastest = self
            .endpoints
            .iter()
            .map(|e| e.mean)
            .min()
            .unwrap_or(Duration::from_millis(1));
        let mut w = self.clone();
        for e in &mut w.endpoints {
            let ratio = 60.0 * fastest.as_secs_f64() / e.mean.as_secs_f64();
            e.weight = (ratio.round() as u32).max(1);
        }
        w
    }
}

/// How simulated time relates to the wall clock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// As fast as possible: only the simulated clock exists.
    Simulated,
    /// Each event waits until `simulated time * scale` of wall time has passed since the
    /// start, so latency measured by the process clock tracks simulated latency.
    RealTime {
        /// Wall seconds per simulated second (0.1: ten times faster than real time).
        scale: f64,
    },
}

/// What one run produced.
#[derive(Clone, Debug)]
pub struct Report {
    /// The policy's name.
    pub policy: &'static str,
    /// Requests each endpoint served, by endpoint index.
    pub served: Vec<u64>,
    /// Every request's latency, sorted.
    pub latencies: Vec<Duration>,
    /// Simulated time from the first request to the last response.
    pub makespan: Duration,
    /// In a paced run, the most any event was processed after its wall-clock due time.
    pub max_lag: Duration,
    /// In a paced run, how late events were processed on average.
    pub mean_lag: Duration,
}

impl Report {
    /// The `q` quantile (0.0 to 1.0) of the latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        self.latencies[i]
    }

    /// Endpoint `i`'s share of the requests, 0.0 to 1.0.
    pub fn share(&self, i: usize) -> f64 {
        let total: u64 = self.served.iter().sum();
        if total == 0 {
            0.0
        } else {
            self.served[i] as f64 / total as f64
        }
    }

    /// Completed requests per simulated second.
    pub fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.makespan.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// SplitMix64: the workload's own random numbers (latencies, keys), apart from the
/// policies' generators.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// An exponential draw with the given mean.
    pub fn exponential(&mut self, mean: Duration) -> Duration {
        Duration::from_secs_f64(-self.unit().ln() * mean.as_secs_f64())
    }
}

/// The address of simulated endpoint `i`; its service is `i` itself.
fn addr(i: usize) -> SocketAddr {
    let i = u32::try_from(i).expect("fewer than 2^24 endpoints");
    SocketAddr::from((Ipv4Addr::from(0x0A00_0000 | i), 80))
}

fn index(addr: SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(a) => (u32::from(*a.ip()) & 0x00FF_FFFF) as usize,
        SocketAddr::V6(_) => unreachable!("simulated endpoints are IPv4"),
    }
}

/// Starts a balancer over simulated endpoints with the given weights, on `rt`, and waits
/// until all are in rotation. Each endpoint's service is its index.
fn balancer<P: Balance>(
    rt: &tokio::runtime::Runtime,
    policy: P,
    weights: &[u32],
    default_rtt: Duration,
) -> Balancer<P, usize> {
    let endpoints: Vec<Endpoint> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Endpoint::new(addr(i)).with_weight(w))
        .collect();
    let n = endpoints.len();
    rt.block_on(async {
        let lb = Balancer::builder(policy)
            .default_rtt(default_rtt)
            .spawn(discover::fixed(endpoints), connect_fn(|ep: &Endpoint| index(ep.addr())));
        lb.ready_endpoints(n).await;
        lb
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime")
}

/// One request in flight: its guard, its endpoint, when it started.
struct Pending {
    guard: InFlight,
    endpoint: usize,
    started: u64,
}

/// Runs the closed loop of `workload` under `policy`.
///
/// Hash-keyed policies get a random key per request.
///
/// # Panics
///
/// If the workload has no endpoints or a concurrency of 0.
pub fn run<P: Balance>(policy: P, workload: &Workload, pace: Pace) -> Report {
    assert!(!workload.endpoints.is_empty(), "a workload needs endpoints");
    assert!(workload.concurrency > 0, "a workload needs a concurrency of at least 1");
    let name = policy.name();
    let scale = match pace {
        Pace::Simulated => 1.0,
        Pace::RealTime { scale } => scale,
    };
    let rt = runtime();
    let weights: Vec<u32> = workload.endpoints.iter().map(|e| e.weight).collect();
    let lb = balancer(&rt, policy, &weights, Duration::from_secs_f64(0.010 * scale));
    let mut rng = SimRng::new(workload.seed);
    let mut served = vec![0u64; workload.endpoints.len()];
    let mut latencies = Vec::with_capacity(workload.requests);
    // Completion events: (due time in simulated ns, sequence number) -> slot.
    let mut queue: BinaryHeap<Reverse<(u64, u64, usize)>> = BinaryHeap::new();
    let mut slots: Vec<Option<Pending>> = Vec::with_capacity(workload.concurrency);
    let mut free: Vec<usize> = Vec::new();
    let mut started = 0usize;
    let mut seq = 0u64;
    let mut now = 0u64;
    let mut max_lag = Duration::ZERO;
    let mut total_lag = Duration::ZERO;
    let wall = Instant::now();

    let mut start_one = |now: u64,
                         rng: &mut SimRng,
                         queue: &mut BinaryHeap<Reverse<(u64, u64, usize)>>,
                         slots: &mut Vec<Option<Pending>>,
                         free: &mut Vec<usize>| {
        let picked = lb
            .pick(Some(rng.next_u64()))
            .expect("every simulated endpoint stays eligible");
        let endpoint = picked.service;
        let latency = rng.exponential(workload.endpoints[endpoint].mean).as_nanos() as u64;
        let pending = Pending {
            guard: picked.guard,
            endpoint,
            started: now,
        };
        let slot = match free.pop() {
            Some(s) => {
                slots[s] = Some(pending);
                s
            }
            None => {
                slots.push(Some(pending));
                slots.len() - 1
            }
        };
        seq += 1;
        queue.push(Reverse((now + latency.max(1), seq, slot)));
    };

    while started < workload.requests.min(workload.concurrency) {
        start_one(now, &mut rng, &mut queue, &mut slots, &mut free);
        started += 1;
    }
    while let Some(Reverse((due, _, slot))) = queue.pop() {
        now = due;
        if let Pace::RealTime { scale } = pace {
            let target = Duration::from_secs_f64(now as f64 * 1e-9 * scale);
            let mut elapsed = wall.elapsed();
            let lag = elapsed.saturating_sub(target);
            max_lag = max_lag.max(lag);
            total_lag += lag;
            while elapsed < target {
                std::hint::spin_loop();
                elapsed = wall.elapsed();
            }
        }
        let done = slots[slot].take().expect("a due event has its request");
        free.push(slot);
        served[done.endpoint] += 1;
        latencies.push(Duration::from_nanos(now - done.started));
        // The response arrived: the request is over for the balancer too, a success.
        let mut guard = done.guard;
        guard.succeed();
        drop(guard);
        if started < workload.requests {
            start_one(now, &mut rng, &mut queue, &mut slots, &mut free);
            started += 1;
        }
    }
    let mean_lag = total_lag / latencies.len().max(1) as u32;
    latencies.sort_unstable();
    Report {
        policy: name,
        served,
        latencies,
        makespan: Duration::from_nanos(now),
        max_lag,
        mean_lag,
    }
}

/// The outcome of one balls-into-bins throw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bins {
    /// Requests held by each endpoint.
    pub loads: Vec<u32>,
}

impl Bins {
    /// The most any endpoint holds.
    pub fn max(&self) -> u32 {
        self.loads.iter().copied().max().unwrap_or(0)
    }

    /// How many endpoints hold exactly `k`, for `k` from 0 to the maximum.
    pub fn histogram(&self) -> Vec<usize> {
        let mut h = vec![0usize; self.max() as usize + 1];
        for &l in &self.loads {
            h[l as usize] += 1;
        }
        h
    }
}

/// Throws `n` requests that never complete at `n` endpoints of weight 1 under `policy`
/// (through a real balancer, so every pick sees the in-flight counts of the picks before
/// it) and returns how many each endpoint holds.
///
/// # Panics
///
/// If `n` is 0 or above 2^24.
pub fn max_load<P: Balance>(policy: P, n: usize) -> Bins {
    assert!(n > 0 && n < 1 << 24, "n must be in 1..2^24");
    let rt = runtime();
    let lb = balancer(&rt, policy, &vec![1; n], Duration::from_millis(10));
    let mut loads = vec![0u32; n];
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let picked = lb.pick(None).expect("every endpoint stays eligible");
        loads[picked.service] += 1;
        held.push(picked.guard);
    }
    // The library counted the same: each endpoint's in-flight count is its load.
    for g in &held {
        debug_assert_eq!(g.endpoint().in_flight(), loads[index(g.endpoint().endpoint().addr())]);
    }
    drop(held);
    Bins { loads }
}

/// The most loaded endpoint that theory predicts for `n` balls in `n` bins: one random
/// choice gives about `ln n / ln ln n` (the Θ; the exact maximum is larger by a
/// lower-order term), two choices give `ln ln n / ln 2` plus a constant.
pub fn predicted(n: usize) -> (f64, f64) {
    let ln = (n as f64).ln();
    (ln / ln.ln(), ln.ln() / std::f64::consts::LN_2)
}
