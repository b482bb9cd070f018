//! Fault injection, the request log, and "Consul down" (stop/resume).

mod support;

use std::time::Duration;

use lb_consul_emulator::{Emulator, Fault};
use serde_json::json;
use support::{enc, get, get_h, register, try_request};

#[tokio::test]
async fn status_faults_hit_exactly_the_next_n_requests() {
    let emu = Emulator::start().await;
    emu.fail_next(2, Fault::Status(500, "rpc error making call: EOF".into()));
    emu.fail_next(1, Fault::Status(429, "rate limit exceeded".into()));
    emu.fail_next(1, Fault::Status(503, String::new()));
    let seen: Vec<(u16, String)> = {
        let mut v = Vec::new();
        for path in [
            "/v1/health/service/api",
            "/v1/status/leader",
            "/v1/catalog/services",
            "/v1/kv/x",
            "/v1/health/service/api",
        ] {
            let r = get(&emu, path).await;
            v.push((r.status, r.body));
        }
        v
    };
    assert_eq!(
        seen,
        [
            (500, "rpc error making call: EOF".to_owned()),
            (500, "rpc error making call: EOF".to_owned()),
            (429, "rate limit exceeded".to_owned()),
            (503, String::new()),
            (200, "[]".to_owned()),
        ]
    );
}

#[tokio::test]
async fn drop_closes_the_connection_without_an_answer() {
    let emu = Emulator::start().await;
    emu.fail_next(1, Fault::Drop);
    let err = try_request(emu.addr(), "GET", "/v1/health/service/api", &[], "")
        .await
        .unwrap_err();
    assert!(err.starts_with("send: "), "{err}");
    assert_eq!(get(&emu, "/v1/health/service/api").await.status, 200);
}

#[tokio::test]
async fn stall_answers_nothing_for_that_long() {
    let emu = Emulator::start().await;
    emu.fail_next(1, Fault::Stall(Duration::from_secs(3600)));
    let stalled = tokio::time::timeout(
        Duration::from_millis(300),
        try_request(emu.addr(), "GET", "/v1/health/service/api", &[], ""),
    )
    .await;
    assert!(stalled.is_err(), "the client timed out first");
    // A short stall ends with a normal answer.
    emu.fail_next(1, Fault::Stall(Duration::from_millis(100)));
    let started = std::time::Instant::now();
    assert_eq!(get(&emu, "/v1/health/service/api").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn index_header_faults() {
    let emu = Emulator::start().await;
    register(&emu, json!({"Name": "api"})).await;
    emu.fail_next(1, Fault::IndexZero);
    emu.fail_next(1, Fault::NoIndex);
    let zero = get(&emu, "/v1/health/service/api").await;
    assert_eq!((zero.status, zero.header("x-consul-index")), (200, Some("0")));
    assert_eq!(zero.ids(), ["api"]);
    let none = get(&emu, "/v1/health/service/api").await;
    assert_eq!(none.status, 200);
    assert!(none.header("x-consul-index").is_none());
    assert_eq!(
        none.header("x-consul-knownleader"),
        Some("true"),
        "only the index is missing"
    );
    assert!(get(&emu, "/v1/health/service/api").await.index() > 1);
}

#[tokio::test]
async fn the_request_log() {
    let emu = Emulator::start().await;
    let filter = r#""lb" in Service.Tags and Service.Meta.env == "prod""#;
    let path = format!(
        "/v1/health/service/api?passing&tag=lb&tag=v%202&filter={}&index=12&wait=1s",
        enc(filter)
    );
    get_h(&emu, &path, &[("X-Consul-Token", "s3cr3t"), ("User-Agent", "lb-test")]).await;
    let log = emu.requests();
    assert_eq!(log.len(), 1);
    let req = &log[0];
    assert_eq!(req.method, "GET");
    assert_eq!(req.path, "/v1/health/service/api");
    assert!(req.has_query("passing"));
    assert_eq!(req.query_value("passing"), Some(""));
    assert_eq!(req.query_values("tag"), ["lb", "v 2"]);
    assert_eq!(req.query_value("filter"), Some(filter));
    assert!(
        req.raw_query.contains("filter=%22lb%22%20in%20Service.Tags"),
        "{}",
        req.raw_query
    );
    assert_eq!(req.query_value("index"), Some("12"));
    assert_eq!(req.query_value("wait"), Some("1s"));
    assert_eq!(req.header("X-Consul-Token"), Some("s3cr3t"));
    assert!(
        req.headers.iter().any(|(k, v)| k == "user-agent" && v == "lb-test"),
        "names are lowercased"
    );

    // Faulted requests are logged too; the log can be cleared.
    emu.fail_next(1, Fault::Status(500, String::new()));
    get(&emu, "/v1/catalog/services").await;
    assert_eq!(emu.requests().len(), 2);
    emu.clear_requests();
    assert!(emu.requests().is_empty());
}

#[tokio::test]
async fn stop_refuses_and_closes_parked_queries_resume_keeps_state() {
    let emu = Emulator::start().await;
    register(&emu, json!({"Name": "api", "Port": 80})).await;
    let idx = get(&emu, "/v1/health/service/api").await.index();
    let addr = emu.addr();
    let path = format!("/v1/health/service/api?index={idx}&wait=10m");
    let parked = tokio::spawn(async move { try_request(addr, "GET", &path, &[], "").await });
    tokio::time::timeout(support::DEADLINE, emu.wait_parked(1))
        .await
        .unwrap();

    emu.stop().await;
    assert!(!emu.is_running().await);
    let cut = tokio::time::timeout(support::DEADLINE, parked).await.unwrap().unwrap();
    assert!(cut.is_err(), "the parked query's connection was closed: {cut:?}");
    assert_eq!(emu.parked(), 0);
    let refused = try_request(addr, "GET", "/v1/status/leader", &[], "")
        .await
        .unwrap_err();
    assert!(refused.starts_with("connect: "), "{refused}");

    // Hooks keep working while down.
    emu.register("agent-a", json!({"Name": "api", "ID": "api-2"})).unwrap();

    emu.resume().await;
    assert!(emu.is_running().await);
    assert_eq!(emu.addr(), addr);
    let back = get(&emu, "/v1/health/service/api").await;
    assert_eq!(back.ids(), ["api", "api-2"]);
    assert!(back.index() > idx);
    // Stopping and resuming again works; resume while running is a no-op.
    emu.resume().await;
    emu.stop().await;
    emu.stop().await;
    emu.resume().await;
    assert_eq!(get(&emu, "/v1/status/leader").await.status, 200);
}
