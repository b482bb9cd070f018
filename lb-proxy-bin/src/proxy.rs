//! The request path: route, prepare, balance, answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use lb_core::http::{boxed, forward, full, upgrade, Body};
use lb_core::HashKey;

use crate::runtime::Runtime;

/// A plain-text error response.
pub(crate) fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut rsp = Response::new(full(text));
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    rsp
}

/// Serves one client request.
pub(crate) async fn handle(
    rt: Arc<Runtime>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    proto: &'static str,
) -> Response<Body> {
    let start = Instant::now();
    let Some(upstream) = rt.route(forward::request_host(&req), req.uri().path()) else {
        let host = forward::request_host(&req).unwrap_or("");
        tracing::info!(target: "lb_proxy::access", %peer, method = %req.method(), path = %req.uri().path(), status = 404, "no route");
        rt.metrics.unrouted();
        return plain(
            StatusCode::NOT_FOUND,
            format!("404 Not Found: no route for {host}{}\n", req.uri().path()),
        );
    };
    if let Some(max) = rt.max_body {
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("413 Payload Too Large: the limit is {max} bytes\n"),
            );
        }
    }
    let client_upgrade = if forward::is_upgrade(&req) {
        upgrade::take(&mut req)
    } else {
        None
    };
    // For the access log: clones of parsed values share their bytes (no copy).
    let method = req.method().clone();
    let uri = req.uri().clone();
    let path = uri.path();
    let mut req = match rt.max_body {
        // A chunked body that grows past the limit fails the request mid-stream.
        Some(max) => req.map(|b| boxed(http_body_util::Limited::new(b, max as usize))),
        None => req.map(boxed),
    };
    forward::prepare_request(&mut req, peer.ip(), proto);
    if let Some(k) = upstream.settings.key.as_ref().and_then(|k| k.key(&req, peer)) {
        req.extensions_mut().insert(HashKey(k));
    }
    let result = upstream.send(req, &rt.metrics).await;
    let elapsed = start.elapsed();
    match result {
        Ok(mut rsp) => {
            let status = rsp.status();
            let endpoint = rsp.body().guard().map(|g| g.endpoint().id().clone());
            rt.metrics
                .request(&upstream.name, endpoint.as_ref(), status.as_u16(), elapsed);
            tracing::info!(target: "lb_proxy::access", %peer, %method, %path, service = %upstream.name, endpoint = %endpoint.as_ref().map(|e| e.as_str()).unwrap_or("-"), status = status.as_u16(), ms = elapsed.as_secs_f64() * 1e3, "request");
            if status == StatusCode::SWITCHING_PROTOCOLS {
                if let (Some(c), Some(e)) = (client_upgrade, upgrade::take(&mut rsp)) {
                    upgrade::splice(c, e);
                }
            }
            forward::prepare_response(&mut rsp);
            rsp.map(boxed)
        }
        Err(f) => {
            let status = f.status();
            rt.metrics.request(&upstream.name, None, status.as_u16(), elapsed);
            tracing::info!(target: "lb_proxy::access", %peer, %method, %path, service = %upstream.name, status = status.as_u16(), error = %f.reason(), "request failed");
            plain(
                status,
                format!(
                    "{} {}: service {}: {}\n",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or(""),
                    upstream.name,
                    f.reason()
                ),
            )
        }
    }
}
