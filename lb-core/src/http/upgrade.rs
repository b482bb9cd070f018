//! Passing an HTTP Upgrade (WebSocket and the like) through.
//!
//! Take the client side's [`OnUpgrade`] from the request (hyper's server puts it there)
//! *before* forwarding it, then, if the endpoint answers `101 Switching Protocols`, take
//! the endpoint's connection ([`Upgraded`]) from the response and [`splice`] the two:
//! bytes are copied both ways until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

pub use super::h1::Upgraded;

/// Takes the pending upgrade out of a request (hyper's [`OnUpgrade`]) or out of an
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
        self.extensions_mut().remove::<OnUpgrade>()
    }
}

impl<B> UpgradeSource for http::Response<B> {
    type Upgrade = Upgraded;

    fn take_upgrade(&mut self) -> Option<Upgraded> {
        self.extensions_mut()
            .remove::<super::h1::UpgradeSlot>()
            .and_then(super::h1::UpgradeSlot::take)
    }
}

/// Spawns a task that waits for the client's upgrade and copies bytes both ways between
/// it and the endpoint, honouring half-close. Returns the task; it ends when both
/// directions are done.
pub fn splice(client: OnUpgrade, mut endpoint: Upgraded) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let c = match client.await {
            Ok(c) => c,
            Err(err) => {
                tracing::debug!(error = %err, "upgrade failed");
                return;
            }
        };
        let mut c = TokioIo::new(c);
        match tokio::io::copy_bidirectional(&mut c, &mut endpoint).await {
            Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
            Err(err) => tracing::debug!(error = %err, "upgraded connection ended with an error"),
        }
    })
}
