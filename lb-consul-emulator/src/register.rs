//! Decoding and validating the body of `PUT /v1/agent/service/register`
//! (`agent/agent_endpoint.go` `AgentRegisterService`, `agent/structs`
//! `ServiceDefinition` / `CheckType`).
//!
//! Keys match case-insensitively, as Go's `encoding/json` does, and a `_` in a
//! key is ignored so that the snake_case spellings the agent also takes
//! (`enable_tag_override`, `deregister_critical_service_after`) work. Unknown
//! keys are ignored. Durations are Go duration strings or nanosecond numbers.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::goparse::{nanos_to_duration, parse_go_duration};
use crate::state::valid_status;

/// A decoded service registration.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) tags: Vec<String>,
    pub(crate) address: String,
    pub(crate) port: i64,
    pub(crate) meta: Option<BTreeMap<String, String>>,
    pub(crate) tagged_addresses: BTreeMap<String, (String, i64)>,
    pub(crate) weights: (i64, i64),
    pub(crate) enable_tag_override: bool,
    pub(crate) kind: String,
    pub(crate) checks: Vec<CheckDef>,
}

/// One check of a registration.
#[derive(Debug, Clone)]
pub(crate) struct CheckDef {
    pub(crate) check_id: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) notes: String,
    pub(crate) status: Option<String>,
    /// `CheckType.Type()`: `ttl`, `http`, `tcp`, ...
    pub(crate) kind: &'static str,
    pub(crate) ttl: Option<Duration>,
}

/// When the agent reports an error relative to resolving the ACL token:
/// decoding, the name and the address are checked before; weights, meta and
/// checks after (so a bad token wins over those).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    BeforeAcl,
    AfterAcl,
}

/// A 400 answer: its phase and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegError {
    pub(crate) phase: Phase,
    pub(crate) message: String,
}

fn early(message: String) -> RegError {
    RegError {
        phase: Phase::BeforeAcl,
        message,
    }
}

fn late(message: String) -> RegError {
    RegError {
        phase: Phase::AfterAcl,
        message,
    }
}

fn decode_failed(detail: impl std::fmt::Display) -> RegError {
    early(format!("Request decode failed: {detail}"))
}

/// Go's name for a JSON value's type in unmarshal errors.
fn json_type(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(n) if n.is_i64() || n.is_u64() => "number".into(),
        Value::Number(n) => format!("number {n}"),
        Value::String(_) => "string".into(),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
    }
}

fn type_error(v: &Value, strukt: &str, field: &str, go_type: &str) -> RegError {
    decode_failed(format!(
        "json: cannot unmarshal {} into Go struct field {strukt}.{field} of type {go_type}",
        json_type(v)
    ))
}

fn norm(key: &str) -> String {
    key.chars().filter(|c| *c != '_').flat_map(char::to_lowercase).collect()
}

/// The value of a key, matched like Go's decoder (last match wins); `null` reads as absent.
fn get<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    let want = norm(name);
    obj.iter()
        .rfind(|(k, _)| norm(k) == want)
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

fn get_string(obj: &Map<String, Value>, key: &str, strukt: &str) -> Result<Option<String>, RegError> {
    match get(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(type_error(v, strukt, key, "string")),
    }
}

fn get_int(obj: &Map<String, Value>, key: &str, strukt: &str) -> Result<Option<i64>, RegError> {
    match get(obj, key) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| type_error(&Value::Number(n.clone()), strukt, key, "int")),
        Some(v) => Err(type_error(v, strukt, key, "int")),
    }
}

fn get_bool(obj: &Map<String, Value>, key: &str, strukt: &str) -> Result<Option<bool>, RegError> {
    match get(obj, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(type_error(v, strukt, key, "bool")),
    }
}

fn get_strings(obj: &Map<String, Value>, key: &str, strukt: &str) -> Result<Option<Vec<String>>, RegError> {
    match get(obj, key) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                Value::Null => Ok(String::new()),
                v => Err(type_error(v, strukt, key, "string")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(v) => Err(type_error(v, strukt, key, "[]string")),
    }
}

fn get_duration(obj: &Map<String, Value>, key: &str) -> Result<Option<i128>, RegError> {
    match get(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => parse_go_duration(s)
            .map(Some)
            .ok_or_else(|| decode_failed(format!("time: invalid duration {s:?}"))),
        Some(Value::Number(n)) => Ok(Some(n.as_f64().map_or(0, |f| f as i128))),
        Some(v) => Err(type_error(v, "CheckType", key, "time.Duration")),
    }
}

/// Decodes and validates a registration body. Errors are complete 400 bodies.
pub(crate) fn parse_registration(body: &Value) -> Result<Registration, RegError> {
    let Value::Object(obj) = body else {
        return Err(decode_failed(format!(
            "json: cannot unmarshal {} into Go value of type structs.ServiceDefinition",
            json_type(body)
        )));
    };
    const SD: &str = "ServiceDefinition";
    let name = get_string(obj, "Name", SD)?.unwrap_or_default();
    let id = get_string(obj, "ID", SD)?.unwrap_or_default();
    let tags = get_strings(obj, "Tags", SD)?.unwrap_or_default();
    let address = get_string(obj, "Address", SD)?.unwrap_or_default();
    let port = get_int(obj, "Port", SD)?.unwrap_or(0);
    let enable_tag_override = get_bool(obj, "EnableTagOverride", SD)?.unwrap_or(false);
    let kind = get_string(obj, "Kind", SD)?.unwrap_or_default();
    let meta = match get(obj, "Meta") {
        None => None,
        Some(Value::Object(m)) => Some(
            m.iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    Value::Null => Ok((k.clone(), String::new())),
                    v => Err(type_error(v, SD, "Meta", "string")),
                })
                .collect::<Result<BTreeMap<_, _>, _>>()?,
        ),
        Some(v) => Err(type_error(v, SD, "Meta", "map[string]string"))?,
    };
    let mut tagged_addresses = BTreeMap::new();
    match get(obj, "TaggedAddresses") {
        None => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let Value::Object(addr) = v else {
                    return Err(type_error(v, SD, "TaggedAddresses", "structs.ServiceAddress"));
                };
                let a = get_string(addr, "Address", "ServiceAddress")?.unwrap_or_default();
                let p = get_int(addr, "Port", "ServiceAddress")?.unwrap_or(0);
                tagged_addresses.insert(k.clone(), (a, p));
            }
        }
        Some(v) => {
            return Err(type_error(
                v,
                SD,
                "TaggedAddresses",
                "map[string]structs.ServiceAddress",
            ))
        }
    }
    let weights = match get(obj, "Weights") {
        None => None,
        Some(Value::Object(w)) => Some((
            get_int(w, "Passing", "Weights")?.unwrap_or(0),
            get_int(w, "Warning", "Weights")?.unwrap_or(0),
        )),
        Some(v) => return Err(type_error(v, SD, "Weights", "structs.Weights")),
    };

    // Checks: `Check` first (unless empty), then `Checks`.
    let mut raw_checks: Vec<&Map<String, Value>> = Vec::new();
    match get(obj, "Check") {
        None => {}
        Some(Value::Object(c)) => raw_checks.push(c),
        Some(v) => return Err(type_error(v, SD, "Check", "structs.CheckType")),
    }
    match get(obj, "Checks") {
        None => {}
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::Object(c) => raw_checks.push(c),
                    Value::Null => {}
                    v => return Err(type_error(v, SD, "Checks", "structs.CheckType")),
                }
            }
        }
        Some(v) => return Err(type_error(v, SD, "Checks", "structs.CheckTypes")),
    }
    let mut decoded = Vec::new();
    for (i, c) in raw_checks.into_iter().enumerate() {
        let parsed = decode_check(c)?;
        // An empty singular `Check` object is no check at all.
        if i == 0 && get(obj, "Check").is_some() && parsed.is_empty() {
            continue;
        }
        decoded.push(parsed);
    }

    // Validation, in the agent's order.
    if name.is_empty() {
        return Err(early("Missing service name".into()));
    }
    if matches!(address.as_str(), "0.0.0.0" | "::" | "[::]") {
        return Err(early("Invalid service address".into()));
    }
    if let Some((passing, warning)) = weights {
        let err = if passing < 1 {
            Some("Passing must be greater than 0")
        } else if warning < 0 {
            Some("Warning must be greater or equal than 0")
        } else if passing > 65535 || warning > 65535 {
            Some("DNS Weight must be between 0 and 65535")
        } else {
            None
        };
        if let Some(e) = err {
            return Err(late(format!("Invalid Weights: {e}")));
        }
    }
    if let Some(m) = &meta {
        validate_meta(m).map_err(|e| late(format!("Invalid Service Meta: {e}")))?;
    }
    let mut checks = Vec::new();
    for c in &decoded {
        checks.push(c.validate().map_err(|e| late(format!("Invalid check: {e}")))?);
    }
    if decoded
        .iter()
        .any(|c| c.status.as_deref().is_some_and(|s| !s.is_empty() && !valid_status(s)))
    {
        return Err(late("Status for checks must 'passing', 'warning', 'critical'".into()));
    }

    // `Agent.addServiceInternal`: an IP service address gets default
    // `lan_ipv4`/`wan_ipv4` (or `_ipv6`) tagged addresses.
    if let Ok(ip) = address.parse::<std::net::IpAddr>() {
        let v4 = match ip {
            std::net::IpAddr::V4(_) => true,
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
        };
        let family = if v4 { "ipv4" } else { "ipv6" };
        for side in ["lan", "wan"] {
            tagged_addresses
                .entry(format!("{side}_{family}"))
                .or_insert_with(|| (address.clone(), port));
        }
    }

    Ok(Registration {
        id: if id.is_empty() { name.clone() } else { id },
        name,
        tags,
        address,
        port,
        meta,
        tagged_addresses,
        weights: weights.unwrap_or((1, 1)),
        enable_tag_override,
        kind,
        checks,
    })
}

/// `structs.validateMetadata`, for services.
fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), String> {
    if meta.len() > 64 {
        return Err("Node metadata cannot contain more than 64 key/value pairs".into());
    }
    for (k, v) in meta {
        let problem = if k.is_empty() {
            Some("Key cannot be blank".to_owned())
        } else if !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            Some("Key contains invalid characters".to_owned())
        } else if k.len() > 128 {
            Some("Key is too long (limit: 128 characters)".to_owned())
        } else if k.starts_with("consul-") {
            Some("Key prefix 'consul-' is reserved for internal use".to_owned())
        } else if v.len() > 512 {
            Some("Value is too long (limit: 512 characters)".to_owned())
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(format!("Couldn't load metadata pair ('{k}', '{v}'): {p}"));
        }
    }
    Ok(())
}

/// The fields of a `CheckType` that matter for validation and the catalog.
#[derive(Debug, Default)]
struct RawCheck {
    check_id: Option<String>,
    name: Option<String>,
    notes: String,
    status: Option<String>,
    ttl: i128,
    interval: i128,
    http: String,
    tcp: String,
    udp: String,
    grpc: String,
    h2ping: String,
    os_service: String,
    script_args: Vec<String>,
    docker_container_id: String,
    alias_node: String,
    alias_service: String,
    output_max_size: i64,
    other_fields: bool,
}

const CT: &str = "CheckType";

fn decode_check(c: &Map<String, Value>) -> Result<RawCheck, RegError> {
    let mut args = get_strings(c, "Args", CT)?;
    if args.is_none() {
        args = get_strings(c, "ScriptArgs", CT)?;
    }
    let known = [
        "checkid",
        "id",
        "name",
        "notes",
        "status",
        "ttl",
        "interval",
        "http",
        "tcp",
        "udp",
        "grpc",
        "h2ping",
        "osservice",
        "args",
        "scriptargs",
        "dockercontainerid",
        "aliasnode",
        "aliasservice",
        "outputmaxsize",
    ];
    Ok(RawCheck {
        check_id: get_string(c, "CheckID", CT)?
            .or(get_string(c, "ID", CT)?)
            .filter(|s| !s.is_empty()),
        name: get_string(c, "Name", CT)?.filter(|s| !s.is_empty()),
        notes: get_string(c, "Notes", CT)?.unwrap_or_default(),
        status: get_string(c, "Status", CT)?,
        ttl: get_duration(c, "TTL")?.unwrap_or(0),
        interval: get_duration(c, "Interval")?.unwrap_or(0),
        http: get_string(c, "HTTP", CT)?.unwrap_or_default(),
        tcp: get_string(c, "TCP", CT)?.unwrap_or_default(),
        udp: get_string(c, "UDP", CT)?.unwrap_or_default(),
        grpc: get_string(c, "GRPC", CT)?.unwrap_or_default(),
        h2ping: get_string(c, "H2PING", CT)?.unwrap_or_default(),
        os_service: get_string(c, "OSService", CT)?.unwrap_or_default(),
        script_args: args.unwrap_or_default(),
        docker_container_id: get_string(c, "DockerContainerID", CT)?.unwrap_or_default(),
        alias_node: get_string(c, "AliasNode", CT)?.unwrap_or_default(),
        alias_service: get_string(c, "AliasService", CT)?.unwrap_or_default(),
        output_max_size: get_int(c, "OutputMaxSize", CT)?.unwrap_or(0),
        other_fields: c
            .iter()
            .any(|(k, v)| !v.is_null() && !known.contains(&norm(k).as_str())),
    })
}

impl RawCheck {
    fn is_empty(&self) -> bool {
        self.check_id.is_none()
            && self.name.is_none()
            && self.notes.is_empty()
            && self.status.as_deref().unwrap_or("").is_empty()
            && self.ttl == 0
            && self.interval == 0
            && self.http.is_empty()
            && self.tcp.is_empty()
            && self.udp.is_empty()
            && self.grpc.is_empty()
            && self.h2ping.is_empty()
            && self.os_service.is_empty()
            && self.script_args.is_empty()
            && self.docker_container_id.is_empty()
            && self.alias_node.is_empty()
            && self.alias_service.is_empty()
            && self.output_max_size == 0
            && !self.other_fields
    }

    fn is_alias(&self) -> bool {
        !self.alias_node.is_empty() || !self.alias_service.is_empty()
    }

    /// `CheckType.Validate`, then `CheckType.Type`.
    fn validate(&self) -> Result<CheckDef, String> {
        let script = !self.script_args.is_empty();
        let interval_check = script
            || !self.http.is_empty()
            || !self.tcp.is_empty()
            || !self.udp.is_empty()
            || !self.grpc.is_empty()
            || !self.h2ping.is_empty()
            || !self.os_service.is_empty();
        if self.interval > 0 && self.ttl > 0 {
            return Err("Interval and TTL cannot both be specified".into());
        }
        if interval_check && self.interval <= 0 {
            return Err("Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or GRPC checks".into());
        }
        if interval_check && self.is_alias() {
            return Err("Interval cannot be set for Alias checks".into());
        }
        if self.is_alias() && self.ttl > 0 {
            return Err("TTL must be not be set for Alias checks".into());
        }
        if !interval_check && !self.is_alias() && self.ttl <= 0 {
            return Err("TTL must be > 0 for TTL checks".into());
        }
        if self.output_max_size < 0 {
            return Err("MaxOutputMaxSize must be positive".into());
        }
        let kind = if !self.grpc.is_empty() {
            "grpc"
        } else if !self.http.is_empty() {
            "http"
        } else if self.ttl > 0 {
            "ttl"
        } else if !self.tcp.is_empty() {
            "tcp"
        } else if !self.udp.is_empty() {
            "udp"
        } else if self.is_alias() {
            "alias"
        } else if script && !self.docker_container_id.is_empty() {
            "docker"
        } else if script {
            "script"
        } else if !self.h2ping.is_empty() {
            "h2ping"
        } else if !self.os_service.is_empty() {
            "os_service"
        } else {
            ""
        };
        Ok(CheckDef {
            check_id: self.check_id.clone(),
            name: self.name.clone(),
            notes: self.notes.clone(),
            status: self.status.clone().filter(|s| !s.is_empty()),
            kind,
            ttl: (kind == "ttl").then(|| nanos_to_duration(self.ttl)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_case_insensitive_and_snake_case_works() {
        let r = parse_registration(&json!({
            "name": "api", "ID": "api-1", "port": 80, "enable_tag_override": true,
            "tagged_addresses": {"lan": {"address": "10.0.0.1", "port": 81}},
            "check": {"ttl": "5s", "status": "passing"}
        }))
        .unwrap();
        assert_eq!((r.name.as_str(), r.id.as_str(), r.port), ("api", "api-1", 80));
        assert!(r.enable_tag_override);
        assert_eq!(r.tagged_addresses["lan"], ("10.0.0.1".to_owned(), 81));
        assert_eq!(r.tagged_addresses.len(), 1, "no defaults without an IP address");
        assert_eq!(r.checks[0].ttl, Some(Duration::from_secs(5)));
        assert_eq!(r.weights, (1, 1));
        let r = parse_registration(&json!({"Name": "a", "Address": "10.1.2.3", "Port": 7,
            "TaggedAddresses": {"wan_ipv4": {"Address": "1.2.3.4", "Port": 70}}}))
        .unwrap();
        assert_eq!(r.tagged_addresses["lan_ipv4"], ("10.1.2.3".to_owned(), 7));
        assert_eq!(r.tagged_addresses["wan_ipv4"], ("1.2.3.4".to_owned(), 70));
        let r = parse_registration(&json!({"Name": "a", "Address": "fd00::1"})).unwrap();
        assert_eq!(r.tagged_addresses.keys().collect::<Vec<_>>(), ["lan_ipv6", "wan_ipv6"]);
        let r = parse_registration(&json!({"Name": "a", "Address": "db.internal"})).unwrap();
        assert!(r.tagged_addresses.is_empty());
    }

    #[test]
    fn errors_and_phases() {
        let e = |v: Value| parse_registration(&v).unwrap_err();
        assert_eq!(e(json!({})), early("Missing service name".into()));
        assert_eq!(
            e(json!({"Name": "a", "Address": "0.0.0.0"})),
            early("Invalid service address".into())
        );
        assert_eq!(e(json!({"Name": "a", "Port": "80"})).message, "Request decode failed: json: cannot unmarshal string into Go struct field ServiceDefinition.Port of type int");
        assert_eq!(
            e(json!([])).message,
            "Request decode failed: json: cannot unmarshal array into Go value of type structs.ServiceDefinition"
        );
        assert_eq!(
            e(json!({"Name": "a", "Check": {"TTL": "soon"}})).message,
            "Request decode failed: time: invalid duration \"soon\""
        );
        assert_eq!(
            e(json!({"Name": "a", "Weights": {"Passing": 0}})),
            late("Invalid Weights: Passing must be greater than 0".into())
        );
        assert_eq!(
            e(json!({"Name": "a", "Meta": {"bad key": "v"}})).message,
            "Invalid Service Meta: Couldn't load metadata pair ('bad key', 'v'): Key contains invalid characters"
        );
        assert_eq!(
            e(json!({"Name": "a", "Check": {"HTTP": "http://x"}})).message,
            "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or GRPC checks"
        );
        assert_eq!(
            e(json!({"Name": "a", "Checks": [{"Notes": "n"}]})).message,
            "Invalid check: TTL must be > 0 for TTL checks"
        );
        assert_eq!(
            e(json!({"Name": "a", "Check": {"TTL": "1s", "Status": "ok"}})).message,
            "Status for checks must 'passing', 'warning', 'critical'"
        );
    }

    #[test]
    fn check_kinds() {
        let r = parse_registration(&json!({"Name": "a", "Check": {}, "Checks": [
            {"HTTP": "http://x", "Interval": "5s"}, {"TCP": "x:1", "Interval": 1_000_000_000u64},
            {"Args": ["true"], "Interval": "1s"}, {"AliasService": "b"}, {"TTL": "1m"}
        ]}))
        .unwrap();
        let kinds: Vec<&str> = r.checks.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, ["http", "tcp", "script", "alias", "ttl"]);
    }
}
