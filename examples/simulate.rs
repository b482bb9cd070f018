//! Every policy in a discrete-event simulation: who gets the traffic, what latency the
//! callers see, and the power-of-two-choices result.
//!
//! ```text
//! cargo run --release -p examples --example simulate
//! ```
//!
//! Ten simulated endpoints answer after exponential latencies with means from 1 ms to
//! 15 ms, and one is slow (250 ms). 100,000 requests run in a closed loop, 100 at a
//! time, through a real lb-core `Balancer` per policy: every pick is the library's own,
//! and each request holds its in-flight guard until its simulated response arrives. The
//! clock is simulated, so a run takes a fraction of a second and repeats exactly.
//!
//! Peak EWMA reads the process clock, so its run is paced in real time at one tenth
//! of the simulated speed (see the `sim` module docs); the other policies run unpaced.
//!
//! The second part throws 10,000 requests that never complete at 10,000 endpoints: the
//! most loaded endpoint holds 6 to 9 under random choice and 3 or 4 under the power of
//! two choices, as Mitzenmacher's analysis predicts.

use std::time::Duration;

use examples::sim::{self, Pace, Report, Workload};
use lb_core::balance::{LeastConn, Maglev, P2c, PeakEwma, PendingRequests, Random, RoundRobin, WeightedRoundRobin};

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn header(workload: &Workload) {
    let ids: Vec<String> = (0..workload.endpoints.len()).map(|i| format!("{i:>5}")).collect();
    let means: Vec<String> = workload
        .endpoints
        .iter()
        .map(|e| format!("{:>5}", e.mean.as_millis()))
        .collect();
    println!("{:<28} {}", "endpoint", ids.join(""));
    println!("{:<28} {}", "mean latency (ms)", means.join(""));
    println!(
        "{:<28} {}   {:>7} {:>7} {:>7} {:>8}",
        "policy: share of requests %",
        " ".repeat(5 * workload.endpoints.len()),
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "req/s"
    );
}

fn row(label: &str, r: &Report) {
    let shares: Vec<String> = (0..r.served.len())
        .map(|i| format!("{:>5.1}", 100.0 * r.share(i)))
        .collect();
    println!(
        "{:<28} {}   {:>7} {:>7} {:>7} {:>8.0}",
        label,
        shares.join(""),
        ms(r.quantile(0.50)),
        ms(r.quantile(0.99)),
        ms(r.quantile(0.999)),
        r.throughput()
    );
}

fn main() {
    let w = Workload::skewed();
    println!(
        "{} requests, {} in flight, {} endpoints (simulated time)\n",
        w.requests,
        w.concurrency,
        w.endpoints.len()
    );
    header(&w);
    let seed = 7;
    row("round_robin", &sim::run(RoundRobin::new(), &w, Pace::Simulated));
    let weighted = w.weighted_by_speed();
    row(
        "weighted_round_robin*",
        &sim::run(WeightedRoundRobin::new(), &weighted, Pace::Simulated),
    );
    row("random", &sim::run(Random::from_seed(seed), &w, Pace::Simulated));
    row("consistent_hash", &sim::run(Maglev::new(), &w, Pace::Simulated));
    row(
        "consistent_hash (bound 1.25)",
        &sim::run(Maglev::bounded(1.25), &w, Pace::Simulated),
    );
    row("least_conn", &sim::run(LeastConn::new(), &w, Pace::Simulated));
    row(
        "p2c (pending requests)",
        &sim::run(P2c::from_seed(PendingRequests, seed), &w, Pace::Simulated),
    );
    let scale = 0.1;
    let ewma = P2c::from_seed(PeakEwma::new(Duration::from_secs_f64(10.0 * scale)), seed);
    let paced = sim::run(ewma, &w, Pace::RealTime { scale });
    row("p2c (peak EWMA)**", &paced);
    println!();
    let weights: Vec<String> = weighted.endpoints.iter().map(|e| e.weight.to_string()).collect();
    println!(
        "*  weights set by hand in inverse proportion to mean latency: {}",
        weights.join(", ")
    );
    println!(
        "** paced in real time at {scale}x, since peak EWMA measures latency with the process clock; events ran \
         {:.1} µs late on average (at most {:.0} µs)",
        paced.mean_lag.as_secs_f64() * 1e6,
        paced.max_lag.as_secs_f64() * 1e6
    );

    let n = 10_000;
    let (random_theory, p2c_theory) = sim::predicted(n);
    println!("\n{n} requests that never complete, thrown at {n} endpoints: the most loaded endpoint holds");
    for seed in 1..=5 {
        let random = sim::max_load(Random::from_seed(seed), n);
        let p2c = sim::max_load(P2c::from_seed(PendingRequests, seed), n);
        println!(
            "  seed {seed}: random {:>2} (endpoints by load {:?}), p2c {:>2} ({:?})",
            random.max(),
            random.histogram(),
            p2c.max(),
            p2c.histogram()
        );
    }
    println!(
        "  theory: random Θ(ln n / ln ln n) = {random_theory:.1} up to lower-order terms (6 to 9 in practice); \
         p2c ln ln n / ln 2 + O(1) = {p2c_theory:.1} + O(1)"
    );
}
