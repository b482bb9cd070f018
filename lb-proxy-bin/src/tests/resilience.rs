//! Failures and changes under traffic: an endpoint killed mid-run, a reload swapping
//! endpoints, graceful shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_core::Health;

use super::support::{
    bounded, client, endpoints, eventually, free_port, get, head, health, one_service, proxy, proxy_at, ready, Backend,
    TempDir,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_endpoint_is_ejected_and_no_get_fails() {
    bounded(async {
        let [a, b, c] = [
            Backend::start("a").await,
            Backend::start("b").await,
            Backend::start("c").await,
        ];
        let b = Arc::new(b);
        let p = proxy(&one_service("round_robin", &[&a, &b, &c], None, "")).await;
        ready(&p, "web", 3).await;
        let addr = p.http_addrs[0];
        // Two keep-alive clients, 150 GETs each taking a few ms, so the kill (after 50
        // requests) finds pooled connections to B, some with a request in flight.
        let sent = Arc::new(AtomicUsize::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let loops: Vec<_> = (0..2)
            .map(|_| {
                let (b, sent, killed) = (b.clone(), sent.clone(), killed.clone());
                tokio::spawn(async move {
                    let cl = client();
                    let mut failures = Vec::new();
                    let mut after_kill: HashMap<String, usize> = HashMap::new();
                    for i in 0..150 {
                        if sent.fetch_add(1, Ordering::SeqCst) == 50 {
                            // Kill B while the other client has a request on it.
                            let t = Instant::now();
                            while b.in_flight() == 0 && t.elapsed() < Duration::from_secs(2) {
                                tokio::task::yield_now().await;
                            }
                            assert!(b.in_flight() > 0, "B got no request to kill in flight");
                            b.kill().await;
                            killed.store(true, Ordering::SeqCst);
                        }
                        let was_killed = killed.load(Ordering::SeqCst);
                        match get(&cl, addr, "/?delay_ms=3", &[]).await {
                            Ok(r) if r.status == 200 => {
                                if was_killed {
                                    *after_kill.entry(r.backend().to_string()).or_default() += 1;
                                }
                            }
                            Ok(r) => failures.push(format!("request {i}: {} {}", r.status, r.body.trim())),
                            Err(e) => failures.push(format!("request {i}: {e}")),
                        }
                    }
                    (failures, after_kill)
                })
            })
            .collect();
        let mut failures = Vec::new();
        let mut after_kill: HashMap<String, usize> = HashMap::new();
        for l in loops {
            let (f, k) = l.await.expect("join");
            failures.extend(f);
            for (name, n) in k {
                *after_kill.entry(name).or_default() += n;
            }
        }
        assert!(failures.is_empty(), "{} of 300 failed: {failures:#?}", failures.len());
        assert_eq!(after_kill.get("b"), None, "the killed backend answered");
        assert!(after_kill["a"] > 80 && after_kill["c"] > 80, "{after_kill:?}");
        let h = health(&p, "web");
        let hb = h.iter().find(|(ad, _)| *ad == b.addr).expect("b is listed").1;
        assert!(
            matches!(hb, Health::Ejected | Health::Unhealthy),
            "killed endpoint shows {hb:?}: {h:?}"
        );
        for (ad, st) in &h {
            if *ad != b.addr {
                assert!(matches!(st, Health::Unknown | Health::Healthy), "{ad} shows {st:?}");
            }
        }
        p.shutdown().await;
    })
    .await;
}

fn reload_config(head: &str, backends: &[&Backend]) -> String {
    format!(
        "{head}[[services]]\nname = \"web\"\nendpoints = {}\n\n[[routes]]\npath_prefix = \"/\"\nservice = \"web\"\n",
        endpoints(backends, None)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swapping_endpoints_under_load_drops_nothing() {
    bounded(async {
        let old = [Backend::start("old-1").await, Backend::start("old-2").await];
        let new = [Backend::start("new-1").await, Backend::start("new-2").await];
        let dir = TempDir::new("reload");
        let path = dir.join("lb.toml");
        let head = head();
        let text = reload_config(&head, &[&old[0], &old[1]]);
        std::fs::write(&path, &text).expect("write the config");
        let p = proxy_at(&text, Some(path.clone())).await;
        ready(&p, "web", 2).await;
        let addr = p.http_addrs[0];
        let stop = Arc::new(AtomicBool::new(false));
        // Two client loops, each with its own keep-alive connection.
        let loops: Vec<_> = (0..2)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let cl = client();
                    let mut ok: HashMap<String, usize> = HashMap::new();
                    let mut failed = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) && n < 5000 {
                        n += 1;
                        match get(&cl, addr, "/", &[]).await {
                            Ok(r) if r.status == 200 => *ok.entry(r.backend().to_string()).or_default() += 1,
                            Ok(r) => failed.push(format!("{} {}", r.status, r.body.trim())),
                            Err(e) => failed.push(e),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        eventually("traffic to flow before the reload", Duration::from_secs(3), || {
            old[0].hits() > 0 && old[1].hits() > 0
        })
        .await;
        std::fs::write(&path, reload_config(&head, &[&new[0], &new[1]])).expect("rewrite the config");
        eventually("the new endpoints to get traffic", Duration::from_secs(4), || {
            new[0].hits() > 0 && new[1].hits() > 0
        })
        .await;
        // Old endpoints are out of rotation: once their last requests end, close them.
        eventually(
            "the old endpoints' last requests to end",
            Duration::from_secs(3),
            || old[0].in_flight() + old[1].in_flight() == 0,
        )
        .await;
        let old_hits = old[0].hits() + old[1].hits();
        old[0].kill().await;
        old[1].kill().await;
        // Traffic goes on after the kill: fifty more answers from the new endpoints.
        let after = new[0].hits() + new[1].hits();
        eventually(
            "traffic after the old endpoints are gone",
            Duration::from_secs(3),
            || new[0].hits() + new[1].hits() >= after + 50,
        )
        .await;
        stop.store(true, Ordering::SeqCst);
        let mut total: HashMap<String, usize> = HashMap::new();
        let mut failed = Vec::new();
        for l in loops {
            let (ok, f) = l.await.expect("join");
            for (k, v) in ok {
                *total.entry(k).or_default() += v;
            }
            failed.extend(f);
        }
        assert!(
            failed.is_empty(),
            "{} requests failed around the reload: {failed:?}",
            failed.len()
        );
        assert_eq!(
            old[0].hits() + old[1].hits(),
            old_hits,
            "old endpoints got traffic after the swap"
        );
        assert!(total["new-1"] > 5 && total["new-2"] > 5, "{total:?}");
        assert!(p.state.load().generation >= 2, "the reload was applied");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_in_flight() {
    bounded(async {
        let a = Backend::start("a").await;
        let p = proxy(&one_service("round_robin", &[&a], None, "")).await;
        ready(&p, "web", 1).await;
        let addr = p.http_addrs[0];
        // Held at the backend until released: in flight for as long as the test says.
        let slow = tokio::spawn(async move { get(&client(), addr, "/gate", &[]).await });
        eventually("the request to reach the backend", Duration::from_secs(3), || {
            a.in_flight() == 1
        })
        .await;
        let shutdown = tokio::spawn(p.shutdown());
        // The listener closes first...
        let t = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(t.elapsed() < Duration::from_secs(3), "still accepting during shutdown");
            tokio::task::yield_now().await;
        }
        // ...while the request in flight, and so the shutdown, wait for the backend.
        assert!(
            !slow.is_finished() && !shutdown.is_finished(),
            "the request in flight was cut"
        );
        a.release();
        let r = slow.await.expect("join").expect("the in-flight request completes");
        assert_eq!(r.status, 200, "{}", r.body);
        tokio::time::timeout(Duration::from_secs(3), shutdown)
            .await
            .expect("shutdown ends once the request is done")
            .expect("join");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "still listening after shutdown"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_goes_to_another_endpoint_even_under_consistent_hashing() {
    bounded(async {
        let a = Backend::start("a").await;
        let b = Backend::start("b").await;
        let dead = format!("127.0.0.1:{}", free_port());
        // No health checks and no ejection: only the retry's redispatch can save the
        // keys that hash to the dead endpoint.
        let text = format!(
            "{}[[services]]\nname = \"web\"\nbalance = \"consistent_hash\"\nhash_key = \"header:x-user\"\n\
             endpoints = [\"{}\", \"{}\", \"{dead}\"]\noutlier = {{ consecutive_failures = 0 }}\n\n\
             [[routes]]\nservice = \"web\"\n",
            head(),
            a.addr,
            b.addr
        );
        let p = proxy(&text).await;
        ready(&p, "web", 3).await;
        let cl = client();
        for u in 0..30 {
            let user = format!("user-{u}");
            let r = get(&cl, p.http_addrs[0], "/", &[("x-user", user.as_str())])
                .await
                .expect("request");
            assert_eq!(r.status, 200, "{user}: {}", r.body);
        }
        let dead_failures: u64 = p
            .state
            .load()
            .upstream("web")
            .expect("service")
            .balancer
            .status()
            .endpoints
            .iter()
            .filter(|e| e.addr.to_string() == dead)
            .map(|e| e.failures)
            .sum();
        assert!(
            dead_failures > 0,
            "some users hash to the dead endpoint, and were redispatched"
        );
        assert_eq!(a.hits() + b.hits(), 30);
        p.shutdown().await;
    })
    .await;
}
