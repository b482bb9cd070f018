//! Labels -> catalog members: which containers are selected, under which service, at
//! which address and port, and with which hints. Pure functions over an inspect
//! response, tested on recorded JSON.
//!
//! # Labels
//!
//! With the default prefix `lb`:
//!
//! | label | meaning |
//! |---|---|
//! | `lb.enable` | `true` or `false` (any case): select the container, or never select it |
//! | `lb.service` | the service name (letters, digits, `-`, `_`, `.`); default: the compose service, else the container name |
//! | `lb.port` | the container port, 1 to 65535; default: the exposed TCP port (the lowest of several, with a warning) |
//! | `lb.weight` | the endpoint weight, 0 to 65535; default 1 |
//! | `lb.network` | the network whose address is dialled (compose's `<project>_` prefix may be left out) |
//! | `lb.host`, `lb.path_prefix`, `lb.balance`, `lb.hash_key`, `lb.health.path`, `lb.health.interval`, `lb.tls.acme`, `lb.redirect_https` | hints, see [`Hints::apply`] |
//!
//! Any other `lb.*` label is reported as a warning of the member.
//!
//! # Traefik labels
//!
//! With [`Options::traefik`], Traefik's labels are read where ours are absent:
//! `traefik.enable`; `traefik.backend`, `traefik.port`, `traefik.weight` and
//! `traefik.frontend.rule` (v1); `traefik.http.services.<s>.loadbalancer.server.port` and
//! `.weight` and `traefik.http.routers.<r>.rule` (v2 and v3); `traefik.docker.network`.
//! Only rules this balancer can honour are understood: `Host` and `PathPrefix` matchers
//! (v1: `Host:a,b;PathPrefix:/p`; v2: ``Host(`a`) && PathPrefix(`/p`)``); any other
//! rule makes the container [`Verdict::Invalid`]. The route (hosts and path prefix) is
//! taken from Traefik's rules only when neither `lb.host` nor `lb.path_prefix` is set.
//! A router's `tls.certresolver` (any resolver name) asks for ACME certificates for the
//! hosts, unless `lb.tls.acme` is set.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, EndpointSettings, HealthStatusEnum, PortMap,
};
use lb_core::discover::catalog::Hints;
use lb_core::Endpoint;

/// How containers are read. [`Options::default`] is the documented default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Label prefix, without the dot. Default `lb`.
    pub label_prefix: String,
    /// Select containers without `<prefix>.enable=true` too (those with
    /// `<prefix>.enable=false` never). Default `false`.
    pub exposed_by_default: bool,
    /// The network whose address is used, unless a container's `<prefix>.network` label
    /// says otherwise.
    pub network: Option<String>,
    /// Container address or published port.
    pub address: AddressMode,
    /// The address used for `host` network mode, and for published ports bound to an
    /// unspecified address (`0.0.0.0`, `::`). Default `127.0.0.1`.
    pub host_ip: IpAddr,
    /// Read Traefik's labels too (`compat = ["traefik"]`).
    pub traefik: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            label_prefix: "lb".to_string(),
            exposed_by_default: false,
            network: None,
            address: AddressMode::Container,
            host_ip: IpAddr::from([127, 0, 0, 1]),
            traefik: false,
        }
    }
}

/// Which address of a container is dialled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AddressMode {
    /// The container's own IP on its network, and the container port.
    #[default]
    Container,
    /// The host binding of the port (as Registrator does), for a proxy outside Docker's
    /// networks.
    Published,
}

/// What one container contributes to the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The service it belongs to.
    pub service: String,
    /// The endpoint: id `<container name>:<container port>`, stable across restarts of
    /// the proxy, weight from the labels, and metadata `container_id`, `container`,
    /// `image`, and `compose_project` and `compose_service` for compose containers.
    pub endpoint: Endpoint,
    /// Route and policy hints from its labels.
    pub hints: Hints,
    /// Things worth one warning that do not exclude it (an unknown `lb.*` label, the
    /// lowest of several ports chosen, several networks and none chosen).
    pub warnings: Vec<String>,
}

/// The verdict on one container.
// Most verdicts on selected containers are members, consumed right away: boxing the
// large variant would only add an allocation to the common case.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not selected (no enable label, or disabled): silently ignored.
    NotSelected,
    /// Selected but not eligible now (not running, paused, health not `healthy`, no
    /// address yet); the reason is for debug logs.
    Ineligible(String),
    /// Selected, but a label is malformed: skipped with one warning.
    Invalid {
        /// The label at fault, as written.
        label: String,
        /// What is wrong.
        message: String,
    },
    /// In the catalog.
    Member(Member),
}

/// Judges one container from its inspect response.
///
/// Labels are checked before the state: a container with a malformed label is
/// [`Verdict::Invalid`] whether it runs or not. Missing fields never panic: a container
/// without state, ports or networks is [`Verdict::Ineligible`].
pub fn evaluate(container: &ContainerInspectResponse, opts: &Options) -> Verdict {
    match judge(container, opts) {
        Ok(member) => Verdict::Member(member),
        Err(Skip::NotSelected) => Verdict::NotSelected,
        Err(Skip::Ineligible(reason)) => Verdict::Ineligible(reason),
        Err(Skip::Invalid { label, message }) => Verdict::Invalid { label, message },
    }
}

/// Compose's project label, copied into the metadata.
const COMPOSE_PROJECT: &str = "com.docker.compose.project";
/// Compose's service label: the default service name, and copied into the metadata.
const COMPOSE_SERVICE: &str = "com.docker.compose.service";

/// The keys (after the prefix) that are ours rather than hints.
const OWN_KEYS: [&str; 5] = ["enable", "service", "port", "weight", "network"];

/// The verdicts other than [`Verdict::Member`], small enough to travel as an error.
enum Skip {
    NotSelected,
    Ineligible(String),
    Invalid { label: String, message: String },
}

fn invalid(label: &str, message: impl Into<String>) -> Skip {
    Skip::Invalid {
        label: label.to_owned(),
        message: message.into(),
    }
}

/// One label: its full name and its value.
#[derive(Clone, Copy)]
struct Label<'a> {
    name: &'a str,
    value: &'a str,
}

/// A container's labels, sorted by name so that every walk over them is deterministic.
struct Labels<'a> {
    all: BTreeMap<&'a str, &'a str>,
    /// `<prefix>.`
    prefix: String,
}

impl<'a> Labels<'a> {
    fn new(labels: Option<&'a HashMap<String, String>>, prefix: &str) -> Self {
        Self {
            all: labels
                .into_iter()
                .flatten()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect(),
            prefix: format!("{prefix}."),
        }
    }

    fn get(&self, name: &str) -> Option<Label<'a>> {
        self.all.get_key_value(name).map(|(name, value)| Label { name, value })
    }

    /// `<prefix>.<key>`.
    fn own(&self, key: &str) -> Option<Label<'a>> {
        self.get(&format!("{}{key}", self.prefix))
    }

    /// Every `<prefix>.<key>` label with its key.
    fn own_all(&self) -> impl Iterator<Item = (&'a str, Label<'a>)> + '_ {
        self.all.iter().filter_map(|(name, value)| {
            let key = name.strip_prefix(self.prefix.as_str())?;
            Some((key, Label { name, value }))
        })
    }

    /// Every label whose name starts with `start`, with the rest of its name.
    fn starting_with<'s>(&'s self, start: &'s str) -> impl Iterator<Item = (&'a str, Label<'a>)> + 's {
        self.all.iter().filter_map(move |(name, value)| {
            let rest = name.strip_prefix(start)?;
            Some((rest, Label { name, value }))
        })
    }
}

fn judge(container: &ContainerInspectResponse, opts: &Options) -> Result<Member, Skip> {
    let config = container.config.as_ref();
    let labels = Labels::new(config.and_then(|c| c.labels.as_ref()), &opts.label_prefix);
    if !selected(&labels, opts)? {
        return Err(Skip::NotSelected);
    }
    let container_name = container
        .name
        .as_deref()
        .map(|name| name.strip_prefix('/').unwrap_or(name))
        .filter(|name| !name.is_empty());
    let traefik_service = traefik_service(&labels, opts)?;
    let service = service_name(&labels, opts, traefik_service, container_name)?;

    let mut warnings = Vec::new();
    let port_label = labels
        .own("port")
        .or_else(|| traefik_label(&labels, opts, "traefik.port", traefik_service, "port"));
    let port_label = port_label
        .map(|label| parse_port(label).map(|port| (label, port)))
        .transpose()?;
    let weight_label = labels
        .own("weight")
        .or_else(|| traefik_label(&labels, opts, "traefik.weight", traefik_service, "weight"));
    let weight = match weight_label {
        Some(label) => parse_number(label.value, 65_535).ok_or_else(|| {
            invalid(
                label.name,
                format!("invalid weight {:?} (expected 0 to 65535)", label.value),
            )
        })?,
        None => lb_core::DEFAULT_WEIGHT,
    };
    let network = labels
        .own("network")
        .or_else(|| opts.traefik.then(|| labels.get("traefik.docker.network")).flatten());
    if let Some(label) = network.filter(|label| label.value.is_empty()) {
        return Err(invalid(label.name, "empty network name"));
    }
    let network = network.map(|label| label.value).or(opts.network.as_deref());
    let hints = hints(&labels, opts, &mut warnings)?;

    eligible(container)?;
    let port = match port_label {
        Some((_, port)) => port,
        None => exposed_port(container, &labels.prefix, &mut warnings)?,
    };
    let ip_port = address(container, opts, network, port, &labels.prefix, &mut warnings)?;

    let id = container.id.as_deref().filter(|id| !id.is_empty());
    let Some(endpoint_name) = container_name.or(id) else {
        return Err(Skip::Ineligible("the container has neither a name nor an id".into()));
    };
    let mut endpoint = Endpoint::new(ip_port)
        .with_id(format!("{endpoint_name}:{port}"))
        .with_weight(weight);
    let metadata = [
        ("container_id", id),
        ("container", container_name),
        ("image", config.and_then(|c| c.image.as_deref())),
        ("compose_project", labels.get(COMPOSE_PROJECT).map(|l| l.value)),
        ("compose_service", labels.get(COMPOSE_SERVICE).map(|l| l.value)),
    ];
    for (key, value) in metadata {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            endpoint = endpoint.with_metadata(key, value);
        }
    }
    Ok(Member {
        service,
        endpoint,
        hints,
        warnings,
    })
}

/// `<prefix>.enable` decides; else (Traefik compat) `traefik.enable`; else
/// `exposed_by_default`.
fn selected(labels: &Labels<'_>, opts: &Options) -> Result<bool, Skip> {
    let enable = labels
        .own("enable")
        .or_else(|| opts.traefik.then(|| labels.get("traefik.enable")).flatten());
    match enable {
        None => Ok(opts.exposed_by_default),
        Some(label) if label.value.eq_ignore_ascii_case("true") => Ok(true),
        Some(label) if label.value.eq_ignore_ascii_case("false") => Ok(false),
        Some(label) => Err(invalid(
            label.name,
            format!("invalid value {:?} (expected true or false)", label.value),
        )),
    }
}

/// The Traefik v2 service `<s>` of `traefik.http.services.<s>.…` labels, when there is
/// exactly one, or several and `<prefix>.service` names one of them.
fn traefik_service<'a>(labels: &Labels<'a>, opts: &Options) -> Result<Option<&'a str>, Skip> {
    if !opts.traefik {
        return Ok(None);
    }
    let services: BTreeSet<&str> = labels
        .starting_with("traefik.http.services.")
        .filter_map(|(rest, _)| rest.split('.').next())
        .filter(|s| !s.is_empty())
        .collect();
    let mut iter = services.iter();
    match (iter.next(), iter.next()) {
        (None, _) => Ok(None),
        (Some(only), None) => Ok(Some(*only)),
        (Some(_), Some(_)) => {
            let own = labels.own("service");
            if let Some(chosen) = own.and_then(|label| services.get(label.value)) {
                return Ok(Some(*chosen));
            }
            let list = services.iter().copied().collect::<Vec<_>>().join(", ");
            let label = own.map_or("traefik.http.services", |label| label.name);
            Err(invalid(
                label,
                format!(
                    "the container has several Traefik services ({list}): set {}service to one of them",
                    labels.prefix
                ),
            ))
        }
    }
}

/// `<prefix>.<key>`'s Traefik equivalents: the v1 label, else the v2 service's
/// `loadbalancer.server.<key>`.
fn traefik_label<'a>(
    labels: &Labels<'a>,
    opts: &Options,
    v1: &str,
    v2_service: Option<&str>,
    key: &str,
) -> Option<Label<'a>> {
    if !opts.traefik {
        return None;
    }
    labels.get(v1).or_else(|| {
        v2_service.and_then(|s| labels.get(&format!("traefik.http.services.{s}.loadbalancer.server.{key}")))
    })
}

/// `<prefix>.service`; else `traefik.backend` or the single Traefik v2 service; else the
/// compose service; else the container name.
fn service_name(
    labels: &Labels<'_>,
    opts: &Options,
    traefik_service: Option<&str>,
    container_name: Option<&str>,
) -> Result<String, Skip> {
    let from_label = labels
        .own("service")
        .or_else(|| opts.traefik.then(|| labels.get("traefik.backend")).flatten());
    let (name, source) = match (from_label, traefik_service) {
        (Some(label), _) => (label.value, label.name),
        (None, Some(service)) => (service, "traefik.http.services"),
        (None, None) => match (labels.get(COMPOSE_SERVICE), container_name) {
            (Some(label), _) => (label.value, label.name),
            (None, Some(name)) => (name, "Name"),
            (None, None) => {
                return Err(invalid(
                    &format!("{}service", labels.prefix),
                    "missing, and the container has no name to default to",
                ))
            }
        },
    };
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(name.to_owned())
    } else {
        Err(invalid(
            source,
            format!("invalid service name {name:?} (expected letters, digits, `-`, `_` and `.`)"),
        ))
    }
}

/// A decimal number from 0 to `max`, digits only.
fn parse_number(value: &str, max: u32) -> Option<u32> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u32>().ok().filter(|n| *n <= max)
}

fn parse_port(label: Label<'_>) -> Result<u16, Skip> {
    parse_number(label.value, u32::from(u16::MAX))
        .and_then(|port| u16::try_from(port).ok())
        .filter(|port| *port > 0)
        .ok_or_else(|| {
            invalid(
                label.name,
                format!("invalid port {:?} (expected 1 to 65535)", label.value),
            )
        })
}

/// Applies every `<prefix>.<key>` hint label, then (Traefik compat, when no
/// `<prefix>.host` or `<prefix>.path_prefix` is set) the routes of Traefik's rules.
fn hints(labels: &Labels<'_>, opts: &Options, warnings: &mut Vec<String>) -> Result<Hints, Skip> {
    let mut hints = Hints::default();
    for (key, label) in labels.own_all() {
        if OWN_KEYS.contains(&key) {
            continue;
        }
        match hints.apply(key, label.value) {
            Ok(true) => {}
            Ok(false) => warnings.push(format!("unknown label {} (ignored)", label.name)),
            Err(err) => return Err(invalid(label.name, err.message)),
        }
    }
    if opts.traefik && labels.own("host").is_none() && labels.own("path_prefix").is_none() {
        traefik_routes(labels, &mut hints)?;
    }
    if opts.traefik && labels.own("tls.acme").is_none() {
        // A router with a certificate resolver asks for ACME certificates for its hosts.
        hints.tls_acme |= labels.starting_with("traefik.http.routers.").any(|(rest, label)| {
            rest.split_once('.')
                .is_some_and(|(router, key)| !router.is_empty() && key == "tls.certresolver")
                && !label.value.is_empty()
        });
    }
    Ok(hints)
}

/// What a Traefik rule routes: hosts and at most one path prefix.
#[derive(Default)]
struct Route<'a> {
    hosts: Vec<&'a str>,
    path_prefix: Option<&'a str>,
}

/// Hosts and the path prefix of `traefik.frontend.rule` (v1) and every
/// `traefik.http.routers.<r>.rule` (v2): all hosts are taken; the path prefixes must be
/// the same.
fn traefik_routes(labels: &Labels<'_>, hints: &mut Hints) -> Result<(), Skip> {
    let v1 = labels
        .get("traefik.frontend.rule")
        .map(|label| (label, v1_rule(label.value)));
    let v2 = labels
        .starting_with("traefik.http.routers.")
        .filter(|(rest, _)| {
            rest.split_once('.')
                .is_some_and(|(router, key)| !router.is_empty() && key == "rule")
        })
        .map(|(_, label)| (label, v2_rule(label.value)));
    let mut first_path: Option<(Label<'_>, Option<&str>)> = None;
    for (label, route) in v1.into_iter().chain(v2) {
        let route = route.map_err(|message| invalid(label.name, message))?;
        for host in route.hosts {
            hints
                .apply("host", host)
                .map_err(|err| invalid(label.name, err.message))?;
        }
        match first_path {
            None => first_path = Some((label, route.path_prefix)),
            Some((first, path)) if path != route.path_prefix => {
                let show = |path: Option<&str>| path.map_or_else(|| "none".to_owned(), |p| format!("{p:?}"));
                return Err(invalid(
                    label.name,
                    format!(
                        "path prefix {} differs from {} of {}: the routers of one service must share one path prefix",
                        show(route.path_prefix),
                        show(path),
                        first.name
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    if let Some((label, Some(path))) = first_path {
        hints
            .apply("path_prefix", path)
            .map_err(|err| invalid(label.name, err.message))?;
    }
    Ok(())
}

/// A Traefik v1 frontend rule: `Host:a,b`, `PathPrefix:/p`, or both joined by `;`.
fn v1_rule(rule: &str) -> Result<Route<'_>, String> {
    let unsupported =
        || format!("unsupported rule {rule:?}: only Host:NAMES and PathPrefix:PATH, joined by `;`, are understood");
    let mut route = Route::default();
    let mut seen_host = false;
    for part in rule.split(';') {
        let (matcher, value) = part.split_once(':').ok_or_else(unsupported)?;
        let value = value.trim();
        match matcher.trim() {
            "Host" if !seen_host => {
                seen_host = true;
                route.hosts.push(value);
            }
            "PathPrefix" if route.path_prefix.is_none() && !value.contains(',') => route.path_prefix = Some(value),
            _ => return Err(unsupported()),
        }
    }
    Ok(route)
}

/// A Traefik v2/v3 router rule: ``Host(`a`)``, ``Host(`a`, `b`)``, ``PathPrefix(`/p`)``,
/// or one of each joined by `&&`. Strings are quoted with backticks or double quotes.
fn v2_rule(rule: &str) -> Result<Route<'_>, String> {
    let unsupported =
        || format!("unsupported rule {rule:?}: only Host(...) and PathPrefix(...), joined by &&, are understood");
    let mut route = Route::default();
    let mut seen_host = false;
    let mut rest = rule.trim_start();
    loop {
        let name_len = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len());
        let (matcher, after) = rest.split_at(name_len);
        let mut after = after.trim_start().strip_prefix('(').ok_or_else(unsupported)?;
        let mut args = Vec::new();
        loop {
            after = after.trim_start();
            let quote = match after.chars().next() {
                Some(quote @ ('`' | '"')) => quote,
                _ => return Err(unsupported()),
            };
            let body = &after[1..];
            let end = body.find(quote).ok_or_else(unsupported)?;
            args.push(&body[..end]);
            after = body[end + 1..].trim_start();
            match after.strip_prefix(',') {
                Some(next) => after = next,
                None => break,
            }
        }
        after = after.strip_prefix(')').ok_or_else(unsupported)?;
        match (matcher, args.as_slice()) {
            ("Host", hosts) if !seen_host => {
                seen_host = true;
                if let Some(host) = hosts.iter().find(|host| host.contains(',')) {
                    return Err(format!("invalid host {host:?} in rule {rule:?}"));
                }
                route.hosts.extend_from_slice(hosts);
            }
            ("PathPrefix", [path]) if route.path_prefix.is_none() => route.path_prefix = Some(path),
            _ => return Err(unsupported()),
        }
        rest = after.trim_start();
        if rest.is_empty() {
            return Ok(route);
        }
        rest = rest.strip_prefix("&&").ok_or_else(unsupported)?.trim_start();
    }
}

/// Running, and healthy if it has a health check.
fn eligible(container: &ContainerInspectResponse) -> Result<(), Skip> {
    let state = container.state.as_ref();
    match state.and_then(|s| s.status) {
        Some(ContainerStateStatusEnum::RUNNING) => {}
        Some(ContainerStateStatusEnum::PAUSED) => return Err(Skip::Ineligible("paused".into())),
        Some(status) if !status.as_ref().is_empty() => {
            return Err(Skip::Ineligible(format!("not running ({status})")));
        }
        _ => return Err(Skip::Ineligible("not running (state unknown)".into())),
    }
    match state.and_then(|s| s.health.as_ref()).and_then(|h| h.status) {
        Some(HealthStatusEnum::STARTING) => Err(Skip::Ineligible("health: starting".into())),
        Some(HealthStatusEnum::UNHEALTHY) => Err(Skip::Ineligible("health: unhealthy".into())),
        // Healthy, or no health check.
        Some(HealthStatusEnum::HEALTHY | HealthStatusEnum::NONE | HealthStatusEnum::EMPTY) | None => Ok(()),
    }
}

/// The TCP port of a `"8080/tcp"` key (a key without protocol is TCP).
fn tcp_port(key: &str) -> Option<u16> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    if !proto.eq_ignore_ascii_case("tcp") {
        return None;
    }
    parse_number(port, u32::from(u16::MAX))
        .and_then(|port| u16::try_from(port).ok())
        .filter(|port| *port > 0)
}

/// The exposed TCP port (`Config.ExposedPorts` and `NetworkSettings.Ports`), the lowest
/// of several with a warning.
fn exposed_port(container: &ContainerInspectResponse, prefix: &str, warnings: &mut Vec<String>) -> Result<u16, Skip> {
    let exposed = container
        .config
        .as_ref()
        .and_then(|c| c.exposed_ports.as_ref())
        .into_iter()
        .flatten();
    let runtime = container
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
        .into_iter()
        .flat_map(|ports| ports.keys());
    let ports: BTreeSet<u16> = exposed.chain(runtime).filter_map(|key| tcp_port(key)).collect();
    let mut iter = ports.iter();
    match (iter.next(), iter.next()) {
        (None, _) => Err(Skip::Ineligible(format!(
            "no port: the container exposes no TCP port and has no {prefix}port label"
        ))),
        (Some(only), None) => Ok(*only),
        (Some(lowest), Some(_)) => {
            let list = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
            warnings.push(format!(
                "several exposed ports ({list}): using the lowest, {lowest}; set {prefix}port to choose"
            ));
            Ok(*lowest)
        }
    }
}

/// Where to dial `port` of the container.
fn address(
    container: &ContainerInspectResponse,
    opts: &Options,
    network: Option<&str>,
    port: u16,
    prefix: &str,
    warnings: &mut Vec<String>,
) -> Result<SocketAddr, Skip> {
    let mode = container
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.as_deref())
        .unwrap_or_default();
    if mode == "host" {
        return Ok(SocketAddr::new(opts.host_ip, port));
    }
    if mode.starts_with("container:") {
        return Err(Skip::Ineligible(format!(
            "network mode {mode} is not supported; label the container that owns the network"
        )));
    }
    let settings = container.network_settings.as_ref();
    if opts.address == AddressMode::Published {
        return published(settings.and_then(|n| n.ports.as_ref()), opts.host_ip, port);
    }
    let empty = HashMap::new();
    let networks = settings.and_then(|n| n.networks.as_ref()).unwrap_or(&empty);
    let (name, endpoint) = match network {
        Some(wanted) => find_network(networks, wanted)?,
        None => {
            let mut sorted: Vec<_> = networks.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            match sorted.as_slice() {
                [] => return Err(Skip::Ineligible("not attached to any network".into())),
                [only] => *only,
                [first, ..] => {
                    let list = sorted
                        .iter()
                        .map(|(name, _)| name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ");
                    warnings.push(format!(
                        "attached to several networks ({list}) and none chosen: using {}; set {prefix}network",
                        first.0
                    ));
                    *first
                }
            }
        }
    };
    let ip = [&endpoint.ip_address, &endpoint.global_ipv6_address]
        .into_iter()
        .flatten()
        .find(|ip| !ip.is_empty())
        .ok_or_else(|| Skip::Ineligible(format!("no address on network {name}")))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| Skip::Ineligible(format!("invalid address {ip:?} on network {name}")))?;
    Ok(SocketAddr::new(ip, port))
}

/// The network `wanted`, or the only one named `<project>_<wanted>` (compose).
fn find_network<'n>(
    networks: &'n HashMap<String, EndpointSettings>,
    wanted: &str,
) -> Result<(&'n String, &'n EndpointSettings), Skip> {
    if let Some(found) = networks.get_key_value(wanted) {
        return Ok(found);
    }
    let suffix = format!("_{wanted}");
    let mut matches: Vec<_> = networks.iter().filter(|(name, _)| name.ends_with(&suffix)).collect();
    matches.sort_by(|a, b| a.0.cmp(b.0));
    match matches.as_slice() {
        [] => Err(Skip::Ineligible(format!("not attached to network {wanted}"))),
        [only] => Ok(*only),
        several => {
            let list = several
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            Err(Skip::Ineligible(format!(
                "network {wanted} is ambiguous: attached to {list}"
            )))
        }
    }
}

/// The first host binding of `<port>/tcp`; an unspecified host IP becomes `host_ip`.
fn published(ports: Option<&PortMap>, host_ip: IpAddr, port: u16) -> Result<SocketAddr, Skip> {
    let key = format!("{port}/tcp");
    let bindings = ports.and_then(|p| p.get(&key)).and_then(Option::as_ref);
    bindings
        .into_iter()
        .flatten()
        .find_map(|binding| {
            let host_port = binding
                .host_port
                .as_deref()
                .and_then(|p| parse_number(p, u32::from(u16::MAX)))?;
            let host_port = u16::try_from(host_port).ok().filter(|p| *p > 0)?;
            let ip = match binding.host_ip.as_deref().unwrap_or_default() {
                "" => host_ip,
                text => text.parse::<IpAddr>().ok()?,
            };
            let ip = if ip.is_unspecified() { host_ip } else { ip };
            Some(SocketAddr::new(ip, host_port))
        })
        .ok_or_else(|| Skip::Ineligible(format!("port {key} is not published")))
}
