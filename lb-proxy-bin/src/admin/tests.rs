//! Admin listener tests: a real balancer behind a real listener, driven over HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use lb_core::balance::{AnyPolicy, WeightedRoundRobin};
use lb_core::Endpoint;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::*;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::upstream::{Settings, Upstream};

const EP_A: &str = "127.0.0.1:19001";
const EP_B: &str = "web/b:19002";

fn upstream(name: &str) -> Arc<Upstream> {
    let eps = [
        Endpoint::new(EP_A.parse().unwrap()).with_weight(2),
        Endpoint::new("127.0.0.1:19002".parse().unwrap()).with_id(EP_B),
    ];
    let balancer = lb_core::Balancer::builder(AnyPolicy::from(WeightedRoundRobin::new()))
        .name(name)
        .spawn(
            lb_core::discover::fixed(eps),
            lb_core::http::HttpConnect::new(Default::default()),
        );
    Arc::new(Upstream {
        name: Arc::from(name),
        balancer,
        settings: Settings {
            key: None,
            retries: 0,
            response_timeout: None,
            replay_limit: 65536,
        },
        config: service_config(name),
    })
}

/// The config the upstream claims to come from (only reloads look at it).
fn service_config(name: &str) -> crate::config::ServiceConfig {
    let text = format!("[[services]]\nname = \"{name}\"\nendpoints = [\"{EP_A}\"]\n");
    let mut cfg = crate::config::parse(&text, std::path::Path::new("admin-test.toml")).expect("valid config");
    cfg.services.remove(0)
}

struct Admin {
    addr: SocketAddr,
    _stop: watch::Sender<bool>,
    rt: Arc<ArcSwap<Runtime>>,
}

async fn start(auth: AdminAuth) -> Admin {
    let web = upstream("web");
    tokio::time::timeout(Duration::from_secs(3), web.balancer.ready_endpoints(2))
        .await
        .expect("both endpoints in rotation");
    let metrics = Arc::new(Metrics::new());
    metrics.request(
        &Arc::from("web"),
        Some(&EndpointId::new(EP_A)),
        200,
        Duration::from_millis(4),
    );
    metrics.request(&Arc::from("web"), None, 503, Duration::from_millis(1));
    metrics.reload(true);
    metrics.discovery_update("web");
    let router = Router::new([(None, Some("/".to_owned()), 0)]);
    let rt = Arc::new(ArcSwap::from_pointee(Runtime::new(vec![web], router, metrics, 7, None)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(false);
    tokio::spawn(serve_admin(
        listener,
        rt.clone(),
        Arc::new(ArcSwap::from_pointee(auth)),
        rx,
    ));
    Admin { addr, _stop: tx, rt }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn send(addr: SocketAddr, method: Method, target: &str, headers: &[(&str, &str)]) -> Reply {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(target);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", addr.to_string());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let rsp = send
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = rsp.status();
    let headers = rsp.headers().clone();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

async fn get(addr: SocketAddr, target: &str) -> Reply {
    send(addr, Method::GET, target, &[]).await
}

fn endpoint_state(status: &Value, service: &str, id: &str) -> String {
    let svc = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .unwrap();
    let ep = svc["endpoints"].as_array().unwrap().iter().find(|e| e["id"] == id);
    ep.unwrap_or_else(|| panic!("no endpoint {id} in {svc}"))["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn action_path(service: &str, id: &str, verb: &str) -> String {
    let enc = |s: &str| s.replace('%', "%25").replace(':', "%3A").replace('/', "%2F");
    format!("/api/services/{}/endpoints/{}/{verb}", enc(service), enc(id))
}

#[tokio::test]
async fn page_is_html_with_the_services() {
    let admin = start(AdminAuth::default()).await;
    let r = get(admin.addr, "/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(r.headers.contains_key("content-security-policy"));
    assert!(r.body.starts_with("<!DOCTYPE html>"), "{}", r.body);
    assert!(
        r.body.contains("\"name\":\"web\""),
        "service name embedded in the page: {}",
        r.body
    );
    assert!(r.body.contains(EP_A), "endpoint id embedded in the page");
    assert!(!r.body.contains(INITIAL_MARK), "placeholder replaced");
    for asset in ["/assets/status.js", "/assets/status.css"] {
        let a = get(admin.addr, asset).await;
        assert_eq!(a.status, StatusCode::OK, "{asset}");
        assert!(!a.body.is_empty());
    }
}

#[tokio::test]
async fn status_api_lists_endpoints() {
    let admin = start(AdminAuth::default()).await;
    let r = get(admin.addr, "/api/status").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    assert_eq!(v["generation"], 7);
    let svc = &v["services"][0];
    assert_eq!(svc["name"], "web");
    assert_eq!(svc["eligible"], 2);
    assert_eq!(svc["total"], 2);
    assert_eq!(svc["panic"], false);
    assert!(svc["policy"].is_string());
    let eps = svc["endpoints"].as_array().unwrap();
    let ids: Vec<&str> = eps.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [EP_A, EP_B]);
    let a = &eps[0];
    assert_eq!(a["addr"], EP_A);
    assert_eq!(a["weight"], 2);
    assert_eq!(a["state"], "unknown");
    for key in [
        "effective_weight",
        "in_flight",
        "requests",
        "failures",
        "times_ejected",
        "ewma_latency_ms",
    ] {
        assert!(a[key].is_number(), "{key} in {a}");
    }
    assert!(a["last_check"].is_null(), "no health check configured");
}

/// Parses the text exposition strictly enough to catch a broken line: every sample is
/// `name{labels} value` with a float value. Returns the sample names.
fn parse_prometheus(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    assert!(text.ends_with("# EOF\n"), "exposition ends with # EOF");
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                // label="value" pairs, values with \" escapes.
                let mut rest = labels;
                while !rest.is_empty() {
                    let (k, v) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line}"));
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "label name {k:?}"
                    );
                    let mut end = None;
                    let mut escaped = false;
                    for (i, c) in v.char_indices() {
                        match c {
                            _ if escaped => escaped = false,
                            '\\' => escaped = true,
                            '"' => {
                                end = Some(i);
                                break;
                            }
                            _ => {}
                        }
                    }
                    let end = end.unwrap_or_else(|| panic!("unterminated label value in {line}"));
                    rest = v[end + 1..].strip_prefix(',').unwrap_or(&v[end + 1..]);
                }
                name
            }
            None => series,
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name {name:?}"
        );
        names.push(name.to_owned());
    }
    names
}

#[tokio::test]
async fn metrics_parse_and_name_everything() {
    let admin = start(AdminAuth::default()).await;
    let r = get(admin.addr, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let names = parse_prometheus(&r.body);
    for want in [
        "lb_requests_total",
        "lb_request_duration_seconds_bucket",
        "lb_request_duration_seconds_count",
        "lb_config_reloads_total",
        "lb_config_generation",
        "lb_discovery_updates_total",
        "lb_service_eligible_endpoints",
        "lb_service_panic",
        "lb_endpoint_in_flight",
        "lb_endpoint_requests_total",
        "lb_endpoint_failures_total",
        "lb_endpoint_weight",
        "lb_endpoint_effective_weight",
        "lb_endpoint_state",
        "lb_endpoint_latency_ewma_seconds",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing from:\n{}", r.body);
    }
    assert!(
        r.body.contains(&format!(
            r#"lb_endpoint_state{{service="web",endpoint="{EP_A}",state="unknown"}} 1"#
        )),
        "{}",
        r.body
    );
    assert!(r.body.contains("lb_config_generation 7"), "{}", r.body);
}

#[tokio::test]
async fn drain_and_enable() {
    let admin = start(AdminAuth::default()).await;
    for id in [EP_A, EP_B] {
        let r = send(admin.addr, Method::POST, &action_path("web", id, "drain"), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.json()["state"], "draining");
        let st = get(admin.addr, "/api/status").await.json();
        assert_eq!(endpoint_state(&st, "web", id), "draining", "{id} drained");

        let r = send(admin.addr, Method::POST, &action_path("web", id, "enable"), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let st = get(admin.addr, "/api/status").await.json();
        assert_eq!(endpoint_state(&st, "web", id), "unknown", "{id} back in rotation");
    }
    // An id with `/` also works unencoded: everything up to the last segment is the id.
    let r = send(
        admin.addr,
        Method::POST,
        &format!("/api/services/web/endpoints/{EP_B}/drain"),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(admin.rt.load().upstream("web").unwrap().balancer.eligible(), 1);
}

#[tokio::test]
async fn unknown_things_and_bad_requests() {
    let admin = start(AdminAuth::default()).await;
    let r = send(admin.addr, Method::POST, &action_path("nope", EP_A, "drain"), &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["error"].as_str().unwrap().contains("nope"), "{}", r.body);

    let r = send(
        admin.addr,
        Method::POST,
        &action_path("web", "10.9.9.9:1", "drain"),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["error"].as_str().unwrap().contains("10.9.9.9:1"), "{}", r.body);

    let r = get(admin.addr, &action_path("web", EP_A, "drain")).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "POST");

    let r = send(admin.addr, Method::DELETE, "/api/status", &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    for bad in [
        "/api/services/web/endpoints/%zz/drain",
        "/api/services/web/endpoints/%ff%fe/drain",
        "/api/services/web/endpoints/a%/drain",
    ] {
        let r = send(admin.addr, Method::POST, bad, &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
    }
    for missing in [
        "/api/services/web/endpoints//drain",
        "/api/services/web/endpoints/x/explode",
        "/api/services/web",
        "/api/services/",
        "/nope",
    ] {
        let r = send(admin.addr, Method::POST, missing, &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{missing}: {}", r.body);
    }
    // Cross-site POSTs are refused; same-origin ones are not.
    let path = action_path("web", EP_A, "drain");
    let r = send(admin.addr, Method::POST, &path, &[("origin", "http://evil.example")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let origin = format!("http://{}", admin.addr);
    let r = send(admin.addr, Method::POST, &path, &[("origin", &origin)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Open admin: a DNS name in Host is refused (rebinding).
    let r = send(admin.addr, Method::GET, "/api/status", &[("host", "rebind.example:80")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn bearer_token() {
    let admin = start(AdminAuth {
        token: Some("s3cret".into()),
        basic: None,
    })
    .await;
    for path in ["/", "/api/status", "/metrics"] {
        let r = get(admin.addr, path).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path} needs the token");
        assert!(r
            .headers
            .get_all("www-authenticate")
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("Bearer")));
        let r = send(admin.addr, Method::GET, path, &[("authorization", "Bearer wrong")]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path} with a wrong token");
        let r = send(admin.addr, Method::GET, path, &[("authorization", "Bearer s3cret")]).await;
        assert_eq!(r.status, StatusCode::OK, "{path} with the token");
    }
    // The page URL may carry it; the page's assets need nothing.
    assert_eq!(get(admin.addr, "/?token=s3cret").await.status, StatusCode::OK);
    assert_eq!(get(admin.addr, "/?token=s3cre").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(get(admin.addr, "/assets/status.js").await.status, StatusCode::OK);
    // Actions need the header, not the query.
    let path = action_path("web", EP_A, "drain");
    let r = send(admin.addr, Method::POST, &format!("{path}?token=s3cret"), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(admin.addr, Method::POST, &path, &[("authorization", "bearer s3cret")]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // With credentials configured, any Host will do.
    let r = send(
        admin.addr,
        Method::GET,
        "/",
        &[("host", "lb.internal"), ("authorization", "Bearer s3cret")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn basic_auth_and_either() {
    let admin = start(AdminAuth {
        token: Some("tok".into()),
        basic: Some(("admin".into(), "pa:ss".into())),
    })
    .await;
    let r = get(admin.addr, "/").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let challenges: Vec<&str> = r
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic realm=\"lb-proxy\"")),
        "{challenges:?}"
    );
    // admin:pa:ss
    let good = "Basic YWRtaW46cGE6c3M=";
    // admin:pa:sx
    let bad = "Basic YWRtaW46cGE6c3g=";
    assert_eq!(
        send(admin.addr, Method::GET, "/", &[("authorization", good)])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(admin.addr, Method::GET, "/", &[("authorization", bad)])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(admin.addr, Method::GET, "/", &[("authorization", "Basic !!!")])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(admin.addr, Method::GET, "/", &[("authorization", "Bearer tok")])
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn stops_when_told() {
    let admin = start(AdminAuth::default()).await;
    assert_eq!(get(admin.addr, "/api/status").await.status, StatusCode::OK);
    admin._stop.send(true).unwrap();
    let t = tokio::time::Instant::now();
    while TcpStream::connect(admin.addr).await.is_ok() {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "the listener is still open after stop"
        );
        tokio::task::yield_now().await;
    }
}

#[test]
fn helpers() {
    assert_eq!(base64_decode("YWRtaW46cGE6c3M=").unwrap(), b"admin:pa:ss");
    assert_eq!(base64_decode("YQ").unwrap(), b"a");
    assert_eq!(base64_decode("YWI").unwrap(), b"ab");
    assert_eq!(base64_decode("").unwrap(), b"");
    assert!(base64_decode("Y").is_none());
    assert!(base64_decode("Y*==").is_none());
    assert_eq!(percent_decode("a%3Ab%2Fc").unwrap(), "a:b/c");
    assert!(percent_decode("%").is_none());
    assert!(percent_decode("%g0").is_none());
    assert!(percent_decode("%+1").is_none());
    assert_eq!(query_param(Some("a=1&token=x%20y&b"), "token").as_deref(), Some("x y"));
    assert_eq!(query_param(Some("b"), "token"), None);
    assert!(ct_eq(b"abc", b"abc"));
    assert!(!ct_eq(b"abd", b"abc"));
    assert!(!ct_eq(b"ab", b"abc"));
    assert!(!ct_eq(b"abcd", b"abc"));
    assert!(!ct_eq(b"", b"a"));
}
