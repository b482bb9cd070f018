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

/// The headers that are hop-by-hop by themselves (RFC 9110 §7.6.1, plus the legacy
/// `Keep-Alive` and `Proxy-Connection`).
static HOP_BY_HOP: [&HeaderName; 9] = [
    &CONNECTION,
    &TE,
    &TRAILER,
    &TRANSFER_ENCODING,
    &UPGRADE,
    &PROXY_AUTHENTICATE,
    &PROXY_AUTHORIZATION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
];

/// `name`'s place in [`HOP_BY_HOP`], if it is there. Most names are ruled out by
/// their length alone (no name of the list is 4, 6, 12 or 14 letters long: `Host`,
/// `Date`, `Server`, `Content-Type`, `Content-Length`), before nine comparisons.
#[inline]
fn hop_by_hop(name: &HeaderName) -> Option<usize> {
    match name.as_str().len() {
        2 | 7 | 10 | 16..=19 => HOP_BY_HOP.iter().position(|h| *h == name),
        _ => None,
    }
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
    // One pass over the names finds which of the fixed list are here; most messages
    // carry none, or only `Connection` (an endpoint's `keep-alive`): only those are
    // looked up again, to be removed.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop(name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // What `Connection` names besides the fixed list and `close` (rare: no allocation
    // unless there is some).
    let mut named: Vec<HeaderName> = Vec::new();
    for v in headers.get_all(CONNECTION) {
        for t in v.as_bytes().split(|&b| b == b',') {
            let t = t.trim_ascii();
            if t.is_empty()
                || t.eq_ignore_ascii_case(b"close")
                || HOP_BY_HOP.iter().any(|h| t.eq_ignore_ascii_case(h.as_str().as_bytes()))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(t) {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
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
            w.write_all(p)
                .and_then(|()| w.write_all(b", "))
                .and_then(|()| write_ip(&mut w, client))
        }
        Some(_) => Err(std::io::ErrorKind::WriteZero.into()),
        None => write_ip(&mut w, client),
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

/// Writes `ip` as text: an IPv4 address digit by digit (`Display` through the
/// formatting machinery cost as much as the rest of the forwarding headers together).
fn write_ip(w: &mut &mut [u8], ip: IpAddr) -> std::io::Result<()> {
    use std::io::Write;
    let IpAddr::V4(v4) = ip else {
        return write!(w, "{ip}");
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    w.write_all(&text[..len])
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
    fn ip_text_as_display() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "192.168.1.20",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = [0u8; 64];
            let mut w = &mut buf[..];
            write_ip(&mut w, ip).unwrap();
            let len = 64 - w.len();
            assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn every_hop_by_hop_name_passes_the_length_filter() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop(name), Some(i), "{name}");
            // Parsed from the wire, in any case.
            let parsed = HeaderName::from_bytes(name.as_str().to_ascii_uppercase().as_bytes()).unwrap();
            assert_eq!(hop_by_hop(&parsed), Some(i), "{name}");
        }
        for name in [
            "host",
            "x-forwarded-proto",
            "x-forwarded-host",
            "content-length",
            "upgrade-insecure-requests",
        ] {
            assert_eq!(hop_by_hop(&HeaderName::from_static(name)), None, "{name}");
        }
    }

    #[test]
    fn strips_only_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, close, X-Trace"));
        h.insert("x-trace", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type"]);
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "nothing hop-by-hop, nothing removed");
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
