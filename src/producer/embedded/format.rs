//! The bytes on disk: segment headers, record frames, index files and cursor files.
//! Every constant of the format is here, and nothing else writes or parses these bytes.
//! `docs/on-disk-format.md` describes the same layout for people.

use crate::message::StoredRecord;
use std::fmt;

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"WALDSEG\0";
/// First bytes of every index file.
pub const INDEX_MAGIC: &[u8; 8] = b"WALDIDX\0";
/// First bytes of every cursor file.
pub const CURSOR_MAGIC: &[u8; 8] = b"WALDCUR\0";
/// Version of the segment, index and cursor formats.
pub const VERSION: u32 = 1;

/// Segment header: magic, version, reserved, base offset, creation time, CRC32C of the
/// preceding 32 bytes, padding.
pub const SEGMENT_HEADER_LEN: usize = 40;

/// Frame prefix: body length (u32) and CRC32C (u32) of the length and the body.
pub const FRAME_PREFIX_LEN: usize = 8;
/// Fixed part of a body: offset, timestamp, durable length, flags, key length, header
/// count, payload length.
const BODY_FIXED_LEN: usize = 8 + 8 + 8 + 1 + 4 + 2 + 4;
/// The smallest frame there is.
pub const MIN_FRAME_LEN: usize = FRAME_PREFIX_LEN + BODY_FIXED_LEN;
/// Largest body a frame may declare; anything larger is damage, not data.
pub const MAX_BODY_LEN: usize = 64 * 1024 * 1024;
/// `key_len` of a record without a key.
const NO_KEY: u32 = u32::MAX;

/// Flag: the last record of one append request. Recovery never keeps part of a request.
pub const FLAG_END_OF_BATCH: u8 = 0b0000_0001;

/// An index entry is written for the first record after every this many bytes.
pub const INDEX_INTERVAL: u64 = 4096;
/// Index entry: offset, file position, timestamp.
pub const INDEX_ENTRY_LEN: usize = 24;

/// The length of the frame `record` encodes to.
pub fn frame_len(key: Option<&[u8]>, headers: &[(String, Vec<u8>)], payload: &[u8]) -> usize {
    FRAME_PREFIX_LEN
        + BODY_FIXED_LEN
        + key.map_or(0, <[u8]>::len)
        + headers
            .iter()
            .map(|(n, v)| 2 + n.len() + 4 + v.len())
            .sum::<usize>()
        + payload.len()
}

/// What the log adds to a record when it writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameMeta {
    pub offset: u64,
    pub timestamp_ms: u64,
    /// How many bytes of the segment were already durable (synced) when this frame was
    /// written. Recovery uses it to tell a torn tail from corruption: a damaged byte
    /// below the `durable_len` of an intact later frame had been synced.
    pub durable_len: u64,
    pub flags: u8,
}

/// Appends one frame to `out`.
pub fn encode_frame(
    out: &mut Vec<u8>,
    meta: FrameMeta,
    key: Option<&[u8]>,
    headers: &[(String, Vec<u8>)],
    payload: &[u8],
) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_PREFIX_LEN]);
    out.extend_from_slice(&meta.offset.to_le_bytes());
    out.extend_from_slice(&meta.timestamp_ms.to_le_bytes());
    out.extend_from_slice(&meta.durable_len.to_le_bytes());
    out.push(meta.flags);
    match key {
        Some(key) => {
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key);
        }
        None => out.extend_from_slice(&NO_KEY.to_le_bytes()),
    }
    out.extend_from_slice(&(headers.len() as u16).to_le_bytes());
    for (name, value) in headers {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let body_len = (out.len() - start - FRAME_PREFIX_LEN) as u32;
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    let crc = frame_crc(&out[start..start + 4], &out[start + FRAME_PREFIX_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn frame_crc(len: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len), body)
}

/// Why bytes are not a whole, intact frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the frame needs: `needed` in all.
    Incomplete { needed: usize },
    /// A length, checksum or field that cannot be right.
    Damaged(&'static str),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Incomplete { needed } => {
                write!(f, "incomplete frame ({needed} bytes needed)")
            }
            FrameError::Damaged(what) => f.write_str(what),
        }
    }
}

/// A decoded frame and its length in bytes.
pub struct Decoded {
    pub record: StoredRecord,
    pub durable_len: u64,
    pub flags: u8,
    pub len: usize,
}

/// The total length a frame at the start of `bytes` declares, if its prefix is there
/// and plausible.
pub fn declared_len(bytes: &[u8]) -> Result<usize, FrameError> {
    if bytes.len() < FRAME_PREFIX_LEN {
        return Err(FrameError::Incomplete {
            needed: FRAME_PREFIX_LEN,
        });
    }
    let body_len = u32::from_le_bytes(bytes[0..4].try_into().unwrap_or_default()) as usize;
    if !(BODY_FIXED_LEN..=MAX_BODY_LEN).contains(&body_len) {
        return Err(FrameError::Damaged("frame length out of range"));
    }
    Ok(FRAME_PREFIX_LEN + body_len)
}

/// Decodes the frame at the start of `bytes`, checking its CRC before reading a field.
pub fn decode_frame(bytes: &[u8]) -> Result<Decoded, FrameError> {
    let len = declared_len(bytes)?;
    if bytes.len() < len {
        return Err(FrameError::Incomplete { needed: len });
    }
    let stored_crc = u32::from_le_bytes(bytes[4..8].try_into().unwrap_or_default());
    let body = &bytes[FRAME_PREFIX_LEN..len];
    if frame_crc(&bytes[0..4], body) != stored_crc {
        return Err(FrameError::Damaged("checksum mismatch"));
    }
    let mut r = Reader { bytes: body, at: 0 };
    let offset = r.u64()?;
    let timestamp_ms = r.u64()?;
    let durable_len = r.u64()?;
    let flags = r.u8()?;
    let key = match r.u32()? {
        NO_KEY => None,
        n => Some(r.take(n as usize)?.to_vec()),
    };
    let header_count = r.u16()?;
    let mut headers = Vec::with_capacity(header_count as usize);
    for _ in 0..header_count {
        let name_len = r.u16()? as usize;
        let name = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| FrameError::Damaged("header name is not UTF-8"))?
            .to_string();
        let value_len = r.u32()? as usize;
        headers.push((name, r.take(value_len)?.to_vec()));
    }
    let payload_len = r.u32()? as usize;
    let payload = r.take(payload_len)?.to_vec();
    if r.at != body.len() {
        return Err(FrameError::Damaged("frame has trailing bytes"));
    }
    Ok(Decoded {
        record: StoredRecord {
            offset,
            timestamp_ms,
            key,
            headers,
            payload,
        },
        durable_len,
        flags,
        len,
    })
}

/// Reads the offset of a frame without decoding it; used to look for intact frames
/// beyond a damaged one.
pub fn peek_offset(bytes: &[u8]) -> Option<u64> {
    bytes
        .get(FRAME_PREFIX_LEN..FRAME_PREFIX_LEN + 8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or(FrameError::Damaged("field runs past the frame"))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
}

/// The header of a segment whose first record has `base_offset`.
pub fn encode_segment_header(base_offset: u64, created_ms: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[0..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&base_offset.to_le_bytes());
    header[24..32].copy_from_slice(&created_ms.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..32]);
    header[32..36].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The base offset and creation time of a segment header, if it is intact.
pub fn decode_segment_header(bytes: &[u8]) -> Option<(u64, u64)> {
    let header = bytes.get(..SEGMENT_HEADER_LEN)?;
    let crc = u32::from_le_bytes(header[32..36].try_into().ok()?);
    if &header[0..8] != SEGMENT_MAGIC || crc32c::crc32c(&header[0..32]) != crc {
        return None;
    }
    if u32::from_le_bytes(header[8..12].try_into().ok()?) != VERSION {
        return None;
    }
    let base = u64::from_le_bytes(header[16..24].try_into().ok()?);
    let created = u64::from_le_bytes(header[24..32].try_into().ok()?);
    Some((base, created))
}

/// One entry of a sparse index: where the record `offset` starts, and its timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub position: u64,
    pub timestamp_ms: u64,
}

/// An index file: magic, version, entries, CRC32C of everything before it.
pub fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + entries.len() * INDEX_ENTRY_LEN + 4);
    out.extend_from_slice(INDEX_MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.position.to_le_bytes());
        out.extend_from_slice(&e.timestamp_ms.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The entries of an index file, if it is intact.
pub fn decode_index(bytes: &[u8]) -> Option<Vec<IndexEntry>> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?)
        || !body.starts_with(INDEX_MAGIC)
    {
        return None;
    }
    let entries = body.get(12..)?;
    if entries.len() % INDEX_ENTRY_LEN != 0 {
        return None;
    }
    let u64_at =
        |c: &[u8], i: usize| u64::from_le_bytes(c[i..i + 8].try_into().unwrap_or_default());
    Some(
        entries
            .chunks_exact(INDEX_ENTRY_LEN)
            .map(|c| IndexEntry {
                offset: u64_at(c, 0),
                position: u64_at(c, 8),
                timestamp_ms: u64_at(c, 16),
            })
            .collect(),
    )
}

/// A cursor file: magic, the next offset to consume, CRC32C of both.
pub fn encode_cursor(next_offset: u64) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[0..8].copy_from_slice(CURSOR_MAGIC);
    out[8..16].copy_from_slice(&next_offset.to_le_bytes());
    let crc = crc32c::crc32c(&out[0..16]);
    out[16..20].copy_from_slice(&crc.to_le_bytes());
    out
}

pub fn decode_cursor(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != 20 || &bytes[0..8] != CURSOR_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[16..20].try_into().ok()?);
    (crc32c::crc32c(&bytes[0..16]) == crc)
        .then(|| u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        let headers = vec![("content-type".to_string(), b"application/json".to_vec())];
        let meta = FrameMeta {
            offset: 7,
            timestamp_ms: 1_700_000_000_000,
            durable_len: 40,
            flags: FLAG_END_OF_BATCH,
        };
        encode_frame(&mut out, meta, Some(b"k1"), &headers, b"{\"a\":1}");
        out
    }

    #[test]
    fn a_frame_round_trips() {
        let bytes = sample();
        let headers = vec![("content-type".to_string(), b"application/json".to_vec())];
        assert_eq!(bytes.len(), frame_len(Some(b"k1"), &headers, b"{\"a\":1}"));
        let decoded = decode_frame(&bytes).unwrap();
        assert_eq!(decoded.len, bytes.len());
        assert_eq!(decoded.flags, FLAG_END_OF_BATCH);
        assert_eq!(decoded.record.offset, 7);
        assert_eq!(decoded.durable_len, 40);
        assert_eq!(decoded.record.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(decoded.record.payload, b"{\"a\":1}");
        assert_eq!(peek_offset(&bytes), Some(7));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = sample();
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_frame(&damaged).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn every_truncation_is_incomplete_or_damaged() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(decode_frame(&bytes[..len]).is_err());
        }
    }

    #[test]
    fn headers_index_and_cursor_round_trip() {
        let header = encode_segment_header(42, 99);
        assert_eq!(decode_segment_header(&header), Some((42, 99)));
        let entries = vec![IndexEntry {
            offset: 1,
            position: 40,
            timestamp_ms: 5,
        }];
        assert_eq!(decode_index(&encode_index(&entries)), Some(entries));
        assert_eq!(decode_cursor(&encode_cursor(17)), Some(17));
        let mut bad = encode_cursor(17);
        bad[9] ^= 1;
        assert_eq!(decode_cursor(&bad), None);
    }
}
