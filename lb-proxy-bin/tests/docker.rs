//! lb-proxy against the real Docker Engine: containers come and go, traffic follows.
//!
//! Each test builds (once) an image from the `lb-proxy` binary under test, starts labelled
//! containers running its `whoami` backend, runs the real proxy binary with a Docker
//! provider, and sends requests to loopback only. Everything a test creates carries the
//! label `lbtest.run=<id>` and is removed when the test ends, passed or failed.
//!
//! With no engine these tests skip loudly; with `LB_REQUIRE_DOCKER=1` (CI) they fail.

#[path = "support/docker.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const LIMIT: Duration = Duration::from_secs(20);

/// The provider section most tests use: lb labels, a default host per service.
const PROVIDER: &str = "[[providers]]\nkind = \"docker\"\ndefault_host = \"{service}.docker.test\"\n";

fn labels<'a>(service: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut out = vec!["lb.enable=true".to_string(), format!("lb.service={service}")];
    out.extend(extra.iter().map(|s| s.to_string()));
    out
}

/// `--label k=v` pairs for `docker run`, plus `--no-healthcheck` unless `health`.
fn run_args(labels: &[String], health: bool) -> Vec<String> {
    let mut args = Vec::new();
    for l in labels {
        args.push("--label".to_string());
        args.push(l.clone());
    }
    if !health {
        args.push("--no-healthcheck".to_string());
    }
    args
}

fn start(run: &Run, short: &str, labels: &[String], health: bool) -> String {
    let args = run_args(labels, health);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run.run(short, &args, &[])
}

/// Hostnames answering `n` requests to `host`, in order; panics on a failed request.
fn hostnames(proxy: &Proxy, host: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let (code, body) = proxy
                .get_host(host, "/")
                .unwrap_or_else(|| panic!("request {i} to {host} got no answer"));
            assert_eq!(code, 200, "request {i} to {host}: {body}");
            hostname(&body).expect("a whoami answer")
        })
        .collect()
}

fn wait_endpoints(proxy: &Proxy, service: &str, n: usize) {
    wait_for(&format!("{n} endpoints in {service}"), LIMIT, || {
        proxy.endpoint_ids(service).len() == n
    });
}

#[test]
fn containers_are_balanced_round_robin_and_scaling_follows() {
    if !engine() {
        return;
    }
    let _one = serial();
    let run = Run::new("rr");
    let names: Vec<String> = (1..=3)
        .map(|i| start(&run, &format!("web-{i}"), &labels("web", &[]), false))
        .collect();
    let proxy = Proxy::start(&run, PROVIDER);
    wait_endpoints(&proxy, "web", 3);
    let svc = proxy.service("web").unwrap();
    assert_eq!(svc["source"], "docker");
    assert_eq!(svc["routes"], serde_json::json!(["web.docker.test"]));
    let ids = proxy.endpoint_ids("web");
    let want: Vec<String> = names.iter().map(|n| format!("{n}:80")).collect();
    assert_eq!(ids, want, "endpoint ids are container name and port");

    // Exact round robin: every window of three requests sees the three containers.
    let seen = hostnames(&proxy, "web.docker.test", 30);
    let expected: BTreeSet<String> = names.iter().map(|n| container_hostname(n)).collect();
    for window in seen.chunks(3) {
        let got: BTreeSet<String> = window.iter().cloned().collect();
        assert_eq!(got, expected, "one request each per cycle: {seen:?}");
    }

    // Scale to five: the new ones get traffic, with no reload and the balancer kept.
    let generation = proxy.status()["generation"].as_u64().unwrap();
    let more: Vec<String> = (4..=5)
        .map(|i| start(&run, &format!("web-{i}"), &labels("web", &[]), false))
        .collect();
    wait_endpoints(&proxy, "web", 5);
    let seen: BTreeSet<String> = hostnames(&proxy, "web.docker.test", 10).into_iter().collect();
    for n in &more {
        assert!(seen.contains(&container_hostname(n)), "{n} gets traffic: {seen:?}");
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(
        proxy.status()["generation"].as_u64().unwrap(),
        generation,
        "new containers of a known service rebuild nothing"
    );
}

#[test]
fn kill_and_stop_under_load_fail_no_request() {
    if !engine() {
        return;
    }
    let _one = serial();
    let run = Run::new("load");
    let names: Vec<String> = (1..=4)
        .map(|i| start(&run, &format!("web-{i}"), &labels("web", &[]), false))
        .collect();
    let proxy = Arc::new(Proxy::start(&run, PROVIDER));
    wait_endpoints(&proxy, "web", 4);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (proxy, stop, ok, failed, failures) = (
                proxy.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
                failures.clone(),
            );
            std::thread::spawn(move || {
                // Bounded in count and time.
                let deadline = Instant::now() + Duration::from_secs(60);
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    match proxy.get_host("web.docker.test", "/") {
                        Some((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            failures.lock().unwrap().push(format!("{other:?}"));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    let served = |n: u64| {
        let start = ok.load(Ordering::Relaxed);
        move |ok: &AtomicU64| ok.load(Ordering::Relaxed) >= start + n
    };
    let enough = served(100);
    wait_for("traffic before the kill", LIMIT, || enough(&ok));
    docker(&["kill", &names[0]]);
    wait_endpoints(&proxy, "web", 3);
    let enough = served(100);
    wait_for("traffic after the kill", LIMIT, || enough(&ok));
    docker(&["stop", "-t", "5", &names[1]]);
    wait_endpoints(&proxy, "web", 2);
    let enough = served(100);
    wait_for("traffic after the stop", LIMIT, || enough(&ok));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests: {:?} (of {} served)",
        failures.lock().unwrap(),
        ok.load(Ordering::Relaxed)
    );
    let left: BTreeSet<String> = hostnames(&proxy, "web.docker.test", 6).into_iter().collect();
    let want: BTreeSet<String> = names[2..].iter().map(|n| container_hostname(n)).collect();
    assert_eq!(left, want);
}

#[test]
fn healthcheck_status_takes_containers_out_and_back() {
    if !engine() {
        return;
    }
    let _one = serial();
    let run = Run::new("health");
    // The image's HEALTHCHECK probes /healthz, which whoami fails while /health says "down".
    let a = start(&run, "a", &labels("web", &[]), true);
    let b = start(&run, "b", &labels("web", &[]), true);
    let proxy = Proxy::start(&run, PROVIDER);
    wait_endpoints(&proxy, "web", 2);
    let down = std::env::temp_dir().join(format!("{}-down", run.id));
    let up = std::env::temp_dir().join(format!("{}-up", run.id));
    std::fs::write(&down, "down\n").unwrap();
    std::fs::write(&up, "up\n").unwrap();
    docker(&["cp", down.to_str().unwrap(), &format!("{a}:/health")]);
    wait_for("the unhealthy container out", LIMIT, || {
        proxy.endpoint_ids("web") == [format!("{b}:80")]
    });
    let only: BTreeSet<String> = hostnames(&proxy, "web.docker.test", 4).into_iter().collect();
    assert_eq!(only, BTreeSet::from([container_hostname(&b)]));
    docker(&["cp", up.to_str().unwrap(), &format!("{a}:/health")]);
    wait_endpoints(&proxy, "web", 2);
    let both: BTreeSet<String> = hostnames(&proxy, "web.docker.test", 4).into_iter().collect();
    assert_eq!(both.len(), 2);
    let _ = std::fs::remove_file(down);
    let _ = std::fs::remove_file(up);
}

#[test]
fn the_network_label_chooses_the_address() {
    if !engine() {
        return;
    }
    let _one = serial();
    let run = Run::new("net");
    let front = run.network("front");
    let back = run.network("back");
    let net_label = format!("lb.network={back}");
    let args = run_args(&labels("web", &[&net_label]), false);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--network", &front]);
    let c = run.run("web", &args, &[]);
    docker(&["network", "connect", &back, &c]);
    let back_ip = docker(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{back}\").IPAddress}}}}"),
        &c,
    ]);
    assert!(!back_ip.is_empty());
    let proxy = Proxy::start(&run, PROVIDER);
    wait_for("the endpoint on the back network", LIMIT, || {
        proxy
            .service("web")
            .is_some_and(|s| s["endpoints"][0]["addr"].as_str() == Some(format!("{back_ip}:80").as_str()))
    });
    assert_eq!(hostnames(&proxy, "web.docker.test", 2)[0], container_hostname(&c));
}

#[test]
fn published_mode_dials_the_host_binding() {
    if !engine() {
        return;
    }
    let _one = serial();
    let run = Run::new("pub");
    let args = run_args(&labels("web", &[]), false);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["-p", "127.0.0.1::80"]);
    let c = run.run("web", &args, &[]);
    let binding = docker(&["port", &c, "80/tcp"]);
    let port = binding
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .unwrap()
        .to_string();
    let proxy = Proxy::start(&run, &format!("{PROVIDER}address = \"published\"\n"));
    wait_for("the published endpoint", LIMIT, || {
        proxy
            .service("web")
            .is_some_and(|s| s["endpoints"][0]["addr"].as_str() == Some(format!("127.0.0.1:{port}").as_str()))
    });
    assert_eq!(hostnames(&proxy, "web.docker.test", 2)[0], container_hostname(&c));
}

#[test]
fn traefik_labels_work_unchanged() {
    if !engine() {
        return;
    }
    let _one = serial();
    let run = Run::new("traefik");
    let v1 = start(
        &run,
        "v1",
        &[
            "traefik.enable=true".to_string(),
            "traefik.backend=legacy".to_string(),
            "traefik.port=80".to_string(),
            "traefik.frontend.rule=Host:legacy.example.test".to_string(),
        ],
        false,
    );
    let v2 = start(
        &run,
        "v2",
        &[
            "traefik.enable=true".to_string(),
            "traefik.http.services.modern.loadbalancer.server.port=80".to_string(),
            "traefik.http.routers.modern.rule=Host(`modern.example.test`) && PathPrefix(`/api`)".to_string(),
        ],
        false,
    );
    let proxy = Proxy::start(&run, &format!("{PROVIDER}compat = [\"traefik\"]\n"));
    wait_endpoints(&proxy, "legacy", 1);
    wait_endpoints(&proxy, "modern", 1);
    assert_eq!(hostnames(&proxy, "legacy.example.test", 1)[0], container_hostname(&v1));
    let (code, body) = proxy.get_host("modern.example.test", "/api/x").unwrap();
    assert_eq!((code, hostname(&body)), (200, Some(container_hostname(&v2))));
    let (code, _) = proxy.get_host("modern.example.test", "/other").unwrap();
    assert_eq!(code, 404, "the router's PathPrefix holds");
}

#[test]
fn bad_labels_skip_the_container_with_one_warning() {
    if !engine() {
        return;
    }
    let _one = serial();
    let run = Run::new("bad");
    let good = start(&run, "good", &labels("web", &[]), false);
    let bad = start(&run, "bad", &labels("web", &["lb.weight=heavy"]), false);
    let proxy = Proxy::start(&run, PROVIDER);
    wait_endpoints(&proxy, "web", 1);
    assert_eq!(proxy.endpoint_ids("web"), [format!("{good}:80")]);
    wait_for("the warning", LIMIT, || {
        let log = proxy.log_text();
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(&bad) && l.contains("lb.weight"))
    });
    // Discovery goes on: a good container started later joins.
    let later = start(&run, "later", &labels("web", &[]), false);
    wait_endpoints(&proxy, "web", 2);
    assert!(proxy.endpoint_ids("web").contains(&format!("{later}:80")));
    let warnings = proxy
        .log_text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&bad))
        .count();
    assert_eq!(warnings, 1, "one warning, not one per event:\n{}", proxy.log_text());
}

#[test]
fn a_service_whose_last_container_left_lingers_then_goes() {
    if !engine() {
        return;
    }
    let _one = serial();
    let run = Run::new("linger");
    let c = start(&run, "web", &labels("web", &[]), false);
    let proxy = Proxy::start(&run, &format!("{PROVIDER}linger = \"1500ms\"\n"));
    wait_endpoints(&proxy, "web", 1);
    assert_eq!(proxy.get_host("web.docker.test", "/").unwrap().0, 200);
    docker(&["rm", "-f", &c]);
    wait_for("503 while the service lingers", LIMIT, || {
        proxy
            .get_host("web.docker.test", "/")
            .is_some_and(|(code, _)| code == 503)
    });
    wait_for("404 once it is gone", LIMIT, || {
        proxy
            .get_host("web.docker.test", "/")
            .is_some_and(|(code, _)| code == 404)
    });
    assert!(proxy.service("web").is_none());
}

#[test]
fn a_file_service_reads_docker_by_service_name() {
    if !engine() {
        return;
    }
    let _one = serial();
    let run = Run::new("file");
    let svc = format!("{}-whoami", run.id);
    let c = start(&run, "w", &labels(&svc, &[]), false);
    // No provider: the file names the Docker service; its own policy and route.
    let proxy = Proxy::start(
        &run,
        &format!(
            "[[services]]\nname = \"app\"\nbalance = \"least_conn\"\ndocker = {{ service = \"{svc}\" }}\n\
             [[routes]]\nservice = \"app\"\n"
        ),
    );
    wait_endpoints(&proxy, "app", 1);
    let s = proxy.service("app").unwrap();
    assert_eq!(
        (s["source"].as_str(), s["policy"].as_str()),
        (Some("file"), Some("least_conn"))
    );
    assert_eq!(hostnames(&proxy, "anything", 1)[0], container_hostname(&c));
    assert!(proxy.service(&svc).is_none(), "no provider: no service of its own");
}

#[test]
fn churn_leaves_metrics_at_their_size() {
    if !engine() {
        return;
    }
    let _one = serial();
    let run = Run::new("churn");
    let keep = start(&run, "keep", &labels("web", &[]), false);
    let proxy = Proxy::start(&run, &format!("{PROVIDER}linger = \"0s\"\n"));
    wait_endpoints(&proxy, "web", 1);
    let metrics = || get(proxy.admin, "/metrics", None).expect("metrics").1;
    let _ = hostnames(&proxy, "web.docker.test", 2);
    let baseline = metrics().lines().count();
    // 200 start/stop cycles: containers of `web` and services of their own, each served
    // once, then gone.
    for i in 0..200 {
        let (service, host) = if i % 2 == 0 {
            ("web".to_string(), "web.docker.test".to_string())
        } else {
            let s = format!("tmp{i}");
            let h = format!("{s}.docker.test");
            (s, h)
        };
        let c = start(&run, &format!("c{i}"), &labels(&service, &[]), false);
        let want = format!("{c}:80");
        wait_for("the new container", LIMIT, || {
            proxy.endpoint_ids(&service).contains(&want)
        });
        let hn = container_hostname(&c);
        wait_for("a request served by it", LIMIT, || {
            proxy
                .get_host(&host, "/")
                .is_some_and(|(code, body)| code == 200 && hostname(&body).as_deref() == Some(&hn))
        });
        // A scrape while it is there, so its series exist.
        let _ = metrics();
        docker(&["rm", "-f", &c]);
        wait_for("the container gone", LIMIT, || {
            !proxy.endpoint_ids(&service).contains(&want)
        });
    }
    wait_for("only the kept container's service", LIMIT, || {
        proxy.status()["services"].as_array().map(Vec::len) == Some(1)
    });
    let _ = hostnames(&proxy, "web.docker.test", 2);
    let after = metrics();
    let mut per_family: BTreeMap<&str, usize> = BTreeMap::new();
    for l in after.lines().filter(|l| !l.starts_with('#')) {
        *per_family.entry(l.split(['{', ' ']).next().unwrap()).or_default() += 1;
    }
    assert!(
        after.lines().count() <= baseline + 8,
        "metrics grew from {baseline} to {} lines: {per_family:?}",
        after.lines().count()
    );
    assert!(!after.contains("tmp1"), "series of gone services are dropped");
    assert_eq!(proxy.endpoint_ids("web"), [format!("{keep}:80")]);
}

/// A unix socket in front of the engine's, which the test can cut and restore: every
/// connection through it is closed on `cut`, and new ones are refused until `restore`.
struct Gate {
    path: std::path::PathBuf,
    open: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<std::os::unix::net::UnixStream>>>,
}

impl Gate {
    fn new(run: &Run, open: bool) -> Self {
        use std::os::unix::net::{UnixListener, UnixStream};
        let engine = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(String::from))
            .unwrap_or_else(|| "/var/run/docker.sock".to_string());
        let path = std::env::temp_dir().join(format!("{}.sock", run.id));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind the gate");
        let gate = Self {
            path,
            open: Arc::new(AtomicBool::new(open)),
            conns: Arc::default(),
        };
        let (is_open, conns) = (gate.open.clone(), gate.conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                if !is_open.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(upstream) = UnixStream::connect(&engine) else {
                    continue;
                };
                let mut list = conns.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(upstream.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        gate
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.cut();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn docker_source(proxy: &Proxy) -> serde_json::Value {
    proxy.status()["sources"]["docker"].clone()
}

#[test]
fn a_cut_events_stream_resyncs_and_keeps_the_last_set_meanwhile() {
    if !engine() {
        return;
    }
    let _one = serial();
    let run = Run::new("cut");
    let gate = Gate::new(&run, true);
    let a = start(&run, "a", &labels("web", &[]), false);
    let b = start(&run, "b", &labels("web", &[]), false);
    let proxy = Proxy::start(&run, &format!("{PROVIDER}endpoint = \"{}\"\n", gate.endpoint()));
    wait_endpoints(&proxy, "web", 2);
    let relists = docker_source(&proxy)["relists"].as_u64().unwrap();

    gate.cut();
    wait_for("the source marked stale", LIMIT, || {
        docker_source(&proxy)["stale"] == true
    });
    // While the daemon is unreachable, a container stops: nobody can tell the proxy, and it
    // keeps serving the last known set rather than emptying anything.
    docker(&["stop", "-t", "1", &a]);
    assert_eq!(proxy.endpoint_ids("web").len(), 2, "the last known set is kept");
    assert_eq!(
        hostnames(&proxy, "web.docker.test", 4).len(),
        4,
        "and served (retries skip the dead one)"
    );

    gate.restore();
    wait_for("the resync dropping the stopped container", LIMIT, || {
        proxy.endpoint_ids("web") == [format!("{b}:80")]
    });
    let src = docker_source(&proxy);
    assert_eq!(src["stale"], false);
    assert!(src["relists"].as_u64().unwrap() > relists, "{src}");
    assert!(src["errors"].as_u64().unwrap() >= 1, "{src}");
    // And events flow again: a new container joins without another cut.
    let c = start(&run, "c", &labels("web", &[]), false);
    wait_for("the new container after the resync", LIMIT, || {
        proxy.endpoint_ids("web").contains(&format!("{c}:80"))
    });
}

#[test]
fn docker_down_at_start_serves_file_services_and_docker_services_appear_later() {
    if !engine() {
        return;
    }
    let _one = serial();
    let run = Run::new("down");
    let gate = Gate::new(&run, false);
    let c = start(&run, "web", &labels("web", &[]), false);
    // A file service next to the provider: it must serve while Docker is unreachable.
    let file_backend = start(&run, "static", &["x=1".to_string()], false);
    let ip = docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &file_backend]);
    let proxy = Proxy::start(
        &run,
        &format!(
            "{PROVIDER}endpoint = \"{}\"\n[[services]]\nname = \"static\"\nendpoints = [\"{ip}:80\"]\n\
             [[routes]]\nhost = \"static.test\"\nservice = \"static\"\n",
            gate.endpoint()
        ),
    );
    assert_eq!(
        hostnames(&proxy, "static.test", 2)[0],
        container_hostname(&file_backend)
    );
    let src = docker_source(&proxy);
    assert_eq!(
        (src["reachable"].as_bool(), src["synced"].as_bool()),
        (Some(false), Some(false)),
        "{src}"
    );
    assert!(proxy.service("web").is_none());
    gate.restore();
    wait_endpoints(&proxy, "web", 1);
    assert_eq!(hostnames(&proxy, "web.docker.test", 1)[0], container_hostname(&c));
}

#[test]
fn fifty_new_services_at_once_cost_a_handful_of_rebuilds() {
    if !engine() {
        return;
    }
    let _one = serial();
    let run = Run::new("burst");
    let proxy = Proxy::start(&run, PROVIDER);
    wait_for("the docker source synced", LIMIT, || {
        proxy.status()["sources"]["docker"]["synced"] == true
    });
    let before = proxy.status()["generation"].as_u64().unwrap();
    let started = Instant::now();
    let run = Arc::new(run);
    let workers: Vec<_> = (0..5)
        .map(|w| {
            let run = run.clone();
            std::thread::spawn(move || {
                for i in (0..50).filter(|i| i % 5 == w) {
                    start(&run, &format!("s{i}"), &labels(&format!("burst{i}"), &[]), false);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    wait_for("all 50 services", Duration::from_secs(60), || {
        proxy.status()["services"].as_array().map(Vec::len) == Some(50)
    });
    let elapsed = started.elapsed();
    let rebuilds = proxy.status()["generation"].as_u64().unwrap() - before;
    // At most one rebuild per second of burst (plus the first and the last).
    assert!(
        rebuilds <= elapsed.as_secs() + 2 && rebuilds < 25,
        "{rebuilds} rebuilds for 50 new services over {elapsed:?}"
    );
    let (code, body) = proxy.get_host("burst49.docker.test", "/").unwrap();
    assert_eq!(code, 200, "{body}");
}
