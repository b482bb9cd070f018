//! Registering an endpoint with a TTL check and keeping it passing: what Registrator did
//! for containers, for a Rust service that announces itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;

use crate::client::{encode, Client, Error};
use crate::service::AbortOnDrop;

/// An instance to register with the local Consul agent.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use lb_discovery_consul::Registration;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lb_discovery_consul::Error> {
/// let me = Registration::new("api", "127.0.0.1:8080".parse().unwrap())
///     .id("api-1")
///     .tag("v2")
///     .ttl(Duration::from_secs(10))
///     .register()
///     .await?;                   // registered, and kept passing in the background
/// // ... serve ...
/// me.deregister().await?;        // on shutdown
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Registration {
    address: Option<String>,
    token: Option<String>,
    ca_file: Option<PathBuf>,
    name: String,
    id: Option<String>,
    addr: SocketAddr,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
    weights: Option<(u32, u32)>,
    ttl: Duration,
    deregister_after: Option<Duration>,
}

impl Registration {
    /// The instance `addr` of service `name`, with a 10 s TTL check.
    pub fn new(name: impl Into<String>, addr: SocketAddr) -> Self {
        Self {
            address: None,
            token: None,
            ca_file: None,
            name: name.into(),
            id: None,
            addr,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            weights: None,
            ttl: Duration::from_secs(10),
            deregister_after: None,
        }
    }

    /// The agent (default `CONSUL_HTTP_ADDR`, else `http://127.0.0.1:8500`).
    pub fn agent(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// The ACL token (default `CONSUL_HTTP_TOKEN`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// A CA file for an `https://` agent.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// The instance id (default `<name>-<ip>-<port>`), unique on the agent.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// A tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// A metadata entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }

    /// Weights while passing and while warning.
    pub fn weights(mut self, passing: u32, warning: u32) -> Self {
        self.weights = Some((passing.max(1), warning));
        self
    }

    /// The TTL of the check: the instance goes critical if not renewed within it. It is
    /// renewed every third of it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// Consul removes the instance after its check has been critical this long (at least
    /// a minute, Consul's floor).
    pub fn deregister_critical_after(mut self, after: Duration) -> Self {
        self.deregister_after = Some(after.max(Duration::from_secs(60)));
        self
    }

    fn service_id(&self) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| format!("{}-{}-{}", self.name, self.addr.ip(), self.addr.port()))
    }

    fn body(&self) -> serde_json::Value {
        let id = self.service_id();
        let mut check = serde_json::json!({
            "CheckID": format!("{id}:ttl"),
            "Name": format!("{} heartbeat", self.name),
            "TTL": format!("{}ms", self.ttl.as_millis()),
            "Status": "passing",
        });
        if let Some(after) = self.deregister_after {
            check["DeregisterCriticalServiceAfter"] = serde_json::json!(format!("{}s", after.as_secs()));
        }
        let mut body = serde_json::json!({
            "ID": id,
            "Name": self.name,
            "Tags": self.tags,
            "Address": self.addr.ip().to_string(),
            "Port": self.addr.port(),
            "Meta": self.meta,
            "Check": check,
        });
        if let Some((p, w)) = self.weights {
            body["Weights"] = serde_json::json!({"Passing": p, "Warning": w});
        }
        body
    }

    /// Registers the instance (its check starts passing) and keeps it passing in the
    /// background until [`Registered::deregister`] or the handle is dropped. A renewal
    /// that finds the check gone (the agent restarted) registers again.
    ///
    /// # Errors
    ///
    /// The agent's address is unusable, or it refused or did not answer the registration.
    pub async fn register(self) -> Result<Registered, Error> {
        let token = self.token.clone().or_else(|| std::env::var("CONSUL_HTTP_TOKEN").ok());
        let address = self.address.clone().unwrap_or_else(crate::client::default_address);
        let client = Client::new(&address, token, self.ca_file.as_deref())?;
        let body = Bytes::from(serde_json::to_vec(&self.body()).unwrap_or_default());
        client
            .put("/v1/agent/service/register", body.clone(), Duration::from_secs(10))
            .await?;
        let id = self.service_id();
        let check = format!("{id}:ttl");
        let every = self.ttl / 3;
        let keeper = {
            let (client, check, name) = (client.clone(), check.clone(), self.name.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let path = format!("/v1/agent/check/pass/{}", encode(&check));
                    match client.put(&path, Bytes::new(), Duration::from_secs(5)).await {
                        Ok(_) => {}
                        Err(Error::Status { status, .. })
                            if status == StatusCode::NOT_FOUND || status == StatusCode::INTERNAL_SERVER_ERROR =>
                        {
                            tracing::warn!(service = %name, "consul: the TTL check is gone; registering again");
                            let _ = client
                                .put("/v1/agent/service/register", body.clone(), Duration::from_secs(10))
                                .await;
                        }
                        Err(e) => tracing::warn!(service = %name, error = %e, "consul: TTL renewal failed"),
                    }
                }
            })
        };
        Ok(Registered {
            client,
            id,
            keeper: Arc::new(AbortOnDrop(keeper)),
        })
    }
}

/// A registered instance, kept passing while this lives.
#[derive(Debug)]
pub struct Registered {
    client: Client,
    id: String,
    keeper: Arc<AbortOnDrop>,
}

impl Registered {
    /// The instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stops renewing and deregisters the instance. An instance the agent no longer knows
    /// counts as deregistered.
    ///
    /// # Errors
    ///
    /// The agent refused or did not answer.
    pub async fn deregister(self) -> Result<(), Error> {
        self.keeper.0.abort();
        let path = format!("/v1/agent/service/deregister/{}", encode(&self.id));
        match self.client.put(&path, Bytes::new(), Duration::from_secs(10)).await {
            Ok(_) => Ok(()),
            Err(Error::Status { status, body, .. })
                if status == StatusCode::NOT_FOUND || body.starts_with("Unknown service") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
