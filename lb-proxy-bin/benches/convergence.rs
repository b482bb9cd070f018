//! Discovery convergence against the real Docker Engine: how soon traffic follows
//! containers.
//!
//! ```text
//! cargo bench -p lb-proxy-bin --bench convergence            # 20 runs each
//! RUNS=50 cargo bench -p lb-proxy-bin --bench convergence
//! ```
//!
//! - **start**: from `docker run -d` returning to the first request the new container
//!   serves through the proxy (requests sent back to back on fresh connections);
//! - **stop**: from `docker stop` returning to the last request the container serves
//!   (negative when it served its last before `stop` returned, the usual case: `die`
//!   arrives first), and from `docker stop` being called to the proxy dropping the
//!   endpoint;
//! - failed requests during the whole run (retries on another endpoint should hide every
//!   stop).
//!
//! The proxy is the bench-profile `lb-proxy` binary with a Docker provider; one container
//! stays up throughout so that the service exists. Loads are bounded in count and time
//! and go to loopback only.

#[path = "../tests/support/docker.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

const HOST: &str = "web.docker.test";
const LIMIT: Duration = Duration::from_secs(20);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` asks for the list of benchmarks: none to run as a test.
        return;
    }
    if !engine() {
        return;
    }
    let runs: usize = std::env::var("RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let run = Run::new("converge");
    let labels = [
        "--label",
        "lb.enable=true",
        "--label",
        "lb.service=web",
        "--no-healthcheck",
    ];
    run.run("anchor", &labels, &[]);
    let proxy = Arc::new(Proxy::start(
        &run,
        "[[providers]]\nkind = \"docker\"\ndefault_host = \"{service}.docker.test\"\n",
    ));
    wait_for("the anchor container", LIMIT, || proxy.endpoint_ids("web").len() == 1);

    // Requests back to back on a thread of their own, each recorded with its time.
    let log: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (proxy, log, failed, stop) = (proxy.clone(), log.clone(), failed.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            for _ in 0..5_000_000u64 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match proxy.get_host(HOST, "/") {
                    Some((200, body)) => {
                        if let Some(h) = hostname(&body) {
                            log.lock().unwrap().push((Instant::now(), h));
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    let (mut starts, mut stops, mut removals) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let name = run.name(&format!("c{i}"));
        let t_run = {
            let mut args = vec!["run", "-d", "--name", &name];
            let label = format!("{RUN_LABEL}={}", run.id);
            args.extend(["--label", &label]);
            args.extend(labels);
            args.push(image());
            docker(&args);
            Instant::now()
        };
        let host = container_hostname(&name);
        let first = wait_served(&log, &host, t_run);
        starts.push(first.duration_since(t_run).as_secs_f64() * 1e3);

        let t_call = Instant::now();
        docker(&["stop", "-t", "5", &name]);
        let t_returned = Instant::now();
        let id = format!("{name}:80");
        wait_for("the endpoint dropped", LIMIT, || {
            !proxy.endpoint_ids("web").contains(&id)
        });
        removals.push(t_call.elapsed().as_secs_f64() * 1e3);
        // Let the load run on a little, so a late request would show.
        std::thread::sleep(Duration::from_millis(100));
        let last = log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(_, h)| *h == host)
            .map(|(t, _)| *t)
            .expect("it served at least once");
        let ms = if last >= t_returned {
            last.duration_since(t_returned).as_secs_f64() * 1e3
        } else {
            -(t_returned.duration_since(last).as_secs_f64() * 1e3)
        };
        stops.push(ms);
        docker(&["rm", "-f", &name]);
        log.lock().unwrap().clear();
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    println!("docker convergence over {runs} runs (ms)");
    report("start: docker run returned -> first request served", &mut starts);
    report("stop: docker stop returned -> last request served", &mut stops);
    report("stop: docker stop called -> endpoint removed", &mut removals);
    println!("failed requests during the run: {}", failed.load(Ordering::Relaxed));
}

/// The time of the first request `host` served after `after`.
fn wait_served(log: &Mutex<Vec<(Instant, String)>>, host: &str, after: Instant) -> Instant {
    let mut found = None;
    wait_for("a request served by the new container", LIMIT, || {
        found = log
            .lock()
            .unwrap()
            .iter()
            .find(|(t, h)| *t >= after && h == host)
            .map(|(t, _)| *t);
        found.is_some()
    });
    found.expect("found")
}

fn report(what: &str, ms: &mut [f64]) {
    ms.sort_by(|a, b| a.total_cmp(b));
    let median = ms[ms.len() / 2];
    let max = ms[ms.len() - 1];
    let min = ms[0];
    println!("{what}: median {median:.1}, min {min:.1}, max {max:.1}");
}
