//! The blocking reads: `GET /v1/health/service/:name` and
//! `GET /v1/catalog/services` (`agent/health_endpoint.go`,
//! `agent/catalog_endpoint.go`, `agent/blockingquery/blockingquery.go`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{lock, reject_enterprise, resolve, Reply, Req};
use crate::acl::Authz;
use crate::filter::{self, Filter, Kind, Record, Schema, Val};
use crate::goparse::{parse_go_bool, parse_go_duration, parse_go_uint};
use crate::state::{Check, Node, Service, State};
use crate::Inner;

/// `structs.DefaultQueryTime` and `MaxQueryTime`.
const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
const MAX_WAIT: Duration = Duration::from_secs(10 * 60);
/// `structs.JitterFraction`.
const JITTER_FRACTION: u32 = 16;

/// The query options of a blocking read, parsed in `HTTPHandlers.parse` order.
struct ReadOpts {
    dc: String,
    filter: Option<String>,
    consistency: &'static str,
    cached: bool,
    min_index: u64,
    wait: Option<i128>,
    node_meta: Vec<(String, String)>,
}

fn parse_read(inner: &Inner, req: &Req) -> Result<ReadOpts, Reply> {
    reject_enterprise(req)?;
    let node_meta = req
        .all("node-meta")
        .into_iter()
        .map(|raw| match raw.split_once(':') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (raw.to_owned(), String::new()),
        })
        .collect();
    let dc = req
        .q("dc")
        .filter(|d| !d.is_empty())
        .unwrap_or(&inner.opts.datacenter)
        .to_owned();
    let filter = req.q("filter").filter(|f| !f.is_empty()).map(str::to_owned);

    // parseConsistency
    let mut stale = req.has("stale");
    let consistent = req.has("consistent");
    let cached = req.has("cached");
    if let Some(max_stale) = req.q("max_stale").filter(|v| !v.is_empty()) {
        match parse_go_duration(max_stale) {
            None => return Err(Reply::text(400, format!("Invalid max_stale value {max_stale:?}"))),
            Some(d) if d > 0 => stale = true,
            Some(_) => {}
        }
    }
    if stale && consistent {
        return Err(Reply::text(
            400,
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ));
    }
    if cached && consistent {
        return Err(Reply::text(
            400,
            "Cannot specify ?cached with ?consistent, conflicting semantics.",
        ));
    }
    let consistency = if consistent {
        "consistent"
    } else if stale {
        "stale"
    } else {
        "leader"
    };

    // parseCacheControl
    if let Some(cc) = req.header("cache-control") {
        for directive in cc.to_ascii_lowercase().split(',') {
            let d = directive.trim();
            let value = d.strip_prefix("max-age=").or_else(|| d.strip_prefix("stale-if-error="));
            if value.is_some_and(|v| v.parse::<i64>().is_err()) {
                return Err(Reply::text(400, "Invalid Cache-Control header."));
            }
        }
    }

    // parseWait
    let mut wait = None;
    if let Some(w) = req.q("wait").filter(|w| !w.is_empty()) {
        wait = Some(parse_go_duration(w).ok_or_else(|| Reply::text(400, "Invalid wait time"))?);
    }
    let mut min_index = 0;
    if let Some(i) = req.q("index").filter(|i| !i.is_empty()) {
        min_index = parse_go_uint(i).ok_or_else(|| Reply::text(400, "Invalid index"))?;
    }
    Ok(ReadOpts {
        dc,
        filter,
        consistency,
        cached,
        min_index,
        wait,
        node_meta,
    })
}

/// `Server.RPCQueryTimeout`: default 5m, at most 10m, plus up to 1/16 jitter if enabled.
fn query_timeout(inner: &Inner, wait: Option<i128>) -> Duration {
    timeout_for(wait, inner.opts.jitter.then(|| inner.random()))
}

/// The timeout of a blocking query asking to `wait` (Go nanoseconds), with
/// `random` drawing the jitter when it is on.
fn timeout_for(wait: Option<i128>, random: Option<u64>) -> Duration {
    let requested = wait.unwrap_or(0);
    if requested < 0 {
        return Duration::ZERO;
    }
    let mut timeout = crate::goparse::nanos_to_duration(requested).min(MAX_WAIT);
    if timeout.is_zero() {
        timeout = DEFAULT_WAIT;
    }
    if let Some(random) = random {
        let span = u64::try_from((timeout / JITTER_FRACTION).as_nanos()).unwrap_or(u64::MAX);
        if span > 0 {
            timeout += Duration::from_nanos(random % span);
        }
    }
    timeout
}

/// Decrements the parked-query count when a blocking query ends (also when
/// its connection goes away and the future is dropped).
struct ParkedGuard<'a>(&'a Inner);

impl<'a> ParkedGuard<'a> {
    fn new(inner: &'a Inner) -> Self {
        inner.parked.send_modify(|n| *n += 1);
        ParkedGuard(inner)
    }
}

impl Drop for ParkedGuard<'_> {
    fn drop(&mut self) {
        self.0.parked.send_modify(|n| *n -= 1);
    }
}

/// `blockingquery.Query`: answers at once unless `min_index > 0`; otherwise
/// waits until the query's index exceeds `min_index`, the timeout passes, or
/// a snapshot restore abandons the state, then reads again.
async fn blocking<T>(
    inner: &Inner,
    min_index: u64,
    timeout: Duration,
    index_of: impl Fn(&State) -> u64,
    read: impl Fn(&State) -> T,
) -> (u64, T) {
    let mut changes = inner.changes.subscribe();
    let abandon = {
        let st = lock(&inner.state);
        changes.borrow_and_update();
        let idx = index_of(&st);
        if min_index == 0 || idx > min_index {
            return (idx, read(&st));
        }
        st.abandon_generation
    };
    let _parked = ParkedGuard::new(inner);
    let deadline = Instant::now() + timeout;
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
        let st = lock(&inner.state);
        changes.borrow_and_update();
        let idx = index_of(&st);
        if idx > min_index || st.abandon_generation != abandon {
            return (idx, read(&st));
        }
    }
    let st = lock(&inner.state);
    (index_of(&st), read(&st))
}

fn meta_headers(reply: Reply, index: u64, opts: &ReadOpts, filtered_by_acls: bool) -> Reply {
    let mut reply = reply
        .header("x-consul-effective-consistency", opts.consistency)
        .header("x-consul-index", index.max(1).to_string())
        .header("x-consul-knownleader", "true")
        .header("x-consul-lastcontact", "0")
        .header("x-consul-query-backend", "blocking-query");
    if filtered_by_acls {
        reply = reply.header("x-consul-results-filtered-by-acls", "true");
    }
    if opts.cached {
        reply = reply.header("x-cache", "MISS");
    }
    reply
}

fn node_meta_matches(node: Option<&Node>, wanted: &[(String, String)]) -> bool {
    wanted
        .iter()
        .all(|(k, v)| node.is_some_and(|n| n.meta.get(k) == Some(v)))
}

// ---------------------------------------------------------------- GET /v1/health/service/:name

pub(super) async fn health(inner: &Arc<Inner>, req: &Req, name: &str) -> Reply {
    let opts = match parse_read(inner, req) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let tags: Vec<String> = req.all("tag").into_iter().map(str::to_lowercase).collect();
    if name.is_empty() {
        return Reply::text(400, "Missing service name");
    }
    let passing = match req.q("passing") {
        None => false,
        Some("") => true,
        Some(v) => match parse_go_bool(v) {
            Some(b) => b,
            None => return Reply::text(400, "Invalid value for ?passing"),
        },
    };
    if opts.dc != inner.opts.datacenter {
        return Reply::text(500, "No path to datacenter");
    }
    let authz = match resolve(inner, req) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let filter = match opts.filter.as_deref().map(Filter::new::<HealthSchema>).transpose() {
        Ok(f) => f,
        Err(e) => return Reply::text(500, e),
    };
    let timeout = query_timeout(inner, opts.wait);
    let (index, (entries, hidden)) = blocking(
        inner,
        opts.min_index,
        timeout,
        |st| st.service_index(name),
        |st| health_entries(st, name, &tags, passing, &opts.node_meta, filter.as_ref(), &authz),
    )
    .await;
    meta_headers(Reply::json(&entries), index, &opts, hidden && authz.token_sent())
}

/// One instance as the filter sees it.
struct EntryView<'a> {
    node: &'a Node,
    service: &'a Service,
    checks: Vec<&'a Check>,
}

fn health_entries(
    st: &State,
    name: &str,
    tags: &[String],
    passing: bool,
    node_meta: &[(String, String)],
    filter: Option<&Filter>,
    authz: &Authz,
) -> (Vec<EntryJson>, bool) {
    let mut hidden = false;
    let mut out = Vec::new();
    for service in st.services.values().filter(|s| s.name == name) {
        // Tag filter: all given tags, case-insensitively (`serviceTagsFilter`).
        if !tags
            .iter()
            .all(|t| service.tags.iter().any(|have| have.to_lowercase() == *t))
        {
            continue;
        }
        let node = st.nodes.get(&service.node);
        if !node_meta_matches(node, node_meta) {
            continue;
        }
        let Some(node) = node else { continue };
        if !authz.service_read(&service.name) || !authz.node_read() {
            hidden = true;
            continue;
        }
        let view = EntryView {
            node,
            service,
            checks: st.entry_checks(service).collect(),
        };
        if passing && view.checks.iter().any(|c| c.status != "passing") {
            continue;
        }
        if filter.is_some_and(|f| !f.matches(&view)) {
            continue;
        }
        out.push(EntryJson::from(&view));
    }
    (out, hidden)
}

struct HealthSchema;

impl Schema for HealthSchema {
    fn kind(path: &[String]) -> Option<(Kind, bool)> {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        let plain = |k| Some((k, false));
        match p.as_slice() {
            ["Node", "ID" | "Node" | "Address" | "Datacenter" | "PeerName" | "Partition"] => plain(Kind::Str),
            ["Node", "TaggedAddresses" | "Meta"] => plain(Kind::Map),
            ["Node", "TaggedAddresses" | "Meta", _] => plain(Kind::Str),
            ["Service", "ID" | "Service" | "Address" | "Kind" | "PeerName" | "SocketPath"] => plain(Kind::Str),
            ["Service", "Tags"] => plain(Kind::StrList),
            ["Service", "Port"] => plain(Kind::Int),
            ["Service", "Meta" | "TaggedAddresses"] => plain(Kind::Map),
            ["Service", "Meta", _] => plain(Kind::Str),
            ["Service", "TaggedAddresses", _, "Address"] => plain(Kind::Str),
            ["Service", "TaggedAddresses", _, "Port"] => plain(Kind::Int),
            ["Service", "Weights", "Passing" | "Warning"] => plain(Kind::Int),
            ["Service", "EnableTagOverride"] => plain(Kind::Bool),
            ["Checks"] => plain(Kind::Structs),
            ["Checks", "Node" | "CheckID" | "Name" | "Status" | "Notes" | "Output" | "ServiceID" | "ServiceName" | "Type"] => {
                Some((Kind::Str, true))
            }
            ["Checks", "ServiceTags"] => Some((Kind::StrList, true)),
            _ => None,
        }
    }
}

static EMPTY_MAP: BTreeMap<String, String> = BTreeMap::new();

impl Record for EntryView<'_> {
    fn get(&self, path: &[String]) -> Vec<Val<'_>> {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        let (n, s) = (self.node, self.service);
        let one = match p.as_slice() {
            ["Node", "ID"] => Val::Str(&n.id),
            ["Node", "Node"] => Val::Str(&n.name),
            ["Node", "Address"] => Val::Str(&n.address),
            ["Node", "Datacenter"] => Val::Str(&n.datacenter),
            ["Node", "PeerName" | "Partition"] => Val::Str(""),
            ["Node", "TaggedAddresses"] => filter::keys(&n.tagged_addresses),
            ["Node", "Meta"] => filter::keys(&n.meta),
            ["Node", "TaggedAddresses", k] => filter::entry(&n.tagged_addresses, k),
            ["Node", "Meta", k] => filter::entry(&n.meta, k),
            ["Service", "ID"] => Val::Str(&s.id),
            ["Service", "Service"] => Val::Str(&s.name),
            ["Service", "Address"] => Val::Str(&s.address),
            ["Service", "Kind"] => Val::Str(&s.kind),
            ["Service", "PeerName" | "SocketPath"] => Val::Str(""),
            ["Service", "Tags"] => Val::StrList(&s.tags),
            ["Service", "Port"] => Val::Int(s.port),
            ["Service", "Meta"] => filter::keys(s.meta.as_ref().unwrap_or(&EMPTY_MAP)),
            ["Service", "Meta", k] => filter::entry(s.meta.as_ref().unwrap_or(&EMPTY_MAP), k),
            ["Service", "TaggedAddresses"] => filter::keys(&s.tagged_addresses),
            ["Service", "TaggedAddresses", k, "Address"] => Val::Str(s.tagged_addresses.get(*k).map_or("", |a| &a.0)),
            ["Service", "TaggedAddresses", k, "Port"] => Val::Int(s.tagged_addresses.get(*k).map_or(0, |a| a.1)),
            ["Service", "Weights", "Passing"] => Val::Int(s.weights.0),
            ["Service", "Weights", "Warning"] => Val::Int(s.weights.1),
            ["Service", "EnableTagOverride"] => Val::Bool(s.enable_tag_override),
            ["Checks"] => Val::Len(self.checks.len()),
            ["Checks", field] => {
                return self
                    .checks
                    .iter()
                    .map(|c| match *field {
                        "Node" => Val::Str(&c.node),
                        "CheckID" => Val::Str(&c.id),
                        "Name" => Val::Str(&c.name),
                        "Status" => Val::Str(&c.status),
                        "Notes" => Val::Str(&c.notes),
                        "Output" => Val::Str(&c.output),
                        "ServiceID" => Val::Str(&c.service_id),
                        "ServiceName" => Val::Str(&c.service_name),
                        "ServiceTags" => Val::StrList(&c.service_tags),
                        _ => Val::Str(&c.kind),
                    })
                    .collect()
            }
            _ => return Vec::new(),
        };
        vec![one]
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EntryJson {
    node: NodeJson,
    service: ServiceJson,
    checks: Vec<CheckJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeJson {
    #[serde(rename = "ID")]
    id: String,
    node: String,
    address: String,
    datacenter: String,
    tagged_addresses: BTreeMap<String, String>,
    meta: BTreeMap<String, String>,
    create_index: u64,
    modify_index: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceJson {
    #[serde(skip_serializing_if = "String::is_empty")]
    kind: String,
    #[serde(rename = "ID")]
    id: String,
    service: String,
    tags: Vec<String>,
    address: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tagged_addresses: BTreeMap<String, AddressJson>,
    meta: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "is_zero")]
    port: i64,
    weights: WeightsJson,
    enable_tag_override: bool,
    proxy: Value,
    connect: Value,
    peer_name: String,
    create_index: u64,
    modify_index: u64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AddressJson {
    address: String,
    port: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WeightsJson {
    passing: i64,
    warning: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CheckJson {
    node: String,
    #[serde(rename = "CheckID")]
    check_id: String,
    name: String,
    status: String,
    notes: String,
    output: String,
    #[serde(rename = "ServiceID")]
    service_id: String,
    service_name: String,
    service_tags: Vec<String>,
    #[serde(rename = "Type")]
    kind: String,
    exposed_port: i64,
    definition: Value,
    create_index: u64,
    modify_index: u64,
}

impl From<&EntryView<'_>> for EntryJson {
    fn from(v: &EntryView<'_>) -> Self {
        let (n, s) = (v.node, v.service);
        EntryJson {
            node: NodeJson {
                id: n.id.clone(),
                node: n.name.clone(),
                address: n.address.clone(),
                datacenter: n.datacenter.clone(),
                tagged_addresses: n.tagged_addresses.clone(),
                meta: n.meta.clone(),
                create_index: n.create_index,
                modify_index: n.modify_index,
            },
            service: ServiceJson {
                kind: s.kind.clone(),
                id: s.id.clone(),
                service: s.name.clone(),
                tags: s.tags.clone(),
                address: s.address.clone(),
                tagged_addresses: s
                    .tagged_addresses
                    .iter()
                    .map(|(k, (a, p))| {
                        (
                            k.clone(),
                            AddressJson {
                                address: a.clone(),
                                port: *p,
                            },
                        )
                    })
                    .collect(),
                meta: s.meta.clone(),
                port: s.port,
                weights: WeightsJson {
                    passing: s.weights.0,
                    warning: s.weights.1,
                },
                enable_tag_override: s.enable_tag_override,
                proxy: json!({"Mode": "", "MeshGateway": {}, "Expose": {}}),
                connect: json!({}),
                peer_name: String::new(),
                create_index: s.create_index,
                modify_index: s.modify_index,
            },
            checks: v
                .checks
                .iter()
                .map(|c| CheckJson {
                    node: c.node.clone(),
                    check_id: c.id.clone(),
                    name: c.name.clone(),
                    status: c.status.clone(),
                    notes: c.notes.clone(),
                    output: c.output.clone(),
                    service_id: c.service_id.clone(),
                    service_name: c.service_name.clone(),
                    service_tags: c.service_tags.clone(),
                    kind: c.kind.clone(),
                    exposed_port: 0,
                    definition: json!({}),
                    create_index: c.create_index,
                    modify_index: c.modify_index,
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------- GET /v1/catalog/services

pub(super) async fn catalog_services(inner: &Arc<Inner>, req: &Req) -> Reply {
    let opts = match parse_read(inner, req) {
        Ok(o) => o,
        Err(r) => return r,
    };
    if opts.dc != inner.opts.datacenter {
        return Reply::text(500, "No path to datacenter");
    }
    let authz = match resolve(inner, req) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let filter = match opts.filter.as_deref().map(Filter::new::<CatalogSchema>).transpose() {
        Ok(f) => f,
        Err(e) => return Reply::text(500, e),
    };
    let timeout = query_timeout(inner, opts.wait);
    let (index, (services, hidden)) = blocking(inner, opts.min_index, timeout, State::catalog_index, |st| {
        let mut hidden = false;
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in st.services.values() {
            let node = st.nodes.get(&s.node);
            if !node_meta_matches(node, &opts.node_meta) {
                continue;
            }
            let Some(node) = node else { continue };
            if !authz.service_read(&s.name) {
                hidden = true;
                continue;
            }
            if filter
                .as_ref()
                .is_some_and(|f| !f.matches(&CatalogView { node, service: s }))
            {
                continue;
            }
            out.entry(s.name.clone()).or_default().extend(s.tags.iter().cloned());
        }
        (out, hidden)
    })
    .await;
    meta_headers(Reply::json(&services), index, &opts, hidden && authz.token_sent())
}

/// A `structs.ServiceNode`, what the catalog filter sees.
struct CatalogView<'a> {
    node: &'a Node,
    service: &'a Service,
}

struct CatalogSchema;

impl Schema for CatalogSchema {
    fn kind(path: &[String]) -> Option<(Kind, bool)> {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        let kind = match p.as_slice() {
            ["ID" | "Node" | "Address" | "Datacenter" | "ServiceKind" | "ServiceID" | "ServiceName"] => Kind::Str,
            ["ServiceAddress" | "PeerName"] => Kind::Str,
            ["TaggedAddresses" | "NodeMeta" | "ServiceMeta" | "ServiceTaggedAddresses"] => Kind::Map,
            ["TaggedAddresses" | "NodeMeta" | "ServiceMeta", _] => Kind::Str,
            ["ServiceTags"] => Kind::StrList,
            ["ServicePort"] | ["ServiceWeights", "Passing" | "Warning"] => Kind::Int,
            ["ServiceEnableTagOverride"] => Kind::Bool,
            _ => return None,
        };
        Some((kind, false))
    }
}

impl Record for CatalogView<'_> {
    fn get(&self, path: &[String]) -> Vec<Val<'_>> {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        let (n, s) = (self.node, self.service);
        let meta = s.meta.as_ref().unwrap_or(&EMPTY_MAP);
        let v = match p.as_slice() {
            ["ID"] => Val::Str(&n.id),
            ["Node"] => Val::Str(&n.name),
            ["Address"] => Val::Str(&n.address),
            ["Datacenter"] => Val::Str(&n.datacenter),
            ["ServiceKind"] => Val::Str(&s.kind),
            ["ServiceID"] => Val::Str(&s.id),
            ["ServiceName"] => Val::Str(&s.name),
            ["ServiceAddress"] => Val::Str(&s.address),
            ["PeerName"] => Val::Str(""),
            ["TaggedAddresses"] => filter::keys(&n.tagged_addresses),
            ["NodeMeta"] => filter::keys(&n.meta),
            ["ServiceMeta"] => filter::keys(meta),
            ["ServiceTaggedAddresses"] => filter::keys(&s.tagged_addresses),
            ["TaggedAddresses", k] => filter::entry(&n.tagged_addresses, k),
            ["NodeMeta", k] => filter::entry(&n.meta, k),
            ["ServiceMeta", k] => filter::entry(meta, k),
            ["ServiceTags"] => Val::StrList(&s.tags),
            ["ServicePort"] => Val::Int(s.port),
            ["ServiceWeights", "Passing"] => Val::Int(s.weights.0),
            ["ServiceWeights", "Warning"] => Val::Int(s.weights.1),
            ["ServiceEnableTagOverride"] => Val::Bool(s.enable_tag_override),
            _ => return Vec::new(),
        };
        vec![v]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_defaults_caps_and_jitter() {
        let secs = |s: u64| Some(i128::from(s) * 1_000_000_000);
        assert_eq!(timeout_for(None, None), DEFAULT_WAIT);
        assert_eq!(timeout_for(Some(0), None), DEFAULT_WAIT);
        assert_eq!(timeout_for(secs(30), None), Duration::from_secs(30));
        assert_eq!(timeout_for(secs(3600), None), MAX_WAIT);
        assert_eq!(timeout_for(Some(-1), None), Duration::ZERO);
        assert_eq!(timeout_for(secs(16), Some(0)), Duration::from_secs(16));
        assert_eq!(
            timeout_for(secs(16), Some(u64::MAX)),
            Duration::from_secs(16) + Duration::from_nanos(u64::MAX % 1_000_000_000)
        );
        for r in [1, 999_999_999, 12_345_678_901] {
            let t = timeout_for(secs(16), Some(r));
            assert!(t >= Duration::from_secs(16) && t < Duration::from_secs(17), "{t:?}");
        }
        assert!(timeout_for(secs(3600), Some(u64::MAX - 1)) < MAX_WAIT + MAX_WAIT / 16);
    }
}
