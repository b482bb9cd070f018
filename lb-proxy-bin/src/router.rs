//! Routing: which service a request goes to, by host and path prefix.
//!
//! The most specific route wins: an exact host beats a `*.suffix` wildcard, which beats
//! no host; among those, the longest path prefix; then the order in the config. Hosts
//! match without their port and a trailing dot, ignoring case ([`crate::host::route_name`]).

/// A route's host rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostRule {
    Any,
    Exact(String),
    /// `*.example.com`: stored as `.example.com`.
    Suffix(String),
}

impl HostRule {
    pub(crate) fn parse(host: Option<&str>) -> Self {
        match host {
            None | Some("") | Some("*") => HostRule::Any,
            Some(h) => match h.strip_prefix('*') {
                Some(rest) => HostRule::Suffix(rest.to_ascii_lowercase()),
                None => HostRule::Exact(h.to_ascii_lowercase()),
            },
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostRule::Any => true,
            HostRule::Exact(h) => h.eq_ignore_ascii_case(host),
            HostRule::Suffix(s) => host.len() > s.len() && host[host.len() - s.len()..].eq_ignore_ascii_case(s),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            HostRule::Exact(_) => 2,
            HostRule::Suffix(_) => 1,
            HostRule::Any => 0,
        }
    }
}

/// One route, compiled.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    host: HostRule,
    prefix: String,
    /// The service's index.
    pub(crate) target: usize,
    /// The `Upgrade` protocols passed through (lowercase).
    pub(crate) upgrades: Vec<String>,
    /// Plain HTTP requests get a redirect to HTTPS; `None` follows `[server]`.
    pub(crate) redirect_https: Option<bool>,
}

/// A compiled routing table mapping requests to service indices.
#[derive(Debug, Clone, Default)]
pub(crate) struct Router {
    /// Sorted most specific first.
    routes: Vec<Route>,
}

impl Router {
    /// Builds from `(host, path_prefix, target)` triples in config order; each route
    /// passes the default upgrades (WebSocket).
    #[cfg(test)]
    pub(crate) fn new(routes: impl IntoIterator<Item = (Option<String>, Option<String>, usize)>) -> Self {
        Self::with_upgrades(
            routes
                .into_iter()
                .map(|(h, p, t)| (h, p, t, crate::config::RouteConfig::default_upgrades(), None)),
        )
    }

    /// Builds from `(host, path_prefix, target, upgrades, redirect_https)` in config order.
    pub(crate) fn with_upgrades(
        routes: impl IntoIterator<Item = (Option<String>, Option<String>, usize, Vec<String>, Option<bool>)>,
    ) -> Self {
        let mut routes: Vec<Route> = routes
            .into_iter()
            .map(|(h, p, target, upgrades, redirect_https)| Route {
                host: HostRule::parse(h.as_deref()),
                prefix: p.filter(|p| !p.is_empty()).unwrap_or_else(|| "/".to_string()),
                target,
                upgrades,
                redirect_https,
            })
            .collect();
        // Stable: config order breaks ties.
        routes.sort_by(|a, b| {
            b.host
                .rank()
                .cmp(&a.host.rank())
                .then(b.prefix.len().cmp(&a.prefix.len()))
        });
        Self { routes }
    }

    /// The target for a request to `host` (an authority: port and trailing dot are
    /// dropped here) and `path`.
    #[cfg(test)]
    pub(crate) fn route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        self.find(host, path).map(|r| r.target)
    }

    /// The route for a request to `host` (an authority) and `path`.
    pub(crate) fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let host = host.map(crate::host::route_name).unwrap_or("");
        self.routes
            .iter()
            .find(|r| r.host.matches(host) && path_matches(&r.prefix, path))
    }
}

/// `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`; a prefix ending in `/`
/// matches anything below it.
fn path_matches(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Router {
        Router::new([
            (None, None, 0),
            (Some("web.localhost".into()), None, 1),
            (Some("*.localhost".into()), None, 2),
            (Some("web.localhost".into()), Some("/api".into()), 3),
        ])
    }

    #[test]
    fn most_specific_wins() {
        let r = r();
        assert_eq!(r.route(Some("web.localhost:8080"), "/api/x"), Some(3));
        assert_eq!(r.route(Some("WEB.localhost"), "/apix"), Some(1));
        assert_eq!(r.route(Some("other.localhost"), "/"), Some(2));
        assert_eq!(r.route(Some("example.com"), "/"), Some(0));
        assert_eq!(r.route(None, "/"), Some(0));
    }

    #[test]
    fn no_route() {
        let r = Router::new([(Some("a".to_string()), Some("/x".to_string()), 0)]);
        assert_eq!(r.route(Some("a"), "/y"), None);
        assert_eq!(r.route(Some("b"), "/x"), None);
        assert_eq!(r.route(Some("a"), "/x/1"), Some(0));
    }

    #[test]
    fn ports_trailing_dots_and_ipv6() {
        let r = r();
        assert_eq!(
            r.route(Some("web.localhost."), "/api"),
            Some(3),
            "a trailing dot is ignored"
        );
        assert_eq!(r.route(Some("WEB.LOCALHOST.:8080"), "/"), Some(1));
        assert_eq!(r.route(Some("x.localhost."), "/"), Some(2));
        assert_eq!(
            r.route(Some("localhost."), "/"),
            Some(0),
            "a suffix never matches its bare name"
        );
        assert_eq!(r.route(Some("[::1]:80"), "/"), Some(0));
        assert_eq!(r.route(Some("[x"), "/"), Some(0), "a malformed host must not panic");
    }
}
