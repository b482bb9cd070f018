//! Publishing: the table becomes the next snapshot, in named steps.
//!
//! 1. [`rotation`](Writer::rotation): who is in rotation now; log who came in or went
//!    out, start and end slow-start ramps.
//! 2. [`panic_mode`](Writer::panic_mode): too few eligible endpoints means health is
//!    ignored.
//! 3. [`release_held`](Writer::release_held): removed endpoints leave, unless nothing
//!    else can serve while their replacements are being made.
//! 4. [`eligible_set`](Writer::eligible_set): the endpoints, effective weights and
//!    services a picker may use.
//! 5. [`listing`](Writer::listing): every endpoint, for status.
//! 6. [`unchanged`](Writer::unchanged) or [`swap_in`](Writer::swap_in): skip the
//!    policy's rebuild when a picker would see nothing new; else build the policy state
//!    and store the snapshot.
//! 7. [`retire`](Writer::retire): endpoints removed before this publish are flagged
//!    draining, only now that no snapshot offers them.

use std::sync::Arc;

use tokio::time::Instant;

use super::{Connect, Connector, Listed, Published, Snapshot, Writer};
use crate::balance::{Balance, Candidates, WEIGHT_SCALE};
use crate::state::{EndpointState, Flag};
use crate::status::Connection;

/// How many endpoints are in rotation, for panic mode.
#[derive(Clone, Copy, Debug)]
struct Rotation {
    /// Made, weighted, and not drained by an operator.
    active: usize,
    /// Of those, the eligible ones (not ejected, unhealthy or draining).
    eligible: usize,
}

/// What the next snapshot offers pickers.
struct Eligible<S> {
    endpoints: Vec<Arc<EndpointState>>,
    weights: Vec<u32>,
    services: Vec<S>,
    panic: bool,
}

impl<P, S, M> Writer<P, S, M>
where
    P: Balance,
    S: Clone + Send + Sync + 'static,
    M: Connector<S>,
{
    /// Publishes the table as it is now (see the module docs for the steps).
    pub(super) fn publish(&mut self) {
        let Some(readers) = self.readers.upgrade() else {
            return;
        };
        let published = readers.published();
        let now = Instant::now();
        let rotation = self.rotation(now);
        let panic = self.panic_mode(rotation, published.snapshot.load().panic);
        self.release_held();
        let next = self.eligible_set(panic, now);
        let listing = self.listing();
        if self.unchanged(published, &next) {
            self.retire();
            published.all.store(Arc::new(listing));
            return;
        }
        self.swap_in(published, next);
        // In this order: once the status no longer lists a removed endpoint (or lists
        // it out of rotation), no new pick can reach it.
        self.retire();
        published.all.store(Arc::new(listing));
        published.notify.notify_waiters();
    }

    /// Step 1: counts the endpoints in rotation, logs those that came in or went out,
    /// and starts (on coming back) or ends (when over) their slow-start ramps.
    fn rotation(&mut self, now: Instant) -> Rotation {
        let name = &*self.config.name;
        let slow_start = self.config.slow_start;
        let mut rotation = Rotation { active: 0, eligible: 0 };
        for (id, e) in self.table.iter_mut() {
            if e.service.is_none() {
                continue; // Not made yet: neither in rotation nor out of it.
            }
            let weighted = e.state.endpoint().weight() > 0;
            if weighted && !e.state.is_admin_drained() {
                rotation.active += 1;
            }
            let out = !e.state.is_eligible();
            if weighted && !out {
                rotation.eligible += 1;
            }
            if e.was_out && !out {
                e.ramp.back_in_rotation(now, slow_start);
                tracing::info!(balancer = %name, endpoint = %id, "endpoint back in rotation");
            } else if !e.was_out && out {
                tracing::warn!(balancer = %name, endpoint = %id, state = %e.state.health(), "endpoint out of rotation");
            }
            e.was_out = out;
            e.ramp.end_if_done(now, slow_start);
        }
        rotation
    }

    /// Step 2: whether fewer than `panic_threshold` of the active endpoints are
    /// eligible (health is then ignored); logs a change from `was`.
    fn panic_mode(&self, Rotation { active, eligible }: Rotation, was: bool) -> bool {
        let panic = active > 0 && (eligible as f64) < self.config.panic_threshold * active as f64;
        if panic != was {
            let name = &*self.config.name;
            if panic {
                tracing::warn!(balancer = %name, eligible, active, "too few healthy endpoints: panic mode, balancing over all");
            } else {
                tracing::info!(balancer = %name, eligible, active, "panic mode over");
            }
        }
        panic
    }

    /// Step 3: removed endpoints stay in rotation while nothing else can serve and the
    /// endpoints that replace them are still being made (a blue/green `Reset`), so that
    /// a slow connector never leaves a gap; otherwise they leave now.
    fn release_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let warming = self
            .table
            .values()
            .any(|e| e.service.is_none() && matches!(e.connect, Connect::Queued | Connect::Connecting(_)));
        let servable = self
            .table
            .values()
            .any(|e| e.service.is_some() && e.state.endpoint().weight() > 0 && !e.state.is_admin_drained());
        if servable || !warming {
            for e in std::mem::take(&mut self.held) {
                self.retire_entry(e);
            }
        }
    }

    /// Step 4: the endpoints a picker may use (made, weighted, not drained by an
    /// operator, and eligible unless in panic mode), with their effective weights
    /// (configured weight × [`WEIGHT_SCALE`] × slow-start factor) and services.
    fn eligible_set(&self, panic: bool, now: Instant) -> Eligible<S> {
        let n = self.table.len() + self.held.len();
        let mut next = Eligible {
            endpoints: Vec::with_capacity(n),
            weights: Vec::with_capacity(n),
            services: Vec::with_capacity(n),
            panic,
        };
        for e in self.table.values().chain(&self.held) {
            let Some(service) = &e.service else {
                continue;
            };
            let w = e.state.endpoint().weight();
            if w == 0 || e.state.is_admin_drained() {
                continue;
            }
            if !panic && !e.state.is_eligible() {
                continue;
            }
            let factor = e.ramp.factor(now, self.config.slow_start);
            let eff = ((w as f64 * WEIGHT_SCALE as f64 * factor).round() as u32).max(1);
            next.endpoints.push(e.state.clone());
            next.weights.push(eff);
            next.services.push(service.clone());
        }
        next
    }

    /// Step 5: every endpoint the table holds, draining ones included, for status.
    fn listing(&self) -> Vec<Listed> {
        let mut all: Vec<Listed> = self
            .table
            .values()
            .chain(&self.held)
            .map(|e| Listed {
                state: e.state.clone(),
                connection: match &e.connect {
                    Connect::Ready => Connection::Ready,
                    // An endpoint made again for a new address is still served.
                    _ if e.service.is_some() => Connection::Ready,
                    Connect::Queued | Connect::Connecting(_) => Connection::Connecting { attempts: e.attempts },
                    Connect::Failed { error, .. } => Connection::Failed {
                        attempts: e.attempts,
                        error: error.clone(),
                    },
                },
            })
            .collect();
        all.extend(self.draining.iter().map(|st| Listed {
            state: st.clone(),
            connection: Connection::Ready,
        }));
        all
    }

    /// Step 6a: whether a picker would see nothing new in `next` (the same endpoints,
    /// weights and panic mode, and nothing else marked dirty): the policy state stands.
    fn unchanged(&mut self, published: &Published<P, S>, next: &Eligible<S>) -> bool {
        let dirty = std::mem::take(&mut self.dirty);
        let cur = published.snapshot.load();
        self.generation > 0
            && !dirty
            && cur.panic == next.panic
            && cur.weights[..] == next.weights[..]
            && cur.endpoints.len() == next.endpoints.len()
            && cur
                .endpoints
                .iter()
                .zip(&next.endpoints)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// Step 6b: builds the policy's state over `next` and stores the new snapshot.
    fn swap_in(&mut self, published: &Published<P, S>, next: Eligible<S>) {
        self.generation += 1;
        let state = self.policy.build(&Candidates::new(&next.endpoints, &next.weights));
        let snap = Snapshot {
            generation: self.generation,
            endpoints: next.endpoints.into_boxed_slice(),
            weights: next.weights.into_boxed_slice(),
            services: next.services.into_boxed_slice(),
            state,
            policy: self.policy.clone(),
            panic: next.panic,
        };
        tracing::debug!(balancer = %self.config.name, generation = self.generation, eligible = snap.endpoints.len(), "snapshot published");
        published.snapshot.store(Arc::new(snap));
    }

    /// Step 7: flags the endpoints removed before this publish as draining.
    fn retire(&mut self) {
        for st in self.retiring.drain(..) {
            st.set_flag(Flag::Draining, true);
        }
    }
}
