//! ACL mode: writes need a token with `service:write`, unknown tokens are
//! refused, reads are filtered rather than refused.

mod support;

use lb_consul_emulator::{Access, Emulator, Options};
use serde_json::json;
use support::{get, get_h, put, put_h};

async fn acl_emulator() -> Emulator {
    Emulator::start_with(Options {
        acl_tokens: Some(vec![
            ("writer".into(), Access::Write),
            ("reader".into(), Access::Read),
            ("nothing".into(), Access::Deny),
            (
                "api-only".into(),
                Access::ServicePrefix {
                    prefix: "api".into(),
                    write: true,
                },
            ),
        ]),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn writes_need_service_write() {
    let emu = acl_emulator().await;
    let body = json!({"Name": "api", "Check": {"TTL": "1h"}}).to_string();

    let r = put(&emu, "/v1/agent/service/register", &body).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.body,
        "Permission denied: anonymous token lacks permission 'service:write' on \"api\". \
         The anonymous token is used implicitly when a request does not specify a token."
    );
    assert_eq!(r.header("x-consul-default-acl-policy"), Some("deny"));

    let r = put_h(&emu, "/v1/agent/service/register", &body, &[("X-Consul-Token", "who")]).await;
    assert_eq!((r.status, r.body.as_str()), (403, "ACL not found"));

    let r = put_h(
        &emu,
        "/v1/agent/service/register",
        &body,
        &[("X-Consul-Token", "reader")],
    )
    .await;
    assert_eq!(r.status, 403);
    let accessor = Emulator::accessor_id("reader");
    assert_eq!(
        r.body,
        format!("Permission denied: token with AccessorID '{accessor}' lacks permission 'service:write' on \"api\"")
    );

    let r = put_h(
        &emu,
        "/v1/agent/service/register",
        &body,
        &[("Authorization", "Bearer writer")],
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    let r = put_h(
        &emu,
        "/v1/agent/service/register",
        &json!({"Name": "web"}).to_string(),
        &[("X-Consul-Token", "api-only")],
    )
    .await;
    assert_eq!(r.status, 403);
    let r = put_h(
        &emu,
        "/v1/agent/check/pass/service:api",
        "",
        &[("X-Consul-Token", "api-only")],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = put(&emu, "/v1/agent/check/pass/service:api", "").await;
    assert_eq!(r.status, 403);
    let r = put_h(
        &emu,
        "/v1/agent/service/deregister/api",
        "",
        &[("X-Consul-Token", "nothing")],
    )
    .await;
    assert_eq!(r.status, 403);

    // A decode error is reported before the token is looked at; a bad token before validation.
    let r = put_h(&emu, "/v1/agent/service/register", "{}", &[("X-Consul-Token", "who")]).await;
    assert_eq!((r.status, r.body.as_str()), (400, "Missing service name"));
    let r = put_h(
        &emu,
        "/v1/agent/service/register",
        &json!({"Name": "api", "Weights": {"Passing": 0}}).to_string(),
        &[("X-Consul-Token", "who")],
    )
    .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn reads_are_filtered_not_refused() {
    let emu = acl_emulator().await;
    emu.register("agent-a", json!({"Name": "api"})).unwrap();
    emu.register("agent-a", json!({"Name": "web"})).unwrap();

    // Anonymous: nothing visible, and no "filtered" header (no token was sent).
    let r = get(&emu, "/v1/health/service/api").await;
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));
    assert!(r.index() >= 1);
    assert!(r.header("x-consul-results-filtered-by-acls").is_none());
    assert_eq!(r.header("x-consul-default-acl-policy"), Some("deny"));

    // A token without rights: [] and the header.
    let r = get_h(&emu, "/v1/health/service/api", &[("X-Consul-Token", "nothing")]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));
    assert_eq!(r.header("x-consul-results-filtered-by-acls"), Some("true"));

    // A reader sees everything, no header.
    let r = get_h(&emu, "/v1/health/service/api", &[("X-Consul-Token", "reader")]).await;
    assert_eq!(r.ids(), ["api"]);
    assert!(r.header("x-consul-results-filtered-by-acls").is_none());

    // A prefix token sees its services only.
    let r = get_h(&emu, "/v1/health/service/web", &[("Authorization", "bearer api-only")]).await;
    assert_eq!(r.body, "[]");
    assert_eq!(r.header("x-consul-results-filtered-by-acls"), Some("true"));
    let r = get_h(&emu, "/v1/catalog/services", &[("X-Consul-Token", "api-only")]).await;
    assert_eq!(r.json(), json!({"api": []}));
    assert_eq!(r.header("x-consul-results-filtered-by-acls"), Some("true"));
    let r = get_h(&emu, "/v1/catalog/services?token=reader", &[]).await;
    assert_eq!(r.json(), json!({"api": [], "web": []}));

    // An unknown secret is an error, as on Consul, reads included.
    let r = get_h(&emu, "/v1/health/service/api", &[("X-Consul-Token", "who")]).await;
    assert_eq!((r.status, r.body.as_str()), (403, "ACL not found"));
    // An empty header counts as no token.
    let r = get_h(&emu, "/v1/health/service/api", &[("X-Consul-Token", "")]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));

    // agent/self needs agent:read.
    assert_eq!(get(&emu, "/v1/agent/self").await.status, 403);
    assert_eq!(
        get_h(&emu, "/v1/agent/self", &[("X-Consul-Token", "reader")])
            .await
            .status,
        200
    );
    assert_eq!(get(&emu, "/v1/status/leader").await.status, 200);
}
