//! A watched file: the one mechanism behind the endpoints file and the proxy's config file.
//!
//! Events on the file's directory (editors and config tools replace a file by renaming
//! another onto it) wake it; a slow poll compares the contents too, for file systems whose
//! events never arrive (NFS, some container mounts) or a watcher that could not start.
//! After a change it waits for the file to be quiet (the debounce), then reads it, and
//! reports only a change of contents (length and hash), or of the error reading it.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// How often a watched file is polled by default, as a safety net under the file watcher.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// How long a watched file must be quiet after a change before it is read, by default.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);

/// A file watched for changes of its contents.
///
/// # Examples
///
/// ```no_run
/// use lb_discovery_static::WatchedFile;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut file = WatchedFile::new("/etc/lb/lb.toml");
/// loop {
///     match file.changed().await {
///         Ok(bytes) => println!("new contents: {} bytes", bytes.len()),
///         Err(e) => println!("cannot read it now: {e}"),
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct WatchedFile {
    path: PathBuf,
    debounce: Duration,
    poll: Interval,
    signal: Arc<Notify>,
    seen: Seen,
    /// Kept for its lifetime: dropping it stops the watch.
    _watcher: Option<RecommendedWatcher>,
}

impl WatchedFile {
    /// Watches `path` with file events, [`DEFAULT_POLL_INTERVAL`] and [`DEFAULT_DEBOUNCE`].
    /// The contents as they are now count as seen: [`changed`](Self::changed) reports the
    /// next change. Needs a Tokio runtime.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::with(path, DEFAULT_POLL_INTERVAL, DEFAULT_DEBOUNCE, true)
    }

    /// Watches `path` with the given poll interval (at least 10 ms) and debounce, and file
    /// events unless `fs_events` is false.
    pub fn with(path: impl Into<PathBuf>, poll_interval: Duration, debounce: Duration, fs_events: bool) -> Self {
        let path = path.into();
        let signal = Arc::new(Notify::new());
        // Watch before reading, so that no change can fall between the two.
        let watcher = if fs_events {
            start_watcher(&path, signal.clone())
        } else {
            None
        };
        let seen = Seen::of(&std::fs::read(&path));
        let every = poll_interval.max(Duration::from_millis(10));
        let mut poll = tokio::time::interval_at(Instant::now() + every, every);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            path,
            debounce,
            poll,
            signal,
            seen,
            _watcher: watcher,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the contents read elsewhere as seen, so they are not reported again.
    pub fn mark_seen(&mut self, read: &io::Result<Vec<u8>>) {
        self.seen = Seen::of(read);
    }

    /// Waits for the next change of the file's contents (or of the error reading it), and
    /// returns what a read now gives. Cancel-safe: dropping the future loses no change,
    /// since changes are judged against the contents last returned.
    pub async fn changed(&mut self) -> io::Result<Vec<u8>> {
        loop {
            let event = tokio::select! {
                () = self.signal.notified() => true,
                _ = self.poll.tick() => false,
            };
            if !event && Seen::of(&tokio::fs::read(&self.path).await) == self.seen {
                continue;
            }
            self.quiet().await;
            let read = tokio::fs::read(&self.path).await;
            let seen = Seen::of(&read);
            if seen != self.seen {
                self.seen = seen;
                return read;
            }
        }
    }

    /// Waits until no event has come for the debounce (at most ten times that).
    async fn quiet(&self) {
        let quiet = self.debounce;
        if quiet.is_zero() {
            return;
        }
        let cap = Instant::now() + quiet * 10;
        loop {
            let deadline = (Instant::now() + quiet).min(cap);
            match tokio::time::timeout_at(deadline, self.signal.notified()).await {
                Ok(()) if Instant::now() < cap => {}
                _ => return,
            }
        }
    }
}

/// Watches the file's parent directory; every relevant event wakes `signal`.
fn start_watcher(path: &Path, signal: Arc<Notify>) -> Option<RecommendedWatcher> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_os_string());
    let handler = move |event: notify::Result<notify::Event>| match event {
        // Reads (ours included) are no change; a write being closed is.
        Ok(event) if matches!(event.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write)) => {}
        // Another file of the directory.
        Ok(event)
            if !event.paths.is_empty()
                && !event
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == name) => {}
        Ok(_) => signal.notify_one(),
        Err(error) => {
            tracing::debug!(%error, "file watcher error; checking the file");
            signal.notify_one();
        }
    };
    let started = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match started {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(
                file = %path.display(),
                %error,
                "cannot watch the file's directory; polling it only"
            );
            None
        }
    }
}

/// What a read of the file found, to tell a change from none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Content { len: usize, hash: u64 },
    Failed(io::ErrorKind),
}

impl Seen {
    fn of(read: &io::Result<Vec<u8>>) -> Self {
        match read {
            Ok(bytes) => {
                let mut h = DefaultHasher::new();
                bytes.hash(&mut h);
                Self::Content {
                    len: bytes.len(),
                    hash: h.finish(),
                }
            }
            Err(e) => Self::Failed(e.kind()),
        }
    }
}
