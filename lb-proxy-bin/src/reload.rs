//! Hot reload: a changed config file or SIGHUP is read, checked, and handed to the
//! reconciler, which applies it. An invalid config is refused with a logged error, and
//! the running one stays.
//!
//! The file is watched as the endpoints file is ([`WatchedFile`]: directory events, a
//! slow poll, a debounce, and only a change of contents counts). A file that would leave
//! nothing to serve (no service, route, TCP listener or provider) while something is
//! served is taken for a file caught empty or cut short mid-write, and refused, unless
//! it says `services = []`.

use std::path::PathBuf;
use std::sync::Arc;

use lb_discovery_static::WatchedFile;
use tokio::sync::{mpsc, watch};

use crate::config::{self, Config, ConfigError};
use crate::metrics::Metrics;
use crate::reconcile::FileUpdate;

/// Watches `path` and SIGHUP; hands each new valid config to the reconciler.
pub(crate) async fn watch(
    path: PathBuf,
    mut file: WatchedFile,
    mut current: Config,
    to_reconciler: mpsc::UnboundedSender<FileUpdate>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
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
        let (why, read) = tokio::select! {
            r = file.changed() => ("file changed", Some(r)),
            Some(()) = sighup => ("SIGHUP", None),
            _ = stop.changed() => return,
        };
        // Parsed and checked off the request threads: a file of thousands of services
        // never holds up traffic.
        let at = path.clone();
        let loaded = tokio::task::spawn_blocking(move || match read {
            Some(Ok(bytes)) => match String::from_utf8(bytes) {
                Ok(text) => config::parse(&text, &at),
                Err(e) => Err(ConfigError::Read {
                    path: at,
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                }),
            },
            Some(Err(source)) => Err(ConfigError::Read { path: at, source }),
            None => config::load(&at),
        })
        .await;
        let next = match loaded {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                metrics.reload(false);
                tracing::error!(reason = why, error = %e, "config reload refused; the running config stays");
                continue;
            }
            Err(e) => {
                metrics.reload(false);
                tracing::error!(reason = why, error = %e, "config reload failed; the running config stays");
                continue;
            }
        };
        if next.is_empty() && !next.empty_on_purpose && !current.is_empty() {
            // A file caught empty or cut short mid-rewrite would drop every service and
            // route (404 for everything). The next complete write is read as usual.
            metrics.reload(false);
            tracing::error!(
                reason = why,
                file = %path.display(),
                "config reload refused: the file has no services, routes, TCP listeners or providers (empty, or \
                 caught mid-write?); the running config stays. Write `services = []` to mean it"
            );
            continue;
        }
        if next == current {
            tracing::debug!(reason = why, "config unchanged");
            continue;
        }
        for w in &next.warnings {
            tracing::warn!("config: {w}");
        }
        let (done, applied) = tokio::sync::oneshot::channel();
        if to_reconciler.send((next.clone(), why, done)).is_err() {
            return;
        }
        // Only what was applied becomes the config the next read is compared with: a file
        // refused because, say, its endpoints file did not exist yet is applied on the next
        // SIGHUP once it does.
        if applied.await == Ok(true) {
            current = next;
        }
    }
}
