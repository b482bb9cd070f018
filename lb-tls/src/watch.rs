//! Reloading the configured certificates when their files change.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use lb_discovery_static::{WatchedFile, DEFAULT_DEBOUNCE, DEFAULT_POLL_INTERVAL};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::store::{CertSource, CertStore};

/// How often a [`CertSource::Dir`] is listed by [`CertStore::watch`].
const DEFAULT_DIR_POLL_INTERVAL: Duration = Duration::from_secs(2);

impl CertStore {
    /// Reloads `sources` (as [`load`](Self::load)) whenever one of their files changes:
    /// the certificate or key file of a [`CertSource::Files`], the listing of a
    /// [`CertSource::Dir`] or any file in it (names, sizes and modification times, listed
    /// every 2 s). Files are watched with file events, and polled every 5 s as well.
    ///
    /// A reload that fails is logged as a warning and changes nothing: the certificates
    /// loaded before are still served, and the next change is tried again (a renewal that
    /// writes the certificate and then the key fails in between, and succeeds once the key
    /// is written). Environment variables do not change; they are reloaded along with the
    /// rest.
    ///
    /// The sources are reloaded once when the future starts, so that a change between the
    /// caller's `load` and the start of the watch is not missed. The future never ends:
    /// spawn it, and abort it to stop watching. It needs a Tokio runtime with timers.
    pub fn watch(&self, sources: Vec<CertSource>) -> impl Future<Output = ()> + Send + 'static {
        self.watch_inner(
            sources,
            DEFAULT_POLL_INTERVAL,
            DEFAULT_DIR_POLL_INTERVAL,
            DEFAULT_DEBOUNCE,
        )
    }

    /// As [`watch`](Self::watch), polling files and directories every `poll` (at least
    /// 10 ms), and waiting at most `poll` for a changed file to be quiet before reading it.
    pub fn watch_with_interval(
        &self,
        sources: Vec<CertSource>,
        poll: Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        self.watch_inner(sources, poll, poll, DEFAULT_DEBOUNCE.min(poll))
    }

    fn watch_inner(
        &self,
        sources: Vec<CertSource>,
        file_poll: Duration,
        dir_poll: Duration,
        debounce: Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        let store = self.clone();
        let sources = Arc::new(sources);
        async move {
            let mut watches = Vec::new();
            let mut seen_paths: Vec<PathBuf> = Vec::new();
            let mut add_file = |path: &PathBuf, watches: &mut Vec<Watch>| {
                if !seen_paths.contains(path) {
                    seen_paths.push(path.clone());
                    watches.push(Watch::File(WatchedFile::with(path, file_poll, debounce, true)));
                }
            };
            for source in sources.iter() {
                match source {
                    CertSource::Files { cert, key, .. } => {
                        add_file(cert, &mut watches);
                        add_file(key, &mut watches);
                    }
                    CertSource::Dir(dir) => watches.push(Watch::Dir(DirWatch::new(dir.clone(), dir_poll).await)),
                    CertSource::Env { .. } => {}
                }
            }
            // Watching started before this read: no change can fall between the two.
            reload(&store, &sources, None).await;
            loop {
                let changed = {
                    let mut pending: Vec<_> = watches.iter_mut().map(|w| Box::pin(w.changed())).collect();
                    std::future::poll_fn(|cx| {
                        for fut in &mut pending {
                            if let Poll::Ready(what) = fut.as_mut().poll(cx) {
                                return Poll::Ready(what);
                            }
                        }
                        Poll::Pending
                    })
                    .await
                };
                reload(&store, &sources, Some(changed)).await;
            }
        }
    }
}

/// Loads `sources` into `store` off the runtime's threads, logging the outcome.
async fn reload(store: &CertStore, sources: &Arc<Vec<CertSource>>, changed: Option<String>) {
    let (s, src) = (store.clone(), sources.clone());
    let loaded = match tokio::task::spawn_blocking(move || s.load(&src)).await {
        Ok(loaded) => loaded,
        Err(join) => {
            tracing::warn!(error = %join, "certificate reload failed; still serving the certificates loaded before");
            return;
        }
    };
    match (loaded, changed) {
        (Ok(()), Some(changed)) => tracing::info!(
            %changed,
            certificates = store.certificates().len(),
            "certificates reloaded"
        ),
        (Ok(()), None) => {}
        (Err(error), changed) => tracing::warn!(
            %error,
            changed = changed.as_deref().unwrap_or("-"),
            "cannot reload certificates; still serving the certificates loaded before"
        ),
    }
}

/// One thing watched: a file, or a directory.
#[derive(Debug)]
enum Watch {
    File(WatchedFile),
    Dir(DirWatch),
}

impl Watch {
    /// Waits for the next change; returns what changed, for the log. Cancel-safe.
    async fn changed(&mut self) -> String {
        match self {
            Self::File(file) => {
                let _ = file.changed().await;
                file.path().display().to_string()
            }
            Self::Dir(dir) => dir.changed().await,
        }
    }
}

/// A directory polled for a change of its listing: names, sizes and modification times
/// (of the files links point to).
#[derive(Debug)]
struct DirWatch {
    path: PathBuf,
    seen: Listing,
    poll: Interval,
}

type Listing = Result<Vec<(std::ffi::OsString, u64, Option<SystemTime>)>, io::ErrorKind>;

impl DirWatch {
    async fn new(path: PathBuf, every: Duration) -> Self {
        let every = every.max(Duration::from_millis(10));
        let seen = list(path.clone()).await;
        let mut poll = tokio::time::interval_at(Instant::now() + every, every);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { path, seen, poll }
    }

    /// Cancel-safe: changes are judged against the listing last reported.
    async fn changed(&mut self) -> String {
        loop {
            self.poll.tick().await;
            let now = list(self.path.clone()).await;
            if now != self.seen {
                self.seen = now;
                return self.path.display().to_string();
            }
        }
    }
}

async fn list(dir: PathBuf) -> Listing {
    let listed = tokio::task::spawn_blocking(move || -> Listing {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| e.kind())? {
            let entry = entry.map_err(|e| e.kind())?;
            let (len, modified) = match std::fs::metadata(entry.path()) {
                Ok(m) => (m.len(), m.modified().ok()),
                Err(_) => (0, None),
            };
            out.push((entry.file_name(), len, modified));
        }
        out.sort();
        Ok(out)
    })
    .await;
    listed.unwrap_or(Err(io::ErrorKind::Other))
}
