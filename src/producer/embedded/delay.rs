//! Delayed messages by due time, so that a delay survives a restart.
//!
//! A delayed message stays where it is in the log; this index only remembers its
//! offset and when it is due. The consumer schedules a message here before it moves
//! its cursor past it, and completes it once delivered. The file is append-only: each
//! entry is `crc32c u32 | kind u8 (1 scheduled, 2 done) | offset u64 | due_ms u64`,
//! synced before the call returns; it is rebuilt in memory on open (a torn last entry
//! is cut off) and rewritten atomically when done entries outnumber the pending ones.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;

use super::error::LogError;
use super::journal::Journal;

const ENTRY_LEN: usize = 21;
const SCHEDULED: u8 = 1;
const DONE: u8 = 2;
/// Entries in the file before a rewrite is considered.
const COMPACT_AFTER: usize = 4096;

/// The pending delayed messages of one namespace.
pub struct DelayIndex {
    inner: Mutex<Inner>,
}

struct Inner {
    file: Journal,
    /// Pending messages ordered by (due, offset).
    by_due: BTreeSet<(u64, u64)>,
    due_of: HashMap<u64, u64>,
    /// Entries in the file, pending or not.
    entries: usize,
}

impl DelayIndex {
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let mut by_due = BTreeSet::new();
        let mut due_of = HashMap::new();
        let mut entries = 0;
        let file = Journal::open(path, "delay index", |rest| {
            let (kind, offset, due) = decode(rest.get(..ENTRY_LEN)?)?;
            if let Some(old) = due_of.remove(&offset) {
                by_due.remove(&(old, offset));
            }
            if kind == SCHEDULED {
                due_of.insert(offset, due);
                by_due.insert((due, offset));
            }
            entries += 1;
            Some(ENTRY_LEN)
        })?;
        Ok(Self {
            inner: Mutex::new(Inner {
                file,
                by_due,
                due_of,
                entries,
            }),
        })
    }

    /// Remembers that the messages at these offsets are due at these times (blocking
    /// I/O; durable when it returns).
    pub fn schedule(&self, items: &[(u64, u64)]) -> Result<(), LogError> {
        self.write(
            items
                .iter()
                .map(|&(offset, due)| (SCHEDULED, offset, due))
                .collect(),
        )
    }

    /// Forgets delivered messages (blocking I/O; durable when it returns).
    pub fn complete(&self, offsets: &[u64]) -> Result<(), LogError> {
        self.write(offsets.iter().map(|&offset| (DONE, offset, 0)).collect())
    }

    fn write(&self, items: Vec<(u8, u64, u64)>) -> Result<(), LogError> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| LogError::Failed("delay index lock poisoned".into()))?;
        let mut bytes = Vec::with_capacity(items.len() * ENTRY_LEN);
        for &(kind, offset, due) in &items {
            bytes.extend_from_slice(&encode(kind, offset, due));
        }
        inner.file.append(&bytes)?;
        for (kind, offset, due) in items {
            if let Some(old) = inner.due_of.remove(&offset) {
                inner.by_due.remove(&(old, offset));
            }
            if kind == SCHEDULED {
                inner.due_of.insert(offset, due);
                inner.by_due.insert((due, offset));
            }
            inner.entries += 1;
        }
        if inner.entries > COMPACT_AFTER && inner.entries > 2 * inner.by_due.len() {
            self.compact(&mut inner)?;
        }
        Ok(())
    }

    /// Rewrites the file with the pending entries only.
    fn compact(&self, inner: &mut Inner) -> Result<(), LogError> {
        let bytes: Vec<u8> = inner
            .by_due
            .iter()
            .flat_map(|&(due, offset)| encode(SCHEDULED, offset, due))
            .collect();
        inner.file.rewrite(&bytes)?;
        inner.entries = inner.by_due.len();
        Ok(())
    }

    /// Pending messages due at or before `now_ms`, earliest first: (offset, due).
    pub fn due(&self, now_ms: u64, max: usize) -> Vec<(u64, u64)> {
        self.inner.lock().map_or_else(
            |_| Vec::new(),
            |inner| {
                inner
                    .by_due
                    .iter()
                    .take_while(|(due, _)| *due <= now_ms)
                    .take(max)
                    .map(|&(due, offset)| (offset, due))
                    .collect()
            },
        )
    }

    /// When the next pending message is due.
    pub fn next_due(&self) -> Option<u64> {
        self.inner
            .lock()
            .ok()
            .and_then(|inner| inner.by_due.first().map(|&(due, _)| due))
    }

    /// The lowest offset still pending: retention must keep it.
    pub fn lowest_pending_offset(&self) -> Option<u64> {
        self.inner
            .lock()
            .ok()
            .and_then(|inner| inner.due_of.keys().min().copied())
    }

    pub fn pending(&self) -> usize {
        self.inner.lock().map_or(0, |inner| inner.by_due.len())
    }
}

fn encode(kind: u8, offset: u64, due: u64) -> [u8; ENTRY_LEN] {
    let mut entry = [0u8; ENTRY_LEN];
    entry[4] = kind;
    entry[5..13].copy_from_slice(&offset.to_le_bytes());
    entry[13..21].copy_from_slice(&due.to_le_bytes());
    let crc = crc32c::crc32c(&entry[4..]);
    entry[0..4].copy_from_slice(&crc.to_le_bytes());
    entry
}

fn decode(entry: &[u8]) -> Option<(u8, u64, u64)> {
    if entry.len() != ENTRY_LEN {
        return None;
    }
    let crc = u32::from_le_bytes(entry[0..4].try_into().ok()?);
    if crc32c::crc32c(&entry[4..]) != crc || !matches!(entry[4], SCHEDULED | DONE) {
        return None;
    }
    Some((
        entry[4],
        u64::from_le_bytes(entry[5..13].try_into().ok()?),
        u64::from_le_bytes(entry[13..21].try_into().ok()?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_survive_a_reopen_and_a_torn_last_entry() -> Result<(), LogError> {
        let dir = tempfile::tempdir().map_err(|e| LogError::io("tempdir", Path::new("."), e))?;
        let path = dir.path().join("delays.log");
        let index = DelayIndex::open(&path)?;
        index.schedule(&[(5, 2000), (3, 1000), (9, 3000)])?;
        index.complete(&[3])?;
        drop(index);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&path, bytes).unwrap();

        let index = DelayIndex::open(&path)?;
        assert_eq!(index.due(2500, 10), vec![(5, 2000)]);
        assert_eq!(index.next_due(), Some(2000));
        assert_eq!(index.lowest_pending_offset(), Some(5));
        assert_eq!(index.pending(), 2);
        Ok(())
    }
}
