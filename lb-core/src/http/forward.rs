//! Preparing requests and responses for the hop through a proxy (RFC 9110 §7.6).

use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{Request, Response, StatusCode, Version};

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether `name` is hop-by-hop by itself (RFC 9110 §7.6.1, plus the legacy
/// `Keep-Alive` and `Proxy-Connection`).
#[inline]
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TE
        || name == TRAILER
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == PROXY_AUTHENTICATE
        || name == PROXY_AUTHORIZATION
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
}

/// Whether the request asks to switch protocols (`Connection: upgrade` plus an
/// `Upgrade` header), as a WebSocket handshake does.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(UPGRADE) && connection_lists(req.headers(), "upgrade")
}

/// Whether a `Connection` header lists `token` (case-insensitive).
pub(crate) fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Removes hop-by-hop headers: the fixed list, `Upgrade`, and every header the
/// `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names, no lookups, no allocation.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in named {
        headers.remove(h);
    }
    for h in [
        &CONNECTION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
        &PROXY_AUTHENTICATE,
        &PROXY_AUTHORIZATION,
    ] {
        headers.remove(h);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
}

/// The host the client asked for: the `Host` header, or the URI's authority (HTTP/2).
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// Prepares a client's request for the hop to an endpoint.
///
/// Hop-by-hop headers go (but an upgrade request keeps `Connection: upgrade` and its
/// `Upgrade`), the client's address is appended to `X-Forwarded-For`, `X-Forwarded-Proto`
/// is set to `proto` and `X-Forwarded-Host` to the requested host, which also stays in
/// `Host` (set from the URI authority for HTTP/2 clients). The request goes out as
/// HTTP/1.1.
pub fn prepare_request<B>(req: &mut Request<B>, client: IpAddr, proto: &'static str) {
    let upgrade = if is_upgrade(req) {
        req.headers().get(UPGRADE).cloned()
    } else {
        None
    };
    // The Host header's value is shared, not copied; HTTP/2 clients name the host in
    // the URI instead.
    let host = match req.headers().get(HOST) {
        Some(h) => Some(h.clone()),
        None => req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    if let Some(u) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, u);
    }
    // "prev, client" written into a stack buffer: one allocation, inside HeaderValue.
    let mut buf = [0u8; 512];
    let mut w = &mut buf[..];
    let prev = headers
        .get(&X_FORWARDED_FOR)
        .map(HeaderValue::as_bytes)
        .filter(|p| !p.is_empty());
    let wrote = match prev {
        Some(p) if p.len() < 400 => {
            use std::io::Write;
            w.write_all(p).and_then(|()| write!(w, ", {client}"))
        }
        Some(_) => Err(std::io::ErrorKind::WriteZero.into()),
        None => {
            use std::io::Write;
            write!(w, "{client}")
        }
    };
    let len = 512 - w.len();
    match wrote.ok().and_then(|()| HeaderValue::from_bytes(&buf[..len]).ok()) {
        Some(v) => {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        None => {
            // An unusually long chain: the slow way.
            let prev = headers
                .get(&X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if let Ok(v) = HeaderValue::from_str(&format!("{prev}, {client}")) {
                headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST.clone(), h.clone());
        headers.entry(HOST).or_insert(h);
    }
    *req.version_mut() = Version::HTTP_11;
}

/// Prepares an endpoint's response for the hop back: hop-by-hop headers go, except on
/// a `101 Switching Protocols`, which keeps `Connection` and `Upgrade`.
pub fn prepare_response<B>(rsp: &mut Response<B>) {
    if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    strip_hop_by_hop(rsp.headers_mut());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_and_sets_forwarding_headers() {
        let mut req = Request::get("/a")
            .header(HOST, "web.localhost")
            .header(CONNECTION, "keep-alive, x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("x-forwarded-for", "10.0.0.1")
            .body(())
            .unwrap();
        prepare_request(&mut req, "127.0.0.1".parse().unwrap(), "http");
        let h = req.headers();
        assert!(
            h.get("x-secret").is_none(),
            "headers named by Connection are hop-by-hop"
        );
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(CONNECTION).is_none());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "web.localhost");
        assert_eq!(h[HOST], "web.localhost");
    }

    #[test]
    fn upgrade_keeps_its_headers() {
        let mut req = Request::get("/ws")
            .header(HOST, "a")
            .header(CONNECTION, "Upgrade")
            .header(UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(is_upgrade(&req));
        prepare_request(&mut req, "::1".parse().unwrap(), "https");
        assert_eq!(req.headers()[UPGRADE], "websocket");
        assert_eq!(req.headers()[CONNECTION], "upgrade");
    }

    #[test]
    fn http2_authority_becomes_host() {
        let mut req = Request::get("http://api.localhost/x")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        prepare_request(&mut req, "127.0.0.1".parse().unwrap(), "http");
        assert_eq!(req.headers()[HOST], "api.localhost");
        assert_eq!(req.version(), Version::HTTP_11);
    }

    #[test]
    fn connection_tokens() {
        let mut h = HeaderMap::new();
        assert!(!connection_lists(&h, "close"));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!connection_lists(&h, "close"));
        h.append(CONNECTION, HeaderValue::from_static("Upgrade, Close"));
        assert!(connection_lists(&h, "close"));
    }
}
