//! Providers' services and routes, and how they merge with the file's.
//!
//! A provider publishes services and routes, never endpoints: a service's endpoints reach
//! its balancer through its own discovery stream. So a new container of a known service
//! changes nothing here, and the balancer keeps its state.
//!
//! Merge rules: the file wins a service name (a warning, unless the file's service reads
//! that very Docker or Consul service); between providers, Docker's services come first;
//! a route (host and path prefix) belongs to its first claimant, the file's routes first,
//! then providers' services (Docker's, then Consul's) in name order.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use lb_core::discover::catalog::{Catalog, CatalogService};

use crate::config::build::{acme_route, hash_key, host_match};
use crate::config::{
    Balance, Config, ConsulProviderConfig, DockerProviderConfig, EndpointSource, HealthConfig, HostMatch, Origin,
    Probe, RouteConfig, ServiceConfig,
};

/// A service a provider asks for, with its routes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Provided {
    pub(crate) service: ServiceConfig,
    pub(crate) routes: Vec<RouteConfig>,
}

/// The services and routes the Docker catalog asks for. A service whose hints do not make
/// a valid service is skipped with a warning (the adapter checks each label, so this is
/// rare: a default host template that yields an invalid name, say).
pub(crate) fn from_docker(
    catalog: &Catalog,
    provider: &DockerProviderConfig,
    warn: &mut dyn FnMut(String),
) -> BTreeMap<String, Provided> {
    from_catalog(catalog, Origin::Docker, provider.default_host.as_deref(), warn)
}

/// The services and routes the Consul catalog (tags) asks for.
pub(crate) fn from_consul(
    catalog: &Catalog,
    provider: &ConsulProviderConfig,
    warn: &mut dyn FnMut(String),
) -> BTreeMap<String, Provided> {
    from_catalog(catalog, Origin::Consul, provider.default_host.as_deref(), warn)
}

fn from_catalog(
    catalog: &Catalog,
    origin: Origin,
    default_host: Option<&str>,
    warn: &mut dyn FnMut(String),
) -> BTreeMap<String, Provided> {
    let mut out = BTreeMap::new();
    for (name, svc) in &catalog.services {
        match provided_service(name, svc, origin, default_host) {
            Ok(p) => {
                out.insert(name.clone(), p);
            }
            Err(msg) => warn(format!("{} service {name:?} skipped: {msg}", origin.as_str())),
        }
    }
    out
}

fn provided_service(
    name: &str,
    svc: &CatalogService,
    origin: Origin,
    default_host: Option<&str>,
) -> Result<Provided, String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err("the name is not a valid service name (letters, digits, `-`, `_`, `.`)".to_string());
    }
    let defaults = crate::config::parse(
        &format!("[[services]]\nname = {name:?}\ndocker = {{ service = {name:?} }}\n"),
        std::path::Path::new("<provider>"),
    )
    .map_err(|e| e.to_string())?;
    let mut service = defaults.services.into_iter().next().ok_or("no service")?;
    service.origin = origin;
    if origin == Origin::Consul {
        service.endpoints = EndpointSource::ConsulCatalog {
            service: name.to_string(),
        };
    }
    let hints = &svc.hints;
    if let Some(b) = &hints.balance {
        service.balance = Balance::from_name(b).ok_or_else(|| format!("unknown policy {b:?}"))?;
    }
    if service.balance == Balance::ConsistentHash {
        service.hash_key = Some(match &hints.hash_key {
            Some(k) => hash_key(k)?,
            None => crate::config::HashKey::ClientIp,
        });
    }
    if hints.health_path.is_some() || hints.health_interval.is_some() {
        if let Some(every) = hints.health_interval {
            // As a file's durations: nothing a timer could overflow on.
            if every.is_zero() || every > crate::config::MAX_DURATION {
                return Err(format!(
                    "health interval {every:?} is out of range (above 0, at most 365 days)"
                ));
            }
        }
        let path = hints.health_path.clone().unwrap_or_else(|| "/".to_string());
        service.health = Some(HealthConfig {
            probe: Probe::Http { path },
            interval: hints.health_interval.unwrap_or(std::time::Duration::from_secs(5)),
            timeout: std::time::Duration::from_secs(1),
            rise: 2,
            fall: 3,
        });
    }
    let mut hosts: Vec<String> = hints.hosts.clone();
    if hosts.is_empty() {
        if let Some(template) = default_host {
            hosts.push(template.replace("{service}", name));
        }
    }
    let mut routes = Vec::new();
    for h in &hosts {
        routes.push(RouteConfig {
            host: Some(host_match(h)?),
            path_prefix: hints.path_prefix.clone(),
            service: name.to_string(),
            upgrades: RouteConfig::default_upgrades(),
            acme: hints.tls_acme,
            redirect_https: hints.redirect_https,
        });
    }
    if hosts.is_empty() && hints.path_prefix.is_some() {
        routes.push(RouteConfig {
            host: None,
            path_prefix: hints.path_prefix.clone(),
            service: name.to_string(),
            upgrades: RouteConfig::default_upgrades(),
            acme: false,
            redirect_https: hints.redirect_https,
        });
    }
    Ok(Provided { service, routes })
}

/// The file's config with the providers' services and routes added (linear in their
/// number: names and routes are looked up in hash maps).
///
/// `previous` is the config running now: a route a provider service owns there stays its
/// own while it still claims it, so a newly started service cannot take over a route by
/// sorting first. Among providers, Docker's services come before Consul's.
pub(crate) fn merge<'a>(
    file: &Config,
    provided: impl IntoIterator<Item = &'a Provided>,
    previous: Option<&Config>,
    warn: &mut dyn FnMut(String),
) -> Config {
    let mut merged = file.clone();
    let own: HashMap<&str, &ServiceConfig> = file.services.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut provided: Vec<&Provided> = provided.into_iter().collect();
    let rank = |o: Origin| match o {
        Origin::File => 0,
        Origin::Docker => 1,
        Origin::Consul => 2,
    };
    provided.sort_by(|a, b| (rank(a.service.origin), &a.service.name).cmp(&(rank(b.service.origin), &b.service.name)));
    let mut accepted: Vec<&Provided> = Vec::with_capacity(provided.len());
    for p in provided {
        let name = &p.service.name;
        let kind = p.service.origin.as_str();
        if let Some(own) = own.get(name.as_str()) {
            let reads_it = match (&own.endpoints, p.service.origin) {
                (EndpointSource::Docker { service }, Origin::Docker) => service == name,
                (EndpointSource::Consul(src), Origin::Consul) => &src.service == name,
                _ => false,
            };
            if !reads_it {
                warn(format!(
                    "{kind} service {name:?} ignored: the config file defines a service of that name"
                ));
            }
            continue;
        }
        merged.services.push(p.service.clone());
        accepted.push(p);
    }
    type Key = (Option<HostMatch>, Option<String>);
    let mut owners: HashMap<Key, String> = file
        .routes
        .iter()
        .map(|r| ((r.host.clone(), r.path_prefix.clone()), r.service.clone()))
        .collect();
    let held: HashMap<Key, &str> = previous
        .map(|c| {
            c.routes
                .iter()
                .map(|r| ((r.host.clone(), r.path_prefix.clone()), r.service.as_str()))
                .collect()
        })
        .unwrap_or_default();
    // First the routes their services already held, then the rest in order.
    for first in [true, false] {
        for p in &accepted {
            let name = &p.service.name;
            for r in &p.routes {
                let key = (r.host.clone(), r.path_prefix.clone());
                if (held.get(&key) == Some(&name.as_str())) != first {
                    continue;
                }
                match owners.entry(key) {
                    Entry::Occupied(owner) => {
                        if owner.get() != name {
                            warn(format!(
                                "route {} of {} service {name:?} ignored: it belongs to service {:?}",
                                route_text(r),
                                p.service.origin.as_str(),
                                owner.get()
                            ));
                        }
                    }
                    Entry::Vacant(v) => {
                        v.insert(name.clone());
                        let mut r = r.clone();
                        if r.acme {
                            if let Err(msg) = acme_route(&r, file.acme.as_ref()) {
                                warn(format!(
                                    "route {} of {} service {name:?}: no certificate requested: {msg}",
                                    route_text(&r),
                                    p.service.origin.as_str()
                                ));
                                r.acme = false;
                            }
                        }
                        merged.routes.push(r);
                    }
                }
            }
        }
    }
    merged
}

/// A route as a person reads it: `host/prefix`, `*` for any host.
pub(crate) fn route_text(r: &RouteConfig) -> String {
    let host = r.host.as_ref().map_or_else(|| "*".to_string(), |h| h.to_string());
    format!("{host}{}", r.path_prefix.as_deref().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::discover::catalog::Hints;
    use std::path::Path;

    fn catalog(entries: &[(&str, Hints)]) -> Catalog {
        Catalog::synced(
            entries
                .iter()
                .map(|(n, h)| {
                    (
                        n.to_string(),
                        CatalogService {
                            endpoints: vec![],
                            hints: h.clone(),
                        },
                    )
                })
                .collect(),
        )
    }

    fn file(text: &str) -> Config {
        crate::config::parse(text, Path::new("lb.toml")).expect("valid")
    }

    #[test]
    fn hints_become_services_and_routes() {
        let provider = DockerProviderConfig {
            default_host: Some("{service}.docker.localhost".into()),
            ..Default::default()
        };
        let hints = Hints {
            hosts: vec!["api.example.com".into(), "*.api.example.com".into()],
            path_prefix: Some("/v1".into()),
            balance: Some("consistent_hash".into()),
            hash_key: Some("header:x-user".into()),
            health_path: Some("/healthz".into()),
            health_interval: Some(std::time::Duration::from_millis(500)),
            tls_acme: false,
            redirect_https: None,
        };
        let mut warnings = Vec::new();
        let got = from_docker(
            &catalog(&[("api", hints), ("web", Hints::default())]),
            &provider,
            &mut |w| warnings.push(w),
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        let api = &got["api"];
        assert_eq!(api.service.origin, Origin::Docker);
        assert_eq!(api.service.balance, Balance::ConsistentHash);
        assert_eq!(
            api.service.hash_key,
            Some(crate::config::HashKey::Header("x-user".into()))
        );
        assert_eq!(api.service.endpoints, EndpointSource::Docker { service: "api".into() });
        let health = api.service.health.as_ref().unwrap();
        assert_eq!(
            health.probe,
            Probe::Http {
                path: "/healthz".into()
            }
        );
        assert_eq!(health.interval, std::time::Duration::from_millis(500));
        let routes: Vec<String> = api.routes.iter().map(route_text).collect();
        assert_eq!(routes, ["api.example.com/v1", "*.api.example.com/v1"]);
        // No host label: the default host.
        let routes: Vec<String> = got["web"].routes.iter().map(route_text).collect();
        assert_eq!(routes, ["web.docker.localhost"]);
        assert_eq!(got["web"].service.balance, Balance::RoundRobin);
        assert!(got["web"].service.health.is_none());
    }

    #[test]
    fn the_file_wins_names_and_the_first_claimant_keeps_a_route() {
        let f = file(
            "[[services]]\nname = \"web\"\nendpoints = [\"127.0.0.1:1\"]\n\
             [[services]]\nname = \"whoami\"\ndocker = { service = \"whoami\" }\n\
             [[routes]]\nhost = \"shop.example.com\"\nservice = \"web\"\n",
        );
        let provider = DockerProviderConfig::default();
        let shop = Hints {
            hosts: vec!["shop.example.com".into()],
            ..Hints::default()
        };
        let other = Hints {
            hosts: vec!["other.example.com".into()],
            ..Hints::default()
        };
        let provided = from_docker(
            &catalog(&[("web", other.clone()), ("whoami", other), ("shop", shop)]),
            &provider,
            &mut |w| panic!("{w}"),
        );
        let mut warnings = Vec::new();
        let merged = merge(&f, provided.values(), None, &mut |w| warnings.push(w));
        let names: Vec<&str> = merged.services.iter().map(|s| s.name.as_str()).collect();
        // `web` is the file's; `whoami` is read by the file's own service: no warning for it.
        assert_eq!(names, ["web", "whoami", "shop"]);
        assert_eq!(merged.services[0].origin, Origin::File);
        assert_eq!(merged.services[2].origin, Origin::Docker);
        assert_eq!(merged.routes.len(), 1, "shop's route is the file's already");
        warnings.sort();
        assert_eq!(
            warnings,
            [
                "docker service \"web\" ignored: the config file defines a service of that name",
                "route shop.example.com of docker service \"shop\" ignored: it belongs to service \"web\"",
            ]
        );
    }

    #[test]
    fn a_label_asking_for_acme_gets_its_hosts_certificates_only_where_acme_is_configured() {
        let hints = Hints {
            hosts: vec!["shop.example.com".into(), "*.shop.example.com".into()],
            tls_acme: true,
            redirect_https: Some(false),
            ..Hints::default()
        };
        let provided = from_docker(
            &catalog(&[("shop", hints)]),
            &DockerProviderConfig::default(),
            &mut |w| panic!("{w}"),
        );
        let with_acme = file(
            "[server]\nlisten = \"127.0.0.1:8080\"\ntls_listen = \"127.0.0.1:8443\"\n[acme]\nemail = \"ops@example.com\"\n",
        );
        let mut warnings = Vec::new();
        let merged = merge(&with_acme, provided.values(), None, &mut |w| warnings.push(w));
        assert_eq!(merged.routes[0].redirect_https, Some(false));
        assert_eq!(
            crate::tls::acme_names(&merged).into_iter().collect::<Vec<_>>(),
            ["shop.example.com"],
            "the exact host gets a certificate"
        );
        assert_eq!(
            warnings,
            [
                "route *.shop.example.com of docker service \"shop\": no certificate requested: acme = true needs an \
              exact host: a wildcard certificate needs the dns-01 challenge, which is not supported"
            ]
        );
        let without = file("[server]\nlisten = [\"127.0.0.1:8080\"]\n");
        let mut warnings = Vec::new();
        let merged = merge(&without, provided.values(), None, &mut |w| warnings.push(w));
        assert!(crate::tls::acme_names(&merged).is_empty());
        assert!(
            warnings[0]
                .ends_with("no certificate requested: acme = true needs an [acme] section (directory, email, storage)"),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_route_stays_with_the_service_that_held_it() {
        let f = file("[server]\nlisten = [\"127.0.0.1:8080\"]\n");
        let hints = Hints {
            hosts: vec!["shop.example.com".into()],
            ..Hints::default()
        };
        let shop_only = from_docker(
            &catalog(&[("shop", hints.clone())]),
            &DockerProviderConfig::default(),
            &mut |w| panic!("{w}"),
        );
        let running = merge(&f, shop_only.values(), None, &mut |w| panic!("{w}"));
        assert_eq!(running.routes[0].service, "shop");
        // A new service, sorting first, claims the same host: the holder keeps it.
        let both = from_docker(
            &catalog(&[("aaa", hints.clone()), ("shop", hints)]),
            &DockerProviderConfig::default(),
            &mut |w| panic!("{w}"),
        );
        let mut warnings = Vec::new();
        let next = merge(&f, both.values(), Some(&running), &mut |w| warnings.push(w));
        assert_eq!(next.routes.len(), 1);
        assert_eq!(next.routes[0].service, "shop", "{warnings:?}");
        assert!(
            warnings[0].contains("of docker service \"aaa\" ignored"),
            "{warnings:?}"
        );
        // With no history, the first by name wins.
        let fresh = merge(&f, both.values(), None, &mut |_| {});
        assert_eq!(fresh.routes[0].service, "aaa");
    }
}
