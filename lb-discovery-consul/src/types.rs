//! The parts of Consul's answers the adapter reads, parsed leniently: unknown fields are
//! ignored and every field but the identity ones has a default (Consul omits `Port` when
//! it is 0, and `Weights`, `Meta` and `Address` may be null or empty).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// One element of `GET /v1/health/service/:service`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ServiceEntry {
    #[serde(rename = "Node")]
    pub(crate) node: Node,
    #[serde(rename = "Service")]
    pub(crate) service: Service,
    #[serde(rename = "Checks", default, deserialize_with = "null_as_default")]
    pub(crate) checks: Vec<Check>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Node {
    #[serde(rename = "Node")]
    pub(crate) name: String,
    #[serde(rename = "Address")]
    pub(crate) address: String,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Service {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    #[serde(rename = "Service")]
    pub(crate) name: String,
    #[serde(rename = "Tags", default, deserialize_with = "null_as_default")]
    pub(crate) tags: Vec<String>,
    #[serde(rename = "Address", default, deserialize_with = "null_as_default")]
    pub(crate) address: String,
    #[serde(rename = "Meta", default, deserialize_with = "null_as_default")]
    pub(crate) meta: BTreeMap<String, String>,
    #[serde(rename = "Port", default)]
    pub(crate) port: u16,
    #[serde(rename = "Weights", default, deserialize_with = "null_as_default")]
    pub(crate) weights: Weights,
}

/// `Weights`; `{1, 1}` when absent or null.
#[derive(Debug, Clone, Copy, Deserialize)]
pub(crate) struct Weights {
    #[serde(rename = "Passing", default = "one")]
    pub(crate) passing: u32,
    #[serde(rename = "Warning", default = "one")]
    pub(crate) warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Self { passing: 1, warning: 1 }
    }
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Check {
    #[serde(rename = "CheckID", default)]
    pub(crate) id: String,
    #[serde(rename = "Status", default)]
    pub(crate) status: String,
}

/// An instance's aggregate health, with Consul's precedence: maintenance > critical >
/// warning > passing (no checks: passing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Every check passes.
    Passing,
    /// Some check warns, none is critical.
    Warning,
    /// Some check is critical.
    Critical,
    /// In maintenance mode (a synthetic critical check).
    Maintenance,
}

impl Status {
    /// `passing`, `warning`, `critical`, `maintenance`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
            Status::Maintenance => "maintenance",
        }
    }

    /// Parses `passing`, `warning`, `critical` or `maintenance`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "passing" => Some(Status::Passing),
            "warning" => Some(Status::Warning),
            "critical" => Some(Status::Critical),
            "maintenance" => Some(Status::Maintenance),
            _ => None,
        }
    }
}

impl ServiceEntry {
    /// The aggregate status of the instance's checks (node checks included).
    pub(crate) fn status(&self) -> Status {
        let mut worst = Status::Passing;
        for c in &self.checks {
            let s = if c.id == "_node_maintenance" || c.id.starts_with("_service_maintenance:") {
                Status::Maintenance
            } else {
                match c.status.as_str() {
                    "passing" => Status::Passing,
                    "warning" => Status::Warning,
                    // Anything else Consul could send is no better than critical.
                    _ => Status::Critical,
                }
            };
            worst = worst.max(s);
        }
        worst
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shape_leniently() {
        let body = r#"[
          {"Node": {"ID": "x", "Node": "agent-a", "Address": "10.20.0.11", "Datacenter": "dc1", "Extra": 1},
           "Service": {"ID": "api-1", "Service": "api", "Tags": null, "Address": "", "Meta": null,
                       "Weights": null, "EnableTagOverride": false},
           "Checks": [{"CheckID": "serfHealth", "Status": "passing"},
                      {"CheckID": "service:api-1", "Status": "warning"}]},
          {"Node": {"Node": "agent-b", "Address": "10.20.0.12"},
           "Service": {"ID": "api-2", "Service": "api", "Tags": ["lb"], "Address": "10.30.1.7",
                       "Port": 8080, "Weights": {"Passing": 5, "Warning": 0},
                       "TaggedAddresses": {"lan": {"address": "10.30.1.7", "port": 8080}}},
           "Checks": [{"CheckID": "_service_maintenance:api-2", "Status": "critical"}]}
        ]"#;
        let entries: Vec<ServiceEntry> = serde_json::from_str(body).unwrap();
        assert_eq!(entries[0].service.port, 0, "an absent port is 0");
        assert!(entries[0].service.tags.is_empty() && entries[0].service.meta.is_empty());
        assert_eq!(
            (entries[0].service.weights.passing, entries[0].service.weights.warning),
            (1, 1)
        );
        assert_eq!(entries[0].status(), Status::Warning);
        assert_eq!(
            (entries[1].service.weights.passing, entries[1].service.weights.warning),
            (5, 0)
        );
        assert_eq!(entries[1].status(), Status::Maintenance);
    }
}
