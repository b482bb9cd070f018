//! The pick path: what every call does before it reaches an endpoint.
//!
//! [`Shared`] is what every [`Balancer`](crate::Balancer) handle shares: the snapshot the
//! writer publishes, the policy, the settings. A pick loads the current snapshot (no
//! lock, no reference count), asks the policy for an endpoint, re-checks that the
//! endpoint is still usable (the snapshot may be a little stale), counts the request in
//! flight on it (within `max_in_flight`, if set) and hands back its service with an
//! [`InFlight`] guard. When no endpoint can take the request, the pick says why
//! ([`NoPick`]). Nothing here allocates.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::balance::{Balance, PickContext};
use crate::endpoint::EndpointId;
use crate::error::NoEndpoints;
use crate::load::{InFlight, Release};
use crate::state::{now_ns, ns_at};
use crate::table::{Command, Config, Events, Published, Readers, Snapshot};

/// What every balancer handle shares.
// `repr(C)`, what every pick reads first (the snapshot pointer, the settings, whether
// to time), in the cache line of the `Arc`'s counts.
#[repr(C)]
pub(crate) struct Shared<P: Balance, S> {
    pub(crate) config: Arc<Config>,
    /// Whether requests are timed (peak EWMA, or `track_latency`).
    pub(crate) timed: bool,
    /// What the writer publishes (the snapshot first).
    pub(crate) published: Published<P, S>,
    pub(crate) policy: Arc<P>,
    pub(crate) events: Arc<Events>,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
}

impl<P: Balance, S: Send + Sync + 'static> Readers<P, S> for Shared<P, S> {
    fn published(&self) -> &Published<P, S> {
        &self.published
    }
}

impl<P: Balance, S> Drop for Shared<P, S> {
    /// The last handle is gone: the writer stops.
    fn drop(&mut self) {
        self.events.closed.store(true, Relaxed);
        self.events.notify.notify_one();
    }
}

impl<P: Balance, S> fmt::Debug for Shared<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("policy", &self.policy.name())
            .field("generation", &self.published.snapshot.load().generation)
            .finish()
    }
}

/// Why a pick found no endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoPick {
    /// The snapshot has no endpoint in rotation.
    Empty,
    /// It has some, but none usable now: they went out since the snapshot was
    /// published (a newer one may have others), or the policy found none.
    AllUnavailable,
    /// Usable endpoints are all at their in-flight limit.
    Overloaded,
}

impl NoPick {
    /// The error a caller sees, after waiting `waited` if it did.
    pub(crate) fn into_error(self, waited: Option<Duration>) -> NoEndpoints {
        NoEndpoints::new(waited, self == NoPick::Overloaded)
    }
}

/// An endpoint picked for one request: its service and the guard.
#[derive(Debug)]
pub struct Picked<S> {
    /// A clone of the endpoint's service.
    pub service: S,
    /// The guard: set its outcome ([`InFlight::succeed`], [`InFlight::fail`]) and drop
    /// it when the request is over. [`InFlight::endpoint`] tells which endpoint it is.
    pub guard: InFlight,
}

/// How many times a pick asks the policy before it scans the snapshot itself.
const POLICY_TRIES: usize = 3;

/// How many times a pick loads a newer snapshot when the one it has offers nothing.
const RELOADS: usize = 2;

/// How many times a pick retries an endpoint that filled up between the look and the
/// count (`max_in_flight`), before it reports the balancer overloaded.
const FULL_RETRIES: usize = 4;

impl<P: Balance, S: Clone + Send + Sync + 'static> Shared<P, S> {
    /// Picks an endpoint for a request with hash key `key`, not `avoid` if another can
    /// take it, and takes its guard.
    #[inline]
    pub(crate) fn pick(&self, key: Option<u64>, avoid: Option<&EndpointId>) -> Result<Picked<S>, NoPick> {
        // Timed requests read the clock once here: the pick (peak EWMA) and the
        // latency sample share the reading.
        let start = self.timed.then(tokio::time::Instant::now);
        let cx = PickContext {
            key,
            now: start.map_or(0, ns_at),
        };
        // A guard, not a clone: the snapshot's reference count is shared by every
        // thread, and only policies that track releases need to keep the snapshot.
        let mut snap = self.published.snapshot.load();
        // A snapshot can go stale while a picker looks at it: if every endpoint in it
        // went out meanwhile (a whole set replaced, or this thread preempted across
        // several updates), a newer snapshot has the endpoints that replaced them.
        let mut reloads = 0;
        let mut full = 0;
        let i = loop {
            match self.find(&snap, &cx, avoid) {
                Ok(i) => {
                    let st = &snap.endpoints[i];
                    match self.config.max_in_flight {
                        None => st.acquire(),
                        // With a limit, check and count in one step: another thread
                        // may have taken the last place since `find` looked.
                        Some(max) => {
                            if !st.try_acquire(max) {
                                full += 1;
                                if full == FULL_RETRIES {
                                    return Err(NoPick::Overloaded);
                                }
                                continue;
                            }
                        }
                    }
                    break i;
                }
                Err(why) => {
                    let current = self.published.snapshot.load();
                    if reloads == RELOADS || Arc::ptr_eq(&current, &snap) {
                        return Err(why);
                    }
                    snap = current;
                    reloads += 1;
                }
            }
        };
        let set = snap.candidates();
        snap.policy.on_acquire(&snap.state, &set, i);
        let service = snap.services[i].clone();
        let state = snap.endpoints[i].clone();
        let tracker = if snap.policy.tracks_release() {
            let full: Arc<Snapshot<P, S>> = arc_swap::Guard::into_inner(snap);
            let rel: Arc<dyn Release> = full;
            Some((rel, i as u32))
        } else {
            None
        };
        Ok(Picked {
            service,
            guard: InFlight::new(state, tracker, start),
        })
    }

    /// A usable endpoint with room in `snap`, or why there is none.
    #[inline]
    fn find(&self, snap: &Snapshot<P, S>, cx: &PickContext, avoid: Option<&EndpointId>) -> Result<usize, NoPick> {
        let set = snap.candidates();
        let n = set.len();
        let max = self.config.max_in_flight;
        // An endpoint to avoid is passed over only when there is another.
        let avoid = avoid.filter(|_| n > 1);
        let fits = |i: usize| max.map_or(true, |m| set.endpoint(i).in_flight() < m);
        let allowed = |i: usize| avoid.map_or(true, |a| set.endpoint(i).id() != a);
        let mut overloaded = false;
        for _ in 0..POLICY_TRIES {
            match snap.policy.pick(&snap.state, &set, cx) {
                Some(i) if i >= n => {
                    debug_assert!(
                        false,
                        "policy {} picked index {i} out of range (0..{n}): a bug in the policy",
                        snap.policy.name()
                    );
                    return Err(NoPick::AllUnavailable);
                }
                Some(i) if snap.usable(i) && allowed(i) => {
                    if fits(i) {
                        return Ok(i);
                    }
                    overloaded = true;
                }
                Some(_) => {}
                // The policy finds none only in an empty set, or when none can take the
                // request (found out here, not checked on every pick).
                None if n == 0 => return Err(NoPick::Empty),
                None => return Err(NoPick::AllUnavailable),
            }
        }
        // The snapshot is stale (an endpoint just went out) or endpoints are full:
        // the first usable endpoint with room, scanning from a rotating start.
        let start = (now_ns() as usize) % n.max(1);
        let scan = |allowed: &dyn Fn(usize) -> bool| {
            (0..n)
                .map(|k| (start + k) % n.max(1))
                .find(|&i| snap.usable(i) && allowed(i) && fits(i))
        };
        // Avoiding an endpoint must not turn a pick into a failure: when no other can
        // take the request, the avoided one may.
        match scan(&allowed).or_else(|| avoid.and_then(|_| scan(&|_| true))) {
            Some(i) => Ok(i),
            None if overloaded => Err(NoPick::Overloaded),
            None => Err(NoPick::AllUnavailable),
        }
    }

    /// Picks as [`pick`](Self::pick) does, waiting up to `wait` for a snapshot with an
    /// endpoint that can take the request. Overloaded endpoints are not waited for: the
    /// caller is told at once.
    pub(crate) async fn pick_within(
        self: Arc<Self>,
        key: Option<u64>,
        avoid: Option<EndpointId>,
        wait: Duration,
    ) -> Result<Picked<S>, NoEndpoints> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.published.notify.notified();
            match self.pick(key, avoid.as_ref()) {
                Ok(p) => return Ok(p),
                Err(NoPick::Overloaded) => return Err(NoPick::Overloaded.into_error(Some(wait))),
                Err(NoPick::Empty | NoPick::AllUnavailable) => {}
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(NoPick::AllUnavailable.into_error(Some(wait)));
            }
        }
    }
}
