//! Endpoint specs: an address (literal or host name) plus weight, id and metadata.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use lb_core::{Endpoint, EndpointId, DEFAULT_WEIGHT};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::Error;

/// How long one name lookup may take before it counts as failed.
pub(crate) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// One configured endpoint, before name resolution.
///
/// `addr` is either a literal socket address (`"127.0.0.1:9001"`, `"[::1]:9001"`) or a
/// host name and port (`"web1:80"`). A literal address becomes one [`Endpoint`] whose id
/// is `id` or, by default, the address. A name becomes one endpoint per address it
/// resolves to, with the id `"{id or host:port}/{ip:port}"`, so an address that stays
/// in the answer keeps its id (and so its counters and health) across re-resolution.
///
/// It deserializes from the table used in endpoints files and in the proxy's config
/// (`{ addr = "127.0.0.1:9001", weight = 3, id = "a", metadata = { zone = "a" } }`);
/// unknown keys and malformed addresses are rejected at parse time.
///
/// # Examples
///
/// ```
/// use lb_discovery_static::EndpointSpec;
///
/// let spec = EndpointSpec::new("web1:80").with_weight(3).with_metadata("zone", "a");
/// assert!(spec.validate().is_ok());
/// assert_eq!(spec.literal_addr(), None);
/// assert!(EndpointSpec::new("web1").validate().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// `ip:port`, `[ipv6]:port` or `host:port`.
    #[serde(deserialize_with = "deserialize_addr")]
    pub addr: String,
    /// The weight ([`DEFAULT_WEIGHT`] when absent); clamped to [`lb_core::MAX_WEIGHT`].
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The stable id; by default the address (for a name, the prefix of each address's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Free-form metadata copied onto every endpoint made from this spec.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

fn deserialize_addr<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    let addr = String::deserialize(de)?;
    match Target::parse(&addr) {
        Ok(_) => Ok(addr),
        Err(reason) => Err(serde::de::Error::custom(format_args!(
            "invalid endpoint address `{addr}`: {reason}"
        ))),
    }
}

// === impl EndpointSpec ===

impl EndpointSpec {
    /// A spec for `addr` with the default weight, no id and no metadata.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            weight: DEFAULT_WEIGHT,
            id: None,
            metadata: BTreeMap::new(),
        }
    }

    /// Sets the weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Checks the address and id without resolving anything.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSpec`] if `addr` is neither a socket address nor `host:port`, or
    /// if `id` is empty.
    pub fn validate(&self) -> Result<(), Error> {
        self.target().map(|_| ())
    }

    /// The socket address, if `addr` is a literal one rather than a host name.
    pub fn literal_addr(&self) -> Option<SocketAddr> {
        match Target::parse(&self.addr) {
            Ok(Target::Addr(addr)) => Some(addr),
            _ => None,
        }
    }

    /// Resolves the spec once into endpoints (for a literal address, without a lookup).
    ///
    /// For a watched, re-resolved set use [`resolve_stream`](crate::resolve_stream).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSpec`] for a malformed spec, [`Error::Resolve`] if the lookup
    /// fails, times out (after 5 s) or returns no address.
    ///
    /// # Examples
    ///
    /// ```
    /// use lb_discovery_static::EndpointSpec;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let eps = EndpointSpec::new("localhost:9001").resolve().await.unwrap();
    /// assert!(eps.iter().all(|ep| ep.addr().ip().is_loopback()));
    /// assert!(eps.iter().all(|ep| ep.id().as_str().starts_with("localhost:9001/")));
    /// # }
    /// ```
    pub async fn resolve(&self) -> Result<Vec<Endpoint>, Error> {
        match self.target()? {
            Target::Addr(addr) => Ok(vec![self.endpoint(addr, None)]),
            Target::Name(name) => match lookup(&name).await {
                Ok(addrs) => Ok(addrs.into_iter().map(|addr| self.endpoint(addr, Some(&name))).collect()),
                Err(source) => Err(Error::Resolve {
                    name: name.to_string(),
                    source,
                }),
            },
        }
    }

    /// The parsed target, with the id checked.
    pub(crate) fn target(&self) -> Result<Target, Error> {
        if self.id.as_deref() == Some("") {
            return Err(Error::InvalidSpec {
                addr: self.addr.clone(),
                reason: "the id is empty",
            });
        }
        Target::parse(&self.addr).map_err(|reason| Error::InvalidSpec {
            addr: self.addr.clone(),
            reason,
        })
    }

    /// The id this spec's endpoints share: the whole id for a literal address, the
    /// prefix for a name. `None` for a malformed spec.
    pub(crate) fn base_id(&self) -> Option<String> {
        let target = self.target().ok()?;
        Some(match (&self.id, target) {
            (Some(id), _) => id.clone(),
            (None, Target::Addr(addr)) => addr.to_string(),
            (None, Target::Name(name)) => name.to_string(),
        })
    }

    /// The endpoint for one address of this spec; `name` is set when it came from a lookup.
    pub(crate) fn endpoint(&self, addr: SocketAddr, name: Option<&NameKey>) -> Endpoint {
        let id = match (name, &self.id) {
            (None, None) => EndpointId::from(addr),
            (None, Some(id)) => EndpointId::new(id),
            (Some(_), Some(id)) => EndpointId::from(format!("{id}/{addr}")),
            (Some(name), None) => EndpointId::from(format!("{name}/{addr}")),
        };
        let mut ep = Endpoint::new(addr).with_id(id).with_weight(self.weight);
        // The name it was found by: what TLS to the endpoint verifies (lb-core's `tls`).
        if let Some(name) = name.filter(|_| !self.metadata.contains_key(HOST_METADATA)) {
            ep = ep.with_metadata(HOST_METADATA, name.host.clone());
        }
        for (k, v) in &self.metadata {
            ep = ep.with_metadata(k.clone(), v.clone());
        }
        ep
    }
}

/// The metadata key under which an endpoint found by a DNS name keeps that name (unless
/// its spec sets the key itself).
pub const HOST_METADATA: &str = "host";

/// What an address string names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Addr(SocketAddr),
    Name(NameKey),
}

/// A host name (lower case) and port to resolve.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct NameKey {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl fmt::Display for NameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

// === impl Target ===

impl Target {
    pub(crate) fn parse(s: &str) -> Result<Self, &'static str> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self::Addr(addr));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err("expected `ip:port`, `[ipv6]:port` or `host:port`");
        };
        if host.contains([':', '[', ']']) {
            return Err("an IPv6 address must be written `[addr]:port`");
        }
        let port: u16 = port.parse().map_err(|_| "the port is not a number from 1 to 65535")?;
        if port == 0 {
            return Err("the port is 0");
        }
        if host.is_empty() {
            return Err("the host is empty");
        }
        let labels = host.strip_suffix('.').unwrap_or(host);
        if host.len() > 253 || !labels.split('.').all(label_ok) {
            return Err("the host is not a valid name");
        }
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err("the host looks like an IPv4 address but is not one");
        }
        Ok(Self::Name(NameKey {
            host: host.to_ascii_lowercase(),
            port,
        }))
    }
}

fn label_ok(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// A boxed lookup, so tests can swap in a fake resolver.
pub(crate) type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Looks a name up with the system resolver; the answer is sorted, deduplicated and
/// never empty.
pub(crate) fn lookup(name: &NameKey) -> LookupFuture {
    let name = name.clone();
    Box::pin(async move {
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name.host.as_str(), name.port)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the lookup timed out"))??;
        let mut addrs: Vec<SocketAddr> = found.collect();
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "the name has no address"));
        }
        Ok(addrs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(
            Target::parse("127.0.0.1:80"),
            Ok(Target::Addr("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(Target::parse("[::1]:80"), Ok(Target::Addr("[::1]:80".parse().unwrap())));
        assert_eq!(
            Target::parse("Web-1.example.com:8080"),
            Ok(Target::Name(NameKey {
                host: "web-1.example.com".into(),
                port: 8080
            }))
        );
        assert!(
            Target::parse("web_1:80").is_ok(),
            "docker-compose names may hold underscores"
        );
        for bad in [
            "web1",
            "web1:",
            ":80",
            "web1:0",
            "web1:70000",
            "::1:80",
            "1.2.3.400:80",
            "a b:80",
            "-a:80",
            "a..b:80",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn ids() {
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let name = NameKey {
            host: "web1".into(),
            port: 80,
        };
        let spec = EndpointSpec::new("web1:80");
        assert_eq!(spec.endpoint(addr, Some(&name)).id().as_str(), "web1:80/10.0.0.1:80");
        assert_eq!(spec.base_id().as_deref(), Some("web1:80"));
        let spec = spec.with_id("w").with_weight(4).with_metadata("zone", "a");
        let ep = spec.endpoint(addr, Some(&name));
        assert_eq!(
            ep.metadata().get("host").map(String::as_str),
            Some("web1"),
            "the name it came from"
        );
        assert_eq!(ep.id().as_str(), "w/10.0.0.1:80");
        assert_eq!(ep.weight(), 4);
        assert_eq!(ep.metadata().get("zone").map(String::as_str), Some("a"));
        let spec = EndpointSpec::new("10.0.0.1:80");
        assert_eq!(spec.endpoint(addr, None).id().as_str(), "10.0.0.1:80");
        assert!(spec.endpoint(addr, None).metadata().get("host").is_none());
        assert!(EndpointSpec::new("10.0.0.1:80").with_id("").validate().is_err());
    }
}
