//! A TCP connect probe.

use tokio::net::TcpStream;

use super::{BoxFuture, HealthCheck, ProbeError};
use crate::endpoint::Endpoint;

/// Passes when a TCP connection to the endpoint's address opens (HAProxy's plain
/// `check`). The connection is closed at once.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpProbe;

impl HealthCheck for TcpProbe {
    fn check(&self, endpoint: &Endpoint) -> BoxFuture<Result<(), ProbeError>> {
        let addr = endpoint.addr();
        Box::pin(async move {
            TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| ProbeError(format!("connect {addr}: {e}")))
        })
    }
}
