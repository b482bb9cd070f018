//! A watched TOML endpoints file.

use std::collections::hash_map::{Entry, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Location};
use crate::resolve::{Engine, Updates, DEFAULT_DNS_REFRESH};
use crate::spec::{lookup, EndpointSpec};
use crate::watched::WatchedFile;

pub use crate::watched::{DEFAULT_DEBOUNCE, DEFAULT_POLL_INTERVAL};

/// A TOML file of endpoints, read at start and watched for changes.
///
/// The format is one array, `endpoints`, of [`EndpointSpec`] tables; unknown keys are
/// rejected, and so are malformed addresses and two entries with the same id:
///
/// ```toml
/// endpoints = [
///     { addr = "127.0.0.1:9001", weight = 3, id = "a", metadata = { zone = "a" } },
///     { addr = "web1:80" },   # a host name: one endpoint per address, re-resolved
/// ]
/// ```
///
/// [`watch`](Self::watch) reads the file once (failing if it cannot), then watches its
/// parent directory, because editors and config tools replace a file by renaming
/// another onto it; any change there, after [`debounce`](Self::debounce) of quiet,
/// makes it read the file again. Under the watcher a slow poll, every
/// [`poll_interval`](Self::poll_interval), compares the file's contents (length and
/// hash), for file systems whose events do not arrive (NFS, some container mounts) or
/// a watcher that could not start.
///
/// A change that parses yields `Update::Reset` if the resulting endpoint set differs
/// from the last one. A change that does not parse (or a file that cannot be read) is
/// logged at `warn` with the file, line and column, and the last good set stays: a bad
/// edit never empties the balancer. The next change is tried again. Host names are
/// resolved as in [`resolve_stream`](crate::resolve_stream).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// use lb_discovery_static::EndpointsFile;
///
/// let file = EndpointsFile::new("/etc/lb/endpoints.toml")
///     .poll_interval(Duration::from_secs(10))
///     .dns_refresh(Duration::from_secs(30));
/// assert_eq!(file.path().to_str(), Some("/etc/lb/endpoints.toml"));
/// // `file.watch()?` is a discovery source for a balancer.
/// ```
#[derive(Clone, Debug)]
pub struct EndpointsFile {
    path: PathBuf,
    poll_interval: Duration,
    debounce: Duration,
    dns_refresh: Duration,
    fs_events: bool,
}

// === impl EndpointsFile ===

impl EndpointsFile {
    /// The file at `path`, with the default intervals.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            debounce: DEFAULT_DEBOUNCE,
            dns_refresh: DEFAULT_DNS_REFRESH,
            fs_events: true,
        }
    }

    /// How often to poll the file regardless of events ([`DEFAULT_POLL_INTERVAL`]).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every.max(Duration::from_millis(10));
        self
    }

    /// How long the file must be quiet after a change before it is read
    /// ([`DEFAULT_DEBOUNCE`]). Waiting is capped at ten times this.
    pub fn debounce(mut self, quiet: Duration) -> Self {
        self.debounce = quiet;
        self
    }

    /// How often host names are re-resolved ([`DEFAULT_DNS_REFRESH`]).
    pub fn dns_refresh(mut self, every: Duration) -> Self {
        self.dns_refresh = every;
        self
    }

    /// Whether to use the platform's file events (inotify, FSEvents, ...) besides the
    /// poll; on by default. Turn it off where events are known not to work.
    pub fn fs_events(mut self, enabled: bool) -> Self {
        self.fs_events = enabled;
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and parses the file once, without resolving names.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if it cannot be read, [`Error::Parse`] (with line and column) if
    /// it is not a valid endpoints file.
    pub fn load(&self) -> Result<Vec<EndpointSpec>, Error> {
        let bytes = std::fs::read(&self.path).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        parse(&self.path, &bytes)
    }

    /// Reads the file and starts watching it: the returned stream yields the first
    /// `Reset` once names (if any) have been looked up, then one per change.
    ///
    /// The stream does its work while it is polled, inside a Tokio runtime; dropping
    /// it stops the watcher. Reading happens here, synchronously, so a bad file is
    /// reported to the caller (at start-up or on a config reload) rather than logged.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load). A file watcher that cannot start is not an error: it
    /// is logged and the poll carries on alone.
    pub fn watch(self) -> Result<Updates, Error> {
        // Watch before reading, so that no change can fall between the two.
        let mut file = WatchedFile::with(&self.path, self.poll_interval, self.debounce, self.fs_events);
        let read = std::fs::read(&self.path);
        file.mark_seen(&read);
        let bytes = read.map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        let specs = parse(&self.path, &bytes)?;

        let (specs_tx, specs_rx) = watch::channel(Arc::new(specs.clone()));
        let (tx, rx) = mpsc::channel(4);
        let engine = Engine::new(self.dns_refresh, tx, Arc::new(lookup));
        let file = FileLoop {
            file,
            last: specs.clone(),
            specs_tx,
            cfg: self,
        };
        Ok(Updates::new(rx, async move {
            tokio::join!(engine.run(specs, Some(specs_rx)), file.run());
        }))
    }
}

/// The file's format.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    endpoints: Vec<toml::Spanned<EndpointSpec>>,
}

/// Parses an endpoints file; errors carry the line and column.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<EndpointSpec>, Error> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Error::parse_at(path, bytes, Some(e.valid_up_to()), "the file is not valid UTF-8"))?;
    let file: FileFormat =
        toml::from_str(text).map_err(|e| Error::parse_at(path, bytes, e.span().map(|s| s.start), e.message()))?;
    let mut first_at = HashMap::new();
    let mut specs = Vec::with_capacity(file.endpoints.len());
    for entry in file.endpoints {
        let at = entry.span().start;
        let spec = entry.into_inner();
        let base = match spec.target() {
            Ok(_) => spec.base_id().unwrap_or_default(),
            Err(e) => return Err(Error::parse_at(path, bytes, Some(at), e.to_string())),
        };
        match first_at.entry(base) {
            Entry::Vacant(v) => {
                v.insert(at);
            }
            Entry::Occupied(o) => {
                let first = Location::of(bytes, *o.get());
                let message = format!("duplicate endpoint id `{}` (first at line {})", o.key(), first.line);
                return Err(Error::parse_at(path, bytes, Some(at), message));
            }
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// Reads the file on events and polls; sends each new good spec list to the engine.
struct FileLoop {
    cfg: EndpointsFile,
    file: WatchedFile,
    /// The last good specs sent.
    last: Vec<EndpointSpec>,
    specs_tx: watch::Sender<Arc<Vec<EndpointSpec>>>,
}

// === impl FileLoop ===

impl FileLoop {
    async fn run(mut self) {
        loop {
            tokio::select! {
                read = self.file.changed() => {
                    if !self.check(read) {
                        return;
                    }
                }
                () = self.specs_tx.closed() => return,
            }
        }
    }

    /// Parses a changed file and passes good specs on. `false` once nobody listens.
    fn check(&mut self, read: io::Result<Vec<u8>>) -> bool {
        let path = &self.cfg.path;
        let parsed = read
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })
            .and_then(|bytes| parse(path, &bytes));
        match parsed {
            Ok(specs) if specs == self.last => {
                tracing::debug!(file = %path.display(), "endpoints file rewritten without a change");
                true
            }
            Ok(specs) => {
                tracing::info!(file = %path.display(), endpoints = specs.len(), "endpoints file changed");
                self.last = specs.clone();
                self.specs_tx.send(Arc::new(specs)).is_ok()
            }
            Err(error) => {
                let location = error.location();
                // The file and the position are fields of their own; keep them out of `error`.
                let detail = match &error {
                    Error::Parse { message, .. } => message.clone(),
                    Error::Io { source, .. } => source.to_string(),
                    other => other.to_string(),
                };
                tracing::warn!(
                    file = %path.display(),
                    line = location.map(|l| l.line),
                    column = location.map(|l| l.column),
                    error = %detail,
                    "bad endpoints file; keeping the last good endpoints until the next change"
                );
                true
            }
        }
    }
}

impl fmt::Debug for FileLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileLoop")
            .field("cfg", &self.cfg)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> (Location, String) {
        match parse(Path::new("e.toml"), text.as_bytes()) {
            Err(Error::Parse {
                location: Some(loc),
                message,
                ..
            }) => (loc, message),
            other => panic!("expected a parse error with a location, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_format() {
        let text = r#"
endpoints = [
    { addr = "127.0.0.1:9001", weight = 3, id = "a", metadata = { zone = "a" } },
    { addr = "web1:80" },
]
"#;
        let specs = parse(Path::new("e.toml"), text.as_bytes()).unwrap();
        assert_eq!(
            specs,
            [
                EndpointSpec::new("127.0.0.1:9001")
                    .with_weight(3)
                    .with_id("a")
                    .with_metadata("zone", "a"),
                EndpointSpec::new("web1:80"),
            ]
        );
        let text = "[[endpoints]]\naddr = \"127.0.0.1:1\"\n";
        assert_eq!(parse(Path::new("e.toml"), text.as_bytes()).unwrap().len(), 1);
        assert!(parse(Path::new("e.toml"), b"endpoints = []").unwrap().is_empty());
    }

    #[test]
    fn errors_point_at_the_mistake() {
        let (loc, msg) = err("endpoints = [\n  { addr = \"127.0.0.1:1\", wieght = 2 },\n]\n");
        assert_eq!(loc.line, 2, "{msg}");
        assert!(msg.contains("wieght"), "{msg}");

        let (loc, msg) = err("endpoints = [\n  { addr = \"127.0.0.1:1\" },\n  { addr = \"nope\" },\n]\n");
        assert_eq!(loc.line, 3, "{msg}");
        assert!(msg.contains("nope"), "{msg}");

        let (loc, msg) = err("endpoints = [\n  { addr = \"127.0.0.1:1\" },\n  { addr = \"127.0.0.1:1\" },\n]\n");
        assert_eq!(loc, Location { line: 3, column: 3 }, "{msg}");
        assert!(msg.contains("duplicate") && msg.contains("line 2"), "{msg}");

        let (loc, _) = err("endpoints = [\n  { addr = \"127.0.0.1:1\", id = \"\" },\n]\n");
        assert_eq!(loc.line, 2);

        let (loc, msg) = err("endpoints = [\n  { addr = \"127.0.0.1:1\" \n");
        assert!(loc.line >= 2, "{msg}");

        let (loc, msg) = err("servers = []\n");
        assert_eq!(loc.line, 1, "{msg}");

        // An empty file (a truncation caught mid-write) is an error, not an empty set.
        assert!(parse(Path::new("e.toml"), b"").is_err());

        match parse(
            Path::new("e.toml"),
            "endpoints = [] # \u{e9}\n# \u{e9}".as_bytes().split_last().unwrap().1,
        ) {
            Err(e) => assert_eq!(e.location(), Some(Location { line: 2, column: 3 }), "{e}"),
            Ok(_) => panic!("invalid UTF-8 accepted"),
        }
    }
}
