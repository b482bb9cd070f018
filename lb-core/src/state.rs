//! The live state of one endpoint, shared by every snapshot that holds it.
//!
//! Counters, latency and health flags live here and nowhere else, behind an `Arc` that
//! the endpoint table, each snapshot and each in-flight guard share. A discovery update
//! that re-inserts an endpoint updates this state in place; a removal marks it
//! draining, and it is freed when the last guard drops.
//!
//! This module holds data and the atomic operations on it, not decisions: when an
//! endpoint is ejected, found unhealthy or ramped up is decided in
//! [`health`](crate::health); how a request's end is recorded, in [`load`](crate::load).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::endpoint::{Endpoint, EndpointId};

/// The origin of the process clock: an hour (or as much as the monotonic clock allows)
/// before its first use.
///
/// The clock is tokio's ([`tokio::time::Instant`], as tower's peak EWMA uses): the
/// standard monotonic clock in a build without tokio's `test-util`, and a paused clock
/// in tests that pause time, so latency and its decay follow the test's time. Several
/// runtimes may pause their clocks in one process (one per test); each starts where the
/// real clock stood when it was built, which may be before the first use of the
/// origin: the margin keeps their readings above it.
fn epoch() -> std::time::Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = std::time::Instant::now();
        [3600, 60, 1]
            .into_iter()
            .find_map(|s| now.checked_sub(Duration::from_secs(s)))
            .unwrap_or(now)
    })
}

/// Monotonic nanoseconds since the process clock's origin.
pub(crate) fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// `t` as nanoseconds on the same clock as [`now_ns`].
#[inline]
pub(crate) fn ns_at(t: Instant) -> u64 {
    t.into_std().saturating_duration_since(epoch()).as_nanos() as u64
}

/// The latency sample a failed request records at least, when no balancer set one
/// (states made by hand).
pub(crate) const DEFAULT_FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// Bits of [`EndpointState`]'s packed counter that hold the in-flight count: up to
/// 16 million requests (or TCP connections) in flight per endpoint; the other 40 bits
/// count requests started (a trillion).
const IN_FLIGHT_BITS: u32 = 24;
const IN_FLIGHT_MASK: u64 = (1 << IN_FLIGHT_BITS) - 1;
const STARTED_ONE: u64 = 1 << IN_FLIGHT_BITS;

const DRAINING: u8 = 1;
const ADMIN_DRAIN: u8 = 2;
const EJECTED: u8 = 4;
const UNHEALTHY: u8 = 8;
const OUT: u8 = DRAINING | ADMIN_DRAIN | EJECTED | UNHEALTHY;
/// An active check has given a verdict (healthy or unhealthy) at least once.
const CHECKED: u8 = 16;

/// What an endpoint's state is, as the status page shows it.
///
/// The order of precedence is draining, ejected, unhealthy, then healthy or unknown:
/// an endpoint that is both ejected and draining shows as draining.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Health {
    /// No active check has answered yet (or none is configured). Eligible.
    Unknown,
    /// The active check passed `rise` times in a row. Eligible.
    Healthy,
    /// The active check failed `fall` times in a row. Not eligible.
    Unhealthy,
    /// Passive outlier detection took it out for a while. Not eligible.
    Ejected,
    /// Removed by discovery or drained by an operator: in-flight requests finish, no
    /// new ones start.
    Draining,
}

impl Health {
    /// A short lowercase name: `unknown`, `healthy`, `unhealthy`, `ejected`, `draining`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Ejected => "ejected",
            Health::Draining => "draining",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last active health check of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckRecord {
    /// When it finished, as time since an origin shared by the whole process (compare
    /// two of them, or use [`age`](Self::age)).
    pub at: Duration,
    /// Whether it passed.
    pub ok: bool,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

impl CheckRecord {
    /// How long ago it finished.
    pub fn age(&self) -> Duration {
        Duration::from_nanos(now_ns()).saturating_sub(self.at)
    }
}

/// The live, shared state of one endpoint.
///
/// Policies read it to pick (`in_flight`, `cost`); the in-flight guard writes it. Every
/// read is a relaxed atomic load: no lock is taken on the request path.
// `repr(C)`, hot fields first: what every request reads or writes (the counts, the
// failure streak, the flags; least-conn's last pick, peak EWMA's estimate) sits in the
// first 48 bytes, next to the `Arc`'s reference counts that every guard also touches,
// instead of wherever the compiler's reordering puts it (the flags and the streak
// landed 150 bytes away from the counts, another cache line per request).
#[derive(Debug)]
#[repr(C)]
pub struct EndpointState {
    /// Requests started (high bits) and in flight (low [`IN_FLIGHT_BITS`] bits), in one
    /// word so that starting a request is one atomic add, not two.
    counts: AtomicU64,
    consecutive_failures: AtomicU32,
    flags: AtomicU8,
    last_pick: AtomicU64,
    rtt: Rtt,
    // Cold: failures, status, identity, set-up.
    failures: AtomicU64,
    times_ejected: AtomicU32,
    id: EndpointId,
    endpoint: ArcSwap<Endpoint>,
    last_check: Mutex<Option<CheckRecord>>,
    /// How a finished request reaches the balancer's writer (set when the writer
    /// creates the state; absent for states made by hand, e.g. in policy tests).
    link: OnceLock<Link>,
}

/// What an endpoint's state needs of its balancer when a request ends: set once, when
/// the balancer's writer creates the state.
#[derive(Debug)]
pub(crate) struct Link {
    /// Wakes the balancer's writer (passive outlier detection uses it).
    pub(crate) wake: Arc<Notify>,
    /// The failure streak that wakes the writer; 0: never.
    pub(crate) outlier_threshold: u32,
    /// The time constant of the latency estimate, in nanoseconds.
    pub(crate) decay_ns: f64,
    /// The least latency sample a failure records.
    pub(crate) failure_penalty: Duration,
}

/// The peak-EWMA round-trip estimate of one endpoint: the bits of an `f64` of
/// nanoseconds, the time of the last sample, and whether any sample came in.
#[derive(Debug)]
#[repr(C)]
struct Rtt {
    ns: AtomicU64,
    stamp_ns: AtomicU64,
    /// Whether `ns` holds a measurement, not the assumed default.
    measured: AtomicBool,
}

impl Rtt {
    fn new(default: Duration) -> Self {
        Self {
            ns: AtomicU64::new((default.as_nanos() as f64).to_bits()),
            stamp_ns: AtomicU64::new(now_ns()),
            measured: AtomicBool::new(false),
        }
    }

    /// Folds one sample in. A sample above the estimate replaces it at once (the
    /// "peak"); a lower one is blended in with weight `1 - exp(-elapsed / decay)`, as in
    /// Finagle and tower.
    fn observe(&self, rtt: Duration, now: u64, decay_ns: f64) {
        let sample = rtt.as_nanos() as f64;
        let prev = f64::from_bits(self.ns.load(Relaxed));
        let stamp = self.stamp_ns.swap(now, Relaxed);
        let next = if sample > prev {
            sample
        } else {
            let elapsed = now.saturating_sub(stamp) as f64;
            let w = (-elapsed / decay_ns).exp();
            prev * w + sample * (1.0 - w)
        };
        self.ns.store(next.to_bits(), Relaxed);
        // Read first: a store on every sample would bounce the cache line for nothing.
        if !self.measured.load(Relaxed) {
            self.measured.store(true, Relaxed);
        }
    }

    /// The estimate decayed toward zero for the time since the last sample.
    #[inline]
    fn estimate(&self, now: u64, decay_ns: f64) -> f64 {
        let rtt = f64::from_bits(self.ns.load(Relaxed));
        let stamp = self.stamp_ns.load(Relaxed);
        let elapsed = now.saturating_sub(stamp) as f64;
        if elapsed <= 0.0 {
            rtt
        } else {
            rtt * (-elapsed / decay_ns).exp()
        }
    }

    /// The estimate as last stored, not decayed.
    fn last(&self) -> Duration {
        Duration::from_nanos(f64::from_bits(self.ns.load(Relaxed)) as u64)
    }
}

// === impl EndpointState ===

impl EndpointState {
    /// Fresh state for an endpoint, its latency estimate seeded with `default_rtt`.
    pub fn new(endpoint: Endpoint, default_rtt: Duration) -> Self {
        Self {
            id: endpoint.id().clone(),
            endpoint: ArcSwap::from_pointee(endpoint),
            flags: AtomicU8::new(0),
            counts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            times_ejected: AtomicU32::new(0),
            last_pick: AtomicU64::new(0),
            rtt: Rtt::new(default_rtt),
            last_check: Mutex::new(None),
            link: OnceLock::new(),
        }
    }

    /// The endpoint's id (it never changes for one state).
    pub fn id(&self) -> &EndpointId {
        &self.id
    }

    /// The endpoint as last described by discovery.
    pub fn endpoint(&self) -> Arc<Endpoint> {
        self.endpoint.load_full()
    }

    pub(crate) fn set_endpoint(&self, endpoint: Endpoint) {
        self.endpoint.store(Arc::new(endpoint));
    }

    /// Requests started and not yet finished (their response body included).
    #[inline]
    pub fn in_flight(&self) -> u32 {
        (self.counts.load(Relaxed) & IN_FLIGHT_MASK) as u32
    }

    /// Requests started since the endpoint was first inserted.
    pub fn requests(&self) -> u64 {
        self.counts.load(Relaxed) >> IN_FLIGHT_BITS
    }

    /// Requests that ended in a failure since the endpoint was first inserted.
    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    /// How many times passive outlier detection has ejected it.
    pub fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Relaxed)
    }

    /// A sequence number of its last pick, which least-conn rotates ties by.
    #[inline]
    pub(crate) fn last_pick(&self) -> u64 {
        self.last_pick.load(Relaxed)
    }

    /// Records that least-conn picked this endpoint as the `seq`-th pick.
    #[inline]
    pub(crate) fn mark_picked(&self, seq: u64) {
        self.last_pick.store(seq, Relaxed);
    }

    /// Whether new requests may go here: not draining, ejected or unhealthy.
    #[inline]
    pub fn is_eligible(&self) -> bool {
        self.flags.load(Relaxed) & OUT == 0
    }

    /// Whether discovery removed it or an operator drained it.
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.flags.load(Relaxed) & (DRAINING | ADMIN_DRAIN) != 0
    }

    /// The state as the status page shows it.
    pub fn health(&self) -> Health {
        let f = self.flags.load(Relaxed);
        if f & (DRAINING | ADMIN_DRAIN) != 0 {
            Health::Draining
        } else if f & EJECTED != 0 {
            Health::Ejected
        } else if f & UNHEALTHY != 0 {
            Health::Unhealthy
        } else if f & CHECKED != 0 {
            Health::Healthy
        } else {
            Health::Unknown
        }
    }

    /// Whether an operator drained it (as opposed to discovery removing it).
    pub fn is_admin_drained(&self) -> bool {
        self.flags.load(Relaxed) & ADMIN_DRAIN != 0
    }

    /// Whether passive outlier detection has it out.
    pub fn is_ejected(&self) -> bool {
        self.flags.load(Relaxed) & EJECTED != 0
    }

    /// Whether the active check has it out.
    pub fn is_unhealthy(&self) -> bool {
        self.flags.load(Relaxed) & UNHEALTHY != 0
    }

    pub(crate) fn set_flag(&self, flag: Flag, on: bool) -> bool {
        let bit = flag as u8;
        let prev = if on {
            self.flags.fetch_or(bit, Relaxed)
        } else {
            self.flags.fetch_and(!bit, Relaxed)
        };
        (prev & bit != 0) != on
    }

    pub(crate) fn link(&self, link: Link) {
        let _ = self.link.set(link);
    }

    /// What the balancer set when it created the state; `None` for states made by hand.
    #[inline]
    pub(crate) fn linked(&self) -> Option<&Link> {
        self.link.get()
    }

    /// Records the time from `start` to now as a latency sample (one clock read).
    pub(crate) fn observe_since(&self, start: Instant) {
        let now = Instant::now();
        self.rtt
            .observe(now.saturating_duration_since(start), ns_at(now), self.decay_ns());
    }

    /// Records a failed request's latency sample: the time it took (from `start`, when
    /// its latency was not recorded yet), but never less than the failure penalty.
    ///
    /// Peak EWMA estimates how long a request sent here takes to be served. A request
    /// that fails is not served, however fast it fails: if failures recorded their own
    /// short time (or nothing, and the estimate decayed toward zero), an endpoint that
    /// refuses every request at once would look like the fastest one and draw more
    /// traffic the more it failed. A failure is charged instead as a response at least
    /// as slow as the penalty (default 1 s, [`Builder::failure_penalty`]): the estimate
    /// jumps to it at once (a peak), an endpoint that keeps failing keeps it there, and
    /// one that stops failing decays back with the usual time constant. With the
    /// default decay of 10 s, a penalty of 1 s takes about 45 s to fall to a 10 ms
    /// endpoint's cost: a failing endpoint is tried about once in that time while the
    /// others are idle, and sooner when they are loaded (their cost grows with their
    /// in-flight count). This is the same rule a timeout follows: a request that timed
    /// out records its whole time, which is at least the penalty when the penalty is
    /// set to the timeout.
    ///
    /// [`Builder::failure_penalty`]: crate::Builder::failure_penalty
    pub(crate) fn observe_failure(&self, start: Option<Instant>) {
        let now = Instant::now();
        let took = start.map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        let penalty = self.link.get().map_or(DEFAULT_FAILURE_PENALTY, |l| l.failure_penalty);
        self.rtt.observe(took.max(penalty), ns_at(now), self.decay_ns());
    }

    fn decay_ns(&self) -> f64 {
        self.link.get().map_or(10e9, |l| l.decay_ns)
    }

    // --- load ---

    #[inline]
    pub(crate) fn acquire(&self) {
        let prev = self.counts.fetch_add(STARTED_ONE | 1, Relaxed);
        debug_assert!(prev & IN_FLIGHT_MASK < IN_FLIGHT_MASK, "in-flight count overflow");
    }

    /// [`acquire`](Self::acquire), unless `max` requests are in flight already.
    #[inline]
    pub(crate) fn try_acquire(&self, max: u32) -> bool {
        self.counts
            .fetch_update(Relaxed, Relaxed, |c| {
                ((c & IN_FLIGHT_MASK) < u64::from(max)).then_some(c + (STARTED_ONE | 1))
            })
            .is_ok()
    }

    #[inline]
    pub(crate) fn release(&self) {
        self.counts.fetch_sub(1, Relaxed);
    }

    /// Records a success; returns whether it ended a failure streak.
    #[inline]
    pub(crate) fn record_success(&self) -> bool {
        // Read first: a store on every success would bounce the cache line for nothing.
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
            true
        } else {
            false
        }
    }

    /// Records a failure; returns the length of the failure streak.
    pub(crate) fn record_failure(&self) -> u32 {
        self.failures.fetch_add(1, Relaxed);
        self.consecutive_failures.fetch_add(1, Relaxed) + 1
    }

    pub(crate) fn note_ejected(&self) -> u32 {
        self.consecutive_failures.store(0, Relaxed);
        self.times_ejected.fetch_add(1, Relaxed) + 1
    }

    pub(crate) fn forgive_ejections(&self) {
        self.times_ejected.store(0, Relaxed);
    }

    /// The peak-EWMA round-trip estimate, decayed toward zero for the time since the
    /// last sample, in nanoseconds. An endpoint that has had no traffic for a while
    /// looks cheaper and gets tried again, so one slow answer cannot starve it.
    #[inline]
    pub fn rtt_estimate(&self, now: u64, decay_ns: f64) -> f64 {
        self.rtt.estimate(now, decay_ns)
    }

    /// The latency estimate as last stored, not decayed: what the status page shows.
    /// Until a first sample it is the assumed default; see
    /// [`latency_measured`](Self::latency_measured).
    pub fn ewma_latency(&self) -> Duration {
        self.rtt.last()
    }

    /// Whether [`ewma_latency`](Self::ewma_latency) comes from at least one measured
    /// request (not the assumed default).
    pub fn latency_measured(&self) -> bool {
        self.rtt.measured.load(Relaxed)
    }

    // --- active health (the rise/fall rule is in `health::active`) ---

    /// Whether an active check has given a verdict at least once.
    pub(crate) fn is_checked(&self) -> bool {
        self.flags.load(Relaxed) & CHECKED != 0
    }

    /// Keeps the last active check for status.
    pub(crate) fn set_last_check(&self, record: CheckRecord) {
        *self.last_check.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
    }

    /// The last active check, if one ran.
    pub fn last_check(&self) -> Option<CheckRecord> {
        self.last_check.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[derive(Clone, Copy, Debug)]
#[repr(u8)]
pub(crate) enum Flag {
    Draining = DRAINING,
    AdminDrain = ADMIN_DRAIN,
    Ejected = EJECTED,
    Unhealthy = UNHEALTHY,
    Checked = CHECKED,
}
