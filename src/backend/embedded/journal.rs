//! Small append-only files of self-checking entries (the delay index, idempotency
//! keys): replaying the intact entries on open, cutting off a torn last entry, and
//! rewriting the file atomically when most of it is dead.

use std::fs::{File, OpenOptions};
use std::path::Path;

use super::cursor::write_atomically;
use super::error::LogError;

/// Opens the journal at `path` for appending, after handing each intact entry to
/// `replay`: it is given the bytes from the entry on and returns the entry's length, or
/// `None` where the bytes are not an intact entry. Everything from there on is cut off:
/// only the last entry can be torn, since nothing after it was ever synced.
pub fn open(
    path: &Path,
    what: &str,
    mut replay: impl FnMut(&[u8]) -> Option<usize>,
) -> Result<File, LogError> {
    let io = |e| LogError::io(&format!("opening the {what}"), path, e);
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(e)),
    };
    let mut valid = 0;
    while valid < bytes.len() {
        match replay(&bytes[valid..]) {
            Some(len) if len > 0 => valid += len,
            _ => break,
        }
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    if valid < bytes.len() {
        file.set_len(valid as u64)
            .and_then(|()| file.sync_data())
            .map_err(io)?;
    }
    Ok(file)
}

/// Replaces the journal with `bytes` (atomically) and opens it again for appending.
pub fn rewrite(path: &Path, what: &str, bytes: &[u8]) -> Result<File, LogError> {
    write_atomically(path, bytes)?;
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| LogError::io(&format!("reopening the {what}"), path, e))
}
