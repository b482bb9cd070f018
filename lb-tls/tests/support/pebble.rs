//! A Pebble (the ACME test server) on loopback for integration tests.
//!
//! Include it with `#[path = "support/pebble.rs"] mod pebble;` (it needs `rcgen`,
//! `rustls` with `ring` and `serde_json`; nothing of lb-tls). [`Pebble::new`] starts
//! `pebble-challtestsrv` as its DNS server (every name resolves to 127.0.0.1) and
//! `pebble`, which validates http-01 on `http_port` and tls-alpn-01 on `tls_port` of
//! 127.0.0.1, where the test's own challenge servers listen. Both binaries are taken from
//! `PATH` (Debian's `pebble` package); without them the test is skipped with a notice,
//! unless `LB_REQUIRE_PEBBLE=1`, which makes it fail.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lb_test_support::free_port;
use lb_test_support::tls::{client_config, Cert};
use rustls::pki_types::CertificateDer;

const PEBBLE: &str = "pebble";
const CHALLTESTSRV: &str = "pebble-challtestsrv";
/// How long a process may take to answer after it is started.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running Pebble and its DNS server; both are killed when it is dropped.
pub(crate) struct Pebble {
    dir: PathBuf,
    config: PathBuf,
    ca_pem: PathBuf,
    ca_der: CertificateDer<'static>,
    acme_port: u16,
    management_port: u16,
    dns_port: u16,
    pebble: Option<Child>,
    challtestsrv: Option<Child>,
}

impl std::fmt::Debug for Pebble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pebble")
            .field("dir", &self.dir)
            .field("acme_port", &self.acme_port)
            .field("running", &self.pebble.is_some())
            .finish()
    }
}

/// Whether `pebble` and `pebble-challtestsrv` can be run. If not: panics when
/// `LB_REQUIRE_PEBBLE=1`, else says loudly that the test is skipped.
pub(crate) fn available(test: &str) -> bool {
    let found = [PEBBLE, CHALLTESTSRV].iter().all(|bin| on_path(bin));
    if !found {
        if std::env::var("LB_REQUIRE_PEBBLE").as_deref() == Ok("1") {
            panic!("{test}: `{PEBBLE}` and `{CHALLTESTSRV}` are required (LB_REQUIRE_PEBBLE=1) but not on PATH; install Debian's `pebble` package");
        }
        // Straight to stderr, past the test harness's capture: a skip must be seen.
        let _ = writeln!(
            io::stderr(),
            "\n*** SKIPPED {test}: `{PEBBLE}` / `{CHALLTESTSRV}` not on PATH (install Debian's `pebble` package; LB_REQUIRE_PEBBLE=1 makes this a failure) ***\n"
        );
    }
    found
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(bin).is_file()))
        .unwrap_or(false)
}

impl Pebble {
    /// Starts Pebble validating http-01 on 127.0.0.1:`http_port` and tls-alpn-01 on
    /// 127.0.0.1:`tls_port`; `None` (after a notice) if it is not installed.
    pub(crate) fn new(test: &str, http_port: u16, tls_port: u16) -> Option<Pebble> {
        if !available(test) {
            return None;
        }
        let dir = temp_dir("pebble");
        // Pebble's own HTTPS certificate (directory and management interface).
        let cert = Cert::self_signed(&["127.0.0.1", "localhost"]);
        let (ca_pem, key_pem) = cert.write_pem(&dir, "pebble-https");

        let acme_port = free_port();
        let management_port = free_port();
        let dns_port = free_dns_port();
        let config = dir.join("pebble-config.json");
        let json = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": ca_pem,
                "privateKey": key_pem,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        std::fs::write(&config, serde_json::to_vec_pretty(&json).unwrap()).expect("write the config");

        let mut pebble = Pebble {
            dir,
            config,
            ca_pem,
            ca_der: cert.der,
            acme_port,
            management_port,
            dns_port,
            pebble: None,
            challtestsrv: None,
        };
        pebble.start_challtestsrv();
        pebble.start();
        Some(pebble)
    }

    /// The ACME directory URL.
    pub(crate) fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The PEM certificate to trust for the directory's HTTPS.
    pub(crate) fn ca_pem_path(&self) -> &Path {
        &self.ca_pem
    }

    /// The PEM root that issues certificates now (Pebble makes a new one at each start).
    pub(crate) fn issuer_root_pem(&self) -> String {
        let (status, body) = self
            .https_get(self.management_port, "/roots/0")
            .expect("fetch Pebble's root from its management interface");
        assert_eq!(status, 200, "Pebble's /roots/0: {}", String::from_utf8_lossy(&body));
        String::from_utf8(body).expect("PEM")
    }

    /// Stops Pebble (the ACME server); its DNS server keeps running.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts Pebble (again) on the same ports and waits until the directory answers.
    /// Pebble keeps nothing: accounts, orders and its roots are new.
    pub(crate) fn start(&mut self) {
        self.stop();
        let log = self.log_file("pebble.log");
        let child = Command::new(PEBBLE)
            .arg("-config")
            .arg(&self.config)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{}", self.dns_port))
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start pebble");
        self.pebble = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match self.https_get(self.acme_port, "/dir") {
                Ok((200, _)) => break,
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    self.check_alive();
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => panic!(
                    "Pebble's directory did not answer within {START_DEADLINE:?}: {other:?}\n{}",
                    self.logs()
                ),
            }
        }
    }

    fn start_challtestsrv(&mut self) {
        let log = self.log_file("challtestsrv.log");
        let management_port = free_port();
        let mut cmd = Command::new(CHALLTESTSRV);
        cmd.arg("-dns01")
            .arg(format!("127.0.0.1:{}", self.dns_port))
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .arg("-management")
            .arg(format!("127.0.0.1:{management_port}"))
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]);
        if challtestsrv_has_flag("-doh") {
            cmd.args(["-doh", ""]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start pebble-challtestsrv");
        self.challtestsrv = Some(child);
        // It serves DNS over TCP as well as UDP: once TCP answers, DNS is up.
        let deadline = Instant::now() + START_DEADLINE;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.dns_port));
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pebble-challtestsrv did not listen within {START_DEADLINE:?}\n{}",
                self.logs()
            );
            self.check_alive();
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn check_alive(&mut self) {
        let mut exited = None;
        for (what, child) in [
            ("pebble", &mut self.pebble),
            ("pebble-challtestsrv", &mut self.challtestsrv),
        ] {
            if let Some(Ok(Some(status))) = child.as_mut().map(Child::try_wait) {
                exited = Some(format!("{what} exited ({status})"));
            }
        }
        if let Some(exited) = exited {
            panic!("{exited}\n{}", self.logs());
        }
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .expect("log file")
    }

    /// The end of both processes' logs.
    pub(crate) fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["pebble.log", "challtestsrv.log"] {
            let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            out.push_str(&format!(
                "--- {name} (last {} lines) ---\n{}\n",
                tail.len(),
                tail.join("\n")
            ));
        }
        out
    }

    /// A GET over HTTPS to 127.0.0.1:`port`, trusting Pebble's own certificate: the
    /// status and the body.
    fn https_get(&self, port: u16, path: &str) -> io::Result<(u16, Vec<u8>)> {
        let config = client_config(self.ca_der.clone(), &[]);
        let server_name = rustls::pki_types::ServerName::from(IpAddr::from(Ipv4Addr::LOCALHOST));
        let conn = rustls::ClientConnection::new(Arc::new(config), server_name).map_err(io::Error::other)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        sock.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        // HTTP/1.0: no chunked body, the server closes when done.
        write!(tls, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
        tls.flush()?;
        let mut response = Vec::new();
        match tls.read_to_end(&mut response) {
            Ok(_) => {}
            // A close without close_notify, after the whole response.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
            Err(e) => return Err(e),
        }
        let head_end = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| io::Error::other("no end of the response head"))?;
        let head = String::from_utf8_lossy(&response[..head_end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line: {head}")))?;
        Ok((status, response[head_end + 4..].to_vec()))
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!("Pebble logs ({}):\n{}", self.dir.display(), self.logs());
        }
        self.stop();
        if let Some(mut child) = self.challtestsrv.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !panicking {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Whether `pebble-challtestsrv -h` lists `flag` (versions differ: `-doh` is newer).
fn challtestsrv_has_flag(flag: &str) -> bool {
    static HELP: OnceLock<String> = OnceLock::new();
    let help = HELP.get_or_init(|| {
        Command::new(CHALLTESTSRV)
            .arg("-h")
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    });
    help.lines().any(|l| l.split_whitespace().next() == Some(flag))
}

/// A new empty directory under the system's temporary directory.
pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "lb-{tag}-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

/// A loopback port free now for both UDP and TCP (DNS serves both).
fn free_dns_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a UDP port");
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}
