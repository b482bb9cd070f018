//! The status page in a real browser: `lb-proxy run` with a token- and password-protected
//! admin listener, two live backends and a dead one, loaded in headless Chromium.
//!
//! Checks that the page's script ran, authenticated its `/api/status` fetch with the
//! `?token=` of the page URL (and with Basic credentials), and rendered every endpoint
//! with its state; then takes a
//! screenshot (path printed; `LB_SCREENSHOT` overrides it) for a human to look at.
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

/// Two distinct addresses nothing listens on (bound, then released).
fn free_addrs() -> (SocketAddr, SocketAddr) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap(), b.local_addr().unwrap())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_chromium() {
    let Some(chromium_bin) = find_chromium() else {
        let msg = "no chromium binary found (install Debian's `chromium` package or set LB_CHROMIUM)";
        if std::env::var("LB_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1") {
            panic!("{msg}, and LB_REQUIRE_CHROMIUM=1");
        }
        // Straight to stderr: the test harness captures `eprintln!` of passing tests.
        let bar = "!".repeat(78);
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n{bar}\n!!! SKIPPED status_page_renders_in_chromium: {msg}\n!!! (LB_REQUIRE_CHROMIUM=1 makes this a failure)\n{bar}\n"
        );
        return;
    };

    let one = backend("one").await;
    let two = backend("two").await;
    // `listen` is taken again by lb-proxy at once; `dead` stays closed.
    let (dead, listen) = free_addrs();
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

    let shot = std::env::var_os("LB_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("lb-status.png"));
    let _ = std::fs::remove_file(&shot);
    chromium(
        &chromium_bin,
        &profile,
        &[&format!("--screenshot={}", shot.display()), "--window-size=1280,800"],
        &url,
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot at {}",
        shot.display()
    );
    eprintln!("status page screenshot: {}", shot.display());
    let _ = std::fs::remove_dir_all(&dir);
}
