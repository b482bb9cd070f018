//! The agent write endpoints: registration (defaults, check ID and name
//! rules, validation texts), deregistration, TTL reports, maintenance, and
//! the generic 404/405/OPTIONS behaviour, readiness endpoints.

mod support;

use lb_consul_emulator::Emulator;
use serde_json::{json, Value};
use support::{get, put, register, request};

fn checks_of(entry: &Value) -> Vec<Value> {
    let mut checks = entry["Checks"].as_array().unwrap().clone();
    checks.retain(|c| c["CheckID"] != "serfHealth");
    checks
}

#[tokio::test]
async fn registration_is_visible_at_once_with_an_empty_200() {
    let emu = Emulator::start().await;
    let before = emu.index();
    let r = put(
        &emu,
        "/v1/agent/service/register",
        &json!({"Name": "api", "Port": 80}).to_string(),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    assert!(emu.index() > before);
    let entries = get(&emu, "/v1/health/service/api").await.json();
    assert_eq!(entries[0]["Service"]["ID"], "api", "ID defaults to Name");
    assert_eq!(entries[0]["Service"]["Port"], 80);
}

#[tokio::test]
async fn check_ids_names_and_initial_status() {
    let emu = Emulator::start().await;
    register(&emu, json!({"ID": "one", "Name": "api", "Check": {"TTL": "1m"}})).await;
    register(
        &emu,
        json!({"ID": "many", "Name": "api", "Checks": [
            {"TTL": "1m", "Status": "passing"},
            {"HTTP": "http://127.0.0.1:1/health", "Interval": "5s", "Name": "web"},
            {"CheckID": "custom", "TCP": "127.0.0.1:1", "Interval": "5s", "Status": "warning"}
        ]}),
    )
    .await;
    let entries = get(&emu, "/v1/health/service/api").await.json();
    let many = checks_of(&entries[0]);
    let one = checks_of(&entries[1]);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["CheckID"], "service:one");
    assert_eq!(one[0]["Name"], "Service 'api' check");
    assert_eq!(
        one[0]["Status"], "critical",
        "a new check without Status starts critical"
    );
    let summary: Vec<(String, String, String, String)> = many
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_owned();
            (s("CheckID"), s("Name"), s("Status"), s("Type"))
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "custom".into(),
                "Service 'api' check".into(),
                "warning".into(),
                "tcp".into()
            ),
            (
                "service:many:1".into(),
                "Service 'api' check".into(),
                "passing".into(),
                "ttl".into()
            ),
            ("service:many:2".into(), "web".into(), "critical".into(), "http".into()),
        ]
    );
    // HTTP/TCP checks are not run: a test sets their outcome.
    assert!(emu.set_check("agent-a", "service:many:2", "passing", "HTTP GET: 200 OK"));
    assert!(!emu.set_check("agent-a", "service:many:2", "maintenance", ""));
    assert!(!emu.set_check("agent-a", "nope", "passing", ""));
    assert_eq!(
        emu.check("agent-a", "service:many:2").unwrap().output,
        "HTTP GET: 200 OK"
    );
}

#[tokio::test]
async fn reregistering_keeps_check_state_and_replaces_the_service() {
    let emu = Emulator::start().await;
    register(
        &emu,
        json!({"ID": "a", "Name": "api", "Tags": ["v1"], "Check": {"TTL": "1h"}}),
    )
    .await;
    assert_eq!(
        put(&emu, "/v1/agent/check/pass/service:a?note=fine", "").await.status,
        200
    );
    let idx = emu.index();
    // Identical: nothing changes, not even the index.
    register(
        &emu,
        json!({"ID": "a", "Name": "api", "Tags": ["v1"], "Check": {"TTL": "1h"}}),
    )
    .await;
    assert_eq!(emu.index(), idx);
    // Different tags: the service and its checks follow, status carried over.
    register(
        &emu,
        json!({"ID": "a", "Name": "api", "Tags": ["v2"], "Check": {"TTL": "1h"}}),
    )
    .await;
    let entry = get(&emu, "/v1/health/service/api").await.json()[0].clone();
    assert_eq!(entry["Service"]["Tags"], json!(["v2"]));
    let check = &checks_of(&entry)[0];
    assert_eq!(
        (check["Status"].as_str(), check["Output"].as_str()),
        (Some("passing"), Some("fine"))
    );
    assert_eq!(check["ServiceTags"], json!(["v2"]));

    // replace-existing-checks drops the checks not in the new body.
    register(
        &emu,
        json!({"ID": "b", "Name": "api", "Checks": [{"CheckID": "x", "TTL": "1h"}, {"CheckID": "y", "TTL": "1h"}]}),
    )
    .await;
    register(
        &emu,
        json!({"ID": "b", "Name": "api", "Check": {"CheckID": "x", "TTL": "1h"}}),
    )
    .await;
    assert!(emu.check("agent-a", "y").is_some(), "kept without the flag");
    let r = put(
        &emu,
        "/v1/agent/service/register?replace-existing-checks",
        &json!({"ID": "b", "Name": "api", "Check": {"CheckID": "x", "TTL": "1h"}}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(emu.check("agent-a", "y").is_none());
    assert!(emu.check("agent-a", "x").is_some());
}

#[tokio::test]
async fn registration_errors_have_consul_texts() {
    let emu = Emulator::start().await;
    let cases: &[(&str, &str)] = &[
        ("", "Request decode failed: EOF"),
        (r#"{"Name": 1}"#, "Request decode failed: json: cannot unmarshal number into Go struct field ServiceDefinition.Name of type string"),
        (r#"{"Port": 80}"#, "Missing service name"),
        (r#"{"Name": "api", "Address": "0.0.0.0"}"#, "Invalid service address"),
        (r#"{"Name": "api", "Weights": {"Passing": 0, "Warning": 1}}"#, "Invalid Weights: Passing must be greater than 0"),
        (r#"{"Name": "api", "Weights": {"Passing": 1, "Warning": -1}}"#, "Invalid Weights: Warning must be greater or equal than 0"),
        (
            r#"{"Name": "api", "Meta": {"consul-x": "1"}}"#,
            "Invalid Service Meta: Couldn't load metadata pair ('consul-x', '1'): Key prefix 'consul-' is reserved for internal use",
        ),
        (r#"{"Name": "api", "Check": {"HTTP": "http://x"}}"#, "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or GRPC checks"),
        (r#"{"Name": "api", "Check": {"TTL": "5s", "Interval": "5s"}}"#, "Invalid check: Interval and TTL cannot both be specified"),
        (r#"{"Name": "api", "Check": {"TTL": "5s", "Status": "up"}}"#, "Status for checks must 'passing', 'warning', 'critical'"),
    ];
    for (body, text) in cases {
        let r = put(&emu, "/v1/agent/service/register", body).await;
        assert_eq!((r.status, r.body.as_str()), (400, *text), "{body}");
    }
    let r = put(&emu, "/v1/agent/service/register", "{not json").await;
    assert_eq!(r.status, 400);
    assert!(r.body.starts_with("Request decode failed: "), "{}", r.body);
    // The hook answers with the same texts.
    assert_eq!(
        emu.register("agent-a", json!({"Port": 1})),
        Err("Missing service name".to_owned())
    );
    assert!(emu
        .register("nowhere", json!({"Name": "x"}))
        .unwrap_err()
        .contains("nowhere"));
}

#[tokio::test]
async fn deregistration() {
    let emu = Emulator::start().await;
    register(&emu, json!({"ID": "api-1", "Name": "api", "Check": {"TTL": "1h"}})).await;
    let r = put(&emu, "/v1/agent/service/deregister/api-1", "").await;
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    assert_eq!(get(&emu, "/v1/health/service/api").await.body, "[]");
    assert!(emu.check("agent-a", "service:api-1").is_none(), "its checks go too");
    let r = put(&emu, "/v1/agent/service/deregister/api-1", "").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        "Unknown service ID \"api-1\". Ensure that the service ID is passed, not the service name."
    );
    // The hook works on any node.
    emu.add_node("agent-b", "10.0.0.2");
    emu.register("agent-b", json!({"Name": "api"})).unwrap();
    assert!(emu.deregister("agent-b", "api"));
    assert!(!emu.deregister("agent-b", "api"));
}

#[tokio::test]
async fn ttl_reports() {
    let emu = Emulator::start().await;
    register(
        &emu,
        json!({"ID": "a", "Name": "api", "Checks": [{"CheckID": "ttl", "TTL": "1h"}, {"CheckID": "web", "HTTP": "http://x", "Interval": "10s"}]}),
    )
    .await;
    for (verb, status) in [("pass", "passing"), ("warn", "warning"), ("fail", "critical")] {
        let r = put(&emu, &format!("/v1/agent/check/{verb}/ttl?note=from-{verb}"), "").await;
        assert_eq!((r.status, r.body.as_str()), (200, ""), "{verb}");
        let c = emu.check("agent-a", "ttl").unwrap();
        assert_eq!((c.status.as_str(), c.output.clone()), (status, format!("from-{verb}")));
    }
    let r = put(
        &emu,
        "/v1/agent/check/update/ttl",
        r#"{"Status": "passing", "Output": "all good"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(emu.check("agent-a", "ttl").unwrap().output, "all good");

    let r = put(&emu, "/v1/agent/check/update/ttl", r#"{"Status": "fine"}"#).await;
    assert_eq!((r.status, r.body.as_str()), (400, "Invalid check status: 'fine'"));
    let r = put(&emu, "/v1/agent/check/pass/web", "").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (500, "CheckID \"web\" does not have associated TTL")
    );
    let r = put(&emu, "/v1/agent/check/pass/nope", "").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        "Unknown check ID \"nope\". Ensure that the check ID is passed, not the check name."
    );
    assert_eq!(
        emu.update_ttl("agent-a", "web", "passing", ""),
        Err("CheckID \"web\" does not have associated TTL".into())
    );
}

#[tokio::test]
async fn maintenance_adds_and_removes_a_critical_check() {
    let emu = Emulator::start().await;
    register(
        &emu,
        json!({"ID": "a", "Name": "api", "Tags": ["lb"], "Check": {"TTL": "1h", "Status": "passing"}}),
    )
    .await;
    assert_eq!(get(&emu, "/v1/health/service/api?passing").await.ids(), ["a"]);

    let r = put(&emu, "/v1/agent/service/maintenance/a?enable=true&reason=deploy", "").await;
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    assert!(get(&emu, "/v1/health/service/api?passing").await.ids().is_empty());
    let entry = get(&emu, "/v1/health/service/api").await.json()[0].clone();
    let maint = checks_of(&entry)
        .into_iter()
        .find(|c| c["CheckID"] == "_service_maintenance:a")
        .unwrap();
    assert_eq!(maint["Name"], "Service Maintenance Mode");
    assert_eq!(maint["Status"], "critical");
    assert_eq!(maint["Notes"], "deploy");
    assert_eq!(maint["ServiceTags"], json!(["lb"]));
    // Enabling twice changes nothing.
    let idx = emu.index();
    assert_eq!(
        put(&emu, "/v1/agent/service/maintenance/a?enable=true", "")
            .await
            .status,
        200
    );
    assert_eq!(emu.index(), idx);

    assert_eq!(
        put(&emu, "/v1/agent/service/maintenance/a?enable=false", "")
            .await
            .status,
        200
    );
    assert_eq!(get(&emu, "/v1/health/service/api?passing").await.ids(), ["a"]);

    assert!(emu.set_maintenance("agent-a", "a", true, ""));
    let notes = emu.check("agent-a", "_service_maintenance:a").unwrap();
    assert_eq!(notes.kind, "maintenance");

    let cases: &[(&str, u16, &str)] = &[
        ("/v1/agent/service/maintenance/a", 400, "Missing value for enable"),
        (
            "/v1/agent/service/maintenance/a?enable=sure",
            400,
            "Invalid value for enable: \"sure\"",
        ),
        ("/v1/agent/service/maintenance/?enable=true", 400, "Missing service ID"),
        (
            "/v1/agent/service/maintenance/zzz?enable=true",
            404,
            "Unknown service ID \"zzz\". Ensure that the service ID is passed, not the service name.",
        ),
    ];
    for (path, status, text) in cases {
        let r = put(&emu, path, "").await;
        assert_eq!((r.status, r.body.as_str()), (*status, *text), "{path}");
    }
}

#[tokio::test]
async fn unknown_paths_wrong_methods_and_options() {
    let emu = Emulator::start().await;
    let r = get(&emu, "/v1/kv/some/key").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (404, "Invalid URL path: not a recognized HTTP API endpoint\n")
    );
    let r = get(&emu, "/health").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n"
    );

    let r = get(&emu, "/v1/agent/service/register").await;
    assert_eq!((r.status, r.body.as_str()), (405, "method GET not allowed"));
    assert_eq!(r.header("allow"), Some("OPTIONS,PUT"));
    let r = request(&emu, "POST", "/v1/health/service/api", &[], "").await;
    assert_eq!((r.status, r.body.as_str()), (405, "method POST not allowed"));
    assert_eq!(r.header("allow"), Some("OPTIONS,GET"));
    let r = request(&emu, "DELETE", "/v1/agent/check/pass/x", &[], "").await;
    assert_eq!(r.status, 405);

    let r = request(&emu, "OPTIONS", "/v1/catalog/services", &[], "").await;
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    assert_eq!(r.header("allow"), Some("OPTIONS,GET"));
}

#[tokio::test]
async fn readiness_endpoints() {
    let emu = Emulator::start().await;
    let r = get(&emu, "/v1/status/leader").await;
    assert_eq!((r.status, r.body.as_str()), (200, "\"127.0.0.1:8300\""));
    let r = get(&emu, "/v1/agent/self").await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["Config"]["Datacenter"], "dc1");
    assert_eq!(body["Config"]["NodeName"], "agent-a");
    assert!(body["Config"]["Version"].is_string());
    assert!(body["Member"].is_object());
}
