//! The status page in a real browser: `lb-proxy run` with a token- and password-protected
//! admin listener, two live backends and a dead one, loaded in headless Chromium.
//!
//! Checks that the page's script ran, authenticated its `/api/status` fetch with the
//! `?token=` of the page URL (and with Basic credentials), and rendered every endpoint
//! with its state; then takes a
//! screenshot (path printed; `LB_SCREENSHOT` overrides it) for a human to look at.
//!
//! A second test serves HTTPS with certificate files (one valid, one expiring within two
//! weeks, one expired) and ACME against a directory that is not there, and checks the
//! page's Certificates and ACME panels; its screenshot goes beside the first one.
//!
//! Needs a `chromium` binary (Debian: `apt-get install chromium`; or set `LB_CHROMIUM`
//! to a Chromium or Chrome binary). Without one the test is skipped with a loud message,
//! unless `LB_REQUIRE_CHROMIUM=1`, which makes it fail instead.

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use lb_test_support::tls::{connector, Cert};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "page-test-token";
const PASSWORD: &str = "page-test-password";

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LB_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome-stable", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// Kills the proxy when the test ends, however it ends.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A backend answering `hello from {name}` to everything, `/healthz` included.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("hello from {name}\n")))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// `N` distinct addresses nothing listens on (bound, then released).
fn free_addrs<const N: usize>() -> [SocketAddr; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap())
}

async fn http(method: &str, addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let rsp = send
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = rsp.status().as_u16();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Starts `lb-proxy run` and returns it with the admin address it logged.
fn start_proxy(config: &Path) -> (Proxy, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lb-proxy"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lb-proxy starts");
    let stderr = child.stderr.take().unwrap();
    let proxy = Proxy(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            let fields = &v["fields"];
            let admin = fields["message"].as_str().is_some_and(|m| m.contains("admin"));
            if let (false, true, Some(addr)) = (sent, admin, fields["listen"].as_str()) {
                if let Ok(addr) = addr
                    .trim_start_matches("Some(")
                    .trim_end_matches(')')
                    .parse::<SocketAddr>()
                {
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
            if !line.contains("\"INFO\"") && !line.contains("\"DEBUG\"") {
                eprintln!("lb-proxy: {line}");
            }
        }
    });
    let admin = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("lb-proxy logs the admin address within 20 s");
    (proxy, admin)
}

/// Runs Chromium headless with `args` and `url`, killing it after a minute.
fn chromium(bin: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait().unwrap() {
            Some(status) => {
                let out = reader.join().unwrap();
                if !status.success() {
                    let mut err = String::new();
                    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
                    panic!("chromium failed ({status}):\n{err}");
                }
                return out;
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                panic!("chromium did not finish within 60 s");
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The Chromium binary, or `None` after a loud skip message (a panic with
/// `LB_REQUIRE_CHROMIUM=1`).
fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(bin) = find_chromium() {
        return Some(bin);
    }
    let msg = "no chromium binary found (install Debian's `chromium` package or set LB_CHROMIUM)";
    if std::env::var("LB_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1") {
        panic!("{msg}, and LB_REQUIRE_CHROMIUM=1");
    }
    // Straight to stderr: the test harness captures `eprintln!` of passing tests.
    let bar = "!".repeat(78);
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n{bar}\n!!! SKIPPED {test}: {msg}\n!!! (LB_REQUIRE_CHROMIUM=1 makes this a failure)\n{bar}\n"
    );
    None
}

/// Where a screenshot goes: `LB_SCREENSHOT` (its stem plus `-{tag}` for the other
/// tests), else the temporary directory.
fn screenshot_path(tag: Option<&str>) -> PathBuf {
    let base = std::env::var_os("LB_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("lb-status.png"));
    match tag {
        None => base,
        Some(tag) => {
            let stem = base
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            base.with_file_name(format!("{stem}-{tag}.png"))
        }
    }
}

/// Screenshots `url` at 1280x800 into `shot` and checks a PNG came out.
fn screenshot(bin: &Path, profile: &Path, url: &str, shot: &Path) {
    let _ = std::fs::remove_file(shot);
    chromium(
        bin,
        profile,
        &[&format!("--screenshot={}", shot.display()), "--window-size=1280,800"],
        url,
    );
    let png = std::fs::read(shot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot at {}",
        shot.display()
    );
    eprintln!("status page screenshot: {}", shot.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_chromium() {
    let Some(chromium_bin) = chromium_or_skip("status_page_renders_in_chromium") else {
        return;
    };

    let one = backend("one").await;
    let two = backend("two").await;
    // `listen` is taken again by lb-proxy at once; `dead` stays closed.
    let [dead, listen] = free_addrs();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("status-page-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("lb.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = ["{listen}"]

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"
user = "admin"
password = "{PASSWORD}"

[[services]]
name = "web"
balance = "round_robin"
endpoints = [{{ addr = "{one}", weight = 3 }}, "{two}", "{dead}"]
health = {{ path = "/healthz", interval = "500ms", timeout = "300ms", rise = 1, fall = 1 }}
panic_threshold = 0

[[routes]]
path_prefix = "/"
service = "web"
"#
        ),
    )
    .unwrap();
    let (_proxy, admin) = start_proxy(&config);

    // Wait until the checks have run: the live backends healthy, the dead one not.
    let ids = [one.to_string(), two.to_string(), dead.to_string()];
    let want = ["healthy", "healthy", "unhealthy"];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = http("GET", admin, "/api/status", Some(TOKEN)).await;
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let eps = v["services"][0]["endpoints"].as_array().cloned().unwrap_or_default();
        let state = |id: &str| {
            eps.iter()
                .find(|e| e["id"] == id)
                .map(|e| e["state"].as_str().unwrap().to_owned())
        };
        let states: Vec<Option<String>> = ids.iter().map(|id| state(id)).collect();
        if states.iter().zip(want).all(|(s, w)| s.as_deref() == Some(w)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "endpoints never reached {want:?}: {states:?}\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Some traffic, then drain the second backend.
    for _ in 0..8 {
        let (code, body) = http("GET", listen, "/", None).await;
        assert_eq!(code, 200, "{body}");
    }
    let drain = format!(
        "/api/services/web/endpoints/{}/drain",
        two.to_string().replace(':', "%3A")
    );
    let (code, body) = http("POST", admin, &drain, Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");

    let profile = dir.join("chromium-profile");
    let url = format!("http://{admin}/?token={TOKEN}");
    let dom = chromium(&chromium_bin, &profile, &["--dump-dom"], &url);
    assert!(
        dom.contains(r#"data-source="api""#),
        "the page's script should have rendered data fetched from /api/status (with the token):\n{dom}"
    );
    assert!(dom.contains(r#"data-service="web""#), "service section:\n{dom}");
    for (id, state) in [(&ids[0], "healthy"), (&ids[1], "draining"), (&ids[2], "unhealthy")] {
        let row = format!(r#"data-endpoint="{id}" data-state="{state}""#);
        assert!(dom.contains(&row), "row {row} expected in:\n{dom}");
    }
    assert!(dom.contains("round_robin"), "policy shown:\n{dom}");
    assert!(dom.contains("1 / 3 eligible"), "eligible count shown:\n{dom}");
    assert!(
        dom.contains(">failed<"),
        "the dead endpoint's failed check shown:\n{dom}"
    );
    assert!(
        dom.contains(">enable<") && dom.contains(">drain<"),
        "action buttons:\n{dom}"
    );

    // Without credentials the page is refused.
    let (code, _) = http("GET", admin, "/", None).await;
    assert_eq!(code, 401);
    // Basic credentials in the URL work too: the page's fetches must not use URLs that
    // carry them (fetch() refuses those), and the browser sends them from its cache.
    let basic_url = format!("http://admin:{PASSWORD}@{admin}/");
    let dom = chromium(&chromium_bin, &profile, &["--dump-dom"], &basic_url);
    assert!(dom.contains(r#"data-source="api""#), "with Basic auth too:\n{dom}");

    screenshot(&chromium_bin, &profile, &url, &screenshot_path(None));
    let _ = std::fs::remove_dir_all(&dir);
}

const DAY: u64 = 86_400;

/// Seconds since the Unix epoch, now.
fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A self-signed certificate for `names` issued by (and to) [`ISSUER_CN`], valid from
/// `from` to `until` (Unix seconds); returns its PEM, its key's PEM and its DER.
fn self_signed(names: &[&str], from: u64, until: u64) -> (String, String, rustls::pki_types::CertificateDer<'static>) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, ISSUER_CN);
    params.distinguished_name = dn;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(from);
    params.not_after = epoch + Duration::from_secs(until);
    let cert = Cert::from_params(params, &rcgen::KeyPair::generate().expect("key pair"));
    (cert.cert_pem, cert.key_pem, cert.der)
}

const ISSUER_CN: &str = "Status Page Test CA";

/// `YYYY-MM-DD` (UTC) of a Unix time: the page's expiry dates.
fn utc_date(unix: f64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = (unix / DAY as f64).floor() as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The page's days-left text for `days`, and the one it gives if a whole day went by
/// between reading the JSON and the page's own fetch (within the hour after).
fn days_texts(days: f64) -> [String; 2] {
    let text = |d: f64| {
        if d < 0.0 {
            format!("expired {} days ago", (-d).floor())
        } else {
            format!("{} days", d.floor())
        }
    };
    [text(days), text(days - 1.0 / 24.0)]
}

/// Text as Chromium's `--dump-dom` serializes it.
fn html_text(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// One GET over HTTPS to `addr` for `name`, trusting only `root`; (status, body).
async fn https_get(
    addr: SocketAddr,
    name: &str,
    root: rustls::pki_types::CertificateDer<'static>,
) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let server = rustls::pki_types::ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let tls = connector(root, &[])
        .connect(server, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", name)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = rsp.status().as_u16();
    let body = rsp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_certificates() {
    let Some(chromium_bin) = chromium_or_skip("status_page_shows_certificates") else {
        return;
    };

    let one = backend("one").await;
    // `listen` and `tls_listen` are taken again by lb-proxy at once; `acme_dead` stays
    // closed, so every ACME order fails.
    let [listen, tls_listen, acme_dead] = free_addrs();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("status-certs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let now = now_unix();
    // (file stem, names, valid from, valid until): fine, expiring in 10 days, expired.
    let certs: [(&str, &[&str], u64, u64); 3] = [
        ("www", &["www.status.test", "status.test"], now - DAY, now + 90 * DAY),
        ("soon", &["soon.status.test"], now - 80 * DAY, now + 10 * DAY),
        ("old", &["old.status.test"], now - 93 * DAY, now - 3 * DAY),
    ];
    let mut www_der = None;
    for (stem, names, from, until) in certs {
        let (pem, key, der) = self_signed(names, from, until);
        std::fs::write(dir.join(format!("{stem}.pem")), pem).unwrap();
        std::fs::write(dir.join(format!("{stem}-key.pem")), key).unwrap();
        if stem == "www" {
            www_der = Some(der);
        }
    }
    let config = dir.join("lb.toml");
    // Certificate and storage paths are relative: resolved against the config's directory.
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = ["{listen}"]
tls_listen = ["{tls_listen}"]

[server.tls]
cert = "www.pem"
key = "www-key.pem"

[[server.tls.certs]]
sni = ["soon.status.test"]
cert = "soon.pem"
key = "soon-key.pem"

[[server.tls.certs]]
sni = ["old.status.test"]
cert = "old.pem"
key = "old-key.pem"

[acme]
directory = "https://{acme_dead}/directory"
storage = "acme"
names = ["acme.status.test"]

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[[services]]
name = "web"
endpoints = ["{one}"]

[[routes]]
path_prefix = "/"
service = "web"
"#
        ),
    )
    .unwrap();
    let (_proxy, admin) = start_proxy(&config);

    // The proxy serves HTTPS with the default certificate.
    let www_der = www_der.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match https_get(tls_listen, "www.status.test", www_der.clone()).await {
            Ok((code, body)) => {
                assert_eq!((code, body.as_str()), (200, "hello from one\n"));
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "no HTTPS answer on {tls_listen} within 20 s: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Wait until the certificates are listed and ACME's first order has failed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (code, body) = http("GET", admin, "/api/status", Some(TOKEN)).await;
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let listed = v["certificates"].as_array().map_or(0, Vec::len);
        if listed == 3 && v["acme"][0]["state"] == "failed" {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "never 3 certificates and a failed ACME order within 30 s:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let cert = |name: &str| -> Value {
        status["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["names"].as_array().unwrap().iter().any(|n| n == name))
            .unwrap_or_else(|| panic!("a certificate for {name} in {status:#}"))
            .clone()
    };

    let profile = dir.join("chromium-profile");
    let url = format!("http://{admin}/?token={TOKEN}");
    let dom = chromium(&chromium_bin, &profile, &["--dump-dom"], &url);
    assert!(
        dom.contains(r#"data-source="api""#),
        "the page's script should have rendered data fetched from /api/status:\n{dom}"
    );
    assert!(
        dom.contains(r#"data-section="certificates""#),
        "certificates panel:\n{dom}"
    );
    for (names, expiry, host) in [
        ("www.status.test, status.test", "ok", "www.status.test"),
        ("soon.status.test", "warn", "soon.status.test"),
        ("old.status.test", "expired", "old.status.test"),
    ] {
        let c = cert(host);
        let row = format!(r#"data-cert="{names}" data-expiry="{expiry}""#);
        assert!(dom.contains(&row), "row {row} expected in:\n{dom}");
        let issuer = c["issuer"].as_str().unwrap();
        assert!(issuer.contains(ISSUER_CN), "issuer of {host}: {issuer}");
        assert!(
            dom.contains(&html_text(issuer)),
            "issuer {issuer:?} of {host} shown:\n{dom}"
        );
        let date = utc_date(c["not_after_unix"].as_f64().unwrap());
        assert!(
            dom.contains(&format!(">{date}<")),
            "expiry date {date} of {host} shown:\n{dom}"
        );
        let days = c["days_left"].as_f64().unwrap();
        let texts = days_texts(days);
        assert!(
            texts.iter().any(|t| dom.contains(&format!(">{t}<"))),
            "days left of {host} ({days}) shown as one of {texts:?}:\n{dom}"
        );
        let source = c["source"].as_str().unwrap();
        assert!(
            dom.contains(&html_text(source)),
            "source {source:?} of {host} shown:\n{dom}"
        );
    }
    assert_eq!(cert("www.status.test")["default"], true, "{status:#}");
    assert!(dom.contains(">default<"), "the default certificate marked:\n{dom}");
    assert!(
        dom.contains("left-warn") && dom.contains("left-expired"),
        "warning and error highlights:\n{dom}"
    );

    // ACME: the failed name with its error, the next try and a renew button.
    assert!(dom.contains(r#"data-section="acme""#), "ACME panel:\n{dom}");
    assert!(
        dom.contains(r#"data-acme="acme.status.test" data-state="failed""#),
        "the ACME name's state:\n{dom}"
    );
    let error = status["acme"][0]["error"].as_str().unwrap();
    assert!(
        dom.contains(&html_text(error)),
        "the ACME error {error:?} shown:\n{dom}"
    );
    assert!(dom.contains("next try"), "the next ACME try shown:\n{dom}");
    assert!(dom.contains(r#"data-action="renew""#), "a renew button:\n{dom}");

    // The rows are soonest to expire first.
    let at = |needle: &str| dom.find(needle).unwrap_or_else(|| panic!("{needle} in:\n{dom}"));
    assert!(
        at(r#"data-cert="old.status.test""#) < at(r#"data-cert="soon.status.test""#)
            && at(r#"data-cert="soon.status.test""#) < at(r#"data-cert="www.status.test, status.test""#),
        "certificates ordered by expiry:\n{dom}"
    );

    screenshot(&chromium_bin, &profile, &url, &screenshot_path(Some("certificates")));

    // The URL the renew button posts to orders again at once, without the backoff wait.
    let (code, body) = http("POST", admin, "/api/certificates/acme.status.test/renew", Some(TOKEN)).await;
    assert_eq!(code, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http("GET", admin, "/api/status", Some(TOKEN)).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        if v["acme"][0]["orders_failed"].as_u64() >= Some(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no second ACME order within 10 s of renew:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
