//! A catalog: every service a source knows, by name, with its endpoints and the hints
//! its source carries for it (routes, policy, health check).
//!
//! Sources that see many services at once (a Docker Engine, a Consul catalog) publish a
//! whole [`Catalog`] through a [`tokio::sync::watch`] channel each time anything changes.
//! A balancer follows one service of it through [`service_updates`], which yields an
//! [`Update::Reset`] only when *that* service's endpoint set changes: a container of
//! another service starting wakes the stream but yields nothing.
//!
//! Endpoints and hints travel apart on purpose. A proxy builds services and routes from
//! the hints (rarely changing) and feeds each service's balancer from its endpoint stream
//! (changing with every container), so a new endpoint never rebuilds a balancer and its
//! state (counters, latency, health, ejections) survives.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::watch;

use super::Update;
use crate::endpoint::Endpoint;

/// Every service a source knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    /// `false` until the source's first good listing: a stream of a catalog that was
    /// never synced yields nothing, so a balancer keeps waiting rather than serving an
    /// empty set it was never told about.
    pub synced: bool,
    /// Services by name.
    pub services: BTreeMap<String, CatalogService>,
}

/// One service of a [`Catalog`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatalogService {
    /// Its eligible endpoints, sorted by id (so equal sets compare equal).
    pub endpoints: Vec<Endpoint>,
    /// What its source says about routing and balancing it.
    pub hints: Hints,
}

/// Routing and balancing hints a source carries for a service (Docker labels, Consul
/// tags). Values are checked when parsed ([`Hints::apply`]) but kept as the user wrote
/// them, so a consumer maps them onto its own types.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    /// Host rules (`example.com` or `*.example.com`), lowercased; empty for none.
    pub hosts: Vec<String>,
    /// A path prefix, starting with `/`.
    pub path_prefix: Option<String>,
    /// A policy name: `round_robin`, `least_conn`, `p2c`, `peak_ewma`, `random`,
    /// `consistent_hash`.
    pub balance: Option<String>,
    /// What consistent hashing hashes: `client_ip`, `path`, `header:NAME`, `cookie:NAME`.
    pub hash_key: Option<String>,
    /// Active HTTP health check path, starting with `/`.
    pub health_path: Option<String>,
    /// Active health check interval.
    pub health_interval: Option<Duration>,
    /// Get a certificate for the hosts from ACME (`tls.acme=true`).
    pub tls_acme: bool,
    /// Redirect plain HTTP requests on the routes to HTTPS (`redirect_https`); `None`
    /// follows the consumer's default.
    pub redirect_https: Option<bool>,
}

/// The policy names [`Hints::balance`] accepts.
pub const POLICY_NAMES: [&str; 6] = [
    "round_robin",
    "least_conn",
    "p2c",
    "peak_ewma",
    "random",
    "consistent_hash",
];

impl Catalog {
    /// A synced catalog of `services`.
    pub fn synced(services: BTreeMap<String, CatalogService>) -> Self {
        Self { synced: true, services }
    }
}

/// The endpoint updates of one service of a watched catalog.
///
/// Yields the service's set once the catalog is synced (an empty set if the service is
/// not in it), then a new `Reset` each time the set changes. It never fails, and ends when
/// the catalog's sender is dropped (the balancer then keeps its last set).
///
/// # Examples
///
/// ```
/// use std::collections::BTreeMap;
/// use std::sync::Arc;
/// use futures_util::StreamExt;
/// use lb_core::discover::catalog::{self, Catalog, CatalogService};
/// use lb_core::discover::Update;
/// use lb_core::Endpoint;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (tx, rx) = tokio::sync::watch::channel(Arc::new(Catalog::default()));
/// let mut web = catalog::service_updates(rx, "web");
/// let ep = Endpoint::new("127.0.0.1:9001".parse().unwrap());
/// let svc = CatalogService { endpoints: vec![ep.clone()], ..Default::default() };
/// tx.send_replace(Arc::new(Catalog::synced(BTreeMap::from([("web".to_string(), svc)]))));
/// assert_eq!(web.next().await.unwrap().unwrap(), Update::Reset(vec![ep]));
/// # }
/// ```
pub fn service_updates(
    catalog: watch::Receiver<Arc<Catalog>>,
    name: impl Into<String>,
) -> impl Stream<Item = Result<Update, std::convert::Infallible>> + Send + Unpin + 'static {
    struct State {
        rx: watch::Receiver<Arc<Catalog>>,
        name: String,
        last: Option<Vec<Endpoint>>,
        first: bool,
    }
    let state = State {
        rx: catalog,
        name: name.into(),
        last: None,
        first: true,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if !st.first && st.rx.changed().await.is_err() {
                return None;
            }
            st.first = false;
            let set = {
                let cat = st.rx.borrow_and_update();
                if !cat.synced {
                    continue;
                }
                cat.services
                    .get(&st.name)
                    .map(|s| s.endpoints.clone())
                    .unwrap_or_default()
            };
            if st.last.as_ref() != Some(&set) {
                st.last = Some(set.clone());
                return Some((Ok(Update::Reset(set)), st));
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn svc(ports: &[u16]) -> CatalogService {
        CatalogService {
            endpoints: ports
                .iter()
                .map(|p| Endpoint::new(([127, 0, 0, 1], *p).into()))
                .collect(),
            hints: Hints::default(),
        }
    }

    fn cat(entries: &[(&str, &[u16])]) -> Arc<Catalog> {
        Arc::new(Catalog::synced(
            entries.iter().map(|(n, p)| (n.to_string(), svc(p))).collect(),
        ))
    }

    fn ports(u: Update) -> Vec<u16> {
        match u {
            Update::Reset(set) => set.iter().map(|e| e.addr().port()).collect(),
            other => panic!("expected a Reset, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn yields_only_changes_of_its_own_service() {
        let (tx, rx) = watch::channel(Arc::new(Catalog::default()));
        let mut web = service_updates(rx, "web");
        // Unsynced: nothing, even though a value is there. Synced: the set.
        tx.send_replace(cat(&[("web", &[1]), ("api", &[2])]));
        assert_eq!(ports(web.next().await.unwrap().unwrap()), [1]);
        // Another service changes, then ours: only ours is yielded.
        tx.send_replace(cat(&[("web", &[1]), ("api", &[2, 3])]));
        tx.send_replace(cat(&[("web", &[1, 4]), ("api", &[2, 3])]));
        assert_eq!(ports(web.next().await.unwrap().unwrap()), [1, 4]);
        // Gone from the catalog: an empty set.
        tx.send_replace(cat(&[("api", &[2])]));
        assert_eq!(ports(web.next().await.unwrap().unwrap()), Vec::<u16>::new());
        drop(tx);
        assert!(web.next().await.is_none());
    }

    #[tokio::test]
    async fn an_unsynced_catalog_yields_nothing_until_synced() {
        let (tx, rx) = watch::channel(Arc::new(Catalog::default()));
        let mut web = service_updates(rx, "web");
        tx.send_replace(Arc::new(Catalog::default()));
        tx.send_replace(cat(&[]));
        // The first item is the synced (empty) set, not anything from before.
        assert_eq!(ports(web.next().await.unwrap().unwrap()), Vec::<u16>::new());
    }
}
