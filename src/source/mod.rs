//! `[source]`: how messages arrive, and the write use case that keeps its promises.

pub mod config;

use std::sync::Arc;

/// Whether a write request has begun its append: a request that times out before
/// that wrote nothing, one that times out after may or may not be durable.
#[derive(Clone, Default)]
pub struct WriteProgress(Arc<std::sync::atomic::AtomicBool>);

impl WriteProgress {
    pub fn appending(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn appended(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}
