//! Shared helpers: a scratch directory, file writes as editors do them, and bounded waits.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lb_core::discover::Update;
use lb_core::Endpoint;
use lb_discovery_static::{Error, Updates};
use tracing::field::{Field, Visit};
use tracing::{span, Event, Level, Metadata, Subscriber};

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub(crate) struct ScratchDir(PathBuf);

impl ScratchDir {
    pub(crate) fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "lb-discovery-static-{name}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("cannot remove {}: {e}", self.0.display());
        }
    }
}

/// Writes a sibling temp file and renames it over `path`, as editors and config tools do.
pub(crate) fn replace(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_str().unwrap()));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Truncates and rewrites `path` in place.
pub(crate) fn overwrite(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// The next update, which must be a `Reset` within `within`.
pub(crate) async fn next_reset(updates: &mut Updates, within: Duration) -> Vec<Endpoint> {
    match tokio::time::timeout(within, updates.next()).await {
        Ok(Some(Ok(Update::Reset(set)))) => set,
        Ok(other) => panic!("expected a Reset, got {other:?}"),
        Err(_) => panic!("no update within {within:?}"),
    }
}

/// Asserts that nothing arrives for `quiet`.
pub(crate) async fn assert_quiet(updates: &mut Updates, quiet: Duration) {
    if let Ok(update) = tokio::time::timeout(quiet, updates.next()).await {
        panic!("expected no update for {quiet:?}, got {update:?}");
    }
}

/// The ids of a set, in order.
pub(crate) fn ids(set: &[Endpoint]) -> Vec<String> {
    set.iter().map(|ep| ep.id().to_string()).collect()
}

/// An endpoints file listing `addrs`.
pub(crate) fn endpoints(addrs: &[&str]) -> String {
    let mut text = String::from("endpoints = [\n");
    for addr in addrs {
        text.push_str(&format!("    {{ addr = \"{addr}\" }},\n"));
    }
    text.push_str("]\n");
    text
}

/// Unwraps an error for display in a failed test.
pub(crate) fn expect_err<T: std::fmt::Debug>(r: Result<T, Error>) -> Error {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

/// Collects the `warn` events on this thread, each as `name=value` pairs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    /// Starts collecting on the current thread until the guard drops.
    pub(crate) fn capture(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(self.clone())
    }

    pub(crate) fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Subscriber for Warnings {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        if *event.metadata().level() == Level::WARN {
            let mut line = String::new();
            event.record(&mut Fields(&mut line));
            self.0.lock().unwrap().push(line);
        }
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}
