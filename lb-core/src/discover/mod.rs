//! Discovery: how endpoints reach a balancer.
//!
//! A source is any [`Stream`] of `Result<Update, E>` (see [`Discover`]). Sources that
//! see whole sets (Docker, Consul, a file) send [`Update::Reset`], and the balancer
//! diffs it against what it holds: endpoints absent from the new set drain, new ones
//! join, and those present in both keep their counters and health while their weight
//! and metadata update in place. Sources that see changes send [`Update::Insert`] and
//! [`Update::Remove`].
//!
//! An embedder feeding endpoints from code uses [`channel`]; a tower user with a
//! stream of [`tower::discover::Change`] uses [`from_tower`], and one that wants
//! tower's balancers fed from our sources uses [`into_tower`].

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use crate::endpoint::{Endpoint, EndpointId};

mod backoff;
pub mod catalog;
mod hints;
mod push;
mod tower_interop;

pub use self::backoff::Backoff;
pub use self::hints::HintError;
pub use self::push::{channel, Publisher, Subscription};
pub use self::tower_interop::{from_tower, into_tower, FromTower, IntoTower};

/// One change to a balancer's endpoint set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// The complete set: endpoints not in it are removed (they drain).
    Reset(Vec<Endpoint>),
    /// Adds an endpoint, or updates an existing one (same id) in place.
    Insert(Endpoint),
    /// Removes an endpoint: it drains.
    Remove(EndpointId),
}

/// A discovery source: a stream of [`Update`]s.
///
/// Implemented for every `Stream<Item = Result<Update, E>>`. When the stream ends the
/// balancer keeps its last set; when it yields an error the balancer logs it and keeps
/// its last set (sources are expected to retry with backoff themselves and say so).
pub trait Discover: Stream<Item = Result<Update, Self::Error>> + Send + 'static {
    /// The error a source may report.
    type Error: std::error::Error + Send + Sync + 'static;
}

impl<S, E> Discover for S
where
    S: Stream<Item = Result<Update, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    type Error = E;
}

/// A source that yields one `Reset` and then stays open, so the balancer keeps the set.
///
/// # Examples
///
/// ```
/// use lb_core::{discover, Endpoint};
///
/// let src = discover::fixed([Endpoint::new("127.0.0.1:9001".parse().unwrap())]);
/// # let _ = src;
/// ```
pub fn fixed(endpoints: impl IntoIterator<Item = Endpoint>) -> Fixed {
    Fixed {
        set: Some(endpoints.into_iter().collect()),
    }
}

/// See [`fixed`].
#[derive(Debug)]
pub struct Fixed {
    set: Option<Vec<Endpoint>>,
}

impl Stream for Fixed {
    type Item = Result<Update, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.set.take() {
            Some(set) => Poll::Ready(Some(Ok(Update::Reset(set)))),
            None => Poll::Pending,
        }
    }
}
