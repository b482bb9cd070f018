//! Interop with tower's `Change` streams, both ways.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::{Stream, TryStream};
use pin_project_lite::pin_project;
use tower::discover::Change;

use super::Update;
use crate::endpoint::{Endpoint, EndpointId};

pin_project! {
    /// See [`from_tower`].
    #[derive(Debug)]
    pub struct FromTower<S> {
        #[pin]
        inner: S,
    }
}

/// Reads a tower `Change<K, Endpoint>` stream as our updates: `Insert(k, ep)` becomes
/// `Insert(ep)` under the id `k`, `Remove(k)` becomes `Remove(k)`.
pub fn from_tower<S, K, E>(stream: S) -> FromTower<S>
where
    S: TryStream<Ok = Change<K, Endpoint>, Error = E>,
    K: Into<EndpointId>,
{
    FromTower { inner: stream }
}

impl<S, K, E> Stream for FromTower<S>
where
    S: TryStream<Ok = Change<K, Endpoint>, Error = E>,
    K: Into<EndpointId>,
{
    type Item = Result<Update, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.project().inner.try_poll_next(cx).map(|o| {
            o.map(|r| {
                r.map(|c| match c {
                    Change::Insert(k, ep) => Update::Insert(ep.with_id(k)),
                    Change::Remove(k) => Update::Remove(k.into()),
                })
            })
        })
    }
}

pin_project! {
    /// See [`into_tower`].
    #[derive(Debug)]
    pub struct IntoTower<D, M> {
        #[pin]
        inner: D,
        make: M,
        live: HashMap<EndpointId, Endpoint>,
        queue: VecDeque<Change<EndpointId, Endpoint>>,
    }
}

/// Turns our updates into a tower `Change<EndpointId, S>` stream (a
/// `tower::discover::Discover`), each endpoint made into a service by `make`, so that a
/// tower balancer can be fed from our discovery sources. A `Reset` is diffed into
/// `Remove`s and `Insert`s; an endpoint re-sent unchanged yields nothing.
pub fn into_tower<D, M, S>(updates: D, make: M) -> IntoTower<D, M>
where
    D: TryStream<Ok = Update>,
    M: FnMut(&Endpoint) -> S,
{
    IntoTower {
        inner: updates,
        make,
        live: HashMap::new(),
        queue: VecDeque::new(),
    }
}

impl<D, M, S> Stream for IntoTower<D, M>
where
    D: TryStream<Ok = Update>,
    M: FnMut(&Endpoint) -> S,
{
    type Item = Result<Change<EndpointId, S>, D::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if let Some(c) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(match c {
                    Change::Insert(k, ep) => Change::Insert(k, (this.make)(&ep)),
                    Change::Remove(k) => Change::Remove(k),
                })));
            }
            let update = match this.inner.as_mut().try_poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(u))) => u,
            };
            match update {
                Update::Insert(ep) => {
                    if this.live.get(ep.id()) != Some(&ep) {
                        this.live.insert(ep.id().clone(), ep.clone());
                        this.queue.push_back(Change::Insert(ep.id().clone(), ep));
                    }
                }
                Update::Remove(id) => {
                    if this.live.remove(&id).is_some() {
                        this.queue.push_back(Change::Remove(id));
                    }
                }
                Update::Reset(set) => {
                    let next: HashMap<EndpointId, Endpoint> = set.into_iter().map(|e| (e.id().clone(), e)).collect();
                    let gone: Vec<EndpointId> = this.live.keys().filter(|k| !next.contains_key(*k)).cloned().collect();
                    for k in gone {
                        this.live.remove(&k);
                        this.queue.push_back(Change::Remove(k));
                    }
                    for (k, ep) in next {
                        if this.live.get(&k) != Some(&ep) {
                            this.live.insert(k.clone(), ep.clone());
                            this.queue.push_back(Change::Insert(k, ep));
                        }
                    }
                }
            }
        }
    }
}
