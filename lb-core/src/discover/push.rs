//! A push handle: feed a balancer from code.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::mpsc;

use super::Update;
use crate::endpoint::{Endpoint, EndpointId};

/// Makes a [`Publisher`] and the [`Subscription`] stream a balancer reads.
///
/// # Examples
///
/// ```
/// use lb_core::{discover, Endpoint};
///
/// let (publisher, subscription) = discover::channel();
/// publisher.insert(Endpoint::new("127.0.0.1:9001".parse().unwrap()));
/// publisher.remove("127.0.0.1:9001");
/// # drop(subscription);
/// ```
pub fn channel() -> (Publisher, Subscription) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Publisher { tx }, Subscription { rx })
}

/// Sends updates to a balancer. Cheap to clone; sends never block.
#[derive(Clone, Debug)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Update>,
}

impl Publisher {
    /// Sends any update. Returns `false` if the balancer is gone.
    pub fn send(&self, update: Update) -> bool {
        self.tx.send(update).is_ok()
    }

    /// Adds or updates one endpoint.
    pub fn insert(&self, endpoint: Endpoint) -> bool {
        self.send(Update::Insert(endpoint))
    }

    /// Removes one endpoint (it drains).
    pub fn remove(&self, id: impl Into<EndpointId>) -> bool {
        self.send(Update::Remove(id.into()))
    }

    /// Replaces the whole set.
    pub fn reset(&self, endpoints: impl IntoIterator<Item = Endpoint>) -> bool {
        self.send(Update::Reset(endpoints.into_iter().collect()))
    }

    /// Whether the receiving side is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The receiving side of [`channel`]: a discovery stream that never fails and ends
/// when every [`Publisher`] is dropped.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Update>,
}

impl Stream for Subscription {
    type Item = Result<Update, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|u| u.map(Ok))
    }
}
