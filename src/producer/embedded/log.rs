//! One log: a directory of segments with its writer, its readers, its consumer-group
//! cursors and its retention.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use super::config::Config;
use super::cursor::CursorStore;
use super::error::LogError;
use super::format::{self, SEGMENT_HEADER_LEN};
use super::segment::{Segment, create_segment, recover_tail, segment_file_name};
use super::shared::{Appended, Committed, Shared, Stats};
use super::writer::{self, AppendRequest, WriterMessage, WriterState};
use crate::message::{Record, StoredRecord, now_ms};

/// Append requests waiting for the writer before `append` waits for room.
const QUEUE_DEPTH: usize = 4096;

/// Where a consumer group starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// At this offset (clamped to the oldest record kept).
    Offset(u64),
    /// At the first record written at or after this time (milliseconds since the epoch).
    Time(u64),
}

/// A handle to one log. Cheap to clone; the writer thread stops at [`Log::close`], or
/// when the last handle is dropped.
#[derive(Clone)]
pub struct Log {
    shared: Arc<Shared>,
    requests: mpsc::Sender<WriterMessage>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering its last segment. Only the last
    /// segment is read through, so opening takes the same time whatever the log's size.
    pub fn open(dir: &Path, config: Config) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| LogError::io("creating the log directory", dir, e))?;
        let cursors = CursorStore::open(dir.join("cursors"))?;
        let mut bases = list_segments(dir)?;
        if bases.is_empty() {
            create_segment(dir, 0)?;
            bases.push(0);
        }
        let mut segments = Vec::new();
        let last_base = *bases.last().unwrap_or(&0);
        for (i, &base) in bases.iter().enumerate() {
            let path = dir.join(segment_file_name(base));
            let file =
                File::open(&path).map_err(|e| LogError::io("opening a segment", &path, e))?;
            let mut header = [0u8; SEGMENT_HEADER_LEN];
            let header_ok = file.read_exact_at(&mut header, 0).is_ok();
            let created = header_ok
                .then(|| format::decode_segment_header(&header))
                .flatten();
            let created_ms = match created {
                Some((found, created_ms)) if found == base => created_ms,
                _ if base == last_base => {
                    // A crash while the last segment was being created: it holds no
                    // record (its header is synced before any), so it is made anew.
                    warn!(segment = %path.display(), "Last segment has no intact header; recreating it empty.");
                    std::fs::remove_file(&path)
                        .map_err(|e| LogError::io("removing a torn segment", &path, e))?;
                    create_segment(dir, base)?.1
                }
                _ => {
                    return Err(LogError::Corrupt {
                        segment: path,
                        position: 0,
                        offset: base,
                        reason: "segment header is damaged".into(),
                    });
                }
            };
            let file =
                File::open(&path).map_err(|e| LogError::io("opening a segment", &path, e))?;
            let segment = Segment::new(base, created_ms, path.clone(), file, None);
            if i + 1 < bases.len() {
                let len = std::fs::metadata(&path)
                    .map_err(|e| LogError::io("reading a segment's size", &path, e))?
                    .len();
                segment.seal(len);
            }
            segments.push(Arc::new(segment));
        }

        let active = segments
            .last()
            .cloned()
            .ok_or_else(|| LogError::Invalid("no segment".into()))?;
        let write_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&active.path)
            .map_err(|e| LogError::io("opening the active segment", &active.path, e))?;
        let file_len = write_file
            .metadata()
            .map_err(|e| LogError::io("reading a segment's size", &active.path, e))?
            .len();
        let recovered = recover_tail(&write_file, &active.path, active.base_offset, file_len)?;
        let mut allocated = file_len;
        if recovered.torn_bytes > 0 {
            warn!(
                segment = %active.path.display(),
                kept_bytes = recovered.valid_len,
                torn_bytes = recovered.torn_bytes,
                next_offset = recovered.next_offset,
                "Torn tail cut off: the last write did not complete before a crash."
            );
            write_file
                .set_len(recovered.valid_len)
                .and_then(|()| write_file.sync_data())
                .map_err(|e| LogError::io("cutting off a torn tail", &active.path, e))?;
            allocated = recovered.valid_len;
        }
        let committed = Committed {
            next_offset: recovered.next_offset,
            segment_base: active.base_offset,
            end_pos: recovered.valid_len,
        };
        let (committed_tx, _) = watch::channel(committed);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            config: RwLock::new(config),
            segments: RwLock::new(segments),
            committed: committed_tx,
            cursors,
            failed: Mutex::new(None),
            retention_floor: Mutex::new(None),
            stats: Stats::default(),
        });
        // The active segment's index was rebuilt by recovery; mark it loaded.
        active.set_index(recovered.index);
        let state = WriterState::new(
            shared.clone(),
            write_file,
            active,
            recovered.valid_len,
            allocated,
            recovered.next_offset,
            recovered.last_timestamp_ms,
        );
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            LogError::Invalid("a log is opened from within the async runtime".into())
        })?;
        let (requests, receiver) = mpsc::channel(QUEUE_DEPTH);
        let writer = std::thread::Builder::new()
            .name("wald-log-writer".into())
            .spawn(move || writer::run(state, receiver, runtime))
            .map_err(|e| LogError::io("starting the log writer", dir, e))?;
        Ok(Self {
            shared,
            requests,
            writer: Arc::new(Mutex::new(Some(writer))),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Applies new settings to the open log: segment size and age from the next
    /// append, the sync mode and interval from the next group, retention from its next
    /// run. Nothing on disk depends on them, so the log keeps running.
    pub fn reconfigure(&self, config: Config) {
        if let Ok(mut current) = self.shared.config.write() {
            *current = config;
        }
    }

    /// Why the log refuses appends, if it found corruption or could not recover.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    /// Appends `records` as one request: durable together or not at all. Answers once
    /// they are durable (`sync = "always"`) or written (`sync = "interval"`).
    pub async fn append(&self, records: Vec<Record>) -> Result<Appended, LogError> {
        if records.is_empty() {
            return Err(LogError::Invalid(
                "an append needs at least one record".into(),
            ));
        }
        if let Some(reason) = self.shared.failure() {
            return Err(LogError::Failed(reason));
        }
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(WriterMessage::Append(AppendRequest { records, reply }))
            .await
            .map_err(|_| LogError::Closed)?;
        answer.await.map_err(|_| LogError::Closed)?
    }

    /// How far the log is committed now.
    pub fn committed(&self) -> Committed {
        *self.shared.committed.borrow()
    }

    /// The oldest offset still kept.
    pub fn first_offset(&self) -> u64 {
        self.shared.segments().first().map_or(0, |s| s.base_offset)
    }

    /// Reads up to `max_records` committed records from `from` on (blocking I/O).
    pub fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, LogError> {
        let committed = self.committed();
        let segments = self.shared.segments();
        let from = from.max(segments.first().map_or(0, |s| s.base_offset));
        let mut records = Vec::new();
        let mut next = from;
        while next < committed.next_offset && records.len() < max_records {
            let i = segments
                .partition_point(|s| s.base_offset <= next)
                .saturating_sub(1);
            let Some(segment) = segments.get(i) else {
                break;
            };
            let (end_pos, end_offset) = match segments.get(i + 1) {
                Some(following) => (segment.sealed_len().unwrap_or(0), following.base_offset),
                None => (committed.end_pos, committed.next_offset),
            };
            // Never past the committed end, even where a sealed segment holds more.
            let wanted = (max_records - records.len()).min((committed.next_offset - next) as usize);
            let batch = segment
                .read(next, end_pos, end_offset, wanted, max_bytes)
                .inspect_err(|e| self.fail_on_corruption(e))?;
            match batch.last() {
                Some(last) => next = last.offset + 1,
                None if end_offset > next => {
                    return Err(LogError::Corrupt {
                        segment: segment.path.clone(),
                        position: end_pos,
                        offset: next,
                        reason: "records that were committed are missing".into(),
                    })
                    .inspect_err(|e| self.fail_on_corruption(e));
                }
                None => break,
            }
            records.extend(batch);
        }
        Ok(records)
    }

    fn fail_on_corruption(&self, e: &LogError) {
        if matches!(e, LogError::Corrupt { .. }) {
            self.shared.fail(e.to_string());
        }
    }

    /// The first offset written at or after `timestamp_ms` (blocking I/O).
    pub fn offset_at_time(&self, timestamp_ms: u64) -> Result<u64, LogError> {
        let committed = self.committed();
        let segments = self.shared.segments();
        for (i, segment) in segments.iter().enumerate() {
            let (end_pos, end_offset) = match segments.get(i + 1) {
                Some(following) if following.created_ms <= timestamp_ms => continue,
                Some(following) => (segment.sealed_len().unwrap_or(0), following.base_offset),
                None => (committed.end_pos, committed.next_offset),
            };
            let mut from = segment.offset_near_time(timestamp_ms, end_pos, end_offset)?;
            loop {
                let batch = segment.read(from, end_pos, end_offset, 1024, 4 * 1024 * 1024)?;
                let Some(last) = batch.last().map(|r| r.offset) else {
                    break;
                };
                if let Some(found) = batch.iter().find(|r| r.timestamp_ms >= timestamp_ms) {
                    return Ok(found.offset);
                }
                from = last + 1;
            }
        }
        Ok(committed.next_offset)
    }

    /// Every consumer group with a committed cursor, and its next offset.
    pub fn cursors(&self) -> Result<Vec<(String, u64)>, LogError> {
        self.shared.cursors.all()
    }

    /// How many times `group` committed its cursor since the log was opened.
    pub fn cursor_commits(&self, group: &str) -> u64 {
        self.shared.cursors.commits(group)
    }

    /// A consumer group's next offset: its committed cursor, else the oldest record.
    pub fn cursor(&self, group: &str) -> Result<u64, LogError> {
        Ok(self
            .shared
            .cursors
            .load(group)?
            .unwrap_or_else(|| self.first_offset()))
    }

    /// Commits that `group` consumed everything before `next_offset` (blocking I/O).
    pub fn commit(&self, group: &str, next_offset: u64) -> Result<(), LogError> {
        let next_offset = next_offset.min(self.committed().next_offset);
        self.shared.cursors.store(group, next_offset)
    }

    /// Gives `group` a cursor where `from` stands, unless it has one (blocking I/O).
    pub fn branch(&self, group: &str, from: &str) -> Result<(), LogError> {
        if self.shared.cursors.load(group)?.is_none() {
            self.commit(group, self.cursor(from)?)?;
        }
        Ok(())
    }

    /// Forgets a group's cursor, so that retention no longer waits for it (blocking I/O).
    pub fn forget(&self, group: &str) -> Result<(), LogError> {
        self.shared.cursors.remove(group)
    }

    /// Moves a group's cursor, for replay (blocking I/O).
    pub fn seek(&self, group: &str, position: Position) -> Result<u64, LogError> {
        let offset = match position {
            Position::Offset(offset) => offset.max(self.first_offset()),
            Position::Time(timestamp_ms) => self.offset_at_time(timestamp_ms)?,
        };
        self.commit(group, offset)?;
        Ok(offset)
    }

    /// Reads from `group`'s cursor on, waiting for new records by notification.
    pub fn subscribe(&self, group: &str) -> Result<Subscription, LogError> {
        Ok(Subscription {
            next: self.cursor(group)?,
            log: self.clone(),
            committed: self.shared.committed.subscribe(),
        })
    }

    /// Keeps retention from deleting `offset` and what follows, whatever the cursors say.
    pub fn set_retention_floor(&self, offset: Option<u64>) {
        if let Ok(mut floor) = self.shared.retention_floor.lock() {
            *floor = offset;
        }
    }

    /// Appends, records, syncs and bytes written since the log was opened.
    pub fn stats(&self) -> (u64, u64, u64, u64) {
        let s = &self.shared.stats;
        (
            s.appends.load(Ordering::Relaxed),
            s.records.load(Ordering::Relaxed),
            s.syncs.load(Ordering::Relaxed),
            s.bytes.load(Ordering::Relaxed),
        )
    }

    /// Runs retention now (it also runs every minute by itself).
    pub fn apply_retention(&self) -> Result<Vec<PathBuf>, LogError> {
        self.shared.apply_retention(now_ms())
    }

    /// Segment files currently kept, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.shared
            .segments()
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }

    /// Stops the writer after the appends already queued, syncing what was written.
    /// Every handle of the log is closed; later appends fail with [`LogError::Closed`].
    pub async fn close(self) {
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        let _ = self.requests.send(WriterMessage::Close).await;
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
    }
}

/// A reader that follows the log: [`Subscription::next_batch`] returns records as they
/// are committed, waiting on the writer's notification when it has read everything.
pub struct Subscription {
    log: Log,
    next: u64,
    committed: watch::Receiver<Committed>,
}

impl Subscription {
    /// The next offset this subscription reads.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Up to `max_records` records, waiting until there is at least one.
    pub async fn next_batch(&mut self, max_records: usize) -> Result<Vec<StoredRecord>, LogError> {
        loop {
            let committed = *self.committed.borrow_and_update();
            if self.next < committed.next_offset {
                let log = self.log.clone();
                let from = self.next;
                let records =
                    blocking(move || log.read(from, max_records, 16 * 1024 * 1024)).await?;
                if let Some(last) = records.last() {
                    self.next = last.offset + 1;
                    return Ok(records);
                }
            }
            self.committed
                .changed()
                .await
                .map_err(|_| LogError::Closed)?;
        }
    }
}

/// Base offsets of the segment files in `dir`, in order.
fn list_segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| LogError::io("listing segments", dir, e))? {
        let entry = entry.map_err(|e| LogError::io("listing segments", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(base) = name
            .strip_suffix(".log")
            .and_then(|b| b.parse::<u64>().ok())
        {
            bases.push(base);
        } else if name.ends_with(".tmp") {
            // A file replaced atomically whose rename never happened.
            let _ = std::fs::remove_file(entry.path());
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Runs blocking log I/O off the runtime's threads.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LogError::Failed(format!("a log task panicked: {e}")))?
}
