//! A minimal HTTP/1 client over hyper's connection API (one connection per
//! request, as blocking queries would use anyway), with a deadline on every
//! call so that a misbehaving emulator fails a test instead of hanging it.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use lb_consul_emulator::Emulator;
use serde_json::Value;
use tokio::net::TcpStream;

/// Longest any single test request may take (blocking queries in tests use short waits).
pub const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("ASCII header"))
    }

    /// `X-Consul-Index`, which must be there.
    pub fn index(&self) -> u64 {
        self.header("x-consul-index")
            .unwrap_or_else(|| panic!("no X-Consul-Index in {self:?}"))
            .parse()
            .expect("numeric X-Consul-Index")
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The entries of a health answer, by `Service.ID`.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .json()
            .as_array()
            .expect("a JSON array")
            .iter()
            .map(|e| e["Service"]["ID"].as_str().expect("Service.ID").to_owned())
            .collect();
        ids.sort();
        ids
    }
}

/// One request on a fresh connection; `Err` for a transport failure (refused,
/// closed without an answer) as text.
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Resp, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a valid request");
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| format!("send: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Resp {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).expect("UTF-8 body"),
        })
    }
    .await;
    driver.abort();
    result
}

pub async fn request(emu: &Emulator, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    tokio::time::timeout(DEADLINE, try_request(emu.addr(), method, path, headers, body))
        .await
        .unwrap_or_else(|_| panic!("{method} {path} took longer than {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub async fn get(emu: &Emulator, path: &str) -> Resp {
    request(emu, "GET", path, &[], "").await
}

pub async fn get_h(emu: &Emulator, path: &str, headers: &[(&str, &str)]) -> Resp {
    request(emu, "GET", path, headers, "").await
}

pub async fn put(emu: &Emulator, path: &str, body: &str) -> Resp {
    request(emu, "PUT", path, &[], body).await
}

pub async fn put_h(emu: &Emulator, path: &str, body: &str, headers: &[(&str, &str)]) -> Resp {
    request(emu, "PUT", path, headers, body).await
}

/// Registers through the agent endpoint and insists on 200.
pub async fn register(emu: &Emulator, body: Value) {
    let r = put(emu, "/v1/agent/service/register", &body.to_string()).await;
    assert_eq!(r.status, 200, "register {body}: {}", r.body);
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
