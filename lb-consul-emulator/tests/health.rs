//! `GET /v1/health/service/:name`: the response shape, the headers, and the
//! `passing` / `tag` / `filter` / `dc` / consistency parameters, with the
//! error texts Consul answers.

mod support;

use lb_consul_emulator::{Emulator, Options};
use serde_json::json;
use support::{enc, get, get_h, register};

#[tokio::test]
async fn entry_shape_follows_consul() {
    let emu = Emulator::start().await;
    register(
        &emu,
        json!({
            "ID": "api-1", "Name": "api", "Tags": ["lb", "v2"], "Port": 8080,
            "Meta": {"version": "2.3.1"}, "Weights": {"Passing": 5, "Warning": 1},
            "TaggedAddresses": {"lan": {"Address": "10.0.0.7", "Port": 8080}},
            "Check": {"TTL": "30s", "Status": "passing"}
        }),
    )
    .await;
    register(&emu, json!({"ID": "api-2", "Name": "api", "Address": "10.0.0.8"})).await;

    let r = get(&emu, "/v1/health/service/api").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    let entries = body.as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for e in entries {
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["Checks", "Node", "Service"], "exactly three members");
    }
    let first = &entries[0];
    let node = &first["Node"];
    assert_eq!(node["Node"], "agent-a");
    assert_eq!(node["Address"], "127.0.0.1");
    assert_eq!(node["Datacenter"], "dc1");
    assert_eq!(node["TaggedAddresses"]["lan"], "127.0.0.1");
    assert_eq!(node["ID"].as_str().unwrap().len(), 36, "a UUID");
    assert!(node["Meta"].is_object());

    let svc = &first["Service"];
    assert_eq!(svc["ID"], "api-1");
    assert_eq!(svc["Service"], "api");
    assert_eq!(svc["Tags"], json!(["lb", "v2"]));
    assert_eq!(svc["Address"], "");
    assert_eq!(svc["Port"], 8080);
    assert_eq!(svc["Meta"], json!({"version": "2.3.1"}));
    assert_eq!(svc["Weights"], json!({"Passing": 5, "Warning": 1}));
    assert_eq!(
        svc["TaggedAddresses"],
        json!({"lan": {"Address": "10.0.0.7", "Port": 8080}})
    );
    assert_eq!(svc["EnableTagOverride"], false);
    assert!(svc.get("Kind").is_none(), "Kind is omitted for ordinary services");
    assert!(svc["CreateIndex"].as_u64().unwrap() > 0);

    let checks = first["Checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2);
    let serf = checks
        .iter()
        .find(|c| c["CheckID"] == "serfHealth")
        .expect("serfHealth in every entry");
    assert_eq!(serf["Name"], "Serf Health Status");
    assert_eq!(serf["Status"], "passing");
    assert_eq!(serf["ServiceID"], "");
    assert_eq!(serf["ServiceTags"], json!([]));
    assert_eq!(serf["Type"], "");
    let ttl = checks.iter().find(|c| c["CheckID"] == "service:api-1").unwrap();
    assert_eq!(ttl["Name"], "Service 'api' check");
    assert_eq!(ttl["Type"], "ttl");
    assert_eq!(ttl["ServiceName"], "api");
    assert_eq!(ttl["ServiceTags"], json!(["lb", "v2"]));

    // The bare instance: no port (omitted, not 0), tags [] (not null), meta
    // null, default weights, the agent's default tagged addresses for an IP
    // address, serfHealth as its only check.
    let bare = &entries[1]["Service"];
    assert_eq!(bare["ID"], "api-2");
    assert!(bare.get("Port").is_none(), "Port is omitted when 0: {bare}");
    assert_eq!(bare["Tags"], json!([]));
    assert!(bare["Meta"].is_null());
    assert_eq!(bare["Weights"], json!({"Passing": 1, "Warning": 1}));
    assert_eq!(
        bare["TaggedAddresses"],
        json!({"lan_ipv4": {"Address": "10.0.0.8", "Port": 0}, "wan_ipv4": {"Address": "10.0.0.8", "Port": 0}})
    );
    assert_eq!(bare["Address"], "10.0.0.8");
    let bare_checks = entries[1]["Checks"].as_array().unwrap();
    assert_eq!(bare_checks.len(), 1);
    assert_eq!(bare_checks[0]["CheckID"], "serfHealth");
}

#[tokio::test]
async fn read_headers_and_unknown_service() {
    let emu = Emulator::start().await;
    let r = get(&emu, "/v1/health/service/nothing-here").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "[]");
    assert!(r.index() >= 1);
    assert_eq!(r.header("x-consul-knownleader"), Some("true"));
    assert_eq!(r.header("x-consul-lastcontact"), Some("0"));
    assert_eq!(r.header("x-consul-effective-consistency"), Some("leader"));
    assert_eq!(r.header("x-consul-query-backend"), Some("blocking-query"));
    assert_eq!(r.header("x-consul-default-acl-policy"), Some("allow"));
    assert!(r.header("x-consul-results-filtered-by-acls").is_none());

    assert_eq!(
        get(&emu, "/v1/health/service/x?stale")
            .await
            .header("x-consul-effective-consistency"),
        Some("stale")
    );
    assert_eq!(
        get(&emu, "/v1/health/service/x?consistent")
            .await
            .header("x-consul-effective-consistency"),
        Some("consistent")
    );
    assert_eq!(
        get(&emu, "/v1/health/service/x?leader")
            .await
            .header("x-consul-effective-consistency"),
        Some("leader")
    );
    assert_eq!(
        get(&emu, "/v1/health/service/x?cached").await.header("x-cache"),
        Some("MISS")
    );

    // The index of a name never registered is never 0, even from index 1.
    let low = Emulator::start_with(Options {
        start_index: 1,
        ..Options::default()
    })
    .await;
    assert_eq!(get(&low, "/v1/health/service/x").await.index(), 1);
}

#[tokio::test]
async fn passing_means_every_check_passing() {
    let emu = Emulator::start().await;
    emu.add_node("agent-b", "10.0.0.2");
    for (node, id) in [
        ("agent-a", "ok"),
        ("agent-a", "warn"),
        ("agent-a", "crit"),
        ("agent-b", "dead-node"),
    ] {
        emu.register(
            node,
            json!({"ID": id, "Name": "api", "Check": {"TTL": "1h", "Status": "passing"}}),
        )
        .unwrap();
    }
    emu.register("agent-a", json!({"ID": "nochecks", "Name": "api"}))
        .unwrap();
    assert!(emu.set_check("agent-a", "service:warn", "warning", "slow"));
    assert!(emu.set_check("agent-a", "service:crit", "critical", "down"));
    emu.set_node_health("agent-b", "critical");

    let all = get(&emu, "/v1/health/service/api").await.ids();
    assert_eq!(all, ["crit", "dead-node", "nochecks", "ok", "warn"]);
    for flag in ["passing", "passing=true", "passing=1", "passing=T"] {
        let ids = get(&emu, &format!("/v1/health/service/api?{flag}")).await.ids();
        assert_eq!(ids, ["nochecks", "ok"], "?{flag}: only the node check and passing ones");
    }
    assert_eq!(get(&emu, "/v1/health/service/api?passing=false").await.ids().len(), 5);

    let bad = get(&emu, "/v1/health/service/api?passing=yes").await;
    assert_eq!((bad.status, bad.body.as_str()), (400, "Invalid value for ?passing"));
}

#[tokio::test]
async fn tags_are_anded_and_case_insensitive() {
    let emu = Emulator::start().await;
    register(&emu, json!({"ID": "a", "Name": "api", "Tags": ["lb", "v1"]})).await;
    register(&emu, json!({"ID": "b", "Name": "api", "Tags": ["LB", "v2"]})).await;
    register(&emu, json!({"ID": "c", "Name": "api", "Tags": ["v2"]})).await;
    assert_eq!(get(&emu, "/v1/health/service/api?tag=lb").await.ids(), ["a", "b"]);
    assert_eq!(get(&emu, "/v1/health/service/api?tag=Lb&tag=V2").await.ids(), ["b"]);
    assert_eq!(get(&emu, "/v1/health/service/api?tag=v2").await.ids(), ["b", "c"]);
    assert!(get(&emu, "/v1/health/service/api?tag=lb&tag=v3").await.ids().is_empty());
    // Filters, unlike tags, are case-sensitive.
    let f = enc(r#""lb" in Service.Tags"#);
    assert_eq!(
        get(&emu, &format!("/v1/health/service/api?filter={f}")).await.ids(),
        ["a"]
    );
}

#[tokio::test]
async fn filter_expressions() {
    let emu = Emulator::start().await;
    emu.add_node("agent-b", "10.0.0.2");
    emu.register(
        "agent-a",
        json!({"ID": "a", "Name": "api", "Tags": ["lb"], "Port": 80, "Meta": {"env": "prod"}}),
    )
    .unwrap();
    emu.register(
        "agent-b",
        json!({"ID": "b", "Name": "api", "Tags": ["lb", "canary"], "Port": 81, "Meta": {"env": "dev", "odd-key": "1"},
               "Check": {"TTL": "1h", "Status": "warning"}}),
    )
    .unwrap();
    emu.register("agent-b", json!({"ID": "c", "Name": "api", "Port": 82}))
        .unwrap();

    let cases: &[(&str, &[&str])] = &[
        (r#""lb" in Service.Tags and Service.Meta.env == "prod""#, &["a"]),
        (r#""lb" in Service.Tags"#, &["a", "b"]),
        (r#""lb" not in Service.Tags"#, &["c"]),
        (r#"Service.Tags contains "canary""#, &["b"]),
        (r#"Service.Meta.env != "prod""#, &["b", "c"]),
        (r#"Service.Meta["odd-key"] == "1""#, &["b"]),
        (r#""env" in Service.Meta"#, &["a", "b"]),
        ("Service.Meta is empty", &["c"]),
        ("Service.Tags is not empty", &["a", "b"]),
        ("Service.Port == 81", &["b"]),
        (r#"Node.Node == "agent-b" and not (Service.ID == "c")"#, &["b"]),
        (r#"Node.Address == "10.0.0.2" or Service.Port == 80"#, &["a", "b", "c"]),
        (r#"Checks.Status == "warning""#, &["b"]),
        (r#"Checks.Status != "passing""#, &["b"]),
        (r#"Checks.CheckID == "serfHealth""#, &["a", "b", "c"]),
        ("Service.Weights.Passing == 1", &["a", "b", "c"]),
        (
            r#"Node.Datacenter == `dc1` and Service.Service == api"#,
            &["a", "b", "c"],
        ),
    ];
    for (expr, want) in cases {
        let r = get(&emu, &format!("/v1/health/service/api?filter={}", enc(expr))).await;
        assert_eq!(r.status, 200, "{expr}: {}", r.body);
        assert_eq!(r.ids(), *want, "{expr}");
    }

    for bad in [
        r#"Service.Nope == "x""#,
        "Service.Port ==",
        r#"Service.ID matches "a.*""#,
        r#"(Service.ID == "a""#,
    ] {
        let r = get(&emu, &format!("/v1/health/service/api?filter={}", enc(bad))).await;
        assert_eq!(r.status, 500, "{bad}");
        assert!(
            r.body.starts_with("Failed to create boolean expression evaluator: "),
            "{bad}: {}",
            r.body
        );
        assert!(r.header("x-consul-index").is_none(), "errors carry no query meta");
    }
}

#[tokio::test]
async fn parameter_errors_have_consul_texts() {
    let emu = Emulator::start().await;
    let cases: &[(&str, u16, &str)] = &[
        ("/v1/health/service/api?index=abc", 400, "Invalid index"),
        ("/v1/health/service/api?index=-1", 400, "Invalid index"),
        ("/v1/health/service/api?index=1&wait=10", 400, "Invalid wait time"),
        ("/v1/health/service/api?wait=soon", 400, "Invalid wait time"),
        (
            "/v1/health/service/api?stale&consistent",
            400,
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ),
        (
            "/v1/health/service/api?cached&consistent",
            400,
            "Cannot specify ?cached with ?consistent, conflicting semantics.",
        ),
        (
            "/v1/health/service/api?passing=maybe",
            400,
            "Invalid value for ?passing",
        ),
        ("/v1/health/service/", 400, "Missing service name"),
        ("/v1/health/service/api?dc=dc9", 500, "No path to datacenter"),
        (
            "/v1/health/service/api?ns=team",
            400,
            "Invalid query parameter: \"ns\" - Namespaces are a Consul Enterprise feature",
        ),
        ("/v1/catalog/services?index=x", 400, "Invalid index"),
        ("/v1/catalog/services?dc=other", 500, "No path to datacenter"),
    ];
    for (path, status, body) in cases {
        let r = get(&emu, path).await;
        assert_eq!((r.status, r.body.as_str()), (*status, *body), "{path}");
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"), "{path}");
        assert_eq!(r.header("x-consul-default-acl-policy"), Some("allow"), "{path}");
    }
    // The local datacenter by name is fine, and so is an empty `index`.
    assert_eq!(get(&emu, "/v1/health/service/api?dc=dc1&index=").await.status, 200);
    // A query string Go cannot parse is a bare 500.
    let r = get(&emu, "/v1/health/service/api?a=1;b=2").await;
    assert_eq!((r.status, r.body.as_str()), (500, ""));
}

#[tokio::test]
async fn node_meta_and_other_datacenter_name() {
    let emu = Emulator::start_with(Options {
        datacenter: "east".into(),
        ..Options::default()
    })
    .await;
    register(&emu, json!({"Name": "api"})).await;
    let r = get(&emu, "/v1/health/service/api?dc=east").await;
    assert_eq!(r.json()[0]["Node"]["Datacenter"], "east");
    assert_eq!(get(&emu, "/v1/health/service/api?dc=dc1").await.status, 500);
    let seg = enc("consul-network-segment:");
    assert_eq!(
        get(&emu, &format!("/v1/health/service/api?node-meta={seg}"))
            .await
            .ids(),
        ["api"]
    );
    assert!(get(&emu, "/v1/health/service/api?node-meta=rack:r1")
        .await
        .ids()
        .is_empty());
}

#[tokio::test]
async fn catalog_services_is_the_union_of_tags() {
    let emu = Emulator::start().await;
    emu.add_node("agent-b", "10.0.0.2");
    emu.register("agent-a", json!({"ID": "a1", "Name": "api", "Tags": ["lb", "v1"]}))
        .unwrap();
    emu.register("agent-b", json!({"ID": "a2", "Name": "api", "Tags": ["v2", "lb"]}))
        .unwrap();
    emu.register("agent-a", json!({"Name": "db"})).unwrap();
    let r = get(&emu, "/v1/catalog/services").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"api": ["lb", "v1", "v2"], "db": []}));
    assert!(r.index() >= 1);
    assert_eq!(r.header("x-consul-knownleader"), Some("true"));
    let f = enc(r#"ServiceTags contains "v2""#);
    assert_eq!(
        get(&emu, &format!("/v1/catalog/services?filter={f}")).await.json(),
        json!({"api": ["lb", "v2"]})
    );
    let bad = get(
        &emu,
        &format!("/v1/catalog/services?filter={}", enc("Service.Tags is empty")),
    )
    .await;
    assert_eq!(bad.status, 500);
    assert!(bad.body.starts_with("Failed to create boolean expression evaluator: "));
    let h = get_h(&emu, "/v1/catalog/services?stale", &[]).await;
    assert_eq!(h.header("x-consul-effective-consistency"), Some("stale"));
}
