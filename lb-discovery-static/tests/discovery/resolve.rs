//! Name resolution and the fixed list.

use std::time::Duration;

use futures_util::StreamExt;
use lb_core::discover::{Discover, Update};
use lb_core::Endpoint;
use lb_discovery_static::{fixed, resolve_stream, EndpointSpec, EndpointsFile, Error, StaticList, Updates};

use crate::support::{assert_quiet, ids, next_reset};

fn assert_discover<D: Discover>(_: &D) {}

#[test]
fn sources_are_send_and_static() {
    fn send_static<T: Send + 'static>() {}
    send_static::<Updates>();
    send_static::<StaticList>();
    send_static::<EndpointsFile>();
    send_static::<Error>();
    fn sync<T: Sync>() {}
    sync::<Updates>();
    sync::<StaticList>();
    sync::<Error>();
    sync::<EndpointSpec>();
}

#[tokio::test]
async fn localhost_resolves_to_loopback_endpoints() {
    let specs = vec![EndpointSpec::new("localhost:9001").with_metadata("zone", "a")];
    let mut updates = resolve_stream(specs, Duration::from_millis(100));
    assert_discover(&updates);
    let set = next_reset(&mut updates, Duration::from_secs(5)).await;
    assert!(
        set.iter().any(|ep| ep.addr() == "127.0.0.1:9001".parse().unwrap()),
        "localhost should include 127.0.0.1: {set:?}"
    );
    for ep in &set {
        assert!(ep.addr().ip().is_loopback(), "{ep:?}");
        assert_eq!(ep.id().as_str(), format!("localhost:9001/{}", ep.addr()));
        assert_eq!(ep.metadata().get("zone").map(String::as_str), Some("a"));
    }
    // Re-resolving every 100 ms finds the same answer: nothing new is emitted.
    assert_quiet(&mut updates, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn literal_addresses_need_no_lookup() {
    let specs = vec![
        EndpointSpec::new("127.0.0.1:9001").with_weight(2),
        EndpointSpec::new("127.0.0.1:9002").with_id("b"),
    ];
    let mut updates = resolve_stream(specs, Duration::from_secs(5));
    let set = next_reset(&mut updates, Duration::from_secs(1)).await;
    assert_eq!(ids(&set), ["127.0.0.1:9001", "b"]);
    assert_eq!(set[0].weight(), 2);
    assert_quiet(&mut updates, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn an_unresolvable_name_is_left_out() {
    // `.invalid` never resolves (RFC 6761); the literal one still arrives.
    let specs = vec![
        EndpointSpec::new("nothing.invalid:80"),
        EndpointSpec::new("127.0.0.1:9001"),
    ];
    let mut updates = resolve_stream(specs, Duration::from_secs(5));
    let set = next_reset(&mut updates, Duration::from_secs(6)).await;
    assert_eq!(ids(&set), ["127.0.0.1:9001"]);
}

#[tokio::test]
async fn one_shot_resolution() {
    let eps = EndpointSpec::new("localhost:9001").resolve().await.unwrap();
    assert!(!eps.is_empty());
    let eps = EndpointSpec::new("127.0.0.1:9001")
        .with_id("x")
        .resolve()
        .await
        .unwrap();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].id().as_str(), "x");
    assert!(matches!(
        EndpointSpec::new("nope").resolve().await,
        Err(Error::InvalidSpec { .. })
    ));
}

#[tokio::test]
async fn fixed_sends_its_set_once() {
    let ep = Endpoint::new("127.0.0.1:9001".parse().unwrap());
    let mut source = fixed([ep.clone()]);
    assert_discover(&source);
    assert_eq!(source.next().await, Some(Ok(Update::Reset(vec![ep.clone()]))));
    assert!(
        tokio::time::timeout(Duration::from_millis(50), source.next())
            .await
            .is_err(),
        "then it stays open"
    );
    let mut source: StaticList = vec![ep.clone()].into();
    assert_eq!(source.next().await, Some(Ok(Update::Reset(vec![ep]))));
}
