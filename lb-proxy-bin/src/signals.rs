//! The process's signals, taken over before anything else runs.
//!
//! SIGHUP's default action ends a process: a SIGHUP sent in the first moments after
//! start (a config tool that writes the file and signals at once) must find the proxy
//! already listening for it, not kill it. So `lb-proxy run` installs its handlers first,
//! then reads the config. SIGTERM and SIGINT ask for a graceful stop; a second one while
//! it runs ends the process at once.

/// The stop signals, and SIGHUP kept from killing the process.
#[derive(Debug)]
pub(crate) struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    /// Held so that SIGHUP is handled (reload listens to it on its own).
    #[cfg(unix)]
    _hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers. Needs a Tokio runtime.
    ///
    /// # Errors
    ///
    /// When a handler cannot be installed.
    pub(crate) fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                _hup: signal(SignalKind::hangup())?,
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Waits for the next SIGTERM or SIGINT; its name.
    pub(crate) async fn stop(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
