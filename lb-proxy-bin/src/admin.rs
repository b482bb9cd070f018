//! The admin listener: the status page (the HAProxy stats page of this project),
//! Prometheus metrics, a JSON status API and drain / enable actions.
//!
//! | Route | Method | What |
//! |---|---|---|
//! | `/` | GET | HTML status page; it re-renders itself from `/api/status` every 2 s |
//! | `/assets/status.js`, `/assets/status.css` | GET | the page's script and style (public) |
//! | `/metrics` | GET | Prometheus text exposition |
//! | `/api/status` | GET | JSON: generation, services, endpoints |
//! | `/api/services/{service}/endpoints/{id}/drain` | POST | operator drain |
//! | `/api/services/{service}/endpoints/{id}/enable` | POST | undo the drain |
//!
//! Path segments are percent-decoded; endpoint ids hold `:` and may hold `/`, so the page
//! encodes them (`%3A`, `%2F`). An unencoded `/` in an id also works: everything between
//! `/endpoints/` and the last `/` is the id.
//!
//! # Authentication
//!
//! With a token configured, requests need `Authorization: Bearer <token>`. A browser
//! cannot send that header when it loads a page, so GET routes also take `?token=<token>`
//! in the URL (open `/?token=...`); the page then sends the header with every request
//! it makes. With a user
//! and password configured, requests need Basic auth (HAProxy's `stats auth`); a browser
//! asks for them once and its fetches reuse them. With both, either is accepted. With
//! neither (which the config only allows on loopback), the listener is open, but
//! requests must name it by an IP address or `localhost` in `Host` (so a DNS-rebinding
//! page cannot reach it). A `POST` that carries an `Origin` header must come from the
//! page's own origin (no cross-site drains through cached credentials).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HOST, ORIGIN,
    REFERRER_POLICY, WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use lb_core::http::{full, Body};
use lb_core::{BalancerStatus, EndpointId};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::plain;
use crate::runtime::Runtime;

const STATUS_HTML: &str = include_str!("admin/status.html");
const STATUS_JS: &str = include_str!("admin/status.js");
const STATUS_CSS: &str = include_str!("admin/status.css");

/// Where the page's initial data goes in `status.html`.
const INITIAL_MARK: &str = "{{INITIAL_STATUS}}";

/// The page loads nothing from elsewhere and runs no inline script.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                        img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How long an admin action may wait for the balancer's writer task.
const ACTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Who may use the admin listener; see the module docs.
#[derive(Clone, Default)]
pub(crate) struct AdminAuth {
    /// `Authorization: Bearer <token>` (or `?token=` on the page URL).
    pub(crate) token: Option<String>,
    /// Basic auth user and password.
    pub(crate) basic: Option<(String, String)>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("basic", &self.basic.as_ref().map(|(u, _)| (u, "<redacted>")))
            .finish()
    }
}

// === impl AdminAuth ===

impl AdminAuth {
    fn is_open(&self) -> bool {
        self.token.is_none() && self.basic.is_none()
    }

    /// Whether the request carries the configured credentials. `query_token` is the
    /// `?token=` of a page load, already decoded.
    fn allows(&self, headers: &HeaderMap, query_token: Option<&str>) -> bool {
        if self.is_open() {
            return true;
        }
        let header = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        let scheme = |name: &str| {
            header.and_then(|h| {
                let (s, rest) = h.trim().split_once(' ')?;
                s.eq_ignore_ascii_case(name).then(|| rest.trim())
            })
        };
        if let Some(token) = &self.token {
            if scheme("Bearer").is_some_and(|t| ct_eq(t.as_bytes(), token.as_bytes())) {
                return true;
            }
            if query_token.is_some_and(|t| ct_eq(t.as_bytes(), token.as_bytes())) {
                return true;
            }
        }
        if let Some((user, password)) = &self.basic {
            if let Some(decoded) = scheme("Basic").and_then(base64_decode) {
                if let Some(i) = decoded.iter().position(|&b| b == b':') {
                    // Both compared, always, so timing does not tell which one was wrong.
                    let u = ct_eq(&decoded[..i], user.as_bytes());
                    let p = ct_eq(&decoded[i + 1..], password.as_bytes());
                    if u & p {
                        return true;
                    }
                }
            }
        }
        false
    }

    fn challenge(&self) -> Response<Body> {
        let mut text = String::from("401 Unauthorized: ");
        match (&self.token, &self.basic) {
            (Some(_), Some(_)) => text.push_str("send Basic credentials or `Authorization: Bearer <token>`"),
            (Some(_), None) => text.push_str("send `Authorization: Bearer <token>` (or open /?token=<token>)"),
            _ => text.push_str("send Basic credentials"),
        }
        text.push('\n');
        let mut rsp = plain(StatusCode::UNAUTHORIZED, text);
        if self.basic.is_some() {
            rsp.headers_mut().append(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"lb-proxy\", charset=\"UTF-8\""),
            );
        }
        if self.token.is_some() {
            rsp.headers_mut()
                .append(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"lb-proxy\""));
        }
        rsp
    }
}

/// Equality that looks at every byte of the expected value whatever the input, so
/// response time does not tell how much of a guess was right (the length still shows).
fn ct_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, &e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(!e);
    }
    std::hint::black_box(diff) == 0
}

/// Standard base64 with optional padding; `None` if it is not that.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// Decodes `%XX` escapes; `None` on a bad escape or if the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The decoded value of `name` in a query string (`+` is a space, as in forms).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| percent_decode(&v.replace('+', " ")))
}

/// The `Host` a request names (HTTP/2: its `:authority`); `Err` if it is not text.
fn request_host<'a>(headers: &'a HeaderMap, uri: &'a http::Uri) -> Result<Option<&'a str>, ()> {
    match headers.get(HOST) {
        Some(h) => h.to_str().map(Some).map_err(drop),
        None => Ok(uri.authority().map(|a| a.as_str())),
    }
}

/// Whether the host a request names is an IP address or `localhost`: a DNS name could
/// have been rebound to loopback by a page in the operator's browser.
fn host_is_literal(headers: &HeaderMap, uri: &http::Uri) -> bool {
    let host = match request_host(headers, uri) {
        Ok(Some(h)) => h,
        // HTTP/1.0 without Host: not a browser.
        Ok(None) => return true,
        Err(()) => return false,
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, _)) => ip,
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// Whether a request's `Origin` (if any) is the admin listener itself.
fn same_origin(headers: &HeaderMap, uri: &http::Uri) -> bool {
    let Some(origin) = headers.get(ORIGIN) else {
        return true;
    };
    let (Ok(origin), Ok(Some(host))) = (origin.to_str(), request_host(headers, uri)) else {
        return false;
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

/// Most connections the admin listener holds at once.
const ADMIN_MAX_CONNECTIONS: u32 = 64;

/// Serves the admin routes on `listener` until `stop` turns true (or its sender goes),
/// then gives open connections a second to finish. `auth` is read for every request:
/// the reconciler swaps it when a reload changes `[admin]`'s credentials.
pub(crate) async fn serve_admin(
    listener: TcpListener,
    state: Arc<ArcSwap<Runtime>>,
    auth: Arc<ArcSwap<AdminAuth>>,
    mut stop: watch::Receiver<bool>,
) {
    let conns = crate::server::Conns::new(ADMIN_MAX_CONNECTIONS);
    let local = listener.local_addr().ok();
    tracing::debug!(listen = ?local, open = auth.load().is_open(), "admin listener started");
    while let Some((tcp, peer, slot)) = crate::server::accept(&listener, &mut stop, &conns).await {
        let accepted = tokio::time::Instant::now();
        let state = state.clone();
        let auth = auth.clone();
        let conns = conns.clone();
        // The proxy's deadlines, as the running config sets them.
        let limits = state.load().limits;
        tokio::spawn(async move {
            let _slot = slot;
            let handler = move |req: Request<lb_core::http::server::RequestBody>| {
                let rt = state.load_full();
                let auth = auth.load_full();
                async move { handle(req, rt, &auth).await }
            };
            crate::server::serve_conn(tcp, false, handler, limits, accepted, &conns, peer).await;
        });
    }
    drop(listener);
    conns.drain();
    if !conns
        .closed_by(tokio::time::Instant::now() + Duration::from_secs(1))
        .await
    {
        tracing::debug!("admin connections still open at shutdown; dropping them");
        conns.close();
    }
    tracing::info!(listen = ?local, "admin listener closed");
}

/// Answers one admin request.
async fn handle<B>(req: Request<B>, rt: Arc<Runtime>, auth: &AdminAuth) -> Response<Body> {
    let path = req.uri().path();
    let method = req.method();
    let get = *method == Method::GET || *method == Method::HEAD;
    // The page's assets hold no data: public, so a page opened with `?token=` can load them.
    match path {
        "/assets/status.js" if get => return asset(STATUS_JS, "text/javascript; charset=utf-8"),
        "/assets/status.css" if get => return asset(STATUS_CSS, "text/css; charset=utf-8"),
        "/assets/status.js" | "/assets/status.css" => return not_allowed("GET, HEAD"),
        _ => {}
    }
    if auth.is_open() && !host_is_literal(req.headers(), req.uri()) {
        return error(
            StatusCode::FORBIDDEN,
            "the admin listener has no credentials configured, so it answers only to an IP address or localhost in Host",
        );
    }
    let query_token = if get {
        query_param(req.uri().query(), "token")
    } else {
        None
    };
    if !auth.allows(req.headers(), query_token.as_deref()) {
        return auth.challenge();
    }
    match path {
        "/" | "/index.html" if get => page(&rt),
        "/metrics" if get => {
            let mut rsp = Response::new(full(rt.metrics.encode(&rt)));
            rsp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            rsp
        }
        "/api/status" if get => json_response(StatusCode::OK, &status_json(&rt)),
        "/" | "/index.html" | "/metrics" | "/api/status" => not_allowed("GET, HEAD"),
        _ => {
            if let Some(rest) = path.strip_prefix("/api/services/") {
                action(method, req.headers(), req.uri(), rest, &rt).await
            } else if let Some(rest) = path.strip_prefix("/api/certificates/") {
                renew(method, req.headers(), req.uri(), rest, &rt)
            } else {
                error(StatusCode::NOT_FOUND, &format!("no admin route {}", req.uri().path()))
            }
        }
    }
}

/// `POST /api/services/{service}/endpoints/{id}/{drain|enable}`; `rest` follows `/api/services/`.
async fn action(method: &Method, headers: &HeaderMap, uri: &http::Uri, rest: &str, rt: &Runtime) -> Response<Body> {
    let parsed = rest.split_once('/').and_then(|(service, rest)| {
        let rest = rest.strip_prefix("endpoints/")?;
        let (id, verb) = rest.rsplit_once('/')?;
        Some((service, id, verb))
    });
    let Some((service, id, verb)) =
        parsed.filter(|(s, id, v)| !s.is_empty() && !id.is_empty() && matches!(*v, "drain" | "enable"))
    else {
        return error(
            StatusCode::NOT_FOUND,
            "no such admin route; actions are POST /api/services/{service}/endpoints/{id}/drain or /enable",
        );
    };
    if *method != Method::POST {
        return not_allowed("POST");
    }
    if !same_origin(headers, uri) {
        return error(StatusCode::FORBIDDEN, "cross-origin admin actions are refused");
    }
    let (Some(service), Some(id)) = (percent_decode(service), percent_decode(id)) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad percent-encoding in the service or endpoint id",
        );
    };
    let Some(upstream) = rt.upstream(&service) else {
        return error(StatusCode::NOT_FOUND, &format!("unknown service {service:?}"));
    };
    let id = EndpointId::new(&id);
    let call = async {
        match verb {
            "drain" => upstream.balancer.drain(id.clone()).await,
            _ => upstream.balancer.enable(id.clone()).await,
        }
    };
    match tokio::time::timeout(ACTION_TIMEOUT, call).await {
        Ok(Ok(())) => {
            tracing::info!(service = %service, endpoint = %id, action = verb, "admin action");
            let st = upstream.balancer.status();
            let state = st.endpoints.iter().find(|e| e.id == id).map(|e| e.health.as_str());
            json_response(
                StatusCode::OK,
                &json!({ "ok": true, "service": service, "endpoint": id.as_str(), "action": verb, "state": state }),
            )
        }
        Ok(Err(_)) => error(
            StatusCode::NOT_FOUND,
            &format!("service {service:?} has no endpoint {:?}", id.as_str()),
        ),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the balancer did not answer in time"),
    }
}

/// The status API document.
fn status_json(rt: &Runtime) -> Value {
    let services: Vec<Value> = rt
        .upstreams_with_routes()
        .map(|(u, routes)| {
            let mut v = service_json(&u.name, &u.balancer.status());
            v["source"] = json!(u.config.origin.as_str());
            v["routes"] = json!(routes);
            if let crate::config::EndpointSource::Docker { service } = &u.config.endpoints {
                v["docker_service"] = json!(service);
            }
            v
        })
        .collect();
    let mut sources = serde_json::Map::new();
    if let Some(d) = rt.sources.docker_status() {
        sources.insert(
            "docker".into(),
            json!({
                "endpoint": d.endpoint,
                "reachable": d.reachable,
                "synced": d.synced,
                "stale": d.stale_since.is_some(),
                "stale_since_unix": d.stale_since.map(unix),
                "stale_for_s": d.stale_since.and_then(|t| t.elapsed().ok()).map(|e| e.as_secs_f64()),
                "api_version": d.api_version,
                "containers": d.containers,
                "pending": d.pending,
                "events": d.events,
                "relists": d.relists,
                "errors": d.errors,
                "last_error": d.last_error,
            }),
        );
    }
    let consul: Vec<Value> = rt
        .sources
        .consul_statuses()
        .iter()
        .map(|c| {
            json!({
                "agent": c.agent,
                "watching": c.watching,
                "last_index": c.last_index,
                "last_success_unix": c.last_success.map(unix),
                "last_success_ago_s": c.last_success.and_then(|t| t.elapsed().ok()).map(|d| d.as_secs_f64()),
                "requests": c.requests,
                "errors": c.errors,
                "consecutive_failures": c.consecutive_failures,
                "backoff_s": c.backoff.map(|b| b.as_secs_f64()),
                "last_error": c.last_error,
                "instances": c.instances,
                "index_resets": c.index_resets,
            })
        })
        .collect();
    if !consul.is_empty() {
        sources.insert("consul".into(), Value::Array(consul));
    }
    let (certificates, acme) = tls_json(rt);
    json!({
        "generation": rt.generation,
        "services": services,
        "sources": sources,
        "certificates": certificates,
        "acme": acme,
    })
}

/// Seconds since the Unix epoch.
fn unix(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Every certificate served (names, issuer, expiry, source), and ACME's names.
fn tls_json(rt: &Runtime) -> (Value, Value) {
    let Some(tls) = &rt.tls else {
        return (json!([]), Value::Null);
    };
    let now = std::time::SystemTime::now();
    let certificates: Vec<Value> = tls
        .store
        .certificates()
        .iter()
        .map(|c| {
            json!({
                "names": c.names,
                "issuer": c.issuer,
                "not_before_unix": unix(c.not_before),
                "not_after_unix": unix(c.not_after),
                "days_left": c.days_left(now),
                "source": c.source,
                "default": c.default,
            })
        })
        .collect();
    let acme = tls.acme.as_ref().map_or(Value::Null, |a| {
        let names: Vec<Value> = a.status().iter().map(acme_status_json).collect();
        Value::Array(names)
    });
    (Value::Array(certificates), acme)
}

/// One ACME name for `/api/status`.
fn acme_status_json(s: &lb_tls::acme::AcmeStatus) -> Value {
    use lb_tls::acme::AcmeState;
    let (state, retry_at, error) = match &s.state {
        AcmeState::Pending => ("pending", None, None),
        AcmeState::Ordering => ("ordering", None, None),
        AcmeState::Valid { .. } => ("valid", None, None),
        AcmeState::Locked { retry_at } => ("locked", Some(unix(*retry_at)), None),
        AcmeState::Failed { error, retry_at } => ("failed", Some(unix(*retry_at)), Some(error.as_str())),
        _ => ("unknown", None, None),
    };
    json!({
        "name": s.name,
        "state": state,
        "not_after_unix": s.not_after.map(unix),
        "retry_at_unix": retry_at,
        "error": error,
        "orders_ok": s.orders_ok,
        "orders_failed": s.orders_failed,
        "last_error": s.last_error,
    })
}

/// `POST /api/certificates/{name}/renew`: an ACME certificate ordered again now.
fn renew(method: &Method, headers: &HeaderMap, uri: &http::Uri, rest: &str, rt: &Runtime) -> Response<Body> {
    let Some(name) = rest
        .strip_suffix("/renew")
        .filter(|n| !n.is_empty() && !n.contains('/'))
    else {
        return error(
            StatusCode::NOT_FOUND,
            "no such admin route; the action is POST /api/certificates/{name}/renew",
        );
    };
    if *method != Method::POST {
        return not_allowed("POST");
    }
    if !same_origin(headers, uri) {
        return error(StatusCode::FORBIDDEN, "cross-origin admin actions are refused");
    }
    let Some(name) = percent_decode(name) else {
        return error(StatusCode::BAD_REQUEST, "bad percent-encoding in the name");
    };
    let Some(acme) = rt.tls.as_ref().and_then(|t| t.acme.as_ref()) else {
        return error(StatusCode::NOT_FOUND, "ACME is not configured ([acme])");
    };
    if acme.renew(&name) {
        tracing::info!(name = %name, action = "renew", "admin action");
        json_response(
            StatusCode::ACCEPTED,
            &json!({ "ok": true, "name": name, "action": "renew" }),
        )
    } else {
        error(
            StatusCode::NOT_FOUND,
            &format!("{name:?} is not a name ACME manages (routes with acme = true, [acme] names)"),
        )
    }
}

fn service_json(name: &str, st: &BalancerStatus) -> Value {
    let endpoints: Vec<Value> = st
        .endpoints
        .iter()
        .map(|e| {
            json!({
                "id": e.id.as_str(),
                "addr": e.addr.to_string(),
                "state": e.health.as_str(),
                "weight": e.weight,
                "effective_weight": e.effective_weight,
                "in_flight": e.in_flight,
                "requests": e.requests,
                "failures": e.failures,
                "times_ejected": e.times_ejected,
                "ewma_latency_ms": e.ewma_latency.as_secs_f64() * 1e3,
                "latency_measured": e.latency_measured,
                "connection": match &e.connection {
                    lb_core::Connection::Ready => json!("ready"),
                    lb_core::Connection::Connecting { attempts } => json!({ "connecting": attempts }),
                    lb_core::Connection::Failed { attempts, error } => json!({ "failed": attempts, "error": &**error }),
                    other => json!(format!("{other:?}")),
                },
                "last_check": e.last_check.as_ref().map(|c| json!({
                    "ok": c.ok,
                    "error": c.error,
                    "ago_s": c.age().as_secs_f64(),
                })),
                "metadata": e.metadata,
            })
        })
        .collect();
    json!({
        "name": name,
        "policy": st.policy,
        "eligible": st.eligible,
        "total": st.endpoints.len(),
        "panic": st.panic,
        "snapshot_generation": st.generation,
        "endpoints": endpoints,
    })
}

/// The page: the template with the current status embedded, so the first paint needs
/// no second request; the script renders it and then polls `/api/status`.
fn page(rt: &Runtime) -> Response<Body> {
    let data = serde_json::to_string(&status_json(rt)).unwrap_or_else(|_| "null".into());
    // Safe inside <script type="application/json">: no `<` can close the element.
    let mut embedded = String::with_capacity(data.len() + 64);
    for c in data.chars() {
        match c {
            '<' => embedded.push_str("\\u003c"),
            '>' => embedded.push_str("\\u003e"),
            '&' => embedded.push_str("\\u0026"),
            c => embedded.push(c),
        }
    }
    let body = STATUS_HTML.replacen(INITIAL_MARK, &embedded, 1);
    let mut rsp = Response::new(full(body));
    let h = rsp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    rsp
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut rsp = Response::new(full(text));
    let h = rsp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    rsp
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    body.push(b'\n');
    let mut rsp = Response::new(full(body));
    *rsp.status_mut() = status;
    let h = rsp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    rsp
}

/// A JSON error: `{"error": "..."}`.
fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &json!({ "error": message }))
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut rsp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed; use {allow}"),
    );
    rsp.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    rsp
}

#[cfg(test)]
mod tests;
