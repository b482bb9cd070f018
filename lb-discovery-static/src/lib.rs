//! Endpoints from configuration or code, for [`lb_core`] balancers.
//!
//! Three discovery sources, each a stream of [`Update`]s that a balancer reads:
//!
//! - [`fixed`] / [`StaticList`]: a set of [`Endpoint`]s given in code, sent once.
//! - [`resolve_stream`]: [`EndpointSpec`]s, whose addresses are literal socket
//!   addresses or host names (`"web1:80"`). Each name is resolved to one endpoint per
//!   address and re-resolved periodically; a failed lookup keeps the last good
//!   addresses. This is what a proxy uses for endpoints written inline in its config.
//! - [`EndpointsFile`]: a TOML file of specs, read at start and watched (file events
//!   plus a slow poll). A good edit yields a new set; a bad edit is logged with its line
//!   and column and changes nothing.
//!
//! All three send whole sets ([`Update::Reset`]), and only when the set changes; the
//! balancer diffs each set against what it holds, so endpoints that stay keep their
//! counters and health.
//!
//! # Examples
//!
//! ```
//! use futures_util::StreamExt;
//! use lb_core::discover::Update;
//! use lb_discovery_static::EndpointsFile;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("lb-static-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! let path = dir.join("endpoints.toml");
//! std::fs::write(
//!     &path,
//!     r#"endpoints = [
//!         { addr = "127.0.0.1:9001", weight = 3, metadata = { zone = "a" } },
//!         { addr = "127.0.0.1:9002", id = "b" },
//!     ]"#,
//! )?;
//!
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! rt.block_on(async {
//!     let mut updates = EndpointsFile::new(&path).watch()?;
//!     // The file as it is now; later edits arrive as further `Reset`s.
//!     let Some(Ok(Update::Reset(set))) = updates.next().await else { panic!("expected a Reset") };
//!     let ids: Vec<_> = set.iter().map(|ep| ep.id().to_string()).collect();
//!     assert_eq!(ids, ["127.0.0.1:9001", "b"]);
//!     assert_eq!(set[0].weight(), 3);
//!     Ok::<_, lb_discovery_static::Error>(())
//! })?;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! The stream from [`EndpointsFile::watch`] or [`resolve_stream`] is a
//! [`Discover`](lb_core::discover::Discover) source: hand it to a balancer's builder.

#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![doc(test(attr(deny(warnings))))]

mod error;
mod file;
mod resolve;
mod spec;
mod watched;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use lb_core::discover::{self, Fixed, Update};
use lb_core::Endpoint;

pub use crate::error::{Error, Location};
pub use crate::file::{EndpointsFile, DEFAULT_DEBOUNCE, DEFAULT_POLL_INTERVAL};
pub use crate::resolve::{resolve_stream, Updates, DEFAULT_DNS_REFRESH};
pub use crate::spec::{EndpointSpec, HOST_METADATA};
pub use crate::watched::WatchedFile;

/// A set of endpoints given in code: one `Reset`, then the stream stays open.
///
/// # Examples
///
/// ```
/// use lb_core::Endpoint;
/// use lb_discovery_static::fixed;
///
/// let source = fixed([Endpoint::new("127.0.0.1:9001".parse().unwrap())]);
/// # let _ = source;
/// ```
pub fn fixed(endpoints: impl IntoIterator<Item = Endpoint>) -> StaticList {
    StaticList {
        inner: discover::fixed(endpoints),
    }
}

/// A fixed endpoint set as a discovery source; see [`fixed`].
///
/// It sends its set once as [`Update::Reset`] and then stays pending forever, so the
/// balancer keeps the set. It cannot fail.
#[derive(Debug)]
pub struct StaticList {
    inner: Fixed,
}

// === impl StaticList ===

impl StaticList {
    /// The source for `endpoints`.
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        fixed(endpoints)
    }
}

impl From<Vec<Endpoint>> for StaticList {
    fn from(endpoints: Vec<Endpoint>) -> Self {
        fixed(endpoints)
    }
}

impl FromIterator<Endpoint> for StaticList {
    fn from_iter<I: IntoIterator<Item = Endpoint>>(iter: I) -> Self {
        fixed(iter)
    }
}

impl Stream for StaticList {
    type Item = Result<Update, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}
