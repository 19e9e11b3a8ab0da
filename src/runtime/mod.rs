//! The running service: the supervisor that owns the running namespaces and reloads
//! them, each namespace with its storage, and delivery (lanes, retries, the DLQ).

pub mod counters;
pub mod namespace;
pub mod resources;
pub mod supervisor;
pub mod tailer;
pub mod watcher;

pub use namespace::Namespace;
