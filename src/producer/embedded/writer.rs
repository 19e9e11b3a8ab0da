//! The writer of one log: the only code that appends to segment files.
//!
//! Group commit: a task takes every append request waiting in its queue, encodes them
//! into one buffer, writes it with one `write` and makes it durable with one
//! `fdatasync`, then answers each request. While that sync runs, new requests queue up
//! and form the next group, so one sync serves many requests under load. A request is
//! answered only after the sync that covers it; if the write or the sync fails, the
//! bytes are cut off again and every request of the group gets the error, so that
//! nothing is ever acknowledged after a failed sync.
//!
//! The active segment is written ahead with zeros, [`PREALLOCATE`] bytes at a time, so
//! that a group's `fdatasync` flushes data only: a file that grows with every write
//! makes each sync also commit the file's new size to the filesystem's journal, which
//! on ext4 costs about as much again. Recovery reads the zeros after the last record as
//! the end of the log; a sealed segment is cut to its records before the next one starts.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::config::SyncMode;
use super::cursor::write_atomically;
use super::error::LogError;
use super::format::{self, FLAG_END_OF_BATCH, FrameMeta, SEGMENT_HEADER_LEN};
use super::segment::{IndexSampler, Segment, create_segment, segment_file_name};
use super::shared::{Appended, Committed, Shared};
use crate::message::{Durability, Record, now_ms};

/// Most bytes one group writes at once; more waits for the next group.
const MAX_GROUP_BYTES: usize = 8 * 1024 * 1024;

/// Bytes of zeros written ahead of the records in the active segment at a time.
pub const PREALLOCATE: u64 = 1024 * 1024;

/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// What the writer's queue carries.
pub enum WriterMessage {
    Append(AppendRequest),
    /// Stop after the appends queued before this; later ones fail as closed.
    Close,
}

/// One append request: records that are durable together or not at all.
pub struct AppendRequest {
    pub records: Vec<Record>,
    pub reply: oneshot::Sender<Result<Appended, LogError>>,
}

/// What the writer owns: the active segment and the position in it.
pub struct WriterState {
    pub shared: Arc<Shared>,
    /// Write handle of the active segment.
    pub file: File,
    pub segment: Arc<Segment>,
    /// End of the written bytes.
    pub pos: u64,
    /// End of the synced bytes.
    pub durable_len: u64,
    /// Length of the file: the records, then zeros written ahead of them.
    pub allocated: u64,
    pub next_offset: u64,
    pub last_timestamp_ms: u64,
    pub index_sampler: IndexSampler,
    /// A failed write could not be cut off; try again before the next write.
    pub truncate_pending: bool,
    buf: Vec<u8>,
}

/// A request encoded into the group's buffer, waiting for its answer.
struct Pending {
    reply: oneshot::Sender<Result<Appended, LogError>>,
    first_offset: u64,
    last_offset: u64,
}

impl WriterState {
    pub fn new(
        shared: Arc<Shared>,
        file: File,
        segment: Arc<Segment>,
        pos: u64,
        allocated: u64,
        next_offset: u64,
        last_timestamp_ms: u64,
    ) -> Self {
        let index_sampler = IndexSampler::after(segment.index_snapshot().last());
        Self {
            shared,
            file,
            segment,
            pos,
            durable_len: pos,
            allocated: allocated.max(pos),
            next_offset,
            last_timestamp_ms,
            index_sampler,
            truncate_pending: false,
            buf: Vec::new(),
        }
    }

    fn sync_mode(&self) -> SyncMode {
        self.shared.config().sync
    }

    /// Writes one group of requests and answers each of them.
    fn write_group(&mut self, group: Vec<AppendRequest>) {
        if let Some(reason) = self.shared.failure() {
            for request in group {
                let _ = request.reply.send(Err(LogError::Failed(reason.clone())));
            }
            return;
        }
        if self.truncate_pending {
            match self.file.set_len(self.pos) {
                Ok(()) => {
                    self.truncate_pending = false;
                    self.allocated = self.pos;
                }
                Err(e) => {
                    for request in group {
                        let _ = request.reply.send(Err(LogError::io(
                            "cutting off a failed write",
                            &self.segment.path,
                            clone_io(&e),
                        )));
                    }
                    return;
                }
            }
        }
        if self.segment_is_old() {
            // A failed roll leaves the writer on the old segment, which still works.
            if let Err(e) = self.roll() {
                warn!(error = %e, "Could not start a new segment; the current one goes on.");
            }
        }
        let mut pending: Vec<Pending> = Vec::new();
        self.buf.clear();
        let segment_size = self.shared.config().segment_size.bytes();
        for request in group {
            let size: usize = request
                .records
                .iter()
                .map(|r| format::frame_len(r.key.as_deref(), &r.headers, &r.payload))
                .sum();
            let end = self.pos + (self.buf.len() + size) as u64;
            let has_data = self.pos + self.buf.len() as u64 > SEGMENT_HEADER_LEN as u64;
            if end > segment_size && has_data {
                self.flush(&mut pending);
                if let Err(e) = self.roll() {
                    let _ = request.reply.send(Err(e));
                    continue;
                }
            }
            let first_offset = self.next_offset;
            self.encode(&request.records);
            pending.push(Pending {
                reply: request.reply,
                first_offset,
                last_offset: self.next_offset - 1,
            });
        }
        self.flush(&mut pending);
    }

    /// Encodes one request's records after what the buffer holds.
    fn encode(&mut self, records: &[Record]) {
        let now = now_ms();
        for (i, record) in records.iter().enumerate() {
            let position = self.pos + self.buf.len() as u64;
            // Timestamps never go back, so that seeking by time can bisect.
            let timestamp_ms = now.max(self.last_timestamp_ms);
            let flags = if i + 1 == records.len() {
                FLAG_END_OF_BATCH
            } else {
                0
            };
            let meta = FrameMeta {
                offset: self.next_offset,
                timestamp_ms,
                durable_len: self.durable_len,
                flags,
            };
            format::encode_frame(
                &mut self.buf,
                meta,
                record.key.as_deref(),
                &record.headers,
                &record.payload,
            );
            if let Some(entry) = self
                .index_sampler
                .sample(self.next_offset, position, timestamp_ms)
            {
                self.segment.push_index(entry);
            }
            self.last_timestamp_ms = timestamp_ms;
            self.next_offset += 1;
        }
    }

    /// Writes the buffer, syncs it (in `always` mode) and answers the pending requests.
    fn flush(&mut self, pending: &mut Vec<Pending>) {
        if pending.is_empty() {
            return;
        }
        self.preallocate(self.pos + self.buf.len() as u64);
        let result =
            self.file
                .write_all_at(&self.buf, self.pos)
                .and_then(|()| match self.sync_mode() {
                    SyncMode::Always => self.file.sync_data(),
                    SyncMode::Interval => Ok(()),
                });
        match result {
            Ok(()) => {
                let stats = &self.shared.stats;
                stats
                    .appends
                    .fetch_add(pending.len() as u64, Ordering::Relaxed);
                stats.records.fetch_add(
                    pending
                        .iter()
                        .map(|p| p.last_offset - p.first_offset + 1)
                        .sum(),
                    Ordering::Relaxed,
                );
                stats
                    .bytes
                    .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
                if self.sync_mode() == SyncMode::Always {
                    stats.syncs.fetch_add(1, Ordering::Relaxed);
                }
                self.pos += self.buf.len() as u64;
                self.allocated = self.allocated.max(self.pos);
                let durability = match self.sync_mode() {
                    SyncMode::Always => {
                        self.durable_len = self.pos;
                        Durability::Durable
                    }
                    SyncMode::Interval => Durability::Written,
                };
                self.publish();
                for p in pending.drain(..) {
                    let _ = p.reply.send(Ok(Appended {
                        first_offset: p.first_offset,
                        last_offset: p.last_offset,
                        durability,
                    }));
                }
            }
            Err(e) => {
                // Nothing of this group is acknowledged: take its offsets and bytes back.
                let first = pending[0].first_offset;
                self.next_offset = first;
                self.segment.truncate_index(first);
                self.index_sampler = IndexSampler::after(self.segment.index_snapshot().last());
                match self.file.set_len(self.pos) {
                    Ok(()) => self.allocated = self.pos,
                    Err(_) => self.truncate_pending = true,
                }
                error!(segment = %self.segment.path.display(), error = %e, requests = pending.len(), "Append failed; nothing of it was acknowledged.");
                for p in pending.drain(..) {
                    let _ = p.reply.send(Err(LogError::io(
                        "appending to the log",
                        &self.segment.path,
                        clone_io(&e),
                    )));
                }
            }
        }
        self.buf.clear();
    }

    /// Writes zeros ahead so that the file holds at least `end` bytes: [`PREALLOCATE`]
    /// more, but not past the segment size unless `end` is; the group's sync makes
    /// them durable with its records. Without room for them the records are written
    /// as they come: the syncs cost more, nothing else changes.
    fn preallocate(&mut self, end: u64) {
        let start = self.allocated.max(self.pos);
        if end <= start {
            return;
        }
        let segment_size = self.shared.config().segment_size.bytes();
        let target = (end + PREALLOCATE).min(segment_size.max(end));
        match self
            .file
            .write_all_at(&vec![0u8; (target - start) as usize], start)
        {
            Ok(()) => self.allocated = target,
            Err(e) => {
                debug!(segment = %self.segment.path.display(), error = %e, "Could not write ahead; writing records as they come.")
            }
        }
    }

    /// Tells readers how far the log is committed.
    fn publish(&self) {
        self.shared.committed.send_replace(Committed {
            next_offset: self.next_offset,
            segment_base: self.segment.base_offset,
            end_pos: self.pos,
        });
    }

    fn segment_is_old(&self) -> bool {
        let age = now_ms().saturating_sub(self.segment.created_ms);
        self.pos > SEGMENT_HEADER_LEN as u64
            && age >= self.shared.config().segment_age.get().as_millis() as u64
    }

    /// Seals the active segment (cut to its records and synced whole, index written)
    /// and starts a new one whose header and directory entry are durable before any
    /// record goes into it. Only the last segment ever ends in zeros.
    fn roll(&mut self) -> Result<(), LogError> {
        if self.allocated > self.pos {
            self.file.set_len(self.pos).map_err(|e| {
                LogError::io("cutting a segment to its records", &self.segment.path, e)
            })?;
            self.allocated = self.pos;
            self.sync()?;
        } else if self.durable_len < self.pos {
            self.sync()?;
        }
        let index_path = self.segment.path.with_extension("idx");
        if let Err(e) = write_atomically(
            &index_path,
            &format::encode_index(&self.segment.index_snapshot()),
        ) {
            warn!(error = %e, "Could not write a segment index; it is rebuilt when needed.");
        }
        let base = self.next_offset;
        let (file, created_ms) = create_segment(&self.shared.dir, base)?;
        let path = self.shared.dir.join(segment_file_name(base));
        let reader =
            File::open(&path).map_err(|e| LogError::io("opening a new segment", &path, e))?;
        self.segment.seal(self.pos);
        let segment = Arc::new(Segment::new(
            base,
            created_ms,
            path,
            reader,
            Some(Vec::new()),
        ));
        self.shared.push_segment(segment.clone());
        self.file = file;
        self.segment = segment;
        self.pos = SEGMENT_HEADER_LEN as u64;
        self.durable_len = self.pos;
        self.allocated = self.pos;
        self.index_sampler = IndexSampler::default();
        self.publish();
        info!(segment = %self.segment.path.display(), "Segment started.");
        Ok(())
    }

    /// `sync = "interval"`: makes what was written durable.
    fn sync(&mut self) -> Result<(), LogError> {
        match self.file.sync_data() {
            Ok(()) => {
                self.shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
                self.durable_len = self.pos;
                Ok(())
            }
            Err(e) => {
                error!(segment = %self.segment.path.display(), error = %e, "Sync failed: acknowledged writes may be lost.");
                Err(LogError::io("syncing the log", &self.segment.path, e))
            }
        }
    }
}

/// The writer thread: gathers each group from the queue and writes it. A thread of its
/// own rather than a task, so that a group's answers go out and the next group starts
/// without waiting for a runtime worker.
pub fn run(
    mut state: WriterState,
    mut requests: mpsc::Receiver<WriterMessage>,
    runtime: tokio::runtime::Handle,
) {
    let mut next_retention = Instant::now() + RETENTION_EVERY;
    loop {
        let interval = state.shared.config().sync_interval.get();
        let dirty = state.durable_len < state.pos && state.sync_mode() == SyncMode::Interval;
        let deadline = if dirty {
            next_retention.min(Instant::now() + interval)
        } else {
            next_retention
        };
        let first = runtime
            .block_on(async { tokio::time::timeout_at(deadline.into(), requests.recv()).await });
        let first = match first {
            Ok(Some(WriterMessage::Append(request))) => request,
            Ok(Some(WriterMessage::Close) | None) => break,
            Err(_) => {
                if dirty {
                    let _ = state.sync();
                }
                if Instant::now() >= next_retention {
                    if let Err(e) = state.shared.apply_retention(now_ms()) {
                        warn!(error = %e, "Retention failed; it runs again later.");
                    }
                    next_retention = Instant::now() + RETENTION_EVERY;
                }
                continue;
            }
        };
        let mut group = vec![first];
        let mut bytes = group_bytes(&group[0]);
        let mut closing = false;
        // Take what is queued; then give appenders that are about to queue one chance to,
        // since a request that just misses a group waits a whole sync for the next.
        for round in 0..2 {
            if round == 1 {
                std::thread::yield_now();
            }
            while bytes < MAX_GROUP_BYTES && !closing {
                match requests.try_recv() {
                    Ok(WriterMessage::Append(request)) => {
                        bytes += group_bytes(&request);
                        group.push(request);
                    }
                    Ok(WriterMessage::Close) => closing = true,
                    Err(_) => break,
                }
            }
        }
        state.write_group(group);
        if closing {
            break;
        }
    }
    // Appends queued after the close fail as closed when their replies are dropped.
    requests.close();
    if state.durable_len < state.pos {
        let _ = state.sync();
    }
}

fn group_bytes(request: &AppendRequest) -> usize {
    request.records.iter().map(|r| r.payload.len() + 64).sum()
}

fn clone_io(e: &std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(e.kind(), e.to_string()),
    }
}
