//! The command line: `check`, exit codes, `--version`, and `run` failing on a port in use.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lb-proxy"))
}

fn temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lb-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

const GOOD: &str = r#"[server]
listen = ["127.0.0.1:8080"]
[admin]
listen = "127.0.0.1:9090"
[[services]]
name = "web"
balance = "round_robin"
hash_key = "header:x-user"
endpoints = [{ addr = "127.0.0.1:9001", weight = 3 }, { addr = "127.0.0.1:9002" }]
health = { path = "/healthz", interval = "2s", timeout = "1s", rise = 2, fall = 3 }
[[routes]]
host = "web.localhost"
path_prefix = "/"
service = "web"
"#;

#[test]
fn check_accepts_the_documented_example() {
    let p = temp("good.toml", GOOD);
    let out = bin().arg("check").arg(&p).output().expect("run lb-proxy");
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn check_names_file_line_column_and_key() {
    let p = temp("bad.toml", &GOOD.replace("\"round_robin\"", "\"round-robin\""));
    let out = bin().arg("check").arg(&p).output().expect("run lb-proxy");
    assert_eq!(out.status.code(), Some(2), "a bad config exits 2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:7:11"), "file:line:col in {err}");
    assert!(err.contains("services[0].balance"), "key in {err}");
}

#[test]
fn unknown_key_is_an_error() {
    let p = temp(
        "unknown.toml",
        &GOOD.replace("[admin]\n", "[admin]\nlisten_on = \"x\"\n"),
    );
    let out = bin().arg("check").arg(&p).output().expect("run lb-proxy");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown.toml:4:") && err.contains("listen_on"), "{err}");
}

#[test]
fn bad_arguments_exit_2_and_version_exits_0() {
    let out = bin().arg("frobnicate").output().expect("run lb-proxy");
    assert_eq!(out.status.code(), Some(2));
    let out = bin().arg("--version").output().expect("run lb-proxy");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("lb-proxy"));
}

#[test]
fn port_in_use_exits_1_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let text = format!(
        "[server]\nlisten = [\"{addr}\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[services]]\nname = \"web\"\nendpoints = [\"127.0.0.1:9\"]\n[[routes]]\nservice = \"web\"\n"
    );
    let p = temp("inuse.toml", &text);
    let out = bin().arg("run").arg("--config").arg(&p).output().expect("run lb-proxy");
    assert_eq!(out.status.code(), Some(1), "a runtime failure exits 1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr.to_string()), "the address is named: {err}");
    drop(taken);
}
