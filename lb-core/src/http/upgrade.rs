//! Passing an HTTP Upgrade (WebSocket and the like) through.
//!
//! Take the client side's [`OnUpgrade`] from the request (the [`server`] connection or
//! hyper's puts it there) *before* forwarding it, then, if the endpoint
//! answers `101 Switching Protocols`, take the endpoint's connection ([`Upgraded`]) from
//! the response and [`splice`] the two: bytes are copied both ways until either side
//! closes.

use std::sync::{Arc, Mutex, PoisonError};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

pub use super::h1::Upgraded;
use super::server;

/// The client's side of an upgrade, ready once the response that agrees to it has been
/// written to the client.
#[derive(Debug)]
pub struct OnUpgrade(Pending);

#[derive(Debug)]
enum Pending {
    Hyper(hyper::upgrade::OnUpgrade),
    Server(oneshot::Receiver<server::Upgraded>),
}

/// Takes the pending upgrade out of a request (an [`OnUpgrade`]) or out of an
/// [`EndpointService`](super::EndpointService) response (the endpoint's [`Upgraded`]
/// connection), if there is one.
pub fn take<T>(msg: &mut T) -> Option<T::Upgrade>
where
    T: UpgradeSource,
{
    msg.take_upgrade()
}

/// A request or response that may carry an upgrade.
pub trait UpgradeSource {
    /// What the upgrade is.
    type Upgrade;

    /// Removes and returns the pending upgrade.
    fn take_upgrade(&mut self) -> Option<Self::Upgrade>;
}

impl<B> UpgradeSource for http::Request<B> {
    type Upgrade = OnUpgrade;

    fn take_upgrade(&mut self) -> Option<OnUpgrade> {
        let ext = self.extensions_mut();
        if let Some(rx) = ext.remove::<server::PendingUpgrade>().and_then(TakeOnce::take) {
            return Some(OnUpgrade(Pending::Server(rx)));
        }
        ext.remove::<hyper::upgrade::OnUpgrade>()
            .map(|on| OnUpgrade(Pending::Hyper(on)))
    }
}

impl<B> UpgradeSource for http::Response<B> {
    type Upgrade = Upgraded;

    fn take_upgrade(&mut self) -> Option<Upgraded> {
        self.extensions_mut()
            .remove::<TakeOnce<Upgraded>>()
            .and_then(TakeOnce::take)
    }
}

/// An extension that carries what cannot be cloned (a connection, a receiver):
/// extensions must be `Clone`, so the clones share it and the first to take it has it.
pub(super) struct TakeOnce<T>(Arc<Mutex<Option<T>>>);

impl<T> Clone for TakeOnce<T> {
    fn clone(&self) -> Self {
        TakeOnce(self.0.clone())
    }
}

impl<T> TakeOnce<T> {
    pub(super) fn new(value: T) -> Self {
        TakeOnce(Arc::new(Mutex::new(Some(value))))
    }

    pub(super) fn take(self) -> Option<T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Spawns a task that waits for the client's upgrade and copies bytes both ways between
/// it and the endpoint, honouring half-close. Returns the task; it ends when both
/// directions are done.
pub fn splice(client: OnUpgrade, endpoint: Upgraded) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        match client.0 {
            Pending::Hyper(on) => match on.await {
                Ok(c) => copy(TokioIo::new(c), endpoint).await,
                Err(err) => tracing::debug!(error = %err, "upgrade failed"),
            },
            Pending::Server(rx) => match rx.await {
                Ok(c) => copy(c, endpoint).await,
                Err(_) => tracing::debug!("upgrade failed: the client connection ended first"),
            },
        }
    })
}

async fn copy<C: AsyncRead + AsyncWrite + Unpin>(mut client: C, mut endpoint: Upgraded) {
    match tokio::io::copy_bidirectional(&mut client, &mut endpoint).await {
        Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
        Err(err) => tracing::debug!(error = %err, "upgraded connection ended with an error"),
    }
}
