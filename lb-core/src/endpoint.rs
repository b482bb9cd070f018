//! Endpoints: what discovery finds and what a policy picks.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// The stable identity of an endpoint.
///
/// Discovery names endpoints by id, not by position: a container id plus port, a
/// Consul service id, or (by default) the socket address. Two updates that carry the
/// same id describe the same endpoint, so its counters, health and drain state
/// survive the second one. Cloning is an atomic increment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(Arc<str>);

// === impl EndpointId ===

impl EndpointId {
    /// Makes an id from any string.
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for EndpointId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for EndpointId {
    fn from(s: String) -> Self {
        Self(Arc::from(s))
    }
}

impl From<SocketAddr> for EndpointId {
    fn from(addr: SocketAddr) -> Self {
        Self::from(addr.to_string())
    }
}

/// The largest weight an endpoint may carry; larger weights are clamped to it.
pub const MAX_WEIGHT: u32 = 65_535;

/// The weight an endpoint gets when none is given.
pub const DEFAULT_WEIGHT: u32 = 1;

/// One backend instance that requests can be balanced onto.
///
/// An `Endpoint` is plain data: an id, a socket address, a weight and free-form
/// metadata (Docker labels, Consul tags and meta, anything the source knows). A
/// connector turns it into a service.
///
/// # Examples
///
/// ```
/// use lb_core::Endpoint;
///
/// let ep = Endpoint::new("127.0.0.1:9001".parse().unwrap())
///     .with_weight(3)
///     .with_metadata("zone", "a");
/// assert_eq!(ep.id().as_str(), "127.0.0.1:9001");
/// assert_eq!(ep.weight(), 3);
/// assert_eq!(ep.metadata().get("zone").map(String::as_str), Some("a"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    id: EndpointId,
    addr: SocketAddr,
    weight: u32,
    metadata: BTreeMap<String, String>,
}

// === impl Endpoint ===

impl Endpoint {
    /// An endpoint whose id is its address, with weight 1 and no metadata.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            id: EndpointId::from(addr),
            addr,
            weight: DEFAULT_WEIGHT,
            metadata: BTreeMap::new(),
        }
    }

    /// Replaces the id.
    pub fn with_id(mut self, id: impl Into<EndpointId>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the weight, clamped to [`MAX_WEIGHT`]. Weight 0 keeps the endpoint in the
    /// table but takes it out of rotation, as HAProxy's `weight 0` does.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight.min(MAX_WEIGHT);
        self
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The stable identity.
    pub fn id(&self) -> &EndpointId {
        &self.id
    }

    /// Where to connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configured weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Free-form metadata from the discovery source.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
}
