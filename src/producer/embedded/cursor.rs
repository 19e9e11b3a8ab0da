//! Consumer-group cursors: the next offset each group will consume, one small file per
//! group, replaced atomically (write a temporary file, sync it, rename it over the old
//! one, sync the directory) so that a crash leaves either the old or the new cursor.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::error::LogError;
use super::format;

/// The cursor files of one log.
#[derive(Debug, Clone)]
pub struct CursorStore {
    dir: PathBuf,
    /// Cursors stored per group since the log was opened.
    commits: Arc<Mutex<HashMap<String, u64>>>,
}

impl CursorStore {
    pub fn open(dir: PathBuf) -> Result<Self, LogError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| LogError::io("creating the cursor directory", &dir, e))?;
        Ok(Self {
            dir,
            commits: Arc::default(),
        })
    }

    fn path(&self, group: &str) -> PathBuf {
        self.dir.join(format!("{group}.cursor"))
    }

    /// The group's next offset, if it has committed one.
    pub fn load(&self, group: &str) -> Result<Option<u64>, LogError> {
        check_group(group)?;
        let path = self.path(group);
        match std::fs::read(&path) {
            Ok(bytes) => format::decode_cursor(&bytes)
                .map(Some)
                .ok_or_else(|| LogError::Corrupt {
                    segment: path.clone(),
                    position: 0,
                    offset: 0,
                    reason: "cursor file does not read back intact".into(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LogError::io("reading a cursor", &path, e)),
        }
    }

    /// Every group with a committed cursor, and its next offset.
    pub fn all(&self) -> Result<Vec<(String, u64)>, LogError> {
        let mut cursors = Vec::new();
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| LogError::io("listing cursors", &self.dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(group) = name.strip_suffix(".cursor")
                && let Some(offset) = self.load(group)?
            {
                cursors.push((group.to_string(), offset));
            }
        }
        Ok(cursors)
    }

    /// Makes `next_offset` the group's durable cursor.
    pub fn store(&self, group: &str, next_offset: u64) -> Result<(), LogError> {
        check_group(group)?;
        let path = self.path(group);
        write_atomically(&path, &format::encode_cursor(next_offset))?;
        if let Ok(mut commits) = self.commits.lock() {
            *commits.entry(group.to_string()).or_default() += 1;
        }
        Ok(())
    }

    /// How many times the group's cursor was stored since the log was opened.
    pub fn commits(&self, group: &str) -> u64 {
        self.commits
            .lock()
            .map_or(0, |commits| commits.get(group).copied().unwrap_or(0))
    }

    /// Forgets the group's cursor, so that it holds nothing back; a group without one
    /// is left as it is.
    pub fn remove(&self, group: &str) -> Result<(), LogError> {
        check_group(group)?;
        let path = self.path(group);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir).map_err(|e| LogError::io("syncing", &self.dir, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LogError::io("removing a cursor", &path, e)),
        }
    }
}

/// Group names become file names: `[a-z0-9][a-z0-9_.-]{0,127}`.
fn check_group(group: &str) -> Result<(), LogError> {
    let valid = !group.is_empty()
        && group.len() <= 128
        && !group.starts_with('.')
        && group
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(LogError::Invalid(format!(
            "`{group}` is not a valid consumer group name"
        )))
    }
}

/// Replaces `path` with `bytes`: tmp, sync, rename, sync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_data()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))
    };
    write().map_err(|e| LogError::io("writing a file atomically", path, e))
}

/// Makes a directory's entries (a new or renamed file) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
