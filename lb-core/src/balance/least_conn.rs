//! Weighted least connections, with ties rotating.
//!
//! The endpoint with the fewest requests in flight per unit of weight wins; among equals
//! the one picked longest ago wins, so ties rotate as HAProxy's `leastconn` does. Loads
//! are compared by cross-multiplication, as nginx does (`a.conns * b.weight` against
//! `b.conns * a.weight`), so no division and no rounding.
//!
//! A full scan costs O(n) per pick. Instead each snapshot keeps a tournament tree: one
//! atomic cell per inner node holding the index of the better of its two children. A
//! pick reads the root, O(1); a change of one endpoint's load replays the matches on
//! its path to the root, O(log n), and stops early once the path no longer involves it.
//! With one thread the pick is always a true minimum. Under contention two replays of a
//! shared node may interleave and leave a slightly stale winner, which the next replay
//! through that node corrects: the pick is then a minimum up to the requests racing it.
//!
//! A request picked from an older snapshot ends on that snapshot's tree, which the
//! current tree does not see. Such a change marks the policy stale, and the next pick
//! from the current tree replays all of its matches first (O(n), once per batch of such
//! changes), so a discovery update cannot leave an idle endpoint unpicked.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

use super::{Balance, Candidates, PickContext};

const EMPTY: u32 = u32::MAX;

/// Weighted least connections over a tournament tree.
#[derive(Debug, Default)]
pub struct LeastConn {
    seq: AtomicU64,
    /// How many trees have been built; the newest tree carries this number.
    epoch: AtomicU64,
    /// A load changed through an older tree since the newest one last replayed.
    stale: AtomicBool,
}

impl LeastConn {
    /// A new policy.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The tournament tree of one snapshot: [`LeastConn`]'s per-snapshot state, opaque.
#[derive(Debug)]
pub struct Tree {
    /// `nodes[1]` is the root; leaves sit at `leaves..2 * leaves`.
    nodes: Box<[AtomicU32]>,
    leaves: usize,
    epoch: u64,
}

#[inline]
fn better(set: &Candidates<'_>, a: u32, b: u32) -> u32 {
    if a == EMPTY {
        return b;
    }
    if b == EMPTY {
        return a;
    }
    if Contender::read(set, b).beats(&Contender::read(set, a)) {
        b
    } else {
        a
    }
}

/// One side of a match, read once.
#[derive(Clone, Copy)]
struct Contender {
    index: u32,
    load: u64,
    weight: u64,
    last_pick: u64,
}

impl Contender {
    #[inline]
    fn read(set: &Candidates<'_>, index: u32) -> Self {
        let e = set.endpoint(index as usize);
        Self {
            index,
            load: e.in_flight() as u64,
            weight: set.weight(index as usize) as u64,
            last_pick: e.last_pick(),
        }
    }

    /// Whether `self` wins against `other`: fewer in flight per unit of weight
    /// (cross-multiplied), then picked longer ago, then the lower index.
    #[inline]
    fn beats(&self, other: &Self) -> bool {
        let (la, lb) = (self.load * other.weight, other.load * self.weight);
        if la != lb {
            return la < lb;
        }
        if self.last_pick != other.last_pick {
            return self.last_pick < other.last_pick;
        }
        self.index < other.index
    }
}

impl Tree {
    fn new(set: &Candidates<'_>, epoch: u64) -> Self {
        let leaves = set.len().next_power_of_two().max(1);
        let nodes: Box<[AtomicU32]> = (0..2 * leaves).map(|_| AtomicU32::new(EMPTY)).collect();
        for i in 0..set.len() {
            nodes[leaves + i].store(i as u32, Relaxed);
        }
        let tree = Self { nodes, leaves, epoch };
        tree.replay_all(set);
        tree
    }

    /// Replays every match, bottom up: the winner is then a true minimum again.
    fn replay_all(&self, set: &Candidates<'_>) {
        for k in (1..self.leaves).rev() {
            self.replay(set, k);
        }
    }

    #[inline]
    fn replay(&self, set: &Candidates<'_>, k: usize) -> (u32, u32) {
        let a = self.nodes[2 * k].load(Relaxed);
        let b = self.nodes[2 * k + 1].load(Relaxed);
        let w = better(set, a, b);
        // A load and a plain store rather than a `swap`: a locked read-modify-write on
        // every level of every update cost more than the match itself, and a `swap`
        // overwrites a racing replay's result just the same (a stale winner that the
        // next replay through this node corrects; see the module docs).
        let old = self.nodes[k].load(Relaxed);
        if old != w {
            self.nodes[k].store(w, Relaxed);
        }
        (old, w)
    }

    /// Replays the matches on the path from endpoint `i` to the root after its load
    /// changed. The winner coming up from below is carried with the load it was
    /// compared on, so each level reads only the other side.
    #[inline]
    fn update(&self, set: &Candidates<'_>, i: usize) {
        let me = i as u32;
        let mut node = self.leaves + i;
        let mut up = Contender::read(set, me);
        while node > 1 {
            let other = self.nodes[node ^ 1].load(Relaxed);
            let k = node / 2;
            if other != EMPTY {
                let them = Contender::read(set, other);
                if them.beats(&up) {
                    up = them;
                }
            }
            let old = self.nodes[k].load(Relaxed);
            if old != up.index {
                self.nodes[k].store(up.index, Relaxed);
            } else if up.index != me {
                // Neither before nor after did this endpoint win here, so nothing above
                // depends on its load.
                break;
            }
            node = k;
        }
    }

    /// The current winner: the index of a least-loaded endpoint.
    pub(crate) fn winner(&self) -> Option<usize> {
        match self.nodes.get(1).map(|n| n.load(Relaxed)) {
            Some(EMPTY) | None => None,
            Some(i) => Some(i as usize),
        }
    }
}

impl LeastConn {
    /// A load changed through `tree`; if a newer tree exists, it has not seen it.
    #[inline]
    fn note_if_old(&self, tree: &Tree) {
        if tree.epoch != self.epoch.load(Relaxed) {
            self.stale.store(true, Relaxed);
        }
    }
}

impl Balance for LeastConn {
    type State = Tree;

    fn name(&self) -> &'static str {
        "least_conn"
    }

    fn build(&self, set: &Candidates<'_>) -> Tree {
        // Numbered before the loads are read: a change through an older tree from now
        // on marks the policy stale, and the loads read here include every earlier one.
        let epoch = self.epoch.fetch_add(1, Relaxed) + 1;
        Tree::new(set, epoch)
    }

    #[inline]
    fn pick(&self, tree: &Tree, set: &Candidates<'_>, _: &PickContext) -> Option<usize> {
        if set.len() == 1 {
            return Some(0);
        }
        if self.stale.load(Relaxed) && tree.epoch == self.epoch.load(Relaxed) && self.stale.swap(false, Relaxed) {
            tree.replay_all(set);
        }
        tree.winner()
    }

    #[inline]
    fn on_acquire(&self, tree: &Tree, set: &Candidates<'_>, index: usize) {
        let seq = self.seq.fetch_add(1, Relaxed) + 1;
        set.endpoint(index).mark_picked(seq);
        if set.len() > 1 {
            tree.update(set, index);
        }
        self.note_if_old(tree);
    }

    #[inline]
    fn on_release(&self, tree: &Tree, set: &Candidates<'_>, index: usize) {
        if set.len() > 1 {
            tree.update(set, index);
        }
        self.note_if_old(tree);
    }

    fn tracks_release(&self) -> bool {
        true
    }
}
