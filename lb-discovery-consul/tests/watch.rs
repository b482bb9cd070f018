//! lb-discovery-consul against the Consul emulator: sets, health, weights, addresses,
//! index rules, faults, catalog mode and registration.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use lb_consul_emulator::{Emulator, Fault};
use lb_core::discover::Update;
use lb_core::Endpoint;
use lb_discovery_consul::{ConsulCatalog, ConsulService, Registration, Status};
use lb_test_support::eventually;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(10);

/// A watch with short waits and backoffs, for tests.
fn watch(emu: &Emulator, service: &str) -> ConsulService {
    ConsulService::new(service)
        .address(emu.url())
        .wait(Duration::from_secs(5))
        .min_interval(Duration::from_millis(10))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
}

fn register(emu: &Emulator, node: &str, body: serde_json::Value) {
    emu.register(node, body).expect("registration accepted");
}

/// Registers `id` of `api` on `node` with one check of the given status.
fn instance(emu: &Emulator, node: &str, id: &str, address: &str, status: &str) {
    register(
        emu,
        node,
        json!({"ID": id, "Name": "api", "Address": address, "Port": 8080,
               "Check": {"CheckID": format!("{id}-check"), "TTL": "1h", "Status": status}}),
    );
}

/// The next `Reset`, within [`LIMIT`].
async fn next_set<S: Stream<Item = Result<Update, std::convert::Infallible>> + Unpin>(s: &mut S) -> Vec<Endpoint> {
    match tokio::time::timeout(LIMIT, s.next()).await {
        Ok(Some(Ok(Update::Reset(set)))) => set,
        other => panic!("expected a Reset within {LIMIT:?}, got {other:?}"),
    }
}

fn ids(set: &[Endpoint]) -> Vec<String> {
    set.iter().map(|e| e.id().to_string()).collect()
}

#[tokio::test]
async fn instances_follow_health_within_one_round_trip() {
    let emu = Emulator::start().await;
    emu.add_node("node-b", "127.0.0.2");
    emu.add_node("node-c", "127.0.0.3");
    instance(&emu, "agent-a", "api-1", "10.0.0.1", "passing");
    instance(&emu, "node-b", "api-2", "10.0.0.2", "passing");
    instance(&emu, "node-c", "api-3", "10.0.0.3", "passing");
    let api = watch(&emu, "api").spawn().unwrap();
    let mut updates = api.updates();
    let set = next_set(&mut updates).await;
    assert_eq!(ids(&set), ["agent-a/api-1", "node-b/api-2", "node-c/api-3"]);
    assert_eq!(set[1].addr(), "10.0.0.2:8080".parse().unwrap());

    // Parked on the blocking query: a status change answers it.
    emu.wait_parked(1).await;
    let before = emu.requests().len();
    assert!(emu.set_check("node-b", "api-2-check", "critical", "down"));
    assert_eq!(ids(&next_set(&mut updates).await), ["agent-a/api-1", "node-c/api-3"]);
    assert_eq!(
        emu.requests().len(),
        before,
        "applied from the answer to the request already parked: one round trip"
    );
    emu.wait_parked(1).await;
    assert!(emu.set_check("node-b", "api-2-check", "passing", ""));
    assert_eq!(next_set(&mut updates).await.len(), 3);

    // What the requests carried: ?passing, then index and wait, the client's own rules.
    let reqs = emu.requests();
    assert!(reqs.iter().all(|r| r.has_query("passing")));
    let blocking: Vec<_> = reqs.iter().filter(|r| r.query_value("index").is_some()).collect();
    assert!(!blocking.is_empty());
    for r in blocking {
        assert_ne!(r.query_value("index"), Some("0"), "never blocks on index 0");
        assert_eq!(r.query_value("wait"), Some("5000ms"));
    }
}

#[tokio::test]
async fn weights_warning_instances_and_the_node_address() {
    let emu = Emulator::start().await;
    emu.add_node("node-b", "10.9.9.9");
    register(
        &emu,
        "agent-a",
        json!({"ID": "w", "Name": "api", "Address": "10.0.0.1", "Port": 80,
               "Weights": {"Passing": 5, "Warning": 2},
               "Check": {"CheckID": "w-check", "TTL": "1h", "Status": "passing"}}),
    );
    // No Service.Address: the node's address is dialled.
    register(
        &emu,
        "node-b",
        json!({"ID": "n", "Name": "api", "Port": 81,
               "Check": {"CheckID": "n-check", "TTL": "1h", "Status": "passing"}}),
    );
    let api = watch(&emu, "api")
        .statuses([Status::Passing, Status::Warning])
        .spawn()
        .unwrap();
    let mut updates = api.updates();
    let set = next_set(&mut updates).await;
    let by_id: BTreeMap<String, &Endpoint> = set.iter().map(|e| (e.id().to_string(), e)).collect();
    assert_eq!(by_id["agent-a/w"].weight(), 5);
    assert_eq!(by_id["node-b/n"].addr(), "10.9.9.9:81".parse().unwrap());
    assert_eq!(by_id["node-b/n"].weight(), 1, "no weights: 1");
    emu.wait_parked(1).await;
    emu.set_check("agent-a", "w-check", "warning", "slow");
    let set = next_set(&mut updates).await;
    let w = set.iter().find(|e| e.id().as_str() == "agent-a/w").unwrap();
    assert_eq!(w.weight(), 2, "a warning instance gets Weights.Warning");
    assert_eq!(w.metadata()["consul.status"], "warning");
    // Critical: out, even with warning accepted.
    emu.wait_parked(1).await;
    emu.set_check("agent-a", "w-check", "critical", "down");
    assert_eq!(ids(&next_set(&mut updates).await), ["node-b/n"]);
}

#[tokio::test]
async fn an_index_rewind_resets_the_client_which_recovers() {
    let emu = Emulator::start().await;
    instance(&emu, "agent-a", "api-1", "10.0.0.1", "passing");
    let api = watch(&emu, "api").spawn().unwrap();
    let mut updates = api.updates();
    assert_eq!(next_set(&mut updates).await.len(), 1);
    emu.wait_parked(1).await;
    emu.clear_requests();
    // A snapshot restore: the index goes back; the parked query answers with it.
    emu.rewind_index(3);
    eventually("a plain read after the rewind", LIMIT, || {
        emu.requests()
            .iter()
            .any(|r| r.path.starts_with("/v1/health/service/") && r.query_value("index").is_none())
    })
    .await;
    assert!(api.status().index_resets >= 1, "{:?}", api.status());
    // And it follows changes again.
    emu.wait_parked(1).await;
    instance(&emu, "agent-a", "api-2", "10.0.0.2", "passing");
    assert_eq!(next_set(&mut updates).await.len(), 2);
}

#[tokio::test]
async fn a_missing_index_never_becomes_a_busy_loop() {
    let emu = Emulator::start().await;
    instance(&emu, "agent-a", "api-1", "10.0.0.1", "passing");
    // A server that sends no X-Consul-Index: every read is a plain read, so only the
    // token bucket stands between the client and a busy loop.
    emu.fail_next(1000, Fault::NoIndex);
    let api = ConsulService::new("api")
        .address(emu.url())
        .wait(Duration::from_secs(5))
        .min_interval(Duration::from_millis(200))
        .spawn()
        .unwrap();
    let mut updates = api.updates();
    let t0 = tokio::time::Instant::now();
    assert_eq!(
        next_set(&mut updates).await.len(),
        1,
        "the data is applied all the same"
    );
    eventually("six requests", LIMIT, || emu.requests().len() >= 6).await;
    let elapsed = t0.elapsed();
    // A burst of two, then one per 200 ms: six requests take at least 800 ms.
    assert!(
        elapsed >= Duration::from_millis(780),
        "6 requests in {elapsed:?}: not rate limited"
    );
    for r in emu.requests() {
        assert!(r.query_value("index").is_none(), "without an index, plain reads: {r:?}");
    }
    // An index of 0 from the server is treated the same way, never sent back as 0.
    let emu = Emulator::start().await;
    instance(&emu, "agent-a", "api-1", "10.0.0.1", "passing");
    emu.fail_next(5, Fault::IndexZero);
    let api = watch(&emu, "api").spawn().unwrap();
    let mut updates = api.updates();
    assert_eq!(next_set(&mut updates).await.len(), 1);
    eventually("requests past the faults", LIMIT, || emu.requests().len() >= 6).await;
    for r in emu.requests() {
        assert_ne!(r.query_value("index"), Some("0"), "{r:?}");
    }
}

#[tokio::test]
async fn spurious_wakeups_publish_nothing() {
    let emu = Emulator::start().await;
    instance(&emu, "agent-a", "api-1", "10.0.0.1", "passing");
    let api = watch(&emu, "api").spawn().unwrap();
    let mut updates = api.updates();
    assert_eq!(next_set(&mut updates).await.len(), 1);
    for _ in 0..5 {
        emu.wait_parked(1).await;
        let before = api.status().requests;
        emu.spurious_wakeup();
        eventually("the wake-up answered and asked again", LIMIT, || {
            api.status().requests > before
        })
        .await;
    }
    // The next item is the real change, not one of five identical sets.
    emu.wait_parked(1).await;
    instance(&emu, "agent-a", "api-2", "10.0.0.2", "passing");
    assert_eq!(next_set(&mut updates).await.len(), 2);
}

#[tokio::test]
async fn failures_keep_the_last_set_and_changes_apply_on_recovery() {
    let emu = Emulator::start().await;
    instance(&emu, "agent-a", "api-1", "10.0.0.1", "passing");
    instance(&emu, "agent-a", "api-2", "10.0.0.2", "passing");
    let api = watch(&emu, "api").spawn().unwrap();
    let mut updates = api.updates();
    assert_eq!(next_set(&mut updates).await.len(), 2);
    emu.wait_parked(1).await;

    // 500s and 429s: errors, counted, and the set stays.
    emu.fail_next(2, Fault::Status(500, "No cluster leader".into()));
    emu.fail_next(2, Fault::Status(429, "rate limit exceeded".into()));
    emu.spurious_wakeup();
    eventually("errors counted", LIMIT, || api.status().errors >= 2).await;
    assert_eq!(api.endpoints().map(|s| s.len()), Some(2), "the last set is kept");

    // Consul goes away; a change is made meanwhile; it comes back.
    emu.stop().await;
    eventually("failures in a row", LIMIT, || api.status().consecutive_failures >= 2).await;
    assert_eq!(api.endpoints().map(|s| s.len()), Some(2));
    assert!(emu.set_check("agent-a", "api-2-check", "critical", "down"));
    emu.resume().await;
    assert_eq!(ids(&next_set(&mut updates).await), ["agent-a/api-1"]);
    let st = api.status();
    assert_eq!(st.consecutive_failures, 0);
    assert!(st.last_success.is_some() && st.last_error.is_some());
}

#[tokio::test]
async fn an_empty_set_only_when_consul_says_so() {
    let emu = Emulator::start().await;
    instance(&emu, "agent-a", "api-1", "10.0.0.1", "passing");
    let api = watch(&emu, "api").spawn().unwrap();
    let mut updates = api.updates();
    assert_eq!(next_set(&mut updates).await.len(), 1);
    emu.wait_parked(1).await;
    emu.fail_next(3, Fault::Drop);
    emu.spurious_wakeup();
    eventually("dropped connections counted", LIMIT, || api.status().errors >= 3).await;
    assert_eq!(api.endpoints().map(|s| s.len()), Some(1));
    emu.wait_parked(1).await;
    assert!(emu.deregister("agent-a", "api-1"));
    assert!(next_set(&mut updates).await.is_empty(), "a 200 with [] empties the set");
}

#[tokio::test]
async fn the_token_travels_in_a_header_and_the_filter_is_encoded() {
    let emu = Emulator::start().await;
    register(
        &emu,
        "agent-a",
        json!({"ID": "p", "Name": "api", "Address": "10.0.0.1", "Port": 80, "Meta": {"env": "prod"},
               "Tags": ["v2"], "Check": {"CheckID": "p-check", "TTL": "1h", "Status": "passing"}}),
    );
    register(
        &emu,
        "agent-a",
        json!({"ID": "d", "Name": "api", "Address": "10.0.0.2", "Port": 80, "Meta": {"env": "dev"},
               "Tags": ["v2"], "Check": {"CheckID": "d-check", "TTL": "1h", "Status": "passing"}}),
    );
    let api = watch(&emu, "api")
        .token("s3cret")
        .tag("V2")
        .filter(r#"Service.Meta.env == "prod""#)
        .spawn()
        .unwrap();
    let mut updates = api.updates();
    let set = next_set(&mut updates).await;
    assert_eq!(ids(&set), ["agent-a/p"]);
    assert_eq!(set[0].metadata()["env"], "prod");
    let r = emu
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/health/service/api")
        .unwrap();
    assert_eq!(r.header("x-consul-token"), Some("s3cret"));
    assert!(!r.raw_query.contains("s3cret") && !r.has_query("token"));
    assert_eq!(r.query_value("filter"), Some(r#"Service.Meta.env == "prod""#));
    assert_eq!(r.query_values("tag"), ["V2"]);
}

#[tokio::test]
async fn catalog_mode_follows_tags() {
    let emu = Emulator::start().await;
    register(
        &emu,
        "agent-a",
        json!({"ID": "shop-1", "Name": "shop", "Address": "10.0.0.1", "Port": 80,
               "Tags": ["lb.enable=true", "lb.host=shop.example.com", "lb.balance=least_conn"],
               "Check": {"CheckID": "shop-1-check", "TTL": "1h", "Status": "passing"}}),
    );
    register(
        &emu,
        "agent-a",
        json!({"ID": "db-1", "Name": "db", "Address": "10.0.0.2", "Port": 5432,
               "Check": {"CheckID": "db-1-check", "TTL": "1h", "Status": "passing"}}),
    );
    let cat = ConsulCatalog::new().watch_settings(watch(&emu, "")).spawn().unwrap();
    let mut rx = cat.catalog();
    let synced = |rx: &tokio::sync::watch::Receiver<std::sync::Arc<lb_core::discover::catalog::Catalog>>| {
        let c = rx.borrow();
        c.synced && c.services.contains_key("shop")
    };
    tokio::time::timeout(LIMIT, rx.wait_for(|c| c.synced && c.services.contains_key("shop")))
        .await
        .expect("the catalog")
        .unwrap();
    assert!(synced(&rx));
    {
        let c = rx.borrow();
        assert_eq!(
            c.services.keys().collect::<Vec<_>>(),
            ["shop"],
            "untagged db is not selected"
        );
        let shop = &c.services["shop"];
        assert_eq!(shop.hints.hosts, ["shop.example.com"]);
        assert_eq!(shop.hints.balance.as_deref(), Some("least_conn"));
        assert_eq!(ids(&shop.endpoints), ["agent-a/shop-1"]);
    }
    // Every instance failing its check: no endpoint, but the route and policy stay (they
    // come from the catalog's tags, not from the instances that pass).
    emu.set_check("agent-a", "shop-1-check", "critical", "down");
    tokio::time::timeout(
        LIMIT,
        rx.wait_for(|c| c.services.get("shop").is_some_and(|s| s.endpoints.is_empty())),
    )
    .await
    .expect("shop without endpoints")
    .unwrap();
    assert_eq!(rx.borrow().services["shop"].hints.hosts, ["shop.example.com"]);
    assert_eq!(
        rx.borrow().services["shop"].hints.balance.as_deref(),
        Some("least_conn")
    );
    emu.set_check("agent-a", "shop-1-check", "passing", "");
    // A newly tagged service appears; when its tag goes, it goes.
    register(
        &emu,
        "agent-a",
        json!({"ID": "db-1", "Name": "db", "Address": "10.0.0.2", "Port": 5432, "Tags": ["lb.enable=true"],
               "Check": {"CheckID": "db-1-check", "TTL": "1h", "Status": "passing"}}),
    );
    tokio::time::timeout(LIMIT, rx.wait_for(|c| c.services.contains_key("db")))
        .await
        .expect("db appears")
        .unwrap();
    register(
        &emu,
        "agent-a",
        json!({"ID": "db-1", "Name": "db", "Address": "10.0.0.2", "Port": 5432,
               "Check": {"CheckID": "db-1-check", "TTL": "1h", "Status": "passing"}}),
    );
    tokio::time::timeout(LIMIT, rx.wait_for(|c| !c.services.contains_key("db")))
        .await
        .expect("db goes")
        .unwrap();
}

#[tokio::test]
async fn a_registration_is_kept_passing_and_deregistered() {
    let emu = Emulator::start().await;
    let me = Registration::new("api", "10.0.0.7:8080".parse().unwrap())
        .agent(emu.url())
        .id("api-7")
        .tag("v1")
        .ttl(Duration::from_secs(1))
        .register()
        .await
        .unwrap();
    let api = watch(&emu, "api").spawn().unwrap();
    let mut updates = api.updates();
    assert_eq!(ids(&next_set(&mut updates).await), ["agent-a/api-7"]);
    // Three TTLs later it is still passing: it was renewed.
    let renewals = || {
        emu.requests()
            .iter()
            .filter(|r| r.path == "/v1/agent/check/pass/api-7%3Attl")
            .count()
    };
    eventually("renewals", LIMIT, || renewals() >= 6).await;
    assert_eq!(api.endpoints().map(|s| s.len()), Some(1));
    me.deregister().await.unwrap();
    assert!(next_set(&mut updates).await.is_empty());
}
