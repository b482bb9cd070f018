//! `labels::evaluate` on recorded inspect responses (`tests/fixtures/*.json`, in the shape
//! of `GET /containers/{id}/json`), and on variants of them.

use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use lb_core::discover::catalog::Hints;
use lb_core::Endpoint;
use lb_discovery_docker::labels::{evaluate, AddressMode, Member, Options, Verdict};

const FIXTURES: [&str; 19] = [
    "bad_balance",
    "bad_port",
    "bad_rule",
    "bad_weight",
    "compose",
    "container_network",
    "exited",
    "healthy",
    "host_network",
    "paused",
    "plain",
    "published",
    "several_ports",
    "starting",
    "traefik_v1",
    "traefik_v2",
    "two_networks",
    "unhealthy",
    "unlabelled",
];

fn fixture(name: &str) -> ContainerInspectResponse {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn set_label(container: &mut ContainerInspectResponse, name: &str, value: &str) {
    let config = container.config.get_or_insert_with(Default::default);
    config
        .labels
        .get_or_insert_with(Default::default)
        .insert(name.to_owned(), value.to_owned());
}

fn remove_label(container: &mut ContainerInspectResponse, name: &str) {
    let labels = container.config.as_mut().and_then(|c| c.labels.as_mut());
    assert!(labels.and_then(|l| l.remove(name)).is_some(), "no label {name}");
}

fn with_label(name: &str, label: &str, value: &str) -> ContainerInspectResponse {
    let mut container = fixture(name);
    set_label(&mut container, label, value);
    container
}

fn traefik() -> Options {
    Options {
        traefik: true,
        ..Options::default()
    }
}

/// The endpoint of a container: address, id, weight and the metadata every member has.
fn endpoint(addr: &str, id: &str, weight: u32, container_id: &str, container: &str, image: &str) -> Endpoint {
    Endpoint::new(addr.parse().expect("test address"))
        .with_id(id)
        .with_weight(weight)
        .with_metadata("container_id", container_id)
        .with_metadata("container", container)
        .with_metadata("image", image)
}

fn member(service: &str, endpoint: Endpoint, hints: Hints, warnings: &[&str]) -> Verdict {
    Verdict::Member(Member {
        service: service.to_owned(),
        endpoint,
        hints,
        warnings: warnings.iter().map(|w| w.to_string()).collect(),
    })
}

fn invalid(label: &str, message: &str) -> Verdict {
    Verdict::Invalid {
        label: label.to_owned(),
        message: message.to_owned(),
    }
}

fn ineligible(reason: &str) -> Verdict {
    Verdict::Ineligible(reason.to_owned())
}

fn hosts(hosts: &[&str]) -> Vec<String> {
    hosts.iter().map(|h| h.to_string()).collect()
}

const WEB_1: &str = "610182f7efcfbc603db478ec0266232adfe71a6ba513c9a4f351c1ec70339c03";
const API_1: &str = "5f8266fbccfc7a32e1c57be19c607006a434fb9401a33320c85f9cd25cf8387b";
const APP_1: &str = "d4d3c7335fd671d8d4ee8c379fb07391a7f1a5d3305a35581bfb75a3f433a80b";
const EDGE_1: &str = "fd8430b9b4476d37362f02925ef94b7fa2b5822bc5082f7e6c48b10ab63692a8";
const WHOAMI: &str = "1bb205471d13ef265eda1a383ba7cd300c25fabd0f99e9f5f0f4df35dec9948a";

fn plain_member(warnings: &[&str]) -> Verdict {
    member(
        "web",
        endpoint("172.20.0.5:8080", "web-1:8080", 1, WEB_1, "web-1", "lbtest:1"),
        Hints {
            hosts: hosts(&["web.example.com", "*.web.example.com"]),
            path_prefix: Some("/app".into()),
            balance: Some("least_conn".into()),
            hash_key: None,
            health_path: Some("/healthz".into()),
            health_interval: Some(Duration::from_secs(2)),
            tls_acme: false,
            redirect_https: None,
        },
        warnings,
    )
}

#[test]
fn every_fixture_deserializes_and_evaluates_under_every_option() {
    for name in FIXTURES {
        let container = fixture(name);
        assert!(container.id.is_some() && container.state.is_some(), "{name}");
        for traefik in [false, true] {
            for exposed_by_default in [false, true] {
                for address in [AddressMode::Container, AddressMode::Published] {
                    let opts = Options {
                        traefik,
                        exposed_by_default,
                        address,
                        ..Options::default()
                    };
                    let _ = evaluate(&container, &opts);
                }
            }
        }
    }
}

#[test]
fn plain_labelled_container_on_a_user_network() {
    assert_eq!(evaluate(&fixture("plain"), &Options::default()), plain_member(&[]));
    // Traefik compat changes nothing for a container without Traefik labels.
    assert_eq!(evaluate(&fixture("plain"), &traefik()), plain_member(&[]));
}

#[test]
fn another_prefix_reads_other_labels() {
    let opts = Options {
        label_prefix: "lbtest".into(),
        ..Options::default()
    };
    assert_eq!(evaluate(&fixture("plain"), &opts), Verdict::NotSelected);
    // Selected by default: the name is the container's, the port the exposed one, and the
    // test's own `lbtest.run` label is an unknown one.
    let opts = Options {
        exposed_by_default: true,
        ..opts
    };
    assert_eq!(
        evaluate(&fixture("plain"), &opts),
        member(
            "web-1",
            endpoint("172.20.0.5:8080", "web-1:8080", 1, WEB_1, "web-1", "lbtest:1"),
            Hints::default(),
            &["unknown label lbtest.run (ignored)"],
        )
    );
}

#[test]
fn health() {
    assert_eq!(
        evaluate(&fixture("healthy"), &Options::default()),
        member(
            "web",
            endpoint(
                "172.20.0.6:8080",
                "web-2:8080",
                1,
                "91bd4f08b89a8e50b3380d7005b1875f88a9ba7f59a90802add454de4c4a75ad",
                "web-2",
                "lbtest:1",
            ),
            Hints::default(),
            &[],
        )
    );
    assert_eq!(
        evaluate(&fixture("unhealthy"), &Options::default()),
        ineligible("health: unhealthy")
    );
    assert_eq!(
        evaluate(&fixture("starting"), &Options::default()),
        ineligible("health: starting")
    );
}

#[test]
fn not_running() {
    assert_eq!(evaluate(&fixture("paused"), &Options::default()), ineligible("paused"));
    assert_eq!(
        evaluate(&fixture("exited"), &Options::default()),
        ineligible("not running (exited)")
    );
    let mut restarting = fixture("plain");
    let state = restarting.state.as_mut().expect("state");
    state.status = Some(bollard::models::ContainerStateStatusEnum::RESTARTING);
    assert_eq!(
        evaluate(&restarting, &Options::default()),
        ineligible("not running (restarting)")
    );
    restarting.state = None;
    assert_eq!(
        evaluate(&restarting, &Options::default()),
        ineligible("not running (state unknown)")
    );
}

#[test]
fn malformed_labels_are_invalid_even_when_not_running() {
    let mut exited = with_label("exited", "lb.weight", "-1");
    assert_eq!(
        evaluate(&exited, &Options::default()),
        invalid("lb.weight", "invalid weight \"-1\" (expected 0 to 65535)")
    );
    remove_label(&mut exited, "lb.weight");
    assert_eq!(
        evaluate(&exited, &Options::default()),
        ineligible("not running (exited)")
    );
}

#[test]
fn several_exposed_ports_take_the_lowest_tcp_one() {
    assert_eq!(
        evaluate(&fixture("several_ports"), &Options::default()),
        member(
            "metrics",
            endpoint(
                "172.20.0.10:8080",
                "metrics-1:8080",
                1,
                "56b984c441ce8783b61fd9942247e26ba6b4d5374a6383b212fcaff0ccbfb18b",
                "metrics-1",
                "lbtest:multi",
            ),
            Hints::default(),
            &["several exposed ports (8080, 9090): using the lowest, 8080; set lb.port to choose"],
        )
    );
    // No TCP port at all.
    let mut none = fixture("several_ports");
    none.config.as_mut().expect("config").exposed_ports = Some(vec!["53/udp".into()]);
    none.network_settings.as_mut().expect("settings").ports = None;
    assert_eq!(
        evaluate(&none, &Options::default()),
        ineligible("no port: the container exposes no TCP port and has no lb.port label")
    );
}

#[test]
fn published_ports() {
    let published = Options {
        address: AddressMode::Published,
        ..Options::default()
    };
    let api = |addr: &str, id: &str| {
        member(
            "api",
            endpoint(addr, id, 3, API_1, "api-1", "lbtest:1"),
            Hints::default(),
            &[],
        )
    };
    // Container mode: the container's own address on the default bridge.
    assert_eq!(
        evaluate(&fixture("published"), &Options::default()),
        api("172.17.0.3:8080", "api-1:8080")
    );
    // Bound to 0.0.0.0: the host IP.
    assert_eq!(
        evaluate(&fixture("published"), &published),
        api("127.0.0.1:32771", "api-1:8080")
    );
    let elsewhere = Options {
        host_ip: "192.0.2.10".parse().expect("ip"),
        ..published.clone()
    };
    assert_eq!(
        evaluate(&fixture("published"), &elsewhere),
        api("192.0.2.10:32771", "api-1:8080")
    );
    // Bound to a given address: that one; the id keeps the container port.
    let port_9090 = with_label("published", "lb.port", "9090");
    assert_eq!(evaluate(&port_9090, &elsewhere), api("127.0.0.1:9443", "api-1:9090"));
    // Exposed, not published.
    let port_7070 = with_label("published", "lb.port", "7070");
    assert_eq!(
        evaluate(&port_7070, &published),
        ineligible("port 7070/tcp is not published")
    );
    let port_1234 = with_label("published", "lb.port", "1234");
    assert_eq!(
        evaluate(&port_1234, &published),
        ineligible("port 1234/tcp is not published")
    );
}

#[test]
fn host_network_uses_the_host_ip() {
    let edge = |addr: &str| {
        member(
            "edge",
            endpoint(addr, "edge-1:8080", 1, EDGE_1, "edge-1", "lbtest:1"),
            Hints::default(),
            &[],
        )
    };
    assert_eq!(
        evaluate(&fixture("host_network"), &Options::default()),
        edge("127.0.0.1:8080")
    );
    let opts = Options {
        host_ip: "10.0.0.2".parse().expect("ip"),
        address: AddressMode::Published,
        network: Some("lbnet".into()),
        ..Options::default()
    };
    assert_eq!(evaluate(&fixture("host_network"), &opts), edge("10.0.0.2:8080"));
}

#[test]
fn container_network_mode_is_not_supported() {
    assert_eq!(
        evaluate(&fixture("container_network"), &Options::default()),
        ineligible(
            "network mode container:d4d3c7335fd671d8d4ee8c379fb07391a7f1a5d3305a35581bfb75a3f433a80b is not \
             supported; label the container that owns the network"
        )
    );
}

#[test]
fn two_networks() {
    let app = |addr: &str, warnings: &[&str]| {
        member(
            "app",
            endpoint(addr, "app-1:8080", 1, APP_1, "app-1", "lbtest:1"),
            Hints::default(),
            warnings,
        )
    };
    assert_eq!(
        evaluate(&fixture("two_networks"), &Options::default()),
        app(
            "172.22.0.4:8080",
            &["attached to several networks (backend, frontend) and none chosen: using backend; set lb.network"],
        )
    );
    let frontend = Options {
        network: Some("frontend".into()),
        ..Options::default()
    };
    assert_eq!(
        evaluate(&fixture("two_networks"), &frontend),
        app("172.21.0.4:8080", &[])
    );
    // The label wins over the option.
    let labelled = with_label("two_networks", "lb.network", "backend");
    assert_eq!(evaluate(&labelled, &frontend), app("172.22.0.4:8080", &[]));
    let missing = with_label("two_networks", "lb.network", "lbnet");
    assert_eq!(
        evaluate(&missing, &frontend),
        ineligible("not attached to network lbnet")
    );
    let empty = with_label("two_networks", "lb.network", "");
    assert_eq!(evaluate(&empty, &frontend), invalid("lb.network", "empty network name"));

    // IPv6 only: the global IPv6 address; no address at all: ineligible.
    fn frontend_of(container: &mut ContainerInspectResponse) -> &mut bollard::models::EndpointSettings {
        let networks = container.network_settings.as_mut().and_then(|n| n.networks.as_mut());
        networks.and_then(|n| n.get_mut("frontend")).expect("frontend")
    }
    let mut v6 = fixture("two_networks");
    frontend_of(&mut v6).ip_address = Some(String::new());
    frontend_of(&mut v6).global_ipv6_address = Some("fd00:21::4".into());
    assert_eq!(evaluate(&v6, &frontend), app("[fd00:21::4]:8080", &[]));
    frontend_of(&mut v6).global_ipv6_address = None;
    assert_eq!(evaluate(&v6, &frontend), ineligible("no address on network frontend"));
    frontend_of(&mut v6).ip_address = Some("not-an-ip".into());
    assert_eq!(
        evaluate(&v6, &frontend),
        ineligible("invalid address \"not-an-ip\" on network frontend")
    );
    v6.network_settings = None;
    assert_eq!(
        evaluate(&v6, &Options::default()),
        ineligible("not attached to any network")
    );
}

#[test]
fn compose_labels() {
    let expected = member(
        "api",
        endpoint(
            "172.27.0.5:3000",
            "shop-api-2:3000",
            1,
            "9d571c2c8e704ca713d965d6f2a0db3f46afad1819f22e385e6fcf3ece69b5b6",
            "shop-api-2",
            "shop/api:2.4.1",
        )
        .with_metadata("compose_project", "shop")
        .with_metadata("compose_service", "api"),
        Hints {
            balance: Some("consistent_hash".into()),
            hash_key: Some("header:X-Tenant".into()),
            ..Hints::default()
        },
        &["unknown label lb.scheme (ignored)"],
    );
    // `lb.enable=TRUE`; `lb.network=default` is the project's `shop_default`.
    assert_eq!(evaluate(&fixture("compose"), &Options::default()), expected);
    // The full name works too.
    let full = with_label("compose", "lb.network", "shop_default");
    assert_eq!(evaluate(&full, &Options::default()), expected);
    // Two networks ending in `_<name>`: ambiguous.
    let mut ambiguous = with_label("compose", "lb.network", "backend");
    let networks = ambiguous
        .network_settings
        .as_mut()
        .and_then(|n| n.networks.as_mut())
        .expect("networks");
    let backend = networks.get("shop_backend").cloned().expect("shop_backend");
    networks.insert("other_backend".into(), backend);
    assert_eq!(
        evaluate(&ambiguous, &Options::default()),
        ineligible("network backend is ambiguous: attached to other_backend, shop_backend")
    );
}

#[test]
fn selection() {
    let default = Options::default();
    let exposed = Options {
        exposed_by_default: true,
        ..Options::default()
    };
    assert_eq!(evaluate(&fixture("unlabelled"), &default), Verdict::NotSelected);
    assert_eq!(
        evaluate(&fixture("unlabelled"), &exposed),
        member(
            "db-1",
            endpoint(
                "172.20.0.20:5432",
                "db-1:5432",
                1,
                "07fc3559b37016e8899609f2cb24fc68c70ef176cb3d736dcfe7e9713800fc3c",
                "db-1",
                "postgres:16",
            ),
            Hints::default(),
            &[],
        )
    );
    for value in ["false", "False", "FALSE"] {
        let disabled = with_label("unlabelled", "lb.enable", value);
        assert_eq!(evaluate(&disabled, &exposed), Verdict::NotSelected, "{value}");
    }
    for value in ["yes", "1", "", " true"] {
        let bad = with_label("unlabelled", "lb.enable", value);
        assert_eq!(
            evaluate(&bad, &default),
            invalid(
                "lb.enable",
                &format!("invalid value {value:?} (expected true or false)")
            ),
        );
    }
    // Traefik's enable label, only with compat on, and ours first.
    let by_traefik = with_label("unlabelled", "traefik.enable", "true");
    assert_eq!(evaluate(&by_traefik, &default), Verdict::NotSelected);
    assert!(matches!(evaluate(&by_traefik, &traefik()), Verdict::Member(_)));
    let mut ours_off = by_traefik.clone();
    set_label(&mut ours_off, "lb.enable", "false");
    assert_eq!(evaluate(&ours_off, &traefik()), Verdict::NotSelected);
    let traefik_off = with_label("unlabelled", "traefik.enable", "false");
    let exposed_traefik = Options {
        traefik: true,
        ..exposed.clone()
    };
    assert_eq!(evaluate(&traefik_off, &exposed_traefik), Verdict::NotSelected);
    assert!(matches!(evaluate(&traefik_off, &exposed), Verdict::Member(_)));
    let traefik_bad = with_label("unlabelled", "traefik.enable", "on");
    assert_eq!(
        evaluate(&traefik_bad, &traefik()),
        invalid("traefik.enable", "invalid value \"on\" (expected true or false)")
    );
}

#[test]
fn malformed_fixtures() {
    let opts = Options::default();
    assert_eq!(
        evaluate(&fixture("bad_weight"), &opts),
        invalid("lb.weight", "invalid weight \"heavy\" (expected 0 to 65535)")
    );
    assert_eq!(
        evaluate(&fixture("bad_port"), &opts),
        invalid("lb.port", "invalid port \"80800\" (expected 1 to 65535)")
    );
    assert_eq!(
        evaluate(&fixture("bad_balance"), &opts),
        invalid(
            "lb.balance",
            "unknown policy (expected one of round_robin, least_conn, p2c, peak_ewma, random, consistent_hash)"
        )
    );
    assert_eq!(evaluate(&fixture("bad_rule"), &opts), Verdict::NotSelected);
    assert_eq!(
        evaluate(&fixture("bad_rule"), &traefik()),
        invalid(
            "traefik.http.routers.whoami.rule",
            "unsupported rule \"Host(`a.example.com`) || Host(`b.example.com`)\": only Host(...) and \
             PathPrefix(...), joined by &&, are understood"
        )
    );
}

#[test]
fn numbers_and_names() {
    let opts = Options::default();
    for port in ["0", "65536", "+80", "-1", "", " 80", "80 ", "8o", "1e3", "99999999999"] {
        assert_eq!(
            evaluate(&with_label("plain", "lb.port", port), &opts),
            invalid("lb.port", &format!("invalid port {port:?} (expected 1 to 65535)")),
        );
    }
    for weight in ["65536", "+1", "1.5", "", "-0"] {
        assert_eq!(
            evaluate(&with_label("plain", "lb.weight", weight), &opts),
            invalid("lb.weight", &format!("invalid weight {weight:?} (expected 0 to 65535)")),
        );
    }
    let weight = |value: &str| match evaluate(&with_label("plain", "lb.weight", value), &opts) {
        Verdict::Member(member) => member.endpoint.weight(),
        other => panic!("{value}: {other:?}"),
    };
    assert_eq!((weight("0"), weight("65535"), weight("007")), (0, 65535, 7));
    let port = |value: &str| match evaluate(&with_label("plain", "lb.port", value), &opts) {
        Verdict::Member(member) => (member.endpoint.addr().port(), member.endpoint.id().to_string()),
        other => panic!("{value}: {other:?}"),
    };
    assert_eq!(port("1"), (1, "web-1:1".to_owned()));
    assert_eq!(port("65535"), (65535, "web-1:65535".to_owned()));
    for name in ["my service", "", "web/1", "wéb", "web:1"] {
        assert_eq!(
            evaluate(&with_label("plain", "lb.service", name), &opts),
            invalid(
                "lb.service",
                &format!("invalid service name {name:?} (expected letters, digits, `-`, `_` and `.`)")
            ),
        );
    }
    let named = with_label("plain", "lb.service", "Web_2.internal-a");
    assert!(matches!(evaluate(&named, &opts), Verdict::Member(m) if m.service == "Web_2.internal-a"));
    // A bad compose service name is reported on its label.
    let mut compose = fixture("compose");
    set_label(&mut compose, "com.docker.compose.service", "a b");
    assert_eq!(
        evaluate(&compose, &opts),
        invalid(
            "com.docker.compose.service",
            "invalid service name \"a b\" (expected letters, digits, `-`, `_` and `.`)"
        )
    );
}

#[test]
fn hint_labels() {
    let opts = Options::default();
    let bad = |label: &str, value: &str| evaluate(&with_label("plain", label, value), &opts);
    assert_eq!(
        bad("lb.health.interval", "0s"),
        invalid("lb.health.interval", "must be above zero")
    );
    assert_eq!(
        bad("lb.health.path", "healthz"),
        invalid("lb.health.path", "must start with `/`")
    );
    assert_eq!(
        bad("lb.hash_key", "query:id"),
        invalid("lb.hash_key", "expected client_ip, path, header:NAME or cookie:NAME")
    );
    assert_eq!(
        bad("lb.host", "a.com:80"),
        invalid("lb.host", "host \"a.com:80\" must not include a port")
    );
    // Unknown labels: one warning each, in label order.
    let mut unknown = with_label("plain", "lb.scheme", "https");
    set_label(&mut unknown, "lb.health.timeout", "1s");
    assert_eq!(
        evaluate(&unknown, &opts),
        plain_member(&[
            "unknown label lb.health.timeout (ignored)",
            "unknown label lb.scheme (ignored)"
        ])
    );
}

#[test]
fn traefik_v1_labels() {
    assert_eq!(
        evaluate(&fixture("traefik_v1"), &Options::default()),
        Verdict::NotSelected
    );
    assert_eq!(
        evaluate(&fixture("traefik_v1"), &traefik()),
        member(
            "blog",
            endpoint(
                "172.23.0.2:2368",
                "blog-1:2368",
                5,
                "1434ff2fb92d6aa1f729d5985aac70b066e7ac903e50cb0193003c4db972ede0",
                "blog-1",
                "ghost:5-alpine",
            ),
            Hints {
                hosts: hosts(&["blog.example.com", "www.blog.example.com"]),
                path_prefix: Some("/blog".into()),
                ..Hints::default()
            },
            &[],
        )
    );
    // Our labels win over Traefik's.
    let mut ours = fixture("traefik_v1");
    for (label, value) in [
        ("lb.service", "ghost"),
        ("lb.port", "2369"),
        ("lb.weight", "1"),
        ("lb.network", "blog_internal"),
    ] {
        set_label(&mut ours, label, value);
    }
    match evaluate(&ours, &traefik()) {
        Verdict::Member(m) => {
            assert_eq!(m.service, "ghost");
            assert_eq!(m.endpoint.addr(), "172.24.0.2:2369".parse().expect("addr"));
            assert_eq!(m.endpoint.weight(), 1);
        }
        other => panic!("{other:?}"),
    }
    let bad_port = with_label("traefik_v1", "traefik.port", "http");
    assert_eq!(
        evaluate(&bad_port, &traefik()),
        invalid("traefik.port", "invalid port \"http\" (expected 1 to 65535)")
    );
}

#[test]
fn traefik_v2_labels() {
    assert_eq!(
        evaluate(&fixture("traefik_v2"), &Options::default()),
        Verdict::NotSelected
    );
    let expected = |hints: Hints| {
        member(
            "whoami-svc",
            endpoint(
                "172.25.0.3:80",
                "edge-whoami-1:80",
                2,
                WHOAMI,
                "edge-whoami-1",
                "traefik/whoami:v1.10",
            )
            .with_metadata("compose_project", "edge")
            .with_metadata("compose_service", "whoami"),
            hints,
            &[],
        )
    };
    // Routers in label order (`whoami-tls` sorts before `whoami`); network `proxy` is
    // compose's `edge_proxy`.
    assert_eq!(
        evaluate(&fixture("traefik_v2"), &traefik()),
        expected(Hints {
            hosts: hosts(&["whoami.example.org", "whoami.example.com"]),
            path_prefix: Some("/api".into()),
            ..Hints::default()
        })
    );
    // A router's certificate resolver asks for ACME certificates; `tls=true` alone does not.
    let resolver = with_label(
        "traefik_v2",
        "traefik.http.routers.whoami-tls.tls.certresolver",
        "letsencrypt",
    );
    assert_eq!(
        evaluate(&resolver, &traefik()),
        expected(Hints {
            hosts: hosts(&["whoami.example.org", "whoami.example.com"]),
            path_prefix: Some("/api".into()),
            tls_acme: true,
            ..Hints::default()
        })
    );
    // Our own label wins over the resolver.
    let mut declined = resolver.clone();
    set_label(&mut declined, "lb.tls.acme", "false");
    let Verdict::Member(m) = evaluate(&declined, &traefik()) else {
        panic!("still a member");
    };
    assert!(!m.hints.tls_acme);
    // Our route labels replace Traefik's rules, which are then not even read.
    let mut ours = with_label("traefik_v2", "lb.host", "x.example.com");
    set_label(&mut ours, "traefik.http.routers.whoami.rule", "Headers(`X`, `y`)");
    assert_eq!(
        evaluate(&ours, &traefik()),
        expected(Hints {
            hosts: hosts(&["x.example.com"]),
            ..Hints::default()
        })
    );
    // Routers must agree on the path prefix.
    let disagree = with_label(
        "traefik_v2",
        "traefik.http.routers.whoami.rule",
        "Host(`whoami.example.com`)",
    );
    assert_eq!(
        evaluate(&disagree, &traefik()),
        invalid(
            "traefik.http.routers.whoami.rule",
            "path prefix none differs from \"/api\" of traefik.http.routers.whoami-tls.rule: the routers of one \
             service must share one path prefix"
        )
    );
    // Several Traefik services: ours must choose.
    let mut several = with_label(
        "traefik_v2",
        "traefik.http.services.admin.loadbalancer.server.port",
        "8081",
    );
    assert_eq!(
        evaluate(&several, &traefik()),
        invalid(
            "traefik.http.services",
            "the container has several Traefik services (admin, whoami-svc): set lb.service to one of them"
        )
    );
    set_label(&mut several, "lb.service", "admin");
    match evaluate(&several, &traefik()) {
        Verdict::Member(m) => {
            assert_eq!(m.service, "admin");
            assert_eq!(m.endpoint.addr(), "172.25.0.3:8081".parse().expect("addr"));
            assert_eq!(m.endpoint.weight(), 1, "admin has no weight label");
        }
        other => panic!("{other:?}"),
    }
    set_label(&mut several, "lb.service", "other");
    assert_eq!(
        evaluate(&several, &traefik()),
        invalid(
            "lb.service",
            "the container has several Traefik services (admin, whoami-svc): set lb.service to one of them"
        )
    );
    let bad_weight = with_label(
        "traefik_v2",
        "traefik.http.services.whoami-svc.loadbalancer.server.weight",
        "-2",
    );
    assert_eq!(
        evaluate(&bad_weight, &traefik()),
        invalid(
            "traefik.http.services.whoami-svc.loadbalancer.server.weight",
            "invalid weight \"-2\" (expected 0 to 65535)"
        )
    );
}

/// The route a rule label gives, or the message of its `Invalid` verdict.
fn route(label: &str, rule: &str) -> Result<(Vec<String>, Option<String>), String> {
    let mut container = fixture("bad_rule");
    remove_label(&mut container, "traefik.http.routers.whoami.rule");
    set_label(&mut container, label, rule);
    match evaluate(&container, &traefik()) {
        Verdict::Member(m) => Ok((m.hints.hosts, m.hints.path_prefix)),
        Verdict::Invalid { label: at, message } => {
            assert_eq!(at, label);
            Err(message)
        }
        other => panic!("{rule}: {other:?}"),
    }
}

#[test]
fn traefik_rules() {
    const V2: &str = "traefik.http.routers.r.rule";
    const V1: &str = "traefik.frontend.rule";
    let ok = |h: &[&str], p: Option<&str>| Ok((hosts(h), p.map(str::to_owned)));
    let good = [
        (V2, "Host(`a.com`)", ok(&["a.com"], None)),
        (V2, "PathPrefix(`/p`)", ok(&[], Some("/p"))),
        (V2, "Host(\"A.com\") && PathPrefix(\"/p\")", ok(&["a.com"], Some("/p"))),
        (V2, "PathPrefix(`/p`)&&Host(`a.com`)", ok(&["a.com"], Some("/p"))),
        (V2, "  Host( `a.com` , `*.b.com` )  ", ok(&["a.com", "*.b.com"], None)),
        (V1, "Host:a.com", ok(&["a.com"], None)),
        (V1, "PathPrefix:/x", ok(&[], Some("/x"))),
        (
            V1,
            "Host: a.com , b.com ; PathPrefix: /x",
            ok(&["a.com", "b.com"], Some("/x")),
        ),
    ];
    for (label, rule, expected) in good {
        assert_eq!(route(label, rule), expected, "{rule}");
    }
    let v2_unsupported = |rule: &str| {
        format!("unsupported rule {rule:?}: only Host(...) and PathPrefix(...), joined by &&, are understood")
    };
    for rule in [
        "",
        "HostRegexp(`{sub:[a-z]+}.a.com`)",
        "Path(`/x`)",
        "Headers(`X`, `y`)",
        "Host(`a.com`) && Host(`b.com`)",
        "PathPrefix(`/a`, `/b`)",
        "PathPrefix(`/a`) && PathPrefix(`/a`)",
        "!Host(`a.com`)",
        "(Host(`a.com`))",
        "Host(`a.com`",
        "Host(`a.com)",
        "Host()",
        "Host(`a.com`,)",
        "Host(a.com)",
        "Host(`a.com`) &&",
        "Host(`a.com`) || Host(`b.com`)",
        "Host(`a.com`) && (PathPrefix(`/a`) || PathPrefix(`/b`))",
        "Host(`a.com`) extra",
    ] {
        assert_eq!(route(V2, rule), Err(v2_unsupported(rule)), "{rule}");
    }
    assert_eq!(
        route(V2, "Host(`a,b`)"),
        Err("invalid host \"a,b\" in rule \"Host(`a,b`)\"".into())
    );
    assert_eq!(
        route(V2, "Host(`a.com:80`)"),
        Err("host \"a.com:80\" must not include a port".into())
    );
    assert_eq!(route(V2, "PathPrefix(`p`)"), Err("must start with `/`".into()));
    let v1_unsupported = |rule: &str| {
        format!("unsupported rule {rule:?}: only Host:NAMES and PathPrefix:PATH, joined by `;`, are understood")
    };
    for rule in [
        "",
        "a.com",
        "PathPrefixStrip:/x",
        "HostRegexp:{sub:[a-z]+}.a.com",
        "Host:a.com;Host:b.com",
        "PathPrefix:/a,/b",
        "Host:a.com;",
    ] {
        assert_eq!(route(V1, rule), Err(v1_unsupported(rule)), "{rule}");
    }
}

#[test]
fn missing_fields_never_panic() {
    let empty = ContainerInspectResponse::default();
    assert_eq!(evaluate(&empty, &Options::default()), Verdict::NotSelected);
    let exposed = Options {
        exposed_by_default: true,
        ..Options::default()
    };
    assert_eq!(
        evaluate(&empty, &exposed),
        invalid("lb.service", "missing, and the container has no name to default to")
    );
    let named = ContainerInspectResponse {
        name: Some("/x".into()),
        ..ContainerInspectResponse::default()
    };
    assert_eq!(evaluate(&named, &exposed), ineligible("not running (state unknown)"));
    // Running, but nothing else known.
    let mut bare = fixture("plain");
    bare.network_settings = None;
    bare.host_config = None;
    bare.id = None;
    bare.config.as_mut().expect("config").image = None;
    assert_eq!(
        evaluate(&bare, &Options::default()),
        ineligible("not attached to any network")
    );
    bare.config.as_mut().expect("config").exposed_ports = None;
    remove_label(&mut bare, "lb.port");
    assert_eq!(
        evaluate(&bare, &Options::default()),
        ineligible("no port: the container exposes no TCP port and has no lb.port label")
    );
    // A name-only container still gets its metadata without the missing fields.
    let mut minimal = fixture("plain");
    minimal.id = None;
    minimal.config.as_mut().expect("config").image = None;
    match evaluate(&minimal, &Options::default()) {
        Verdict::Member(m) => {
            let keys: Vec<&str> = m.endpoint.metadata().keys().map(String::as_str).collect();
            assert_eq!(keys, ["container"]);
        }
        other => panic!("{other:?}"),
    }
}
