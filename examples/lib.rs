//! Runnable examples of the lb crates, and the code they share.
//!
//! The examples themselves are the `[[example]]` targets listed in `examples/README.md`;
//! this library holds what an example and its tests both need.

pub mod sim;
