//! `[consumer]`: delivery of a namespace's messages to its targets.

pub mod config;
