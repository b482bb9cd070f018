//! Hot reload: a changed config file or SIGHUP is read, checked, and handed to the
//! reconciler, which applies it. An invalid config is refused with a logged error, and
//! the running one stays.
//!
//! The file is watched as the endpoints file is ([`WatchedFile`]: directory events, a
//! slow poll, a debounce, and only a change of contents counts).

use std::path::PathBuf;
use std::sync::Arc;

use lb_discovery_static::WatchedFile;
use tokio::sync::{mpsc, watch};

use crate::config::{self, Config};
use crate::metrics::Metrics;
use crate::reconcile::FileUpdate;

/// Watches `path` and SIGHUP; hands each new valid config to the reconciler.
pub(crate) async fn watch(
    path: PathBuf,
    mut current: Config,
    to_reconciler: mpsc::UnboundedSender<FileUpdate>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut file = WatchedFile::new(path.clone());
    #[cfg(unix)]
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload on file change only");
            None
        }
    };
    loop {
        #[cfg(unix)]
        let sighup = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<Option<()>>();
        let why = tokio::select! {
            _ = file.changed() => "file changed",
            Some(()) = sighup => "SIGHUP",
            _ = stop.changed() => return,
        };
        let next = match config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                metrics.reload(false);
                tracing::error!(reason = why, error = %e, "config reload refused; the running config stays");
                continue;
            }
        };
        if next == current {
            tracing::debug!(reason = why, "config unchanged");
            continue;
        }
        for w in &next.warnings {
            tracing::warn!("config: {w}");
        }
        current = next.clone();
        if to_reconciler.send((next, why)).is_err() {
            return;
        }
    }
}
