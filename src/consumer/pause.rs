//! Paused delivery: an operator can pause one target of a namespace, or its whole
//! delivery, and resume it. Ingest goes on; the messages wait in the log, and a resume
//! delivers them in order. The state is kept durably in the namespace's directory
//! (`paused.json`, replaced atomically), so that a pause survives a restart and a
//! reload.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::producer::embedded::LogError;
use crate::producer::embedded::cursor::write_atomically;

/// What is paused in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Paused {
    /// The whole namespace's delivery.
    pub namespace: bool,
    /// Targets paused one by one.
    pub targets: BTreeSet<String>,
}

/// One namespace's pauses, read at start and written on every change.
#[derive(Debug)]
pub struct Pauses {
    path: PathBuf,
    state: RwLock<Paused>,
}

impl Pauses {
    /// Reads the pauses kept at `path`; none if the file does not exist.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                LogError::Invalid(format!("{} does not read back: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Paused::default(),
            Err(e) => return Err(LogError::io("reading the pauses", path, e)),
        };
        Ok(Self {
            path: path.to_path_buf(),
            state: RwLock::new(state),
        })
    }

    /// Everything paused, in memory, to be kept at `path` by the next change: for
    /// pauses that could not be read.
    pub fn paused_at(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            state: RwLock::new(Paused {
                namespace: true,
                targets: BTreeSet::new(),
            }),
        }
    }

    /// Whether delivery to `target` is paused, by itself or with its namespace.
    pub fn holds(&self, target: &str) -> bool {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.namespace || state.targets.contains(target)
    }

    pub fn get(&self) -> Paused {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Pauses or resumes `target`, or (`None`) the whole namespace, durably: once this
    /// returns, a restart keeps it (blocking I/O).
    pub fn set(&self, target: Option<&str>, paused: bool) -> Result<Paused, LogError> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let mut next = state.clone();
        match target {
            None => next.namespace = paused,
            Some(target) if paused => {
                next.targets.insert(target.to_string());
            }
            Some(target) => {
                next.targets.remove(target);
            }
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| LogError::io("creating the namespace directory", dir, e))?;
        }
        let bytes = serde_json::to_vec(&next)
            .map_err(|e| LogError::Invalid(format!("encoding the pauses: {e}")))?;
        write_atomically(&self.path, &bytes)?;
        *state = next.clone();
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_is_read_back_after_a_restart() -> Result<(), LogError> {
        let dir = tempfile::tempdir().map_err(|e| LogError::io("tempdir", Path::new("."), e))?;
        let path = dir.path().join("ns").join("paused.json");
        let pauses = Pauses::open(&path)?;
        assert!(!pauses.holds("hook"));
        pauses.set(Some("hook"), true)?;
        let reopened = Pauses::open(&path)?;
        assert!(reopened.holds("hook"));
        assert!(!reopened.holds("db"));
        reopened.set(None, true)?;
        reopened.set(Some("hook"), false)?;
        let again = Pauses::open(&path)?;
        assert!(again.holds("db"), "the namespace is paused");
        again.set(None, false)?;
        assert!(!Pauses::open(&path)?.holds("hook"));
        Ok(())
    }
}
