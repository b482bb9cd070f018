//! The `Balancer` service: diffed discovery, drain, fail-fast and bounded waits,
//! completion tracking, tower interop and the push handle. Over HTTP (body tracking,
//! keys from extensions): `http_balancer.rs`.

mod support;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lb_core::balance::{RoundRobin, WeightedRoundRobin};
use lb_core::discover::{self, Update};
use lb_core::error::{is_no_endpoints, is_timeout, Elapsed, EndpointError, UnknownEndpoint};
use lb_core::{BalanceLayer, Balancer, BoxError, Endpoint, EndpointId, Health, NoEndpoints, Outcome};
use tokio::time::Instant;
use tower::discover::Change;
use tower::{Service, ServiceExt};

use support::{
    backends, ep, ep_w, eventually, health_of, healthy_backends, id, index_of, poll_once, scripted, settle, status_of,
    streak_of, Act, Backend, Down, Script, Switches,
};

const STEP: Duration = Duration::from_millis(10);

fn no_endpoints(err: &BoxError) -> &NoEndpoints {
    assert!(is_no_endpoints(&**err), "expected NoEndpoints, got {err}");
    err.downcast_ref::<NoEndpoints>().unwrap()
}

fn ids<P: lb_core::balance::Balance, S, R>(lb: &Balancer<P, S, R>) -> Vec<String> {
    lb.status().endpoints.iter().map(|e| e.id.to_string()).collect()
}

// === discovery is diffed ===

#[tokio::test(start_paused = true)]
async fn reset_is_diffed_and_keeps_counters() {
    let (publisher, subscription) = discover::channel();
    let lb = Balancer::builder(WeightedRoundRobin::new()).spawn(subscription, healthy_backends());
    publisher.reset([ep(0), ep(1)]);
    lb.ready_endpoints(2).await;
    for _ in 0..10 {
        lb.clone().oneshot(()).await.unwrap();
    }
    assert_eq!(status_of(&lb, 0).requests, 5);
    assert_eq!(status_of(&lb, 1).requests, 5);
    let generation = lb.status().generation;

    // The same set again: nothing changes, nothing is rebuilt.
    publisher.reset([ep(0), ep(1)]);
    settle().await;
    assert_eq!(
        lb.status().generation,
        generation,
        "an unchanged Reset must not publish a new snapshot"
    );

    // Endpoint 0 comes back with a new weight and metadata, 2 joins.
    publisher.reset([ep_w(0, 3).with_metadata("zone", "b"), ep(1), ep(2)]);
    lb.ready_endpoints(3).await;
    let s0 = status_of(&lb, 0);
    assert_eq!(s0.requests, 5, "re-inserting an endpoint must keep its counters");
    assert_eq!(s0.weight, 3);
    assert_eq!(s0.effective_weight, Some(3.0), "the new weight is in effect");
    assert_eq!(s0.metadata.get("zone").map(String::as_str), Some("b"));
    assert_eq!(status_of(&lb, 1).requests, 5);
    assert_eq!(status_of(&lb, 2).requests, 0);
    // And the policy uses it: 3 of every 5 picks.
    let mut counts = [0; 3];
    for _ in 0..50 {
        counts[lb.clone().oneshot(()).await.unwrap()] += 1;
    }
    assert_eq!(counts, [30, 10, 10]);

    // Endpoint 1 leaves (nothing in flight: it is gone at once); 0 keeps its counters.
    publisher.reset([ep_w(0, 3), ep(2)]);
    eventually("endpoint 1 is removed", STEP, 10, || health_of(&lb, 1).is_none()).await;
    assert_eq!(lb.eligible(), 2);
    assert_eq!(status_of(&lb, 0).requests, 35);
    assert_eq!(
        status_of(&lb, 0).metadata.get("zone"),
        None,
        "metadata follows discovery"
    );
}

// === drain ===

#[tokio::test(start_paused = true)]
async fn removed_endpoint_drains_then_is_freed() {
    let (publisher, subscription) = discover::channel();
    let lb = Balancer::builder(RoundRobin::new()).spawn(subscription, healthy_backends());
    publisher.reset([ep(0), ep(1)]);
    lb.ready_endpoints(2).await;
    let held = (0..4)
        .map(|_| lb.pick(None).unwrap())
        .find(|p| p.service.idx == 0)
        .expect("round robin reaches endpoint 0");
    publisher.remove(id(0));
    eventually("endpoint 0 out of rotation", STEP, 10, || lb.eligible() == 1).await;
    let s0 = status_of(&lb, 0);
    assert_eq!(s0.health, Health::Draining);
    assert_eq!(s0.in_flight, 1, "its request is still in flight");
    assert_eq!(s0.effective_weight, None);
    assert!(held.guard.endpoint().is_draining());
    for _ in 0..100 {
        assert_eq!(
            lb.pick(None).unwrap().service.idx,
            1,
            "a draining endpoint takes no new request"
        );
        assert_eq!(lb.clone().oneshot(()).await.unwrap(), 1);
    }
    // Still listed while its request runs, however long.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(health_of(&lb, 0), Some(Health::Draining));
    assert_eq!(status_of(&lb, 0).in_flight, 1);
    drop(held);
    assert_eq!(status_of(&lb, 0).in_flight, 0);
    eventually(
        "endpoint 0 freed after its last request",
        Duration::from_millis(50),
        20,
        || health_of(&lb, 0).is_none(),
    )
    .await;
    assert_eq!(ids(&lb), ["ep001"]);
}

#[tokio::test(start_paused = true)]
async fn endpoint_re_added_while_draining_keeps_its_state() {
    let (publisher, subscription) = discover::channel();
    let lb = Balancer::builder(RoundRobin::new()).spawn(subscription, healthy_backends());
    publisher.reset([ep(0), ep(1)]);
    lb.ready_endpoints(2).await;
    for _ in 0..6 {
        lb.clone().oneshot(()).await.unwrap();
    }
    let held = (0..4)
        .map(|_| lb.pick(None).unwrap())
        .find(|p| p.service.idx == 0)
        .unwrap();
    publisher.remove(id(0));
    eventually("draining", STEP, 10, || health_of(&lb, 0) == Some(Health::Draining)).await;
    publisher.insert(ep(0));
    lb.ready_endpoints(2).await;
    let s0 = status_of(&lb, 0);
    assert_eq!(s0.health, Health::Unknown, "back in rotation");
    assert_eq!(s0.in_flight, 1);
    assert!(s0.requests >= 4, "counters kept: {}", s0.requests);
    drop(held);
    assert_eq!(status_of(&lb, 0).in_flight, 0);
    assert!((0..4).any(|_| lb.pick(None).unwrap().service.idx == 0));
}

/// A removal and a re-insertion that the writer applies in one batch (before it
/// publishes) leave the endpoint in rotation, with or without a request in flight.
#[tokio::test(start_paused = true)]
async fn remove_and_re_insert_in_one_batch_stays_in_rotation() {
    let (publisher, subscription) = discover::channel();
    let lb = Balancer::builder(RoundRobin::new()).spawn(subscription, healthy_backends());
    publisher.reset([ep(0), ep(1)]);
    lb.ready_endpoints(2).await;
    let held = (0..4)
        .map(|_| lb.pick(None).unwrap())
        .find(|p| p.service.idx == 0)
        .unwrap();
    // Both sent before the writer runs again: applied together.
    publisher.remove(id(0));
    publisher.insert(ep(0));
    publisher.remove(id(1));
    publisher.insert(ep(1));
    settle().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..2 {
        assert_eq!(health_of(&lb, i), Some(Health::Unknown), "endpoint {i}");
    }
    assert_eq!(lb.eligible(), 2);
    assert_eq!(
        status_of(&lb, 0).in_flight,
        1,
        "the state with the request in flight was kept"
    );
    drop(held);
    let seen: BTreeSet<usize> = (0..4).map(|_| lb.pick(None).unwrap().service.idx).collect();
    assert_eq!(seen, BTreeSet::from([0, 1]));
}

#[tokio::test(start_paused = true)]
async fn operator_drain_holds_until_enabled() {
    let (publisher, subscription) = discover::channel();
    let lb = Balancer::builder(RoundRobin::new()).spawn(subscription, healthy_backends());
    publisher.reset([ep(0), ep(1)]);
    lb.ready_endpoints(2).await;
    lb.drain(id(0)).await.unwrap();
    eventually("drained", STEP, 10, || lb.eligible() == 1).await;
    assert_eq!(health_of(&lb, 0), Some(Health::Draining));
    // Discovery saying it is there changes nothing.
    publisher.reset([ep(0), ep(1)]);
    settle().await;
    assert!((0..20).all(|_| lb.pick(None).unwrap().service.idx == 1));
    assert_eq!(
        lb.drain("nope").await,
        Err(UnknownEndpoint("nope".to_string())),
        "draining an unknown id is an error"
    );
    lb.enable(id(0)).await.unwrap();
    lb.ready_endpoints(2).await;
    assert!((0..4).any(|_| lb.pick(None).unwrap().service.idx == 0));
}

#[tokio::test(start_paused = true)]
async fn operator_drain_survives_the_endpoint_leaving_and_coming_back() {
    let (publisher, subscription) = discover::channel();
    let lb = Balancer::builder(RoundRobin::new()).spawn(subscription, healthy_backends());
    publisher.reset([ep(0), ep(1)]);
    lb.ready_endpoints(2).await;
    lb.drain(id(0)).await.unwrap();
    eventually("drained", STEP, 10, || lb.eligible() == 1).await;
    // Discovery removes it (a container stops) and adds it back (the container restarts).
    publisher.reset([ep(1)]);
    eventually("removed", STEP, 10, || ids(&lb) == ["ep001"]).await;
    publisher.reset([ep(0), ep(1)]);
    eventually("back", STEP, 10, || ids(&lb).len() == 2).await;
    assert_eq!(
        health_of(&lb, 0),
        Some(Health::Draining),
        "still drained by the operator"
    );
    assert!((0..20).all(|_| lb.pick(None).unwrap().service.idx == 1));
    assert_eq!(lb.drained_ids(), [id(0)]);
    lb.enable(id(0)).await.unwrap();
    assert!(lb.drained_ids().is_empty());
    lb.ready_endpoints(2).await;
}

#[tokio::test(start_paused = true)]
async fn drains_carry_over_to_a_balancer_that_replaces_another() {
    let (publisher, subscription) = discover::channel();
    let lb = Balancer::builder(RoundRobin::new())
        .drained([id(1)])
        .spawn(subscription, healthy_backends());
    publisher.reset([ep(0), ep(1)]);
    eventually("both in", STEP, 10, || ids(&lb).len() == 2).await;
    assert_eq!(health_of(&lb, 1), Some(Health::Draining));
    assert_eq!(lb.eligible(), 1);
}

// === fail fast, or a bounded wait ===

#[tokio::test(start_paused = true)]
async fn no_eligible_endpoint_fails_at_once() {
    let lb = Balancer::builder(RoundRobin::new()).spawn(discover::fixed(Vec::<Endpoint>::new()), healthy_backends());
    settle().await;
    let err = lb
        .clone()
        .call(())
        .now_or_never()
        .expect("no endpoint must fail at once, not pend")
        .unwrap_err();
    let e = no_endpoints(&err);
    assert_eq!(e.waited(), None);
    assert!(!e.is_overloaded());
    assert!(!lb.pick(None).expect_err("no endpoint").is_overloaded());
}

#[tokio::test(start_paused = true)]
async fn bounded_wait_gives_up_after_the_wait() {
    let wait = Duration::from_millis(500);
    let (_publisher, subscription) = discover::channel();
    let lb = Balancer::builder(RoundRobin::new())
        .wait(wait)
        .spawn(subscription, healthy_backends());
    settle().await;
    let mut fut = Box::pin(lb.clone().oneshot(()));
    assert!(
        support::poll_once(&mut fut).is_pending(),
        "with a wait configured the call waits"
    );
    let start = Instant::now();
    let err = fut.await.unwrap_err();
    let waited = start.elapsed();
    assert_eq!(no_endpoints(&err).waited(), Some(wait));
    assert!(
        waited >= wait - Duration::from_millis(1) && waited <= wait + Duration::from_millis(5),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn bounded_wait_is_satisfied_by_a_later_insert() {
    let (publisher, subscription) = discover::channel();
    let lb = Balancer::builder(RoundRobin::new())
        .wait(Duration::from_secs(2))
        .spawn(subscription, healthy_backends());
    settle().await;
    let start = Instant::now();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        publisher.insert(ep(4));
        // Keep the source open.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    assert_eq!(lb.clone().oneshot(()).await.unwrap(), 4);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(400),
        "{took:?}"
    );
    assert_eq!(status_of(&lb, 4).requests, 1);
}

#[tokio::test(start_paused = true)]
async fn full_endpoints_fail_as_overloaded_even_with_a_wait() {
    let lb = Balancer::builder(RoundRobin::new())
        .max_in_flight(2)
        .wait(Duration::from_secs(10))
        .spawn(discover::fixed([ep(0)]), healthy_backends());
    lb.ready_endpoints(1).await;
    let held = [lb.pick(None).unwrap(), lb.pick(None).unwrap()];
    assert!(
        lb.pick(None).expect_err("the endpoint is full").is_overloaded(),
        "a pick says the endpoints are full, not absent"
    );
    let err = lb
        .clone()
        .call(())
        .now_or_never()
        .expect("overload fails at once")
        .unwrap_err();
    assert!(no_endpoints(&err).is_overloaded());
    drop(held);
    assert_eq!(lb.clone().oneshot(()).await.unwrap(), 0);
}

// === completion tracking (HTTP bodies: tests/http_balancer.rs) ===

#[tokio::test(start_paused = true)]
async fn inner_service_errors_count_as_failures() {
    let failing = Switches::new();
    failing.set(0, true);
    let lb = Balancer::builder(RoundRobin::new()).spawn(discover::fixed([ep(0)]), backends(failing.clone()));
    lb.ready_endpoints(1).await;
    let err = lb.clone().oneshot(()).await.unwrap_err();
    let at = err
        .downcast_ref::<lb_core::error::EndpointError>()
        .expect("an endpoint's error comes wrapped with the endpoint's id");
    assert_eq!(at.endpoint(), ep(0).id(), "the failing endpoint is named");
    assert_eq!(
        at.inner().downcast_ref::<Down>(),
        Some(&Down(0)),
        "the endpoint's own error comes through"
    );
    let s = status_of(&lb, 0);
    assert_eq!((s.in_flight, s.requests, s.failures), (0, 1, 1));
}

// === tower interop and the push handle ===

#[tokio::test(start_paused = true)]
async fn from_tower_feeds_a_balancer() {
    let changes = futures_util::stream::iter([
        Ok::<_, Infallible>(Change::Insert("a", ep(0))),
        Ok(Change::Insert("b", ep(1))),
        Ok(Change::Insert("c", ep(2))),
        Ok(Change::Remove("a")),
    ])
    .chain(futures_util::stream::pending());
    let lb = Balancer::builder(RoundRobin::new()).spawn(discover::from_tower(changes), healthy_backends());
    eventually("b and c, under their tower keys", STEP, 10, || ids(&lb) == ["b", "c"]).await;
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        seen.insert(lb.clone().oneshot(()).await.unwrap());
    }
    assert_eq!(seen, BTreeSet::from([1, 2]));
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    Insert(String, u32),
    Remove(String),
}

async fn next_change<S>(changes: &mut S) -> Seen
where
    S: futures_util::Stream<Item = Result<Change<EndpointId, u32>, Infallible>> + Unpin,
{
    match changes.next().await.expect("a change").unwrap() {
        Change::Insert(k, w) => Seen::Insert(k.to_string(), w),
        Change::Remove(k) => Seen::Remove(k.to_string()),
    }
}

#[tokio::test]
async fn into_tower_diffs_updates_into_changes() {
    let (publisher, subscription) = discover::channel();
    let mut changes = discover::into_tower(subscription, |ep: &Endpoint| ep.weight());
    publisher.reset([ep(0), ep(1)]);
    publisher.insert(ep(1)); // unchanged: nothing
    publisher.reset([ep_w(1, 2), ep(2)]);
    publisher.remove(id(2));
    publisher.remove(id(7)); // unknown: nothing
    drop(publisher);
    let mut first = vec![next_change(&mut changes).await, next_change(&mut changes).await];
    first.sort();
    assert_eq!(
        first,
        [Seen::Insert("ep000".into(), 1), Seen::Insert("ep001".into(), 1)]
    );
    assert_eq!(
        next_change(&mut changes).await,
        Seen::Remove("ep000".into()),
        "a Reset removes first"
    );
    let mut second = vec![next_change(&mut changes).await, next_change(&mut changes).await];
    second.sort();
    assert_eq!(
        second,
        [Seen::Insert("ep001".into(), 2), Seen::Insert("ep002".into(), 1)]
    );
    assert_eq!(next_change(&mut changes).await, Seen::Remove("ep002".into()));
    assert!(changes.next().await.is_none(), "ends with the source");
}

#[tokio::test]
async fn into_tower_feeds_a_tower_balancer() {
    let (publisher, subscription) = discover::channel();
    let failing = Switches::new();
    let discover = discover::into_tower(subscription, move |e: &Endpoint| {
        tower::load::Constant::new(Backend::new(index_of(e), failing.clone()), 0u32)
    });
    let mut tower_lb: tower::balance::p2c::Balance<_, ()> = tower::balance::p2c::Balance::new(discover);
    publisher.insert(ep(3));
    let got = tower_lb.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(got, 3);
}

#[tokio::test(start_paused = true)]
async fn push_handle_inserts_removes_resets_and_closes() {
    let (publisher, subscription) = discover::channel();
    let other = publisher.clone();
    let lb = Balancer::builder(RoundRobin::new()).spawn(subscription, healthy_backends());
    assert!(publisher.insert(ep(0)));
    assert!(other.insert(ep(1)));
    lb.ready_endpoints(2).await;
    assert!(publisher.remove(id(0)));
    eventually("removed", STEP, 10, || ids(&lb) == ["ep001"]).await;
    assert!(publisher.reset([ep(2), ep(3)]));
    eventually("reset", STEP, 10, || ids(&lb) == ["ep002", "ep003"]).await;
    assert!(publisher.send(Update::Insert(ep(4))));
    eventually("inserted", STEP, 10, || lb.eligible() == 3).await;
    assert!(!publisher.is_closed());

    // Every publisher gone: the stream ends and the balancer keeps its set.
    drop((publisher, other));
    settle().await;
    assert_eq!(lb.eligible(), 3);
    assert!(lb.clone().oneshot(()).await.is_ok());

    // The balancer gone: a new handle sees the other end closed.
    let (publisher, subscription) = discover::channel();
    let lb = Balancer::builder(RoundRobin::new()).spawn(subscription, healthy_backends());
    assert!(publisher.insert(ep(0)));
    lb.ready_endpoints(1).await;
    drop(lb);
    eventually("writer stopped", STEP, 10, || publisher.is_closed()).await;
    assert!(!publisher.insert(ep(1)));
}

#[tokio::test(start_paused = true)]
async fn discovery_errors_keep_the_last_set() {
    let updates = futures_util::stream::iter([
        Ok(Update::Reset(vec![ep(0), ep(1)])),
        Err(std::io::Error::other("source hiccup")),
        Ok(Update::Insert(ep(2))),
    ])
    .chain(futures_util::stream::pending());
    let lb = Balancer::builder(RoundRobin::new()).spawn(updates, healthy_backends());
    eventually("all three", STEP, 10, || lb.eligible() == 3).await;
}

#[tokio::test(start_paused = true)]
async fn balance_layer_wraps_a_connector() {
    let layer = BalanceLayer::new(Balancer::builder(RoundRobin::new()), discover::fixed([ep(0), ep(1)]));
    let lb = tower::ServiceBuilder::new().layer(layer).service(healthy_backends());
    lb.ready_endpoints(2).await;
    let a = lb.clone().oneshot(()).await.unwrap();
    let b = lb.clone().oneshot(()).await.unwrap();
    assert_eq!(BTreeSet::from([a, b]), BTreeSet::from([0, 1]));
}

/// A connector that takes 100 ms to make each endpoint's service (a pool warming up,
/// a TLS handshake): the writer is busy with it for a while.
fn slow_backends() -> impl Service<Endpoint, Response = Backend, Error = Infallible, Future: Send> + Send + 'static {
    tower::service_fn(|e: Endpoint| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, Infallible>(Backend::new(index_of(&e), Switches::new()))
    })
}

/// A blue/green switch: a `Reset` replaces every endpoint. Until the new set is
/// published the old one keeps serving (its removal is not published yet), and once it
/// is, only the new one serves: no request fails in between.
#[tokio::test(start_paused = true)]
async fn replacing_the_whole_set_never_fails_a_request() {
    let (publisher, subscription) = discover::channel();
    let lb = Balancer::builder(RoundRobin::new()).spawn(subscription, slow_backends());
    publisher.reset([ep(0), ep(1)]);
    lb.ready_endpoints(2).await;
    publisher.reset([ep(2), ep(3)]);
    let mut switched = false;
    for k in 0..40 {
        let got = lb.clone().oneshot(()).await;
        let i = got.unwrap_or_else(|e| panic!("call {k} during the switch failed: {e}"));
        if i >= 2 {
            switched = true;
        } else {
            assert!(!switched, "call {k} went back to old endpoint {i} after the switch");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(switched);
    assert_eq!(ids(&lb), ["ep002", "ep003"]);
}

#[tokio::test(start_paused = true)]
async fn a_retry_avoids_the_endpoint_that_failed() {
    // Consistent hashing sends a key to one endpoint; with `Avoid` it goes elsewhere.
    let lb = Balancer::builder(lb_core::balance::Maglev::new())
        .spawn(discover::fixed([ep(0), ep(1), ep(2)]), backends(Switches::new()));
    lb.ready_endpoints(3).await;
    let first = lb.pick(Some(42)).expect("a pick").guard.endpoint().id().clone();
    for _ in 0..20 {
        let again = lb.pick(Some(42)).expect("a pick").guard.endpoint().id().clone();
        assert_eq!(again, first, "the key stays on its endpoint");
        let other = lb
            .pick_with(Some(42), Some(&first))
            .expect("a pick")
            .guard
            .endpoint()
            .id()
            .clone();
        assert_ne!(other, first, "a retry avoiding the failed endpoint goes elsewhere");
    }
    // With one endpoint, avoiding it still picks it (better than failing).
    let one = Balancer::builder(RoundRobin::new()).spawn(discover::fixed([ep(0)]), backends(Switches::new()));
    one.ready_endpoints(1).await;
    assert!(one.pick_with(None, Some(ep(0).id())).is_ok());
}

// === cancellation: a request the caller gives up counts for nothing ===

/// Three failures, then a request to the now-hung endpoint that a tower `Timeout`
/// around the balancer abandons: the streak stands (a cancellation is no success), so
/// two more failures reach the threshold of 5 and eject it.
#[tokio::test(start_paused = true)]
async fn a_timeout_around_the_balancer_does_not_reset_the_failure_streak() {
    let script = Script::new();
    script.set(0, Act::Fail, Duration::ZERO);
    let lb = Balancer::builder(RoundRobin::new()).spawn(discover::fixed([ep(0)]), scripted(script.clone()));
    lb.ready_endpoints(1).await;
    for _ in 0..3 {
        lb.clone().oneshot(()).await.unwrap_err();
    }
    assert_eq!(streak_of(&lb, 0), 3);

    script.set(0, Act::Hang, Duration::ZERO);
    let outer = tower::timeout::Timeout::new(lb.clone(), Duration::from_secs(1));
    let err = outer.oneshot(()).await.unwrap_err();
    assert!(is_timeout(&*err), "tower's Elapsed is a timeout: {err}");
    assert!(
        err.downcast_ref::<EndpointError>().is_none(),
        "a timeout around the balancer blames no endpoint"
    );
    let s = status_of(&lb, 0);
    assert_eq!((s.in_flight, s.failures), (0, 3), "cancelled, not failed");
    assert_eq!(streak_of(&lb, 0), 3, "a cancellation must not reset the failure streak");
    assert_eq!(health_of(&lb, 0), Some(Health::Unknown));

    script.set(0, Act::Fail, Duration::ZERO);
    for _ in 0..2 {
        lb.clone().oneshot(()).await.unwrap_err();
    }
    eventually("ejected at the fifth failure in a row", STEP, 10, || {
        health_of(&lb, 0) == Some(Health::Ejected)
    })
    .await;
    assert_eq!(status_of(&lb, 0).failures, 5);
}

/// A response future dropped mid-call (a `select!`, a client gone) releases the
/// endpoint without recording anything: no failure, no success, no latency sample.
#[tokio::test(start_paused = true)]
async fn a_dropped_response_future_records_nothing() {
    let script = Script::new();
    script.set(0, Act::Fail, Duration::ZERO);
    let lb = Balancer::builder(RoundRobin::new())
        .track_latency(true)
        .default_rtt(Duration::from_millis(10))
        .spawn(discover::fixed([ep(0)]), scripted(script.clone()));
    lb.ready_endpoints(1).await;
    lb.clone().oneshot(()).await.unwrap_err();
    let penalised = status_of(&lb, 0).ewma_latency;
    assert!(
        penalised >= Duration::from_secs(1),
        "a failure is penalised: {penalised:?}"
    );

    // Hung for a minute, then dropped.
    script.set(0, Act::Hang, Duration::ZERO);
    let mut fut = Box::pin(lb.clone().call(()));
    assert!(poll_once(&mut fut).is_pending());
    assert_eq!(status_of(&lb, 0).in_flight, 1);
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(fut);
    let s = status_of(&lb, 0);
    assert_eq!((s.in_flight, s.requests, s.failures), (0, 2, 1));
    assert_eq!(s.ewma_latency, penalised, "a cancelled request is no latency sample");
    assert_eq!(streak_of(&lb, 0), 1);
}

/// The same through a timeout around the balancer, on an endpoint that has only
/// succeeded: its estimate does not take the minute it was waited on.
#[tokio::test(start_paused = true)]
async fn a_cancelled_request_is_no_latency_sample() {
    let script = Script::new();
    script.set(0, Act::Answer, Duration::from_millis(20));
    let lb = Balancer::builder(RoundRobin::new())
        .track_latency(true)
        .default_rtt(Duration::from_millis(10))
        .spawn(discover::fixed([ep(0)]), scripted(script.clone()));
    lb.ready_endpoints(1).await;
    assert_eq!(lb.clone().oneshot(()).await.unwrap(), 0);
    assert_eq!(
        status_of(&lb, 0).ewma_latency,
        Duration::from_millis(20),
        "a slower answer is a peak"
    );
    script.set(0, Act::Answer, Duration::from_secs(600));
    let outer = tower::timeout::Timeout::new(lb.clone(), Duration::from_secs(60));
    assert!(outer.oneshot(()).await.is_err());
    let s = status_of(&lb, 0);
    assert_eq!((s.in_flight, s.failures), (0, 0));
    assert_eq!(s.ewma_latency, Duration::from_millis(20));
}

/// A caller that takes guards itself reports the outcome; a guard dropped without one
/// is a cancellation.
#[tokio::test(start_paused = true)]
async fn a_picked_guard_records_the_outcome_it_is_given() {
    let lb = Balancer::builder(RoundRobin::new()).spawn(discover::fixed([ep(0)]), healthy_backends());
    lb.ready_endpoints(1).await;
    let mut p = lb.pick(None).unwrap();
    assert_eq!(p.guard.outcome(), None);
    p.guard.fail();
    p.guard.succeed();
    assert_eq!(p.guard.outcome(), Some(Outcome::Failure), "a failure is final");
    drop(p);
    assert_eq!(streak_of(&lb, 0), 1);
    drop(lb.pick(None).unwrap());
    assert_eq!(streak_of(&lb, 0), 1, "dropped without an outcome: a cancellation");
    let mut p = lb.pick(None).unwrap();
    p.guard.succeed();
    assert_eq!(p.guard.outcome(), Some(Outcome::Success));
    drop(p);
    assert_eq!(streak_of(&lb, 0), 0, "a success ends the streak");
    let s = status_of(&lb, 0);
    assert_eq!((s.in_flight, s.failures), (0, 1));
}

// === the per-attempt timeout ===

#[tokio::test(start_paused = true)]
async fn an_attempt_over_the_timeout_fails_and_names_the_endpoint() {
    let script = Script::new();
    script.set(0, Act::Hang, Duration::ZERO);
    let limit = Duration::from_millis(100);
    let lb = Balancer::builder(RoundRobin::new())
        .timeout(limit)
        .spawn(discover::fixed([ep(0)]), scripted(script.clone()));
    lb.ready_endpoints(1).await;
    let start = Instant::now();
    let err = lb.clone().oneshot(()).await.unwrap_err();
    assert_eq!(start.elapsed(), limit, "fails when the limit runs out, not later");
    assert!(is_timeout(&*err), "{err}");
    let at = err.downcast_ref::<EndpointError>().expect("the endpoint is named");
    assert_eq!(at.endpoint(), &id(0));
    let elapsed = at.inner().downcast_ref::<Elapsed>().expect("the source is Elapsed");
    assert_eq!(elapsed.timeout(), limit);
    let s = status_of(&lb, 0);
    assert_eq!(
        (s.in_flight, s.requests, s.failures),
        (0, 1, 1),
        "a timeout is a failure"
    );
    assert_eq!(streak_of(&lb, 0), 1);

    // An answer just inside the limit passes; one just over it does not.
    script.set(0, Act::Answer, limit - Duration::from_millis(1));
    assert_eq!(lb.clone().oneshot(()).await.unwrap(), 0);
    script.set(0, Act::Answer, limit + Duration::from_millis(1));
    let err = lb.clone().oneshot(()).await.unwrap_err();
    assert!(is_timeout(&*err), "{err}");
    // Other errors are not timeouts.
    script.set(0, Act::Fail, Duration::ZERO);
    let err = lb.clone().oneshot(()).await.unwrap_err();
    assert!(!is_timeout(&*err), "{err}");
    assert_eq!(status_of(&lb, 0).failures, 3);
}

/// An endpoint service that never becomes ready is as hung as one that never answers.
#[tokio::test(start_paused = true)]
async fn the_timeout_covers_an_endpoint_that_is_never_ready() {
    let script = Script::new();
    script.set(0, Act::NotReady, Duration::ZERO);
    let lb = Balancer::builder(RoundRobin::new())
        .timeout(Duration::from_millis(100))
        .spawn(discover::fixed([ep(0)]), scripted(script.clone()));
    lb.ready_endpoints(1).await;
    let err = lb.clone().oneshot(()).await.unwrap_err();
    assert!(is_timeout(&*err), "{err}");
    assert_eq!(err.downcast_ref::<EndpointError>().unwrap().endpoint(), &id(0));
    assert_eq!(status_of(&lb, 0).failures, 1);
}

/// Timeouts are failures for outlier detection (on by default): a hung endpoint is
/// ejected, and with a retry that avoids it requests go on being served.
#[tokio::test(start_paused = true)]
async fn a_hung_endpoint_is_ejected_for_its_timeouts() {
    let script = Script::new();
    script.set(0, Act::Hang, Duration::ZERO);
    let lb = Balancer::builder(RoundRobin::new())
        .timeout(Duration::from_millis(100))
        .spawn(discover::fixed([ep(0), ep(1)]), scripted(script.clone()));
    lb.ready_endpoints(2).await;
    let mut timeouts = 0;
    for _ in 0..20 {
        if timeouts == 5 {
            break;
        }
        match lb.clone().oneshot(()).await {
            Ok(i) => assert_eq!(i, 1),
            Err(e) => {
                let at = e.downcast_ref::<EndpointError>().expect("the endpoint is named");
                assert_eq!(at.endpoint(), &id(0));
                timeouts += 1;
                // The retry avoids the endpoint that timed out.
                let p = lb.pick_with(None, Some(at.endpoint())).unwrap();
                assert_eq!(p.service.idx, 1);
            }
        }
    }
    assert_eq!(timeouts, 5);
    eventually(
        "endpoint 0 ejected at the default threshold of 5 in a row",
        STEP,
        10,
        || health_of(&lb, 0) == Some(Health::Ejected),
    )
    .await;
    for _ in 0..10 {
        assert_eq!(lb.clone().oneshot(()).await.unwrap(), 1);
    }
}

// === the connector runs off the writer's loop ===

/// A connector whose futures the test finishes by hand: `gate(i)` opens endpoint `i`'s
/// attempts; until then they hang. `fail_first[i]` attempts fail first.
#[derive(Clone, Default)]
struct Gates {
    open: Arc<std::sync::Mutex<BTreeSet<usize>>>,
    notify: Arc<tokio::sync::Notify>,
    attempts: Arc<std::sync::Mutex<std::collections::BTreeMap<usize, u32>>>,
    fail_first: Arc<std::sync::Mutex<std::collections::BTreeMap<usize, u32>>>,
}

impl Gates {
    fn open(&self, i: usize) {
        self.open.lock().unwrap().insert(i);
        self.notify.notify_waiters();
    }

    fn attempts(&self, i: usize) -> u32 {
        self.attempts.lock().unwrap().get(&i).copied().unwrap_or(0)
    }

    fn connector(&self) -> impl Service<Endpoint, Response = Backend, Error = BoxError, Future: Send> + Send + 'static {
        let gates = self.clone();
        tower::service_fn(move |e: Endpoint| {
            let gates = gates.clone();
            async move {
                let i = index_of(&e);
                let n = {
                    let mut a = gates.attempts.lock().unwrap();
                    let n = a.entry(i).or_default();
                    *n += 1;
                    *n
                };
                if gates.fail_first.lock().unwrap().get(&i).is_some_and(|&k| n <= k) {
                    return Err::<Backend, BoxError>(format!("connection to {i} refused").into());
                }
                loop {
                    let opened = gates.notify.notified();
                    if gates.open.lock().unwrap().contains(&i) {
                        return Ok(Backend::new(i, Switches::new()));
                    }
                    opened.await;
                }
            }
        })
    }
}

use std::sync::Arc;

use lb_core::Connection;

fn connection_of<P: lb_core::balance::Balance, S, R>(lb: &Balancer<P, S, R>, i: usize) -> Connection {
    status_of(lb, i).connection
}

#[tokio::test(start_paused = true)]
async fn a_hung_connect_holds_up_neither_discovery_nor_drains_nor_other_endpoints() {
    let gates = Gates::default();
    gates.open(0);
    gates.open(2);
    let (publisher, subscription) = discover::channel();
    let lb = Balancer::builder(RoundRobin::new())
        .connect_timeout(Duration::from_secs(3600))
        .spawn(subscription, gates.connector());
    publisher.reset([ep(0), ep(1)]);
    lb.ready_endpoints(1).await;
    // Endpoint 1's connect hangs: it is listed as connecting and takes no request.
    assert_eq!(connection_of(&lb, 1), Connection::Connecting { attempts: 1 });
    assert_eq!(connection_of(&lb, 0), Connection::Ready);
    for _ in 0..10 {
        assert_eq!(
            lb.clone().oneshot(()).await.unwrap(),
            0,
            "only the endpoint with a service is picked"
        );
    }
    // Meanwhile the writer still follows discovery and operators.
    publisher.insert(ep(2));
    lb.ready_endpoints(2).await;
    publisher.remove(id(2));
    eventually("endpoint 2 leaves", STEP, 10, || {
        !ids(&lb).contains(&"ep002".to_string())
    })
    .await;
    lb.drain(id(0)).await.unwrap();
    assert_eq!(lb.eligible(), 0);
    lb.enable(id(0)).await.unwrap();
    // And once the connect finishes, the endpoint joins.
    gates.open(1);
    lb.ready_endpoints(2).await;
    let got: BTreeSet<usize> = [
        lb.clone().oneshot(()).await.unwrap(),
        lb.clone().oneshot(()).await.unwrap(),
    ]
    .into();
    assert_eq!(got, BTreeSet::from([0, 1]));
    assert_eq!(connection_of(&lb, 1), Connection::Ready);
}

#[tokio::test(start_paused = true)]
async fn a_failed_connect_is_shown_and_retried_with_backoff_until_it_succeeds() {
    let gates = Gates::default();
    gates.open(0);
    gates.fail_first.lock().unwrap().insert(0, 2);
    let lb = Balancer::builder(RoundRobin::new())
        .connect_backoff(Duration::from_secs(1), Duration::from_secs(1))
        .spawn(discover::fixed([ep(0)]), gates.connector());
    settle().await;
    match connection_of(&lb, 0) {
        Connection::Failed { attempts: 1, error } => assert!(error.contains("refused"), "{error}"),
        other => panic!("expected a failed first attempt, got {other:?}"),
    }
    assert_eq!(lb.eligible(), 0);
    assert!(is_no_endpoints(&*lb.clone().oneshot(()).await.unwrap_err()));
    // No retry before the backoff (1 s with jitter: at least 500 ms).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(gates.attempts(0), 1, "retried before the backoff");
    // Then retried, failing once more, then made.
    tokio::time::timeout(Duration::from_secs(5), lb.ready_endpoints(1))
        .await
        .expect("retried until made");
    assert_eq!(gates.attempts(0), 3);
    assert_eq!(connection_of(&lb, 0), Connection::Ready);
    assert_eq!(lb.clone().oneshot(()).await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_connect_over_the_connect_timeout_fails_and_is_retried() {
    let gates = Gates::default();
    let lb = Balancer::builder(RoundRobin::new())
        .connect_timeout(Duration::from_secs(2))
        .connect_backoff(Duration::from_millis(100), Duration::from_millis(100))
        .spawn(discover::fixed([ep(0)]), gates.connector());
    tokio::time::sleep(Duration::from_millis(2010)).await;
    match connection_of(&lb, 0) {
        Connection::Failed { attempts: 1, error } => {
            assert!(error.contains("timed out") || error.contains("2s"), "{error}")
        }
        other => panic!("expected a timed-out attempt, got {other:?}"),
    }
    gates.open(0);
    tokio::time::timeout(Duration::from_secs(1), lb.ready_endpoints(1))
        .await
        .expect("retried and made");
    assert_eq!(gates.attempts(0), 2);
}

#[tokio::test(start_paused = true)]
async fn removed_endpoints_serve_until_the_set_that_replaces_them_is_made() {
    let gates = Gates::default();
    gates.open(0);
    let (publisher, subscription) = discover::channel();
    let lb = Balancer::builder(RoundRobin::new()).spawn(subscription, gates.connector());
    publisher.reset([ep(0)]);
    lb.ready_endpoints(1).await;
    publisher.reset([ep(1)]);
    settle().await;
    assert_eq!(
        lb.clone().oneshot(()).await.unwrap(),
        0,
        "no gap while the new set connects"
    );
    gates.open(1);
    eventually("the new set takes over", STEP, 10, || ids(&lb) == ["ep001"]).await;
    assert_eq!(lb.clone().oneshot(()).await.unwrap(), 1);
}

// === discovery updates reach the policy ===

/// A policy that sends everything to the first endpoint whose `zone` metadata is "a",
/// read when the policy state is built.
#[derive(Debug)]
struct ZoneA;

impl lb_core::balance::Balance for ZoneA {
    type State = Option<usize>;

    fn name(&self) -> &'static str {
        "zone_a"
    }

    fn build(&self, set: &lb_core::balance::Candidates<'_>) -> Option<usize> {
        (0..set.len()).find(|&i| set.endpoint(i).endpoint().metadata().get("zone").map(String::as_str) == Some("a"))
    }

    fn pick(
        &self,
        state: &Option<usize>,
        _: &lb_core::balance::Candidates<'_>,
        _: &lb_core::balance::PickContext,
    ) -> Option<usize> {
        *state
    }
}

#[tokio::test(start_paused = true)]
async fn a_metadata_only_update_rebuilds_the_policy_state() {
    let (publisher, subscription) = discover::channel();
    let lb = Balancer::builder(ZoneA).spawn(subscription, healthy_backends());
    publisher.reset([ep(0).with_metadata("zone", "a"), ep(1).with_metadata("zone", "b")]);
    lb.ready_endpoints(2).await;
    assert_eq!(lb.clone().oneshot(()).await.unwrap(), 0);
    let generation = lb.status().generation;
    publisher.reset([ep(0).with_metadata("zone", "b"), ep(1).with_metadata("zone", "a")]);
    eventually("a new snapshot", STEP, 10, || lb.status().generation > generation).await;
    assert_eq!(
        lb.clone().oneshot(()).await.unwrap(),
        1,
        "the policy reads the new metadata"
    );
}

// === what `spawn` returns is current ===

#[tokio::test(start_paused = true)]
async fn the_first_call_right_after_spawn_sees_what_discovery_had_ready() {
    let lb = Balancer::builder(RoundRobin::new()).spawn(discover::fixed([ep(0), ep(1)]), healthy_backends());
    assert_eq!(lb.eligible(), 2, "applied before spawn returned");
    lb.clone().oneshot(()).await.expect("the first call finds endpoints");
    // A pushed set sent before spawn, too.
    let (publisher, subscription) = discover::channel();
    publisher.reset([ep(3)]);
    let lb = Balancer::builder(RoundRobin::new()).spawn(subscription, healthy_backends());
    assert_eq!(lb.clone().oneshot(()).await.unwrap(), 3);
}

// === robustness ===

#[tokio::test(start_paused = true)]
async fn a_balance_layer_applied_twice_shares_one_balancer() {
    use tower::Layer;
    let layer = BalanceLayer::new(Balancer::builder(RoundRobin::new()), discover::fixed([ep(0), ep(1)]));
    let a = layer.layer(healthy_backends());
    let b = layer.layer(healthy_backends());
    a.ready_endpoints(2).await;
    assert_eq!(b.eligible(), 2);
    a.drain(id(0)).await.unwrap();
    assert_eq!(b.eligible(), 1, "one balancer behind both");
    assert_eq!(b.clone().oneshot(()).await.unwrap(), 1);
}

/// A policy with a bug: it picks past the end of the set.
#[derive(Debug)]
struct OutOfRange;

impl lb_core::balance::Balance for OutOfRange {
    type State = ();

    fn name(&self) -> &'static str {
        "out_of_range"
    }

    fn build(&self, _: &lb_core::balance::Candidates<'_>) {}

    fn pick(&self, _: &(), set: &lb_core::balance::Candidates<'_>, _: &lb_core::balance::PickContext) -> Option<usize> {
        Some(set.len() + 5)
    }
}

/// In a release build the call fails with `NoEndpoints`; a debug build asserts, to
/// point at the policy.
#[tokio::test(start_paused = true)]
#[cfg_attr(debug_assertions, should_panic(expected = "out of range"))]
async fn a_policy_picking_out_of_range_is_no_pick() {
    let lb = Balancer::builder(OutOfRange).spawn(discover::fixed([ep(0)]), healthy_backends());
    let err = lb.clone().oneshot(()).await.unwrap_err();
    no_endpoints(&err);
}

#[tokio::test(start_paused = true)]
async fn status_grows_linearly_with_the_endpoints() {
    async fn fastest_status(n: usize) -> Duration {
        let eps = (0..n).map(|i| Endpoint::new(std::net::SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16))));
        let lb = Balancer::builder(RoundRobin::new()).spawn(discover::fixed(eps), healthy_backends());
        assert_eq!(lb.eligible(), n);
        (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                let s = lb.status();
                assert!(s.endpoints.iter().all(|e| e.effective_weight == Some(1.0)));
                t.elapsed()
            })
            .min()
            .unwrap()
    }
    let small = fastest_status(250).await;
    let large = fastest_status(8000).await;
    // Linear: 32 times the endpoints, about 32 times the time; quadratic: 1024 times.
    assert!(large < small * 100, "250 endpoints: {small:?}, 8000: {large:?}");
}

#[tokio::test(start_paused = true)]
async fn ewma_latency_says_whether_it_was_measured() {
    let lb = Balancer::builder(RoundRobin::new())
        .track_latency(true)
        .default_rtt(Duration::from_millis(10))
        .spawn(discover::fixed([ep(0)]), healthy_backends());
    let before = status_of(&lb, 0);
    assert!(!before.latency_measured, "the default RTT is no measurement");
    assert_eq!(before.ewma_latency, Duration::from_millis(10));
    lb.clone().oneshot(()).await.unwrap();
    assert!(status_of(&lb, 0).latency_measured);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_returns_once_the_snapshot_without_the_endpoint_is_out() {
    for _ in 0..50 {
        let lb = Balancer::builder(RoundRobin::new()).spawn(discover::fixed([ep(0), ep(1)]), healthy_backends());
        lb.drain(id(0)).await.unwrap();
        assert_eq!(lb.eligible(), 1, "drain returned before the snapshot was published");
        assert_eq!(status_of(&lb, 0).effective_weight, None);
        lb.enable(id(0)).await.unwrap();
        assert_eq!(lb.eligible(), 2);
    }
}
