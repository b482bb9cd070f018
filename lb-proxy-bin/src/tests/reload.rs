//! Reloads that cannot hurt: a file caught empty or cut short is refused (no 404s), an
//! explicitly empty one is applied, admin credentials change with the file, and the
//! settings that need a restart are named.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::support::{bounded, client, eventually, eventually_async, get, head, proxy_at, ready, Backend, TempDir};
use crate::stack::Started;

fn config(head: &str, backend: &Backend, extra_route: &str) -> String {
    format!(
        "{head}[[services]]\nname = \"web\"\nendpoints = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/\"\nservice = \"web\"\n{extra_route}",
        backend.addr
    )
}

/// Reloads counted with `result` ("success" or "failure").
fn reloads(p: &Started, result: &str) -> u64 {
    let rt = p.state.load();
    let text = rt.metrics.encode(&rt);
    let key = format!("lb_config_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_caught_empty_or_cut_short_is_refused_and_nothing_404s() {
    bounded(async {
        let a = Backend::start("a").await;
        let dir = TempDir::new("reload-empty");
        let path = dir.join("lb.toml");
        let head = head();
        let text = config(&head, &a, "");
        std::fs::write(&path, &text).expect("write");
        let p = proxy_at(&text, Some(path.clone())).await;
        ready(&p, "web", 1).await;
        let addr = p.http_addrs[0];
        let stop = Arc::new(AtomicBool::new(false));
        let traffic = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let cl = client();
                let mut bad = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    match get(&cl, addr, "/", &[]).await {
                        Ok(r) if r.status == 200 => n += 1,
                        Ok(r) => bad.push(format!("{} {}", r.status, r.body.trim())),
                        Err(e) => bad.push(e),
                    }
                }
                (n, bad)
            })
        };
        // An editor that writes in place: the file empty, then only its first table.
        std::fs::write(&path, "").expect("truncate");
        eventually("the empty file to be refused", Duration::from_secs(8), || {
            reloads(&p, "failure") >= 1
        })
        .await;
        std::fs::write(&path, &head).expect("write a cut-short file");
        eventually("the cut-short file to be refused", Duration::from_secs(8), || {
            reloads(&p, "failure") >= 2
        })
        .await;
        // The complete file is read as usual.
        std::fs::write(
            &path,
            config(&head, &a, "\n[[routes]]\npath_prefix = \"/new\"\nservice = \"web\"\n"),
        )
        .expect("write the whole file");
        eventually("the whole file to apply", Duration::from_secs(8), || {
            reloads(&p, "success") >= 1
        })
        .await;
        stop.store(true, Ordering::SeqCst);
        let (served, bad) = traffic.await.expect("join");
        assert!(bad.is_empty(), "requests failed around the rewrite: {bad:?}");
        assert!(served > 0);
        assert_eq!(get(&client(), addr, "/new", &[]).await.expect("request").status, 200);
        // A file that says it means no services is applied.
        std::fs::write(&path, format!("services = []\n{head}")).expect("write");
        eventually("the explicit empty config to apply", Duration::from_secs(8), || {
            reloads(&p, "success") >= 2
        })
        .await;
        assert_eq!(get(&client(), addr, "/", &[]).await.expect("request").status, 404);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_credentials_changed_by_a_reload_apply() {
    bounded(async {
        let a = Backend::start("a").await;
        let dir = TempDir::new("reload-admin");
        let path = dir.join("lb.toml");
        let with_auth = |auth: &str| {
            config(
                &format!("[server]\nlisten = [\"127.0.0.1:0\"]\n\n[admin]\nlisten = \"127.0.0.1:0\"\n{auth}\n\n"),
                &a,
                "",
            )
        };
        let text = with_auth("token = \"first-token\"");
        std::fs::write(&path, &text).expect("write");
        let p = proxy_at(&text, Some(path.clone())).await;
        let admin = p.admin_addr;
        let cl = client();
        let status = |bearer: &'static str| {
            let cl = cl.clone();
            async move {
                get(&cl, admin, "/api/status", &[("authorization", bearer)])
                    .await
                    .expect("admin request")
                    .status
                    .as_u16()
            }
        };
        assert_eq!(status("Bearer first-token").await, 200);
        assert_eq!(status("Bearer second-token").await, 401);
        std::fs::write(&path, with_auth("token = \"second-token\"")).expect("rewrite");
        eventually_async("the new token to apply", Duration::from_secs(8), || async {
            status("Bearer second-token").await == 200
        })
        .await;
        assert_eq!(status("Bearer first-token").await, 401, "the old token still works");
        // Basic auth instead: the token goes.
        std::fs::write(&path, with_auth("user = \"admin\"\npassword = \"pw\"")).expect("rewrite");
        // admin:pw
        eventually_async("basic auth to apply", Duration::from_secs(8), || async {
            status("Basic YWRtaW46cHc=").await == 200
        })
        .await;
        assert_eq!(status("Bearer second-token").await, 401);
        p.shutdown().await;
    })
    .await;
}

#[test]
fn the_settings_that_need_a_restart_are_named() {
    let parse = |t: &str| crate::config::parse(t, std::path::Path::new("r.toml")).expect("valid");
    let svc = "[[services]]\nname = \"web\"\nendpoints = [\"127.0.0.1:1\"]\n";
    let before = parse(&format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n{svc}"
    ));
    let after = parse(&format!(
        "[server]\nlisten = \"127.0.0.1:8081\"\nmax_connections = 10\nshutdown_grace = \"1s\"\n\
         header_read_timeout = \"1s\"\nsend_timeout = \"1s\"\nmax_body_bytes = 10\n\
         [admin]\nlisten = \"127.0.0.1:9091\"\ntoken = \"t\"\n{svc}\
         [[tcp]]\nlisten = \"127.0.0.1:5432\"\nservice = \"web\"\n\
         [[providers]]\nkind = \"docker\"\n"
    ));
    assert_eq!(
        crate::reconcile::restart_only_changes(&before, &after),
        [
            "server.listen",
            "server.max_connections",
            "server.shutdown_grace",
            "admin.listen",
            "tcp",
            "providers"
        ],
        "timeouts, limits and admin credentials apply at once"
    );
    assert!(crate::reconcile::restart_only_changes(&before, &before).is_empty());
}
