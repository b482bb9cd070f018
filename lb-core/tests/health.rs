//! Health through a real `Balancer`: no policy ever picks an ejected, unhealthy or
//! draining endpoint (unless panic mode applies, and never a draining one); passive
//! outlier detection with growing backoff, re-admission and its cap; the panic
//! threshold; active checks with rise and fall; slow start.

mod support;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use lb_core::balance::{
    Balance, LeastConn, Maglev, P2c, PeakEwma, PendingRequests, Random, RoundRobin, WeightedRoundRobin,
};
use lb_core::discover;
use lb_core::health::{CheckConfig, OutlierConfig, ProbeError, SlowStart};
use lb_core::{Balancer, Endpoint, Health, Picked};
use tokio::time::Instant;
use tower::ServiceExt;

use support::{
    backends, ep, ep_w, eventually, health_of, healthy_backends, id, index_of, scripted, settle, status_of, Act,
    Backend, Script, Scripted, Switches,
};

const STEP: Duration = Duration::from_millis(10);

/// A health check that fails for every endpoint whose switch is on.
fn probe(
    down: &Arc<Switches>,
) -> impl Fn(&Endpoint) -> std::future::Ready<Result<(), ProbeError>> + Send + Sync + 'static {
    let down = down.clone();
    move |ep: &Endpoint| {
        std::future::ready(if down.get(index_of(ep)) {
            Err(ProbeError("down".into()))
        } else {
            Ok(())
        })
    }
}

fn fast_checks(rise: u32, fall: u32) -> CheckConfig {
    CheckConfig {
        interval: Duration::from_millis(10),
        timeout: Duration::from_millis(5),
        rise,
        fall,
    }
}

fn outliers(consecutive_failures: u32, base: Duration, max: Duration, percent: f64) -> OutlierConfig {
    OutlierConfig {
        consecutive_failures,
        base_ejection: base,
        max_ejection: max,
        max_ejection_percent: percent,
    }
}

// === no policy picks an endpoint that is out ===

/// Six endpoints: 1 fails its active check, 2 is drained by the operator, 3 fails its
/// requests until outlier detection ejects it, 4 is removed by discovery while a
/// request holds it (draining). Without panic mode only 0 and 5 may be picked; with
/// panic mode (threshold above the 2 of 4 active endpoints that are eligible), 1 and
/// 3 come back, never 2 or 4.
async fn never_picks_an_endpoint_that_is_out<P: Balance>(policy: P, panic: bool) {
    let name = policy.name();
    let down = Switches::new();
    down.set(1, true);
    let failing = Switches::new();
    failing.set(3, true);
    let (publisher, subscription) = discover::channel();
    publisher.reset((0..6).map(ep));
    let lb = Balancer::builder(policy)
        .health_check(probe(&down), fast_checks(1, 1))
        .outlier_detection(outliers(3, Duration::from_secs(3600), Duration::from_secs(3600), 0.5))
        .panic_threshold(if panic { 0.75 } else { 0.0 })
        // Peak EWMA: an initial estimate as high as the failure penalty (1 s), so that
        // endpoint 3's failed requests, which record that penalty, do not set it far
        // apart from the others before outlier detection ejects it.
        .default_rtt(Duration::from_secs(1))
        .spawn(subscription, backends(failing.clone()));
    // Requests that end the moment they start leave every load equal, and peak EWMA
    // then settles on sub-nanosecond differences between estimates; a window of
    // requests held in flight gives the load-aware policies something to balance.
    let mut window: VecDeque<Picked<Backend>> = VecDeque::new();
    let mut hold = |mut p: Picked<Backend>| {
        if failing.get(p.service.idx) {
            // Requests to endpoint 3 fail, whichever way they are made.
            p.guard.fail();
        }
        window.push_back(p);
        if window.len() > 8 {
            window.pop_front();
        }
    };
    eventually("endpoint 1 unhealthy", STEP, 20, || {
        health_of(&lb, 1) == Some(Health::Unhealthy)
    })
    .await;
    for k in 0..2_000u64 {
        if health_of(&lb, 3) == Some(Health::Ejected) {
            break;
        }
        // Keys vary so that consistent hashing reaches every endpoint.
        let _ = lb.clone().oneshot(k).await;
        if let Ok(p) = lb.pick(Some(k.wrapping_mul(0x9E37_79B9_7F4A_7C15))) {
            hold(p);
        }
        settle().await;
    }
    assert_eq!(health_of(&lb, 3), Some(Health::Ejected), "{name}: endpoint 3 ejected");
    lb.drain(id(2)).await.unwrap();
    let mut held = None;
    for k in 0..10_000u64 {
        let p = lb.pick(Some(k)).expect("eligible endpoints remain");
        if p.service.idx == 4 {
            held = Some(p);
            break;
        }
        hold(p);
    }
    let held = held.unwrap_or_else(|| panic!("{name}: endpoint 4 never picked"));
    publisher.remove(id(4));
    eventually("endpoint 4 draining", STEP, 20, || {
        health_of(&lb, 4) == Some(Health::Draining)
    })
    .await;
    settle().await;

    let status = lb.status();
    let health: Vec<_> = (0..6).map(|i| support::find(&status, i).unwrap().health).collect();
    assert_eq!(
        health,
        [
            Health::Healthy,
            Health::Unhealthy,
            Health::Draining,
            Health::Ejected,
            Health::Draining,
            Health::Healthy
        ],
        "{name}"
    );
    assert_eq!(status.panic, panic, "{name}");
    let allowed: BTreeSet<usize> = if panic { [0, 1, 3, 5].into() } else { [0, 5].into() };
    assert_eq!(lb.eligible(), allowed.len(), "{name}");
    let mut seen = BTreeSet::new();
    for k in 0..2_000u64 {
        let p = lb
            .pick(Some(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .expect("eligible endpoints remain");
        assert!(
            allowed.contains(&p.service.idx),
            "{name} (panic {panic}) picked endpoint {}",
            p.service.idx
        );
        seen.insert(p.service.idx);
        hold(p);
    }
    for k in 0..200u64 {
        let got = lb.clone().oneshot(k).await;
        if let Ok(i) = got {
            assert!(allowed.contains(&i), "{name} called endpoint {i}");
        }
    }
    let ewma: Vec<_> = lb
        .status()
        .endpoints
        .iter()
        .map(|e| (e.id.to_string(), e.ewma_latency))
        .collect();
    assert_eq!(
        seen, allowed,
        "{name}: every allowed endpoint is used; latencies {ewma:?}"
    );
    drop(window);
    drop(held);
}

macro_rules! never_picks_out {
    ($($name:ident => $policy:expr,)*) => {
        $(
            #[tokio::test(start_paused = true)]
            async fn $name() {
                never_picks_an_endpoint_that_is_out($policy, false).await;
                never_picks_an_endpoint_that_is_out($policy, true).await;
            }
        )*
    };
}

never_picks_out! {
    round_robin_never_picks_out => RoundRobin::new(),
    wrr_never_picks_out => WeightedRoundRobin::new(),
    least_conn_never_picks_out => LeastConn::new(),
    p2c_never_picks_out => P2c::from_seed(PendingRequests, 7),
    peak_ewma_never_picks_out => P2c::from_seed(PeakEwma::default(), 7),
    random_never_picks_out => Random::from_seed(7),
    maglev_never_picks_out => Maglev::new(),
    maglev_bounded_never_picks_out => Maglev::bounded(1.25),
}

// === passive outlier detection ===

#[tokio::test(start_paused = true)]
async fn outlier_ejection_backs_off_and_re_admits() {
    let failing = Switches::new();
    failing.set(0, true);
    let base = Duration::from_secs(10);
    let lb = Balancer::builder(RoundRobin::new())
        .outlier_detection(outliers(3, base, Duration::from_secs(25), 0.5))
        .spawn(discover::fixed([ep(0), ep(1)]), backends(failing.clone()));
    lb.ready_endpoints(2).await;
    // The k-th ejection lasts k * 10 s, capped at 25 s.
    for (k, expected) in [(1, 10), (2, 20), (3, 25)] {
        let mut calls = 0;
        while health_of(&lb, 0) != Some(Health::Ejected) {
            assert!(calls < 20, "ejection {k}: never ejected");
            let _ = lb.clone().oneshot(()).await;
            settle().await;
            calls += 1;
        }
        let ejected_at = Instant::now();
        let s = status_of(&lb, 0);
        assert_eq!(s.times_ejected, k, "ejection {k}");
        assert_eq!(lb.eligible(), 1);
        for _ in 0..10 {
            assert_eq!(
                lb.clone().oneshot(()).await.unwrap(),
                1,
                "an ejected endpoint takes nothing"
            );
        }
        let lasts = Duration::from_secs(expected);
        tokio::time::sleep_until(ejected_at + lasts - Duration::from_millis(100)).await;
        assert_eq!(health_of(&lb, 0), Some(Health::Ejected), "ejection {k} lasts {lasts:?}");
        tokio::time::sleep_until(ejected_at + lasts + Duration::from_millis(100)).await;
        assert_eq!(
            health_of(&lb, 0),
            Some(Health::Unknown),
            "ejection {k} over after {lasts:?}"
        );
        assert_eq!(lb.eligible(), 2);
    }
    // Recovered, it serves again and stays in.
    failing.set(0, false);
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        seen.insert(lb.clone().oneshot(()).await.unwrap());
    }
    assert_eq!(seen, BTreeSet::from([0, 1]));
    assert_eq!(health_of(&lb, 0), Some(Health::Unknown));
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_failure_streak() {
    let failing = Switches::new();
    let lb = Balancer::builder(RoundRobin::new())
        .outlier_detection(outliers(3, Duration::from_secs(10), Duration::from_secs(60), 0.5))
        .spawn(discover::fixed([ep(0)]), backends(failing.clone()));
    lb.ready_endpoints(1).await;
    for _ in 0..5 {
        failing.set(0, true);
        let _ = lb.clone().oneshot(()).await;
        let _ = lb.clone().oneshot(()).await;
        failing.set(0, false);
        lb.clone().oneshot(()).await.unwrap();
        settle().await;
    }
    let s = status_of(&lb, 0);
    assert_eq!((s.health, s.failures, s.times_ejected), (Health::Unknown, 10, 0));
}

#[tokio::test(start_paused = true)]
async fn max_ejection_percent_caps_ejections() {
    // (share, endpoints, most that may be out at once)
    for (percent, n, cap) in [(0.5, 4, 2), (0.25, 4, 1), (0.0, 3, 1), (0.5, 3, 1), (1.0, 3, 3)] {
        let failing = Switches::new();
        for i in 0..n {
            failing.set(i, true);
        }
        let lb = Balancer::builder(RoundRobin::new())
            .outlier_detection(outliers(2, Duration::from_secs(600), Duration::from_secs(600), percent))
            .spawn(discover::fixed((0..n).map(ep)), backends(failing.clone()));
        lb.ready_endpoints(n).await;
        for _ in 0..(10 * n) {
            let _ = lb.clone().oneshot(()).await;
            settle().await;
        }
        let status = lb.status();
        let ejected = status.endpoints.iter().filter(|e| e.health == Health::Ejected).count();
        assert_eq!(ejected, cap, "{percent} of {n}: {status:#?}");
        assert!(
            status.endpoints.iter().all(|e| e.failures >= 2),
            "every endpoint failed often enough to be ejected: {status:#?}"
        );
        assert_eq!(lb.eligible(), n - cap);
    }
}

// === panic threshold ===

#[tokio::test(start_paused = true)]
async fn panic_threshold_balances_over_all_when_too_few_are_healthy() {
    let down = Switches::new();
    let lb = Balancer::builder(RoundRobin::new())
        .health_check(probe(&down), fast_checks(1, 1))
        .panic_threshold(0.5)
        .spawn(discover::fixed((0..4).map(ep)), healthy_backends());
    eventually("all healthy", STEP, 20, || {
        (0..4).all(|i| health_of(&lb, i) == Some(Health::Healthy))
    })
    .await;
    assert!(!lb.status().panic);

    // 3 of 4 out: 1 eligible < 0.5 * 4. Panic: all four take requests.
    for i in 0..3 {
        down.set(i, true);
    }
    eventually("three unhealthy", STEP, 20, || {
        (0..3).all(|i| health_of(&lb, i) == Some(Health::Unhealthy))
    })
    .await;
    settle().await;
    let status = lb.status();
    assert!(status.panic, "{status:#?}");
    assert_eq!(lb.eligible(), 4);
    let seen: BTreeSet<usize> = (0..4).map(|_| lb.pick(None).unwrap().service.idx).collect();
    assert_eq!(seen, BTreeSet::from([0, 1, 2, 3]));

    // 2 of 4 eligible is not below half: panic over, only the healthy ones.
    down.set(2, false);
    eventually("panic over", STEP, 20, || !lb.status().panic).await;
    assert_eq!(lb.eligible(), 2);
    for _ in 0..20 {
        let i = lb.pick(None).unwrap().service.idx;
        assert!(i == 2 || i == 3, "picked unhealthy endpoint {i}");
    }
}

#[tokio::test(start_paused = true)]
async fn without_a_panic_threshold_all_unhealthy_means_no_endpoints() {
    let down = Switches::new();
    for i in 0..3 {
        down.set(i, true);
    }
    let lb = Balancer::builder(RoundRobin::new())
        .health_check(probe(&down), fast_checks(1, 1))
        .spawn(discover::fixed((0..3).map(ep)), healthy_backends());
    eventually("all unhealthy", STEP, 20, || {
        (0..3).all(|i| health_of(&lb, i) == Some(Health::Unhealthy))
    })
    .await;
    settle().await;
    assert!(!lb.status().panic);
    assert!(!lb.pick(None).expect_err("no endpoint is eligible").is_overloaded());
    let err = lb.clone().oneshot(()).await.unwrap_err();
    assert!(lb_core::error::is_no_endpoints(&*err));
}

// === active checks ===

#[tokio::test(start_paused = true)]
async fn active_checks_follow_rise_and_fall() {
    let down = Switches::new();
    let check = CheckConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(50),
        rise: 2,
        fall: 2,
    };
    let lb = Balancer::builder(RoundRobin::new())
        .health_check(probe(&down), check)
        .spawn(discover::fixed([ep(0), ep(1)]), healthy_backends());
    lb.ready_endpoints(2).await;
    let t0 = Instant::now();
    // Probes run at 0, 100, 200, ... ms; look between them.
    let at = |ms: u64| tokio::time::sleep_until(t0 + Duration::from_millis(ms));
    at(50).await;
    assert_eq!(
        health_of(&lb, 0),
        Some(Health::Unknown),
        "one pass is not enough to rise"
    );
    at(150).await;
    assert_eq!(health_of(&lb, 0), Some(Health::Healthy));
    down.set(0, true);
    at(250).await;
    assert_eq!(
        health_of(&lb, 0),
        Some(Health::Healthy),
        "one failure is not enough to fall"
    );
    at(350).await;
    assert_eq!(health_of(&lb, 0), Some(Health::Unhealthy));
    assert_eq!(lb.eligible(), 1);
    let last = status_of(&lb, 0).last_check.expect("a check ran");
    assert!(!last.ok);
    assert_eq!(last.error.as_deref(), Some("down"));
    down.set(0, false);
    at(450).await;
    assert_eq!(
        health_of(&lb, 0),
        Some(Health::Unhealthy),
        "one pass is not enough to rise"
    );
    at(550).await;
    assert_eq!(health_of(&lb, 0), Some(Health::Healthy));
    assert_eq!(lb.eligible(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_hangs_times_out_and_fails() {
    let hang = |_: &Endpoint| std::future::pending::<Result<(), ProbeError>>();
    let lb = Balancer::builder(RoundRobin::new())
        .health_check(hang, fast_checks(1, 1))
        .spawn(discover::fixed([ep(0)]), healthy_backends());
    eventually("unhealthy", STEP, 20, || health_of(&lb, 0) == Some(Health::Unhealthy)).await;
    let err = status_of(&lb, 0).last_check.unwrap().error.unwrap();
    assert!(err.contains("timed out"), "{err}");
}

// === slow start ===

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_late_endpoint() {
    let window = Duration::from_secs(10);
    let (publisher, subscription) = discover::channel();
    let lb = Balancer::builder(WeightedRoundRobin::new())
        .slow_start(SlowStart::new(window))
        .spawn(subscription, healthy_backends());
    publisher.reset([ep_w(0, 10), ep_w(1, 10)]);
    lb.ready_endpoints(2).await;
    assert_eq!(
        status_of(&lb, 0).effective_weight,
        Some(10.0),
        "the first set starts at full weight"
    );

    publisher.insert(ep_w(2, 10));
    lb.ready_endpoints(3).await;
    let t0 = Instant::now();
    assert_eq!(
        status_of(&lb, 2).effective_weight,
        Some(1.0),
        "a late endpoint starts at 10%"
    );
    let mut prev = 1.0;
    for s in 1..=12u64 {
        tokio::time::sleep_until(t0 + Duration::from_millis(s * 1000 - 300)).await;
        let w = status_of(&lb, 2).effective_weight.unwrap();
        // Published every window / 16 = 625 ms, so at most that far behind, and
        // rounded to 1 / WEIGHT_SCALE.
        let t = (s * 1000 - 300) as f64 / 1000.0;
        let hi = 10.0 * (t / 10.0).clamp(0.1, 1.0) + 0.07;
        let lo = 10.0 * ((t - 0.7) / 10.0).clamp(0.1, 1.0) - 0.07;
        assert!(w >= lo && w <= hi, "at {t} s effective weight {w}, expected {lo}..{hi}");
        assert!(w >= prev, "the ramp only goes up: {prev} then {w}");
        prev = w;
    }
    assert_eq!(status_of(&lb, 2).effective_weight, Some(10.0));
    assert_eq!(status_of(&lb, 0).effective_weight, Some(10.0));
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_an_endpoint_back_from_ejection() {
    let failing = Switches::new();
    failing.set(0, true);
    let lb = Balancer::builder(RoundRobin::new())
        .slow_start(SlowStart::new(Duration::from_secs(10)))
        .outlier_detection(outliers(2, Duration::from_secs(5), Duration::from_secs(5), 0.5))
        .spawn(discover::fixed([ep_w(0, 4), ep_w(1, 4)]), backends(failing.clone()));
    lb.ready_endpoints(2).await;
    assert_eq!(status_of(&lb, 0).effective_weight, Some(4.0));
    for _ in 0..10 {
        let _ = lb.clone().oneshot(()).await;
        settle().await;
    }
    assert_eq!(health_of(&lb, 0), Some(Health::Ejected));
    failing.set(0, false);
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    let w = status_of(&lb, 0).effective_weight.expect("back in rotation");
    assert!(w < 1.0, "a recovered endpoint ramps from 10%: {w}");
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(status_of(&lb, 0).effective_weight, Some(4.0));
}

// === outlier detection is on by default ===

#[tokio::test(start_paused = true)]
async fn outlier_detection_is_on_by_default() {
    let failing = Switches::new();
    failing.set(0, true);
    // Nothing configured.
    let lb = Balancer::builder(RoundRobin::new()).spawn(discover::fixed([ep(0), ep(1)]), backends(failing.clone()));
    lb.ready_endpoints(2).await;
    let mut failures = 0;
    while failures < 5 {
        if lb.clone().oneshot(()).await.is_err() {
            failures += 1;
        }
    }
    eventually("ejected after 5 failures in a row", STEP, 10, || {
        health_of(&lb, 0) == Some(Health::Ejected)
    })
    .await;
    let s = status_of(&lb, 0);
    assert_eq!((s.failures, s.times_ejected), (5, 1));
    // The default's first ejection lasts 10 s.
    let d = OutlierConfig::default();
    assert_eq!((d.consecutive_failures, d.base_ejection), (5, Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(health_of(&lb, 0), Some(Health::Ejected));
    eventually("re-admitted after 10 s", STEP, 200, || {
        health_of(&lb, 0) == Some(Health::Unknown)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn outlier_detection_can_be_turned_off() {
    let failing = Switches::new();
    failing.set(0, true);
    let off = OutlierConfig {
        consecutive_failures: 0,
        ..OutlierConfig::default()
    };
    for (how, lb) in [
        (
            "None",
            Balancer::builder(RoundRobin::new())
                .outlier_detection(None)
                .spawn(discover::fixed([ep(0), ep(1)]), backends(failing.clone())),
        ),
        (
            "consecutive_failures = 0",
            Balancer::builder(RoundRobin::new())
                .outlier_detection(off)
                .spawn(discover::fixed([ep(0), ep(1)]), backends(failing.clone())),
        ),
    ] {
        lb.ready_endpoints(2).await;
        for _ in 0..40 {
            let _ = lb.clone().oneshot(()).await;
        }
        // The positive event: the failing endpoint still takes its turn, half of every
        // round, long after five failures in a row would have ejected it.
        let s = status_of(&lb, 0);
        assert_eq!((s.failures, s.requests), (20, 20), "{how}");
        for _ in 0..40 {
            let _ = lb.clone().oneshot(()).await;
        }
        let s = status_of(&lb, 0);
        assert_eq!(
            (s.failures, s.requests, s.times_ejected),
            (40, 40, 0),
            "{how}: still in rotation"
        );
        assert_eq!(lb.eligible(), 2, "{how}");
    }
}

// === the latency estimate penalises failures ===

/// Peak EWMA with outlier detection off: endpoint 0 fails every request in 1 ms,
/// endpoint 1 answers in 10 ms. Were a fast failure a fast answer (or no answer at all,
/// with the estimate decaying to zero), endpoint 0 would take nearly everything; it is
/// charged the failure penalty instead and takes a small share.
#[tokio::test(start_paused = true)]
async fn peak_ewma_sends_little_to_an_endpoint_that_fails_fast() {
    for seed in [1, 2, 3] {
        let script = Script::new();
        script.set(0, Act::Fail, Duration::from_millis(1));
        script.set(1, Act::Answer, Duration::from_millis(10));
        let lb = Balancer::builder(P2c::from_seed(PeakEwma::default(), seed))
            .outlier_detection(None)
            .spawn(discover::fixed([ep(0), ep(1)]), scripted(script.clone()));
        lb.ready_endpoints(2).await;
        // Eight clients, each sending one request after another, for 20 s (or 20 000
        // requests, so that a failing run fails fast too).
        let end = Instant::now() + Duration::from_secs(20);
        let calls = std::cell::Cell::new(0u32);
        let client = |lb: Balancer<P2c<PeakEwma>, Scripted>| {
            let calls = &calls;
            async move {
                while Instant::now() < end && calls.get() < 20_000 {
                    calls.set(calls.get() + 1);
                    let _ = lb.clone().oneshot(()).await;
                }
            }
        };
        futures_util::future::join_all((0..8).map(|_| client(lb.clone()))).await;
        let (fails, answers) = (status_of(&lb, 0), status_of(&lb, 1));
        assert_eq!(fails.failures, fails.requests, "seed {seed}");
        assert!(
            answers.requests > 5_000,
            "seed {seed}: endpoint 1 served {}",
            answers.requests
        );
        assert!(
            fails.requests * 100 < answers.requests,
            "seed {seed}: the failing endpoint got {} requests, the good one {} (estimates {:?} and {:?})",
            fails.requests,
            answers.requests,
            fails.ewma_latency,
            answers.ewma_latency
        );
        assert!(
            fails.ewma_latency > answers.ewma_latency * 10,
            "seed {seed}: {:?} vs {:?}",
            fails.ewma_latency,
            answers.ewma_latency
        );
    }
}

/// A failure's latency sample is its time, but at least the penalty: a fast failure
/// records the penalty, a timeout longer than the penalty records the timeout.
#[tokio::test(start_paused = true)]
async fn a_failure_records_at_least_the_penalty() {
    let script = Script::new();
    let lb = Balancer::builder(RoundRobin::new())
        .track_latency(true)
        .default_rtt(Duration::from_millis(5))
        .failure_penalty(Duration::from_millis(200))
        .timeout(Duration::from_millis(300))
        .outlier_detection(None)
        .spawn(discover::fixed([ep(0)]), scripted(script.clone()));
    lb.ready_endpoints(1).await;
    let ewma = || status_of(&lb, 0).ewma_latency;
    script.set(0, Act::Answer, Duration::from_millis(20));
    lb.clone().oneshot(()).await.unwrap();
    assert_eq!(ewma(), Duration::from_millis(20), "a success records its time");
    script.set(0, Act::Fail, Duration::from_millis(1));
    lb.clone().oneshot(()).await.unwrap_err();
    assert_eq!(ewma(), Duration::from_millis(200), "a fast failure records the penalty");
    script.set(0, Act::Hang, Duration::ZERO);
    lb.clone().oneshot(()).await.unwrap_err();
    assert_eq!(ewma(), Duration::from_millis(300), "a timeout records its time");
}

// === a probe lets go of endpoints that leave ===

/// A check that passes and records the endpoints it was told to forget.
#[derive(Clone, Default)]
struct Forgetful(Arc<std::sync::Mutex<Vec<Endpoint>>>);

impl lb_core::health::HealthCheck for Forgetful {
    fn check(&self, _: &Endpoint) -> lb_core::health::BoxFuture<Result<(), ProbeError>> {
        Box::pin(async { Ok(()) })
    }

    fn forget(&self, endpoint: &Endpoint) {
        self.0.lock().unwrap().push(endpoint.clone());
    }
}

#[tokio::test(start_paused = true)]
async fn a_probe_forgets_an_endpoint_that_leaves_or_moves() {
    let check = Forgetful::default();
    let (publisher, subscription) = discover::channel();
    let lb = Balancer::builder(RoundRobin::new())
        .health_check(check.clone(), fast_checks(1, 1))
        .spawn(subscription, healthy_backends());
    publisher.reset([ep(0), ep(1)]);
    lb.ready_endpoints(2).await;
    assert!(check.0.lock().unwrap().is_empty(), "nothing left yet");
    publisher.remove(id(1));
    let forgot = || check.0.lock().unwrap().iter().map(|e| e.addr()).collect::<Vec<_>>();
    eventually("endpoint 1 forgotten", STEP, 10, || forgot() == [ep(1).addr()]).await;
    // A new address: the old one is forgotten, the endpoint stays.
    publisher.insert(Endpoint::new(ep(5).addr()).with_id(id(0)));
    eventually("endpoint 0's old address forgotten", STEP, 10, || {
        forgot() == [ep(1).addr(), ep(0).addr()]
    })
    .await;
    assert_eq!(lb.eligible(), 1);
}
