//! The agent endpoints: registration, deregistration, TTL reports,
//! maintenance and `agent/self` (`agent/agent_endpoint.go`, `agent/acl.go`).

use std::sync::Arc;

use serde_json::{json, Value};

use super::{lock, reject_enterprise, resolve, Reply, Req};
use crate::acl::Authz;
use crate::goparse::parse_go_bool;
use crate::register::{parse_registration, Phase};
use crate::state::TtlError;
use crate::{Inner, AGENT_NODE};

const EMULATED_VERSION: &str = "1.19.0";

/// `decodeBody`: one JSON value from the body; an empty body is `EOF`.
fn decode_body(body: &[u8]) -> Result<Value, String> {
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
    match values.next() {
        None => Err("Request decode failed: EOF".into()),
        Some(Err(e)) if e.is_eof() => Err("Request decode failed: unexpected EOF".into()),
        Some(Err(e)) => Err(format!("Request decode failed: {e}")),
        Some(Ok(v)) => Ok(v),
    }
}

pub(super) fn register(inner: &Arc<Inner>, req: &Req) -> Reply {
    if let Err(r) = reject_enterprise(req) {
        return r;
    }
    let body = match decode_body(&req.body) {
        Ok(v) => v,
        Err(e) => return Reply::text(400, e),
    };
    let parsed = parse_registration(&body);
    if let Err(e) = &parsed {
        if e.phase == Phase::BeforeAcl {
            return Reply::text(400, e.message.clone());
        }
    }
    let authz = match resolve(inner, req) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let reg = match parsed {
        Ok(r) => r,
        Err(e) => return Reply::text(400, e.message),
    };
    // `vetServiceRegisterWithAuthorizer`: write on the new name and on the one it replaces.
    if let Err(e) = authz.service_write(&reg.name) {
        return Reply::text(403, e);
    }
    let existing = lock(&inner.state)
        .services
        .get(&(AGENT_NODE.to_owned(), reg.id.clone()))
        .map(|s| s.name.clone());
    if let Some(Err(e)) = existing.map(|name| authz.service_write(&name)) {
        return Reply::text(403, e);
    }
    let replace =
        req.has("replace-existing-checks") && matches!(req.q("replace-existing-checks"), Some("") | Some("true"));
    match inner.write(|st| st.register(AGENT_NODE, &reg, replace)) {
        Ok(()) => Reply::empty(),
        Err(e) => Reply::text(500, e),
    }
}

fn unknown_service(id: &str) -> Reply {
    Reply::text(
        404,
        format!("Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."),
    )
}

/// `vetServiceUpdateWithAuthorizer`: 404 for an unknown ID, else `service:write` on its name.
fn vet_service_update(inner: &Inner, authz: &Authz, id: &str) -> Result<(), Reply> {
    let name = lock(&inner.state)
        .services
        .get(&(AGENT_NODE.to_owned(), id.to_owned()))
        .map(|s| s.name.clone());
    match name {
        None => Err(unknown_service(id)),
        Some(name) => authz.service_write(&name).map_err(|e| Reply::text(403, e)),
    }
}

pub(super) fn deregister(inner: &Arc<Inner>, req: &Req, id: &str) -> Reply {
    if let Err(r) = reject_enterprise(req) {
        return r;
    }
    let authz = match resolve(inner, req) {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Err(r) = vet_service_update(inner, &authz, id) {
        return r;
    }
    match inner.write(|st| st.deregister(AGENT_NODE, id).ok_or(())) {
        Ok(()) => Reply::empty(),
        Err(()) => unknown_service(id),
    }
}

pub(super) fn check_update(inner: &Arc<Inner>, req: &Req, status: Option<&'static str>, id: &str) -> Reply {
    let (status, output) = match status {
        Some(s) => (s.to_owned(), req.q("note").unwrap_or("").to_owned()),
        None => {
            let body = match decode_body(&req.body) {
                Ok(v) => v,
                Err(e) => return Reply::text(400, e),
            };
            let field = |name: &str| -> Result<String, Reply> {
                let Value::Object(obj) = &body else {
                    return Err(Reply::text(
                        400,
                        "Request decode failed: json: cannot unmarshal value into Go value of type agent.checkUpdate",
                    ));
                };
                match obj.iter().rfind(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v) {
                    None | Some(Value::Null) => Ok(String::new()),
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(_) => Err(Reply::text(
                        400,
                        format!(
                            "Request decode failed: json: cannot unmarshal value into Go struct field checkUpdate.{name} of type string"
                        ),
                    )),
                }
            };
            let (status, output) = match (field("Status"), field("Output")) {
                (Ok(s), Ok(o)) => (s, o),
                (Err(r), _) | (_, Err(r)) => return r,
            };
            if !crate::state::valid_status(&status) {
                return Reply::text(400, format!("Invalid check status: '{status}'"));
            }
            (status, output)
        }
    };
    if let Err(r) = reject_enterprise(req) {
        return r;
    }
    let authz = match resolve(inner, req) {
        Ok(a) => a,
        Err(r) => return r,
    };
    // `vetCheckUpdateWithAuthorizer`
    let owner = lock(&inner.state)
        .checks
        .get(&(AGENT_NODE.to_owned(), id.to_owned()))
        .map(|c| c.service_name.clone());
    match owner {
        None => {
            return Reply::text(
                404,
                format!("Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."),
            )
        }
        Some(service) if !service.is_empty() => {
            if let Err(e) = authz.service_write(&service) {
                return Reply::text(403, e);
            }
        }
        Some(_) => {
            if let Err(e) = authz.node_write(AGENT_NODE) {
                return Reply::text(403, e);
            }
        }
    }
    match inner.write_ttl(|st| st.update_ttl(AGENT_NODE, id, &status, &output)) {
        Ok(()) => Reply::empty(),
        Err(TtlError::NotTtl) => Reply::text(500, format!("CheckID {id:?} does not have associated TTL")),
        Err(TtlError::UnknownCheck) => Reply::text(
            404,
            format!("Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."),
        ),
    }
}

pub(super) fn maintenance(inner: &Arc<Inner>, req: &Req, id: &str) -> Reply {
    if id.is_empty() {
        return Reply::text(400, "Missing service ID");
    }
    let Some(raw) = req.q("enable") else {
        return Reply::text(400, "Missing value for enable");
    };
    let Some(enable) = parse_go_bool(raw) else {
        return Reply::text(400, format!("Invalid value for enable: {raw:?}"));
    };
    if let Err(r) = reject_enterprise(req) {
        return r;
    }
    let authz = match resolve(inner, req) {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Err(r) = vet_service_update(inner, &authz, id) {
        return r;
    }
    let reason = req.q("reason").unwrap_or("").to_owned();
    match inner.write(|st| st.maintenance(AGENT_NODE, id, enable, &reason).ok_or(())) {
        Ok(()) => Reply::empty(),
        Err(()) => Reply::text(404, format!("No service registered with ID {id:?}")),
    }
}

pub(super) fn agent_self(inner: &Arc<Inner>, req: &Req) -> Reply {
    let authz = match resolve(inner, req) {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Err(e) = authz.agent_read(AGENT_NODE) {
        return Reply::text(403, e);
    }
    let (node_id, address) = {
        let st = lock(&inner.state);
        st.nodes
            .get(AGENT_NODE)
            .map(|n| (n.id.clone(), n.address.clone()))
            .unwrap_or_default()
    };
    Reply::json(&json!({
        "Config": {
            "Datacenter": inner.opts.datacenter,
            "PrimaryDatacenter": inner.opts.datacenter,
            "NodeName": AGENT_NODE,
            "NodeID": node_id,
            "Revision": "emulator",
            "Server": true,
            "Version": EMULATED_VERSION,
            "BuildDate": "1970-01-01T00:00:00Z",
        },
        "DebugConfig": {},
        "Coord": null,
        "Member": {
            "Name": AGENT_NODE,
            "Addr": address,
            "Port": 8301,
            "Tags": {"dc": inner.opts.datacenter, "role": "consul", "build": EMULATED_VERSION},
            "Status": 1,
        },
        "Stats": {},
        "Meta": {"consul-network-segment": ""},
        "xDS": null,
    }))
}
