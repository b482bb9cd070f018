//! Blocking queries: parking, waking on relevant writes only, timing out with
//! the same index, indexes that never move backwards on deletes, spurious
//! wake-ups, snapshot restores, and parked queries whose client goes away.

mod support;

use std::time::{Duration, Instant};

use lb_consul_emulator::{Emulator, Options};
use serde_json::json;
use support::{get, put, register, try_request};

/// Starts a blocking GET in the background once the emulator is ready for it,
/// and returns once it is parked.
async fn park(emu: &Emulator, path: String) -> tokio::task::JoinHandle<support::Resp> {
    let before = emu.parked();
    let client = emu.clone();
    let task = tokio::spawn(async move { get(&client, &path).await });
    tokio::time::timeout(support::DEADLINE, emu.wait_parked(before + 1))
        .await
        .expect("the query never parked");
    task
}

#[tokio::test]
async fn index_zero_or_absent_answers_at_once() {
    let emu = Emulator::start().await;
    let started = Instant::now();
    get(&emu, "/v1/health/service/api?index=0&wait=5m").await;
    get(&emu, "/v1/health/service/api?wait=5m").await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(emu.parked(), 0);
}

#[tokio::test]
async fn wakes_on_change_and_times_out_with_the_same_index() {
    let emu = Emulator::start().await;
    register(&emu, json!({"ID": "api-1", "Name": "api", "Port": 80})).await;
    let first = get(&emu, "/v1/health/service/api").await;
    let idx = first.index();

    // Nothing changes: the wait ends with the same index and data.
    let started = Instant::now();
    let timed_out = get(&emu, &format!("/v1/health/service/api?index={idx}&wait=200ms")).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(timed_out.index(), idx);
    assert_eq!(timed_out.body, first.body);

    // A second instance wakes the parked query.
    let parked = park(&emu, format!("/v1/health/service/api?index={idx}&wait=30s")).await;
    register(&emu, json!({"ID": "api-2", "Name": "api", "Port": 81})).await;
    let woke = parked.await.unwrap();
    assert!(woke.index() > idx);
    assert_eq!(woke.ids(), ["api-1", "api-2"]);
    assert_eq!(emu.parked(), 0);
}

#[tokio::test]
async fn only_relevant_writes_wake() {
    let emu = Emulator::start().await;
    register(
        &emu,
        json!({"Name": "api", "Check": {"TTL": "1h", "Status": "passing"}}),
    )
    .await;
    let idx = get(&emu, "/v1/health/service/api").await.index();
    let parked = park(&emu, format!("/v1/health/service/api?index={idx}&wait=300ms")).await;
    // Another service changes: the query stays parked and times out unchanged.
    register(&emu, json!({"Name": "web"})).await;
    emu.register("agent-a", json!({"Name": "db", "Check": {"TTL": "1h"}}))
        .unwrap();
    assert_eq!(parked.await.unwrap().index(), idx);

    // Its own check changing wakes it; an identical TTL report does not change the index.
    let parked = park(&emu, format!("/v1/health/service/api?index={idx}&wait=30s")).await;
    assert_eq!(
        put(&emu, "/v1/agent/check/warn/service:api?note=slow", "").await.status,
        200
    );
    let woke = parked.await.unwrap();
    assert!(woke.index() > idx);
    let entry = &woke.json()[0];
    let check = entry["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == "service:api")
        .unwrap()
        .clone();
    assert_eq!(
        (check["Status"].as_str(), check["Output"].as_str()),
        (Some("warning"), Some("slow"))
    );
    let again = woke.index();
    assert_eq!(
        put(&emu, "/v1/agent/check/warn/service:api?note=slow", "").await.status,
        200
    );
    assert_eq!(get(&emu, "/v1/health/service/api").await.index(), again);

    // A node failure touches every instance on the node.
    let parked = park(&emu, format!("/v1/health/service/api?index={again}&wait=30s")).await;
    emu.set_node_health("agent-a", "critical");
    assert!(parked.await.unwrap().index() > again);
}

#[tokio::test]
async fn deletes_never_move_the_index_backwards() {
    let emu = Emulator::start().await;
    register(&emu, json!({"ID": "old", "Name": "api"})).await;
    register(&emu, json!({"ID": "new", "Name": "api", "Check": {"TTL": "1h"}})).await;
    let with_both = get(&emu, "/v1/health/service/api").await.index();

    // Removing the newest instance: the index still goes up (tombstone).
    let parked = park(&emu, format!("/v1/health/service/api?index={with_both}&wait=30s")).await;
    assert_eq!(put(&emu, "/v1/agent/service/deregister/new", "").await.status, 200);
    let after = parked.await.unwrap();
    assert!(after.index() > with_both, "{} <= {with_both}", after.index());
    assert_eq!(after.ids(), ["old"]);

    // Removing the last one: the name is unknown now, its index is the
    // services table's, which the delete advanced too.
    let parked = park(&emu, format!("/v1/health/service/api?index={}&wait=30s", after.index())).await;
    assert_eq!(put(&emu, "/v1/agent/service/deregister/old", "").await.status, 200);
    let gone = parked.await.unwrap();
    assert!(gone.index() > after.index());
    assert_eq!(gone.body, "[]");
    assert_eq!(gone.index(), emu.index());

    // Removing a check (maintenance off) also moves its service's index.
    register(&emu, json!({"ID": "m", "Name": "maint"})).await;
    assert_eq!(
        put(&emu, "/v1/agent/service/maintenance/m?enable=true", "")
            .await
            .status,
        200
    );
    let on = get(&emu, "/v1/health/service/maint").await.index();
    assert_eq!(
        put(&emu, "/v1/agent/service/maintenance/m?enable=false", "")
            .await
            .status,
        200
    );
    assert!(get(&emu, "/v1/health/service/maint").await.index() > on);
}

#[tokio::test]
async fn an_unknown_service_wakes_when_it_appears() {
    let emu = Emulator::start().await;
    let idx = get(&emu, "/v1/health/service/later").await.index();
    let parked = park(&emu, format!("/v1/health/service/later?index={idx}&wait=30s")).await;
    register(&emu, json!({"Name": "later", "Port": 9})).await;
    let woke = parked.await.unwrap();
    assert_eq!(woke.ids(), ["later"]);
}

#[tokio::test]
async fn spurious_wakeup_same_data_higher_index() {
    let emu = Emulator::start().await;
    register(&emu, json!({"Name": "api", "Port": 80})).await;
    let first = get(&emu, "/v1/health/service/api").await;
    let catalog = get(&emu, "/v1/catalog/services").await;
    let parked = park(&emu, format!("/v1/health/service/api?index={}&wait=30s", first.index())).await;
    let parked_catalog = park(&emu, format!("/v1/catalog/services?index={}&wait=30s", catalog.index())).await;
    emu.spurious_wakeup();
    let woke = parked.await.unwrap();
    assert!(woke.index() > first.index());
    assert_eq!(woke.body, first.body, "the data is unchanged");
    let woke_catalog = parked_catalog.await.unwrap();
    assert!(woke_catalog.index() > catalog.index());
    assert_eq!(woke_catalog.body, catalog.body);
}

#[tokio::test]
async fn snapshot_restore_moves_the_index_backwards() {
    let emu = Emulator::start_with(Options {
        start_index: 100,
        ..Options::default()
    })
    .await;
    register(&emu, json!({"Name": "api"})).await;
    let before = get(&emu, "/v1/health/service/api").await.index();
    assert!(before > 100);

    // A query parked across the restore answers at once with the lower index.
    let parked = park(&emu, format!("/v1/health/service/api?index={before}&wait=30s")).await;
    emu.rewind_index(50);
    let restored = parked.await.unwrap();
    assert_eq!(restored.index(), 50);
    assert_eq!(restored.ids(), ["api"]);
    assert_eq!(emu.index(), 50);

    // A query asking for the old, higher index waits its full time and gets the lower one back.
    let started = Instant::now();
    let late = get(&emu, &format!("/v1/health/service/api?index={before}&wait=200ms")).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(late.index(), 50);

    // Writes continue from the restored index.
    register(&emu, json!({"Name": "api", "Port": 1})).await;
    assert_eq!(get(&emu, "/v1/health/service/api").await.index(), 51);
}

#[tokio::test]
async fn a_client_going_away_ends_its_parked_query() {
    let emu = Emulator::start().await;
    let idx = get(&emu, "/v1/health/service/api").await.index();
    let path = format!("/v1/health/service/api?index={idx}&wait=10m");
    let addr = emu.addr();
    let client = tokio::spawn(async move { try_request(addr, "GET", &path, &[], "").await });
    tokio::time::timeout(support::DEADLINE, emu.wait_parked(1))
        .await
        .expect("the query never parked");
    client.abort();
    let _ = client.await;
    // The connection closed; the emulator notices and drops the query.
    tokio::time::timeout(support::DEADLINE, emu.wait_parked_at_most(0))
        .await
        .expect("the query stayed parked");
}

#[tokio::test]
async fn catalog_services_blocks_on_the_services_table() {
    let emu = Emulator::start().await;
    register(&emu, json!({"Name": "api", "Tags": ["v1"], "Check": {"TTL": "1h"}})).await;
    let idx = get(&emu, "/v1/catalog/services").await.index();
    // A check change is not a services-table change.
    let parked = park(&emu, format!("/v1/catalog/services?index={idx}&wait=300ms")).await;
    assert_eq!(put(&emu, "/v1/agent/check/pass/service:api", "").await.status, 200);
    assert_eq!(parked.await.unwrap().index(), idx);
    // A new tag is.
    let parked = park(&emu, format!("/v1/catalog/services?index={idx}&wait=30s")).await;
    register(
        &emu,
        json!({"Name": "api", "Tags": ["v1", "v2"], "Check": {"TTL": "1h"}}),
    )
    .await;
    let woke = parked.await.unwrap();
    assert!(woke.index() > idx);
    assert_eq!(woke.json(), json!({"api": ["v1", "v2"]}));
}

#[tokio::test]
async fn jitter_stays_within_a_sixteenth() {
    let emu = Emulator::start_with(Options {
        jitter: true,
        ..Options::default()
    })
    .await;
    let idx = get(&emu, "/v1/health/service/api").await.index();
    for _ in 0..3 {
        let started = Instant::now();
        let r = get(&emu, &format!("/v1/health/service/api?index={idx}&wait=320ms")).await;
        let took = started.elapsed();
        assert_eq!(r.index(), idx);
        assert!(took >= Duration::from_millis(320), "{took:?}");
        // 320ms + up to 20ms of jitter, plus scheduling slack.
        assert!(took < Duration::from_millis(340) + Duration::from_secs(1), "{took:?}");
    }
}
