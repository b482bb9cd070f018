//! Load balancing as tower middleware.
//!
//! `lb-core` spreads requests over endpoints that discovery finds and loses at run time.
//! A [`Balancer`] is a cheap-to-clone [`tower::Service`]: a background writer task
//! applies discovery [`Update`](discover::Update)s to an endpoint table and publishes
//! immutable snapshots; each call loads the current snapshot without a lock, asks the
//! [`Balance`](balance::Balance) policy for an endpoint, takes an in-flight guard on it
//! and calls that endpoint's service. Nothing on that path allocates.
//!
//! - **Policies** ([`balance`]): round robin, smooth weighted round robin (nginx),
//!   weighted least connections (HAProxy), power of two choices over pending requests
//!   or peak EWMA (weighted), weighted random, Maglev consistent hashing with bounded
//!   load. Your own, against the same trait.
//! - **Discovery** ([`discover`]): `Reset` / `Insert` / `Remove` streams, diffed by
//!   stable [`EndpointId`]; a push handle for code; tower `Change` interop both ways.
//! - **State survives updates**: counters, latency and health are kept per endpoint
//!   id; a removed endpoint drains.
//! - **Health** ([`health`]): active probes with rise/fall, passive outlier ejection
//!   with growing backoff and a cap (on by default), a panic threshold, slow start.
//! - **Blame the right side** ([`load`]): a request the caller abandons (a dropped
//!   future, a timeout around the balancer) is a cancellation and counts against no
//!   endpoint; an endpoint over the per-attempt [`Builder::timeout`] has failed, and
//!   the error names it ([`error::EndpointError`], [`error::is_timeout`]). A failure
//!   costs the latency estimate a penalty, so an endpoint that fails fast never looks
//!   fast ([`Builder::failure_penalty`]).
//! - **Observability**: [`Balancer::status`] for status pages and metrics, `tracing`
//!   events on every state change.
//!
//! # Feature flags
//!
//! | feature | what it adds |
//! |---|---|
//! | `http` | [`http`](crate::http): a hyper client connector per endpoint, forwarding headers, an HTTP health probe |
//! | `tls` | `http`, and TLS to endpoints: `http::TlsConnect` for `http::HttpConnect::with_tls` (rustls, ALPN h2 or HTTP/1.1) |
//!
//! # Example: a hyper client balanced over a static list (feature `http`)
//!
#![cfg_attr(feature = "http", doc = "```")]
#![cfg_attr(feature = "http", doc = include_str!("../examples/embed.rs"))]
#![cfg_attr(feature = "http", doc = "```")]
//!
//! # Retries
//!
//! A balancer does not retry: compose a `tower::retry` policy around it. A failed call
//! returns an [`EndpointError`] naming the endpoint; the retry puts an [`Avoid`] naming
//! it in the request's extensions (read by the protocol [`Builder::http`] sets,
//! `http::Http`) and the next attempt goes to another endpoint if one is eligible. This policy retries
//! a connect error (the request never reached the endpoint) whatever the method, and
//! any other failure of an idempotent request, at most twice; the body is `Bytes`, so a
//! clone of the request replays it without copying. The example `https_retry` runs it
//! against an endpoint that is down. Print a failure with [`error::chain`]: each part
//! once, as in `endpoint down failed: could not connect to 127.0.0.1:9: Connection refused`.
//!
#![cfg_attr(feature = "http", doc = "```no_run")]
#![cfg_attr(not(feature = "http"), doc = "```ignore")]
//! use bytes::Bytes;
//! use http::Request;
//! use lb_core::http::{full, is_connect_error, ClientConfig, HttpConnect};
//! use lb_core::{balance::RoundRobin, discover, Avoid, Balancer, BoxError, Endpoint, EndpointError};
//! use tower::retry::Policy;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! /// Retries connect errors, and other errors of idempotent requests, on another
//! /// endpoint. `Retry` clones the policy per request: `retries_left` is per request.
//! #[derive(Clone)]
//! struct RetryOnAnother {
//!     retries_left: usize,
//! }
//!
//! impl<Res> Policy<Request<Bytes>, Res, BoxError> for RetryOnAnother {
//!     type Future = std::future::Ready<()>;
//!
//!     fn retry(&mut self, req: &mut Request<Bytes>, result: &mut Result<Res, BoxError>) -> Option<Self::Future> {
//!         let err = result.as_ref().err()?;
//!         let never_sent = is_connect_error(&**err);
//!         if self.retries_left == 0 || !(never_sent || req.method().is_idempotent()) {
//!             return None;
//!         }
//!         self.retries_left -= 1;
//!         if let Some(failed) = err.downcast_ref::<EndpointError>() {
//!             req.extensions_mut().insert(Avoid(failed.endpoint().clone()));
//!         }
//!         Some(std::future::ready(()))
//!     }
//!
//!     fn clone_request(&mut self, req: &Request<Bytes>) -> Option<Request<Bytes>> {
//!         let mut clone = Request::new(req.body().clone());
//!         *clone.method_mut() = req.method().clone();
//!         *clone.uri_mut() = req.uri().clone();
//!         *clone.version_mut() = req.version();
//!         *clone.headers_mut() = req.headers().clone();
//!         Some(clone)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let endpoints = ["127.0.0.1:8081", "127.0.0.1:8082"].map(|a| Endpoint::new(a.parse().unwrap()));
//! let balancer = Balancer::builder(RoundRobin::new())
//!     .http()
//!     .spawn(discover::fixed(endpoints), HttpConnect::new(ClientConfig::default()));
//! let client = ServiceBuilder::new()
//!     .retry(RetryOnAnother { retries_left: 2 })
//!     .map_request(|req: Request<Bytes>| req.map(full))
//!     .service(balancer);
//!
//! let req = Request::put("http://api.internal/items/1").body(Bytes::from_static(b"{}"))?;
//! match client.oneshot(req).await {
//!     Ok(rsp) => println!("{}", rsp.status()),
//!     Err(e) => eprintln!("failed: {}", lb_core::error::chain(&*e)),
//! }
//! # Ok(())
//! # }
#![cfg_attr(feature = "http", doc = "```")]
#![cfg_attr(not(feature = "http"), doc = "```")]
//!
//! # More examples
//!
//! In `lb-core/examples/` of the repository, each runnable on its own:
//!
//! - `embed` (feature `http`): the example above.
//! - `https_retry` (feature `tls`): an HTTPS client over three endpoints, one of them
//!   down, with the retry policy above.
//! - `grpc_style`: a client whose endpoint services are not HTTP (a line-based RPC over
//!   TCP, `Service<String>`), each made by an async connect as with tonic's
//!   `Endpoint::connect().await`, one slow to connect; discovery pushed through
//!   [`discover::channel`], a timeout and a concurrency limit around the balancer; an
//!   endpoint removed and traffic following.
//!
//! The architecture, with the two flows (discovery and request), is in
//! `docs/architecture.md` of the repository.

#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod balance;
pub mod discover;
pub mod error;
pub mod health;
#[cfg(feature = "http")]
pub mod http;
pub mod load;

// The layers, each using only those above it: endpoint -> state -> (balance, load,
// health, status, protocol) -> table -> pick -> service. `docs/architecture.md` draws
// them.
mod endpoint;
mod pick;
mod protocol;
mod service;
mod state;
mod status;
mod table;

pub use crate::endpoint::{Endpoint, EndpointId, DEFAULT_WEIGHT, MAX_WEIGHT};
pub use crate::error::{BoxError, Elapsed, EndpointError, NoEndpoints, UnknownEndpoint};
pub use crate::load::{InFlight, Outcome};
pub use crate::pick::Picked;
pub use crate::protocol::{Avoid, AvoidHint, HashKey, KeyFn, Plain, Protocol};
pub use crate::service::{connect_fn, BalanceLayer, Balancer, Builder, ConnectFn, ResponseFuture};
pub use crate::state::{CheckRecord, EndpointState, Health};
pub use crate::status::{BalancerStatus, Connection, EndpointStatus};
