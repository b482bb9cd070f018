//! Endpoints and services from Consul, by blocking queries.
//!
//! - [`ConsulService`] follows one service (`GET /v1/health/service/:service` with
//!   `index` and `wait`): [`ServiceHandle::updates`] is a discovery stream for any
//!   `lb_core` balancer, a `Reset` each time the set of accepted instances changes.
//! - [`ConsulCatalog`] follows every service tagged `lb.enable=true`
//!   (`GET /v1/catalog/services`), with route and policy hints from tags (`lb.host=...`,
//!   the same keys and grammar as the Docker labels): [`CatalogHandle::catalog`] has the
//!   same shape as the Docker adapter's catalog.
//! - [`Registration`] registers an instance with a TTL check and keeps it passing.
//!
//! An instance's address is `Service.Address`, else `Node.Address`; its port
//! `Service.Port`; its weight `Weights.Passing` (`Weights.Warning` while warning); its
//! id `<node>/<service id>`, the same in every process reading the same Consul, so
//! consistent hashing agrees across proxies. Failures keep the last good set and retry
//! with backoff; an empty set comes only from Consul answering with no instance.

mod catalog;
mod client;
mod register;
mod service;
mod types;

pub use crate::catalog::{CatalogHandle, ConsulCatalog};
pub use crate::client::Error;
pub use crate::register::{Registered, Registration};
pub use crate::service::{Consistency, ConsulService, ConsulStatus, ServiceHandle};
pub use crate::types::Status;
