//! Endpoints and services from a Docker Engine: containers come and go, traffic follows.
//!
//! A [`DockerSource`] watches one daemon (events, with the container list as the source
//! of truth and a periodic re-list as a safety net) and keeps a
//! [`Catalog`](lb_core::discover::catalog::Catalog) of the containers selected by their
//! labels: service name -> eligible endpoints + route and policy hints. From it:
//!
//! - [`DockerHandle::service`] is a discovery stream of one service for any `lb_core`
//!   balancer: a `Reset` with that service's containers each time the set changes;
//! - [`DockerHandle::catalog`] is the whole catalog, for a proxy that builds services
//!   and routes from labels.
//!
//! [`labels`] judges one container from its inspect response: whether it is selected,
//! under which service, at which address and port, and with which hints (`lb.enable`,
//! `lb.service`, `lb.port`, `lb.weight`, `lb.network`, `lb.host`, `lb.path_prefix`,
//! `lb.balance`, `lb.hash_key`, `lb.health.path`, `lb.health.interval`, and optionally
//! Traefik's own labels). A container with a `HEALTHCHECK` is eligible only while
//! healthy; paused or stopped containers never are.
//!
//! The adapter only reads: `/_ping`, `/version`, `/containers/json`,
//! `/containers/{id}/json` and `/events` (and `/info` for the daemon's clock when allowed),
//! so it works behind a read-only socket proxy.
//! An unreachable daemon keeps the last known set (nothing is emptied) and the watcher
//! retries with a capped, jittered backoff.
//!
//! Endpoint ids are `<container name>:<port>`: stable across restarts of the proxy and the
//! same in every proxy that reads the same daemon, so consistent hashing agrees.

pub mod labels;
mod watcher;

pub use crate::labels::{AddressMode, Member, Options, Verdict};
pub use crate::watcher::{DockerHandle, DockerSource, Error, SourceStatus, MIN_API_VERSION};
