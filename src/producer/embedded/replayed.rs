//! Which entries of a dead-letter log were replayed. The dead-letter log itself is
//! never changed; this append-only file remembers the offsets of replayed entries:
//! each entry is `crc32c u32 | offset u64`, synced before the call returns, rebuilt in
//! memory on open (a torn last entry is cut off).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use super::error::LogError;
use super::journal::Journal;

const ENTRY_LEN: usize = 12;

pub struct ReplayedSet {
    inner: Mutex<(Journal, BTreeSet<u64>)>,
    /// Entries being replayed now, since when: two replays at once take each entry once.
    claimed: Mutex<HashMap<u64, Instant>>,
}

impl ReplayedSet {
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let mut offsets = BTreeSet::new();
        let file = Journal::open(path, "replayed DLQ entries", |rest| {
            let entry = rest.get(..ENTRY_LEN)?;
            let crc = u32::from_le_bytes(entry[..4].try_into().ok()?);
            (crc32c::crc32c(&entry[4..]) == crc).then_some(())?;
            offsets.insert(u64::from_le_bytes(entry[4..].try_into().ok()?));
            Some(ENTRY_LEN)
        })?;
        Ok(Self {
            inner: Mutex::new((file, offsets)),
            claimed: Mutex::default(),
        })
    }

    /// Takes the replay of the entry at `offset`: false when it was replayed, or a
    /// replay took it less than `lapse` ago (one that failed leaves it after that).
    pub fn claim(&self, offset: u64, lapse: std::time::Duration) -> bool {
        if self.contains(offset) {
            return false;
        }
        let Ok(mut claimed) = self.claimed.lock() else {
            return false;
        };
        let now = Instant::now();
        claimed.retain(|_, at| now.duration_since(*at) < lapse);
        claimed.insert(offset, now).is_none()
    }

    /// Whether the dead-letter entry at `offset` was replayed.
    pub fn contains(&self, offset: u64) -> bool {
        self.inner
            .lock()
            .is_ok_and(|inner| inner.1.contains(&offset))
    }

    /// How many entries were replayed.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |inner| inner.1.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remembers that these entries were replayed (blocking I/O; durable when it
    /// returns).
    pub fn insert(&self, offsets: &[u64]) -> Result<(), LogError> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| LogError::Failed("replayed set lock poisoned".into()))?;
        let mut bytes = Vec::with_capacity(offsets.len() * ENTRY_LEN);
        for offset in offsets {
            let encoded = offset.to_le_bytes();
            bytes.extend_from_slice(&crc32c::crc32c(&encoded).to_le_bytes());
            bytes.extend_from_slice(&encoded);
        }
        inner.0.append(&bytes)?;
        inner.1.extend(offsets);
        drop(inner);
        if let Ok(mut claimed) = self.claimed.lock() {
            for offset in offsets {
                claimed.remove(offset);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_offsets_survive_a_reopen_and_a_torn_entry() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("replayed.log");
        let set = ReplayedSet::open(&path)?;
        set.insert(&[3, 7])?;
        drop(set);
        let mut bytes = std::fs::read(&path)?;
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&path, bytes)?;
        let set = ReplayedSet::open(&path)?;
        assert!(set.contains(3) && set.contains(7) && !set.contains(4));
        assert_eq!(set.len(), 2);
        assert_eq!(
            std::fs::metadata(&path)?.len(),
            24,
            "the torn entry is cut off"
        );
        Ok(())
    }
}
