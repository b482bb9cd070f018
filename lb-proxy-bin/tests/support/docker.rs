//! Test support for the real Docker Engine: a test image built from the `lb-proxy` binary
//! under test (no registry, no pull), containers and networks labelled with the run's id
//! and removed even when a test fails, the proxy as a child process, and HTTP over
//! loopback.
//!
//! Everything here talks to the engine through the `docker` CLI, so the tests exercise the
//! adapter against what an operator would do by hand.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Waits (blocking) until a condition holds, failing the test after a limit.
pub use lb_test_support::eventually_blocking as wait_for;
pub use lb_test_support::free_port;

/// The label every container and network of a test run carries.
pub const RUN_LABEL: &str = "lbtest.run";

/// Whether an engine answers. Where none does, tests skip loudly, unless
/// `LB_REQUIRE_DOCKER=1` (CI), where they fail.
pub fn engine() -> bool {
    static UP: OnceLock<bool> = OnceLock::new();
    let up = *UP.get_or_init(|| {
        Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !up {
        assert!(
            std::env::var("LB_REQUIRE_DOCKER").as_deref() != Ok("1"),
            "LB_REQUIRE_DOCKER=1 but no Docker Engine answers `docker info`"
        );
        eprintln!("\n*** SKIPPED: no Docker Engine reachable (`docker info` failed); set LB_REQUIRE_DOCKER=1 to fail instead ***\n");
    }
    up
}

/// One Docker test at a time in this process: two cores, and timing-sensitive checks.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `docker args...`; its stdout, trimmed. Panics with stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("run docker");
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `docker args...`, ignoring failure (cleanup).
pub fn docker_quiet(args: &[&str]) {
    let _ = Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The test image: the `lb-proxy` binary under test with the shared libraries it links,
/// imported as an image with an exec-form HEALTHCHECK that probes `/healthz`. Built once
/// per process; its tag names the binary's size and modification time.
pub fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_lb-proxy"));
        let meta = std::fs::metadata(&bin).expect("the lb-proxy binary");
        let stamp = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let tag = format!("lbtest-backend:{}-{}", meta.len(), stamp);
        let have = Command::new("docker")
            .args(["image", "inspect", &tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !have {
            build_image(&bin, &tag);
        }
        tag
    })
}

fn build_image(bin: &Path, tag: &str) {
    let dir = std::env::temp_dir().join(format!("lbtest-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tmp")).expect("image dir");
    std::fs::copy(bin, dir.join("lb-proxy")).expect("copy the binary");
    // The dynamic loader and every library `ldd` lists, at the same paths.
    let ldd = Command::new("ldd").arg(bin).output().expect("run ldd");
    for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
        if word.starts_with('/') {
            let target = dir.join(word.trim_start_matches('/'));
            std::fs::create_dir_all(target.parent().expect("a parent")).expect("lib dir");
            std::fs::copy(word, &target).unwrap_or_else(|e| panic!("copy {word}: {e}"));
        }
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .args(["-cf", "-", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tar");
    let status = Command::new("docker")
        .args([
            "import",
            "--change",
            r#"ENTRYPOINT ["/lb-proxy"]"#,
            "--change",
            r#"CMD ["whoami", "--listen", "0.0.0.0:80"]"#,
            "--change",
            "EXPOSE 80/tcp",
            "--change",
            r#"HEALTHCHECK --interval=300ms --timeout=1s --retries=1 CMD ["/lb-proxy", "probe", "http://127.0.0.1:80/healthz"]"#,
            "-",
            tag,
        ])
        .stdin(tar.stdout.take().expect("tar's stdout"))
        .stdout(Stdio::null())
        .status()
        .expect("run docker import");
    let packed = tar.wait().expect("wait for tar");
    assert!(
        packed.success() && status.success(),
        "packing or importing the test image failed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What one test creates, removed on drop (even when the test panics).
pub struct Run {
    pub id: String,
}

impl Run {
    pub fn new(name: &str) -> Self {
        let id = format!("{name}-{}-{}", std::process::id(), unique());
        Self { id }
    }

    /// A container name unique to this run.
    pub fn name(&self, short: &str) -> String {
        format!("{}-{short}", self.id)
    }

    /// `docker run -d` of the test image, labelled, with `args` before the image (labels,
    /// `--network`, ...) and `cmd` after it (empty: the image's whoami). Returns the
    /// container's name.
    pub fn run(&self, short: &str, args: &[&str], cmd: &[&str]) -> String {
        let name = self.name(short);
        let label = format!("{RUN_LABEL}={}", self.id);
        let mut all = vec!["run", "-d", "--name", &name, "--label", &label];
        all.extend_from_slice(args);
        all.push(image());
        all.extend_from_slice(cmd);
        docker(&all);
        name
    }

    /// A labelled network; its name.
    pub fn network(&self, short: &str) -> String {
        let name = self.name(short);
        let label = format!("{RUN_LABEL}={}", self.id);
        docker(&["network", "create", "--label", &label, &name]);
        name
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let filter = format!("label={RUN_LABEL}={}", self.id);
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids);
            docker_quiet(&args);
        }
        let nets = Command::new("docker")
            .args(["network", "ls", "-q", "--filter", &filter])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        for n in nets.split_whitespace() {
            docker_quiet(&["network", "rm", n]);
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    (t % 100_000) * 100 + N.fetch_add(1, Ordering::Relaxed)
}

/// The proxy as a child process, its log collected.
pub struct Proxy {
    child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<String>>,
    pub config: PathBuf,
}

impl Proxy {
    /// Starts `lb-proxy run` with `[server]` and `[admin]` on free loopback ports and `rest`
    /// appended; waits until the admin API answers.
    pub fn start(run: &Run, rest: &str) -> Self {
        let (listen, admin) = (free_port(), free_port());
        let text =
            format!("[server]\nlisten = [\"127.0.0.1:{listen}\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{rest}");
        let config = std::env::temp_dir().join(format!("{}.toml", run.id));
        std::fs::write(&config, text).expect("write the config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_lb-proxy"))
            .args(["run", "--config"])
            .arg(&config)
            .env("LB_LOG", "info,lb_discovery_docker=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lb-proxy");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
            }
        });
        let proxy = Self {
            child,
            listen: SocketAddr::from(([127, 0, 0, 1], listen)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            log,
            config,
        };
        wait_for("the admin API", Duration::from_secs(15), || {
            get(proxy.admin, "/api/status", None).is_some_and(|(code, _)| code == 200)
        });
        proxy
    }

    /// The status API document.
    pub fn status(&self) -> serde_json::Value {
        let (_, body) = get(self.admin, "/api/status", None).expect("the admin API answers");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// A service's entry of the status API, if present.
    pub fn service(&self, name: &str) -> Option<serde_json::Value> {
        self.status()["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
    }

    /// The ids of a service's endpoints in rotation (not draining, connected), sorted;
    /// empty if the service is absent.
    pub fn endpoint_ids(&self, name: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .service(name)
            .and_then(|s| {
                s["endpoints"].as_array().map(|eps| {
                    // In rotation: not draining, and its service made (connected).
                    eps.iter()
                        .filter(|e| e["state"] != "draining" && e["connection"] == "ready")
                        .filter_map(|e| e["id"].as_str().map(String::from))
                        .collect()
                })
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// GET through the proxy with a Host header; the status and the `Hostname:` line.
    pub fn get_host(&self, host: &str, path: &str) -> Option<(u16, String)> {
        get(self.listen, path, Some(host))
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
        if std::thread::panicking() {
            eprintln!("--- lb-proxy log ---\n{}--- end of log ---", self.log_text());
        }
    }
}

/// GET `path` on a fresh connection (`Connection: close`): the status code and body.
pub fn get(addr: SocketAddr, path: &str, host: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let host = host.unwrap_or("localhost");
    write!(s, "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let out = String::from_utf8_lossy(&out).to_string();
    let status = out.get(9..12)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The hostname a whoami backend put on the first line of its answer.
pub fn hostname(body: &str) -> Option<String> {
    body.lines()
        .next()?
        .strip_prefix("Hostname: ")
        .map(|h| h.trim().to_string())
}

/// The container's hostname (its short id), as whoami reports it.
pub fn container_hostname(name: &str) -> String {
    docker(&["inspect", "-f", "{{.Config.Hostname}}", name])
}
