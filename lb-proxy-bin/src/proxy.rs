//! The request path: check the host, route, prepare, balance, answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, FORWARDED, HOST, LOCATION, STRICT_TRANSPORT_SECURITY,
    UPGRADE,
};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use lb_core::http::forward::{self, X_FORWARDED_FOR};
use lb_core::http::server::RequestBody;
use lb_core::http::{boxed, empty, full, upgrade, Body};

use crate::body::{ClientBody, Fault};
use crate::config::Forwarded;
use crate::runtime::Runtime;

/// `HTTP2-Settings`: only meaningful with an `Upgrade: h2c`, which is never passed.
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// A plain-text error response.
pub(crate) fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut rsp = Response::new(full(text));
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    rsp
}

/// A plain-text refusal of the client's request after which the connection is closed
/// (its request body may still be on the way).
fn refuse(status: StatusCode, text: String) -> Response<Body> {
    let mut rsp = plain(status, text);
    rsp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    rsp
}

/// Serves one client request; HTTPS responses get `Strict-Transport-Security` when
/// `[server] hsts` asks for it.
pub(crate) async fn handle(
    rt: Arc<Runtime>,
    req: Request<RequestBody>,
    peer: SocketAddr,
    proto: &'static str,
) -> Response<Body> {
    let hsts = match (&rt.https, proto) {
        (Some(https), "https") => https.hsts.clone(),
        _ => None,
    };
    let mut rsp = serve(rt, req, peer, proto).await;
    if let Some(v) = hsts {
        rsp.headers_mut().insert(STRICT_TRANSPORT_SECURITY, v);
    }
    rsp
}

/// A `308 Permanent Redirect` to the same host, path and query over HTTPS (308 keeps
/// the method and body, where 301 lets clients turn a POST into a GET).
fn redirect_https(host: &str, req: &Request<RequestBody>, port: Option<u16>) -> Response<Body> {
    let name = crate::host::route_name(host);
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = match port {
        Some(p) => format!("https://{name}:{p}{path}"),
        None => format!("https://{name}{path}"),
    };
    let mut rsp = plain(
        StatusCode::PERMANENT_REDIRECT,
        format!("308 Permanent Redirect: {location}\n"),
    );
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            rsp.headers_mut().insert(LOCATION, v);
        }
        Err(_) => {
            return plain(
                StatusCode::BAD_REQUEST,
                "400 Bad Request: cannot redirect this request\n".into(),
            )
        }
    }
    rsp
}

async fn serve(
    rt: Arc<Runtime>,
    mut req: Request<RequestBody>,
    peer: SocketAddr,
    proto: &'static str,
) -> Response<Body> {
    let start = Instant::now();
    let authority = match crate::host::authority(&req) {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(target: "lb_proxy::access", %peer, method = %req.method(), path = %req.uri().path(), status = 400, reason = e.reason(), "bad host");
            return refuse(StatusCode::BAD_REQUEST, format!("400 Bad Request: {}\n", e.reason()));
        }
    };
    let host = authority.as_ref().and_then(|a| a.to_str().ok());
    let found = rt.route(host, req.uri().path());
    if let (Some(https), "http", Some(host)) = (&rt.https, proto, host) {
        let wanted = found.map_or(https.redirect, |(_, r)| r.redirect_https.unwrap_or(https.redirect));
        // The ACME challenge path is never redirected (RFC 8555 8.3 allows it, but an
        // HTTPS listener without a certificate yet could not answer).
        if wanted && !req.uri().path().starts_with(crate::server::ACME_CHALLENGE_PATH) {
            tracing::info!(target: "lb_proxy::access", %peer, method = %req.method(), path = %req.uri().path(), status = 308, "redirect to https");
            return redirect_https(host, &req, https.port);
        }
    }
    let Some((upstream, route)) = found else {
        tracing::info!(target: "lb_proxy::access", %peer, method = %req.method(), path = %req.uri().path(), status = 404, "no route");
        rt.metrics.unrouted();
        return plain(
            StatusCode::NOT_FOUND,
            format!(
                "404 Not Found: no route for {}{}\n",
                host.map(crate::host::route_name).unwrap_or(""),
                req.uri().path()
            ),
        );
    };
    if let Some(max) = rt.max_body {
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("413 Payload Too Large: the limit is {max} bytes\n"),
            );
        }
    }
    // One Host, the authority the request is for (an absolute URI's or :authority wins).
    if let Some(a) = &authority {
        req.headers_mut().insert(HOST, a.clone());
    }
    let client_upgrade = if allow_upgrade(req.headers_mut(), &route.upgrades) {
        upgrade::take(&mut req)
    } else {
        None
    };
    let asked = req.headers().get(UPGRADE).cloned();
    forwarded(req.headers_mut(), rt.limits.forwarded, peer, proto);
    // For the access log: clones of parsed values share their bytes (no copy).
    let method = req.method().clone();
    let uri = req.uri().clone();
    let path = uri.path();
    let fault = (!req.body().is_end_stream()).then(|| Arc::new(Fault::default()));
    let mut req = match &fault {
        Some(f) => req.map(|b| boxed(ClientBody::new(b, rt.max_body, rt.limits.body_read_timeout, f.clone()))),
        // Nothing left to read: an empty body, which costs no allocation.
        None => req.map(|_| empty()),
    };
    forward::prepare_request(&mut req, peer.ip(), proto);
    let key = upstream.settings.key.as_ref().and_then(|k| k.key(&req, peer));
    let result = upstream.send(req, key, fault.as_ref(), &rt.metrics).await;
    let elapsed = start.elapsed();
    match result {
        Ok(mut rsp) => {
            let status = rsp.status();
            let endpoint = rsp.body().endpoint().clone();
            if status == StatusCode::SWITCHING_PROTOCOLS {
                // Only the protocol the client asked for, and the route passes: anything
                // else would splice a raw tunnel past routing.
                let agreed = match (&asked, rsp.headers().get(UPGRADE)) {
                    (Some(a), Some(got)) => protocols(a).any(|p| protocols(got).any(|g| g == p)),
                    _ => false,
                };
                let endpoint_side = upgrade::take(&mut rsp);
                match (agreed, client_upgrade, endpoint_side) {
                    (true, Some(c), Some(e)) => {
                        upgrade::splice(c, e);
                    }
                    _ => {
                        tracing::info!(target: "lb_proxy::access", %peer, %method, %path, service = %upstream.name, endpoint = %endpoint, status = 502, "the endpoint switched protocols unasked");
                        rt.metrics.request(&upstream.name, Some(&endpoint), 502, elapsed);
                        return plain(
                            StatusCode::BAD_GATEWAY,
                            format!(
                                "502 Bad Gateway: service {}: the endpoint switched to a protocol not asked for\n",
                                upstream.name
                            ),
                        );
                    }
                }
            }
            rt.metrics
                .request(&upstream.name, Some(&endpoint), status.as_u16(), elapsed);
            tracing::info!(target: "lb_proxy::access", %peer, %method, %path, service = %upstream.name, endpoint = %endpoint, status = status.as_u16(), ms = elapsed.as_secs_f64() * 1e3, "request");
            forward::prepare_response(&mut rsp);
            rsp.map(boxed)
        }
        Err(f) => {
            let status = f.status();
            rt.metrics.request(&upstream.name, None, status.as_u16(), elapsed);
            tracing::info!(target: "lb_proxy::access", %peer, %method, %path, service = %upstream.name, status = status.as_u16(), error = %f.detail(), "request failed");
            let text = format!(
                "{} {}: service {}: {}\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                upstream.name,
                f.reason()
            );
            if status.is_client_error() {
                refuse(status, text)
            } else {
                plain(status, text)
            }
        }
    }
}

/// The protocol names of an `Upgrade` value, lowercase, without versions
/// (`WebSocket, TLS/1.2` -> `websocket`, `tls`).
fn protocols(v: &HeaderValue) -> impl Iterator<Item = String> + '_ {
    v.to_str()
        .unwrap_or("")
        .split(',')
        .map(|p| p.trim().split('/').next().unwrap_or("").trim().to_ascii_lowercase())
        .filter(|p| !p.is_empty())
}

/// Keeps in `Upgrade` only the protocols the route passes (never `h2c`, as nginx and
/// Envoy do), and drops `HTTP2-Settings`. `true` if the request still asks to upgrade.
pub(crate) fn allow_upgrade(headers: &mut HeaderMap, allowed: &[String]) -> bool {
    headers.remove(&HTTP2_SETTINGS);
    let Some(v) = headers.get(UPGRADE) else {
        return false;
    };
    let text = v.to_str().unwrap_or("");
    let kept: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|p| {
            let name = p.split('/').next().unwrap_or("").trim().to_ascii_lowercase();
            name != "h2c" && allowed.contains(&name)
        })
        .collect();
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if kept.is_empty() || !asks {
        // Passed on as a plain request: no Upgrade, and Connection's `upgrade` token
        // goes with the other hop-by-hop headers.
        headers.remove(UPGRADE);
        return false;
    }
    if kept.len() != text.split(',').count() {
        if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
            headers.insert(UPGRADE, v);
        }
    }
    true
}

/// Applies `[server] forwarded` to the client's `Forwarded` and `X-Forwarded-For`
/// (which `prepare_request` then extends with the client's address): kept and appended
/// to, or replaced.
pub(crate) fn forwarded(headers: &mut HeaderMap, mode: Forwarded, peer: SocketAddr, proto: &str) {
    match mode {
        Forwarded::Replace => {
            headers.remove(&X_FORWARDED_FOR);
            headers.remove(FORWARDED);
        }
        Forwarded::Append => {
            if headers.contains_key(FORWARDED) {
                // RFC 7239: a new element for this hop; an IPv6 node is quoted.
                let node = match peer.ip() {
                    std::net::IpAddr::V4(ip) => ip.to_string(),
                    std::net::IpAddr::V6(ip) => format!("\"[{ip}]\""),
                };
                let prev: Vec<&str> = headers
                    .get_all(FORWARDED)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                let joined = format!("{}, for={node};proto={proto}", prev.join(", "));
                match HeaderValue::from_str(&joined) {
                    Ok(v) => {
                        headers.insert(FORWARDED, v);
                    }
                    Err(_) => {
                        headers.remove(FORWARDED);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn upgrades_pass_only_when_allowed() {
        let ws = vec!["websocket".to_string()];
        let mut h = headers(&[("connection", "Upgrade"), ("upgrade", "WebSocket")]);
        assert!(allow_upgrade(&mut h, &ws));
        assert_eq!(h[UPGRADE], "WebSocket");
        let mut h = headers(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
        ]);
        assert!(!allow_upgrade(&mut h, &ws));
        assert!(h.get(UPGRADE).is_none() && h.get("http2-settings").is_none());
        let mut h = headers(&[("connection", "upgrade"), ("upgrade", "h2c, websocket")]);
        assert!(allow_upgrade(&mut h, &ws));
        assert_eq!(h[UPGRADE], "websocket", "h2c goes, websocket stays");
        let mut h = headers(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        assert!(!allow_upgrade(&mut h, &[]), "a route with no upgrades");
        assert!(h.get(UPGRADE).is_none());
        let mut h = headers(&[("upgrade", "websocket")]);
        assert!(!allow_upgrade(&mut h, &ws), "no Connection: upgrade");
        let h2c = vec!["h2c".to_string()];
        let mut h = headers(&[("connection", "upgrade"), ("upgrade", "h2c")]);
        assert!(!allow_upgrade(&mut h, &h2c), "h2c never passes, whatever the list");
    }

    #[test]
    fn forwarded_append_or_replace() {
        let peer: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let mut h = headers(&[("forwarded", "for=192.0.2.7"), ("x-forwarded-for", "192.0.2.7")]);
        forwarded(&mut h, Forwarded::Append, peer, "https");
        assert_eq!(h[FORWARDED], "for=192.0.2.7, for=\"[2001:db8::1]\";proto=https");
        assert_eq!(h["x-forwarded-for"], "192.0.2.7", "prepare_request appends to it");
        let mut h = headers(&[("forwarded", "for=192.0.2.7"), ("x-forwarded-for", "192.0.2.7")]);
        forwarded(&mut h, Forwarded::Replace, peer, "http");
        assert!(h.get(FORWARDED).is_none() && h.get("x-forwarded-for").is_none());
        let mut h = HeaderMap::new();
        forwarded(&mut h, Forwarded::Append, peer, "http");
        assert!(h.get(FORWARDED).is_none(), "no Forwarded is made up");
    }
}
