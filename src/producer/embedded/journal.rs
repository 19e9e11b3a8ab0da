//! Small append-only files of self-checking entries (the delay index, idempotency
//! keys, replayed DLQ entries): replaying the intact entries on open, cutting off a
//! torn last entry, appending whole entries only, and rewriting the file atomically
//! when most of it is dead.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::cursor::write_atomically;
use super::error::LogError;

/// An open journal, appended to in whole entries.
pub struct Journal {
    path: PathBuf,
    /// What the journal holds, for error messages ("delay index").
    what: &'static str,
    file: File,
    /// The length of its intact entries: an append that fails is cut back to it.
    len: u64,
}

impl Journal {
    /// Opens the journal at `path`, handing each intact entry to `replay` first (see
    /// [`open`]).
    pub fn open(
        path: &Path,
        what: &'static str,
        replay: impl FnMut(&[u8]) -> Option<usize>,
    ) -> Result<Self, LogError> {
        let file = open(path, what, replay)?;
        let len = file
            .metadata()
            .map_err(|e| LogError::io(&format!("opening the {what}"), path, e))?
            .len();
        Ok(Self {
            path: path.to_path_buf(),
            what,
            file,
            len,
        })
    }

    /// Appends `bytes` (whole entries) and syncs them. If that fails (a full disk),
    /// the part written is cut off again, so that the entries appended after it do not
    /// follow a torn one: on open, nothing after a torn entry is read.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        match self
            .file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data())
        {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                Err(LogError::io(
                    &format!("writing the {}", self.what),
                    &self.path,
                    e,
                ))
            }
        }
    }

    /// Replaces the whole journal with `bytes` (atomically).
    pub fn rewrite(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        self.file = rewrite(&self.path, self.what, bytes)?;
        self.len = bytes.len() as u64;
        Ok(())
    }
}

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
