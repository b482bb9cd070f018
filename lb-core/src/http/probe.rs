//! The HTTP health probe.

use std::time::Duration;

use http::{Request, Uri};
use http_body_util::BodyExt;

use super::{empty, ClientConfig, HttpConnect};
use crate::endpoint::Endpoint;
use crate::health::{BoxFuture, HealthCheck, ProbeError};

/// `GET path` on the endpoint; a 2xx or 3xx answer passes (HAProxy's `option httpchk`,
/// Traefik's default status rule). The `Host` header can be set for virtual hosts.
#[derive(Clone, Debug)]
pub struct HttpProbe {
    path: String,
    host: Option<String>,
    connect: HttpConnect,
    /// One service (and so one pool, one kept-alive connection) per address probed.
    services: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<std::net::SocketAddr, super::EndpointService>>>,
}

impl HttpProbe {
    /// Probes `path` (e.g. `"/healthz"`).
    pub fn new(path: impl Into<String>) -> Self {
        let connect = HttpConnect::new(ClientConfig {
            connect_timeout: Duration::from_secs(2),
            pool_max_idle_per_host: 1,
            ..ClientConfig::default()
        });
        Self {
            path: path.into(),
            host: None,
            connect,
            services: Default::default(),
        }
    }

    /// Probes through `connect` instead of a plain HTTP connector of its own: for
    /// endpoints over TLS, the same [`HttpConnect`] (with
    /// [`with_tls`](HttpConnect::with_tls)) the balancer sends requests with. Give it a
    /// connector of its own (a clone shares the pools) so that probes do not wait behind
    /// requests for a pooled connection.
    pub fn with_connect(mut self, connect: HttpConnect) -> Self {
        self.connect = connect;
        self.services = Default::default();
        self
    }

    /// Sends this `Host` header.
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }
}

impl HealthCheck for HttpProbe {
    fn check(&self, endpoint: &Endpoint) -> BoxFuture<Result<(), ProbeError>> {
        use tower_service::Service;
        let mut svc = {
            let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
            if services.len() > 4096 {
                // Addresses come and go with discovery: start over rather than grow.
                services.clear();
            }
            services
                .entry(endpoint.addr())
                .or_insert_with(|| self.connect.for_endpoint(endpoint))
                .clone()
        };
        let path = if self.path.starts_with('/') {
            self.path.clone()
        } else {
            format!("/{}", self.path)
        };
        let host = self.host.clone().unwrap_or_else(|| endpoint.addr().to_string());
        Box::pin(async move {
            let uri: Uri = path
                .parse()
                .map_err(|e| ProbeError(format!("bad probe path {path:?}: {e}")))?;
            let req = Request::get(uri)
                .header(http::header::HOST, host)
                .header(http::header::USER_AGENT, "lb-health-check")
                .body(empty())
                .map_err(|e| ProbeError(e.to_string()))?;
            let rsp = svc.call(req).await.map_err(|e| ProbeError(crate::error::chain(&e)))?;
            let status = rsp.status();
            // Drain the body so the connection can be reused.
            let _ = rsp.into_body().collect().await;
            if status.is_success() || status.is_redirection() {
                Ok(())
            } else {
                Err(ProbeError(format!("status {status}")))
            }
        })
    }

    fn forget(&self, endpoint: &Endpoint) {
        // Its kept-alive connection closes with the last clone of its service (a probe
        // still running holds one until it ends).
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&endpoint.addr());
    }
}
