//! Integration tests: the watched endpoints file, name resolution, the fixed list.

mod file;
mod resolve;
mod support;
