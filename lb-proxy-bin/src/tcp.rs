//! TCP services, as HAProxy's `mode tcp`: balance connections, copy bytes both ways.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::runtime::Runtime;

/// Accepts connections and forwards each to an endpoint of `service`, picked by that
/// service's policy (least_conn counts open connections: the guard lives as long as
/// the connection).
pub(crate) async fn serve_tcp(
    listener: TcpListener,
    service: String,
    tls: Option<TlsAcceptor>,
    state: Arc<ArcSwap<Runtime>>,
    mut stop: watch::Receiver<bool>,
    open: Arc<()>,
    conns: Arc<crate::server::Conns>,
) {
    while let Some((client, peer, slot)) = crate::server::accept(&listener, &mut stop, &conns).await {
        let rt = state.load_full();
        let service = service.clone();
        // Held while the connection lives: graceful shutdown waits for these, and the
        // slot counts it against max_connections.
        let open = open.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _open = (open, slot);
            let _ = client.set_nodelay(true);
            keepalive(&client);
            let result = match tls {
                None => forward(rt, &service, client, peer).await,
                Some(acc) => {
                    // As for HTTPS: the handshake must end within the header read timeout.
                    let limit = rt.limits.header_read_timeout;
                    match tokio::time::timeout(limit, acc.accept(client)).await {
                        Ok(Ok(s)) if crate::tls::is_acme_validation(s.get_ref().1) => Ok(()),
                        Ok(Ok(s)) => forward(rt, &service, s, peer).await,
                        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                        Err(_) => Err("TLS handshake timed out".to_string()),
                    }
                }
            };
            if let Err(why) = result {
                tracing::info!(target: "lb_proxy::access", %peer, service = %service, error = %why, "tcp connection refused");
            }
        });
    }
}

async fn forward<C>(rt: Arc<Runtime>, service: &str, mut client: C, peer: SocketAddr) -> Result<(), String>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let upstream = rt.upstream(service).ok_or_else(|| format!("no service {service:?}"))?;
    // The service's current setting: a reload that changes it applies to new connections.
    let connect_timeout = upstream.config.connect_timeout;
    // A TCP connection has no header, cookie or path: any hash key is the client's IP.
    let key = upstream
        .settings
        .key
        .as_ref()
        .map(|_| crate::upstream::client_ip_key(peer.ip()));
    let mut last = String::from("no eligible endpoint");
    let mut failed: Option<lb_core::EndpointId> = None;
    for _ in 0..=upstream.settings.retries {
        let picked = match upstream.balancer.pick_with(key, failed.as_ref()) {
            Ok(picked) => picked,
            // After a failed attempt, that failure says more than "no endpoint".
            Err(e) if failed.is_none() => return Err(e.to_string()),
            Err(_) => return Err(last),
        };
        let mut guard = picked.guard;
        let addr = guard.endpoint().endpoint().addr();
        match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(mut backend)) => {
                // Connected: a success of the endpoint (the guard still lives as long as
                // the connection, for least_conn).
                guard.succeed();
                let _ = backend.set_nodelay(true);
                keepalive(&backend);
                let start = std::time::Instant::now();
                // copy_bidirectional shuts the write side down when a side reaches
                // EOF, so half-close passes through.
                let res = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
                let (up, down) = res.as_ref().map(|p| *p).unwrap_or((0, 0));
                tracing::info!(target: "lb_proxy::access", %peer, service, endpoint = %addr, up, down, secs = start.elapsed().as_secs_f64(), "tcp connection closed");
                drop(guard);
                return Ok(());
            }
            Ok(Err(e)) => {
                guard.fail();
                last = format!("connect {addr}: {e}");
                failed = Some(guard.endpoint().id().clone());
            }
            Err(_) => {
                guard.fail();
                last = format!("connect {addr}: timed out");
                failed = Some(guard.endpoint().id().clone());
            }
        }
    }
    Err(last)
}

/// TCP keepalive on a proxied connection: a peer that vanishes without a FIN is found
/// within about two minutes, so its connection (and the in-flight guard that keeps its
/// endpoint loaded, or draining) does not live forever.
fn keepalive(stream: &TcpStream) {
    let params = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&params) {
        tracing::debug!(error = %e, "could not set TCP keepalive");
    }
}
