//! Property tests (proptest) over what takes untrusted text: the config loader, and the
//! Host parser and router. They run with the normal suite, for a bounded number of cases
//! (`PROPTEST_CASES` raises it for a longer local run).
//!
//! Each case must not panic, and what it accepts must hold up at run time: bounded
//! durations, endpoint addresses that discovery accepts too, one-line errors.

use std::path::Path;

use proptest::prelude::*;

use crate::config::{self, EndpointSource, MAX_DURATION};
use crate::host;
use crate::router::Router;

/// A config that uses most keys, for mutation.
const SEED: &str = r#"[server]
listen = ["127.0.0.1:8080"]
max_body_bytes = 1024
header_read_timeout = "5s"
body_read_timeout = "1m"
send_timeout = "30s"
idle_timeout = "1m30s"
max_connections = 100
forwarded = "append"
shutdown_grace = "10s"
[admin]
listen = "127.0.0.1:9090"
token = "secret"
[[services]]
name = "web"
balance = "consistent_hash"
hash_key = "header:x-user"
endpoints = [{ addr = "127.0.0.1:9001", weight = 3 }, "web1.internal:80", "[::1]:9003"]
health = { path = "/healthz", interval = "2s", timeout = "1s", rise = 2, fall = 3 }
response_timeout = "10s"
outlier = { consecutive_failures = 5, base_ejection = "10s", max_ejection = "300s" }
[[routes]]
host = "*.example.com"
path_prefix = "/api/"
service = "web"
upgrades = ["websocket"]
[[tcp]]
listen = "127.0.0.1:5432"
service = "web"
"#;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256)
}

/// What a config that loads must hold to.
fn check_loaded(cfg: &config::Config) {
    let s = &cfg.server;
    for d in [
        s.header_read_timeout,
        s.body_read_timeout,
        s.send_timeout,
        s.idle_timeout,
        s.shutdown_grace,
    ] {
        assert!(d <= MAX_DURATION, "{d:?}");
    }
    for svc in &cfg.services {
        let mut all = vec![svc.connect_timeout, svc.dns_refresh];
        all.extend(svc.response_timeout);
        all.extend(svc.slow_start);
        if let Some(o) = &svc.outlier {
            all.extend([o.base_ejection, o.max_ejection]);
        }
        if let Some(h) = &svc.health {
            all.extend([h.interval, h.timeout]);
        }
        for d in all {
            assert!(d <= MAX_DURATION, "{}: {d:?}", svc.name);
        }
        if let EndpointSource::Static(list) = &svc.endpoints {
            for e in list {
                assert!(
                    lb_discovery_static::EndpointSpec::new(e.addr.clone())
                        .validate()
                        .is_ok(),
                    "check accepted {:?}, which discovery refuses",
                    e.addr
                );
            }
        }
    }
    for r in &cfg.routes {
        assert!(!r.upgrades.iter().any(|u| u == "h2c"));
    }
}

fn load(text: &str) {
    match config::parse(text, Path::new("fuzz.toml")) {
        Ok(cfg) => check_loaded(&cfg),
        Err(e) => {
            let line = e.to_string();
            assert!(line.starts_with("fuzz.toml"), "{line}");
            assert!(!line.contains('\n'), "an error is one line: {line:?}");
        }
    }
}

/// `SEED` with a few bytes changed, inserted or removed.
fn mutated() -> impl Strategy<Value = String> {
    let edit = (
        0..SEED.len(),
        0u8..3,
        any::<u8>(),
        prop::sample::select(&b"0123456789hms.\"=[]{},:#\n x-"[..]),
    );
    prop::collection::vec(edit, 1..6).prop_map(|edits| {
        let mut bytes = SEED.as_bytes().to_vec();
        for (at, kind, raw, typical) in edits {
            let at = at.min(bytes.len());
            let b = if raw % 2 == 0 { typical } else { raw };
            match kind {
                0 if at < bytes.len() => bytes[at] = b,
                1 => bytes.insert(at, b),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A duration as a user might write one, sensible or not.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,22}(ms|s|m|h)",
        "[0-9]{1,6}\\.[0-9]{1,20}(ms|s|m|h)",
        "([0-9]{1,12}(ms|s|m|h)){1,4}",
        ".{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn the_loader_never_panics_on_any_text(text in ".{0,400}") {
        load(&text);
    }

    #[test]
    fn a_mutated_config_loads_or_fails_cleanly(text in mutated()) {
        load(&text);
    }

    #[test]
    fn durations_that_load_are_bounded(d in duration_text(), key in prop::sample::select(&[
        "header_read_timeout", "body_read_timeout", "send_timeout", "idle_timeout", "shutdown_grace",
    ][..])) {
        let text = format!("[server]\n{key} = {d:?}\n[[services]]\nname = \"w\"\nendpoints = [\"127.0.0.1:1\"]\n");
        load(&text);
        let text = format!("[[services]]\nname = \"w\"\nendpoints = [\"127.0.0.1:1\"]\noutlier = {{ base_ejection = {d:?}, max_ejection = {d:?} }}\n");
        load(&text);
    }

    #[test]
    fn check_and_discovery_agree_on_endpoint_addresses(addr in prop_oneof![
        "[a-z0-9._-]{0,20}:[0-9]{0,6}",
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,4}:[0-9]{1,5}",
        "\\[[0-9a-f:]{0,12}\\]:[0-9]{1,5}",
        ".{0,24}",
    ]) {
        let text = format!("[[services]]\nname = \"w\"\nendpoints = [{addr:?}]\n");
        let checked = config::parse(&text, Path::new("fuzz.toml")).is_ok();
        let discovered = lb_discovery_static::EndpointSpec::new(addr.clone()).validate().is_ok();
        // A string TOML cannot hold as written fails to parse either way.
        if toml::from_str::<toml::Value>(&text).is_ok() {
            prop_assert_eq!(checked, discovered, "{:?}", addr);
        }
    }

    #[test]
    fn the_host_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        let valid = host::valid_authority(&bytes);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let name = host::route_name(text);
            prop_assert!(text.starts_with(name));
            if valid {
                prop_assert!(!text.contains('@') && !text.contains(' ') && !text.is_empty());
            }
        }
        if let Ok(v) = http::HeaderValue::from_bytes(&bytes) {
            let req = http::Request::get("/").header(http::header::HOST, v).body(()).expect("req");
            prop_assert_eq!(host::authority(&req).is_ok(), valid);
        }
    }

    #[test]
    fn routes_match_any_spelling_of_their_host(
        name in "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9-]{0,10}){0,3}",
        upper in prop::collection::vec(any::<bool>(), 0..48),
        dot in any::<bool>(),
        port in prop::option::of(1u16..),
        path in "/[a-z/]{0,12}",
        other in "[a-z]{1,12}\\.[a-z]{1,8}",
    ) {
        let router = Router::new([
            (Some(name.clone()), None, 0),
            (Some(format!("*.{name}")), None, 1),
            (None, Some("/".to_string()), 2),
        ]);
        let spelled: String = name
            .chars()
            .zip(upper.iter().chain(std::iter::repeat(&false)))
            .map(|(c, &u)| if u { c.to_ascii_uppercase() } else { c })
            .collect();
        let mut host = spelled.clone();
        if dot {
            host.push('.');
        }
        if let Some(p) = port {
            host.push_str(&format!(":{p}"));
        }
        prop_assert_eq!(router.route(Some(&host), &path), Some(0), "{}", host);
        prop_assert_eq!(router.route(Some(&format!("x.{host}")), &path), Some(1));
        if other != name && !other.ends_with(&format!(".{name}")) {
            prop_assert_eq!(router.route(Some(&other), &path), Some(2));
        }
        // Never a panic, whatever the path and host.
        let _ = router.route(Some(&path), &host);
    }
}
