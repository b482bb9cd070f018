//! TTL checks run on real timers. Where time is the subject the tests run on
//! tokio's paused clock and use the state hooks only (the clock jumps to the
//! next timer whenever the runtime is idle, which would also cut HTTP round
//! trips short); one test goes through HTTP with a short TTL and waits on a
//! blocking query, the condition a client would wait on.

mod support;

use std::time::Duration;

use lb_consul_emulator::Emulator;
use serde_json::json;
use support::{get, put, register};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn ttl_lapses_exactly_after_the_ttl() {
    let emu = Emulator::start().await;
    emu.register(
        "agent-a",
        json!({"Name": "api", "Check": {"TTL": "15s", "Status": "passing"}}),
    )
    .unwrap();
    let before = emu.check("agent-a", "service:api").unwrap();
    assert_eq!(before.status, "passing");
    let started = Instant::now();
    let idx = emu.index();

    // The next write is the lapse; the paused clock advances to it.
    let after_idx = emu.wait_for_index(idx).await;
    assert_eq!(started.elapsed(), Duration::from_secs(15));
    let after = emu.check("agent-a", "service:api").unwrap();
    assert_eq!(
        (after.status.as_str(), after.output.as_str()),
        ("critical", "TTL expired")
    );
    assert_eq!(after.modify_index, after_idx, "the lapse is a write with its own index");
    assert_eq!(emu.service_index("api"), after_idx);
}

#[tokio::test(start_paused = true)]
async fn reports_restart_the_timer() {
    let emu = Emulator::start().await;
    emu.register("agent-a", json!({"Name": "api", "Check": {"TTL": "10s"}}))
        .unwrap();
    assert_eq!(
        emu.check("agent-a", "service:api").unwrap().status,
        "critical",
        "starts critical"
    );
    let started = Instant::now();
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(8)).await;
        emu.update_ttl("agent-a", "service:api", "passing", "beat").unwrap();
        assert_eq!(emu.check("agent-a", "service:api").unwrap().status, "passing");
    }
    let idx = emu.index();
    emu.wait_for_index(idx).await;
    assert_eq!(started.elapsed(), Duration::from_secs(50));
    let c = emu.check("agent-a", "service:api").unwrap();
    assert_eq!(c.status, "critical");
    assert_eq!(c.output, "TTL expired (last output before timeout follows): beat");
}

#[tokio::test(start_paused = true)]
async fn deregistered_or_replaced_checks_never_lapse() {
    let emu = Emulator::start().await;
    emu.register(
        "agent-a",
        json!({"ID": "gone", "Name": "api", "Check": {"TTL": "5s", "Status": "passing"}}),
    )
    .unwrap();
    emu.register(
        "agent-a",
        json!({"ID": "swapped", "Name": "api", "Check": {"TTL": "5s", "Status": "passing"}}),
    )
    .unwrap();
    emu.register(
        "agent-a",
        json!({"ID": "kept", "Name": "api", "Check": {"TTL": "20s", "Status": "passing"}}),
    )
    .unwrap();
    assert!(emu.deregister("agent-a", "gone"));
    // The same check ID turned into an HTTP check: its TTL timer stops.
    emu.register(
        "agent-a",
        json!({"ID": "swapped", "Name": "api", "Check": {"HTTP": "http://127.0.0.1:1/", "Interval": "10s"}}),
    )
    .unwrap();
    let started = Instant::now();
    let idx = emu.index();
    emu.wait_for_index(idx).await;
    // The first write after that is the 20s lapse of "kept", not anything at 5s.
    assert_eq!(started.elapsed(), Duration::from_secs(20));
    assert_eq!(emu.check("agent-a", "service:kept").unwrap().status, "critical");
    assert_eq!(
        emu.check("agent-a", "service:swapped").unwrap().status,
        "passing",
        "status carried over"
    );
}

#[tokio::test(start_paused = true)]
async fn a_ttl_lapses_once() {
    let emu = Emulator::start().await;
    emu.register("agent-a", json!({"Name": "api", "Check": {"TTL": "5s"}}))
        .unwrap();
    let idx = emu.index();
    let lapsed = emu.wait_for_index(idx).await;
    // The timer is one-shot: no further write until someone reports.
    let more = tokio::time::timeout(Duration::from_secs(3600), emu.wait_for_index(lapsed)).await;
    assert!(more.is_err(), "nothing is written after the lapse");
    // A report that changes nothing is no write either, but it re-arms the timer.
    emu.update_ttl("agent-a", "service:api", "critical", "TTL expired")
        .unwrap();
    assert_eq!(emu.index(), lapsed);
    emu.wait_for_index(lapsed).await;
    let c = emu.check("agent-a", "service:api").unwrap();
    assert_eq!(
        c.output,
        "TTL expired (last output before timeout follows): TTL expired"
    );
}

#[tokio::test]
async fn lapse_seen_through_http() {
    let emu = Emulator::start().await;
    register(
        &emu,
        json!({"ID": "api-1", "Name": "api", "Port": 80, "Check": {"TTL": "300ms", "Status": "passing"}}),
    )
    .await;
    let first = get(&emu, "/v1/health/service/api?passing").await;
    assert_eq!(first.ids(), ["api-1"]);
    // A passing report keeps it alive; then nobody reports and it lapses,
    // which wakes the blocking query.
    assert_eq!(put(&emu, "/v1/agent/check/pass/service:api-1", "").await.status, 200);
    let idx = get(&emu, "/v1/health/service/api").await.index();
    let woke = get(&emu, &format!("/v1/health/service/api?index={idx}&wait=20s")).await;
    assert!(woke.index() > idx);
    let entry = &woke.json()[0];
    let check = entry["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == "service:api-1")
        .unwrap()
        .clone();
    assert_eq!(check["Status"], "critical");
    assert_eq!(check["Output"], "TTL expired");
    assert!(get(&emu, "/v1/health/service/api?passing").await.ids().is_empty());
}
