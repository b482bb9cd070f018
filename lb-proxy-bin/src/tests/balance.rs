//! Balancing as seen from outside: exact round-robin cycles, least_conn avoiding a busy
//! endpoint, consistent hashing keeping a key on one endpoint.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::support::{bounded, client, get, one_service, proxy, ready, Backend};

async fn three() -> [Backend; 3] {
    [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_exact_over_whole_cycles() {
    bounded(async {
        let [a, b, c] = three().await;
        // No waiting for the endpoints: `start` returns once they are in rotation, so the
        // very first request is balanced too.
        let p = proxy(&one_service("round_robin", &[&a, &b, &c], None, "")).await;
        let addr = p.http_addrs[0];
        let cl = client();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for i in 0..30 {
            let r = get(&cl, addr, "/", &[])
                .await
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(r.status, 200, "request {i}: {}", r.body);
            *seen.entry(r.backend().to_string()).or_default() += 1;
        }
        assert_eq!((a.hits(), b.hits(), c.hits()), (10, 10, 10), "answered by {seen:?}");
        assert_eq!(seen.len(), 3);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_is_exact_over_whole_cycles() {
    bounded(async {
        let [a, b, c] = three().await;
        let p = proxy(&one_service("round_robin", &[&a, &b, &c], Some(&[3, 1, 1]), "")).await;
        ready(&p, "web", 3).await;
        let addr = p.http_addrs[0];
        let cl = client();
        for i in 0..50 {
            let r = get(&cl, addr, "/", &[])
                .await
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(r.status, 200, "request {i}: {}", r.body);
        }
        assert_eq!((a.hits(), b.hits(), c.hits()), (30, 10, 10));
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_avoids_the_endpoint_holding_slow_requests() {
    bounded(async {
        let [a, b, c] = three().await;
        let p = proxy(&one_service("least_conn", &[&a, &b, &c], None, "")).await;
        ready(&p, "web", 3).await;
        let addr = p.http_addrs[0];
        const N: usize = 4;
        // Park 3N requests at the gates, one at a time: least_conn spreads them N each.
        let mut held = Vec::new();
        for i in 0..3 * N {
            let cl = client();
            held.push(tokio::spawn(async move { get(&cl, addr, "/gate", &[]).await }));
            let want = i + 1;
            tokio::time::timeout(Duration::from_secs(2), async {
                while a.in_flight() + b.in_flight() + c.in_flight() < want {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
            .await
            .expect("the held request reaches a backend");
        }
        assert_eq!((a.in_flight(), b.in_flight(), c.in_flight()), (N, N, N));
        // B and C finish theirs; A keeps N in flight.
        b.release();
        c.release();
        tokio::time::timeout(Duration::from_secs(2), async {
            while b.in_flight() + c.in_flight() > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("released requests finish");
        // The proxy counts a request in flight until its body is sent: wait until it has
        // counted B's and C's out, with A's N still in.
        let (a_addr, b_addr, c_addr) = (a.addr, b.addr, c.addr);
        super::support::eventually("the proxy to count B and C out", Duration::from_secs(3), || {
            let rt = p.state.load();
            let st = rt.upstream("web").expect("web").balancer.status();
            let in_flight = |addr| st.endpoints.iter().find(|e| e.addr == addr).map_or(0, |e| e.in_flight);
            in_flight(b_addr) == 0 && in_flight(c_addr) == 0 && in_flight(a_addr) == N as u32
        })
        .await;
        let before = (a.hits(), b.hits(), c.hits());
        let cl = client();
        for i in 0..30 {
            let r = get(&cl, addr, "/", &[])
                .await
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(r.status, 200);
            assert_ne!(
                r.backend(),
                "a",
                "request {i} went to the endpoint holding {N} slow requests"
            );
        }
        assert_eq!(a.hits(), before.0, "A holds slow requests and got no new ones");
        assert!(
            b.hits() > before.1 && c.hits() > before.2,
            "B and C share the fast requests"
        );
        a.release();
        for h in held {
            let r = h.await.expect("join").expect("a held request completes");
            assert_eq!(r.status, 200);
        }
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_a_key_on_one_endpoint() {
    bounded(async {
        let [a, b, c] = three().await;
        let p = proxy(&one_service(
            "consistent_hash",
            &[&a, &b, &c],
            None,
            "hash_key = \"header:x-user\"",
        ))
        .await;
        ready(&p, "web", 3).await;
        let addr = p.http_addrs[0];
        let cl = client();
        let mut alice = HashSet::new();
        for _ in 0..20 {
            let r = get(&cl, addr, "/", &[("x-user", "alice")]).await.expect("request");
            assert_eq!(r.status, 200);
            alice.insert(r.backend().to_string());
        }
        assert_eq!(alice.len(), 1, "alice went to {alice:?}");
        let mut by_user: HashMap<String, String> = HashMap::new();
        for round in 0..2 {
            for u in 0..20 {
                let user = format!("user-{u}");
                let r = get(&cl, addr, "/", &[("x-user", &user)]).await.expect("request");
                assert_eq!(r.status, 200);
                let prev = by_user.insert(user.clone(), r.backend().to_string());
                if round == 1 {
                    assert_eq!(prev.as_deref(), Some(r.backend()), "{user} moved");
                }
            }
        }
        let spread: HashSet<&String> = by_user.values().collect();
        assert!(spread.len() > 1, "20 users all went to {spread:?}");
        p.shutdown().await;
    })
    .await;
}
