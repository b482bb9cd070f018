//! ACME through the whole proxy, against a real ACME server: Pebble on loopback (the
//! harness of lb-tls's tests; skipped with a notice when Pebble is not installed, unless
//! `LB_REQUIRE_PEBBLE=1`).
//!
//! Each test runs its own Pebble, told to validate http-01 on 127.0.0.1:`http_port` and
//! tls-alpn-01 on 127.0.0.1:`tls_port`, which are the proxy's plain `listen` and its
//! `tls_listen`: the proxy answers the challenges itself. Clients trust only Pebble's
//! issuing root and connect to the TLS listener with SNI `shop.example.test`.

#[path = "../../../lb-tls/tests/support/pebble.rs"]
mod pebble;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use lb_test_support::tls::{certs_from_pem, client_config_with_roots};
use pebble::Pebble;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::support::{admin_get, client, proxy, send, Backend, TempDir};
use crate::stack::Started;

/// The name the route asks a certificate for.
const NAME: &str = "shop.example.test";
/// How long any one test may run.
const TEST_LIMIT: Duration = Duration::from_secs(120);
/// How long any awaited condition may take (an order against Pebble takes a second or
/// two).
const WAIT: Duration = Duration::from_secs(60);

/// Runs a test body under [`TEST_LIMIT`].
async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test ran longer than its time limit");
}

/// Pebble, the backend, and the ACME storage the proxies of a test share.
struct Rig {
    pebble: Pebble,
    backend: Backend,
    storage: TempDir,
    http_port: u16,
    tls_port: u16,
    /// The two ports, held until the proxy binds them (so that Pebble's own ports, picked
    /// meanwhile, cannot be these).
    reserved: Mutex<Vec<std::net::TcpListener>>,
}

impl Rig {
    /// `None` when Pebble is not installed (the test is then skipped, loudly).
    async fn start(test: &str) -> Option<Rig> {
        let reserve = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let (http, tls) = (reserve(), reserve());
        let port = |l: &std::net::TcpListener| l.local_addr().expect("local address").port();
        let (http_port, tls_port) = (port(&http), port(&tls));
        let pebble = tokio::task::block_in_place(|| Pebble::new(test, http_port, tls_port))?;
        Some(Rig {
            pebble,
            backend: Backend::start("shop").await,
            storage: TempDir::new("acme-storage"),
            http_port,
            tls_port,
            reserved: Mutex::new(vec![http, tls]),
        })
    }

    /// A config with the plain listener on `http_port` and the TLS listener on
    /// `tls_port`, `server` keys in `[server]` and `acme` keys in `[acme]`: one route,
    /// `host = NAME` with `acme = true`, to the backend.
    fn config(&self, http_port: u16, tls_port: u16, server: &str, acme: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:{http_port}\"\ntls_listen = \"127.0.0.1:{tls_port}\"\n{server}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [acme]\ndirectory = \"{}\"\ndirectory_ca = \"{}\"\nstorage = \"{}\"\nemail = \"ops@example.com\"\n{acme}\n\n\
             [[services]]\nname = \"shop\"\nendpoints = [\"{}\"]\n\n\
             [[routes]]\nhost = \"{NAME}\"\nservice = \"shop\"\nacme = true\n",
            self.pebble.directory_url(),
            self.pebble.ca_pem_path().display(),
            self.storage.join("acme").display(),
            self.backend.addr,
        )
    }

    /// A proxy on the ports Pebble validates.
    async fn proxy(&self, server: &str, acme: &str) -> Started {
        self.reserved.lock().expect("reserved ports").clear();
        let p = proxy(&self.config(self.http_port, self.tls_port, server, acme)).await;
        assert_eq!(p.http_addrs.len(), 1);
        assert_eq!(p.http_addrs[0].port(), self.http_port);
        assert_eq!(p.https_addrs.len(), 1);
        assert_eq!(p.https_addrs[0].port(), self.tls_port);
        p
    }

    /// Pebble's issuing root of now (it makes a new one at each start).
    fn root(&self) -> String {
        tokio::task::block_in_place(|| self.pebble.issuer_root_pem())
    }

    fn stop_pebble(&mut self) {
        tokio::task::block_in_place(|| self.pebble.stop());
    }

    fn start_pebble(&mut self) {
        tokio::task::block_in_place(|| self.pebble.start());
    }
}

/// A TLS client that trusts only `root_pem`, offering `alpn`.
fn connector(root_pem: &str, alpn: &[&[u8]]) -> TlsConnector {
    TlsConnector::from(Arc::new(client_config_with_roots(certs_from_pem(root_pem), alpn)))
}

/// A handshake with 127.0.0.1:`port` for SNI [`NAME`], trusting only `root_pem`
/// (HTTP/1.1): the stream and the leaf certificate served.
async fn handshake(port: u16, root_pem: &str) -> Result<(TlsStream<TcpStream>, Vec<u8>), String> {
    let attempt = async {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(NAME.to_owned()).expect("a server name");
        let tls = connector(root_pem, &[b"http/1.1"])
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c: &CertificateDer<'_>| c.to_vec())
            .ok_or("no certificate")?;
        Ok((tls, leaf))
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap_or_else(|_| Err("handshake timed out".to_owned()))
}

/// The leaf certificate served to a new handshake for [`NAME`], verified with `root_pem`.
async fn served_leaf(port: u16, root_pem: &str) -> Result<Vec<u8>, String> {
    handshake(port, root_pem).await.map(|(_, leaf)| leaf)
}

/// A response read off a connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// The head and body, as text.
    text: String,
}

/// `GET path` (HTTP/1.1, `Host: NAME`) over `stream`, which stays open; the whole
/// answer (5 s limit).
async fn get_over<S>(stream: &mut S, path: &str) -> Answer
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        let text = super::support::http1_over(stream, NAME, path).await;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {text}"));
        Answer { status, text }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no whole answer within 5 s"))
}

/// `/api/status` of `p`.
async fn status(p: &Started) -> Value {
    let text = admin_get(p, "/api/status").await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("/api/status is not JSON ({e}): {text}"))
}

/// [`NAME`]'s entry in `/api/status`'s `acme`.
fn acme_entry(status: &Value) -> Value {
    status["acme"]
        .as_array()
        .unwrap_or_else(|| panic!("no acme list in /api/status: {status}"))
        .iter()
        .find(|a| a["name"] == NAME)
        .cloned()
        .unwrap_or_else(|| panic!("{NAME} is not in /api/status's acme: {status}"))
}

/// The certificates `/api/status` lists as ACME's.
fn acme_certificates(status: &Value) -> Vec<Value> {
    status["certificates"]
        .as_array()
        .unwrap_or_else(|| panic!("no certificates list in /api/status: {status}"))
        .iter()
        .filter(|c| c["source"] == "acme")
        .cloned()
        .collect()
}

/// Waits until [`NAME`]'s ACME entry in `/api/status` satisfies `ok`; returns the whole
/// status then.
async fn wait_acme(p: &Started, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = status(p).await;
        let entry = acme_entry(&status);
        if ok(&entry) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{NAME}: not {what} within {WAIT:?}; acme: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Valid, after `orders` successful orders.
fn valid_after(orders: u64) -> impl Fn(&Value) -> bool {
    move |a| a["state"] == "valid" && a["orders_ok"] == orders
}

/// `POST /api/certificates/{name}/renew` on the admin listener, with `headers`; the
/// status and body.
async fn renew(p: &Started, name: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let mut req = Request::post(format!("http://{}/api/certificates/{name}/renew", p.admin_addr));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let answer = send(&client(), req.body(Full::new(Bytes::new())).expect("a request"))
        .await
        .unwrap_or_else(|e| panic!("POST renew: {e}"));
    (answer.status, answer.body)
}

/// The line of `lb_acme_orders_total` for [`NAME`] and `result` in `/metrics`.
fn orders_metric(result: &str, n: u64) -> String {
    format!("lb_acme_orders_total{{name=\"{NAME}\",result=\"{result}\"}} {n}\n")
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// The leaf of the chain stored for [`NAME`] under `storage`.
fn stored_leaf(rig: &Rig) -> Vec<u8> {
    let file = rig.storage.join("acme").join("certs").join(format!("{NAME}.crt"));
    let chain = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let first = rustls_pemfile::certs(&mut chain.as_slice())
        .next()
        .expect("a certificate in the stored chain")
        .expect("PEM");
    first.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_acme_gets_a_certificate_from_pebble_and_is_served_over_https() {
    bounded(async {
        let Some(rig) = Rig::start("a_route_with_acme_gets_a_certificate_from_pebble").await else {
            return;
        };
        let p = rig.proxy("", "").await;
        let st = wait_acme(&p, "valid", valid_after(1)).await;

        // Served over HTTPS, verified with Pebble's root: the backend answers.
        let root = rig.root();
        let (mut tls, leaf) = handshake(rig.tls_port, &root)
            .await
            .expect("a certificate issued by Pebble for the name");
        let answer = get_over(&mut tls, "/cart").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(answer.text.contains("shop path=/cart"), "{answer:?}");
        assert_eq!(leaf, stored_leaf(&rig), "the certificate served is the one stored");

        // The status lists it, and ACME's state.
        let certs = acme_certificates(&st);
        assert_eq!(certs.len(), 1, "{st}");
        let cert = &certs[0];
        assert_eq!(cert["names"], serde_json::json!([NAME]), "{st}");
        assert!(
            cert["issuer"]
                .as_str()
                .is_some_and(|i| i.starts_with("CN=Pebble Intermediate CA")),
            "issued by Pebble's intermediate: {st}"
        );
        assert!(cert["days_left"].as_f64().is_some_and(|d| d > 1.0), "{st}");
        let acme = acme_entry(&st);
        assert_eq!(acme["orders_failed"], 0, "{acme}");
        assert_eq!(acme["error"], Value::Null, "{acme}");
        assert_eq!(acme["last_error"], Value::Null, "{acme}");
        assert_eq!(acme["not_after_unix"], cert["not_after_unix"], "{st}");

        let metrics = admin_get(&p, "/metrics").await;
        assert!(metrics.contains(&orders_metric("success", 1)), "{metrics}");
        assert!(metrics.contains(&orders_metric("failure", 0)), "{metrics}");
        assert!(
            metrics.contains(&format!(
                "lb_tls_certificate_days_left{{names=\"{NAME}\",source=\"acme\"}}"
            )),
            "{metrics}"
        );
        drop(tls);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_listener_redirects_to_https_with_308_but_answers_the_acme_challenge_path_itself() {
    bounded(async {
        let Some(rig) = Rig::start("the_plain_listener_redirects_to_https_with_308").await else {
            return;
        };
        // http-01 only: Pebble's validation goes through the redirecting listener.
        let p = rig
            .proxy("redirect_https = true\n", "challenges = [\"http-01\"]\n")
            .await;
        wait_acme(
            &p,
            "valid (http-01 answered on a listener that redirects)",
            valid_after(1),
        )
        .await;
        let plain = p.http_addrs[0];

        let mut tcp = TcpStream::connect(plain).await.expect("connect");
        let answer = get_over(&mut tcp, "/cart?item=7").await;
        assert_eq!(answer.status, 308, "{answer:?}");
        let location = format!("location: https://{NAME}:{}/cart?item=7\r\n", rig.tls_port);
        assert!(answer.text.to_ascii_lowercase().contains(&location), "{answer:?}");

        // The challenge path is the responder's: an unknown token is its 404, neither a
        // redirect nor the route's backend.
        let answer = get_over(&mut tcp, "/.well-known/acme-challenge/unknown").await;
        assert_eq!(answer.status, 404, "{answer:?}");
        assert!(answer.text.contains("no such ACME challenge"), "{answer:?}");
        assert_eq!(
            rig.backend.hits(),
            0,
            "nothing on the plain listener reached the backend"
        );

        // The HTTPS side serves the route.
        let (mut tls, _) = handshake(rig.tls_port, &rig.root()).await.expect("handshake");
        assert_eq!(get_over(&mut tls, "/cart").await.status, 200);
        drop((tcp, tls));
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reuses_the_stored_certificate_with_pebble_stopped() {
    bounded(async {
        let Some(mut rig) = Rig::start("a_restart_reuses_the_stored_certificate").await else {
            return;
        };
        let first = rig.proxy("", "").await;
        wait_acme(&first, "valid", valid_after(1)).await;
        let root = rig.root();
        let leaf = served_leaf(rig.tls_port, &root).await.expect("served");
        first.shutdown().await;
        rig.stop_pebble();

        // A new proxy over the same storage (on new ports: nothing validates now).
        let p = proxy(&rig.config(0, 0, "", "")).await;
        // At once: no wait for anything.
        let (mut tls, again) = handshake(p.https_addrs[0].port(), &root)
            .await
            .expect("the stored certificate is served at once");
        assert_eq!(again, leaf, "the same certificate");
        assert_eq!(get_over(&mut tls, "/").await.status, 200);
        let st = status(&p).await;
        let acme = acme_entry(&st);
        assert_eq!(acme["state"], "valid", "{acme}");
        assert_eq!(
            (acme["orders_ok"].as_u64(), acme["orders_failed"].as_u64()),
            (Some(0), Some(0)),
            "nothing ordered: {acme}"
        );
        assert_eq!(acme_certificates(&st).len(), 1, "{st}");
        drop(tls);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_renewal_swaps_the_certificate_for_new_handshakes_while_an_open_connection_keeps_working() {
    bounded(async {
        let Some(rig) = Rig::start("a_forced_renewal_swaps_the_certificate").await else {
            return;
        };
        let p = rig.proxy("", "").await;
        wait_acme(&p, "valid", valid_after(1)).await;
        let root = rig.root();
        let (mut held, old) = handshake(rig.tls_port, &root).await.expect("handshake");
        assert_eq!(get_over(&mut held, "/before").await.status, 200);

        // Refused: a name ACME does not manage, and a cross-origin request.
        let (code, body) = renew(&p, "other.example.test", &[]).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
        let (code, body) = renew(&p, NAME, &[("origin", "http://evil.example")]).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(acme_entry(&status(&p).await)["orders_ok"], 1);

        // Accepted from the admin page's own origin.
        let origin = format!("http://{}", p.admin_addr);
        let (code, body) = renew(&p, NAME, &[("origin", &origin)]).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
        let st = wait_acme(&p, "renewed", valid_after(2)).await;

        let new = served_leaf(rig.tls_port, &root).await.expect("served");
        assert_ne!(new, old, "new handshakes get the new certificate");
        assert_eq!(new, stored_leaf(&rig), "and it is stored");
        // The connection opened before still works, on the certificate it started with.
        let answer = get_over(&mut held, "/after").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(answer.text.contains("shop path=/after"), "{answer:?}");
        let held_leaf = held.get_ref().1.peer_certificates().expect("certificates")[0].to_vec();
        assert_eq!(held_leaf, old);

        // One certificate listed: the new one replaced the old.
        let certs = acme_certificates(&st);
        assert_eq!(certs.len(), 1, "{st}");
        assert_eq!(acme_entry(&st)["not_after_unix"], certs[0]["not_after_unix"], "{st}");
        let metrics = admin_get(&p, "/metrics").await;
        assert!(metrics.contains(&orders_metric("success", 2)), "{metrics}");
        drop(held);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pebble_down_a_forced_renewal_fails_the_old_certificate_stays_and_once_it_is_back_a_renewal_succeeds() {
    bounded(async {
        let Some(mut rig) = Rig::start("with_pebble_down_a_forced_renewal_fails").await else {
            return;
        };
        let p = rig.proxy("", "").await;
        wait_acme(&p, "valid", valid_after(1)).await;
        let old_root = rig.root();
        let old = served_leaf(rig.tls_port, &old_root).await.expect("served");

        rig.stop_pebble();
        let asked = unix_now();
        let (code, body) = renew(&p, NAME, &[]).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
        let st = wait_acme(&p, "failed", |a| a["state"] == "failed").await;
        let acme = acme_entry(&st);
        let error = acme["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "{acme}");
        assert_eq!(acme["last_error"], acme["error"], "{acme}");
        let retry_at = acme["retry_at_unix"].as_f64().expect("a retry time");
        // The first retry is 15-30 s away (retry_base 30 s, jittered 50-100 %).
        assert!(
            retry_at > asked && retry_at <= unix_now() + 31.0,
            "retried later: {acme}"
        );
        assert_eq!(
            (acme["orders_ok"].as_u64(), acme["orders_failed"].as_u64()),
            (Some(1), Some(1)),
            "{acme}"
        );
        let metrics = admin_get(&p, "/metrics").await;
        assert!(metrics.contains(&orders_metric("failure", 1)), "{metrics}");
        assert!(metrics.contains(&orders_metric("success", 1)), "{metrics}");
        // The old certificate is still served, and the route with it.
        let (mut tls, leaf) = handshake(rig.tls_port, &old_root)
            .await
            .expect("the old certificate is still served");
        assert_eq!(leaf, old);
        assert_eq!(get_over(&mut tls, "/").await.status, 200);
        assert_eq!(acme_certificates(&st).len(), 1, "{st}");

        // Pebble back (with a new root and no accounts): a renewal now succeeds.
        rig.start_pebble();
        let (code, body) = renew(&p, NAME, &[]).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
        let st = wait_acme(&p, "valid again", valid_after(2)).await;
        let acme = acme_entry(&st);
        assert_eq!(acme["orders_failed"], 1, "{acme}");
        assert_eq!(acme["error"], Value::Null, "{acme}");
        assert!(acme["last_error"].as_str().is_some_and(|e| e == error), "kept: {acme}");
        let new_root = rig.root();
        let new = served_leaf(rig.tls_port, &new_root)
            .await
            .expect("the new certificate, from Pebble's new root");
        assert_ne!(new, old);
        assert!(
            served_leaf(rig.tls_port, &old_root).await.is_err(),
            "the old root no longer verifies what is served"
        );
        let metrics = admin_get(&p, "/metrics").await;
        assert!(metrics.contains(&orders_metric("success", 2)), "{metrics}");
        assert!(metrics.contains(&orders_metric("failure", 1)), "{metrics}");
        drop(tls);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_gets_its_certificate_by_tls_alpn01_answered_on_the_https_listener() {
    bounded(async {
        let Some(rig) = Rig::start("a_route_gets_its_certificate_by_tls_alpn01").await else {
            return;
        };
        let p = rig.proxy("", "challenges = [\"tls-alpn-01\"]\n").await;
        wait_acme(&p, "valid", valid_after(1)).await;
        let (mut tls, leaf) = handshake(rig.tls_port, &rig.root()).await.expect("handshake");
        assert_eq!(leaf, stored_leaf(&rig));
        assert_eq!(get_over(&mut tls, "/").await.status, 200);

        // The challenge certificate is withdrawn: an acme-tls/1 handshake gets nothing.
        let tcp = TcpStream::connect(("127.0.0.1", rig.tls_port)).await.expect("connect");
        let name = ServerName::try_from(NAME.to_owned()).expect("a server name");
        let refused = connector(&rig.root(), &[lb_tls::ACME_TLS_ALPN])
            .connect(name, tcp)
            .await
            .expect_err("no tls-alpn-01 answer once the order is done");
        assert!(refused.to_string().contains("received fatal alert"), "{refused}");
        drop(tls);
        p.shutdown().await;
    })
    .await;
}
