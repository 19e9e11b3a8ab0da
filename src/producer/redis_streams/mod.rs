//! The Redis Streams backend: `XADD` to write, consumer groups with `XREADGROUP` and
//! `XACK` to consume, `XAUTOCLAIM` to take over a dead instance's entries. Its
//! configuration and checks are in `config.rs`, the backend in `stream.rs`.

pub mod config;
mod stream;

pub use config::{Config, MAX_MESSAGE};
pub use stream::RedisStreams;
