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

mod endpoint;
mod service;
mod state;
mod table;

pub use crate::endpoint::{Endpoint, EndpointId, DEFAULT_WEIGHT, MAX_WEIGHT};
pub use crate::error::{BoxError, NoEndpoints};
pub use crate::load::{BodyCompletion, CompleteOnResponse, InFlight, Outcome, TrackCompletion, TrackedBody};
pub use crate::service::{
    connect_fn, Avoid, AvoidHint, BalanceLayer, Balancer, BalancerStatus, Builder, ConnectFn, Connection,
    EndpointStatus, ExtensionKey, HashKey, KeyFn, NoKey, Picked, RequestKey, ResponseFuture,
};
pub use crate::state::{CheckRecord, EndpointState, Health};
