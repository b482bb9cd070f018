//! lb-proxy against the Consul emulator: services from Consul by blocking queries, health
//! followed, weights, the node address, index rewinds, Consul down, catalog mode, and two
//! proxies agreeing on consistent hashing.
//!
//! The emulator runs in this process on loopback; the proxy is the real binary; the
//! backends are small HTTP servers on loopback that answer with their name.

#[path = "support/docker.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_consul_emulator::Emulator;
use serde_json::json;
use support::{get, wait_for, Proxy, Run};

const LIMIT: Duration = Duration::from_secs(20);

/// An HTTP/1.1 backend on its own thread answering every request with `name`.
fn backend(name: &str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let name = name.to_string();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let name = name.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = c.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let rsp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}", name.len());
                        if c.write_all(rsp.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

struct Consul {
    rt: tokio::runtime::Runtime,
    emu: Emulator,
}

impl Consul {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let emu = rt.block_on(Emulator::start());
        Self { rt, emu }
    }

    /// Registers instance `id` of `service` at `addr` (address left out when `node_addr`),
    /// with a passing check `<id>-check`.
    fn register(&self, service: &str, id: &str, addr: SocketAddr, extra: serde_json::Value) {
        let mut body = json!({"ID": id, "Name": service, "Address": addr.ip().to_string(), "Port": addr.port(),
                              "Check": {"CheckID": format!("{id}-check"), "TTL": "1h", "Status": "passing"}});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                if v.is_null() {
                    b.remove(k);
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        self.emu.register("agent-a", body).expect("registration");
    }
}

/// The answers to `n` GETs through the proxy with `host` (and an optional header).
fn answers(proxy: &Proxy, host: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let (code, body) = get(proxy.listen, "/", Some(host)).unwrap_or_else(|| panic!("request {i}: no answer"));
            assert_eq!(code, 200, "request {i}: {body}");
            body
        })
        .collect()
}

fn spread(answers: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a.clone()).or_default() += 1;
    }
    m
}

fn service_config(consul: &Consul, extra: &str) -> String {
    format!(
        "[[services]]\nname = \"web\"\nconsul = {{ address = \"{}\", service = \"api\"{extra} }}\n\
         [[routes]]\nservice = \"web\"\n",
        consul.emu.url()
    )
}

#[test]
fn consul_instances_are_balanced_and_follow_health() {
    let consul = Consul::start();
    let run = Run::new("consul-health");
    for name in ["a", "b", "c"] {
        consul.register("api", name, backend(name), json!({}));
    }
    let proxy = Proxy::start(&run, &service_config(&consul, ""));
    wait_for("three instances", LIMIT, || proxy.endpoint_ids("web").len() == 3);
    assert_eq!(proxy.endpoint_ids("web"), ["agent-a/a", "agent-a/b", "agent-a/c"]);
    assert_eq!(proxy.service("web").unwrap()["source"], "file");
    let got = spread(&answers(&proxy, "x", 30));
    assert_eq!(got.values().copied().collect::<Vec<_>>(), [10, 10, 10], "{got:?}");

    // b turns critical: out within one blocking round trip (the change answers the
    // parked query), with no reload.
    let generation = proxy.status()["generation"].as_u64();
    consul.emu.set_check("agent-a", "b-check", "critical", "down");
    let t0 = Instant::now();
    wait_for("b out", LIMIT, || {
        proxy.endpoint_ids("web") == ["agent-a/a", "agent-a/c"]
    });
    assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());
    assert!(!answers(&proxy, "x", 10).iter().any(|a| a == "b"));
    consul.emu.set_check("agent-a", "b-check", "passing", "");
    wait_for("b back", LIMIT, || proxy.endpoint_ids("web").len() == 3);
    assert_eq!(
        proxy.status()["generation"].as_u64(),
        generation,
        "endpoint changes rebuild nothing"
    );

    // The watch is on the status page's data and in /metrics.
    let consul_src = &proxy.status()["sources"]["consul"][0];
    assert_eq!(consul_src["watching"], "api");
    assert!(consul_src["last_index"].as_u64().unwrap() > 0);
    let metrics = get(proxy.admin, "/metrics", None).unwrap().1;
    assert!(metrics.contains("lb_consul_watch_up{agent="), "{metrics}");
}

#[test]
fn weights_and_the_node_address() {
    let consul = Consul::start();
    let run = Run::new("consul-weights");
    consul.register(
        "api",
        "heavy",
        backend("heavy"),
        json!({"Weights": {"Passing": 3, "Warning": 1}}),
    );
    // No Service.Address: the node's (agent-a is 127.0.0.1) is dialled.
    consul.register("api", "light", backend("light"), json!({"Address": null}));
    let proxy = Proxy::start(&run, &service_config(&consul, ""));
    wait_for("two instances", LIMIT, || proxy.endpoint_ids("web").len() == 2);
    let light = proxy.service("web").unwrap()["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "agent-a/light")
        .cloned()
        .unwrap();
    assert!(light["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    let got = spread(&answers(&proxy, "x", 40));
    assert_eq!((got["heavy"], got["light"]), (30, 10), "weights 3:1 over whole cycles");
}

#[test]
fn an_index_rewind_is_survived() {
    let consul = Consul::start();
    let run = Run::new("consul-rewind");
    consul.register("api", "a", backend("a"), json!({}));
    let proxy = Proxy::start(&run, &service_config(&consul, ""));
    wait_for("one instance", LIMIT, || proxy.endpoint_ids("web").len() == 1);
    consul.rt.block_on(consul.emu.wait_parked(1));
    consul.emu.rewind_index(2);
    consul.register("api", "b", backend("b"), json!({}));
    wait_for("the instance registered after the rewind", LIMIT, || {
        proxy.endpoint_ids("web").len() == 2
    });
    assert_eq!(spread(&answers(&proxy, "x", 4)).len(), 2);
}

#[test]
fn consul_down_for_30_s_keeps_serving_and_catches_up() {
    let consul = Consul::start();
    let run = Run::new("consul-down");
    for name in ["a", "b", "c"] {
        consul.register("api", name, backend(name), json!({}));
    }
    let proxy = Arc::new(Proxy::start(&run, &service_config(&consul, "")));
    wait_for("three instances", LIMIT, || proxy.endpoint_ids("web").len() == 3);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (proxy, stop, ok, failed) = (proxy.clone(), stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(90);
            for _ in 0..1_000_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match get(proxy.listen, "/", Some("x")) {
                    Some((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    consul.rt.block_on(consul.emu.stop());
    let down_at = Instant::now();
    // A change while Consul is away: nobody can tell the proxy yet.
    consul.emu.set_check("agent-a", "c-check", "critical", "down");
    wait_for("the watch failing", LIMIT, || {
        proxy.status()["sources"]["consul"][0]["consecutive_failures"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    });
    let served_during = ok.load(Ordering::Relaxed);
    wait_for("30 s of outage", Duration::from_secs(40), || {
        down_at.elapsed() >= Duration::from_secs(30)
    });
    assert_eq!(
        proxy.endpoint_ids("web").len(),
        3,
        "the last set is kept while Consul is down"
    );
    assert!(ok.load(Ordering::Relaxed) > served_during + 100, "and served");
    consul.rt.block_on(consul.emu.resume());
    wait_for("the change made meanwhile applied", Duration::from_secs(45), || {
        proxy.endpoint_ids("web") == ["agent-a/a", "agent-a/b"]
    });
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests over the outage");
}

#[test]
fn catalog_mode_makes_routes_from_tags() {
    let consul = Consul::start();
    let run = Run::new("consul-catalog");
    let proxy = Proxy::start(
        &run,
        &format!(
            "[[providers]]\nkind = \"consul\"\naddress = \"{}\"\ntag_prefix = \"lb\"\n\
             default_host = \"{{service}}.consul.localhost\"\nlinger = \"500ms\"\n",
            consul.emu.url()
        ),
    );
    let shop = backend("shop");
    consul.register(
        "shop",
        "shop-1",
        shop,
        json!({"Tags": ["lb.enable=true", "lb.balance=least_conn"]}),
    );
    consul.register("db", "db-1", backend("db"), json!({}));
    wait_for("the tagged service", LIMIT, || proxy.service("shop").is_some());
    let svc = proxy.service("shop").unwrap();
    assert_eq!(svc["source"], "consul");
    assert_eq!(svc["policy"], "least_conn");
    assert_eq!(svc["routes"], json!(["shop.consul.localhost"]));
    assert!(proxy.service("db").is_none(), "untagged: not a service");
    wait_for("the route answering", LIMIT, || {
        get(proxy.listen, "/", Some("shop.consul.localhost")).is_some_and(|(c, b)| c == 200 && b == "shop")
    });
    // The tag goes: 503 for the linger, then 404.
    consul.register("shop", "shop-1", shop, json!({"Tags": []}));
    wait_for("404 once the service is gone", LIMIT, || {
        get(proxy.listen, "/", Some("shop.consul.localhost")).is_some_and(|(c, _)| c == 404)
    });
    assert!(proxy.service("shop").is_none());
}

#[test]
fn two_proxies_on_one_consul_hash_every_key_alike() {
    let consul = Consul::start();
    let (run_a, run_b) = (Run::new("consul-hash-a"), Run::new("consul-hash-b"));
    for name in ["a", "b", "c"] {
        consul.register("api", name, backend(name), json!({}));
    }
    let cfg = service_config(&consul, "").replace(
        "name = \"web\"\n",
        "name = \"web\"\nbalance = \"consistent_hash\"\nhash_key = \"header:x-user\"\n",
    );
    let (pa, pb) = (Proxy::start(&run_a, &cfg), Proxy::start(&run_b, &cfg));
    for p in [&pa, &pb] {
        wait_for("three instances", LIMIT, || p.endpoint_ids("web").len() == 3);
    }
    let ask = |p: &Proxy, key: usize| -> String {
        let mut s = std::net::TcpStream::connect(p.listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET / HTTP/1.1\r\nhost: x\r\nx-user: user-{key}\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    };
    let map = |p: &Proxy| (0..1000).map(|k| ask(p, k)).collect::<Vec<_>>();
    let (a1, b1) = (map(&pa), map(&pb));
    assert_eq!(a1, b1, "both proxies send every key to the same instance");
    assert_eq!(spread(&a1).len(), 3);
    // An instance joins: both move the same keys, and only some.
    consul.register("api", "d", backend("d"), json!({}));
    for p in [&pa, &pb] {
        wait_for("four instances", LIMIT, || p.endpoint_ids("web").len() == 4);
    }
    let (a2, b2) = (map(&pa), map(&pb));
    assert_eq!(a2, b2, "still the same instance for every key after the join");
    let moved = a1.iter().zip(&a2).filter(|(x, y)| x != y).count();
    assert!(
        (100..=450).contains(&moved),
        "{moved} of 1000 keys moved (about a quarter expected)"
    );
    assert!(
        a2.iter().zip(&a1).all(|(now, before)| now == before || now == "d"),
        "keys move only to the new instance"
    );
}
