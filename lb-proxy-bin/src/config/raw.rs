//! The file as written: what serde reads before validation.
//!
//! Every key is optional here and every table denies unknown keys; defaults, required keys
//! and the meaning of values are decided in `build.rs`, which knows the key path of each
//! value and so can name it in an error. Integers are read as `i64` (TOML's integer) so that
//! an out-of-range value gets our message rather than serde's.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) server: Option<RawServer>,
    pub(super) admin: Option<RawAdmin>,
    /// `None` when the file has no services at all; `Some(vec![])` when it says
    /// `services = []`, on purpose.
    pub(super) services: Option<Vec<RawService>>,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
    #[serde(default)]
    pub(super) tcp: Vec<RawTcp>,
    #[serde(default)]
    pub(super) providers: Vec<RawProvider>,
    pub(super) acme: Option<RawAcme>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    pub(super) directory: Option<String>,
    pub(super) directory_ca: Option<String>,
    pub(super) email: Option<String>,
    pub(super) storage: Option<String>,
    pub(super) names: Option<Vec<String>>,
    pub(super) challenges: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    pub(super) kind: Option<String>,
    pub(super) endpoint: Option<String>,
    pub(super) label_prefix: Option<String>,
    pub(super) exposed_by_default: Option<bool>,
    pub(super) network: Option<String>,
    pub(super) address: Option<String>,
    pub(super) host_ip: Option<String>,
    pub(super) default_host: Option<String>,
    pub(super) compat: Option<Vec<String>>,
    pub(super) linger: Option<RawDuration>,
    pub(super) resync: Option<RawDuration>,
    // Consul's (kind = "consul"; `address` is the agent there).
    pub(super) tag_prefix: Option<String>,
    pub(super) token: Option<String>,
    pub(super) dc: Option<String>,
    pub(super) statuses: Option<Vec<String>>,
    pub(super) consistency: Option<String>,
    pub(super) ca_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDockerRef {
    pub(super) service: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsulRef {
    pub(super) address: Option<String>,
    pub(super) service: Option<String>,
    pub(super) tag: Option<OneOrMany>,
    pub(super) statuses: Option<Vec<String>>,
    pub(super) token: Option<String>,
    pub(super) dc: Option<String>,
    pub(super) filter: Option<String>,
    pub(super) consistency: Option<String>,
    pub(super) ca_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<OneOrMany>,
    pub(super) tls_listen: Option<OneOrMany>,
    pub(super) redirect_https: Option<bool>,
    pub(super) hsts: Option<RawHsts>,
    pub(super) tls: Option<RawTls>,
    pub(super) max_header_bytes: Option<i64>,
    pub(super) max_body_bytes: Option<i64>,
    pub(super) header_read_timeout: Option<RawDuration>,
    pub(super) body_read_timeout: Option<RawDuration>,
    pub(super) send_timeout: Option<RawDuration>,
    pub(super) idle_timeout: Option<RawDuration>,
    pub(super) max_connections: Option<i64>,
    pub(super) forwarded: Option<String>,
    pub(super) shutdown_grace: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
    pub(super) dir: Option<String>,
    pub(super) env: Option<String>,
    #[serde(default)]
    pub(super) certs: Vec<RawSniCert>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSniCert {
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
    pub(super) sni: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
    pub(super) token: Option<String>,
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Option<String>,
    pub(super) balance: Option<String>,
    pub(super) hash_key: Option<String>,
    pub(super) endpoints: Option<Vec<RawEndpoint>>,
    pub(super) endpoints_file: Option<String>,
    pub(super) docker: Option<RawDockerRef>,
    pub(super) consul: Option<RawConsulRef>,
    pub(super) health: Option<RawHealth>,
    pub(super) connect_timeout: Option<RawDuration>,
    pub(super) response_timeout: Option<RawDuration>,
    pub(super) retries: Option<i64>,
    pub(super) slow_start: Option<RawDuration>,
    pub(super) outlier: Option<RawOutlier>,
    pub(super) max_in_flight: Option<i64>,
    pub(super) panic_threshold: Option<i64>,
    pub(super) dns_refresh: Option<RawDuration>,
    pub(super) tls: Option<bool>,
    pub(super) tls_ca: Option<String>,
    pub(super) tls_server_name: Option<String>,
}

/// An endpoint: `{ addr = "10.0.0.1:80", weight = 3 }`, or just `"10.0.0.1:80"` (`bare`).
#[derive(Debug, Default)]
pub(super) struct RawEndpoint {
    pub(super) addr: Option<String>,
    pub(super) weight: Option<i64>,
    pub(super) bare: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpointTable {
    addr: Option<String>,
    weight: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) path: Option<String>,
    pub(super) tcp: Option<bool>,
    pub(super) interval: Option<RawDuration>,
    pub(super) timeout: Option<RawDuration>,
    pub(super) rise: Option<i64>,
    pub(super) fall: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutlier {
    pub(super) consecutive_failures: Option<i64>,
    pub(super) base_ejection: Option<RawDuration>,
    pub(super) max_ejection: Option<RawDuration>,
    pub(super) max_ejection_percent: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) host: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) service: Option<String>,
    pub(super) upgrades: Option<Vec<String>>,
    pub(super) acme: Option<bool>,
    pub(super) redirect_https: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTcp {
    pub(super) listen: Option<String>,
    pub(super) service: Option<String>,
    pub(super) tls: Option<bool>,
}

/// `hsts = true` (the default policy) or `hsts = "max-age=...; includeSubDomains"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawHsts {
    On(bool),
    Value(String),
}

/// A duration string, parsed in `build.rs`; only its type is checked here.
#[derive(Debug, Clone)]
pub(super) struct RawDuration(pub(super) String);

/// A string or an array of strings; `single` says which was written.
#[derive(Debug, Clone)]
pub(super) struct OneOrMany {
    pub(super) values: Vec<String>,
    pub(super) single: bool,
}

// === impl RawEndpoint ===

impl<'de> Deserialize<'de> for RawEndpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EndpointVisitor;

        impl<'de> Visitor<'de> for EndpointVisitor {
            type Value = RawEndpoint;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an endpoint: \"host:port\" or { addr = \"host:port\", weight = N }")
            }

            fn visit_str<E: de::Error>(self, addr: &str) -> Result<RawEndpoint, E> {
                Ok(RawEndpoint {
                    addr: Some(addr.to_owned()),
                    weight: None,
                    bare: true,
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawEndpoint, A::Error> {
                let table = RawEndpointTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawEndpoint {
                    addr: table.addr,
                    weight: table.weight,
                    bare: false,
                })
            }
        }

        deserializer.deserialize_any(EndpointVisitor)
    }
}

// === impl RawDuration ===

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = RawDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"500ms\", \"2s\" or \"1m\"")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawDuration, E> {
                Ok(RawDuration(text.to_owned()))
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

// === impl OneOrMany ===

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;

        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany {
                    values: vec![value.to_owned()],
                    single: true,
                })
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut values = Vec::new();
                while let Some(value) = seq.next_element::<String>()? {
                    values.push(value);
                }
                Ok(OneOrMany { values, single: false })
            }
        }

        deserializer.deserialize_any(OneOrManyVisitor)
    }
}
