//! TLS termination for lb: a certificate store chosen by SNI.
//!
//! [`CertStore`] is a rustls [`ResolvesServerCert`](rustls::server::ResolvesServerCert):
//! every handshake reads the current table, so a certificate loaded, renewed or removed
//! is served to the next handshake with no restart, and connections already open keep
//! the certificate they were opened with.
//!
//! Certificates come from [`CertSource`]s: PEM files (chain and key), a directory of
//! them, an environment variable holding the PEM (as tutum/haproxy's `SSL_CERT`), and
//! certificates managed at run time ([`CertStore::set_managed`], used by the `acme`
//! feature). [`CertStore::certificates`] reports each one's names, issuer, expiry and
//! source.

mod info;
mod load;
mod store;
mod watch;

#[cfg(feature = "acme")]
pub mod acme;

pub use store::{CertInfo, CertSource, CertStore, Error, ACME_TLS_ALPN};
