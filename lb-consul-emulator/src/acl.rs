//! ACL tokens: resolution and the permission checks the emulated endpoints
//! make (`acl/errors.go` for the texts, `agent/acl.go` for which endpoint
//! checks what). With ACLs on, the anonymous token (no token sent) grants
//! nothing, as under `default_policy = "deny"`.

use crate::state::uuid_from;
use crate::Access;

/// `acl.ErrNotFound`: an unknown secret, on any endpoint.
pub(crate) const ACL_NOT_FOUND: &str = "ACL not found";

/// The identity a request acts with.
#[derive(Debug, Clone)]
pub(crate) enum Authz {
    /// ACLs are off: everything is allowed.
    Disabled,
    /// No token sent.
    Anonymous,
    /// A known token.
    Token { accessor: String, access: Access },
}

/// Resolves the secret a request carries. `Err` means the secret is unknown.
pub(crate) fn resolve(tokens: Option<&[(String, Access)]>, secret: Option<&str>) -> Result<Authz, ()> {
    let Some(tokens) = tokens else {
        return Ok(Authz::Disabled);
    };
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return Ok(Authz::Anonymous);
    };
    tokens
        .iter()
        .find(|(s, _)| s == secret)
        .map(|(s, access)| Authz::Token {
            accessor: accessor_id(s),
            access: access.clone(),
        })
        .ok_or(())
}

/// The AccessorID the emulator reports for a secret (stable, UUID-shaped).
pub(crate) fn accessor_id(secret: &str) -> String {
    uuid_from(&format!("accessor:{secret}"))
}

impl Authz {
    /// A real token was sent (Consul only reports ACL filtering then).
    pub(crate) fn token_sent(&self) -> bool {
        matches!(self, Authz::Token { .. })
    }

    pub(crate) fn service_read(&self, service: &str) -> bool {
        match self {
            Authz::Disabled => true,
            Authz::Anonymous => false,
            Authz::Token { access, .. } => match access {
                Access::Deny => false,
                Access::Read | Access::Write => true,
                Access::ServicePrefix { prefix, .. } => service.starts_with(prefix.as_str()),
            },
        }
    }

    pub(crate) fn node_read(&self) -> bool {
        match self {
            Authz::Disabled => true,
            Authz::Anonymous => false,
            Authz::Token { access, .. } => !matches!(access, Access::Deny),
        }
    }

    /// `service:write` on `service`, or the 403 body.
    pub(crate) fn service_write(&self, service: &str) -> Result<(), String> {
        let allowed = match self {
            Authz::Disabled => true,
            Authz::Anonymous => false,
            Authz::Token { access, .. } => match access {
                Access::Deny | Access::Read => false,
                Access::Write => true,
                Access::ServicePrefix { prefix, write } => *write && service.starts_with(prefix.as_str()),
            },
        };
        if allowed {
            Ok(())
        } else {
            Err(self.denied("service:write", service))
        }
    }

    /// `node:write` on `node` (updates of node-level checks), or the 403 body.
    pub(crate) fn node_write(&self, node: &str) -> Result<(), String> {
        let allowed = match self {
            Authz::Disabled => true,
            Authz::Anonymous => false,
            Authz::Token { access, .. } => matches!(access, Access::Write),
        };
        if allowed {
            Ok(())
        } else {
            Err(self.denied("node:write", node))
        }
    }

    /// `agent:read` on the agent's node, or the 403 body.
    pub(crate) fn agent_read(&self, node: &str) -> Result<(), String> {
        let allowed = match self {
            Authz::Disabled => true,
            Authz::Anonymous => false,
            Authz::Token { access, .. } => matches!(access, Access::Read | Access::Write),
        };
        if allowed {
            Ok(())
        } else {
            Err(self.denied("agent:read", node))
        }
    }

    /// `acl.PermissionDeniedError` as Consul 1.12+ words it.
    fn denied(&self, permission: &str, resource: &str) -> String {
        match self {
            Authz::Token { accessor, .. } => {
                format!("Permission denied: token with AccessorID '{accessor}' lacks permission '{permission}' on {resource:?}")
            }
            _ => format!(
                "Permission denied: anonymous token lacks permission '{permission}' on {resource:?}. \
                 The anonymous token is used implicitly when a request does not specify a token."
            ),
        }
    }
}
