//! Discovery source (work in progress).
