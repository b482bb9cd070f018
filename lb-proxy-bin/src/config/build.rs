//! From the file as written ([`RawConfig`]) to a checked [`Config`]: defaults, required keys,
//! value checks, and the checks across sections (routes and TCP listeners name existing
//! services, listen addresses are unique). The first fault found is returned with its key
//! path; `error.rs` places it in the file.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lb_discovery_static::EndpointSpec;

use super::duration::parse_duration;
use super::error::{Invalid, KeyPath};
use super::raw::{
    OneOrMany, RawAcme, RawAdmin, RawConfig, RawConsulRef, RawDuration, RawEndpoint, RawHealth, RawHsts, RawOutlier,
    RawProvider, RawRoute, RawServer, RawService, RawTcp, RawTls,
};
use super::{
    AcmeChallenge, AcmeConfig, AdminConfig, BackendTls, Balance, BasicAuth, CertKey, Config, ConsulProviderConfig,
    ConsulSource, DockerProviderConfig, EndpointConfig, EndpointSource, Forwarded, HashKey, HealthConfig, HostMatch,
    Origin, OutlierConfig, Probe, ProviderConfig, RouteConfig, ServerConfig, ServiceConfig, SniCert, TcpConfig,
    TlsConfig,
};

type Result<T> = std::result::Result<T, Invalid>;

/// The largest endpoint weight (lb-core's `MAX_WEIGHT`).
const MAX_WEIGHT: i64 = 65_535;

/// The most retries a service may ask for.
const MAX_RETRIES: i64 = 100;

/// The largest `max_connections`: more than any file descriptor limit allows.
const MAX_CONNECTIONS: u32 = 16_777_216;

/// Checks `raw`; faults that do not stop the proxy (a key that is ignored) go to `warnings`.
///
/// Every check across entries (duplicate names, routes, endpoints, listeners, server
/// names) looks things up in a hash map: checking is linear in the size of the file.
pub(super) fn build(raw: RawConfig, base_dir: &Path, warnings: &mut Vec<Invalid>) -> Result<Config> {
    let root = KeyPath::root();
    let (server, mut listeners) = server(raw.server.unwrap_or_default(), &root.key("server"), base_dir)?;
    let admin = admin(raw.admin.unwrap_or_default(), &root.key("admin"))?;
    listeners.push((admin.listen, root.key("admin").key("listen")));

    let empty_on_purpose = matches!(&raw.services, Some(list) if list.is_empty());
    let raw_services = raw.services.unwrap_or_default();
    let mut services: Vec<ServiceConfig> = Vec::with_capacity(raw_services.len());
    let mut names: HashMap<String, usize> = HashMap::with_capacity(raw_services.len());
    for (i, raw) in raw_services.into_iter().enumerate() {
        let path = root.key("services").index(i);
        let service = service(raw, &path, base_dir, warnings)?;
        if let Some(first) = names.get(&service.name) {
            return Err(Invalid::new(
                &path.key("name"),
                format!(
                    "duplicate service name {:?} (first defined by services[{first}])",
                    service.name
                ),
            ));
        }
        names.insert(service.name.clone(), i);
        services.push(service);
    }
    let defined = Defined {
        names: &names,
        services: &services,
    };

    let mut routes: Vec<RouteConfig> = Vec::with_capacity(raw.routes.len());
    let mut seen_routes: HashMap<(Option<HostMatch>, Option<String>), usize> = HashMap::with_capacity(raw.routes.len());
    for (i, raw) in raw.routes.into_iter().enumerate() {
        let path = root.key("routes").index(i);
        let route = route(raw, &path, &defined)?;
        let key = (route.host.clone(), route.path_prefix.clone());
        if let Some(first) = seen_routes.get(&key) {
            return Err(Invalid::new(
                &path,
                format!("same host and path_prefix as routes[{first}]: this route could never match"),
            ));
        }
        seen_routes.insert(key, i);
        routes.push(route);
    }

    let mut tcp = Vec::with_capacity(raw.tcp.len());
    for (i, raw) in raw.tcp.into_iter().enumerate() {
        let path = root.key("tcp").index(i);
        let entry = tcp_entry(raw, &path, &defined)?;
        listeners.push((entry.listen, path.key("listen")));
        tcp.push(entry);
    }

    let acme = raw
        .acme
        .map(|a| {
            acme(
                a,
                &root.key("acme"),
                base_dir,
                !server.tls_listen.is_empty() || server.tls.is_none(),
            )
        })
        .transpose()?;
    tls_checks(&server, acme.as_ref(), &routes, &tcp, &root)?;

    let mut providers = Vec::with_capacity(raw.providers.len());
    for (i, raw) in raw.providers.into_iter().enumerate() {
        let path = root.key("providers").index(i);
        let provider = provider(raw, &path, base_dir)?;
        let same_kind = providers
            .iter()
            .any(|p| std::mem::discriminant(p) == std::mem::discriminant(&provider));
        if same_kind {
            let message = match provider {
                ProviderConfig::Docker(_) => "a second docker provider: one proxy follows one Docker Engine",
                ProviderConfig::Consul(_) => "a second consul provider: one proxy follows one Consul catalog",
            };
            return Err(Invalid::new(&path.key("kind"), message));
        }
        providers.push(provider);
    }

    let mut bound: HashMap<SocketAddr, &KeyPath> = HashMap::with_capacity(listeners.len());
    for (addr, path) in &listeners {
        // Port 0 asks the system for a free port: it never conflicts.
        if addr.port() == 0 {
            continue;
        }
        if let Some(first) = bound.get(addr) {
            return Err(Invalid::new(path, format!("address {addr} is already used by {first}")));
        }
        bound.insert(*addr, path);
    }

    Ok(Config {
        server,
        admin,
        services,
        routes,
        tcp,
        providers,
        acme,
        warnings: Vec::new(),
        empty_on_purpose,
    })
}

/// Whether HTTPS is served at all: `tls_listen`, or every listener (`[server.tls]` alone).
fn serves_tls(server: &ServerConfig) -> bool {
    !server.tls_listen.is_empty() || server.tls.is_some()
}

/// The checks across `[server]`, `[acme]`, routes and TCP listeners that TLS needs.
fn tls_checks(
    server: &ServerConfig,
    acme: Option<&AcmeConfig>,
    routes: &[RouteConfig],
    tcp: &[TcpConfig],
    root: &KeyPath,
) -> Result<()> {
    let at = root.key("server");
    if !server.tls_listen.is_empty() && server.tls.is_none() && acme.is_none() {
        return Err(Invalid::new(
            &at.key("tls_listen"),
            "HTTPS listeners need certificates: add [server.tls] (files, dir or env) or [acme]",
        ));
    }
    if server.redirect_https && server.tls_listen.is_empty() {
        return Err(Invalid::new(
            &at.key("redirect_https"),
            "redirect_https needs tls_listen: the HTTPS listener to send clients to",
        ));
    }
    if server.hsts.is_some() && !serves_tls(server) {
        return Err(Invalid::new(
            &at.key("hsts"),
            "hsts is sent on HTTPS responses only: add tls_listen and certificates",
        ));
    }
    if acme.is_some() && !serves_tls(server) {
        return Err(Invalid::new(
            &root.key("acme"),
            "[acme] needs an HTTPS listener to serve its certificates: set [server] tls_listen",
        ));
    }
    for (i, r) in routes.iter().enumerate() {
        let path = root.key("routes").index(i);
        if r.acme {
            acme_route(r, acme).map_err(|msg| Invalid::new(&path.key("acme"), msg))?;
        }
        if r.redirect_https == Some(true) && server.tls_listen.is_empty() {
            return Err(Invalid::new(
                &path.key("redirect_https"),
                "redirect_https needs [server] tls_listen: the HTTPS listener to send clients to",
            ));
        }
    }
    for (i, t) in tcp.iter().enumerate() {
        if t.tls && server.tls.is_none() && acme.is_none() {
            return Err(Invalid::new(
                &root.key("tcp").index(i).key("tls"),
                "tls = true needs certificates: add [server.tls] or [acme]",
            ));
        }
    }
    Ok(())
}

/// Why a route cannot have `acme = true`, if it cannot (shared with the providers).
pub(crate) fn acme_route(r: &RouteConfig, acme: Option<&AcmeConfig>) -> std::result::Result<(), String> {
    if acme.is_none() {
        return Err("acme = true needs an [acme] section (directory, email, storage)".into());
    }
    match &r.host {
        Some(HostMatch::Exact(_)) => Ok(()),
        Some(HostMatch::Suffix(_)) => Err(
            "acme = true needs an exact host: a wildcard certificate needs the dns-01 challenge, which is not supported"
                .into(),
        ),
        None => Err("acme = true needs the route's `host`: the name to get a certificate for".into()),
    }
}

/// The default ACME directory: Let's Encrypt's production one.
pub(crate) const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `[acme]`; `plain`: whether a plain HTTP listener exists (for `http-01`).
fn acme(raw: RawAcme, path: &KeyPath, base_dir: &Path, plain: bool) -> Result<AcmeConfig> {
    let directory = raw.directory.unwrap_or_else(|| LETS_ENCRYPT.to_string());
    match directory.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => {}
        _ => {
            return Err(Invalid::new(
                &path.key("directory"),
                format!("invalid directory {directory:?} (expected an https:// URL, as in {LETS_ENCRYPT:?})"),
            ))
        }
    }
    let directory_ca = raw
        .directory_ca
        .map(|f| file_path(&f, &path.key("directory_ca"), base_dir))
        .transpose()?;
    if let Some(email) = &raw.email {
        let ok = email.split_once('@').is_some_and(|(user, domain)| {
            !user.is_empty() && domain.contains('.') && !email.contains(char::is_whitespace)
        });
        if !ok {
            return Err(Invalid::new(
                &path.key("email"),
                format!("invalid email {email:?} (expected an address, as in \"ops@example.com\")"),
            ));
        }
    }
    let storage = file_path(raw.storage.as_deref().unwrap_or("acme"), &path.key("storage"), base_dir)?;
    let mut names: Vec<String> = Vec::new();
    for (i, n) in raw.names.unwrap_or_default().iter().enumerate() {
        let at = path.key("names").index(i);
        match host_match(n).map_err(|msg| Invalid::new(&at, msg))? {
            HostMatch::Exact(name) => {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            HostMatch::Suffix(_) => {
                return Err(Invalid::new(
                    &at,
                    "a wildcard certificate needs the dns-01 challenge, which is not supported: list exact names",
                ))
            }
        }
    }
    let challenges = match raw.challenges {
        None if plain => vec![AcmeChallenge::Http01, AcmeChallenge::TlsAlpn01],
        None => vec![AcmeChallenge::TlsAlpn01],
        Some(list) => {
            if list.is_empty() {
                return Err(Invalid::new(
                    &path.key("challenges"),
                    "no challenge type (list \"http-01\", \"tls-alpn-01\" or both)",
                ));
            }
            let mut out = Vec::new();
            for (i, c) in list.iter().enumerate() {
                let at = path.key("challenges").index(i);
                let kind = match c.as_str() {
                    "http-01" if plain => AcmeChallenge::Http01,
                    "http-01" => {
                        return Err(Invalid::new(
                            &at,
                            "http-01 is answered on a plain HTTP listener, and every listener is HTTPS here: set [server] tls_listen, or use \"tls-alpn-01\"",
                        ))
                    }
                    "tls-alpn-01" => AcmeChallenge::TlsAlpn01,
                    other => {
                        return Err(Invalid::new(
                            &at,
                            format!("unknown challenge {other:?} (expected \"http-01\" or \"tls-alpn-01\")"),
                        ))
                    }
                };
                if !out.contains(&kind) {
                    out.push(kind);
                }
            }
            out
        }
    };
    Ok(AcmeConfig {
        directory,
        directory_ca,
        email: raw.email,
        storage,
        names,
        challenges,
    })
}

/// The services defined so far, for routes and TCP listeners to name.
struct Defined<'a> {
    names: &'a HashMap<String, usize>,
    services: &'a [ServiceConfig],
}

/// One `[[providers]]` entry.
fn provider(raw: RawProvider, path: &KeyPath, base_dir: &Path) -> Result<ProviderConfig> {
    let kind = required(raw.kind.clone(), path, "kind")?;
    match kind.as_str() {
        "docker" => docker_provider(raw, path),
        "consul" => consul_provider(raw, path, base_dir),
        _ => Err(Invalid::new(
            &path.key("kind"),
            format!("unknown provider kind {kind:?} (expected \"docker\" or \"consul\")"),
        )),
    }
}

/// `kind = "consul"`: catalog mode.
fn consul_provider(raw: RawProvider, path: &KeyPath, base_dir: &Path) -> Result<ProviderConfig> {
    // The Docker-only keys are refused by name rather than ignored.
    let docker_only = [
        ("endpoint", raw.endpoint.is_some()),
        ("label_prefix", raw.label_prefix.is_some()),
        ("exposed_by_default", raw.exposed_by_default.is_some()),
        ("network", raw.network.is_some()),
        ("host_ip", raw.host_ip.is_some()),
        ("compat", raw.compat.is_some()),
        ("resync", raw.resync.is_some()),
    ];
    if let Some((key, _)) = docker_only.iter().find(|(_, set)| *set) {
        return Err(Invalid::new(
            &path.key(key),
            format!("`{key}` is a docker provider key (this provider is kind = \"consul\")"),
        ));
    }
    let tag_prefix = prefix(raw.tag_prefix, path, "tag_prefix")?;
    let default_host = default_host(raw.default_host, path)?;
    let linger = duration(raw.linger, &path.key("linger"))?.unwrap_or(Duration::from_secs(10));
    let source = consul_source(
        RawConsulRef {
            address: raw.address,
            service: Some(String::new()),
            tag: None,
            statuses: raw.statuses,
            token: raw.token,
            dc: raw.dc,
            filter: None,
            consistency: raw.consistency,
            ca_file: raw.ca_file,
        },
        path,
        base_dir,
        false,
    )?;
    Ok(ProviderConfig::Consul(ConsulProviderConfig {
        source,
        tag_prefix,
        default_host,
        linger,
    }))
}

/// `consul = {...}` of a service, or the Consul keys of a provider (`named`: whether a
/// service name is required).
fn consul_source(raw: RawConsulRef, path: &KeyPath, base_dir: &Path, named: bool) -> Result<ConsulSource> {
    let service = if named {
        let service = required(raw.service, path, "service")?;
        if service.is_empty() || service.contains('/') || service.chars().any(char::is_whitespace) {
            return Err(Invalid::new(
                &path.key("service"),
                format!("invalid Consul service name {service:?}"),
            ));
        }
        service
    } else {
        String::new()
    };
    let address = match raw.address {
        None => None,
        Some(a) => {
            let rest = a
                .strip_prefix("http://")
                .or_else(|| a.strip_prefix("https://"))
                .unwrap_or(&a);
            let bad = a.contains("://") && !(a.starts_with("http://") || a.starts_with("https://"));
            if bad || rest.trim_end_matches('/').is_empty() || rest.trim_end_matches('/').contains('/') {
                return Err(Invalid::new(
                    &path.key("address"),
                    format!("invalid Consul address {a:?} (expected http://host:port, https://host:port or host:port)"),
                ));
            }
            Some(a)
        }
    };
    let tags = match raw.tag {
        None => Vec::new(),
        Some(OneOrMany { values, .. }) => {
            if let Some(i) = values.iter().position(String::is_empty) {
                return Err(Invalid::new(&path.key("tag").index(i), "empty tag"));
            }
            values
        }
    };
    let statuses = match raw.statuses {
        None => vec![lb_discovery_consul::Status::Passing],
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, s) in list.iter().enumerate() {
                match s.as_str() {
                    "passing" => out.push(lb_discovery_consul::Status::Passing),
                    "warning" => out.push(lb_discovery_consul::Status::Warning),
                    other => {
                        return Err(Invalid::new(
                            &path.key("statuses").index(i),
                            format!("unknown status {other:?} (expected \"passing\" or \"warning\")"),
                        ))
                    }
                }
            }
            if out.is_empty() {
                return Err(Invalid::new(
                    &path.key("statuses"),
                    "no status: give at least \"passing\"",
                ));
            }
            out.sort();
            out.dedup();
            out
        }
    };
    let token = match raw.token {
        Some(t) if t.trim().is_empty() || t.trim() != t => {
            // The value is a secret: never quoted.
            return Err(Invalid::new(
                &path.key("token"),
                "the token is empty or has leading or trailing whitespace",
            ));
        }
        other => other,
    };
    let consistency = match raw.consistency.as_deref() {
        None | Some("default") => lb_discovery_consul::Consistency::Default,
        Some("stale") => lb_discovery_consul::Consistency::Stale,
        Some("consistent") => lb_discovery_consul::Consistency::Consistent,
        Some(other) => {
            return Err(Invalid::new(
                &path.key("consistency"),
                format!("unknown consistency {other:?} (expected \"default\", \"stale\" or \"consistent\")"),
            ))
        }
    };
    let ca_file = raw
        .ca_file
        .map(|f| file_path(&f, &path.key("ca_file"), base_dir))
        .transpose()?;
    if let Some(f) = &raw.filter {
        if f.trim().is_empty() {
            return Err(Invalid::new(&path.key("filter"), "empty filter"));
        }
    }
    Ok(ConsulSource {
        address,
        service,
        tags,
        statuses,
        token,
        dc: raw.dc.filter(|d| !d.is_empty()),
        filter: raw.filter,
        consistency,
        ca_file,
    })
}

/// A label or tag prefix (`key` of the table at `path`), default `lb`: letters, digits,
/// `-`, `_`, `.`, without the final dot.
fn prefix(value: Option<String>, path: &KeyPath, key: &str) -> Result<String> {
    match value {
        None => Ok("lb".to_string()),
        Some(p)
            if !p.is_empty()
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !p.ends_with('.') =>
        {
            Ok(p)
        }
        Some(p) => Err(Invalid::new(
            &path.key(key),
            format!(
                "invalid {} {p:?} (letters, digits, `-`, `_`, `.`; without the final dot)",
                key.replace('_', " ")
            ),
        )),
    }
}

/// `default_host`, checked with a sample name: what is left must be a host rule.
fn default_host(template: Option<String>, path: &KeyPath) -> Result<Option<String>> {
    match template {
        None => Ok(None),
        Some(template) => {
            let sample = template.replace("{service}", "svc");
            host_match(&sample).map_err(|msg| Invalid::new(&path.key("default_host"), msg))?;
            Ok(Some(template))
        }
    }
}

/// `kind = "docker"`.
fn docker_provider(raw: RawProvider, path: &KeyPath) -> Result<ProviderConfig> {
    let consul_only = [
        ("tag_prefix", raw.tag_prefix.is_some()),
        ("token", raw.token.is_some()),
        ("dc", raw.dc.is_some()),
        ("statuses", raw.statuses.is_some()),
        ("consistency", raw.consistency.is_some()),
        ("ca_file", raw.ca_file.is_some()),
    ];
    if let Some((key, _)) = consul_only.iter().find(|(_, set)| *set) {
        return Err(Invalid::new(
            &path.key(key),
            format!("`{key}` is a consul provider key (this provider is kind = \"docker\")"),
        ));
    }
    let defaults = DockerProviderConfig::default();
    let endpoint = match raw.endpoint {
        None => None,
        Some(ep) => {
            let ok = ["unix://", "tcp://", "http://"]
                .iter()
                .any(|scheme| ep.starts_with(scheme) && ep.len() > scheme.len());
            if !ok {
                return Err(Invalid::new(
                    &path.key("endpoint"),
                    format!("invalid docker endpoint {ep:?} (expected unix:///path/docker.sock or tcp://host:port)"),
                ));
            }
            Some(ep)
        }
    };
    let label_prefix = prefix(raw.label_prefix, path, "label_prefix")?;
    let network = match raw.network {
        Some(n) if n.is_empty() => return Err(Invalid::new(&path.key("network"), "empty network name")),
        other => other,
    };
    let published = match raw.address.as_deref() {
        None | Some("container") => false,
        Some("published") => true,
        Some(other) => {
            return Err(Invalid::new(
                &path.key("address"),
                format!("unknown address mode {other:?} (expected \"container\" or \"published\")"),
            ))
        }
    };
    let host_ip = match raw.host_ip {
        None => defaults.host_ip,
        Some(text) => text
            .parse()
            .map_err(|_| Invalid::new(&path.key("host_ip"), format!("invalid IP address {text:?}")))?,
    };
    let default_host = default_host(raw.default_host, path)?;
    let mut traefik = false;
    for (i, c) in raw.compat.unwrap_or_default().iter().enumerate() {
        match c.as_str() {
            "traefik" => traefik = true,
            other => {
                return Err(Invalid::new(
                    &path.key("compat").index(i),
                    format!("unknown compat {other:?} (expected \"traefik\")"),
                ))
            }
        }
    }
    let linger = duration(raw.linger, &path.key("linger"))?.unwrap_or(defaults.linger);
    let resync = positive_duration(raw.resync, &path.key("resync"), defaults.resync)?;
    Ok(ProviderConfig::Docker(DockerProviderConfig {
        endpoint,
        label_prefix,
        exposed_by_default: raw.exposed_by_default.unwrap_or(false),
        network,
        published,
        host_ip,
        default_host,
        traefik,
        linger,
        resync,
    }))
}

/// `[server]`, and the key path of each listen address.
fn server(raw: RawServer, path: &KeyPath, base_dir: &Path) -> Result<(ServerConfig, Vec<(SocketAddr, KeyPath)>)> {
    let defaults = ServerConfig::default();
    let mut listeners = Vec::new();
    match raw.listen {
        None => listeners.extend(defaults.listen.iter().map(|addr| (*addr, path.key("listen")))),
        Some(OneOrMany { values, single }) => {
            if values.is_empty() {
                return Err(Invalid::new(
                    &path.key("listen"),
                    "no listen address (give at least one)",
                ));
            }
            for (i, text) in values.iter().enumerate() {
                let at = if single {
                    path.key("listen")
                } else {
                    path.key("listen").index(i)
                };
                let addr = listen_addr(text, &at)?;
                listeners.push((addr, at));
            }
        }
    }
    let listen: Vec<SocketAddr> = listeners.iter().map(|(addr, _)| *addr).collect();
    let mut tls_listen = Vec::new();
    if let Some(OneOrMany { values, single }) = raw.tls_listen {
        for (i, text) in values.iter().enumerate() {
            let at = if single {
                path.key("tls_listen")
            } else {
                path.key("tls_listen").index(i)
            };
            let addr = listen_addr(text, &at)?;
            tls_listen.push(addr);
            listeners.push((addr, at));
        }
    }
    let tls = raw
        .tls
        .map(|tls| tls_config(tls, &path.key("tls"), base_dir))
        .transpose()?;
    let hsts = match raw.hsts {
        None | Some(RawHsts::On(false)) => None,
        Some(RawHsts::On(true)) => Some(DEFAULT_HSTS.to_string()),
        Some(RawHsts::Value(v)) => Some(hsts(&v).map_err(|msg| Invalid::new(&path.key("hsts"), msg))?),
    };
    let max_header_bytes = int_in(
        raw.max_header_bytes,
        &path.key("max_header_bytes"),
        1024,
        i64::from(u32::MAX),
    )?
    .map_or(defaults.max_header_bytes, |n| n as usize);
    let max_body_bytes = int_in(raw.max_body_bytes, &path.key("max_body_bytes"), 0, i64::MAX)?.map(|n| n as u64);
    let header_read_timeout = positive_duration(
        raw.header_read_timeout,
        &path.key("header_read_timeout"),
        defaults.header_read_timeout,
    )?;
    let body_read_timeout = positive_duration(
        raw.body_read_timeout,
        &path.key("body_read_timeout"),
        defaults.body_read_timeout,
    )?;
    let send_timeout = positive_duration(raw.send_timeout, &path.key("send_timeout"), defaults.send_timeout)?;
    let idle_timeout = positive_duration(raw.idle_timeout, &path.key("idle_timeout"), defaults.idle_timeout)?;
    let max_connections = match int_in(
        raw.max_connections,
        &path.key("max_connections"),
        0,
        i64::from(MAX_CONNECTIONS),
    )? {
        Some(0) => {
            return Err(Invalid::new(
                &path.key("max_connections"),
                "max_connections must be at least 1 (leave it out for a limit from the file descriptor limit)",
            ))
        }
        other => other.map(|n| n as u32),
    };
    let forwarded = match raw.forwarded.as_deref() {
        None | Some("append") => Forwarded::Append,
        Some("replace") => Forwarded::Replace,
        Some(other) => {
            return Err(Invalid::new(
                &path.key("forwarded"),
                format!("unknown forwarded mode {other:?} (expected \"append\" or \"replace\")"),
            ))
        }
    };
    let shutdown_grace = duration(raw.shutdown_grace, &path.key("shutdown_grace"))?.unwrap_or(defaults.shutdown_grace);
    let config = ServerConfig {
        listen,
        tls_listen,
        redirect_https: raw.redirect_https.unwrap_or(false),
        hsts,
        tls,
        max_header_bytes,
        max_body_bytes,
        header_read_timeout,
        body_read_timeout,
        send_timeout,
        idle_timeout,
        max_connections,
        forwarded,
        shutdown_grace,
    };
    Ok((config, listeners))
}

/// `hsts = true`: two years, as the HSTS preload list asks (hstspreload.org).
pub(crate) const DEFAULT_HSTS: &str = "max-age=63072000";

/// A `Strict-Transport-Security` value (RFC 6797 6.1): `max-age=N` and optional
/// `includeSubDomains` and `preload`, separated by `;`.
fn hsts(value: &str) -> std::result::Result<String, String> {
    let expected = "expected \"max-age=SECONDS\", optionally with \"; includeSubDomains\" and \"; preload\"";
    let mut max_age = false;
    for part in value.split(';').map(str::trim) {
        let lower = part.to_ascii_lowercase();
        if let Some(n) = lower.strip_prefix("max-age=") {
            if max_age || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.len() > 10 {
                return Err(format!("invalid hsts {value:?}: bad max-age ({expected})"));
            }
            max_age = true;
        } else if lower != "includesubdomains" && lower != "preload" {
            return Err(format!(
                "invalid hsts {value:?}: unknown directive {part:?} ({expected})"
            ));
        }
    }
    if !max_age {
        return Err(format!("invalid hsts {value:?}: no max-age ({expected})"));
    }
    Ok(value.trim().to_string())
}

/// `[server.tls]`.
fn tls_config(raw: RawTls, path: &KeyPath, base_dir: &Path) -> Result<TlsConfig> {
    let default = cert_key(raw.cert, raw.key, path, base_dir)?;
    let mut sni_certs: Vec<SniCert> = Vec::with_capacity(raw.certs.len());
    let mut claimed: HashMap<HostMatch, usize> = HashMap::new();
    for (i, entry) in raw.certs.into_iter().enumerate() {
        let at = path.key("certs").index(i);
        let Some(cert_key) = cert_key(entry.cert, entry.key, &at, base_dir)? else {
            return Err(Invalid::new(&at, "missing key `cert` (and `key`)"));
        };
        let names = entry.sni.unwrap_or_default();
        if names.is_empty() {
            return Err(Invalid::new(
                &at.key("sni"),
                "list at least one server name this certificate is for, as in sni = [\"example.com\"]",
            ));
        }
        let mut sni = Vec::with_capacity(names.len());
        for (j, name) in names.iter().enumerate() {
            let name_at = at.key("sni").index(j);
            let rule = host_match(name).map_err(|msg| Invalid::new(&name_at, msg))?;
            if let Some(k) = claimed.get(&rule) {
                return Err(Invalid::new(
                    &name_at,
                    format!(
                        "server name {name:?} is already claimed by {}",
                        path.key("certs").index(*k)
                    ),
                ));
            }
            claimed.insert(rule.clone(), i);
            sni.push(rule);
        }
        sni_certs.push(SniCert { cert_key, sni });
    }
    let dir = raw.dir.map(|d| file_path(&d, &path.key("dir"), base_dir)).transpose()?;
    let env = match raw.env {
        None => None,
        Some(var) => {
            if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(Invalid::new(
                    &path.key("env"),
                    format!("invalid variable name {var:?} (letters, digits and `_`, as in \"SSL_CERT\")"),
                ));
            }
            if default.is_some() {
                return Err(Invalid::new(
                    &path.key("env"),
                    "set either `cert`/`key` or `env` for the default certificate, not both",
                ));
            }
            Some(var)
        }
    };
    if default.is_none() && sni_certs.is_empty() && dir.is_none() && env.is_none() {
        return Err(Invalid::new(
            path,
            "no certificate: set `cert` and `key`, `dir`, `env`, or add [[server.tls.certs]] entries",
        ));
    }
    Ok(TlsConfig {
        default,
        sni_certs,
        dir,
        env,
    })
}

/// A `cert`/`key` pair in the table at `path`: both or neither.
fn cert_key(cert: Option<String>, key: Option<String>, path: &KeyPath, base_dir: &Path) -> Result<Option<CertKey>> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(Invalid::new(
            &path.key("cert"),
            "`cert` needs `key`, the private key file",
        )),
        (None, Some(_)) => Err(Invalid::new(
            &path.key("key"),
            "`key` needs `cert`, the certificate file",
        )),
        (Some(cert), Some(key)) => Ok(Some(CertKey {
            cert: file_path(&cert, &path.key("cert"), base_dir)?,
            key: file_path(&key, &path.key("key"), base_dir)?,
        })),
    }
}

/// `[admin]`.
fn admin(raw: RawAdmin, path: &KeyPath) -> Result<AdminConfig> {
    let defaults = AdminConfig::default();
    let listen = match &raw.listen {
        Some(text) => listen_addr(text, &path.key("listen"))?,
        None => defaults.listen,
    };
    if let Some(token) = &raw.token {
        // Never the value in a message: it is a secret.
        if token.trim().is_empty() {
            return Err(Invalid::new(&path.key("token"), "empty token (or only whitespace)"));
        }
        if token.trim() != token || token.chars().any(char::is_control) {
            return Err(Invalid::new(
                &path.key("token"),
                "the token starts or ends with whitespace, or holds a control character: no request could send it",
            ));
        }
    }
    let basic = match (raw.user, raw.password) {
        (None, None) => None,
        (Some(_), None) => return Err(Invalid::new(&path.key("user"), "`user` needs `password`")),
        (None, Some(_)) => return Err(Invalid::new(&path.key("password"), "`password` needs `user`")),
        (Some(user), Some(password)) => {
            if user.is_empty() || user.contains(':') {
                return Err(Invalid::new(
                    &path.key("user"),
                    "user must be non-empty and without `:`",
                ));
            }
            if password.trim().is_empty() {
                return Err(Invalid::new(
                    &path.key("password"),
                    "empty password (or only whitespace)",
                ));
            }
            Some(BasicAuth { user, password })
        }
    };
    if !listen.ip().is_loopback() && raw.token.is_none() && basic.is_none() {
        return Err(Invalid::new(
            &path.key("listen"),
            format!(
                "admin address {listen} is reachable from other hosts: set `token`, or `user` and `password`, \
                 or listen on a loopback address"
            ),
        ));
    }
    Ok(AdminConfig {
        listen,
        token: raw.token,
        basic,
    })
}

/// One `[[services]]` entry.
fn service(raw: RawService, path: &KeyPath, base_dir: &Path, warnings: &mut Vec<Invalid>) -> Result<ServiceConfig> {
    let name = required(raw.name, path, "name")?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(Invalid::new(
            &path.key("name"),
            format!("invalid service name {name:?} (use letters, digits, `-`, `_` and `.`)"),
        ));
    }

    let balance = match raw.balance {
        None => Balance::RoundRobin,
        Some(text) => Balance::from_name(&text).ok_or_else(|| {
            let names: Vec<_> = Balance::ALL.iter().map(|b| b.as_str()).collect();
            Invalid::new(
                &path.key("balance"),
                format!("unknown policy {text:?} (expected one of {})", names.join(", ")),
            )
        })?,
    };
    let hash_key = match (raw.hash_key, balance) {
        (None, Balance::ConsistentHash) => Some(HashKey::ClientIp),
        (None, _) => None,
        (Some(text), Balance::ConsistentHash) => {
            Some(hash_key(&text).map_err(|msg| Invalid::new(&path.key("hash_key"), msg))?)
        }
        (Some(text), other) => {
            // A warning, not an error: a policy switched away from consistent_hash may keep
            // its key for when it is switched back. The form is still checked.
            hash_key(&text).map_err(|msg| Invalid::new(&path.key("hash_key"), msg))?;
            warnings.push(Invalid::new(
                &path.key("hash_key"),
                format!(
                    "ignored: hash_key applies only to balance = \"consistent_hash\" (this service uses \"{other}\")"
                ),
            ));
            None
        }
    };

    let given: Vec<&str> = [
        ("endpoints", raw.endpoints.is_some()),
        ("endpoints_file", raw.endpoints_file.is_some()),
        ("docker", raw.docker.is_some()),
        ("consul", raw.consul.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(key, _)| *key)
    .collect();
    if given.len() > 1 {
        return Err(Invalid::new(
            &path.key(given[1]),
            "set one of `endpoints`, `endpoints_file`, `docker` and `consul`, not several",
        ));
    }
    let mut https_endpoints = false;
    let endpoints = if let Some(file) = raw.endpoints_file {
        EndpointSource::File(file_path(&file, &path.key("endpoints_file"), base_dir)?)
    } else if let Some(list) = raw.endpoints {
        let (list, https) = endpoints(list, &path.key("endpoints"))?;
        https_endpoints = https;
        EndpointSource::Static(list)
    } else if let Some(docker) = raw.docker {
        let service = required(docker.service, &path.key("docker"), "service")?;
        if service.is_empty() || !service.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(Invalid::new(
                &path.key("docker").key("service"),
                format!("invalid service name {service:?} (use letters, digits, `-`, `_` and `.`)"),
            ));
        }
        EndpointSource::Docker { service }
    } else if let Some(consul) = raw.consul {
        EndpointSource::Consul(consul_source(consul, &path.key("consul"), base_dir, true)?)
    } else {
        return Err(Invalid::new(
            path,
            format!("service {name:?} has no endpoints: set `endpoints`, `endpoints_file`, `docker` or `consul`"),
        ));
    };

    let health = raw.health.map(|h| health(h, &path.key("health"))).transpose()?;
    let connect_timeout = positive_duration(
        raw.connect_timeout,
        &path.key("connect_timeout"),
        Duration::from_secs(3),
    )?;
    let response_timeout = match duration(raw.response_timeout, &path.key("response_timeout"))? {
        None => Some(Duration::from_secs(30)),
        Some(Duration::ZERO) => None,
        Some(d) => Some(d),
    };
    let retries = int_in(raw.retries, &path.key("retries"), 0, MAX_RETRIES)?.map_or(2, |n| n as u32);
    let slow_start = duration(raw.slow_start, &path.key("slow_start"))?.filter(|d| !d.is_zero());
    let outlier = match raw.outlier {
        None => Some(OutlierConfig::default()),
        Some(raw) => outlier(raw, &path.key("outlier"))?,
    };
    let max_in_flight = match int_in(raw.max_in_flight, &path.key("max_in_flight"), 0, i64::from(u32::MAX))? {
        Some(0) => {
            return Err(Invalid::new(
                &path.key("max_in_flight"),
                "max_in_flight must be at least 1 (leave it out for no limit)",
            ))
        }
        other => other.map(|n| n as u32),
    };
    let panic_threshold = int_in(raw.panic_threshold, &path.key("panic_threshold"), 0, 100)?.map_or(50, |n| n as u8);
    let dns_refresh = positive_duration(raw.dns_refresh, &path.key("dns_refresh"), Duration::from_secs(5))?;
    let tls = match raw.tls {
        Some(false) if https_endpoints => {
            return Err(Invalid::new(
                &path.key("tls"),
                "tls = false, but the endpoints are https:// addresses",
            ))
        }
        Some(false) => None,
        Some(true) => Some(()),
        None if https_endpoints => Some(()),
        None => None,
    };
    let tls = match tls {
        None => {
            for (key, set) in [
                ("tls_ca", raw.tls_ca.is_some()),
                ("tls_server_name", raw.tls_server_name.is_some()),
            ] {
                if set {
                    return Err(Invalid::new(
                        &path.key(key),
                        format!("`{key}` applies to endpoints over TLS: set tls = true too"),
                    ));
                }
            }
            None
        }
        Some(()) => {
            let ca_file = raw
                .tls_ca
                .map(|f| file_path(&f, &path.key("tls_ca"), base_dir))
                .transpose()?;
            let server_name = match raw.tls_server_name {
                Some(n) => match host_match(&n) {
                    Ok(HostMatch::Exact(n)) => Some(n),
                    _ => {
                        return Err(Invalid::new(
                            &path.key("tls_server_name"),
                            format!("invalid server name {n:?} (expected a DNS name, as in \"api.internal\")"),
                        ))
                    }
                },
                None => None,
            };
            Some(BackendTls { ca_file, server_name })
        }
    };

    Ok(ServiceConfig {
        name,
        origin: Origin::File,
        balance,
        hash_key,
        endpoints,
        health,
        connect_timeout,
        response_timeout,
        retries,
        slow_start,
        outlier,
        max_in_flight,
        panic_threshold,
        dns_refresh,
        tls,
    })
}

/// `endpoints = [...]`, and whether they are `https://` addresses (all or none; the
/// scheme is taken off).
fn endpoints(list: Vec<RawEndpoint>, path: &KeyPath) -> Result<(Vec<EndpointConfig>, bool)> {
    let mut https: Option<bool> = None;
    if list.is_empty() {
        return Err(Invalid::new(
            path,
            "no endpoints (list at least one, or use endpoints_file)",
        ));
    }
    let mut out: Vec<EndpointConfig> = Vec::with_capacity(list.len());
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(list.len());
    for (i, raw) in list.into_iter().enumerate() {
        let at = path.index(i);
        let addr_at = if raw.bare { at.clone() } else { at.key("addr") };
        let written = required(raw.addr, &at, "addr")?;
        let (addr, is_https) = match written.split_once("://") {
            Some(("https", rest)) => (rest.trim_end_matches('/').to_string(), true),
            Some(("http", rest)) => (rest.trim_end_matches('/').to_string(), false),
            Some((scheme, _)) => {
                return Err(Invalid::new(
                    &addr_at,
                    format!("unknown scheme {scheme:?} in {written:?} (expected http:// or https://, or none)"),
                ))
            }
            None => (written.clone(), false),
        };
        match https {
            Some(h) if h != is_https => {
                return Err(Invalid::new(
                    &addr_at,
                    "mixed https:// and plain endpoints: a service's endpoints all speak TLS or none does",
                ))
            }
            _ => https = Some(is_https),
        }
        let literal = check_endpoint_addr(&addr).map_err(|msg| Invalid::new(&addr_at, msg))?;
        let weight = int_in(raw.weight, &at.key("weight"), 0, MAX_WEIGHT)?.map_or(1, |n| n as u32);
        // IP literals compare as addresses (`[::1]:80` and `[0::1]:80` are one endpoint),
        // names without regard to case, as discovery does.
        let key = match literal {
            Some(sa) => sa.to_string(),
            None => addr.to_ascii_lowercase(),
        };
        if let Some(first) = seen.get(&key) {
            return Err(Invalid::new(
                &addr_at,
                format!("duplicate endpoint {addr:?} (also {})", path.index(*first)),
            ));
        }
        seen.insert(key, i);
        out.push(EndpointConfig { addr, weight });
    }
    Ok((out, https.unwrap_or(false)))
}

/// `health = {...}`.
fn health(raw: RawHealth, path: &KeyPath) -> Result<HealthConfig> {
    let probe = match (raw.path, raw.tcp.unwrap_or(false)) {
        (Some(_), true) => {
            return Err(Invalid::new(
                &path.key("tcp"),
                "set either `path` (HTTP probe) or `tcp = true` (TCP probe), not both",
            ))
        }
        (None, false) => {
            return Err(Invalid::new(
                path,
                "no probe: set `path` for an HTTP probe or `tcp = true` for a TCP probe",
            ))
        }
        (None, true) => Probe::Tcp,
        (Some(probe_path), false) => {
            if !probe_path.starts_with('/') {
                return Err(Invalid::new(
                    &path.key("path"),
                    format!("probe path {probe_path:?} must start with `/`"),
                ));
            }
            Probe::Http { path: probe_path }
        }
    };
    let interval = positive_duration(raw.interval, &path.key("interval"), Duration::from_secs(5))?;
    let timeout = positive_duration(raw.timeout, &path.key("timeout"), Duration::from_secs(1))?;
    let rise = at_least_one(raw.rise, &path.key("rise"), "rise", 2)?;
    let fall = at_least_one(raw.fall, &path.key("fall"), "fall", 3)?;
    Ok(HealthConfig {
        probe,
        interval,
        timeout,
        rise,
        fall,
    })
}

/// `outlier = {...}`; `None` when `consecutive_failures = 0` turns it off.
fn outlier(raw: RawOutlier, path: &KeyPath) -> Result<Option<OutlierConfig>> {
    let defaults = OutlierConfig::default();
    let consecutive_failures = int_in(
        raw.consecutive_failures,
        &path.key("consecutive_failures"),
        0,
        i64::from(u32::MAX),
    )?
    .map_or(defaults.consecutive_failures, |n| n as u32);
    let base_ejection = positive_duration(raw.base_ejection, &path.key("base_ejection"), defaults.base_ejection)?;
    let max_ejection = duration(raw.max_ejection, &path.key("max_ejection"))?.unwrap_or(defaults.max_ejection);
    if max_ejection < base_ejection {
        return Err(Invalid::new(
            &path.key("max_ejection"),
            format!("max_ejection ({max_ejection:?}) is shorter than base_ejection ({base_ejection:?})"),
        ));
    }
    let max_ejection_percent = int_in(raw.max_ejection_percent, &path.key("max_ejection_percent"), 0, 100)?
        .map_or(defaults.max_ejection_percent, |n| n as u8);
    Ok((consecutive_failures > 0).then_some(OutlierConfig {
        consecutive_failures,
        base_ejection,
        max_ejection,
        max_ejection_percent,
    }))
}

/// One `[[routes]]` entry.
fn route(raw: RawRoute, path: &KeyPath, defined: &Defined<'_>) -> Result<RouteConfig> {
    let service = service_ref(raw.service, path, defined)?;
    let host = raw
        .host
        .map(|h| host_match(&h).map_err(|msg| Invalid::new(&path.key("host"), msg)))
        .transpose()?;
    if let Some(prefix) = &raw.path_prefix {
        if !prefix.starts_with('/') {
            return Err(Invalid::new(
                &path.key("path_prefix"),
                format!("path_prefix {prefix:?} must start with `/`"),
            ));
        }
    }
    let upgrades = match raw.upgrades {
        None => RouteConfig::default_upgrades(),
        Some(list) => {
            let mut out: Vec<String> = Vec::with_capacity(list.len());
            for (i, name) in list.iter().enumerate() {
                let at = path.key("upgrades").index(i);
                let proto = upgrade_protocol(name).map_err(|msg| Invalid::new(&at, msg))?;
                if !out.contains(&proto) {
                    out.push(proto);
                }
            }
            out
        }
    };
    Ok(RouteConfig {
        host,
        path_prefix: raw.path_prefix,
        service,
        upgrades,
        acme: raw.acme.unwrap_or(false),
        redirect_https: raw.redirect_https,
    })
}

/// An `Upgrade` protocol a route may pass: a token (RFC 9110 §16.7), lowercased, not `h2c`.
pub(crate) fn upgrade_protocol(name: &str) -> std::result::Result<String, String> {
    let lower = name.to_ascii_lowercase();
    if lower.is_empty()
        || !lower
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
    {
        return Err(format!(
            "invalid upgrade protocol {name:?} (expected a protocol name, as in \"websocket\")"
        ));
    }
    if lower == "h2c" {
        return Err("h2c upgrades are never passed: they would tunnel HTTP/2 past routing".to_string());
    }
    Ok(lower)
}

/// One `[[tcp]]` entry.
fn tcp_entry(raw: RawTcp, path: &KeyPath, defined: &Defined<'_>) -> Result<TcpConfig> {
    let listen = required(raw.listen, path, "listen")?;
    let listen = listen_addr(&listen, &path.key("listen"))?;
    let service = service_ref(raw.service, path, defined)?;
    Ok(TcpConfig {
        listen,
        service,
        tls: raw.tls.unwrap_or(false),
    })
}

/// The `service` key of the table at `path`: required, and naming a defined service.
fn service_ref(name: Option<String>, path: &KeyPath, defined: &Defined<'_>) -> Result<String> {
    let name = required(name, path, "service")?;
    if defined.names.contains_key(&name) {
        return Ok(name);
    }
    let all: Vec<_> = defined.services.iter().take(20).map(|s| s.name.as_str()).collect();
    let listed = if all.is_empty() {
        "no services are defined".to_owned()
    } else if defined.services.len() > all.len() {
        format!("defined: {}, ...", all.join(", "))
    } else {
        format!("defined: {}", all.join(", "))
    };
    Err(Invalid::new(
        &path.key("service"),
        format!("unknown service {name:?} ({listed})"),
    ))
}

// --- values ---

fn required<T>(value: Option<T>, table: &KeyPath, key: &str) -> Result<T> {
    value.ok_or_else(|| Invalid::new(table, format!("missing key `{key}`")))
}

/// An integer within `min..=max`, if given.
fn int_in(value: Option<i64>, path: &KeyPath, min: i64, max: i64) -> Result<Option<i64>> {
    match value {
        Some(n) if !(min..=max).contains(&n) => Err(Invalid::new(
            path,
            format!("{} {n} is out of range ({min}..={max})", last_key(path)),
        )),
        other => Ok(other),
    }
}

/// A count that must be at least 1 (`rise`, `fall`).
fn at_least_one(value: Option<i64>, path: &KeyPath, name: &str, default: u32) -> Result<u32> {
    match value {
        None => Ok(default),
        Some(n) if n < 1 => Err(Invalid::new(path, format!("{name} must be at least 1, not {n}"))),
        Some(n) => u32::try_from(n).map_err(|_| Invalid::new(path, format!("{name} {n} is too large"))),
    }
}

fn last_key(path: &KeyPath) -> String {
    let text = path.to_string();
    text.rsplit('.').next().unwrap_or_default().to_owned()
}

fn duration(value: Option<RawDuration>, path: &KeyPath) -> Result<Option<Duration>> {
    value
        .map(|RawDuration(text)| parse_duration(&text).map_err(|msg| Invalid::new(path, msg)))
        .transpose()
}

/// A duration that must not be zero, `default` when not given.
fn positive_duration(value: Option<RawDuration>, path: &KeyPath, default: Duration) -> Result<Duration> {
    match duration(value, path)? {
        None => Ok(default),
        Some(Duration::ZERO) => Err(Invalid::new(
            path,
            format!("{} must be longer than zero", last_key(path)),
        )),
        Some(d) => Ok(d),
    }
}

fn listen_addr(text: &str, path: &KeyPath) -> Result<SocketAddr> {
    text.parse().map_err(|_| {
        Invalid::new(
            path,
            format!("invalid listen address {text:?} (expected IP:PORT, as in \"127.0.0.1:8080\" or \"[::]:8080\")"),
        )
    })
}

fn file_path(text: &str, path: &KeyPath, base_dir: &Path) -> Result<PathBuf> {
    if text.is_empty() {
        return Err(Invalid::new(path, "empty file path"));
    }
    Ok(base_dir.join(text))
}

/// `host:port` as discovery reads it (lb-discovery-static's [`EndpointSpec`], the one
/// grammar for `check` and the running proxy): an IPv4 literal, a bracketed IPv6 literal
/// or a DNS name, and a port from 1 to 65535. The socket address, for a literal.
fn check_endpoint_addr(addr: &str) -> std::result::Result<Option<SocketAddr>, String> {
    let expected = "expected HOST:PORT, as in \"10.0.0.1:80\", \"[::1]:80\" or \"web1:80\"";
    let spec = EndpointSpec::new(addr);
    match spec.validate() {
        Ok(()) => Ok(spec.literal_addr()),
        Err(lb_discovery_static::Error::InvalidSpec { reason, .. }) => {
            Err(format!("invalid endpoint address {addr:?}: {reason} ({expected})"))
        }
        Err(other) => Err(format!("invalid endpoint address {addr:?}: {other} ({expected})")),
    }
}

/// Dot-separated non-empty labels of letters, digits, `-` and `_`.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
}

/// `example.com` or `*.example.com`.
pub(crate) fn host_match(text: &str) -> std::result::Result<HostMatch, String> {
    let lower = text.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    let (wildcard, bare) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    if bare.contains(':') {
        return Err(format!("host {text:?} must not include a port"));
    }
    if !is_dns_name(bare) {
        return Err(format!(
            "invalid host {text:?} (expected a name, as in \"example.com\", or a wildcard, as in \"*.example.com\")"
        ));
    }
    Ok(if wildcard {
        HostMatch::Suffix(format!(".{bare}"))
    } else {
        HostMatch::Exact(bare.to_owned())
    })
}

/// `client_ip`, `header:NAME`, `cookie:NAME` or `path`.
pub(crate) fn hash_key(text: &str) -> std::result::Result<HashKey, String> {
    let is_token = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
    };
    let invalid = || format!("invalid hash_key {text:?} (expected client_ip, header:NAME, cookie:NAME or path)");
    match text {
        "client_ip" => Ok(HashKey::ClientIp),
        "path" => Ok(HashKey::Path),
        _ => {
            if let Some(name) = text.strip_prefix("header:") {
                is_token(name)
                    .then(|| HashKey::Header(name.to_ascii_lowercase()))
                    .ok_or_else(invalid)
            } else if let Some(name) = text.strip_prefix("cookie:") {
                is_token(name)
                    .then(|| HashKey::Cookie(name.to_owned()))
                    .ok_or_else(invalid)
            } else {
                Err(invalid())
            }
        }
    }
}
