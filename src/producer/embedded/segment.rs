//! One segment file: reading frames from it, its sparse index, and recovering its tail
//! after a crash.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{OnceLock, RwLock};

use super::error::LogError;
use super::format::{
    self, Decoded, FrameError, INDEX_INTERVAL, IndexEntry, MIN_FRAME_LEN, SEGMENT_HEADER_LEN,
};
use crate::message::{StoredRecord, now_ms};

/// Bytes a scan reads from a segment at first, doubling with each further read up to
/// [`READ_CHUNK`]: a read of a few records reads little, a scan of a whole segment
/// soon reads a megabyte at a time.
const FIRST_READ: usize = 64 * 1024;
/// The most bytes read from a segment at a time.
const READ_CHUNK: usize = 1024 * 1024;

/// The file name of the segment whose first offset is `base`.
pub fn segment_file_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// Creates the segment whose first offset is `base`: its header and its directory entry
/// are durable before it is returned, so that no record ever goes into a segment a
/// crash could lose. Returns a read-write handle and the creation time.
pub fn create_segment(dir: &Path, base: u64) -> Result<(File, u64), LogError> {
    let path = dir.join(segment_file_name(base));
    let created_ms = now_ms();
    let create = || -> std::io::Result<File> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.write_all_at(&format::encode_segment_header(base, created_ms), 0)?;
        file.sync_data()?;
        super::cursor::sync_dir(dir)?;
        Ok(file)
    };
    match create() {
        Ok(file) => Ok((file, created_ms)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(LogError::io("creating a segment", &path, e))
        }
    }
}

/// Decides which records get an entry in a sparse index: the first one after every
/// [`INDEX_INTERVAL`] bytes of the segment.
#[derive(Debug, Default)]
pub struct IndexSampler {
    next_at: u64,
}

impl IndexSampler {
    /// A sampler that goes on after the index's last entry.
    pub fn after(last: Option<&IndexEntry>) -> Self {
        Self {
            next_at: last.map_or(0, |e| e.position + INDEX_INTERVAL),
        }
    }

    /// The entry for the record at `position`, if it gets one.
    pub fn sample(&mut self, offset: u64, position: u64, timestamp_ms: u64) -> Option<IndexEntry> {
        (position >= self.next_at).then(|| {
            self.next_at = position + INDEX_INTERVAL;
            IndexEntry {
                offset,
                position,
                timestamp_ms,
            }
        })
    }
}

/// A segment file, shared by the writer (which appends through its own handle) and the
/// readers (which read through this one).
pub struct Segment {
    pub base_offset: u64,
    pub created_ms: u64,
    pub path: PathBuf,
    file: File,
    /// The sparse index; `None` until first needed for a segment that was sealed before
    /// the log was opened (it is read from its `.idx` file, or rebuilt).
    index: RwLock<Option<Vec<IndexEntry>>>,
    /// The segment's length once it is sealed (no longer written).
    sealed_len: OnceLock<u64>,
}

impl Segment {
    pub fn new(
        base_offset: u64,
        created_ms: u64,
        path: PathBuf,
        file: File,
        index: Option<Vec<IndexEntry>>,
    ) -> Self {
        Self {
            base_offset,
            created_ms,
            path,
            file,
            index: RwLock::new(index),
            sealed_len: OnceLock::new(),
        }
    }

    /// Marks the segment sealed at `len` bytes.
    pub fn seal(&self, len: u64) {
        let _ = self.sealed_len.set(len);
    }

    pub fn sealed_len(&self) -> Option<u64> {
        self.sealed_len.get().copied()
    }

    /// Replaces the index (recovery rebuilt it).
    pub fn set_index(&self, entries: Vec<IndexEntry>) {
        if let Ok(mut index) = self.index.write() {
            *index = Some(entries);
        }
    }

    /// Records an index entry for a record the writer just wrote.
    pub fn push_index(&self, entry: IndexEntry) {
        if let Ok(mut index) = self.index.write()
            && let Some(entries) = index.as_mut()
        {
            entries.push(entry);
        }
    }

    /// Drops index entries at or beyond `offset` (records that a failed write took back).
    pub fn truncate_index(&self, offset: u64) {
        if let Ok(mut index) = self.index.write()
            && let Some(entries) = index.as_mut()
        {
            entries.retain(|e| e.offset < offset);
        }
    }

    pub fn index_snapshot(&self) -> Vec<IndexEntry> {
        self.index
            .read()
            .ok()
            .and_then(|i| i.clone())
            .unwrap_or_default()
    }

    /// Loads the index of a sealed segment that ends at `end_pos` with `end_offset`.
    fn ensure_index(&self, end_pos: u64, end_offset: u64) -> Result<(), LogError> {
        if self.index.read().map(|i| i.is_some()).unwrap_or(false) {
            return Ok(());
        }
        let index_path = self.path.with_extension("idx");
        let entries = match std::fs::read(&index_path)
            .ok()
            .and_then(|b| format::decode_index(&b))
        {
            Some(entries) => entries,
            None => build_index(
                &self.file,
                &self.path,
                self.base_offset,
                end_pos,
                end_offset,
            )?,
        };
        if let Ok(mut index) = self.index.write() {
            index.get_or_insert(entries);
        }
        Ok(())
    }

    /// Where to start reading for `offset`: the last indexed record at or before it.
    fn start_for_offset(&self, offset: u64) -> (u64, u64) {
        let index = self.index.read();
        let entries = index.as_ref().ok().and_then(|i| i.as_ref());
        match entries.map(|e| e.partition_point(|x| x.offset <= offset)) {
            Some(i) if i > 0 => {
                let e = entries.map(|e| e[i - 1]);
                e.map_or((SEGMENT_HEADER_LEN as u64, self.base_offset), |e| {
                    (e.position, e.offset)
                })
            }
            _ => (SEGMENT_HEADER_LEN as u64, self.base_offset),
        }
    }

    /// The first offset whose timestamp may be at or after `timestamp_ms`: an indexed
    /// record no later than it, to scan from.
    pub fn offset_near_time(
        &self,
        timestamp_ms: u64,
        end_pos: u64,
        end_offset: u64,
    ) -> Result<u64, LogError> {
        self.ensure_index(end_pos, end_offset)?;
        let index = self.index_snapshot();
        let i = index.partition_point(|e| e.timestamp_ms < timestamp_ms);
        Ok(if i == 0 {
            self.base_offset
        } else {
            index[i - 1].offset
        })
    }

    /// Reads records from `from` on, stopping at `end_pos` (the committed end of this
    /// segment), after `max_records`, or once `max_bytes` were read.
    pub fn read(
        &self,
        from: u64,
        end_pos: u64,
        end_offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, LogError> {
        self.ensure_index(end_pos, end_offset)?;
        let (start, mut expected) = self.start_for_offset(from);
        let mut scanner = Scanner::new(&self.file, start, end_pos);
        let mut records = Vec::new();
        let mut bytes = 0;
        while records.len() < max_records && bytes < max_bytes {
            let position = scanner.pos;
            match scanner
                .next_frame()
                .map_err(|e| LogError::io("reading a segment", &self.path, e))?
            {
                None => break,
                Some(Ok(frame)) if frame.record.offset == expected => {
                    expected += 1;
                    if frame.record.offset >= from {
                        bytes += frame.len;
                        records.push(frame.record);
                    }
                }
                Some(Ok(_)) => {
                    return Err(self.corrupt(position, expected, "a record is out of sequence"));
                }
                Some(Err(e)) => return Err(self.corrupt(position, expected, &e.to_string())),
            }
        }
        Ok(records)
    }

    fn corrupt(&self, position: u64, offset: u64, reason: &str) -> LogError {
        LogError::Corrupt {
            segment: self.path.clone(),
            position,
            offset,
            reason: reason.to_string(),
        }
    }
}

/// Reads frames one after another from a file, between two positions.
pub struct Scanner<'f> {
    file: &'f File,
    pub pos: u64,
    end: u64,
    buf: Vec<u8>,
    buf_start: u64,
    /// How many bytes the next read takes at least.
    chunk: usize,
}

impl<'f> Scanner<'f> {
    pub fn new(file: &'f File, pos: u64, end: u64) -> Self {
        Self {
            file,
            pos,
            end,
            buf: Vec::new(),
            buf_start: pos,
            chunk: FIRST_READ,
        }
    }

    /// The bytes from `pos` on that are buffered, reading at least `need` of them if the
    /// file has them.
    fn window(&mut self, pos: u64, need: usize) -> std::io::Result<&[u8]> {
        let buffered_end = self.buf_start + self.buf.len() as u64;
        if pos < self.buf_start || pos + need as u64 > buffered_end {
            let len = need
                .max(self.chunk)
                .min(self.end.saturating_sub(pos) as usize);
            self.chunk = (self.chunk * 2).min(READ_CHUNK);
            self.buf.resize(len, 0);
            let mut read = 0;
            while read < len {
                match self
                    .file
                    .read_at(&mut self.buf[read..], pos + read as u64)?
                {
                    0 => break,
                    n => read += n,
                }
            }
            self.buf.truncate(read);
            self.buf_start = pos;
        }
        let from = (pos - self.buf_start) as usize;
        Ok(&self.buf[from.min(self.buf.len())..])
    }

    /// The next frame, `None` at the end, or why the bytes there are not a frame.
    pub fn next_frame(&mut self) -> std::io::Result<Option<Result<Decoded, FrameError>>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let pos = self.pos;
        let prefix = self.window(pos, format::FRAME_PREFIX_LEN)?;
        let needed = match format::declared_len(prefix) {
            Ok(len) => len,
            Err(e) => return Ok(Some(Err(e))),
        };
        let bytes = self.window(pos, needed)?;
        let decoded = format::decode_frame(bytes);
        if let Ok(frame) = &decoded {
            self.pos += frame.len as u64;
        }
        Ok(Some(decoded))
    }
}

/// Rebuilds the sparse index of a sealed segment by reading it through.
fn build_index(
    file: &File,
    path: &Path,
    base: u64,
    end_pos: u64,
    end_offset: u64,
) -> Result<Vec<IndexEntry>, LogError> {
    let mut scanner = Scanner::new(file, SEGMENT_HEADER_LEN as u64, end_pos);
    let mut entries = Vec::new();
    let mut expected = base;
    let mut sampler = IndexSampler::default();
    loop {
        let position = scanner.pos;
        match scanner
            .next_frame()
            .map_err(|e| LogError::io("indexing a segment", path, e))?
        {
            None => break,
            Some(Ok(frame)) if frame.record.offset == expected => {
                entries.extend(sampler.sample(expected, position, frame.record.timestamp_ms));
                expected += 1;
            }
            Some(other) => {
                let reason = match other {
                    Ok(_) => "a record is out of sequence".to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(LogError::Corrupt {
                    segment: path.to_path_buf(),
                    position,
                    offset: expected,
                    reason,
                });
            }
        }
    }
    if expected != end_offset {
        return Err(LogError::Corrupt {
            segment: path.to_path_buf(),
            position: end_pos,
            offset: expected,
            reason: format!(
                "the segment ends at offset {expected}, the next one starts at {end_offset}"
            ),
        });
    }
    Ok(entries)
}

/// What recovery found in the last segment.
#[derive(Debug)]
pub struct Recovered {
    /// Bytes of whole, acknowledged-shape data: everything up to the end of the last
    /// complete append request.
    pub valid_len: u64,
    /// Offset the next record gets.
    pub next_offset: u64,
    /// Timestamp of the last record kept (0 if none).
    pub last_timestamp_ms: u64,
    /// Index entries of the records kept.
    pub index: Vec<IndexEntry>,
    /// Bytes after `valid_len` that were cut off: a torn tail (zeros written ahead of
    /// the records are not counted).
    pub torn_bytes: u64,
}

/// Reads the last segment through and finds where its whole records end.
///
/// A damaged or incomplete frame ends the scan. It is a torn tail, cut off, when no
/// intact frame after it was written after the damaged bytes had been synced; it is
/// corruption, reported and never cut off, when one was (its `durable_len` lies past
/// the damage). Records of an append request whose last frame is missing are cut off
/// too: a request is durable whole or not at all. Zeros after the last record are the
/// space the writer writes ahead, and end the log.
pub fn recover_tail(
    file: &File,
    path: &Path,
    base: u64,
    file_len: u64,
) -> Result<Recovered, LogError> {
    let mut scanner = Scanner::new(file, SEGMENT_HEADER_LEN as u64, file_len);
    let mut recovered = Recovered {
        valid_len: SEGMENT_HEADER_LEN as u64,
        next_offset: base,
        last_timestamp_ms: 0,
        index: Vec::new(),
        torn_bytes: 0,
    };
    let mut pending_index = Vec::new();
    let mut expected = base;
    let mut sampler = IndexSampler::default();
    let damage_at = loop {
        let position = scanner.pos;
        match scanner
            .next_frame()
            .map_err(|e| LogError::io("recovering a segment", path, e))?
        {
            None => break None,
            Some(Ok(frame)) if frame.record.offset == expected => {
                pending_index.extend(sampler.sample(expected, position, frame.record.timestamp_ms));
                expected += 1;
                if frame.flags & format::FLAG_END_OF_BATCH != 0 {
                    recovered.valid_len = scanner.pos;
                    recovered.next_offset = expected;
                    recovered.last_timestamp_ms = frame.record.timestamp_ms;
                    recovered.index.append(&mut pending_index);
                }
            }
            Some(_) => break Some(position),
        }
    };
    // Zeros after the last record are space the writer wrote ahead, not damage.
    let written_end = match damage_at {
        Some(position) => written_end(file, position, file_len)
            .map_err(|e| LogError::io("recovering a segment", path, e))?,
        None => file_len,
    };
    let damage_at = damage_at.filter(|&position| position < written_end);
    if let Some(position) = damage_at
        && let Some(proof) = synced_after(file, position, written_end, expected)?
    {
        return Err(LogError::Corrupt {
            segment: path.to_path_buf(),
            position,
            offset: expected,
            reason: format!(
                "damaged record before an intact one written after it was synced (offset {proof}); this is not a torn write"
            ),
        });
    }
    recovered.torn_bytes = written_end - recovered.valid_len;
    Ok(recovered)
}

/// The end of the last byte that is not zero between `from` and `len`, or `from` if
/// they are all zero; read backwards, since what follows the records is zeros.
fn written_end(file: &File, from: u64, len: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = len;
    while end > from {
        let start = end.saturating_sub(buf.len() as u64).max(from);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(last) = chunk.iter().rposition(|&b| b != 0) {
            return Ok(start + last as u64 + 1);
        }
        end = start;
    }
    Ok(from)
}

/// Looks past damage at `position` for an intact frame whose `durable_len` shows that
/// the damaged bytes had been synced; returns that frame's offset.
fn synced_after(
    file: &File,
    position: u64,
    file_len: u64,
    expected: u64,
) -> Result<Option<u64>, LogError> {
    let mut bytes = vec![0u8; (file_len - position) as usize];
    file.read_exact_at(&mut bytes, position)
        .map_err(|e| LogError::Io {
            context: "reading a damaged segment".into(),
            path: PathBuf::new(),
            source: e,
        })?;
    let max_offset = expected + (bytes.len() / MIN_FRAME_LEN) as u64 + 1;
    for start in 1..bytes.len().saturating_sub(MIN_FRAME_LEN - 1) {
        let window = &bytes[start..];
        let plausible =
            format::peek_offset(window).is_some_and(|o| (expected..=max_offset).contains(&o));
        if plausible
            && let Ok(frame) = format::decode_frame(window)
            && frame.durable_len > position
        {
            return Ok(Some(frame.record.offset));
        }
    }
    Ok(None)
}
