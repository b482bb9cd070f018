//! Listeners: HTTP/1.1 and HTTP/2 (h2c with prior knowledge, h2 by ALPN over TLS),
//! header limits and read timeouts, graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::proxy;
use crate::runtime::Runtime;

/// Limits applied to client connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_header_bytes: usize,
    pub(crate) header_read_timeout: Duration,
}

fn builder(limits: Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// The next connection, or `None` once `stop` turns true (or its sender is gone).
/// Accept errors (EMFILE and friends) are logged and retried after a short pause
/// rather than spun on.
pub(crate) async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        if *stop.borrow_and_update() {
            return None;
        }
        tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::warn!(listen = ?listener.local_addr().ok(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            r = stop.changed() => {
                if r.is_err() {
                    return None;
                }
            }
        }
    }
}

/// Accepts connections on `listener` until `stop` turns true; each connection is
/// watched by `graceful` so shutdown can wait for it.
pub(crate) async fn serve_http(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<ArcSwap<Runtime>>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
) {
    let builder = Arc::new(builder(limits));
    let proto: &'static str = if tls.is_some() { "https" } else { "http" };
    let local = listener.local_addr().ok();
    while let Some((tcp, peer)) = accept(&listener, &mut stop).await {
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        // An owned watcher, not the shutdown handle: shutdown never waits on a
        // connection that is still being set up (a slow TLS handshake).
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_conn(&builder, watcher, TokioIo::new(tcp), state, peer, proto).await,
                Some(acc) => match tokio::time::timeout(limits.header_read_timeout, acc.accept(tcp)).await {
                    Ok(Ok(s)) => serve_conn(&builder, watcher, TokioIo::new(s), state, peer, proto).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
    tracing::info!(listen = ?local, "listener closed");
}

async fn serve_conn<I>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    io: I,
    state: Arc<ArcSwap<Runtime>>,
    peer: SocketAddr,
    proto: &'static str,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let rt = state.load_full();
        async move { Ok::<_, Infallible>(proxy::handle(rt, req, peer, proto).await) }
    });
    let conn = builder.serve_connection_with_upgrades(io, svc);
    let conn = watcher.watch(conn.into_owned());
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
    }
}
