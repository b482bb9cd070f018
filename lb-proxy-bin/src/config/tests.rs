use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::duration::parse_duration;
use super::*;

/// The example of the brief and of docs/config.md, as written.
const EXAMPLE: &str = r#"[server]
listen = ["127.0.0.1:8080"]          # one or more; [server.tls] cert/key PEM files turn on HTTPS (rustls, SNI for several certs)
[admin]
listen = "127.0.0.1:9090"            # loopback by default; a non-loopback admin requires `token`
[[services]]
name = "web"
balance = "round_robin"              # round_robin (weights honoured, smooth), least_conn, p2c, peak_ewma, random, consistent_hash
hash_key = "header:x-user"           # consistent_hash only: client_ip | header:NAME | cookie:NAME | path
endpoints = [{ addr = "127.0.0.1:9001", weight = 3 }, { addr = "127.0.0.1:9002" }]
# or: endpoints_file = "web.toml"    # watched; edits apply live (lb-discovery-static)
health = { path = "/healthz", interval = "2s", timeout = "1s", rise = 2, fall = 3 }
[[routes]]
host = "web.localhost"               # optional; exact or *.suffix
path_prefix = "/"                    # optional
service = "web"
"#;

/// A valid service to build faulty configs around.
const WEB: &str = "[[services]]\nname = \"web\"\nendpoints = [\"127.0.0.1:9001\"]\n";

fn parse_ok(text: &str) -> Config {
    match parse(text, Path::new("web.toml")) {
        Ok(config) => config,
        Err(err) => panic!("expected the config to parse, got: {err}"),
    }
}

fn parse_err(text: &str) -> String {
    match parse(text, Path::new("web.toml")) {
        Ok(config) => panic!("expected an error, got {config:#?}"),
        Err(err) => err.to_string(),
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn web_service(endpoints: EndpointSource) -> ServiceConfig {
    ServiceConfig {
        name: "web".into(),
        origin: Origin::File,
        balance: Balance::RoundRobin,
        hash_key: None,
        endpoints,
        health: None,
        connect_timeout: Duration::from_secs(3),
        response_timeout: Some(Duration::from_secs(30)),
        retries: 2,
        slow_start: None,
        outlier: Some(OutlierConfig::default()),
        max_in_flight: None,
        panic_threshold: 50,
        dns_refresh: Duration::from_secs(5),
        tls: None,
    }
}

// --- what parses ---

#[test]
fn example_parses_to_expected_values() {
    let config = parse(EXAMPLE, Path::new("/etc/lb/lb.toml")).unwrap();
    let mut web = web_service(EndpointSource::Static(vec![
        EndpointConfig {
            addr: "127.0.0.1:9001".into(),
            weight: 3,
        },
        EndpointConfig {
            addr: "127.0.0.1:9002".into(),
            weight: 1,
        },
    ]));
    web.health = Some(HealthConfig {
        probe: Probe::Http {
            path: "/healthz".into(),
        },
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        rise: 2,
        fall: 3,
    });
    let expected = Config {
        server: ServerConfig {
            listen: vec![addr("127.0.0.1:8080")],
            ..ServerConfig::default()
        },
        admin: AdminConfig {
            listen: addr("127.0.0.1:9090"),
            token: None,
            basic: None,
        },
        services: vec![web],
        routes: vec![RouteConfig {
            host: Some(HostMatch::Exact("web.localhost".into())),
            path_prefix: Some("/".into()),
            service: "web".into(),
            upgrades: vec!["websocket".into()],
            acme: false,
            redirect_https: None,
        }],
        tcp: vec![],
        providers: vec![],
        acme: None,
        warnings: vec![
            "/etc/lb/lb.toml:8:12: services[0].hash_key: ignored: hash_key applies only to balance = \
             \"consistent_hash\" (this service uses \"round_robin\")"
                .into(),
        ],
        empty_on_purpose: false,
    };
    assert_eq!(config, expected);
}

#[test]
fn minimal_config_takes_defaults() {
    let config = parse_ok(WEB);
    assert_eq!(config.server, ServerConfig::default());
    assert_eq!(config.server.listen, vec![addr("127.0.0.1:8080")]);
    assert_eq!(config.server.max_header_bytes, 64 * 1024);
    assert_eq!(config.server.shutdown_grace, Duration::from_secs(10));
    assert_eq!(config.admin, AdminConfig::default());
    assert_eq!(config.admin.listen, addr("127.0.0.1:9090"));
    let expected = web_service(EndpointSource::Static(vec![EndpointConfig {
        addr: "127.0.0.1:9001".into(),
        weight: 1,
    }]));
    assert_eq!(config.services, vec![expected]);
    assert!(config.routes.is_empty() && config.tcp.is_empty() && config.warnings.is_empty());
}

#[test]
fn every_key_set() {
    let text = r#"
[server]
listen = "0.0.0.0:8443"
max_header_bytes = 16384
max_body_bytes = 1048576
header_read_timeout = "5s"
shutdown_grace = "30s"
[server.tls]
cert = "certs/default.pem"
key = "/abs/default.key"
[[server.tls.certs]]
cert = "api.pem"
key = "api.key"
sni = ["api.example.com", "*.API.example.com."]

[admin]
listen = "0.0.0.0:9090"
token = "s3cret"
user = "admin"
password = "pw"

[[services]]
name = "db"
balance = "consistent_hash"
hash_key = "header:X-User"
endpoints_file = "db-endpoints.toml"
health = { tcp = true, interval = "500ms" }
connect_timeout = "250ms"
response_timeout = "0s"
retries = 0
slow_start = "1m30s"
outlier = { consecutive_failures = 7, base_ejection = "5s", max_ejection = "1m", max_ejection_percent = 20 }
max_in_flight = 100
panic_threshold = 0
dns_refresh = "1m"

[[services]]
name = "sticky"
balance = "consistent_hash"
endpoints = ["db1.internal:5432", { addr = "[::1]:5432", weight = 0 }]
outlier = { consecutive_failures = 0 }

[[routes]]
host = "*.example.com"
service = "sticky"

[[tcp]]
listen = "127.0.0.1:5432"
service = "db"
"#;
    let config = parse(text, Path::new("/etc/lb/lb.toml")).unwrap();
    let server = &config.server;
    assert_eq!(server.listen, vec![addr("0.0.0.0:8443")]);
    assert_eq!(server.max_header_bytes, 16384);
    assert_eq!(server.max_body_bytes, Some(1_048_576));
    assert_eq!(server.header_read_timeout, Duration::from_secs(5));
    assert_eq!(server.shutdown_grace, Duration::from_secs(30));
    let tls = server.tls.as_ref().expect("tls");
    assert_eq!(
        tls.default,
        Some(CertKey {
            cert: PathBuf::from("/etc/lb/certs/default.pem"),
            key: PathBuf::from("/abs/default.key"),
        })
    );
    assert_eq!(
        tls.sni_certs,
        vec![SniCert {
            cert_key: CertKey {
                cert: PathBuf::from("/etc/lb/api.pem"),
                key: PathBuf::from("/etc/lb/api.key"),
            },
            sni: vec![
                HostMatch::Exact("api.example.com".into()),
                HostMatch::Suffix(".api.example.com".into())
            ],
        }]
    );
    assert_eq!(config.admin.token.as_deref(), Some("s3cret"));
    assert_eq!(
        config.admin.basic,
        Some(BasicAuth {
            user: "admin".into(),
            password: "pw".into()
        })
    );
    assert!(
        !format!("{:?}", config.admin).contains("pw\""),
        "Debug must not show the password"
    );

    let db = &config.services[0];
    assert_eq!(db.balance, Balance::ConsistentHash);
    assert_eq!(db.hash_key, Some(HashKey::Header("x-user".into())));
    assert_eq!(
        db.endpoints,
        EndpointSource::File(PathBuf::from("/etc/lb/db-endpoints.toml"))
    );
    let health = db.health.as_ref().expect("health");
    assert_eq!(health.probe, Probe::Tcp);
    assert_eq!(
        (health.interval, health.timeout, health.rise, health.fall),
        (Duration::from_millis(500), Duration::from_secs(1), 2, 3)
    );
    assert_eq!(db.connect_timeout, Duration::from_millis(250));
    assert_eq!(db.response_timeout, None);
    assert_eq!(db.retries, 0);
    assert_eq!(db.slow_start, Some(Duration::from_secs(90)));
    assert_eq!(
        db.outlier,
        Some(OutlierConfig {
            consecutive_failures: 7,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
            max_ejection_percent: 20,
        })
    );
    assert_eq!(db.max_in_flight, Some(100));
    assert_eq!(db.panic_threshold, 0);
    assert_eq!(db.dns_refresh, Duration::from_secs(60));

    let sticky = &config.services[1];
    assert_eq!(
        sticky.hash_key,
        Some(HashKey::ClientIp),
        "consistent_hash defaults to client_ip"
    );
    assert_eq!(
        sticky.outlier, None,
        "consecutive_failures = 0 turns outlier detection off"
    );
    let EndpointSource::Static(endpoints) = &sticky.endpoints else {
        panic!("static endpoints expected");
    };
    assert_eq!(endpoints[0].addr, "db1.internal:5432");
    assert_eq!(endpoints[0].weight, 1);
    assert_eq!(endpoints[0].socket_addr(), None, "a name is not a literal");
    assert_eq!(endpoints[1].weight, 0);
    assert_eq!(endpoints[1].socket_addr(), Some(addr("[::1]:5432")));

    assert_eq!(config.routes[0].host, Some(HostMatch::Suffix(".example.com".into())));
    assert_eq!(config.routes[0].path_prefix, None);
    assert_eq!(
        config.tcp,
        vec![TcpConfig {
            listen: addr("127.0.0.1:5432"),
            service: "db".into(),
            tls: false,
        }]
    );
    assert!(config.warnings.is_empty());
}

#[test]
fn hash_key_forms() {
    for (written, expected) in [
        ("client_ip", HashKey::ClientIp),
        ("path", HashKey::Path),
        ("header:X-Tenant", HashKey::Header("x-tenant".into())),
        ("cookie:SESSION", HashKey::Cookie("SESSION".into())),
    ] {
        let text = format!("{WEB}balance = \"consistent_hash\"\nhash_key = \"{written}\"\n");
        assert_eq!(
            parse_ok(&text).services[0].hash_key,
            Some(expected.clone()),
            "{written}"
        );
        assert_eq!(expected.to_string(), written.replace("X-Tenant", "x-tenant"));
    }
}

#[test]
fn every_policy_name_parses() {
    for policy in Balance::ALL {
        let text = format!("{WEB}balance = \"{policy}\"\n");
        assert_eq!(parse_ok(&text).services[0].balance, policy);
    }
}

#[test]
fn load_reads_a_file_and_names_a_missing_one() {
    let dir = std::env::temp_dir().join(format!("lb-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lb.toml");
    std::fs::write(&file, EXAMPLE).unwrap();
    let config = load(&file).unwrap();
    assert_eq!(config.services[0].name, "web");
    std::fs::remove_dir_all(&dir).unwrap();

    let missing = dir.join("missing.toml");
    let err = load(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string().starts_with(&format!("{}: ", missing.display())),
        "{err}"
    );
}

// --- errors: file, line, column and key ---

#[test]
fn unknown_policy_names_line_column_and_key() {
    let text = r#"[server]
listen = ["127.0.0.1:8080"]

[[services]]
name = "web"
endpoints = [{ addr = "127.0.0.1:9001" }]
balance = "round-robin"
"#;
    assert_eq!(
        parse_err(text),
        "web.toml:7:11: services[0].balance: unknown policy \"round-robin\" (expected one of round_robin, \
         least_conn, p2c, peak_ewma, random, consistent_hash)"
    );
}

#[test]
fn syntax_error_names_line_and_column() {
    let err = parse_err("[server]\nlisten = [\"127.0.0.1:8080\"\n");
    assert_eq!(
        err, "web.toml:3:1: invalid array: expected `]`",
        "one line, only the message"
    );
    let err = parse_err("[server]\nlisten == 1\n");
    assert_eq!(err, "web.toml:2:9: invalid string: expected `\"`, `'`");
}

#[test]
fn unknown_key_is_rejected_with_its_line() {
    let err = parse_err("[server]\nlisten = [\"127.0.0.1:8080\"]\nlisten_port = 8080\n");
    assert!(
        err.starts_with("web.toml:3:1: server.listen_port: unknown key `listen_port`"),
        "{err}"
    );
}

#[test]
fn unknown_top_level_table_is_rejected() {
    let err = parse_err(&format!("{WEB}\n[backend]\nx = 1\n"));
    assert!(
        err.starts_with("web.toml:5:2: backend: unknown key `backend`, expected one of"),
        "{err}"
    );
}

#[test]
fn unknown_key_in_inline_table_names_its_path() {
    let text = format!("{WEB}health = {{ path = \"/\", intervall = \"2s\" }}\n");
    let err = parse_err(&text);
    assert!(
        err.starts_with("web.toml:4:24: services[0].health.intervall: unknown key `intervall`"),
        "{err}"
    );
}

#[test]
fn unknown_key_in_dotted_table_names_its_path() {
    let text = format!("{WEB}health.path = \"/\"\nhealth.bogus = 1\n");
    let err = parse_err(&text);
    assert!(
        err.starts_with("web.toml:5:8: services[0].health.bogus: unknown key `bogus`"),
        "{err}"
    );
}

#[test]
fn unknown_key_in_second_endpoint() {
    let text = "[[services]]\nname = \"web\"\nendpoints = [\"127.0.0.1:1\", { addr = \"127.0.0.1:2\", wieght = 2 }]\n";
    let err = parse_err(text);
    assert!(
        err.starts_with("web.toml:3:53: services[0].endpoints[1].wieght: unknown key `wieght`"),
        "{err}"
    );
}

#[test]
fn wrong_type_names_the_key() {
    let err = parse_err(&format!("{WEB}retries = \"3\"\n"));
    assert!(
        err.starts_with("web.toml:4:11: services[0].retries: invalid type: string \"3\""),
        "{err}"
    );
}

#[test]
fn missing_name_points_at_the_service() {
    let err = parse_err(&format!("{WEB}[[services]]\nendpoints = [\"127.0.0.1:2\"]\n"));
    assert_eq!(err, "web.toml:4:1: services[1]: missing key `name`");
}

#[test]
fn route_to_unknown_service() {
    let err = parse_err(&format!("{WEB}[[routes]]\nhost = \"a.example\"\nservice = \"api\"\n"));
    assert_eq!(
        err,
        "web.toml:6:11: routes[0].service: unknown service \"api\" (defined: web)"
    );
}

#[test]
fn duplicate_service_names() {
    let err = parse_err(&format!("{WEB}{WEB}"));
    assert_eq!(
        err,
        "web.toml:5:8: services[1].name: duplicate service name \"web\" (first defined by services[0])"
    );
}

#[test]
fn hash_key_on_other_policy_is_a_warning() {
    let config = parse_ok(&format!("{WEB}balance = \"least_conn\"\nhash_key = \"path\"\n"));
    assert_eq!(config.services[0].hash_key, None);
    assert_eq!(
        config.warnings,
        vec![
            "web.toml:5:12: services[0].hash_key: ignored: hash_key applies only to balance = \"consistent_hash\" \
             (this service uses \"least_conn\")"
                .to_owned()
        ]
    );
}

#[test]
fn invalid_hash_key_form() {
    for written in ["header:", "cookie:a b", "ip", "header:x:y"] {
        let err = parse_err(&format!(
            "{WEB}balance = \"consistent_hash\"\nhash_key = \"{written}\"\n"
        ));
        assert_eq!(
            err,
            format!(
                "web.toml:5:12: services[0].hash_key: invalid hash_key {written:?} (expected client_ip, \
                 header:NAME, cookie:NAME or path)"
            )
        );
    }
    // The form is checked even when the policy ignores the key.
    let err = parse_err(&format!("{WEB}hash_key = \"ip\"\n"));
    assert!(
        err.starts_with("web.toml:4:12: services[0].hash_key: invalid hash_key \"ip\""),
        "{err}"
    );
}

#[test]
fn endpoints_and_endpoints_file_both() {
    let err = parse_err(&format!("{WEB}endpoints_file = \"web.toml\"\n"));
    assert_eq!(
        err,
        "web.toml:4:18: services[0].endpoints_file: set one of `endpoints`, `endpoints_file`, `docker` and `consul`, not several"
    );
}

#[test]
fn endpoints_and_endpoints_file_neither() {
    let err = parse_err("[server]\n\n[[services]]\nname = \"web\"\n");
    assert_eq!(
        err,
        "web.toml:3:1: services[0]: service \"web\" has no endpoints: set `endpoints`, `endpoints_file`, `docker` or `consul`"
    );
}

#[test]
fn empty_endpoint_list() {
    let err = parse_err("[[services]]\nname = \"web\"\nendpoints = []\n");
    assert_eq!(
        err,
        "web.toml:3:13: services[0].endpoints: no endpoints (list at least one, or use endpoints_file)"
    );
}

#[test]
fn weight_out_of_range() {
    let text = "[[services]]\nname = \"web\"\nendpoints = [{ addr = \"127.0.0.1:1\", weight = 70000 }]\n";
    assert_eq!(
        parse_err(text),
        "web.toml:3:47: services[0].endpoints[0].weight: weight 70000 is out of range (0..=65535)"
    );
    let text = "[[services]]\nname = \"web\"\nendpoints = [{ addr = \"127.0.0.1:1\", weight = -1 }]\n";
    assert!(parse_err(text).ends_with("weight -1 is out of range (0..=65535)"));
    let text = "[[services]]\nname = \"web\"\nendpoints = [{ addr = \"127.0.0.1:1\", weight = 65535 }]\n";
    parse_ok(text);
}

#[test]
fn bad_endpoint_addresses() {
    // The messages are discovery's (lb-discovery-static's EndpointSpec): one grammar.
    for (written, message) in [
        ("127.0.0.1", "expected `ip:port`"),
        ("web1:0", "the port is 0"),
        ("web1:http", "the port is not a number"),
        (":80", "the host is empty"),
        ("::1:80", "an IPv6 address must be written `[addr]:port`"),
        ("[::g]:80", "an IPv6 address must be written `[addr]:port`"),
        ("we b:80", "the host is not a valid name"),
        ("1.2.3.400:80", "looks like an IPv4 address but is not one"),
        ("-a:80", "the host is not a valid name"),
        ("a..b:80", "the host is not a valid name"),
    ] {
        let err = parse_err(&format!(
            "[[services]]\nname = \"web\"\nendpoints = [\"127.0.0.1:1\", \"{written}\"]\n"
        ));
        assert!(
            err.starts_with("web.toml:3:29: services[0].endpoints[1]: "),
            "{written}: {err}"
        );
        assert!(err.contains(message), "{written}: {err}");
    }
    let err = parse_err("[[services]]\nname = \"web\"\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n");
    assert!(
        err.contains("duplicate endpoint \"127.0.0.1:1\" (also services[0].endpoints[0])"),
        "{err}"
    );
    let err = parse_err("[[services]]\nname = \"web\"\nendpoints = [\"[::1]:80\", \"[0::1]:80\"]\n");
    assert!(
        err.contains("duplicate endpoint \"[0::1]:80\" (also services[0].endpoints[0])"),
        "{err}"
    );
}

#[test]
fn bad_listen_address() {
    let err = parse_err("[server]\nlisten = [\"127.0.0.1:8080\", \"localhost:80\"]\n");
    assert_eq!(
        err,
        "web.toml:2:29: server.listen[1]: invalid listen address \"localhost:80\" (expected IP:PORT, as in \
         \"127.0.0.1:8080\" or \"[::]:8080\")"
    );
    let err = parse_err("[server]\nlisten = \"8080\"\n");
    assert!(
        err.starts_with("web.toml:2:10: server.listen: invalid listen address \"8080\""),
        "{err}"
    );
    let err = parse_err("[server]\nlisten = []\n");
    assert!(
        err.starts_with("web.toml:2:10: server.listen: no listen address"),
        "{err}"
    );
}

#[test]
fn listen_address_used_twice() {
    let err = parse_err(&format!(
        "[admin]\nlisten = \"127.0.0.1:8080\"\n{WEB}[[tcp]]\nlisten = \"127.0.0.1:5432\"\nservice = \"web\"\n"
    ));
    assert_eq!(
        err,
        "web.toml:2:10: admin.listen: address 127.0.0.1:8080 is already used by server.listen"
    );
}

#[test]
fn rise_and_fall_zero() {
    let err = parse_err(&format!("{WEB}health = {{ path = \"/\", rise = 0 }}\n"));
    assert_eq!(
        err,
        "web.toml:4:31: services[0].health.rise: rise must be at least 1, not 0"
    );
    let err = parse_err(&format!("{WEB}[services.health]\ntcp = true\nfall = 0\n"));
    assert_eq!(
        err,
        "web.toml:6:8: services[0].health.fall: fall must be at least 1, not 0"
    );
}

#[test]
fn health_probe_kind() {
    let err = parse_err(&format!("{WEB}health = {{ path = \"/\", tcp = true }}\n"));
    assert!(
        err.starts_with("web.toml:4:30: services[0].health.tcp: set either `path`"),
        "{err}"
    );
    let err = parse_err(&format!("{WEB}health = {{ interval = \"1s\" }}\n"));
    assert!(err.starts_with("web.toml:4:10: services[0].health: no probe"), "{err}");
    let err = parse_err(&format!("{WEB}health = {{ path = \"healthz\" }}\n"));
    assert!(
        err.contains("services[0].health.path: probe path \"healthz\" must start with `/`"),
        "{err}"
    );
}

#[test]
fn tcp_to_unknown_service() {
    let err = parse_err(&format!(
        "{WEB}[[tcp]]\nlisten = \"127.0.0.1:5432\"\nservice = \"db\"\n"
    ));
    assert_eq!(
        err,
        "web.toml:6:11: tcp[0].service: unknown service \"db\" (defined: web)"
    );
    let err = parse_err("[[tcp]]\nlisten = \"127.0.0.1:5432\"\n");
    assert_eq!(err, "web.toml:1:1: tcp[0]: missing key `service`");
}

#[test]
fn non_loopback_admin_needs_auth() {
    let err = parse_err(&format!("{WEB}[admin]\nlisten = \"0.0.0.0:9090\"\n"));
    assert!(
        err.starts_with("web.toml:5:10: admin.listen: admin address 0.0.0.0:9090 is reachable from other hosts"),
        "{err}"
    );
    parse_ok(&format!("{WEB}[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"t\"\n"));
    parse_ok(&format!(
        "{WEB}[admin]\nlisten = \"[::]:9090\"\nuser = \"u\"\npassword = \"p\"\n"
    ));
    parse_ok(&format!("{WEB}[admin]\nlisten = \"[::1]:9090\"\n"));
    let err = parse_err(&format!("{WEB}[admin]\nlisten = \"0.0.0.0:9090\"\nuser = \"u\"\n"));
    assert_eq!(err, "web.toml:6:8: admin.user: `user` needs `password`");
}

#[test]
fn duration_errors_name_the_key() {
    let err = parse_err(&format!("{WEB}health = {{ path = \"/\", interval = \"2 seconds\" }}\n"));
    assert_eq!(
        err,
        "web.toml:4:35: services[0].health.interval: invalid duration \"2 seconds\" (expected a number and a unit: \
         ms, s, m or h, as in \"500ms\", \"2s\", \"1m30s\")"
    );
    let err = parse_err(&format!("{WEB}connect_timeout = 2\n"));
    assert_eq!(
        err,
        "web.toml:4:19: services[0].connect_timeout: invalid type: integer `2`, expected a duration string such as \
         \"500ms\", \"2s\" or \"1m\""
    );
    let err = parse_err("[server]\nheader_read_timeout = \"0s\"\n");
    assert_eq!(
        err,
        "web.toml:2:23: server.header_read_timeout: header_read_timeout must be longer than zero"
    );
}

#[test]
fn other_range_checks() {
    let err = parse_err(&format!("{WEB}panic_threshold = 150\n"));
    assert_eq!(
        err,
        "web.toml:4:19: services[0].panic_threshold: panic_threshold 150 is out of range (0..=100)"
    );
    let err = parse_err(&format!("{WEB}max_in_flight = 0\n"));
    assert!(
        err.starts_with("web.toml:4:17: services[0].max_in_flight: max_in_flight must be at least 1"),
        "{err}"
    );
    let err = parse_err(&format!(
        "{WEB}outlier = {{ base_ejection = \"1m\", max_ejection = \"10s\" }}\n"
    ));
    assert!(
        err.starts_with("web.toml:4:50: services[0].outlier.max_ejection: max_ejection (10s) is shorter"),
        "{err}"
    );
    let err = parse_err(&format!("{WEB}name = \"x\"\n"));
    assert_eq!(err, "web.toml:4:1: duplicate key `name` in table `services`");
}

#[test]
fn route_checks() {
    let err = parse_err(&format!(
        "{WEB}[[routes]]\nhost = \"a.example:80\"\nservice = \"web\"\n"
    ));
    assert_eq!(
        err,
        "web.toml:5:8: routes[0].host: host \"a.example:80\" must not include a port"
    );
    let err = parse_err(&format!("{WEB}[[routes]]\npath_prefix = \"api\"\nservice = \"web\"\n"));
    assert_eq!(
        err,
        "web.toml:5:15: routes[0].path_prefix: path_prefix \"api\" must start with `/`"
    );
    let err = parse_err(&format!(
        "{WEB}[[routes]]\nhost = \"A.example\"\nservice = \"web\"\n[[routes]]\nhost = \"a.example\"\nservice = \"web\"\n"
    ));
    assert_eq!(
        err,
        "web.toml:7:1: routes[1]: same host and path_prefix as routes[0]: this route could never match"
    );
}

#[test]
fn tls_checks() {
    let err = parse_err("[server.tls]\ncert = \"a.pem\"\n");
    assert_eq!(
        err,
        "web.toml:2:8: server.tls.cert: `cert` needs `key`, the private key file"
    );
    let err = parse_err("[server]\n[server.tls]\n");
    assert_eq!(
        err,
        "web.toml:2:1: server.tls: no certificate: set `cert` and `key`, `dir`, `env`, or add [[server.tls.certs]] entries"
    );
    let err = parse_err("[[server.tls.certs]]\ncert = \"a.pem\"\nkey = \"a.key\"\n");
    assert!(
        err.starts_with("web.toml:1:1: server.tls.certs[0].sni: list at least one server name"),
        "{err}"
    );
    let err = parse_err(
        "[[server.tls.certs]]\ncert = \"a.pem\"\nkey = \"a.key\"\nsni = [\"a.example\"]\n\
         [[server.tls.certs]]\ncert = \"b.pem\"\nkey = \"b.key\"\nsni = [\"b.example\", \"A.example\"]\n",
    );
    assert_eq!(
        err,
        "web.toml:8:21: server.tls.certs[1].sni[1]: server name \"A.example\" is already claimed by \
         server.tls.certs[0]"
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    let err = parse_err("# é\n[[services]]\nname = \"wéb\"\nendpoints = [\"127.0.0.1:1\"]\n");
    assert!(
        err.starts_with("web.toml:3:8: services[0].name: invalid service name \"wéb\""),
        "{err}"
    );
    let err = parse_err("[[services]]\nname = \"é\" ; endpoints = []\n");
    assert!(err.starts_with("web.toml:2:12:"), "{err}");
}

// --- helpers ---

#[test]
fn durations() {
    let ok = [
        ("0", Duration::ZERO),
        ("0s", Duration::ZERO),
        ("500ms", Duration::from_millis(500)),
        ("2s", Duration::from_secs(2)),
        ("1m", Duration::from_secs(60)),
        ("1h", Duration::from_secs(3600)),
        ("1m30s", Duration::from_secs(90)),
        ("1h2m3s4ms", Duration::from_millis(3_723_004)),
        ("1.5s", Duration::from_millis(1500)),
        ("0.25m", Duration::from_secs(15)),
        (".5s", Duration::from_millis(500)),
        ("1.0000000001s", Duration::new(1, 0)),
    ];
    for (text, expected) in ok {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
    }
    for text in [
        "", "2", "s", "2 s", "2sec", "-1s", "1.s", "1..5s", "2S", "1s ", "ms", "1d",
    ] {
        let err = parse_duration(text).unwrap_err();
        assert!(err.starts_with(&format!("invalid duration {text:?}")), "{text}: {err}");
    }
    for huge in [
        "99999999999999999999999h",
        "5124095576030431h",
        "8761h",
        "365.0001h0m8760h",
    ] {
        let err = parse_duration(huge).unwrap_err();
        assert!(err.contains("is too large (at most 365 days"), "{err}");
    }
    assert_eq!(parse_duration("8760h"), Ok(super::MAX_DURATION));
}

#[test]
fn durations_that_check_are_bounded_for_every_key() {
    // Each of these once passed `check` and then overflowed a timer at run time.
    for (table, key) in [
        ("[server]\n", "header_read_timeout"),
        ("[server]\n", "shutdown_grace"),
        ("[server]\n", "body_read_timeout"),
        ("[server]\n", "send_timeout"),
        ("[server]\n", "idle_timeout"),
    ] {
        let err = parse_err(&format!("{table}{key} = \"5124095576030431h\"\n{WEB}"));
        assert!(err.contains(&format!("server.{key}: duration")), "{err}");
        assert!(err.contains("too large"), "{err}");
    }
    for key in ["connect_timeout", "response_timeout", "slow_start", "dns_refresh"] {
        let err = parse_err(&format!("{WEB}{key} = \"5124095576030431h\"\n"));
        assert!(err.contains(&format!("services[0].{key}: duration")), "{err}");
    }
    let err = parse_err(&format!("{WEB}outlier = {{ base_ejection = \"5124095576030431h\" }}\n"));
    assert!(err.contains("services[0].outlier.base_ejection: duration"), "{err}");
    let err = parse_err(&format!("{WEB}health = {{ tcp = true, interval = \"9000h\" }}\n"));
    assert!(err.contains("services[0].health.interval: duration"), "{err}");
}

#[test]
fn docs_examples_parse() {
    let doc = include_str!("../../../docs/config.md");
    let blocks: Vec<&str> = doc
        .split("```toml\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or_default())
        .collect();
    assert_eq!(blocks.len(), 3, "docs/config.md has three toml examples");
    assert_eq!(blocks[0], EXAMPLE, "the first docs example is the one tested above");
    for block in blocks {
        let config = parse_ok(block);
        assert!(config.warnings.len() <= 1, "{:?}", config.warnings);
    }
}

#[test]
fn docker_docs_and_the_compose_example_parse() {
    for doc in [
        include_str!("../../../docs/docker.md"),
        include_str!("../../../docs/consul.md"),
        include_str!("../../../examples/compose/lb.toml"),
    ] {
        let blocks: Vec<&str> = if doc.contains("```toml") {
            doc.split("```toml\n")
                .skip(1)
                .map(|rest| rest.split("```").next().unwrap_or_default())
                .collect()
        } else {
            vec![doc]
        };
        assert!(!blocks.is_empty());
        for block in blocks {
            let config = parse_ok(block);
            assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        }
    }
}

// --- providers ---

#[test]
fn the_docker_provider_keys_parse_as_written() {
    let config = parse_ok(
        r#"
[[providers]]
kind = "docker"
endpoint = "unix:///var/run/docker.sock"
label_prefix = "lb"
exposed_by_default = false
network = "appnet"
address = "container"
default_host = "{service}.docker.localhost"
compat = ["traefik"]

[[services]]
name = "whoami"
docker = { service = "whoami" }
"#,
    );
    let [ProviderConfig::Docker(d)] = &config.providers[..] else {
        panic!("one docker provider expected: {:?}", config.providers)
    };
    assert_eq!(d.endpoint.as_deref(), Some("unix:///var/run/docker.sock"));
    assert_eq!(d.network.as_deref(), Some("appnet"));
    assert!(!d.published && d.traefik && !d.exposed_by_default);
    assert_eq!(d.default_host.as_deref(), Some("{service}.docker.localhost"));
    assert_eq!(d.linger, Duration::from_secs(10));
    assert_eq!(
        config.services[0].endpoints,
        EndpointSource::Docker {
            service: "whoami".into()
        }
    );
    let published = parse_ok("[[providers]]\nkind = \"docker\"\naddress = \"published\"\nhost_ip = \"10.1.2.3\"\n");
    let [ProviderConfig::Docker(d)] = &published.providers[..] else {
        panic!()
    };
    assert!(d.published);
    assert_eq!(d.host_ip.to_string(), "10.1.2.3");
}

#[test]
fn bad_provider_keys_name_the_key() {
    let cases = [
        (
            "kind = \"k8s\"\n",
            "web.toml:2:8: providers[0].kind: unknown provider kind \"k8s\"",
        ),
        (
            "kind = \"docker\"\nendpoint = \"ssh://host\"\n",
            "web.toml:3:12: providers[0].endpoint: invalid docker endpoint \"ssh://host\"",
        ),
        (
            "kind = \"docker\"\naddress = \"host\"\n",
            "web.toml:3:11: providers[0].address: unknown address mode \"host\"",
        ),
        (
            "kind = \"docker\"\ncompat = [\"nginx\"]\n",
            "web.toml:3:11: providers[0].compat[0]: unknown compat \"nginx\"",
        ),
        (
            "kind = \"docker\"\ndefault_host = \"{service}:80\"\n",
            "web.toml:3:16: providers[0].default_host: host \"svc:80\" must not include a port",
        ),
        (
            "kind = \"docker\"\nport = 1\n",
            "web.toml:3:1: providers[0].port: unknown key `port`",
        ),
    ];
    for (body, want) in cases {
        let err = parse_err(&format!("[[providers]]\n{body}"));
        assert!(err.starts_with(want), "{body}: got {err}, want {want}");
    }
    let err = parse_err("[[providers]]\nkind = \"docker\"\n[[providers]]\nkind = \"docker\"\n");
    assert!(
        err.starts_with("web.toml:4:8: providers[1].kind: a second docker provider"),
        "{err}"
    );
    let err = parse_err("[[services]]\nname = \"w\"\ndocker = { service = \"a b\" }\n");
    assert!(err.starts_with("web.toml:3:"), "{err}");
    assert!(
        err.contains("services[0].docker.service: invalid service name"),
        "{err}"
    );
}

// --- issue 8: limits, secrets, empty files, upgrades, linear checks ---

#[test]
fn server_limits_and_their_defaults() {
    let config = parse_ok(WEB);
    let s = &config.server;
    assert_eq!(
        (s.body_read_timeout, s.send_timeout, s.idle_timeout),
        (
            Duration::from_secs(30),
            Duration::from_secs(30),
            Duration::from_secs(60)
        )
    );
    assert_eq!(s.max_connections, None, "derived from the fd limit at start");
    assert_eq!(s.forwarded, Forwarded::Append);
    let config = parse_ok(&format!(
        "[server]\nbody_read_timeout = \"5s\"\nsend_timeout = \"7s\"\nidle_timeout = \"2m\"\n\
         max_connections = 1000\nforwarded = \"replace\"\n{WEB}"
    ));
    let s = &config.server;
    assert_eq!(
        (s.body_read_timeout, s.send_timeout, s.idle_timeout),
        (Duration::from_secs(5), Duration::from_secs(7), Duration::from_secs(120))
    );
    assert_eq!(s.max_connections, Some(1000));
    assert_eq!(s.forwarded, Forwarded::Replace);
    for (text, message) in [
        (
            "max_connections = 0",
            "server.max_connections: max_connections must be at least 1",
        ),
        (
            "max_connections = -3",
            "server.max_connections: max_connections -3 is out of range",
        ),
        (
            "forwarded = \"keep\"",
            "server.forwarded: unknown forwarded mode \"keep\"",
        ),
        (
            "send_timeout = \"0s\"",
            "server.send_timeout: send_timeout must be longer than zero",
        ),
        (
            "idle_timeout = \"0\"",
            "server.idle_timeout: idle_timeout must be longer than zero",
        ),
        (
            "body_read_timeout = \"0ms\"",
            "server.body_read_timeout: body_read_timeout must be longer than zero",
        ),
    ] {
        let err = parse_err(&format!("[server]\n{text}\n{WEB}"));
        assert!(err.contains(message), "{text}: {err}");
    }
}

#[test]
fn admin_secrets_are_checked_and_never_echoed() {
    // As written in TOML, and the part of it a message must not show.
    for (written, secret) in [
        (r#""   ""#, ""),
        (r#""\t""#, ""),
        (r#"" padded""#, "padded"),
        (r#""padded ""#, "padded"),
        (r#""a\u0007b""#, "a\u{7}b"),
    ] {
        let err = parse_err(&format!("{WEB}[admin]\ntoken = {written}\n"));
        assert!(err.contains("admin.token: "), "{written}: {err}");
        assert!(
            secret.is_empty() || !err.contains(secret),
            "the token {written} is echoed: {err}"
        );
    }
    let err = parse_err(&format!("{WEB}[admin]\nuser = \"u\"\npassword = \"  \"\n"));
    assert!(err.contains("admin.password: empty password"), "{err}");
    // A value of the wrong type is quoted by serde: never for a secret.
    let err = parse_err(&format!("{WEB}[admin]\ntoken = 987654321\n"));
    assert!(err.contains("admin.token: ") && !err.contains("987654321"), "{err}");
    let err = parse_err(&format!("{WEB}[admin]\nuser = \"u\"\npassword = 13579246\n"));
    assert!(err.contains("admin.password: ") && !err.contains("13579246"), "{err}");
    let err = parse_err(&format!("{WEB}[admin]\nuser = \"u\"\npassword = [\"hunter2\"]\n"));
    assert!(!err.contains("hunter2"), "{err}");
    // And Debug, which a log line may print, hides both.
    let config = parse_ok(&format!(
        "{WEB}[admin]\ntoken = \"tok-3141\"\nuser = \"u\"\npassword = \"pw-2718\"\n"
    ));
    let shown = format!("{config:?}");
    assert!(!shown.contains("tok-3141") && !shown.contains("pw-2718"), "{shown}");
}

#[test]
fn an_empty_file_is_not_an_explicitly_empty_one() {
    for text in ["", "\n", "[server]\nlisten = \"127.0.0.1:0\"\n"] {
        let config = parse_ok(text);
        assert!(config.is_empty() && !config.empty_on_purpose, "{text:?}");
    }
    let config = parse_ok("services = []\n");
    assert!(config.is_empty() && config.empty_on_purpose);
    assert!(!parse_ok(WEB).is_empty());
    let err = parse_err("services = []\n[[services]]\nname = \"web\"\n");
    assert!(err.starts_with("web.toml:"), "{err}");
}

#[test]
fn routes_name_the_upgrades_they_pass() {
    let config = parse_ok(&format!("{WEB}[[routes]]\nservice = \"web\"\n"));
    assert_eq!(config.routes[0].upgrades, ["websocket"], "WebSocket by default");
    let config = parse_ok(&format!(
        "{WEB}[[routes]]\nservice = \"web\"\nupgrades = [\"WebSocket\", \"x-echo\", \"websocket\"]\n"
    ));
    assert_eq!(config.routes[0].upgrades, ["websocket", "x-echo"]);
    let config = parse_ok(&format!("{WEB}[[routes]]\nservice = \"web\"\nupgrades = []\n"));
    assert!(config.routes[0].upgrades.is_empty());
    let err = parse_err(&format!(
        "{WEB}[[routes]]\nservice = \"web\"\nupgrades = [\"websocket\", \"h2c\"]\n"
    ));
    assert!(
        err.contains("routes[0].upgrades[1]: h2c upgrades are never passed"),
        "{err}"
    );
    let err = parse_err(&format!(
        "{WEB}[[routes]]\nservice = \"web\"\nupgrades = [\"web socket\"]\n"
    ));
    assert!(err.contains("invalid upgrade protocol"), "{err}");
}

#[test]
fn check_and_discovery_accept_the_same_endpoint_addresses() {
    // Every address `check` accepts, discovery accepts too, and the reverse.
    for addr in [
        "10.0.0.1:80",
        "[::1]:80",
        "web1:80",
        "Web-1.example.com:8080",
        "web_1:80",
        "web1.:80",
        "1.2.3.400:80",
        "-a:80",
        "a-:80",
        "a..b:80",
        "[::1]:0",
        "a:65536",
        "256.1.1.1:1",
        &format!("{}:80", "a".repeat(64)),
    ] {
        let checked = parse(
            &format!("[[services]]\nname = \"w\"\nendpoints = [\"{addr}\"]\n"),
            Path::new("w.toml"),
        )
        .is_ok();
        let discovered = lb_discovery_static::EndpointSpec::new(addr).validate().is_ok();
        assert_eq!(
            checked, discovered,
            "{addr}: check says {checked}, discovery {discovered}"
        );
    }
}

#[test]
fn checks_are_linear_in_the_size_of_the_file() {
    // 20,000 endpoints, 4,000 services and 4,000 routes: quadratic duplicate checks took
    // seconds for less; hash maps take milliseconds, even unoptimised.
    let mut text = String::from("[[services]]\nname = \"big\"\nendpoints = [");
    for i in 0..20_000u32 {
        text.push_str(&format!("\"10.{}.{}.{}:80\", ", i >> 16, (i >> 8) & 255, i & 255));
    }
    text.push_str("]\n");
    for i in 0..4_000 {
        text.push_str(&format!(
            "[[services]]\nname = \"s{i}\"\nendpoints = [\"s{i}.internal:80\"]\nhash_key = \"path\"\n\
             [[routes]]\nhost = \"s{i}.example.com\"\nservice = \"s{i}\"\n"
        ));
    }
    let t = std::time::Instant::now();
    let config = parse_ok(&text);
    let took = t.elapsed();
    assert_eq!(config.services.len(), 4_001);
    assert_eq!(
        config.warnings.len(),
        4_000,
        "each ignored hash_key is placed in the file"
    );
    assert!(took < Duration::from_secs(10), "checking took {took:?}");
    // A duplicate at the very end is still found, and named.
    text.push_str("[[routes]]\nhost = \"s3999.example.com\"\nservice = \"s1\"\n");
    let err = parse_err(&text);
    assert!(err.contains("same host and path_prefix as routes[3999]"), "{err}");
}

#[test]
fn the_consul_keys_parse_as_written() {
    let config = parse_ok(
        r#"
[[services]]
name = "web"
consul = { address = "http://127.0.0.1:8500", service = "web", tag = ["v2"], statuses = ["passing"], token = "secret", dc = "dc1" }

[[providers]]
kind = "consul"
address = "http://127.0.0.1:8500"
tag_prefix = "lb"
default_host = "{service}.consul.localhost"
"#,
    );
    let EndpointSource::Consul(src) = &config.services[0].endpoints else {
        panic!("a consul source: {:?}", config.services[0].endpoints)
    };
    assert_eq!(src.address.as_deref(), Some("http://127.0.0.1:8500"));
    assert_eq!((src.service.as_str(), &src.tags[..]), ("web", &["v2".to_string()][..]));
    assert_eq!(src.statuses, [lb_discovery_consul::Status::Passing]);
    assert_eq!((src.token.as_deref(), src.dc.as_deref()), (Some("secret"), Some("dc1")));
    assert!(!format!("{src:?}").contains("secret"), "the token is redacted in Debug");
    let [ProviderConfig::Consul(p)] = &config.providers[..] else {
        panic!("one consul provider: {:?}", config.providers)
    };
    assert_eq!(p.tag_prefix, "lb");
    assert_eq!(p.default_host.as_deref(), Some("{service}.consul.localhost"));
    // Both kinds side by side.
    let both = parse_ok("[[providers]]\nkind = \"docker\"\n[[providers]]\nkind = \"consul\"\n");
    assert_eq!(both.providers.len(), 2);
}

#[test]
fn bad_consul_keys_name_the_key_and_never_the_token() {
    let svc = |body: &str| parse_err(&format!("[[services]]\nname = \"w\"\nconsul = {{ {body} }}\n"));
    let err = svc("address = \"ftp://x\", service = \"a\"");
    assert!(
        err.contains("services[0].consul.address: invalid Consul address"),
        "{err}"
    );
    let err = svc("statuses = [\"critical\"], service = \"a\"");
    assert!(
        err.contains("services[0].consul.statuses[0]: unknown status \"critical\""),
        "{err}"
    );
    let err = svc("tag = \"v2\"");
    assert!(err.contains("services[0].consul: missing key `service`"), "{err}");
    let err = svc("service = \"a\", token = \" hunter2 \"");
    assert!(
        err.contains("services[0].consul.token") && !err.contains("hunter2"),
        "{err}"
    );
    let err = svc("service = \"a\", consistency = \"eventual\"");
    assert!(err.contains("unknown consistency \"eventual\""), "{err}");
    let err = parse_err("[[services]]\nname = \"w\"\nendpoints = [\"127.0.0.1:1\"]\nconsul = { service = \"a\" }\n");
    assert!(err.contains("services[0].consul: set one of"), "{err}");
    let err = parse_err("[[providers]]\nkind = \"consul\"\nnetwork = \"x\"\n");
    assert!(
        err.contains("providers[0].network: `network` is a docker provider key"),
        "{err}"
    );
    let err = parse_err("[[providers]]\nkind = \"docker\"\ntag_prefix = \"x\"\n");
    assert!(
        err.contains("providers[0].tag_prefix: `tag_prefix` is a consul provider key"),
        "{err}"
    );
    let err = parse_err("[[providers]]\nkind = \"consul\"\n[[providers]]\nkind = \"consul\"\n");
    assert!(err.contains("a second consul provider"), "{err}");
}

// --- HTTPS: listeners side by side, redirects, certificates, ACME ---

/// Plain and TLS listeners, with a redirect and ACME, as the HTTPS docs write them.
const HTTPS: &str = r#"[server]
listen = ["127.0.0.1:80"]
tls_listen = ["127.0.0.1:443"]
redirect_https = true
hsts = "max-age=31536000; includeSubDomains"

[acme]
directory_ca = "ca.pem"
email = "ops@example.com"

[[services]]
name = "shop"
endpoints = ["127.0.0.1:9001"]

[[routes]]
host = "shop.example.com"
service = "shop"
acme = true

[[routes]]
host = "legacy.example.com"
service = "shop"
redirect_https = false
"#;

#[test]
fn plain_and_tls_listeners_side_by_side_with_acme() {
    let config = parse(HTTPS, Path::new("/etc/lb/lb.toml")).unwrap();
    assert_eq!(config.server.listen, vec![addr("127.0.0.1:80")]);
    assert_eq!(config.server.tls_listen, vec![addr("127.0.0.1:443")]);
    assert!(config.server.redirect_https);
    assert_eq!(
        config.server.hsts.as_deref(),
        Some("max-age=31536000; includeSubDomains")
    );
    let acme = config.acme.as_ref().expect("[acme]");
    assert_eq!(acme.directory, "https://acme-v02.api.letsencrypt.org/directory");
    assert_eq!(acme.directory_ca.as_deref(), Some(Path::new("/etc/lb/ca.pem")));
    assert_eq!(acme.storage, PathBuf::from("/etc/lb/acme"));
    assert_eq!(acme.challenges, vec![AcmeChallenge::Http01, AcmeChallenge::TlsAlpn01]);
    assert!(config.routes[0].acme);
    assert_eq!(config.routes[1].redirect_https, Some(false));
    assert_eq!(
        crate::tls::acme_names(&config).into_iter().collect::<Vec<_>>(),
        vec!["shop.example.com".to_string()]
    );
}

#[test]
fn https_keys_are_checked_and_named() {
    let err = parse_err("[server]\ntls_listen = [\"127.0.0.1:8443\"]\n");
    assert!(
        err.starts_with("web.toml:2:14: server.tls_listen: HTTPS listeners need certificates"),
        "{err}"
    );
    let err = parse_err("[server]\nredirect_https = true\n");
    assert!(
        err.contains("server.redirect_https: redirect_https needs tls_listen"),
        "{err}"
    );
    let err = parse_err("[server]\nhsts = true\n");
    assert!(
        err.contains("server.hsts: hsts is sent on HTTPS responses only"),
        "{err}"
    );
    let err = parse_err(
        "[server]\ntls_listen = \"127.0.0.1:8443\"\nhsts = \"max-age=soon\"\n[server.tls]\ncert = \"a\"\nkey = \"b\"\n",
    );
    assert!(
        err.contains("server.hsts: invalid hsts \"max-age=soon\": bad max-age"),
        "{err}"
    );
    let with_tls = "[server]\ntls_listen = \"127.0.0.1:8443\"\n[server.tls]\ncert = \"a\"\nkey = \"b\"\n";
    let err = parse_err(&format!(
        "{with_tls}{WEB}[[routes]]\nhost = \"a.example\"\nservice = \"web\"\nacme = true\n"
    ));
    assert!(
        err.contains("routes[0].acme: acme = true needs an [acme] section"),
        "{err}"
    );
    let err = parse_err(&format!(
        "{with_tls}[acme]\n{WEB}[[routes]]\nhost = \"*.a.example\"\nservice = \"web\"\nacme = true\n"
    ));
    assert!(err.contains("routes[0].acme: acme = true needs an exact host"), "{err}");
    let err = parse_err("[acme]\n");
    assert!(err.contains("acme: [acme] needs an HTTPS listener"), "{err}");
    let err = parse_err(&format!("{with_tls}[acme]\ndirectory = \"http://acme.test/dir\"\n"));
    assert!(err.contains("acme.directory: invalid directory"), "{err}");
    let err = parse_err(&format!("{with_tls}[acme]\nnames = [\"*.example.com\"]\n"));
    assert!(
        err.contains("acme.names[0]: a wildcard certificate needs the dns-01 challenge"),
        "{err}"
    );
    let err = parse_err(&format!("{with_tls}[acme]\nchallenges = [\"dns-01\"]\n"));
    assert!(
        err.contains("acme.challenges[0]: unknown challenge \"dns-01\""),
        "{err}"
    );
    // Every listener is HTTPS without tls_listen: http-01 has nowhere to be answered.
    let err = parse_err("[server.tls]\ncert = \"a\"\nkey = \"b\"\n[acme]\nchallenges = [\"http-01\"]\n");
    assert!(
        err.contains("acme.challenges[0]: http-01 is answered on a plain HTTP listener"),
        "{err}"
    );
    let legacy = parse_ok("[server.tls]\ncert = \"a\"\nkey = \"b\"\n[acme]\n");
    assert_eq!(legacy.acme.unwrap().challenges, vec![AcmeChallenge::TlsAlpn01]);
    let err = parse_err(&format!(
        "{WEB}[[tcp]]\nlisten = \"127.0.0.1:5000\"\nservice = \"web\"\ntls = true\n"
    ));
    assert!(err.contains("tcp[0].tls: tls = true needs certificates"), "{err}");
    let err = parse_err("[server]\ntls_listen = \"127.0.0.1:8080\"\n[server.tls]\ncert = \"a\"\nkey = \"b\"\n");
    assert!(
        err.contains("server.tls_listen: address 127.0.0.1:8080 is already used by server.listen"),
        "{err}"
    );
    let err = parse_err("[server.tls]\nenv = \"SSL-CERT\"\n");
    assert!(err.contains("server.tls.env: invalid variable name"), "{err}");
}

#[test]
fn https_endpoints_turn_on_tls_to_the_service() {
    let config = parse_ok(
        "[[services]]\nname = \"api\"\nendpoints = [\"https://127.0.0.1:9443\", \"https://api.internal:443/\"]\n",
    );
    let api = &config.services[0];
    assert_eq!(
        api.tls,
        Some(BackendTls {
            ca_file: None,
            server_name: None
        })
    );
    let EndpointSource::Static(list) = &api.endpoints else {
        panic!("static endpoints");
    };
    assert_eq!(list[1].addr, "api.internal:443", "scheme and slash taken off");
    let config = parse_ok(
        "[[services]]\nname = \"api\"\nendpoints = [\"10.0.0.1:443\"]\ntls = true\ntls_ca = \"ca.pem\"\ntls_server_name = \"API.internal\"\n",
    );
    assert_eq!(
        config.services[0].tls,
        Some(BackendTls {
            ca_file: Some(PathBuf::from("ca.pem")),
            server_name: Some("api.internal".into())
        })
    );
    let err = parse_err("[[services]]\nname = \"api\"\nendpoints = [\"https://10.0.0.1:443\", \"10.0.0.2:80\"]\n");
    assert!(
        err.contains("services[0].endpoints[1]: mixed https:// and plain endpoints"),
        "{err}"
    );
    let err = parse_err("[[services]]\nname = \"api\"\nendpoints = [\"10.0.0.1:443\"]\ntls_ca = \"ca.pem\"\n");
    assert!(
        err.contains("services[0].tls_ca: `tls_ca` applies to endpoints over TLS"),
        "{err}"
    );
    let err = parse_err("[[services]]\nname = \"api\"\nendpoints = [\"ftp://10.0.0.1:21\"]\n");
    assert!(err.contains("unknown scheme \"ftp\""), "{err}");
}
