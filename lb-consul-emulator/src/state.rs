//! The catalog: nodes, service instances, checks and the raft index.
//!
//! Index bookkeeping follows Consul's state store (`agent/consul/state/catalog.go`):
//! every write that changes something takes the next raft index and stamps
//! `ModifyIndex` (and `CreateIndex` on create) of what it touched; a write that
//! changes nothing (an identical re-registration, a TTL pass on a passing
//! check with the same output) takes no index. The per-service index is the
//! maximum over the service's instances, their nodes, every check in their
//! entries, and the last deletion touching the service (the "tombstone", so
//! that removing the newest instance or check never moves it backwards). A
//! name with no instances uses the services table's index, which deletions
//! also advance.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::register::{CheckDef, Registration};

/// The serf check every node carries.
pub(crate) const SERF_CHECK_ID: &str = "serfHealth";
const SERF_CHECK_NAME: &str = "Serf Health Status";
const SERF_ALIVE: &str = "Agent alive and reachable";
const SERF_DEAD: &str = "Agent not live or unreachable";
/// `agent/agent.go`: the synthetic check of service maintenance mode.
const MAINT_PREFIX: &str = "_service_maintenance:";
const MAINT_NAME: &str = "Service Maintenance Mode";
const MAINT_DEFAULT_REASON: &str =
    "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.";
/// `agent/checks/check.go`: `DefaultBufSize`, the cap on a check's output.
const OUTPUT_MAX: usize = 4 * 1024;

/// A check status: one of the three Consul knows.
pub(crate) fn valid_status(s: &str) -> bool {
    matches!(s, "passing" | "warning" | "critical")
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) datacenter: String,
    pub(crate) tagged_addresses: BTreeMap<String, String>,
    pub(crate) meta: BTreeMap<String, String>,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Service {
    pub(crate) node: String,
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) tags: Vec<String>,
    pub(crate) address: String,
    pub(crate) port: i64,
    pub(crate) meta: Option<BTreeMap<String, String>>,
    pub(crate) tagged_addresses: BTreeMap<String, (String, i64)>,
    pub(crate) weights: (i64, i64),
    pub(crate) enable_tag_override: bool,
    pub(crate) kind: String,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

impl Service {
    fn same_content(&self, other: &Service) -> bool {
        Service {
            create_index: 0,
            modify_index: 0,
            ..self.clone()
        } == Service {
            create_index: 0,
            modify_index: 0,
            ..other.clone()
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Check {
    pub(crate) node: String,
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) status: String,
    pub(crate) notes: String,
    pub(crate) output: String,
    pub(crate) service_id: String,
    pub(crate) service_name: String,
    pub(crate) service_tags: Vec<String>,
    pub(crate) kind: String,
    /// `Some` for TTL checks.
    pub(crate) ttl: Option<Duration>,
    /// The output of the last TTL update, quoted when the TTL lapses.
    pub(crate) last_output: String,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

impl Check {
    /// Equal for the catalog (indexes and TTL bookkeeping aside).
    fn same_content(&self, other: &Check) -> bool {
        let strip = |c: &Check| Check {
            create_index: 0,
            modify_index: 0,
            last_output: String::new(),
            ..c.clone()
        };
        strip(self) == strip(other)
    }
}

/// A TTL timer to (re)start: the check and its generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TtlArm {
    pub(crate) node: String,
    pub(crate) check_id: String,
    pub(crate) ttl: Duration,
    pub(crate) generation: u64,
}

/// Why a TTL update failed (`agent/agent_endpoint.go`, `agent/agent.go`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TtlError {
    UnknownCheck,
    NotTtl,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) datacenter: String,
    pub(crate) raft_index: u64,
    pub(crate) nodes: BTreeMap<String, Node>,
    /// Keyed by (node, service ID).
    pub(crate) services: BTreeMap<(String, String), Service>,
    /// Keyed by (node, check ID).
    pub(crate) checks: BTreeMap<(String, String), Check>,
    /// Service name -> index of the last deletion of one of its instances or checks.
    tombstones: HashMap<String, u64>,
    /// Index of the last write to the services table (creates, updates, deletes).
    services_table_index: u64,
    /// Floor every query index is raised to (spurious wake-ups).
    floor: u64,
    /// Bumped by a snapshot restore: parked queries return at once.
    pub(crate) abandon_generation: u64,
    /// TTL timer generations: a timer only fires if its check still has its generation.
    ttl_generations: HashMap<(String, String), u64>,
    next_generation: u64,
}

/// The result of a write: whether it changed anything, and TTL timers to start or stop.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub(crate) changed: bool,
    pub(crate) arm: Vec<TtlArm>,
    pub(crate) disarm: Vec<(String, String)>,
}

impl State {
    pub(crate) fn new(datacenter: String, start_index: u64) -> State {
        State {
            datacenter,
            raft_index: start_index.max(1),
            nodes: BTreeMap::new(),
            services: BTreeMap::new(),
            checks: BTreeMap::new(),
            tombstones: HashMap::new(),
            services_table_index: 0,
            floor: 0,
            abandon_generation: 0,
            ttl_generations: HashMap::new(),
            next_generation: 0,
        }
    }

    fn next_index(&self) -> u64 {
        self.raft_index + 1
    }

    /// Creates the node (with its passing `serfHealth` check) or moves it to
    /// another address. The very first node is stamped with the current index
    /// (it exists "before" the emulator's first write).
    pub(crate) fn add_node(&mut self, name: &str, address: &str, initial: bool) -> bool {
        let idx = if initial { self.raft_index } else { self.next_index() };
        if let Some(node) = self.nodes.get_mut(name) {
            if node.address == address {
                return false;
            }
            node.address = address.to_owned();
            node.tagged_addresses = tagged_node_addresses(address);
            node.modify_index = idx;
            self.raft_index = idx;
            return true;
        }
        self.nodes.insert(
            name.to_owned(),
            Node {
                id: node_uuid(name),
                name: name.to_owned(),
                address: address.to_owned(),
                datacenter: self.datacenter.clone(),
                tagged_addresses: tagged_node_addresses(address),
                meta: [("consul-network-segment".to_owned(), String::new())].into(),
                create_index: idx,
                modify_index: idx,
            },
        );
        self.checks.insert(
            (name.to_owned(), SERF_CHECK_ID.to_owned()),
            Check {
                node: name.to_owned(),
                id: SERF_CHECK_ID.to_owned(),
                name: SERF_CHECK_NAME.to_owned(),
                status: "passing".to_owned(),
                notes: String::new(),
                output: SERF_ALIVE.to_owned(),
                service_id: String::new(),
                service_name: String::new(),
                service_tags: Vec::new(),
                kind: String::new(),
                ttl: None,
                last_output: String::new(),
                create_index: idx,
                modify_index: idx,
            },
        );
        self.raft_index = idx;
        true
    }

    /// Flips the node's `serfHealth` check.
    pub(crate) fn set_node_health(&mut self, node: &str, status: &str) -> bool {
        let output = if status == "passing" { SERF_ALIVE } else { SERF_DEAD };
        self.update_check_status(node, SERF_CHECK_ID, status, output)
    }

    /// The agent's service registration (`Agent.addServiceInternal`): the
    /// service replaces any instance with that ID on the node; checks that
    /// already existed keep their status and output; every TTL check restarts
    /// its timer; with `replace_existing_checks` the service's other checks go.
    pub(crate) fn register(
        &mut self,
        node: &str,
        reg: &Registration,
        replace_existing_checks: bool,
    ) -> Result<Effects, String> {
        if !self.nodes.contains_key(node) {
            return Err(format!("Unknown node {node:?}"));
        }
        let idx = self.next_index();
        let mut fx = Effects::default();
        let key = (node.to_owned(), reg.id.clone());

        // The service itself.
        let mut service = Service {
            node: node.to_owned(),
            id: reg.id.clone(),
            name: reg.name.clone(),
            tags: reg.tags.clone(),
            address: reg.address.clone(),
            port: reg.port,
            meta: reg.meta.clone(),
            tagged_addresses: reg.tagged_addresses.clone(),
            weights: reg.weights,
            enable_tag_override: reg.enable_tag_override,
            kind: reg.kind.clone(),
            create_index: idx,
            modify_index: idx,
        };
        let previous_name = match self.services.get(&key) {
            Some(old) if old.same_content(&service) => {
                service.create_index = old.create_index;
                service.modify_index = old.modify_index;
                None
            }
            Some(old) => {
                service.create_index = old.create_index;
                fx.changed = true;
                Some(old.name.clone())
            }
            None => {
                fx.changed = true;
                None
            }
        };
        if let Some(old_name) = previous_name.filter(|n| *n != reg.name) {
            // The instance left its old service: that service's index must move.
            self.tombstones.insert(old_name, idx);
        }
        if fx.changed {
            self.services_table_index = idx;
        }
        self.services.insert(key, service);

        // Its checks.
        let total = reg.checks.len();
        let mut kept: Vec<String> = Vec::new();
        for (i, def) in reg.checks.iter().enumerate() {
            let check_id = def.check_id.clone().unwrap_or_else(|| {
                if total > 1 {
                    format!("service:{}:{}", reg.id, i + 1)
                } else {
                    format!("service:{}", reg.id)
                }
            });
            kept.push(check_id.clone());
            let ckey = (node.to_owned(), check_id.clone());
            let existing = self.checks.get(&ckey).cloned();
            let mut check = new_check(node, &check_id, def, reg, idx);
            if let Some(old) = &existing {
                // Carried over from the agent's snapshot of check state.
                check.status = old.status.clone();
                check.output = old.output.clone();
                check.create_index = old.create_index;
                if check.same_content(old) {
                    check.modify_index = old.modify_index;
                } else {
                    fx.changed = true;
                }
            } else {
                fx.changed = true;
            }
            match def.ttl {
                Some(ttl) => fx.arm.push(self.arm(node, &check_id, ttl)),
                None => {
                    if existing.as_ref().is_some_and(|c| c.ttl.is_some()) {
                        self.disarm(node, &check_id);
                        fx.disarm.push(ckey.clone());
                    }
                }
            }
            self.checks.insert(ckey, check);
        }

        // Other checks of this service follow its name and tags.
        let service_checks: Vec<(String, String)> = self
            .checks
            .iter()
            .filter(|((n, _), c)| n == node && c.service_id == reg.id && !kept.contains(&c.id))
            .map(|(k, _)| k.clone())
            .collect();
        for ckey in service_checks {
            if replace_existing_checks {
                if let Some(old) = self.checks.remove(&ckey) {
                    if old.ttl.is_some() {
                        self.disarm(&ckey.0, &ckey.1);
                        fx.disarm.push(ckey.clone());
                    }
                    self.tombstones.insert(old.service_name, idx);
                    fx.changed = true;
                }
                continue;
            }
            if let Some(c) = self.checks.get_mut(&ckey) {
                if c.service_name != reg.name || c.service_tags != reg.tags {
                    c.service_name = reg.name.clone();
                    c.service_tags = reg.tags.clone();
                    c.modify_index = idx;
                    fx.changed = true;
                }
            }
        }

        if fx.changed {
            self.raft_index = idx;
        }
        Ok(fx)
    }

    /// Removes the instance and its checks. `None` if there is no such instance.
    pub(crate) fn deregister(&mut self, node: &str, service_id: &str) -> Option<Effects> {
        let service = self.services.remove(&(node.to_owned(), service_id.to_owned()))?;
        let idx = self.next_index();
        let mut fx = Effects {
            changed: true,
            ..Effects::default()
        };
        let keys: Vec<(String, String)> = self
            .checks
            .iter()
            .filter(|((n, _), c)| n == node && c.service_id == service_id)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(c) = self.checks.remove(&k) {
                if c.ttl.is_some() {
                    self.disarm(&k.0, &k.1);
                    fx.disarm.push(k);
                }
            }
        }
        self.tombstones.insert(service.name, idx);
        self.services_table_index = idx;
        self.raft_index = idx;
        Some(fx)
    }

    /// Sets a check's status and output (any check type). `false` if unknown.
    pub(crate) fn update_check_status(&mut self, node: &str, check_id: &str, status: &str, output: &str) -> bool {
        let idx = self.next_index();
        let Some(c) = self.checks.get_mut(&(node.to_owned(), check_id.to_owned())) else {
            return false;
        };
        if c.status != status || c.output != output {
            c.status = status.to_owned();
            c.output = output.to_owned();
            c.modify_index = idx;
            self.raft_index = idx;
        }
        true
    }

    /// A TTL report (`pass`/`warn`/`fail`/`update`): sets status and output
    /// and restarts the timer.
    pub(crate) fn update_ttl(
        &mut self,
        node: &str,
        check_id: &str,
        status: &str,
        output: &str,
    ) -> Result<TtlArm, TtlError> {
        let key = (node.to_owned(), check_id.to_owned());
        let ttl = match self.checks.get(&key) {
            None => return Err(TtlError::UnknownCheck),
            Some(c) => c.ttl.ok_or(TtlError::NotTtl)?,
        };
        let output = truncate_output(output);
        self.update_check_status(node, check_id, status, &output);
        if let Some(c) = self.checks.get_mut(&key) {
            c.last_output = output;
        }
        Ok(self.arm(node, check_id, ttl))
    }

    /// The TTL of generation `generation` lapsed: critical, "TTL expired".
    pub(crate) fn ttl_expired(&mut self, node: &str, check_id: &str, generation: u64) -> bool {
        let key = (node.to_owned(), check_id.to_owned());
        if self.ttl_generations.get(&key) != Some(&generation) {
            return false;
        }
        self.ttl_generations.remove(&key);
        let Some(c) = self.checks.get(&key) else { return false };
        let output = if c.last_output.is_empty() {
            "TTL expired".to_owned()
        } else {
            format!("TTL expired (last output before timeout follows): {}", c.last_output)
        };
        let before = self.raft_index;
        self.update_check_status(node, check_id, "critical", &output);
        self.raft_index != before
    }

    /// Service maintenance on or off. `None` if the service is unknown.
    pub(crate) fn maintenance(&mut self, node: &str, service_id: &str, enable: bool, reason: &str) -> Option<Effects> {
        let service = self.services.get(&(node.to_owned(), service_id.to_owned()))?.clone();
        let check_id = format!("{MAINT_PREFIX}{service_id}");
        let key = (node.to_owned(), check_id.clone());
        let mut fx = Effects::default();
        let idx = self.next_index();
        if enable {
            if self.checks.contains_key(&key) {
                return Some(fx);
            }
            let notes = if reason.is_empty() {
                MAINT_DEFAULT_REASON
            } else {
                reason
            };
            self.checks.insert(
                key,
                Check {
                    node: node.to_owned(),
                    id: check_id,
                    name: MAINT_NAME.to_owned(),
                    status: "critical".to_owned(),
                    notes: notes.to_owned(),
                    output: String::new(),
                    service_id: service.id.clone(),
                    service_name: service.name.clone(),
                    service_tags: service.tags.clone(),
                    kind: "maintenance".to_owned(),
                    ttl: None,
                    last_output: String::new(),
                    create_index: idx,
                    modify_index: idx,
                },
            );
        } else {
            if self.checks.remove(&key).is_none() {
                return Some(fx);
            }
            self.tombstones.insert(service.name, idx);
        }
        fx.changed = true;
        self.raft_index = idx;
        Some(fx)
    }

    fn arm(&mut self, node: &str, check_id: &str, ttl: Duration) -> TtlArm {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.ttl_generations
            .insert((node.to_owned(), check_id.to_owned()), generation);
        TtlArm {
            node: node.to_owned(),
            check_id: check_id.to_owned(),
            ttl,
            generation,
        }
    }

    fn disarm(&mut self, node: &str, check_id: &str) {
        self.ttl_generations.remove(&(node.to_owned(), check_id.to_owned()));
    }

    /// A spurious wake-up: the index moves, every query's index with it, data unchanged.
    pub(crate) fn spurious(&mut self) {
        self.raft_index += 1;
        self.floor = self.raft_index;
    }

    /// A snapshot restore to an older index: every stored index is capped at
    /// `to`, the next write takes `to + 1`, parked queries are abandoned.
    pub(crate) fn rewind(&mut self, to: u64) {
        let to = to.max(1);
        self.raft_index = to;
        for n in self.nodes.values_mut() {
            n.create_index = n.create_index.min(to);
            n.modify_index = n.modify_index.min(to);
        }
        for s in self.services.values_mut() {
            s.create_index = s.create_index.min(to);
            s.modify_index = s.modify_index.min(to);
        }
        for c in self.checks.values_mut() {
            c.create_index = c.create_index.min(to);
            c.modify_index = c.modify_index.min(to);
        }
        for t in self.tombstones.values_mut() {
            *t = (*t).min(to);
        }
        self.services_table_index = self.services_table_index.min(to);
        self.floor = self.floor.min(to);
        self.abandon_generation += 1;
    }

    /// The checks that appear in an entry for this instance: the node's own
    /// checks and the service's.
    pub(crate) fn entry_checks<'a>(&'a self, service: &'a Service) -> impl Iterator<Item = &'a Check> + 'a {
        self.checks
            .range((service.node.clone(), String::new())..)
            .take_while(move |((n, _), _)| *n == service.node)
            .map(|(_, c)| c)
            .filter(move |c| c.service_id.is_empty() || c.service_id == service.id)
    }

    /// The blocking index of `/v1/health/service/:name`.
    pub(crate) fn service_index(&self, name: &str) -> u64 {
        let mut idx = 0;
        let mut found = false;
        for s in self.services.values().filter(|s| s.name == name) {
            found = true;
            idx = idx.max(s.modify_index);
            if let Some(n) = self.nodes.get(&s.node) {
                idx = idx.max(n.modify_index);
            }
            for c in self.entry_checks(s) {
                idx = idx.max(c.modify_index);
            }
        }
        if found {
            idx = idx.max(self.tombstones.get(name).copied().unwrap_or(0));
        } else {
            idx = self.services_table_index;
        }
        idx.max(self.floor)
    }

    /// The blocking index of `/v1/catalog/services`.
    pub(crate) fn catalog_index(&self) -> u64 {
        self.services_table_index.max(self.floor)
    }
}

fn new_check(node: &str, check_id: &str, def: &CheckDef, reg: &Registration, idx: u64) -> Check {
    Check {
        node: node.to_owned(),
        id: check_id.to_owned(),
        name: def
            .name
            .clone()
            .unwrap_or_else(|| format!("Service '{}' check", reg.name)),
        status: def.status.clone().unwrap_or_else(|| "critical".to_owned()),
        notes: def.notes.clone(),
        output: String::new(),
        service_id: reg.id.clone(),
        service_name: reg.name.clone(),
        service_tags: reg.tags.clone(),
        kind: def.kind.to_owned(),
        ttl: def.ttl,
        last_output: String::new(),
        create_index: idx,
        modify_index: idx,
    }
}

/// `CheckTTL.SetStatus`: output beyond 4 KiB is cut with a note.
fn truncate_output(output: &str) -> String {
    if output.len() <= OUTPUT_MAX {
        return output.to_owned();
    }
    let mut cut = OUTPUT_MAX;
    while !output.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{} ... (captured {} of {} bytes)",
        &output[..cut],
        OUTPUT_MAX,
        output.len()
    )
}

fn tagged_node_addresses(address: &str) -> BTreeMap<String, String> {
    let v6 = address.contains(':');
    let family = if v6 { "ipv6" } else { "ipv4" };
    [
        ("lan".to_owned(), address.to_owned()),
        (format!("lan_{family}"), address.to_owned()),
        ("wan".to_owned(), address.to_owned()),
        (format!("wan_{family}"), address.to_owned()),
    ]
    .into()
}

/// A stable UUID-shaped node ID derived from the name.
pub(crate) fn node_uuid(name: &str) -> String {
    uuid_from(&format!("node:{name}"))
}

/// A UUID-shaped string from two FNV-1a hashes of `seed`.
pub(crate) fn uuid_from(seed: &str) -> String {
    let h1 = fnv1a(seed.as_bytes(), 0xcbf2_9ce4_8422_2325);
    let h2 = fnv1a(seed.as_bytes(), 0x8422_2325_cbf2_9ce4);
    let hex = format!("{h1:016x}{h2:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    bytes
        .iter()
        .fold(basis, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::register::parse_registration;

    fn reg(v: serde_json::Value) -> Registration {
        parse_registration(&v).unwrap()
    }

    fn state() -> State {
        let mut st = State::new("dc1".into(), 10);
        st.add_node("agent-a", "127.0.0.1", true);
        st
    }

    #[test]
    fn identical_registration_takes_no_index() {
        let mut st = state();
        let r = reg(serde_json::json!({"Name": "api", "ID": "api-1", "Port": 80, "Check": {"TTL": "10s"}}));
        assert!(st.register("agent-a", &r, false).unwrap().changed);
        let idx = st.raft_index;
        let fx = st.register("agent-a", &r, false).unwrap();
        assert!(!fx.changed);
        assert_eq!(st.raft_index, idx);
        assert_eq!(fx.arm.len(), 1, "a re-registered TTL check restarts its timer");
    }

    #[test]
    fn deleting_the_newest_instance_keeps_the_index() {
        let mut st = state();
        st.register("agent-a", &reg(serde_json::json!({"Name": "api", "ID": "a1"})), false)
            .unwrap();
        st.register("agent-a", &reg(serde_json::json!({"Name": "api", "ID": "a2"})), false)
            .unwrap();
        let before = st.service_index("api");
        st.deregister("agent-a", "a2").unwrap();
        assert!(st.service_index("api") > before);
        st.deregister("agent-a", "a1").unwrap();
        assert!(st.service_index("api") > before);
        assert_eq!(st.service_index("api"), st.raft_index);
    }

    #[test]
    fn stale_ttl_generation_is_ignored() {
        let mut st = state();
        let fx = st
            .register(
                "agent-a",
                &reg(serde_json::json!({"Name": "api", "Check": {"TTL": "1s", "Status": "passing"}})),
                false,
            )
            .unwrap();
        let first = fx.arm[0].generation;
        let second = st.update_ttl("agent-a", "service:api", "passing", "ok").unwrap();
        assert!(!st.ttl_expired("agent-a", "service:api", first));
        assert!(st.ttl_expired("agent-a", "service:api", second.generation));
        let c = &st.checks[&("agent-a".to_owned(), "service:api".to_owned())];
        assert_eq!(c.status, "critical");
        assert_eq!(c.output, "TTL expired (last output before timeout follows): ok");
    }

    #[test]
    fn output_is_truncated_like_the_agent() {
        let long = "x".repeat(5000);
        let t = truncate_output(&long);
        assert!(t.ends_with(" ... (captured 4096 of 5000 bytes)"));
    }
}
