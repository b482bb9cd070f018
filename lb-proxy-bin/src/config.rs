//! The proxy's configuration: one TOML file, checked in full before anything starts.
//!
//! [`load`] reads a file and [`parse`] a text into a [`Config`]: services (each a balancer
//! over static endpoints or a watched endpoints file), HTTP routes onto them by host and
//! path prefix, TCP listeners onto them, the HTTP server and the admin listener. Every key
//! has a default but `services[].name`, the endpoints of a service, `routes[].service` and
//! the two keys of a `[[tcp]]` entry; `docs/config.md` lists them all.
//!
//! Any fault, from a TOML syntax error to a route naming a missing service, is a
//! [`ConfigError`] whose message names the file, line, column and key at fault:
//!
//! ```text
//! web.toml:7:11: services[0].balance: unknown policy "round-robin" (expected one of round_robin, ...)
//! ```
//!
//! Relative file paths in the config (`endpoints_file`, TLS `cert` and `key`) are resolved
//! against the directory of the config file.

pub(crate) mod build;
mod duration;
mod error;
mod raw;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) use self::duration::MAX as MAX_DURATION;
pub(crate) use self::error::ConfigError;

/// Reads and validates the configuration file at `path`.
///
/// # Errors
///
/// [`ConfigError::Read`] if the file cannot be read, [`ConfigError::Invalid`] if it is not a
/// valid configuration (see [`parse`]).
pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// A fault found in what a valid file names (a certificate that does not load), placed at
/// `key` (segments; a number is an array index) of the file at `path`.
pub(crate) fn fault_at(path: &Path, key: &[&str], message: String) -> ConfigError {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let index = error::SpanIndex::new(&text);
    let mut at = error::KeyPath::root();
    for seg in key {
        at = match seg.parse::<usize>() {
            Ok(i) => at.index(i),
            Err(_) => at.key(seg),
        };
    }
    error::from_invalid(path, &text, &index, error::Invalid::new(&at, message))
}

/// Parses and validates a configuration text; `path` names the file in errors and is the
/// base for relative paths in the config.
///
/// # Errors
///
/// [`ConfigError::Invalid`] for the first fault found: TOML syntax, an unknown key, a value
/// of the wrong type, or a failed check (unknown service, duplicate name, bad address,
/// weight out of range, bad duration, admin reachable from outside without auth, ...).
pub(crate) fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig = toml::from_str(text).map_err(|err| error::from_toml(path, text, &err))?;
    let base_dir = path.parent().unwrap_or(Path::new(""));
    let mut warnings = Vec::new();
    let built = build::build(raw, base_dir, &mut warnings);
    // The index of key spans costs a second parse: only when there is something to place.
    let index = match (&built, warnings.is_empty()) {
        (Ok(_), true) => error::SpanIndex::default(),
        _ => error::SpanIndex::new(text),
    };
    let mut config = built.map_err(|fault| error::from_invalid(path, text, &index, fault))?;
    config.warnings = warnings
        .into_iter()
        .map(|fault| error::from_invalid(path, text, &index, fault).to_string())
        .collect();
    Ok(config)
}

/// The whole configuration of one `lb-proxy`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    /// The HTTP(S) listeners: `[server]`.
    pub(crate) server: ServerConfig,
    /// The admin listener (status page, metrics, API): `[admin]`.
    pub(crate) admin: AdminConfig,
    /// The balanced services: `[[services]]`, in file order, names unique.
    pub(crate) services: Vec<ServiceConfig>,
    /// HTTP routes onto services: `[[routes]]`, in file order; no two with the same host and
    /// path prefix.
    pub(crate) routes: Vec<RouteConfig>,
    /// TCP listeners onto services: `[[tcp]]`, in file order.
    pub(crate) tcp: Vec<TcpConfig>,
    /// Sources of services and routes at run time: `[[providers]]`.
    pub(crate) providers: Vec<ProviderConfig>,
    /// Certificates from an ACME directory: `[acme]`.
    pub(crate) acme: Option<AcmeConfig>,
    /// Faults that do not stop the proxy (such as a `hash_key` that the service's policy
    /// ignores), each a line `file:line:column: key: message` to log as a warning.
    pub(crate) warnings: Vec<String>,
    /// The file says `services = []`: a config without services is meant, not a file
    /// caught empty or cut short mid-rewrite (a reload refuses those).
    pub(crate) empty_on_purpose: bool,
}

impl Config {
    /// Whether the config serves nothing of its own: no service, route or TCP listener,
    /// and no provider to bring any.
    pub(crate) fn is_empty(&self) -> bool {
        self.services.is_empty() && self.routes.is_empty() && self.tcp.is_empty() && self.providers.is_empty()
    }
}

/// `[server]`: the HTTP(S) side.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServerConfig {
    /// Addresses to accept HTTP on; at least one. Default `["127.0.0.1:8080"]`.
    pub(crate) listen: Vec<SocketAddr>,
    /// Addresses to accept HTTPS on (`[server.tls]` certificates and ACME's); `listen`
    /// then stays plain HTTP. Empty by default.
    pub(crate) tls_listen: Vec<SocketAddr>,
    /// The plain listeners answer `308` to `https://` (the ACME challenge path excepted);
    /// a route's own `redirect_https` wins. Default off; needs `tls_listen`.
    pub(crate) redirect_https: bool,
    /// The `Strict-Transport-Security` value sent on HTTPS responses; `None` (the default)
    /// for none.
    pub(crate) hsts: Option<String>,
    /// Certificates. Without `tls_listen`, every `listen` address speaks HTTPS (the form
    /// of earlier versions); with it, they serve the `tls_listen` addresses.
    pub(crate) tls: Option<TlsConfig>,
    /// Largest request head (request line and headers) accepted. Default 64 KiB.
    pub(crate) max_header_bytes: usize,
    /// Largest request body accepted; `None` (the default) for no limit.
    pub(crate) max_body_bytes: Option<u64>,
    /// Time a client has to send a request head: from the accept for the first request
    /// (TLS handshake and protocol detection included), from its first byte for a later
    /// one on a kept-alive HTTP/1.1 connection. Default 10 s.
    pub(crate) header_read_timeout: Duration,
    /// Longest pause while reading a request body (408 when it runs out). Default 30 s.
    pub(crate) body_read_timeout: Duration,
    /// Longest time a response waits for the client to take more of it (the connection
    /// is closed when it runs out). Default 30 s.
    pub(crate) send_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY
    /// first). Default 60 s.
    pub(crate) idle_timeout: Duration,
    /// Most client connections open at once (HTTP and TCP listeners together); `None`
    /// (the default) derives it from the file descriptor limit.
    pub(crate) max_connections: Option<u32>,
    /// What happens to a client's `Forwarded` and `X-Forwarded-For`. Default append.
    pub(crate) forwarded: Forwarded,
    /// On shutdown, time in-flight requests get to finish before they are cut. Default 10 s.
    pub(crate) shutdown_grace: Duration,
}

/// `forwarded = "append" | "replace"`: what becomes of the `Forwarded` and
/// `X-Forwarded-For` headers a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forwarded {
    /// Keep them and add this hop (the client's address) at the end: for a proxy behind
    /// another proxy that the endpoints trust.
    Append,
    /// Drop what the client sent and start the chain with the client's address: for an
    /// edge proxy, whose clients could write anything there.
    Replace,
}

/// `[server.tls]`: certificates for HTTPS, chosen by SNI.
///
/// At least one of `default` and `sni_certs` is present.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TlsConfig {
    /// `cert`/`key` of `[server.tls]`: served when the client's server name matches no entry
    /// of `sni_certs`, or it sends none. Without it, such handshakes fail.
    pub(crate) default: Option<CertKey>,
    /// `[[server.tls.certs]]`: certificates served for the names they list.
    pub(crate) sni_certs: Vec<SniCert>,
    /// `dir`: a directory of certificates, each served for the names it holds.
    pub(crate) dir: Option<PathBuf>,
    /// `env`: an environment variable holding a PEM chain and key (the default
    /// certificate, with `cert`/`key` absent).
    pub(crate) env: Option<String>,
}

/// `[acme]`: certificates from an ACME (RFC 8555) directory.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AcmeConfig {
    /// The directory URL. Default Let's Encrypt's production directory.
    pub(crate) directory: String,
    /// A CA (PEM) to trust for the directory's HTTPS: a private or test ACME server.
    pub(crate) directory_ca: Option<PathBuf>,
    /// The account's contact address.
    pub(crate) email: Option<String>,
    /// Where the account key and certificates are kept (resolved against the config
    /// file's directory). Default `acme`.
    pub(crate) storage: PathBuf,
    /// Names to get certificates for besides the routes' (`acme = true`).
    pub(crate) names: Vec<String>,
    /// Challenge types, in order of preference: `http-01` (needs a plain listener) and
    /// `tls-alpn-01`. Default both, or only `tls-alpn-01` with no plain listener.
    pub(crate) challenges: Vec<AcmeChallenge>,
}

/// An ACME challenge type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcmeChallenge {
    /// `http-01`: a token under `/.well-known/acme-challenge/` on port 80.
    Http01,
    /// `tls-alpn-01`: a certificate for the `acme-tls/1` protocol on port 443.
    TlsAlpn01,
}

/// `tls = true` of a service: endpoints speak HTTPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackendTls {
    /// `tls_ca`: a CA file (PEM) to verify endpoints against; `None` for the system's roots.
    pub(crate) ca_file: Option<PathBuf>,
    /// `tls_server_name`: the name sent (SNI) and verified; default the service's route
    /// host when it has exactly one exact host, else the endpoint's name or address.
    pub(crate) server_name: Option<String>,
}

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertKey {
    /// The certificate chain (PEM), resolved against the config file's directory.
    pub(crate) cert: PathBuf,
    /// The private key (PEM), resolved against the config file's directory.
    pub(crate) key: PathBuf,
}

/// One `[[server.tls.certs]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SniCert {
    /// The certificate and key.
    pub(crate) cert_key: CertKey,
    /// The server names it is served for (at least one; exact or `*.suffix`; unique across
    /// entries).
    pub(crate) sni: Vec<HostMatch>,
}

/// `[admin]`: the status page, `/metrics` and the JSON API.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AdminConfig {
    /// Address to listen on. Default `127.0.0.1:9090`. A non-loopback address requires
    /// `token` or `basic`.
    pub(crate) listen: SocketAddr,
    /// Bearer token: `Authorization: Bearer <token>` is accepted.
    pub(crate) token: Option<String>,
    /// Basic auth (`user`/`password`, as HAProxy's `stats auth`): accepted too.
    pub(crate) basic: Option<BasicAuth>,
}

/// A user and password for HTTP basic auth.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BasicAuth {
    /// The user name.
    pub(crate) user: String,
    /// The password.
    pub(crate) password: String,
}

/// One `[[services]]` entry: a balancer over a set of endpoints.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServiceConfig {
    /// Unique name; routes and TCP listeners refer to it. Letters, digits, `-`, `_`, `.`.
    pub(crate) name: String,
    /// Where the service itself was defined: the file, or a provider.
    pub(crate) origin: Origin,
    /// The balancing policy. Default [`Balance::RoundRobin`].
    pub(crate) balance: Balance,
    /// The request key hashed by [`Balance::ConsistentHash`]: `Some` exactly when `balance`
    /// is `ConsistentHash` (default [`HashKey::ClientIp`]), `None` otherwise.
    pub(crate) hash_key: Option<HashKey>,
    /// Where the endpoints come from.
    pub(crate) endpoints: EndpointSource,
    /// Active health checking; `None` (the default) for none.
    pub(crate) health: Option<HealthConfig>,
    /// Time to establish a connection to an endpoint. Default 3 s.
    pub(crate) connect_timeout: Duration,
    /// Time from sending a request to receiving the response head; `None` for no limit
    /// (written `"0s"`). Default 30 s.
    pub(crate) response_timeout: Option<Duration>,
    /// Retries of a failed request on another endpoint (connect errors, and idempotent
    /// requests failing before a response). Default 2.
    pub(crate) retries: u32,
    /// Window over which a new or recovered endpoint's weight ramps up; `None` (the
    /// default, or `"0s"`) for none.
    pub(crate) slow_start: Option<Duration>,
    /// Passive outlier detection; `None` when turned off (`consecutive_failures = 0`).
    /// Default on, with [`OutlierConfig::default`].
    pub(crate) outlier: Option<OutlierConfig>,
    /// Most requests in flight to one endpoint; `None` (the default) for no limit.
    pub(crate) max_in_flight: Option<u32>,
    /// Panic threshold in percent (0..=100): when fewer than this share of endpoints are
    /// healthy, balance over all of them. 0 turns it off. Default 50.
    pub(crate) panic_threshold: u8,
    /// How often endpoints given by name are resolved again. Default 5 s.
    pub(crate) dns_refresh: Duration,
    /// Endpoints speak HTTPS: `tls = true`, or `https://` endpoint addresses.
    pub(crate) tls: Option<BackendTls>,
}

/// A balancing policy: `balance = "..."`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Balance {
    /// `round_robin`: smooth weighted round robin (nginx's); plain round robin when all
    /// weights are equal.
    RoundRobin,
    /// `least_conn`: fewest requests in flight relative to weight; ties rotate.
    LeastConn,
    /// `p2c`: the less loaded (in-flight requests) of two random picks.
    P2c,
    /// `peak_ewma`: power of two choices over peak EWMA latency times in-flight requests.
    PeakEwma,
    /// `random`: weighted random.
    Random,
    /// `consistent_hash`: the same [`HashKey`] goes to the same endpoint while it is there.
    ConsistentHash,
}

/// What [`Balance::ConsistentHash`] hashes: `hash_key = "..."`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum HashKey {
    /// `client_ip`: the client's IP address.
    ClientIp,
    /// `header:NAME`: the value of a request header; the name is lowercased.
    Header(String),
    /// `cookie:NAME`: the value of a cookie.
    Cookie(String),
    /// `path`: the request path (without the query).
    Path,
}

/// Where a service's endpoints come from: exactly one of `endpoints` and `endpoints_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EndpointSource {
    /// `endpoints = [...]`: a fixed list (at least one, addresses unique).
    Static(Vec<EndpointConfig>),
    /// `endpoints_file = "..."`: a TOML file watched for changes (lb-discovery-static),
    /// resolved against the config file's directory.
    File(PathBuf),
    /// `docker = { service = "..." }`: the containers whose service (label `lb.service`,
    /// else the compose service name, else the container name) is this name.
    Docker {
        /// The service name the containers carry.
        service: String,
    },
    /// `consul = { service = "...", ... }`: the instances of a Consul service, by
    /// blocking queries on its health.
    Consul(ConsulSource),
    /// A service of the Consul provider's catalog (catalog mode): its tagged instances.
    ConsulCatalog {
        /// The Consul service name.
        service: String,
    },
}

/// `consul = {...}` on a service: which instances of which Consul service.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ConsulSource {
    /// `address`: the agent. Default `CONSUL_HTTP_ADDR`, else `http://127.0.0.1:8500`.
    pub(crate) address: Option<String>,
    /// `service`: the Consul service name.
    pub(crate) service: String,
    /// `tag`: instances must carry all of these.
    pub(crate) tags: Vec<String>,
    /// `statuses`: accepted health (default passing only).
    pub(crate) statuses: Vec<lb_discovery_consul::Status>,
    /// `token`: the ACL token. Default `CONSUL_HTTP_TOKEN`.
    pub(crate) token: Option<String>,
    /// `dc`: another datacenter.
    pub(crate) dc: Option<String>,
    /// `filter`: a server-side filter expression.
    pub(crate) filter: Option<String>,
    /// `consistency`: default, stale or consistent.
    pub(crate) consistency: lb_discovery_consul::Consistency,
    /// `ca_file`: a CA for an `https://` agent, resolved against the config's directory.
    pub(crate) ca_file: Option<PathBuf>,
}

impl fmt::Debug for ConsulSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulSource")
            .field("address", &self.address)
            .field("service", &self.service)
            .field("tags", &self.tags)
            .field("statuses", &self.statuses)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("dc", &self.dc)
            .field("filter", &self.filter)
            .field("consistency", &self.consistency)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl ConsulSource {
    /// The adapter's watch for this source (equal sources make equal watches, which the
    /// proxy shares).
    pub(crate) fn watch(&self) -> lb_discovery_consul::ConsulService {
        let mut w = lb_discovery_consul::ConsulService::new(self.service.clone())
            .statuses(self.statuses.iter().copied())
            .consistency(self.consistency);
        if let Some(a) = &self.address {
            w = w.address(a.clone());
        }
        for t in &self.tags {
            w = w.tag(t.clone());
        }
        if let Some(t) = &self.token {
            w = w.token(t.clone());
        }
        if let Some(d) = &self.dc {
            w = w.dc(d.clone());
        }
        if let Some(f) = &self.filter {
            w = w.filter(f.clone());
        }
        if let Some(c) = &self.ca_file {
            w = w.ca_file(c.clone());
        }
        w
    }
}

/// `[[providers]] kind = "consul"`: services and routes from Consul tags (catalog mode).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ConsulProviderConfig {
    /// The agent and the settings of every service watch (service name unused).
    pub(crate) source: ConsulSource,
    /// `tag_prefix`, without the dot. Default `lb`.
    pub(crate) tag_prefix: String,
    /// `default_host`: the route of a service without `lb.host`, `{service}` replaced.
    pub(crate) default_host: Option<String>,
    /// `linger`: how long a service whose tag or last instance went keeps answering 503.
    pub(crate) linger: Duration,
}

impl fmt::Debug for ConsulProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulProviderConfig")
            .field("source", &self.source)
            .field("tag_prefix", &self.tag_prefix)
            .field("default_host", &self.default_host)
            .field("linger", &self.linger)
            .finish()
    }
}

/// Where a service was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Origin {
    /// `[[services]]` in the config file.
    File,
    /// A Docker provider, from container labels.
    Docker,
    /// A Consul provider, from service tags.
    Consul,
}

impl Origin {
    /// The name shown on the status page and in the API.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Origin::File => "file",
            Origin::Docker => "docker",
            Origin::Consul => "consul",
        }
    }
}

/// One `[[providers]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProviderConfig {
    /// `kind = "docker"`.
    Docker(DockerProviderConfig),
    /// `kind = "consul"`.
    Consul(ConsulProviderConfig),
}

/// `[[providers]] kind = "docker"`: services and routes from container labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DockerProviderConfig {
    /// `endpoint`: `unix:///path` or `tcp://host:port`. Default `DOCKER_HOST`, else
    /// `unix:///var/run/docker.sock`.
    pub(crate) endpoint: Option<String>,
    /// `label_prefix`, without the dot. Default `lb`.
    pub(crate) label_prefix: String,
    /// `exposed_by_default`: select containers without `lb.enable=true`. Default false.
    pub(crate) exposed_by_default: bool,
    /// `network`: the network whose address is dialled, unless a container's label names
    /// another.
    pub(crate) network: Option<String>,
    /// `address = "container"` (default) or `"published"`.
    pub(crate) published: bool,
    /// `host_ip`: the address for published ports bound to all interfaces and for
    /// host-network containers. Default `127.0.0.1`.
    pub(crate) host_ip: std::net::IpAddr,
    /// `default_host`: the route host of a service without `lb.host`, with `{service}`
    /// replaced by its name; `None` for no route.
    pub(crate) default_host: Option<String>,
    /// `compat = ["traefik"]`: read Traefik's labels too.
    pub(crate) traefik: bool,
    /// `linger`: how long a service whose last container left keeps answering 503 before
    /// it and its routes go. Default 10 s.
    pub(crate) linger: Duration,
    /// `resync`: how often every container is listed again. Default 60 s.
    pub(crate) resync: Duration,
}

impl DockerProviderConfig {
    /// The adapter's options for this provider.
    pub(crate) fn options(&self) -> lb_discovery_docker::Options {
        lb_discovery_docker::Options {
            label_prefix: self.label_prefix.clone(),
            exposed_by_default: self.exposed_by_default,
            network: self.network.clone(),
            address: if self.published {
                lb_discovery_docker::AddressMode::Published
            } else {
                lb_discovery_docker::AddressMode::Container
            },
            host_ip: self.host_ip,
            traefik: self.traefik,
        }
    }
}

impl Default for DockerProviderConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            label_prefix: "lb".to_string(),
            exposed_by_default: false,
            network: None,
            published: false,
            host_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            default_host: None,
            traefik: false,
            linger: Duration::from_secs(10),
            resync: Duration::from_secs(60),
        }
    }
}

/// One endpoint of `endpoints = [...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndpointConfig {
    /// `host:port` as written: an IP literal (`10.0.0.1:80`, `[::1]:80`) or a DNS name
    /// (`web1:80`), which is resolved at start and every `dns_refresh`. Checked to have a
    /// non-empty host and a port from 1 to 65535.
    pub(crate) addr: String,
    /// Weight, 0..=65535; 0 keeps the endpoint but sends it no traffic. Default 1.
    pub(crate) weight: u32,
}

/// `health = {...}`: active health checking of each endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthConfig {
    /// What a probe does.
    pub(crate) probe: Probe,
    /// Time between probes of one endpoint. Default 5 s.
    pub(crate) interval: Duration,
    /// Time a probe may take before it counts as failed. Default 1 s.
    pub(crate) timeout: Duration,
    /// Consecutive successes that mark an endpoint healthy. Default 2.
    pub(crate) rise: u32,
    /// Consecutive failures that mark an endpoint unhealthy. Default 3.
    pub(crate) fall: u32,
}

/// The kind of active health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// `path = "/healthz"`: `GET path`; a 2xx or 3xx response passes.
    Http {
        /// The request path, starting with `/`.
        path: String,
    },
    /// `tcp = true`: a TCP connect passes.
    Tcp,
}

/// `outlier = {...}`: passive outlier detection, ejection on consecutive failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutlierConfig {
    /// Consecutive failed requests (connect errors, 5xx) that eject an endpoint. Default 5.
    pub(crate) consecutive_failures: u32,
    /// Length of a first ejection; each further ejection of the same endpoint lasts one
    /// more `base_ejection`. Default 10 s.
    pub(crate) base_ejection: Duration,
    /// Longest ejection. Default 300 s.
    pub(crate) max_ejection: Duration,
    /// Most endpoints of the service ejected at once, in percent (0..=100). Default 50.
    pub(crate) max_ejection_percent: u8,
}

/// One `[[routes]]` entry: requests it matches go to `service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteConfig {
    /// The request host must match; `None` for any host.
    pub(crate) host: Option<HostMatch>,
    /// The request path must start with this (a plain string prefix, starting with `/`);
    /// `None` for any path.
    pub(crate) path_prefix: Option<String>,
    /// The service, by name; checked to exist.
    pub(crate) service: String,
    /// The `Upgrade` protocols passed through to the service (lowercase names, such as
    /// `websocket`); others are removed from the request. Default `["websocket"]`;
    /// `h2c` is never allowed.
    pub(crate) upgrades: Vec<String>,
    /// Get and renew a certificate for `host` (exact) from `[acme]`.
    pub(crate) acme: bool,
    /// Redirect plain HTTP requests on this route to HTTPS; `None` follows
    /// `[server] redirect_https`.
    pub(crate) redirect_https: Option<bool>,
}

impl RouteConfig {
    /// The protocols a route passes by default.
    pub(crate) fn default_upgrades() -> Vec<String> {
        vec!["websocket".to_string()]
    }
}

/// A host name rule: `example.com` or `*.example.com`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum HostMatch {
    /// This name exactly (stored lowercased, without a trailing dot).
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (stored lowercased with the
    /// leading dot), at any depth, but not `example.com` itself.
    Suffix(String),
}

/// One `[[tcp]]` entry: connections accepted on `listen` are balanced onto `service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TcpConfig {
    /// The address to accept connections on; unique among all listeners.
    pub(crate) listen: SocketAddr,
    /// The service, by name; checked to exist.
    pub(crate) service: String,
    /// Terminate TLS (the `[server.tls]` and ACME certificates, chosen by SNI), then pass
    /// the plain stream on.
    pub(crate) tls: bool,
}

// === impl ServerConfig ===

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            tls_listen: Vec::new(),
            redirect_https: false,
            hsts: None,
            tls: None,
            max_header_bytes: 64 * 1024,
            max_body_bytes: None,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
            forwarded: Forwarded::Append,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

// === impl AdminConfig ===

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: None,
            basic: None,
        }
    }
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("basic", &self.basic)
            .finish()
    }
}

// === impl BasicAuth ===

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

// === impl Balance ===

impl Balance {
    /// Every policy, in the order the docs list them.
    pub(crate) const ALL: [Balance; 6] = [
        Balance::RoundRobin,
        Balance::LeastConn,
        Balance::P2c,
        Balance::PeakEwma,
        Balance::Random,
        Balance::ConsistentHash,
    ];

    /// The name used in the config file, such as `"round_robin"`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::P2c => "p2c",
            Balance::PeakEwma => "peak_ewma",
            Balance::Random => "random",
            Balance::ConsistentHash => "consistent_hash",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == name)
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl HashKey ===

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
            HashKey::Path => f.write_str("path"),
        }
    }
}

// === impl EndpointConfig ===

impl EndpointConfig {
    /// The address as a socket address if it is an IP literal (`10.0.0.1:80`,
    /// `[::1]:80`): `Some` needs no DNS; `None` if its host is a name to resolve.
    #[cfg(test)]
    pub(crate) fn socket_addr(&self) -> Option<SocketAddr> {
        self.addr.parse().ok()
    }
}

// === impl OutlierConfig ===

/// lb-core's defaults, with the share as a percentage.
impl Default for OutlierConfig {
    fn default() -> Self {
        let core = lb_core::health::OutlierConfig::default();
        Self {
            consecutive_failures: core.consecutive_failures,
            base_ejection: core.base_ejection,
            max_ejection: core.max_ejection,
            max_ejection_percent: (core.max_ejection_percent * 100.0).round() as u8,
        }
    }
}

// === impl HostMatch ===

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Exact(name) => f.write_str(name),
            HostMatch::Suffix(suffix) => write!(f, "*{suffix}"),
        }
    }
}
