//! The running binary: SIGHUP reloads the config, SIGTERM stops it gracefully.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

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

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_reloads_and_sigterm_stops() {
    let dir_a = std::env::temp_dir().join(format!("lb-signals-{}-a", std::process::id()));
    let dir_b = std::env::temp_dir().join(format!("lb-signals-{}-b", std::process::id()));
    std::fs::create_dir_all(&dir_a).expect("dir");
    std::fs::create_dir_all(&dir_b).expect("dir");
    let cfg: PathBuf = dir_a.join("lb.toml");
    let (listen, admin) = (free_port(), free_port());
    let web = backend("web");
    std::fs::write(&cfg, config(listen, admin, web, "/old")).expect("write config");
    // A second name for the same file, in another directory: writes through it do not
    // show in the proxy's watch of the first directory, so only SIGHUP can reload.
    let alias = dir_b.join("lb.toml");
    let _ = std::fs::remove_file(&alias);
    std::fs::hard_link(&cfg, &alias).expect("hard link");

    let mut child = Command::new(env!("CARGO_BIN_EXE_lb-proxy"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start lb-proxy");
    let addr: SocketAddr = format!("127.0.0.1:{listen}").parse().expect("addr");
    wait_for("the proxy to serve /old", || {
        get(addr, "/old").is_some_and(|(s, _)| s == 200)
    });
    assert_eq!(get(addr, "/new").map(|r| r.0), Some(404));

    // Rewrite in place through the other name: no file event reaches the proxy.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&alias)
        .and_then(|mut f| f.write_all(config(listen, admin, web, "/new").as_bytes()))
        .expect("rewrite config");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(get(addr, "/new").map(|r| r.0), Some(404), "no reload without a signal");

    signal(&child, "HUP");
    wait_for("SIGHUP to apply the new routes", || {
        get(addr, "/new").is_some_and(|(s, _)| s == 200)
    });
    assert_eq!(get(addr, "/old").map(|r| r.0), Some(404), "the old route is gone");

    signal(&child, "TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "lb-proxy did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    assert!(get(addr, "/new").is_none(), "nothing listens after the stop");
}
