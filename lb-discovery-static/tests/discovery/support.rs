//! Shared helpers: file writes as editors do them, and bounded waits. (Scratch
//! directories: `lb_test_support::TempDir`.)

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, Once};
use std::thread::{self, ThreadId};
use std::time::Duration;

use futures_util::StreamExt;
use lb_core::discover::Update;
use lb_core::Endpoint;
use lb_discovery_static::{Error, Updates};
use tracing::field::{Field, Visit};
use tracing::{span, Event, Level, Metadata, Subscriber};

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

/// Collects the `warn` events of the current thread, each as `name=value` pairs, while
/// it lives.
///
/// The collector is a global subscriber that files events by thread: a thread-scoped
/// one (`set_default`) misses events when another test thread without a subscriber
/// registers the callsite first, because tracing caches the callsite's interest.
#[derive(Debug)]
pub(crate) struct Warnings {
    buf: Buffer,
}

type Buffer = Arc<Mutex<Vec<String>>>;

static CAPTURES: Mutex<Vec<(ThreadId, Buffer)>> = Mutex::new(Vec::new());

impl Warnings {
    pub(crate) fn capture() -> Self {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| tracing::subscriber::set_global_default(ByThread).expect("no other global subscriber"));
        let buf = Arc::default();
        CAPTURES
            .lock()
            .unwrap()
            .push((thread::current().id(), Arc::clone(&buf)));
        Self { buf }
    }

    pub(crate) fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.buf.lock().unwrap())
    }
}

impl Drop for Warnings {
    fn drop(&mut self) {
        CAPTURES.lock().unwrap().retain(|(_, buf)| !Arc::ptr_eq(buf, &self.buf));
    }
}

struct ByThread;

impl Subscriber for ByThread {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        if *event.metadata().level() != Level::WARN {
            return;
        }
        let me = thread::current().id();
        let captures = CAPTURES.lock().unwrap();
        if let Some((_, buf)) = captures.iter().find(|(id, _)| *id == me) {
            let mut line = String::new();
            event.record(&mut Fields(&mut line));
            buf.lock().unwrap().push(line);
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
