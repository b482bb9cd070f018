//! Shared helpers for the tests of the lb crates. A dev-dependency only: it is not
//! published, and depends on no lb crate (so that every one of them, lb-core included,
//! can use it without a dependency cycle).
//!
//! - Bounded waits: [`eventually`] and [`eventually_async`] on Tokio's clock (also a
//!   paused one), [`eventually_blocking`] for plain `#[test]`s and std threads.
//! - [`TempDir`], a scratch directory removed on drop, and [`free_port`].
//! - [`http::Backend`], a real HTTP/1.1 backend on loopback that counts what it answers
//!   and can be held, slowed down and killed.
//! - [`tls`]: self-signed certificates (PEM and DER) and rustls clients that trust one
//!   of them.
//! - [`mock`]: in-memory endpoint services (tower [`Service`](tower_service::Service)s
//!   answering with their index) that a test switches between answering, failing,
//!   hanging and not being ready.

pub mod http;
pub mod mock;
pub mod tls;

mod dir;
mod wait;

pub use dir::TempDir;
pub use wait::{eventually, eventually_async, eventually_blocking, eventually_every, POLL};

/// A port on 127.0.0.1 that was free a moment ago (bound, read, released): connecting
/// to it is refused, until something else binds it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}
