//! `[source]`: how messages arrive, and the write use case that keeps its promises:
//! the table ([`config`]), a message as written and the rules that make it a record
//! ([`record`]), why a write is refused ([`error`]), idempotency keys ([`idempotency`]), the rate limit and the bound on
//! writes waiting ([`limits`]), and the write itself ([`write`]).

pub mod config;
pub mod error;
pub mod idempotency;
pub mod limits;
pub mod record;
pub mod schema;
pub mod write;

pub use error::WriteError;
pub use record::{BatchIn, MAX_BATCH, MessageIn};
pub use write::{Accepted, BatchWritten, WriteProgress, write, write_batch};
