//! Endpoints from Consul (the health endpoint with blocking queries).
//!
//! **Not written yet.** This crate reserves its place in the workspace; it exports
//! nothing. Its issue is not open yet; see `docs/architecture.md` for where it fits:
//! it will produce an `lb_core::discover::Update` stream (whole-set `Reset`s) that any
//! `Balancer` can consume.
