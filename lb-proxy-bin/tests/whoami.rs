//! `lb-proxy whoami` and `lb-proxy probe`, as the binary: the demo backend answers with its
//! hostname, `/healthz` and `probe` agree, SIGTERM stops it at once.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lb-proxy"))
}

/// Kills the child when the test ends, passing or not.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `whoami --listen 127.0.0.1:0` and reads the bound address from its log.
fn start_whoami(name: &str) -> (Guard, SocketAddr) {
    let mut child = bin()
        .args(["whoami", "--listen", "127.0.0.1:0", "--name", name])
        .env("LB_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lb-proxy whoami");
    let stderr = child.stderr.take().expect("piped stderr");
    let guard = Guard(child);
    let (tx, rx) = mpsc::channel();
    // Keeps draining stderr after the address line, so the child never blocks on it.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if let Some((_, rest)) = line.split_once("listening on ") {
                if let Some(addr) = rest
                    .split_whitespace()
                    .next()
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = tx.send(addr);
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("whoami logs `listening on ADDR` within 10 s");
    (guard, addr)
}

/// GET `path` on a fresh connection: status, headers and body.
fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nuser-agent: test\r\nconnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the answer");
    let (head, body) = out.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.get(9..12).and_then(|s| s.parse().ok()).expect("a status");
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn probe(url: &str) -> Output {
    bin()
        .args(["probe", url, "--timeout", "2s"])
        .output()
        .expect("run lb-proxy probe")
}

fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

#[test]
fn whoami_answers_with_its_hostname_and_the_request() {
    let (_child, addr) = start_whoami("test-name");
    let (status, head, body) = get(addr, "/some/path?q=1");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: text/plain"), "{head}");
    let lines: Vec<&str> = body.lines().collect();
    let hostname = lines[0]
        .strip_prefix("Hostname: ")
        .expect("the first line names the host");
    assert!(!hostname.trim().is_empty(), "{body}");
    assert_eq!(lines[1], "Name: test-name", "{body}");
    assert_eq!(lines[2], format!("Listen: {addr}"), "{body}");
    assert!(lines[3].starts_with("RemoteAddr: 127.0.0.1:"), "{body}");
    assert!(lines.contains(&"GET /some/path?q=1 HTTP/1.1"), "{body}");
    assert!(
        lines.contains(&"Host: x") && lines.contains(&"User-Agent: test"),
        "{body}"
    );

    let (status, _, body) = get(addr, "/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
}

#[test]
fn probe_exits_0_on_a_healthy_backend_and_1_otherwise() {
    let (_child, addr) = start_whoami("probed");
    let out = probe(&format!("http://{addr}/healthz"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let closed = closed_port();
    let out = probe(&format!("http://{closed}/healthz"));
    assert_eq!(out.status.code(), Some(1), "a closed port is unhealthy");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "says why: {err}");

    // No DNS: a name is refused, not looked up.
    let out = probe(&format!("http://localhost:{}/healthz", addr.port()));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("IP address"));
}

#[test]
fn probe_exits_1_on_a_server_error_and_on_silence() {
    // Answers 503 to the first connection, then accepts one that it never answers.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (i, conn) in l.incoming().enumerate() {
            let Ok(mut c) = conn else { continue };
            if i == 0 {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let _ = c.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
            } else {
                held.push(c);
            }
        }
    });
    let out = probe(&format!("http://{addr}/"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("503"));

    let started = Instant::now();
    let out = bin()
        .args(["probe", &format!("http://{addr}/"), "--timeout", "300ms"])
        .output()
        .expect("run lb-proxy probe");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no answer"));
    assert!(started.elapsed() < Duration::from_secs(5), "the timeout holds");
}

#[test]
fn whoami_stops_promptly_on_sigterm() {
    let (mut child, addr) = start_whoami("stopping");
    // An idle keep-alive connection must not hold the stop up.
    let mut idle = TcpStream::connect(addr).expect("connect");
    write!(idle, "GET / HTTP/1.1\r\nhost: x\r\n\r\n").expect("write");
    idle.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut buf = [0u8; 4096];
    assert!(idle.read(&mut buf).expect("an answer") > 0);

    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status()
        .expect("run kill");
    assert!(ok.success());
    let sent = Instant::now();
    let deadline = sent + Duration::from_secs(5);
    let status = loop {
        if let Some(st) = child.0.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "whoami did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    assert!(
        sent.elapsed() < Duration::from_millis(1500),
        "stopped in {:?}",
        sent.elapsed()
    );
    assert!(TcpStream::connect(addr).is_err(), "nothing listens after the stop");
}
