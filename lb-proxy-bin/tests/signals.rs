//! The running binary: SIGHUP reloads the config (and never kills it, even at start),
//! SIGTERM stops it gracefully, a second SIGTERM at once.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lb_test_support::{eventually_blocking, free_port, TempDir};

/// How long any awaited condition may take.
const LIMIT: Duration = Duration::from_secs(10);

/// A tiny HTTP/1.1 backend on its own thread answering every request with `name`.
fn backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = c.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let body = format!("{name}\n");
                        let rsp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        if c.write_all(rsp.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// GET `path` on a fresh connection; the status code and body.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

fn config(listen: u16, admin: u16, backend: SocketAddr, prefix: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:{listen}\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [[services]]\nname = \"web\"\nendpoints = [\"{backend}\"]\n\
         [[routes]]\npath_prefix = \"{prefix}\"\nservice = \"web\"\n"
    )
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(ok.success(), "kill -{sig}");
}

/// Starts `lb-proxy run --config cfg` with its log (stderr) gathered line by line.
fn run(cfg: &std::path::Path) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lb-proxy"))
        .args(["run", "--config"])
        .arg(cfg)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lb-proxy");
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = log.clone();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            lines.lock().expect("log").push(line);
        }
    });
    (child, log)
}

fn logged(log: &Mutex<Vec<String>>, all: &[&str]) -> bool {
    log.lock()
        .expect("log")
        .iter()
        .any(|l| all.iter().all(|w| l.contains(w)))
}

/// Waits for the child to exit (at most `limit`).
fn exit_within(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let mut status = None;
    eventually_blocking("lb-proxy to exit", limit, || {
        status = child.try_wait().expect("wait");
        status.is_some()
    });
    status.expect("an exit status")
}

#[test]
fn sighup_reloads_and_sigterm_stops() {
    let (dir_a, dir_b) = (TempDir::new("signals-a"), TempDir::new("signals-b"));
    let cfg: PathBuf = dir_a.join("lb.toml");
    let (listen, admin) = (free_port(), free_port());
    let web = backend("web");
    std::fs::write(&cfg, config(listen, admin, web, "/old")).expect("write config");
    // A second name for the same file, in another directory: writes through it do not
    // show in the proxy's watch of the first directory, so only SIGHUP can reload.
    let alias = dir_b.join("lb.toml");
    std::fs::hard_link(&cfg, &alias).expect("hard link");

    let (mut child, log) = run(&cfg);
    let addr: SocketAddr = format!("127.0.0.1:{listen}").parse().expect("addr");
    eventually_blocking("the proxy to serve /old", LIMIT, || {
        get(addr, "/old").is_some_and(|(s, _)| s == 200)
    });
    assert_eq!(get(addr, "/new").map(|r| r.0), Some(404));

    // Rewrite in place through the other name: no file event reaches the proxy (only
    // its slow poll would, seconds later), and signal at once: the log says which one
    // applied the file, rather than a test waiting to see nothing happen.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&alias)
        .and_then(|mut f| f.write_all(config(listen, admin, web, "/new").as_bytes()))
        .expect("rewrite config");
    signal(&child, "HUP");
    eventually_blocking("SIGHUP to apply the new routes", LIMIT, || {
        get(addr, "/new").is_some_and(|(s, _)| s == 200)
    });
    // The log is read by another thread: the line may land just after the route works.
    eventually_blocking("the log to say SIGHUP applied the new routes", LIMIT, || {
        logged(&log, &["configuration applied", "SIGHUP"])
    });
    assert_eq!(get(addr, "/old").map(|r| r.0), Some(404), "the old route is gone");

    signal(&child, "TERM");
    let status = exit_within(&mut child, Duration::from_secs(10));
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    assert!(get(addr, "/new").is_none(), "nothing listens after the stop");
}

#[test]
fn sighup_in_the_first_moments_does_not_kill() {
    let dir = TempDir::new("signals-early");
    let cfg = dir.join("lb.toml");
    let (listen, admin) = (free_port(), free_port());
    std::fs::write(&cfg, config(listen, admin, backend("web"), "/")).expect("write config");
    let (mut child, log) = run(&cfg);
    // The first line is logged once the handlers are in: signal at once, and on and on
    // until the proxy serves.
    eventually_blocking("the first log line", LIMIT, || logged(&log, &["lb-proxy starting"]));
    let addr: SocketAddr = format!("127.0.0.1:{listen}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "SIGHUP killed lb-proxy: {:#?}",
            log.lock().expect("log")
        );
        if get(addr, "/").is_some_and(|(s, _)| s == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "lb-proxy never served");
        signal(&child, "HUP");
    }
    signal(&child, "HUP");
    assert_eq!(get(addr, "/").map(|r| r.0), Some(200));
    assert!(child.try_wait().expect("wait").is_none(), "SIGHUP killed lb-proxy");
    signal(&child, "TERM");
    assert!(exit_within(&mut child, Duration::from_secs(10)).success());
}

#[test]
fn a_second_sigterm_exits_at_once() {
    let dir = TempDir::new("signals-twice");
    let cfg = dir.join("lb.toml");
    // A backend that takes requests and never answers.
    let hole = TcpListener::bind("127.0.0.1:0").expect("bind");
    let hole_addr = hole.local_addr().expect("addr");
    let taken = Arc::new(Mutex::new(0usize));
    let count = taken.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in hole.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            *count.lock().expect("count") += 1;
            held.push(c);
        }
    });
    let (listen, admin) = (free_port(), free_port());
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:{listen}\"]\nshutdown_grace = \"60s\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [[services]]\nname = \"web\"\nendpoints = [\"{hole_addr}\"]\nresponse_timeout = \"0s\"\n\
         [[routes]]\nservice = \"web\"\n"
    );
    std::fs::write(&cfg, text).expect("write config");
    let (mut child, log) = run(&cfg);
    let addr: SocketAddr = format!("127.0.0.1:{listen}").parse().expect("addr");
    eventually_blocking("the proxy to listen", LIMIT, || TcpStream::connect(addr).is_ok());
    // A request in flight that nothing will ever answer.
    let mut held = TcpStream::connect(addr).expect("connect");
    held.write_all(b"GET /held HTTP/1.1\r\nhost: x\r\n\r\n").expect("write");
    eventually_blocking("the request to reach the backend", LIMIT, || {
        *taken.lock().expect("count") >= 1
    });
    signal(&child, "TERM");
    // Graceful: the listener closes, the request in flight is waited for (60 s grace).
    eventually_blocking("the listener to close", LIMIT, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
    });
    eventually_blocking("the shutdown to start", LIMIT, || logged(&log, &["shutting down"]));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the first SIGTERM must wait for the request"
    );
    signal(&child, "TERM");
    let status = exit_within(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "a forced exit is not a clean one: {status:?}");
    assert!(logged(&log, &["second signal"]), "{:#?}", log.lock().expect("log"));
    drop(held);
}

#[test]
fn a_reload_refused_while_building_is_applied_by_the_next_sighup() {
    let dir = TempDir::new("signals-refused");
    let cfg: PathBuf = dir.join("lb.toml");
    let more = dir.join("more.toml");
    let (listen, admin) = (free_port(), free_port());
    let (web, other) = (backend("web"), backend("more"));
    std::fs::write(&cfg, config(listen, admin, web, "/old")).expect("write config");
    let (mut child, log) = run(&cfg);
    let addr: SocketAddr = format!("127.0.0.1:{listen}").parse().expect("addr");
    eventually_blocking("the proxy to serve /old", LIMIT, || {
        get(addr, "/old").is_some_and(|(s, _)| s == 200)
    });

    // A valid file whose new service reads an endpoints file that does not exist yet:
    // the build fails, and the running config stays.
    let next = format!(
        "{}[[services]]\nname = \"more\"\nendpoints_file = \"more.toml\"\n\
         [[routes]]\npath_prefix = \"/more\"\nservice = \"more\"\n",
        config(listen, admin, web, "/old")
    );
    std::fs::write(&cfg, next).expect("rewrite config");
    eventually_blocking("the reload refused", LIMIT, || logged(&log, &["configuration refused"]));
    assert_eq!(get(addr, "/old").map(|r| r.0), Some(200), "the running config stays");

    // Once the endpoints file exists, SIGHUP applies the same config file: it is not
    // taken for "unchanged", since it never ran.
    std::fs::write(&more, format!("endpoints = [{{ addr = \"{other}\" }}]\n")).expect("write endpoints");
    signal(&child, "HUP");
    eventually_blocking("SIGHUP to apply the refused config", LIMIT, || {
        get(addr, "/more").is_some_and(|(s, b)| s == 200 && b.trim() == "more")
    });
    signal(&child, "TERM");
    exit_within(&mut child, Duration::from_secs(10));
}
