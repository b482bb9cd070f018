//! Which host a request is for, and when to refuse it (RFC 9112 §3.2, RFC 9113 §8.3.1).
//!
//! - An HTTP/1.1 request without `Host`, any request with two `Host` lines, and any
//!   `Host` (or URI authority) that is not `host[:port]` is refused with 400: a proxy that
//!   routed on one `Host` and forwarded another would let a client reach a service its
//!   route does not name.
//! - The authority of an absolute-form URI (`GET http://a.example/ HTTP/1.1`) and
//!   HTTP/2's `:authority` win over `Host`; the request is forwarded with that authority
//!   as its one `Host`.
//! - Routes match the host without its port and without a trailing dot, ignoring case.

use http::header::{HeaderValue, HOST};
use http::{Request, Version};

/// Why a request's host is refused (each is a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostError {
    /// An HTTP/1.1 request without `Host`.
    Missing,
    /// More than one `Host` line.
    Duplicate,
    /// A `Host` or URI authority that is not `host[:port]` (user info, an empty host, a
    /// bad port, characters no host has).
    Invalid,
}

impl HostError {
    /// The reason, for the 400's body.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            HostError::Missing => "an HTTP/1.1 request needs a Host header",
            HostError::Duplicate => "more than one Host header",
            HostError::Invalid => "the Host header (or the URI's authority) is not a valid host[:port]",
        }
    }
}

/// The authority `req` is for, as it will be forwarded in `Host`: the URI's authority
/// (absolute form, HTTP/2's `:authority`) if it has one, else the `Host` header. `None`
/// for an HTTP/1.0 or HTTP/2 request that names no host.
///
/// # Errors
///
/// [`HostError`] as the module docs say.
pub(crate) fn authority<B>(req: &Request<B>) -> Result<Option<HeaderValue>, HostError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Duplicate);
    }
    if let Some(h) = host {
        if !valid_authority(h.as_bytes()) {
            return Err(HostError::Invalid);
        }
    } else if req.version() == Version::HTTP_11 {
        return Err(HostError::Missing);
    }
    if let Some(a) = req.uri().authority() {
        let text = a.as_str();
        if !valid_authority(text.as_bytes()) {
            return Err(HostError::Invalid);
        }
        return HeaderValue::from_str(text).map(Some).map_err(|_| HostError::Invalid);
    }
    Ok(host.cloned())
}

/// `host[:port]` as RFC 3986 §3.2 writes it for an `http` URI: a non-empty reg-name
/// (unreserved, percent-encoded and sub-delim characters) or a bracketed IPv6 literal,
/// then optionally `:` and a port up to 65535. No user info.
pub(crate) fn valid_authority(text: &[u8]) -> bool {
    let (host, port) = if text.first() == Some(&b'[') {
        let Some(end) = text.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &text[1..end];
        let ok = std::str::from_utf8(literal)
            .ok()
            .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok())
            .is_some();
        if !ok {
            return false;
        }
        match &text[end + 1..] {
            [] => (&text[..=end], None),
            [b':', port @ ..] => (&text[..=end], Some(port)),
            _ => return false,
        }
    } else {
        let (host, port) = match text.iter().rposition(|&b| b == b':') {
            Some(i) => (&text[..i], Some(&text[i + 1..])),
            None => (text, None),
        };
        if host.is_empty() || !reg_name(host) {
            return false;
        }
        (host, port)
    };
    debug_assert!(!host.is_empty());
    match port {
        None | Some([]) => true,
        Some(p) => {
            p.len() <= 5
                && p.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(p)
                    .ok()
                    .and_then(|s| s.parse::<u16>().ok())
                    .is_some()
        }
    }
}

fn reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while i < host.len() {
        let b = host[i];
        if b == b'%' {
            if !(host.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && host.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return false;
            }
            i += 3;
            continue;
        }
        if !(b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b)) {
            return false;
        }
        i += 1;
    }
    true
}

/// The part of an authority that routes match: without its port and one trailing dot
/// (`Web.Example.com.:8080` -> `Web.Example.com`; matching ignores case).
pub(crate) fn route_name(authority: &str) -> &str {
    let name = if authority.starts_with('[') {
        authority.find(']').map_or(authority, |i| &authority[..=i])
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority,
        }
    };
    name.strip_suffix('.').unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::get(uri).version(version);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn rfc_9112_host_rules() {
        use HostError::*;
        let v11 = Version::HTTP_11;
        assert_eq!(
            authority(&req(v11, "/", &["a.example"])),
            Ok(Some(HeaderValue::from_static("a.example")))
        );
        assert_eq!(authority(&req(v11, "/", &[])), Err(Missing));
        assert_eq!(authority(&req(v11, "/", &["a", "b"])), Err(Duplicate));
        assert_eq!(
            authority(&req(v11, "/", &["a", "a"])),
            Err(Duplicate),
            "even the same twice"
        );
        for bad in [
            "",
            "a b",
            "user@a",
            "a:99999",
            "a:8o",
            "[::1",
            "[nope]:80",
            "a/b",
            ":80",
            "a:b:80",
        ] {
            assert_eq!(authority(&req(v11, "/", &[bad])), Err(Invalid), "{bad:?}");
        }
        // HTTP/1.0 may leave Host out.
        assert_eq!(authority(&req(Version::HTTP_10, "/", &[])), Ok(None));
        // The absolute form wins over Host (which must still be valid and single).
        assert_eq!(
            authority(&req(v11, "http://b.example:8080/x", &["a.example"])),
            Ok(Some(HeaderValue::from_static("b.example:8080")))
        );
        assert_eq!(authority(&req(v11, "http://b.example/x", &[])), Err(Missing));
        assert_eq!(authority(&req(v11, "http://b.example/x", &["a", "a"])), Err(Duplicate));
        // HTTP/2: :authority (the URI's) wins; neither is allowed.
        let v2 = Version::HTTP_2;
        assert_eq!(
            authority(&req(v2, "https://b.example/", &["a.example"])),
            Ok(Some(HeaderValue::from_static("b.example")))
        );
        assert_eq!(authority(&req(v2, "/", &[])), Ok(None));
    }

    #[test]
    fn valid_authorities() {
        for ok in [
            "a",
            "a.example.com",
            "a.example.com.",
            "A-1_b.c:80",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:443",
            "a:",
            "x%41y",
        ] {
            assert!(valid_authority(ok.as_bytes()), "{ok:?}");
        }
    }

    #[test]
    fn route_names() {
        assert_eq!(route_name("web.localhost:8080"), "web.localhost");
        assert_eq!(route_name("web.localhost.:8080"), "web.localhost");
        assert_eq!(route_name("web.localhost."), "web.localhost");
        assert_eq!(route_name("[::1]:80"), "[::1]");
        assert_eq!(route_name("[x"), "[x", "a malformed host must not panic");
        assert_eq!(route_name(""), "");
    }
}
