//! Prometheus metrics: request counters and latency histograms per service and
//! endpoint, endpoint state gauges, config reloads and discovery updates.
//!
//! Request-path metrics live in `prometheus-client` families. Their label sets hold the
//! service name as an interned `Arc<str>` and the endpoint as its `EndpointId` (an `Arc`
//! too), so counting a request clones two pointers and allocates nothing once the series
//! exists.
//!
//! Endpoint and service state (in flight, requests, failures, state, weights, panic) is
//! read from the balancers at scrape time by a [`Collector`], so it costs the request
//! path nothing and always matches the status page.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use lb_core::{BalancerStatus, EndpointId, Health};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::runtime::Runtime;

/// Every state an endpoint can be in, in the order `lb_endpoint_state` lists them.
const STATES: [Health; 5] = [
    Health::Unknown,
    Health::Healthy,
    Health::Unhealthy,
    Health::Ejected,
    Health::Draining,
];

/// A label value, written with the escapes the text format needs (`prometheus-client`
/// writes values as they are, and endpoint ids come from discovery).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Label<T>(T);

/// What a [`Label`] can hold.
trait LabelText {
    fn text(&self) -> &str;
}

impl LabelText for Arc<str> {
    fn text(&self) -> &str {
        self
    }
}

impl LabelText for EndpointId {
    fn text(&self) -> &str {
        self.as_str()
    }
}

impl LabelText for Option<EndpointId> {
    fn text(&self) -> &str {
        self.as_ref().map_or("", EndpointId::as_str)
    }
}

impl<T: LabelText> EncodeLabelValue for Label<T> {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.0.text();
        let mut rest = s;
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            encoder.write_str(&rest[..i])?;
            encoder.write_str(match rest.as_bytes()[i] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[i + 1..];
        }
        encoder.write_str(rest)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: Label<Arc<str>>,
    endpoint: Label<Option<EndpointId>>,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    service: Label<Arc<str>>,
    endpoint: Label<Option<EndpointId>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: Label<Arc<str>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    service: Label<Arc<str>>,
    endpoint: Label<EndpointId>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    service: Label<Arc<str>>,
    endpoint: Label<EndpointId>,
    state: &'static str,
}

/// At most this many entries in the request path's cache of series.
const SERIES_CACHED: usize = 4096;

/// A request's series by identity: the addresses of its service name's and endpoint id's
/// text (held alive by the entry, so never reused while it is there), and its code.
type SeriesKey = (usize, usize, u16);

/// What [`SeriesKey`] finds.
struct Series {
    _service: Arc<str>,
    _endpoint: Option<EndpointId>,
    requests: Counter,
    latency: Histogram,
}

/// Hashes a few machine words by multiply and rotate (the keys are addresses and codes,
/// never text from a client).
#[derive(Default)]
struct WordHasher(u64);

impl std::hash::Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// All of the proxy's metrics.
pub(crate) struct Metrics {
    /// Status codes answered so far (a bit per code), so the series of an endpoint that
    /// discovery removed can be dropped code by code.
    codes_seen: [AtomicU64; 16],
    /// The (service, endpoint) pairs present at the last scrape.
    known: Mutex<HashSet<(Arc<str>, EndpointId)>>,
    /// The services present at the last scrape.
    known_services: Mutex<HashSet<Arc<str>>>,
    registry: Registry,
    /// Service names, so a request's labels clone an `Arc` instead of a `String`.
    services: RwLock<HashSet<Arc<str>>>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    /// The two series a request counts into, found by the identity of its service name,
    /// endpoint id and status code: one lookup that hashes three words, where the
    /// families hash their label text twice. Emptied whenever series are dropped, so
    /// no entry counts into a series the exposition no longer has.
    series: RwLock<HashMap<SeriesKey, Series, BuildHasherDefault<WordHasher>>>,
    retries: Family<ServiceLabels, Counter>,
    discovery_updates: Family<ServiceLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    unrouted: Counter,
    generation: Gauge,
    /// What the endpoint collector reports during one scrape.
    scrape: Arc<Mutex<Scrape>>,
    /// One scrape at a time: the collector's input is set, encoded, then cleared.
    encoding: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

// === impl Metrics ===

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("lb");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            // 250 µs .. ~8 s
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        });
        let retries = Family::<ServiceLabels, Counter>::default();
        let discovery_updates = Family::<ServiceLabels, Counter>::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        let unrouted = Counter::default();
        let generation = Gauge::default();
        let scrape = Arc::new(Mutex::new(Scrape::default()));
        registry.register(
            "requests",
            "HTTP requests answered, by service, endpoint (empty when none answered) and status code",
            requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from request to response head, by service and endpoint",
            Unit::Seconds,
            latency.clone(),
        );
        registry.register("retries", "Requests sent again to another endpoint", retries.clone());
        registry.register(
            "discovery_updates",
            "Discovery updates received, by service",
            discovery_updates.clone(),
        );
        registry.register("config_reloads", "Configuration reloads, by result", reloads.clone());
        registry.register(
            "config_generation",
            "Generation of the running configuration",
            generation.clone(),
        );
        registry.register(
            "unrouted_requests",
            "Requests that matched no route (404)",
            unrouted.clone(),
        );
        registry.register_collector(Box::new(EndpointCollector(scrape.clone())));
        Self {
            registry,
            services: RwLock::default(),
            requests,
            latency,
            series: RwLock::default(),
            retries,
            discovery_updates,
            reloads,
            unrouted,
            generation,
            scrape,
            encoding: Mutex::new(()),
            codes_seen: Default::default(),
            known: Mutex::new(HashSet::new()),
            known_services: Mutex::new(HashSet::new()),
        }
    }

    /// The interned name of a service: a lock-free-ish read after the first call.
    fn service(&self, name: &str) -> Label<Arc<str>> {
        if let Some(s) = self.services.read().unwrap_or_else(PoisonError::into_inner).get(name) {
            return Label(s.clone());
        }
        let mut set = self.services.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = set.get(name) {
            return Label(s.clone());
        }
        let s: Arc<str> = Arc::from(name);
        set.insert(s.clone());
        Label(s)
    }

    /// One answered request.
    pub(crate) fn request(&self, service: &Arc<str>, endpoint: Option<&EndpointId>, code: u16, latency: Duration) {
        // Codes 100..=999 map onto the 1,024 bits.
        let idx = code.saturating_sub(100).min(1023);
        let (word, bit) = (usize::from(idx / 64), idx % 64);
        if self.codes_seen[word].load(Relaxed) & (1 << bit) == 0 {
            self.codes_seen[word].fetch_or(1 << bit, Relaxed);
        }
        let key = (
            service.as_ptr() as usize,
            endpoint.map_or(0, |e| e.as_str().as_ptr() as usize),
            code,
        );
        if let Some(series) = self.series.read().unwrap_or_else(PoisonError::into_inner).get(&key) {
            series.latency.observe(latency.as_secs_f64());
            series.requests.inc();
            return;
        }
        // The service's own name, shared: no copy.
        let labels = RequestLabels {
            service: Label(service.clone()),
            endpoint: Label(endpoint.cloned()),
            code,
        };
        let series = Series {
            _service: service.clone(),
            _endpoint: endpoint.cloned(),
            latency: self
                .latency
                .get_or_create(&LatencyLabels {
                    service: labels.service.clone(),
                    endpoint: labels.endpoint.clone(),
                })
                .clone(),
            requests: self.requests.get_or_create(&labels).clone(),
        };
        series.latency.observe(latency.as_secs_f64());
        series.requests.inc();
        let mut cache = self.series.write().unwrap_or_else(PoisonError::into_inner);
        // Bounded: a service a reload replaced leaves its entries behind (its name is a
        // new `Arc`, its series are kept), until the next drop of series or this.
        if cache.len() >= SERIES_CACHED {
            cache.clear();
        }
        cache.insert(key, series);
    }

    /// A failed attempt; `again` when another attempt follows.
    pub(crate) fn retry(&self, service: &str, again: bool) {
        if again {
            self.retries
                .get_or_create(&ServiceLabels {
                    service: self.service(service),
                })
                .inc();
        }
    }

    /// A request that matched no route.
    pub(crate) fn unrouted(&self) {
        self.unrouted.inc();
    }

    /// A discovery update for a service.
    pub(crate) fn discovery_update(&self, service: &str) {
        self.discovery_updates
            .get_or_create(&ServiceLabels {
                service: self.service(service),
            })
            .inc();
    }

    /// A config reload attempt.
    pub(crate) fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// The text exposition: the registry, plus endpoint and service state read from `rt`.
    pub(crate) fn encode(&self, rt: &Runtime) -> String {
        let _one = self.encoding.lock().unwrap_or_else(PoisonError::into_inner);
        self.generation.set(i64::try_from(rt.generation).unwrap_or(i64::MAX));
        let services: Vec<(Label<Arc<str>>, BalancerStatus)> = rt
            .upstreams()
            .map(|u| (Label(u.name.clone()), u.balancer.status()))
            .collect();
        self.forget_removed(&services);
        {
            let mut scrape = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
            scrape.services = services;
            scrape.docker = rt.sources.docker_status();
            scrape.consul = rt.sources.consul_statuses();
            scrape.certificates = rt.tls.as_ref().map(|t| t.store.certificates()).unwrap_or_default();
            scrape.acme = rt
                .tls
                .as_ref()
                .and_then(|t| t.acme.as_ref())
                .map(|a| a.status())
                .unwrap_or_default();
        }
        let mut out = String::with_capacity(16 * 1024);
        let encoded = encode_registry(&mut out, &self.registry).and_then(|()| encode_eof(&mut out));
        self.scrape
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .services
            .clear();
        if let Err(e) = encoded {
            tracing::warn!(error = %e, "metrics encoding failed");
            // Still a valid exposition, if an incomplete one.
            if !out.ends_with('\n') {
                out.push('\n');
            }
            let _ = writeln!(out, "# EOF");
        }
        out
    }
}

impl Metrics {
    /// Empties the request path's cache of series, after some were dropped (an entry
    /// would go on counting into a series the exposition no longer has).
    fn forget_series(&self) {
        self.series.write().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// Drops the request and latency series of endpoints that were present at the last
    /// scrape and are gone now (removed by discovery, or their service by a reload), and
    /// every series of services that are gone (removed by a reload, or a provider's service
    /// whose containers left), so churning containers do not grow the exposition without
    /// bound.
    fn forget_removed(&self, services: &[(Label<Arc<str>>, BalancerStatus)]) {
        self.forget_removed_services(services);
        let now: HashSet<(Arc<str>, EndpointId)> = services
            .iter()
            .flat_map(|(svc, st)| st.endpoints.iter().map(move |e| (svc.0.clone(), e.id.clone())))
            .collect();
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let codes = self.codes();
        let dropped = known.difference(&now).next().is_some();
        for (svc, ep) in known.difference(&now) {
            let (service, endpoint) = (Label(svc.clone()), Label(Some(ep.clone())));
            self.latency.remove(&LatencyLabels {
                service: service.clone(),
                endpoint: endpoint.clone(),
            });
            for &code in &codes {
                self.requests.remove(&RequestLabels {
                    service: service.clone(),
                    endpoint: endpoint.clone(),
                    code,
                });
            }
        }
        *known = now;
        if dropped {
            self.forget_series();
        }
    }

    fn forget_removed_services(&self, services: &[(Label<Arc<str>>, BalancerStatus)]) {
        let now: HashSet<Arc<str>> = services.iter().map(|(s, _)| s.0.clone()).collect();
        let mut known = self.known_services.lock().unwrap_or_else(PoisonError::into_inner);
        // Services seen by a request or a discovery update but never at a scrape count too.
        known.extend(
            self.services
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned(),
        );
        let gone: Vec<Arc<str>> = known.difference(&now).cloned().collect();
        if !gone.is_empty() {
            let codes = self.codes();
            let mut interned = self.services.write().unwrap_or_else(PoisonError::into_inner);
            for svc in &gone {
                let service = Label(svc.clone());
                self.retries.remove(&ServiceLabels {
                    service: service.clone(),
                });
                self.discovery_updates.remove(&ServiceLabels {
                    service: service.clone(),
                });
                self.latency.remove(&LatencyLabels {
                    service: service.clone(),
                    endpoint: Label(None),
                });
                for &code in &codes {
                    self.requests.remove(&RequestLabels {
                        service: service.clone(),
                        endpoint: Label(None),
                        code,
                    });
                }
                interned.remove(svc);
            }
            self.forget_series();
        }
        *known = now;
    }

    /// The status codes answered so far.
    fn codes(&self) -> Vec<u16> {
        (0..1024u16)
            .filter(|&i| self.codes_seen[usize::from(i / 64)].load(Relaxed) & (1 << (i % 64)) != 0)
            .map(|i| i + 100)
            .collect()
    }
}

/// The input of [`EndpointCollector`] during one scrape.
#[derive(Debug, Default)]
struct Scrape {
    services: Vec<(Label<Arc<str>>, BalancerStatus)>,
    docker: Option<lb_discovery_docker::SourceStatus>,
    consul: Vec<lb_discovery_consul::ConsulStatus>,
    certificates: Vec<lb_tls::CertInfo>,
    acme: Vec<lb_tls::acme::AcmeStatus>,
}

/// Encodes endpoint and service state from the runtime being scraped.
#[derive(Debug)]
struct EndpointCollector(Arc<Mutex<Scrape>>);

impl EndpointCollector {
    /// Each certificate's days to expiry, and ACME's orders per name.
    fn tls(encoder: &mut DescriptorEncoder<'_>, scrape: &Scrape) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType;
        if !scrape.certificates.is_empty() {
            let now = std::time::SystemTime::now();
            let mut family = encoder.encode_descriptor(
                "tls_certificate_days_left",
                "Days until the certificate expires (negative once it has).",
                None,
                MetricType::Gauge,
            )?;
            // Two sources may serve the same names: the source keeps label sets unique.
            let mut seen = std::collections::HashSet::new();
            for c in &scrape.certificates {
                let names = c.names.join(",");
                if !seen.insert((names.clone(), c.source.clone())) {
                    continue;
                }
                let labels = [("names", names.as_str()), ("source", c.source.as_str())];
                ConstGauge::new(c.days_left(now)).encode(family.encode_family(&labels)?)?;
            }
        }
        if !scrape.acme.is_empty() {
            let mut family = encoder.encode_descriptor(
                "acme_orders",
                "ACME orders finished, by name and result.",
                None,
                MetricType::Counter,
            )?;
            for a in &scrape.acme {
                for (result, n) in [("success", a.orders_ok), ("failure", a.orders_failed)] {
                    let labels = [("name", a.name.as_str()), ("result", result)];
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }

    /// Each Consul watch (the catalog's, and one per watched service): whether it answers,
    /// its index, requests, errors, backoff.
    fn consul(
        encoder: &mut DescriptorEncoder<'_>,
        watches: &[lb_discovery_consul::ConsulStatus],
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType;
        if watches.is_empty() {
            return Ok(());
        }
        // Two watches of one service with different settings (tags, statuses) get `#2`,
        // `#3`...: label sets must be unique in a family.
        let mut seen: std::collections::HashMap<(&str, &str), usize> = std::collections::HashMap::new();
        let names: Vec<(String, String)> = watches
            .iter()
            .map(|c| {
                let n = seen.entry((c.agent.as_str(), c.watching.as_str())).or_default();
                *n += 1;
                let watch = if *n == 1 {
                    c.watching.clone()
                } else {
                    format!("{}#{n}", c.watching)
                };
                (c.agent.clone(), watch)
            })
            .collect();
        type Get = fn(&lb_discovery_consul::ConsulStatus) -> f64;
        let gauges: [(&str, &str, Get); 4] = [
            (
                "consul_watch_up",
                "1 while the watch's last request was answered.",
                |c| f64::from(u8::from(c.consecutive_failures == 0 && c.last_success.is_some())),
            ),
            ("consul_watch_index", "The last X-Consul-Index seen.", |c| {
                c.last_index as f64
            }),
            (
                "consul_watch_backoff_seconds",
                "The current retry backoff; 0 while Consul answers.",
                |c| c.backoff.map_or(0.0, |b| b.as_secs_f64()),
            ),
            (
                "consul_watch_last_success_age_seconds",
                "Time since Consul last answered (-1 before the first answer).",
                |c| {
                    c.last_success
                        .and_then(|t| t.elapsed().ok())
                        .map_or(-1.0, |d| d.as_secs_f64())
                },
            ),
        ];
        for (metric, help, get) in gauges {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
            for (c, (agent, watch)) in watches.iter().zip(&names) {
                let labels = [("agent", agent.as_str()), ("watch", watch.as_str())];
                ConstGauge::new(get(c)).encode(family.encode_family(&labels)?)?;
            }
        }
        type Count = fn(&lb_discovery_consul::ConsulStatus) -> u64;
        let counters: [(&str, &str, Count); 3] = [
            ("consul_watch_requests", "Requests sent to Consul.", |c| c.requests),
            ("consul_watch_errors", "Failed requests to Consul.", |c| c.errors),
            (
                "consul_watch_index_resets",
                "Index resets (a backwards or missing index, repeated failures).",
                |c| c.index_resets,
            ),
        ];
        for (metric, help, get) in counters {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Counter)?;
            for (c, (agent, watch)) in watches.iter().zip(&names) {
                let labels = [("agent", agent.as_str()), ("watch", watch.as_str())];
                ConstCounter::new(get(c)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    /// A discovery source's own health: reachable, stale, events, listings, errors.
    fn source(
        encoder: &mut DescriptorEncoder<'_>,
        name: &'static str,
        st: &lb_discovery_docker::SourceStatus,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType;
        let labels = [("source", name)];
        let stale = st
            .stale_since
            .and_then(|t| t.elapsed().ok())
            .map_or(0.0, |d| d.as_secs_f64());
        let gauges: [(&str, &str, f64); 3] = [
            (
                "discovery_source_up",
                "1 while the discovery source answers.",
                f64::from(u8::from(st.reachable)),
            ),
            (
                "discovery_source_stale_seconds",
                "How long the source has not answered (its last known set is served); 0 while it answers.",
                stale,
            ),
            (
                "discovery_source_containers",
                "Containers selected and eligible.",
                st.containers as f64,
            ),
        ];
        for (metric, help, v) in gauges {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
            ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
        }
        let counters: [(&str, &str, u64); 3] = [
            ("discovery_source_events", "Events received from the source.", st.events),
            ("discovery_source_relists", "Full listings of the source.", st.relists),
            (
                "discovery_source_errors",
                "Failed attempts to read the source.",
                st.errors,
            ),
        ];
        for (metric, help, v) in counters {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Counter)?;
            ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// Encodes one family with a value per endpoint.
    fn per_endpoint<M: EncodeMetric>(
        encoder: &mut DescriptorEncoder<'_>,
        scrape: &Scrape,
        (name, help, unit): (&str, &str, Option<&Unit>),
        metric: impl Fn(&lb_core::EndpointStatus) -> M,
    ) -> Result<(), std::fmt::Error> {
        let Some(first) = scrape.services.iter().flat_map(|(_, st)| st.endpoints.first()).next() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(name, help, unit, metric(first).metric_type())?;
        for (service, st) in &scrape.services {
            for e in &st.endpoints {
                let labels = EndpointLabels {
                    service: service.clone(),
                    endpoint: Label(e.id.clone()),
                };
                metric(e).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    /// Encodes one family with a value per service.
    fn per_service<M: EncodeMetric>(
        encoder: &mut DescriptorEncoder<'_>,
        scrape: &Scrape,
        (name, help): (&str, &str),
        metric: impl Fn(&BalancerStatus) -> M,
    ) -> Result<(), std::fmt::Error> {
        let Some((_, first)) = scrape.services.first() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(name, help, None, metric(first).metric_type())?;
        for (service, st) in &scrape.services {
            let labels = ServiceLabels {
                service: service.clone(),
            };
            metric(st).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for EndpointCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let scrape = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let enc = &mut encoder;
        let s = &*scrape;
        if let Some(d) = &s.docker {
            Self::source(enc, "docker", d)?;
        }
        Self::consul(enc, &s.consul)?;
        Self::tls(enc, s)?;
        Self::per_service(
            enc,
            s,
            ("service_endpoints", "Endpoints known, draining ones included."),
            |st| ConstGauge::new(st.endpoints.len() as i64),
        )?;
        Self::per_service(enc, s, ("service_eligible_endpoints", "Endpoints in rotation."), |st| {
            ConstGauge::new(st.eligible as i64)
        })?;
        Self::per_service(
            enc,
            s,
            ("service_panic", "1 while panic mode balances over every endpoint."),
            |st| ConstGauge::new(i64::from(st.panic)),
        )?;
        Self::per_endpoint(
            enc,
            s,
            ("endpoint_in_flight", "Requests (or TCP connections) in flight.", None),
            |e| ConstGauge::new(i64::from(e.in_flight)),
        )?;
        Self::per_endpoint(enc, s, ("endpoint_requests", "Requests started.", None), |e| {
            ConstCounter::new(e.requests)
        })?;
        Self::per_endpoint(enc, s, ("endpoint_failures", "Requests failed.", None), |e| {
            ConstCounter::new(e.failures)
        })?;
        Self::per_endpoint(
            enc,
            s,
            ("endpoint_ejections", "Times ejected by outlier detection.", None),
            |e| ConstCounter::new(u64::from(e.times_ejected)),
        )?;
        Self::per_endpoint(enc, s, ("endpoint_weight", "Configured weight.", None), |e| {
            ConstGauge::new(i64::from(e.weight))
        })?;
        Self::per_endpoint(
            enc,
            s,
            (
                "endpoint_effective_weight",
                "Weight with slow start applied; 0 when out of rotation.",
                None,
            ),
            |e| ConstGauge::new(e.effective_weight.unwrap_or(0.0)),
        )?;
        Self::per_endpoint(
            enc,
            s,
            (
                "endpoint_latency_ewma",
                "Peak-EWMA latency estimate.",
                Some(&Unit::Seconds),
            ),
            |e| ConstGauge::new(e.ewma_latency.as_secs_f64()),
        )?;
        // One series per state, 1 for the current one: `lb_endpoint_state{state="healthy"} == 1`.
        if s.services.iter().any(|(_, st)| !st.endpoints.is_empty()) {
            let mut family = enc.encode_descriptor(
                "endpoint_state",
                "1 for the endpoint's current state (unknown, healthy, unhealthy, ejected, draining), else 0.",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (service, st) in &s.services {
                for e in &st.endpoints {
                    for state in STATES {
                        let labels = StateLabels {
                            service: service.clone(),
                            endpoint: Label(e.id.clone()),
                            state: state.as_str(),
                        };
                        ConstGauge::new(i64::from(e.health == state)).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.request(
            &Arc::from("a\"b"),
            Some(&EndpointId::new("x\\y\nz")),
            200,
            Duration::from_millis(3),
        );
        let mut out = String::new();
        encode_registry(&mut out, &m.registry).unwrap();
        assert!(
            out.contains(r#"lb_requests_total{service="a\"b",endpoint="x\\y\nz",code="200"} 1"#),
            "escaped labels expected in:\n{out}"
        );
    }

    #[test]
    fn services_are_interned() {
        let m = Metrics::new();
        let a = m.service("web");
        let b = m.service("web");
        assert!(Arc::ptr_eq(&a.0, &b.0), "the same name should give the same Arc");
    }

    #[tokio::test]
    async fn series_of_removed_endpoints_are_dropped() {
        use crate::upstream::{Settings, Upstream};
        use lb_core::balance::{AnyPolicy, RoundRobin};
        use lb_core::{discover, Balancer, Endpoint};

        let (publisher, updates) = discover::channel();
        let a: std::net::SocketAddr = "127.0.0.1:9101".parse().unwrap();
        let b: std::net::SocketAddr = "127.0.0.1:9102".parse().unwrap();
        publisher.reset([Endpoint::new(a), Endpoint::new(b)]);
        let balancer = Balancer::builder(AnyPolicy::from(RoundRobin::new()))
            .name("web")
            .spawn(updates, lb_core::http::HttpConnect::new(Default::default()));
        tokio::time::timeout(Duration::from_secs(3), balancer.ready_endpoints(2))
            .await
            .expect("both endpoints in rotation");
        let text = format!("[[services]]\nname = \"web\"\nendpoints = [\"{a}\"]\n");
        let config = crate::config::parse(&text, std::path::Path::new("m.toml"))
            .unwrap()
            .services
            .remove(0);
        let web = Arc::new(Upstream {
            name: Arc::from("web"),
            balancer: balancer.clone(),
            settings: Settings {
                key: None,
                retries: 0,
                response_timeout: None,
                replay_limit: 0,
            },
            config,
        });
        let metrics = Arc::new(Metrics::new());
        let router = crate::router::Router::new([(None, None, 0)]);
        let rt = Runtime::new(vec![web], router, metrics.clone(), 1, None);
        // The same name and ids throughout, as the proxy's requests have them: the
        // request path's cache finds its series by their identity.
        let name: Arc<str> = Arc::from("web");
        let ids = [EndpointId::from(a), EndpointId::from(b)];
        for id in &ids {
            metrics.request(&name, Some(id), 200, Duration::from_millis(2));
            metrics.request(&name, Some(id), 502, Duration::from_millis(2));
        }
        let before = metrics.encode(&rt);
        let series = |out: &str, ep: std::net::SocketAddr| {
            out.lines()
                .filter(|l| l.starts_with("lb_request") && l.contains(&format!("endpoint=\"{ep}\"")))
                .count()
        };
        assert!(series(&before, a) > 0 && series(&before, b) > 0, "{before}");

        publisher.remove(EndpointId::from(b));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while balancer.status().endpoints.iter().any(|e| e.addr == b) {
            assert!(tokio::time::Instant::now() < deadline, "the endpoint was never removed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let after = metrics.encode(&rt);
        assert_eq!(series(&after, b), 0, "the removed endpoint's series are gone:\n{after}");
        assert_eq!(series(&after, a), series(&before, a), "the others' stay");

        // A late answer from the removed endpoint counts into a new series, which the
        // exposition shows, not into the dropped one.
        metrics.request(&name, Some(&ids[1]), 200, Duration::from_millis(2));
        let late = metrics.encode(&rt);
        let counted = late.lines().any(|l| {
            l.starts_with("lb_requests_total{")
                && l.contains(&format!("endpoint=\"{b}\""))
                && l.contains("code=\"200\"")
                && l.ends_with(" 1")
        });
        assert!(counted, "the late answer is counted once:\n{late}");
    }

    #[tokio::test]
    async fn series_of_removed_services_are_dropped() {
        let metrics = Arc::new(Metrics::new());
        let empty = Runtime::new(vec![], crate::router::Router::new([]), metrics.clone(), 1, None);
        // A service that was there (a provider's, whose containers left): requests without
        // an endpoint, retries, discovery updates.
        metrics.request(&Arc::from("gone"), None, 503, Duration::from_millis(1));
        metrics.retry("gone", true);
        metrics.discovery_update("gone");
        let lines = |out: &str| out.lines().filter(|l| l.contains("service=\"gone\"")).count();
        let first = metrics.encode(&empty);
        assert_eq!(
            lines(&first),
            0,
            "a service in no runtime is dropped at the scrape:\n{first}"
        );
        assert!(
            metrics.services.read().unwrap().is_empty(),
            "and its interned name is freed"
        );
        // Churn: a thousand services come and go; the exposition does not grow.
        for i in 0..1000 {
            let name = format!("svc-{i}");
            metrics.request(&Arc::from(name.as_str()), None, 503, Duration::from_millis(1));
            metrics.discovery_update(&name);
        }
        let after = metrics.encode(&empty);
        assert_eq!(after.len(), first.len(), "{after}");
    }
}
