//! Hot reload: a changed config file (watched) or SIGHUP is read, checked, and handed to
//! the reconciler, which applies it. An invalid config is refused with a logged error,
//! and the running one stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::config::{self, Config};
use crate::metrics::Metrics;
use crate::reconcile::FileUpdate;

/// Watches `path` (through its directory, as editors replace files) and SIGHUP;
/// reloads on either, debounced.
pub(crate) async fn watch(
    path: PathBuf,
    mut current: Config,
    to_reconciler: mpsc::UnboundedSender<FileUpdate>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<&'static str>();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let file_name = path.file_name().map(|n| n.to_os_string());
    let fs_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if ev
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name)
            {
                let _ = fs_tx.send("file changed");
            }
        }
    });
    let _watcher = match watcher {
        Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; reload on SIGHUP only");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher; reload on SIGHUP only");
            None
        }
    };
    #[cfg(unix)]
    {
        let hup_tx = tx.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                if hup_tx.send("SIGHUP").is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    loop {
        let why = tokio::select! {
            w = rx.recv() => match w { Some(w) => w, None => return },
            _ = stop.changed() => return,
        };
        // Debounce: editors write in several steps.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while rx.try_recv().is_ok() {}
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
