//! Integration tests of the whole proxy with real sockets on 127.0.0.1: real backends
//! ([`support::Backend`]), real clients, the stack started from a config text.

mod acme;
mod balance;
mod blame;
mod dns;
mod fuzz;
mod limits;
mod protocol;
mod reload;
mod requests;
mod resilience;
mod support;
mod tls;
