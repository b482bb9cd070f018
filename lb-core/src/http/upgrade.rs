//! Passing an HTTP Upgrade (WebSocket and the like) through.
//!
//! Take the client side's [`OnUpgrade`] from the request *before* forwarding it, then,
//! if the endpoint answers `101 Switching Protocols`, take the endpoint side's from the
//! response and [`splice`] the two: bytes are copied both ways until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Takes the pending upgrade out of a request or response, if hyper put one there.
pub fn take<T>(msg: &mut T) -> Option<OnUpgrade>
where
    T: UpgradeSource,
{
    msg.take_upgrade()
}

/// A request or response that may carry an upgrade.
pub trait UpgradeSource {
    /// Removes and returns the pending upgrade.
    fn take_upgrade(&mut self) -> Option<OnUpgrade>;
}

impl<B> UpgradeSource for http::Request<B> {
    fn take_upgrade(&mut self) -> Option<OnUpgrade> {
        self.extensions_mut().remove::<OnUpgrade>()
    }
}

impl<B> UpgradeSource for http::Response<B> {
    fn take_upgrade(&mut self) -> Option<OnUpgrade> {
        self.extensions_mut().remove::<OnUpgrade>()
    }
}

/// Spawns a task that waits for both upgrades and copies bytes both ways, honouring
/// half-close. Returns the task; it ends when both directions are done.
pub fn splice(client: OnUpgrade, endpoint: OnUpgrade) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (c, e) = match tokio::try_join!(client, endpoint) {
            Ok(pair) => pair,
            Err(err) => {
                tracing::debug!(error = %err, "upgrade failed");
                return;
            }
        };
        let mut c = TokioIo::new(c);
        let mut e = TokioIo::new(e);
        match tokio::io::copy_bidirectional(&mut c, &mut e).await {
            Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
            Err(err) => tracing::debug!(error = %err, "upgraded connection ended with an error"),
        }
    })
}
