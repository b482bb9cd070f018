//! Errors of this crate.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What can go wrong reading endpoints or resolving their names.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The endpoints file could not be read.
    #[error("cannot read endpoints file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The endpoints file is not valid: bad TOML, an unknown key, a malformed address,
    /// a duplicate id.
    #[error("{}{}: {message}", path.display(), OptLocation(*location))]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where in the file, when known.
        location: Option<Location>,
        /// What is wrong.
        message: String,
    },
    /// An [`EndpointSpec`](crate::EndpointSpec) built in code is malformed.
    #[error("invalid endpoint `{addr}`: {reason}")]
    InvalidSpec {
        /// The address as given.
        addr: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A host name could not be resolved.
    #[error("cannot resolve `{name}`: {source}")]
    Resolve {
        /// `host:port`.
        name: String,
        /// The cause (a timeout is [`io::ErrorKind::TimedOut`]).
        #[source]
        source: io::Error,
    },
}

/// A position in a file, both counted from 1 (the column in characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The line, from 1.
    pub line: usize,
    /// The column, from 1, in characters.
    pub column: usize,
}

// === impl Error ===

impl Error {
    /// The file the error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Io { path, .. } | Self::Parse { path, .. } => Some(path),
            Self::InvalidSpec { .. } | Self::Resolve { .. } => None,
        }
    }

    /// Where in the file the error is, when known.
    pub fn location(&self) -> Option<Location> {
        match self {
            Self::Parse { location, .. } => *location,
            _ => None,
        }
    }

    /// Builds a parse error at a byte offset of `text`.
    pub(crate) fn parse_at(path: &Path, text: &[u8], offset: Option<usize>, message: impl Into<String>) -> Self {
        Self::Parse {
            path: path.to_path_buf(),
            location: offset.map(|offset| Location::of(text, offset)),
            message: message.into(),
        }
    }
}

// === impl Location ===

impl Location {
    /// The line and column of byte `offset` in `text`.
    pub(crate) fn of(text: &[u8], offset: usize) -> Self {
        let before = &text[..offset.min(text.len())];
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        // Count characters, not bytes: skip UTF-8 continuation bytes.
        let column = before[line_start..].iter().filter(|&&b| b & 0xC0 != 0x80).count() + 1;
        Self { line, column }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

struct OptLocation(Option<Location>);

impl fmt::Display for OptLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(loc) => write!(f, ":{loc}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let text = "a\nbé c\n".as_bytes();
        assert_eq!(Location::of(text, 0), Location { line: 1, column: 1 });
        assert_eq!(Location::of(text, 2), Location { line: 2, column: 1 });
        // "bé " is 4 bytes and 3 characters: byte 6 is 'c', column 4.
        assert_eq!(Location::of(text, 6), Location { line: 2, column: 4 });
        let err = Error::parse_at(Path::new("x.toml"), text, Some(6), "bad");
        assert_eq!(err.to_string(), "x.toml:2:4: bad");
        let err = Error::parse_at(Path::new("x.toml"), text, None, "bad");
        assert_eq!(err.to_string(), "x.toml: bad");
    }
}
