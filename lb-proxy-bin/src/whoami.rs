//! `lb-proxy whoami` and `lb-proxy probe`: a demo backend and a health check, so that one
//! static binary in a `FROM scratch` image can play the proxy, its backends and their
//! `HEALTHCHECK`.
//!
//! `whoami` answers every request with where it was served (hostname, name, addresses) and
//! the request it saw, like traefik/whoami; `/healthz` answers `ok`. `probe` GETs an
//! `http://IP:PORT/path` URL and exits 0 on 2xx or 3xx, 1 otherwise. Neither looks up a
//! name: a scratch image has no resolver configuration.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::stack::StackError;

/// How long requests in flight get to finish after SIGTERM or SIGINT; `docker stop`
/// waits 10 s before SIGKILL, a demo backend should be gone well before.
const GRACE: Duration = Duration::from_millis(900);

/// What every response of one `whoami` server repeats.
#[derive(Debug)]
struct Identity {
    hostname: String,
    name: String,
    listen: SocketAddr,
}

/// The host's name without libc or DNS: `/etc/hostname` (a container's own), else
/// `HOSTNAME`, else the kernel's UTS name, else `unknown`.
fn hostname() -> String {
    let first_line = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
            .filter(|s| !s.is_empty())
    };
    first_line("/etc/hostname")
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.trim().is_empty()))
        .or_else(|| first_line("/proc/sys/kernel/hostname"))
        .unwrap_or_else(|| "unknown".to_string())
}

/// `content-type` -> `Content-Type`, as Go's canonical header names (traefik/whoami).
fn title_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper { c.to_ascii_uppercase() } else { c });
        upper = c == '-';
    }
    out
}

fn text(status: hyper::StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

/// `/healthz` fails while this file says `down`.
const HEALTH_FILE: &str = "/health";

/// The answer to one request.
fn respond(me: &Identity, req: &Request<Incoming>, peer: SocketAddr, local: SocketAddr) -> Response<Full<Bytes>> {
    if req.uri().path() == "/healthz" {
        // A file `/health` whose first word is `down` fails the check: a way to make a
        // container unhealthy from outside (`docker cp`) without a shell in the image.
        let down = std::fs::read_to_string(HEALTH_FILE).is_ok_and(|s| s.trim_start().starts_with("down"));
        if down {
            return text(hyper::StatusCode::SERVICE_UNAVAILABLE, "down\n".to_string());
        }
        return text(hyper::StatusCode::OK, "ok\n".to_string());
    }
    let mut body = String::new();
    let _ = writeln!(body, "Hostname: {}", me.hostname);
    let _ = writeln!(body, "Name: {}", me.name);
    let _ = writeln!(body, "Listen: {}", me.listen);
    let _ = writeln!(body, "RemoteAddr: {peer}");
    let _ = writeln!(body, "LocalAddr: {local}");
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let _ = writeln!(body, "{} {target} {:?}", req.method(), req.version());
    if !req.headers().contains_key(http::header::HOST) {
        // HTTP/2 carries the host as the :authority pseudo-header, in the URI.
        if let Some(authority) = req.uri().authority() {
            let _ = writeln!(body, "Host: {authority}");
        }
    }
    for (name, value) in req.headers() {
        let _ = writeln!(
            body,
            "{}: {}",
            title_case(name.as_str()),
            String::from_utf8_lossy(value.as_bytes())
        );
    }
    text(hyper::StatusCode::OK, body)
}

/// `lb-proxy whoami`: serves until SIGTERM or SIGINT, then lets requests in flight
/// finish (up to [`GRACE`]) and returns.
pub(crate) async fn run(listen: SocketAddr, name: Option<String>) -> Result<(), StackError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StackError::Bind { addr: listen, source })?;
    let bound = listener
        .local_addr()
        .map_err(|e| StackError::Other(format!("whoami: {e}")))?;
    let hostname = hostname();
    let me = Arc::new(Identity {
        name: name.unwrap_or_else(|| hostname.clone()),
        hostname,
        listen: bound,
    });
    // Tests and scripts read the bound address from this line (`--listen 127.0.0.1:0`).
    tracing::info!(hostname = %me.hostname, name = %me.name, "whoami listening on {bound}");

    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut signal => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "whoami: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(bound);
        let me = me.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let rsp = respond(&me, &req, peer, local);
            async move { Ok::<_, Infallible>(rsp) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(tcp), svc).into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "whoami: connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("whoami shutting down: no new connections; finishing requests in flight");
    if tokio::time::timeout(GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!(grace = ?GRACE, "whoami: grace period over; closing remaining connections");
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `--timeout` of `probe`: a number with `ms`, `s` or `m`, as in `500ms`, `2s`, `1.5s`.
pub(crate) fn parse_timeout(text: &str) -> Result<Duration, String> {
    let invalid =
        || format!("invalid duration {text:?} (expected a number and a unit: ms, s or m, as in \"500ms\", \"2s\")");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        _ => return Err(invalid()),
    };
    let secs = number * scale;
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!("timeout {text:?} must be above zero and at most an hour"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// An `http://IP[:PORT][/path]` URL: the address, the `Host` header and the request target.
fn parse_probe_url(url: &str) -> Result<(SocketAddr, String, String), String> {
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => return Err(format!("{url}: only http:// URLs are supported, not {scheme}://")),
        None => return Err(format!("{url}: expected an http://IP:PORT/path URL")),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(end);
    let target = match target {
        "" => "/".to_string(),
        t if t.starts_with('?') => format!("/{t}"),
        t => t.to_string(),
    };
    let addr = authority.parse::<SocketAddr>().ok().or_else(|| {
        let ip = authority
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(authority);
        ip.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 80))
    });
    let addr = addr.ok_or_else(|| {
        format!("{url}: the host must be an IP address, as in http://127.0.0.1:80/healthz (probe does no DNS lookups)")
    })?;
    Ok((addr, authority.to_string(), target))
}

/// `lb-proxy probe URL`: Ok on a 2xx or 3xx answer within `timeout`, else an error saying
/// why (exit code 1).
pub(crate) async fn probe(url: &str, timeout: Duration) -> Result<(), StackError> {
    let fail = |why: String| StackError::Other(format!("probe {url}: {why}"));
    let (addr, host, target) = parse_probe_url(url).map_err(|e| StackError::Other(format!("probe {e}")))?;
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get(target)
            .header(http::header::HOST, host)
            .header(
                http::header::USER_AGENT,
                concat!("lb-proxy-probe/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let rsp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(rsp.status())
    };
    let status = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(status)) => status,
        Ok(Err(why)) => return Err(fail(why)),
        Err(_) => return Err(fail(format!("no answer within {timeout:?}"))),
    };
    if status.is_success() || status.is_redirection() {
        println!("{url}: {status}");
        Ok(())
    } else {
        Err(fail(format!("status {status}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_urls() {
        let (addr, host, target) = parse_probe_url("http://127.0.0.1:8080/healthz?x=1").expect("valid");
        assert_eq!(addr, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!((host.as_str(), target.as_str()), ("127.0.0.1:8080", "/healthz?x=1"));
        let (addr, _, target) = parse_probe_url("http://[::1]").expect("valid");
        assert_eq!((addr, target.as_str()), ("[::1]:80".parse().expect("addr"), "/"));
        let (addr, _, target) = parse_probe_url("HTTP://10.0.0.1?q").expect("valid");
        assert_eq!((addr, target.as_str()), ("10.0.0.1:80".parse().expect("addr"), "/?q"));
        assert!(parse_probe_url("https://127.0.0.1/").is_err());
        assert!(parse_probe_url("http://localhost:80/").is_err(), "no DNS");
        assert!(parse_probe_url("127.0.0.1:80").is_err());
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("1m"), Ok(Duration::from_secs(60)));
        for bad in ["2", "0s", "s", "2 s", "-1s", "2h", ""] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_names() {
        assert_eq!(title_case("content-type"), "Content-Type");
        assert_eq!(title_case("x-forwarded-for"), "X-Forwarded-For");
        assert_eq!(title_case("host"), "Host");
    }
}
