//! Concurrency: many tasks call a balancer on a multi-thread runtime while another task
//! churns its endpoints through `discover::channel()`. No request reaches an endpoint
//! whose removal was published before the request started, no call fails, and every
//! in-flight count returns to zero.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lb_core::balance::{Balance, LeastConn, Maglev, P2c, PeakEwma, RoundRobin, WeightedRoundRobin};
use lb_core::{connect_fn, discover, Balancer, Endpoint, Health, KeyFn};
use tower::{Service, ServiceExt};

use support::{ep_w, find, id, index_of};

/// Unique endpoint ids used over one run: each is inserted once and removed once, so
/// "called after its removal" has one meaning.
const IDS: usize = 240;
const TASKS: u64 = 4;
const CALLS_PER_TASK: u64 = 5_000;
const LIVE: usize = 6;

/// What the test and the endpoints share.
#[derive(Debug)]
struct Tracker {
    /// A logical clock, advanced only by the churn task, once per published removal.
    clock: AtomicU64,
    /// For each endpoint, the clock value at which its removal was seen published;
    /// 0 while it is live.
    removed_at: Vec<AtomicU64>,
    calls: Vec<AtomicU64>,
    violations: AtomicU64,
    first_violation: std::sync::Mutex<Option<String>>,
    done: AtomicBool,
}

impl Tracker {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            clock: AtomicU64::new(0),
            removed_at: (0..IDS).map(|_| AtomicU64::new(0)).collect(),
            calls: (0..IDS).map(|_| AtomicU64::new(0)).collect(),
            violations: AtomicU64::new(0),
            first_violation: std::sync::Mutex::new(None),
            done: AtomicBool::new(false),
        })
    }
}

/// An endpoint's service. The request is the clock value read just before the caller
/// invoked the balancer; being called for a request that started after this endpoint's
/// removal was published is a violation. The response comes after a few yields, so
/// requests overlap the churn and removed endpoints really drain.
#[derive(Clone, Debug)]
struct Probe {
    idx: usize,
    tracker: Arc<Tracker>,
}

impl Service<u64> for Probe {
    type Response = usize;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<usize, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, started: u64) -> Self::Future {
        let t = &self.tracker;
        let nth = t.calls[self.idx].fetch_add(1, SeqCst);
        let removed = t.removed_at[self.idx].load(SeqCst);
        if removed != 0 && removed <= started {
            t.violations.fetch_add(1, SeqCst);
            let mut first = t.first_violation.lock().unwrap();
            first.get_or_insert_with(|| {
                format!(
                    "endpoint {} called for a request started at {started}, removal published at {removed}",
                    self.idx
                )
            });
        }
        let idx = self.idx;
        let yields = nth % 4;
        Box::pin(async move {
            for _ in 0..yields {
                tokio::task::yield_now().await;
            }
            Ok(idx)
        })
    }
}

/// Waits (at most 5 s) until `cond` holds, checking every millisecond: the churn loop's
/// pace is set by these waits, and it must take enough steps while the callers run.
async fn until(what: &str, cond: impl FnMut() -> bool) {
    lb_test_support::eventually_every(what, Duration::from_secs(5), Duration::from_millis(1), cond).await;
}

async fn churn_while_calling<P: Balance>(policy: P) {
    let name = policy.name();
    let tracker = Tracker::new();
    let (publisher, subscription) = discover::channel();
    publisher.reset((0..LIVE).map(|i| ep_w(i, 1 + i as u32 % 3)));
    let connect = {
        let tracker = tracker.clone();
        connect_fn(move |e: &Endpoint| Probe {
            idx: index_of(e),
            tracker: tracker.clone(),
        })
    };
    // The request (a clock value) doubles as the hash key, so Maglev spreads.
    let lb = Balancer::builder(policy)
        .protocol(KeyFn(|started: &u64| Some(started.wrapping_mul(0x9E37_79B9_7F4A_7C15))))
        .spawn(subscription, connect);
    lb.ready_endpoints(LIVE).await;

    let callers: Vec<_> = (0..TASKS)
        .map(|_| {
            let lb = lb.clone();
            let tracker = tracker.clone();
            tokio::spawn(async move {
                let mut failed = (0u64, None);
                for _ in 0..CALLS_PER_TASK {
                    // "Before its pick" means: the removal was seen published (the
                    // status shows the endpoint out of rotation or gone) before this
                    // call began. A removal published after that may race the pick, and
                    // a request picked before it legitimately finishes on a draining
                    // endpoint.
                    let started = tracker.clock.load(SeqCst);
                    if let Err(e) = lb.clone().oneshot(started).await {
                        failed.0 += 1;
                        failed.1.get_or_insert_with(|| format!("{e} ({:?})", lb.status()));
                    }
                }
                failed
            })
        })
        .collect();

    let churn = {
        let lb = lb.clone();
        let tracker = tracker.clone();
        tokio::spawn(async move {
            let mut steps = 0;
            for (oldest, next) in (LIVE..IDS).enumerate() {
                if tracker.done.load(SeqCst) {
                    break;
                }
                publisher.insert(ep_w(next, 1 + next as u32 % 3));
                until("an insert to be published", || {
                    find(&lb.status(), next).is_some_and(|e| e.effective_weight.is_some())
                })
                .await;
                publisher.remove(id(oldest));
                until("a removal to be published", || match find(&lb.status(), oldest) {
                    None => true,
                    Some(e) => e.effective_weight.is_none(),
                })
                .await;
                // The removal is published: stamp it, then advance the clock, so a
                // caller that reads the new clock value also sees the stamp.
                let seq = tracker.clock.load(SeqCst) + 1;
                tracker.removed_at[oldest].store(seq, SeqCst);
                tracker.clock.store(seq, SeqCst);
                steps += 1;
                tokio::task::yield_now().await;
            }
            steps
        })
    };

    let (mut failed, mut why) = (0, None);
    for c in callers {
        let (n, e) = c.await.unwrap();
        failed += n;
        why = why.or(e);
    }
    tracker.done.store(true, SeqCst);
    let steps = churn.await.unwrap();

    let first = tracker.first_violation.lock().unwrap().clone();
    assert_eq!(tracker.violations.load(SeqCst), 0, "{name}: {first:?}");
    assert_eq!(
        failed, 0,
        "{name}: calls failed although endpoints were always available: {why:?}"
    );
    let calls: u64 = tracker.calls.iter().map(|c| c.load(SeqCst)).sum();
    assert_eq!(calls, TASKS * CALLS_PER_TASK, "{name}");
    assert!(steps >= 5, "{name}: only {steps} churn steps ran during the calls");

    // Every request is over: in-flight counts are back to zero, and the endpoints that
    // drained are freed.
    until("drains to finish", || {
        let status = lb.status();
        status.endpoints.iter().all(|e| e.health != Health::Draining)
    })
    .await;
    let status = lb.status();
    assert_eq!(status.endpoints.len(), LIVE, "{name}: {status:#?}");
    for e in &status.endpoints {
        assert_eq!(e.in_flight, 0, "{name}: {} still has requests in flight", e.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_under_churn() {
    churn_while_calling(LeastConn::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_under_churn() {
    churn_while_calling(RoundRobin::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrr_under_churn() {
    churn_while_calling(WeightedRoundRobin::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_under_churn() {
    churn_while_calling(P2c::new(PeakEwma::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_bounded_under_churn() {
    churn_while_calling(Maglev::bounded(1.25).with_min_table_size(1009)).await;
}

/// A policy that, once armed, stalls inside its next pick until told to go on: a
/// picker thread preempted between loading a snapshot and choosing from it.
#[derive(Debug)]
struct Stall {
    armed: AtomicBool,
    stalled: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    resume: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Balance for Stall {
    type State = ();

    fn name(&self) -> &'static str {
        "stall"
    }

    fn build(&self, _: &lb_core::balance::Candidates<'_>) {}

    fn pick(&self, _: &(), set: &lb_core::balance::Candidates<'_>, _: &lb_core::balance::PickContext) -> Option<usize> {
        if set.is_empty() {
            return None;
        }
        if self.armed.swap(false, SeqCst) {
            self.stalled.lock().unwrap().send(()).unwrap();
            let _ = self.resume.lock().unwrap().recv_timeout(Duration::from_secs(10));
        }
        Some(0)
    }
}

/// A picker that loaded a snapshot and was held up while the whole endpoint set was
/// replaced (every endpoint in its snapshot now draining) still gets an endpoint: the
/// balancer looks at the current snapshot instead of failing with `NoEndpoints`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_picker_finds_the_endpoints_that_replaced_its_snapshot() {
    let (stalled_tx, stalled_rx) = std::sync::mpsc::channel();
    let (resume_tx, resume_rx) = std::sync::mpsc::channel();
    let policy = Stall {
        armed: AtomicBool::new(false),
        stalled: std::sync::Mutex::new(stalled_tx),
        resume: std::sync::Mutex::new(resume_rx),
    };
    let (publisher, subscription) = discover::channel();
    publisher.reset([ep_w(0, 1), ep_w(1, 1)]);
    let lb = Balancer::builder(policy).spawn(subscription, support::healthy_backends());
    lb.ready_endpoints(2).await;

    lb.policy().armed.store(true, SeqCst);
    let picker = {
        let lb = lb.clone();
        std::thread::spawn(move || lb.pick(None).map(|p| p.service.idx).ok())
    };
    tokio::task::spawn_blocking(move || stalled_rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the picker reaches the policy");
    publisher.reset([ep_w(2, 1), ep_w(3, 1)]);
    until("the new set to be published", || {
        let status = lb.status();
        status.endpoints.len() == 2 && find(&status, 2).is_some() && find(&status, 3).is_some()
    })
    .await;
    resume_tx.send(()).unwrap();
    let got = tokio::task::spawn_blocking(move || picker.join().unwrap())
        .await
        .unwrap();
    assert_eq!(got, Some(2), "the stalled pick must land on the new set, not fail");
}
