//! `[source]`: how messages arrive, and the write use case that keeps its promises.

pub mod config;
