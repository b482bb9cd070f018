//! Endpoints given by name (`addr = "localhost:PORT"`), as HAProxy configs name
//! containers: each address the name resolves to becomes an endpoint.

use super::support::{bounded, client, get, head, proxy, ready, Backend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_by_name_are_resolved() {
    bounded(async {
        let a = Backend::start("a").await;
        let text = format!(
            "{}[[services]]\nname = \"web\"\nendpoints = [\"localhost:{}\"]\ndns_refresh = \"1s\"\n\n\
             [[routes]]\nservice = \"web\"\n",
            head(),
            a.addr.port()
        );
        let p = proxy(&text).await;
        ready(&p, "web", 1).await;
        let status = p.state.load().upstream("web").expect("service").balancer.status();
        assert!(
            status
                .endpoints
                .iter()
                .any(|e| e.addr == a.addr && e.id.as_str().starts_with("localhost:")),
            "localhost resolves to the backend's address, with an id naming the host: {:?}",
            status
                .endpoints
                .iter()
                .map(|e| (e.id.to_string(), e.addr))
                .collect::<Vec<_>>()
        );
        let cl = client();
        for _ in 0..5 {
            let r = get(&cl, p.http_addrs[0], "/", &[]).await.expect("request");
            // ::1 may be in the answer too, where the backend does not listen: those
            // requests are retried on 127.0.0.1, so every answer is a 200.
            assert_eq!(r.status, 200, "{}", r.body);
        }
        assert!(a.hits() >= 5);
        p.shutdown().await;
    })
    .await;
}
