//! [`ConfigError`], and how a byte offset or a key path becomes `file:line:column: key`.
//!
//! Two kinds of fault reach the user. The TOML deserializer reports syntax errors, unknown
//! keys and wrong types with a byte span ([`toml::de::Error::span`]); validation after
//! deserialising reports a [`KeyPath`] such as `services[0].balance`. Both are placed in
//! the file through one index of the document: [`SpanIndex`] walks the parsed document
//! (toml_edit, the parser under `toml`) once and records, for every key and value, its path
//! and its byte span. A span finds its path (the smallest entry containing it) and a path
//! finds its span (the value, else the key, else the nearest enclosing table).

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, Item, Table, Value};

/// A configuration file that could not be read or is not valid.
///
/// The `Display` form is one line, made to be printed as is before exiting with code 2:
///
/// ```text
/// web.toml:7:11: services[0].balance: unknown policy "round-robin" (expected one of ...)
/// ```
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file named to [`load`](super::load).
        path: PathBuf,
        /// Why reading failed.
        source: io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{location}: {message}")]
    Invalid {
        /// Where the fault is: file, line, column and key.
        location: Location,
        /// What is wrong, and where it helps, what is expected instead.
        message: String,
    },
}

/// The place of a fault in a configuration file.
///
/// Displays as `file:line:column: key`, or `file:line:column` when the fault (a TOML syntax
/// error) belongs to no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    /// The file, as it was named to [`load`](super::load) or [`parse`](super::parse).
    pub(crate) file: PathBuf,
    /// 1-based line.
    pub(crate) line: usize,
    /// 1-based column, counted in characters.
    pub(crate) column: usize,
    /// The key path at fault, such as `services[0].endpoints[1].weight`; empty when none.
    pub(crate) key: String,
}

// === impl Location ===

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        Ok(())
    }
}

/// One step of a [`KeyPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// A path from the document root to a key, written `services[0].health.rise`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(super) struct KeyPath(Vec<Seg>);

// === impl KeyPath ===

impl KeyPath {
    /// The root of the document.
    pub(super) fn root() -> Self {
        Self::default()
    }

    /// This path extended by a key.
    pub(super) fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        Self(segs)
    }

    /// This path extended by an array index.
    pub(super) fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Self(segs)
    }

    fn push(&mut self, seg: Seg) {
        self.0.push(seg);
    }

    fn pop(&mut self) {
        self.0.pop();
    }

    fn parent(&self) -> Option<Self> {
        let (_, rest) = self.0.split_last()?;
        Some(Self(rest.to_vec()))
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(key) if i == 0 => f.write_str(key)?,
                Seg::Key(key) => write!(f, ".{key}")?,
                Seg::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A fault found by validation: the key at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Invalid {
    pub(super) path: KeyPath,
    pub(super) message: String,
}

// === impl Invalid ===

impl Invalid {
    pub(super) fn new(path: &KeyPath, message: impl Into<String>) -> Self {
        Self {
            path: path.clone(),
            message: message.into(),
        }
    }
}

/// One key or value of the document: its path and where its key and value are.
#[derive(Debug)]
struct Entry {
    path: KeyPath,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
}

/// The path and span of every key and value in a document.
#[derive(Debug, Default)]
pub(super) struct SpanIndex {
    entries: Vec<Entry>,
    /// The first entry of each path, so that placing a fault costs a lookup, not a scan
    /// (a file with thousands of warnings places them all in linear time).
    by_path: std::collections::HashMap<KeyPath, usize>,
    /// The byte offset where each line starts, for the same reason.
    line_starts: Vec<usize>,
}

// === impl SpanIndex ===

impl SpanIndex {
    /// Indexes `text`; an unparsable text gives an empty index (every lookup then misses).
    pub(super) fn new(text: &str) -> Self {
        let mut index = Self {
            line_starts: std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
            ..Self::default()
        };
        if let Ok(doc) = ImDocument::parse(text) {
            index.table(doc.as_table(), &mut KeyPath::root());
        }
        index
    }

    fn table(&mut self, table: &Table, path: &mut KeyPath) {
        for (key, item) in table.iter() {
            let key_span = table.key(key).and_then(|k| k.span());
            path.push(Seg::Key(key.to_owned()));
            self.item(item, key_span, path);
            path.pop();
        }
    }

    fn item(&mut self, item: &Item, key: Option<Range<usize>>, path: &mut KeyPath) {
        match item {
            Item::None => {}
            Item::Value(value) => {
                self.push(path, key, value.span());
                self.value(value, path);
            }
            Item::Table(table) => {
                self.push(path, key, table.span());
                self.table(table, path);
            }
            Item::ArrayOfTables(array) => {
                self.push(path, key, array.span());
                for (i, table) in array.iter().enumerate() {
                    path.push(Seg::Index(i));
                    self.push(path, None, table.span());
                    self.table(table, path);
                    path.pop();
                }
            }
        }
    }

    fn value(&mut self, value: &Value, path: &mut KeyPath) {
        match value {
            Value::Array(array) => {
                for (i, element) in array.iter().enumerate() {
                    path.push(Seg::Index(i));
                    self.push(path, None, element.span());
                    self.value(element, path);
                    path.pop();
                }
            }
            Value::InlineTable(table) => {
                for (key, element) in table.iter() {
                    let key_span = table.key(key).and_then(|k| k.span());
                    path.push(Seg::Key(key.to_owned()));
                    self.push(path, key_span, element.span());
                    self.value(element, path);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    fn push(&mut self, path: &KeyPath, key: Option<Range<usize>>, value: Option<Range<usize>>) {
        self.by_path.entry(path.clone()).or_insert(self.entries.len());
        self.entries.push(Entry {
            path: path.clone(),
            key,
            value,
        });
    }

    /// The path of the innermost key or value at byte `offset`.
    fn path_at(&self, offset: usize) -> Option<&KeyPath> {
        let contains = |span: &Option<Range<usize>>| {
            span.as_ref()
                .filter(|s| s.contains(&offset) || s.start == offset)
                .map(|s| s.len())
        };
        self.entries
            .iter()
            .filter_map(|e| {
                let len = [contains(&e.key), contains(&e.value)].into_iter().flatten().min()?;
                Some((len, e))
            })
            // The smallest span wins; between equals, the deeper path.
            .min_by(|(a, x), (b, y)| a.cmp(b).then(y.path.0.len().cmp(&x.path.0.len())))
            .map(|(_, e)| &e.path)
    }

    /// Where `path` is: its value, else its key; for a key not in the file (a required key
    /// left out), the table that lacks it; the start of the file when nothing matches.
    fn span_of(&self, path: &KeyPath) -> usize {
        let mut path = Some(path.clone());
        while let Some(p) = path {
            if let Some(e) = self.by_path.get(&p).map(|&i| &self.entries[i]) {
                if let Some(span) = e.value.as_ref().or(e.key.as_ref()) {
                    return span.start;
                }
            }
            path = p.parent();
        }
        0
    }
}

/// Line and column (both 1-based, the column in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

impl SpanIndex {
    /// [`line_column`] with the line found by a binary search of the line starts.
    fn line_column(&self, text: &str, offset: usize) -> (usize, usize) {
        if self.line_starts.is_empty() {
            return line_column(text, offset);
        }
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        (line, text[start..offset].chars().count() + 1)
    }
}

fn invalid(file: &Path, text: &str, offset: usize, key: String, message: String) -> ConfigError {
    let (line, column) = line_column(text, offset);
    ConfigError::Invalid {
        location: Location {
            file: file.to_owned(),
            line,
            column,
            key,
        },
        message,
    }
}

/// A fault reported by the TOML deserializer, placed and named.
pub(super) fn from_toml(file: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    // One line: toml's parser may put its expectation on a line of its own.
    let message = err
        .message()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    // serde speaks of struct fields; a TOML file has keys.
    let message = match message.strip_prefix("unknown field") {
        Some(rest) => format!("unknown key{rest}"),
        None => message,
    };
    let Some(span) = err.span() else {
        return invalid(file, text, 0, String::new(), message);
    };
    let key = SpanIndex::new(text)
        .path_at(span.start)
        .map(ToString::to_string)
        .unwrap_or_default();
    // A value of the wrong type is quoted in serde's message: never a secret's.
    let message = if is_secret(&key) {
        "not a valid value (it is not shown: this key holds a secret)".to_string()
    } else {
        message
    };
    invalid(file, text, span.start, key, message)
}

/// Keys whose values are secrets: no message may quote them.
fn is_secret(key: &str) -> bool {
    matches!(key, "admin.token" | "admin.password")
}

/// A fault found by validation, placed in the file.
pub(super) fn from_invalid(file: &Path, text: &str, index: &SpanIndex, fault: Invalid) -> ConfigError {
    let offset = index.span_of(&fault.path);
    let (line, column) = index.line_column(text, offset);
    ConfigError::Invalid {
        location: Location {
            file: file.to_owned(),
            line,
            column,
            key: fault.path.to_string(),
        },
        message: fault.message,
    }
}
