//! The HTTP side: listener, connections, routing; the endpoint handlers are
//! in [`reads`] and [`writes`].
//!
//! Request handling mirrors `agent/http.go` (`HTTPHandlers.wrap`, `parse`,
//! `parseConsistency`, `parseWait`, `setMeta`, `Index`) and the endpoint
//! functions of `agent/health_endpoint.go`, `agent/catalog_endpoint.go` and
//! `agent/agent_endpoint.go`; blocking follows `agent/blockingquery`.

mod reads;
mod writes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::acl::{self, Authz};
use crate::goparse::{parse_go_query, path_unescape};
use crate::{Fault, Inner, LoggedRequest};

const NOT_FOUND_V1: &str = "Invalid URL path: not a recognized HTTP API endpoint\n";
const NOT_FOUND_OTHER: &str =
    "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n";
const ROOT_TEXT: &str =
    "Consul Agent: UI disabled. To enable, set ui_config.enabled=true in the agent configuration and restart.";

// ---------------------------------------------------------------- listener

/// A running listener: its shutdown switch, accept task and connections.
#[derive(Debug)]
pub(crate) struct Running {
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
    conns: Arc<Mutex<JoinSet<()>>>,
}

impl Running {
    /// Stops accepting, closes every connection, and waits until all are gone.
    pub(crate) async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.accept.await;
        let mut set = std::mem::take(&mut *lock(&self.conns));
        while set.join_next().await.is_some() {}
    }

    /// Without waiting (for `Drop`).
    pub(crate) fn abort(&self) {
        let _ = self.shutdown.send(true);
        self.accept.abort();
        lock(&self.conns).abort_all();
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Binds `addr` with `SO_REUSEADDR`, so that a port just released by
/// [`Running::stop`] (its closed connections in `TIME_WAIT`) can be bound again.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

pub(crate) fn serve(inner: &Arc<Inner>, listener: TcpListener) -> Running {
    let (shutdown, rx) = watch::channel(false);
    let conns = Arc::new(Mutex::new(JoinSet::new()));
    let accept = tokio::spawn(accept_loop(Arc::downgrade(inner), listener, rx, conns.clone()));
    Running {
        shutdown,
        accept,
        conns,
    }
}

async fn accept_loop(
    inner: Weak<Inner>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    conns: Arc<Mutex<JoinSet<()>>>,
) {
    let for_connections = shutdown.clone();
    loop {
        tokio::select! {
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if inner.strong_count() == 0 {
                        return;
                    }
                    let mut set = lock(&conns);
                    while set.try_join_next().is_some() {}
                    set.spawn(serve_connection(inner.clone(), stream, for_connections.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
        }
    }
}

async fn serve_connection(inner: Weak<Inner>, stream: TcpStream, mut shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    // Fault::Drop: the handler asks the connection to go away without an answer.
    let kill = Arc::new(Notify::new());
    let handler_kill = kill.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let inner = inner.clone();
        let kill = handler_kill.clone();
        async move {
            match inner.upgrade() {
                Some(inner) => Ok::<_, Infallible>(handle(inner, kill, req).await),
                None => {
                    kill.notify_one();
                    std::future::pending().await
                }
            }
        }
    });
    let conn = http1::Builder::new()
        .title_case_headers(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        _ = kill.notified() => {}
        _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {}
    }
}

// ---------------------------------------------------------------- requests and replies

struct Req {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
}

impl Req {
    /// `url.Values.Get`: the first value.
    fn q(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn has(&self, key: &str) -> bool {
        self.query.iter().any(|(k, _)| k == key)
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `parseTokenInternal`: `?token=`, then `X-Consul-Token`, then `Authorization: Bearer`.
    fn token(&self) -> Option<String> {
        if let Some(t) = self.q("token").filter(|t| !t.is_empty()) {
            return Some(t.to_owned());
        }
        if let Some(t) = self.header("x-consul-token").filter(|t| !t.is_empty()) {
            return Some(t.to_owned());
        }
        let auth = self.header("authorization")?;
        let mut parts = auth.split(' ');
        let scheme = parts.next()?;
        let rest: Vec<&str> = parts.collect();
        if rest.is_empty() || !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let value = rest.join(" ");
        let token = value.trim().split(' ').next().unwrap_or("").trim().to_owned();
        Some(token)
    }
}

/// A response under construction.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type", "text/plain; charset=utf-8".to_owned())],
            body: Bytes::from(body.into()),
        }
    }

    fn json(value: &impl Serialize) -> Reply {
        let body = serde_json::to_vec(value).unwrap_or_default();
        Reply {
            status: 200,
            headers: vec![("content-type", "application/json".to_owned())],
            body: Bytes::from(body),
        }
    }

    fn empty() -> Reply {
        Reply {
            status: 200,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(self.body));
        *resp.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        for (name, value) in self.headers {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                resp.headers_mut().append(name, v);
            }
        }
        resp
    }
}

/// How a fault alters the index header of the answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IndexHeader {
    Normal,
    Zero,
    Omit,
}

async fn handle(inner: Arc<Inner>, kill: Arc<Notify>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let raw_path = parts.uri.path().to_owned();
    let raw_query = parts.uri.query().unwrap_or("").to_owned();
    let logged_query = parse_go_query(&raw_query).unwrap_or_default();
    tracing::debug!(method = %parts.method, path = %raw_path, query = %raw_query, "consul emulator request");
    lock(&inner.log).push(LoggedRequest {
        method: parts.method.to_string(),
        path: raw_path.clone(),
        raw_query: raw_query.clone(),
        query: logged_query,
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        at: Instant::now(),
    });

    let fault = lock(&inner.faults).pop_front();
    let mut index_header = IndexHeader::Normal;
    match fault {
        Some(Fault::Status(code, text)) => return Reply::text(code, text).into_response(),
        Some(Fault::Drop) => {
            kill.notify_one();
            return std::future::pending().await;
        }
        Some(Fault::Stall(d)) => tokio::time::sleep(d).await,
        Some(Fault::IndexZero) => index_header = IndexHeader::Zero,
        Some(Fault::NoIndex) => index_header = IndexHeader::Omit,
        None => {}
    }

    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let path = path_unescape(&raw_path).unwrap_or(raw_path);
    let mut reply = match parse_go_query(&raw_query) {
        // `wrap`: a query that does not parse is a bare 500.
        Err(_) => Reply {
            status: 500,
            headers: Vec::new(),
            body: Bytes::new(),
        },
        Ok(query) => {
            let req = Req {
                method: parts.method,
                path,
                query,
                headers: parts.headers,
                body,
            };
            route(&inner, &req).await
        }
    };
    match index_header {
        IndexHeader::Normal => {}
        IndexHeader::Zero => {
            for (name, value) in &mut reply.headers {
                if *name == "x-consul-index" {
                    *value = "0".to_owned();
                }
            }
        }
        IndexHeader::Omit => reply.headers.retain(|(name, _)| *name != "x-consul-index"),
    }
    reply.into_response()
}

// ---------------------------------------------------------------- routing

#[derive(Debug)]
enum Route {
    Health(String),
    CatalogServices,
    Register,
    Deregister(String),
    CheckUpdate(Option<&'static str>, String),
    Maintenance(String),
    Leader,
    AgentSelf,
}

const GET: &[&str] = &["GET"];
const PUT: &[&str] = &["PUT"];

/// A route under a path prefix: the prefix, how the rest of the path makes the
/// route, and the methods it allows.
type PrefixRoute = (&'static str, fn(String) -> Route, &'static [&'static str]);

fn find_route(path: &str) -> Option<(Route, &'static [&'static str])> {
    let prefixed: [PrefixRoute; 7] = [
        ("/v1/health/service/", Route::Health, GET),
        ("/v1/agent/service/deregister/", Route::Deregister, PUT),
        (
            "/v1/agent/check/pass/",
            |id| Route::CheckUpdate(Some("passing"), id),
            PUT,
        ),
        (
            "/v1/agent/check/warn/",
            |id| Route::CheckUpdate(Some("warning"), id),
            PUT,
        ),
        (
            "/v1/agent/check/fail/",
            |id| Route::CheckUpdate(Some("critical"), id),
            PUT,
        ),
        ("/v1/agent/check/update/", |id| Route::CheckUpdate(None, id), PUT),
        ("/v1/agent/service/maintenance/", Route::Maintenance, PUT),
    ];
    match path {
        "/v1/catalog/services" => return Some((Route::CatalogServices, GET)),
        "/v1/agent/service/register" => return Some((Route::Register, PUT)),
        "/v1/status/leader" => return Some((Route::Leader, GET)),
        "/v1/agent/self" => return Some((Route::AgentSelf, GET)),
        _ => {}
    }
    prefixed
        .into_iter()
        .find_map(|(prefix, make, methods)| path.strip_prefix(prefix).map(|rest| (make(rest.to_owned()), methods)))
}

async fn route(inner: &Arc<Inner>, req: &Req) -> Reply {
    let Some((route, methods)) = find_route(&req.path) else {
        if req.path == "/" {
            return Reply::text(200, ROOT_TEXT);
        }
        let text = if req.path.contains("/v1/") {
            NOT_FOUND_V1
        } else {
            NOT_FOUND_OTHER
        };
        return Reply::text(404, text);
    };
    let policy = if inner.opts.acl_tokens.is_some() {
        "deny"
    } else {
        "allow"
    };
    let allow = std::iter::once("OPTIONS")
        .chain(methods.iter().copied())
        .collect::<Vec<_>>()
        .join(",");
    let reply = if req.method == Method::OPTIONS {
        Reply::empty().header("allow", allow)
    } else if !methods.contains(&req.method.as_str()) {
        Reply::text(405, format!("method {} not allowed", req.method)).header("allow", allow)
    } else {
        match route {
            Route::Health(name) => reads::health(inner, req, &name).await,
            Route::CatalogServices => reads::catalog_services(inner, req).await,
            Route::Register => writes::register(inner, req),
            Route::Deregister(id) => writes::deregister(inner, req, &id),
            Route::CheckUpdate(status, id) => writes::check_update(inner, req, status, &id),
            Route::Maintenance(id) => writes::maintenance(inner, req, &id),
            Route::Leader => Reply::json(&"127.0.0.1:8300"),
            Route::AgentSelf => writes::agent_self(inner, req),
        }
    };
    reply.header("x-consul-default-acl-policy", policy)
}

/// `parseEntMeta` on Consul CE: namespaces and partitions are refused.
fn reject_enterprise(req: &Req) -> Result<(), Reply> {
    if req.header("x-consul-namespace").is_some_and(|v| !v.is_empty()) {
        return Err(Reply::text(
            400,
            "Invalid header: \"X-Consul-Namespace\" - Namespaces are a Consul Enterprise feature",
        ));
    }
    if req.q("ns").is_some_and(|v| !v.is_empty()) {
        return Err(Reply::text(
            400,
            "Invalid query parameter: \"ns\" - Namespaces are a Consul Enterprise feature",
        ));
    }
    if req.header("x-consul-partition").is_some_and(|v| !v.is_empty()) {
        return Err(Reply::text(
            400,
            "Invalid header: \"X-Consul-Partition\" - Partitions are a Consul Enterprise feature",
        ));
    }
    if req.q("partition").is_some_and(|v| !v.is_empty()) {
        return Err(Reply::text(
            400,
            "Invalid query parameter: \"partition\" - Partitions are a Consul Enterprise feature",
        ));
    }
    Ok(())
}

fn resolve(inner: &Inner, req: &Req) -> Result<Authz, Reply> {
    acl::resolve(inner.opts.acl_tokens.as_deref(), req.token().as_deref())
        .map_err(|()| Reply::text(403, acl::ACL_NOT_FOUND))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(find_route("/v1/health/service/api"), Some((Route::Health(n), GET)) if n == "api"));
        assert!(
            matches!(find_route("/v1/agent/check/warn/x"), Some((Route::CheckUpdate(Some("warning"), id), PUT)) if id == "x")
        );
        assert!(find_route("/v1/health/service").is_none());
        assert!(find_route("/v1/kv/x").is_none());
    }
}
