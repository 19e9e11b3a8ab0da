//! A record as one text value, for backends that carry text: an SQS message body, a
//! member of the Redis Streams delayed set. JSON with the bytes in base64:
//! `{"t": <ms>, "k": <key>, "h": [[<name>, <value>]...], "p": <payload>}`. Encoding is
//! deterministic, so a record encodes to the same text every time.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::backend::BackendError;
use crate::message::StoredRecord;

#[derive(Serialize, Deserialize)]
struct Envelope {
    t: u64,
    k: Option<String>,
    h: Vec<(String, String)>,
    p: String,
}

pub fn encode(record: &StoredRecord) -> String {
    encode_parts(
        record.timestamp_ms,
        record.key.as_deref(),
        &record.headers,
        &record.payload,
    )
}

/// [`encode`] of a record given by its parts.
pub fn encode_parts(
    timestamp_ms: u64,
    key: Option<&[u8]>,
    headers: &[(String, Vec<u8>)],
    payload: &[u8],
) -> String {
    let envelope = Envelope {
        t: timestamp_ms,
        k: key.map(|k| STANDARD.encode(k)),
        h: headers
            .iter()
            .map(|(n, v)| (n.clone(), STANDARD.encode(v)))
            .collect(),
        p: STANDARD.encode(payload),
    };
    serde_json::to_string(&envelope).unwrap_or_default()
}

/// The record in `text`; its offset is 0.
pub fn decode(text: &str) -> Result<StoredRecord, BackendError> {
    let bad = |e: String| BackendError::Unavailable(format!("a value that is not a record: {e}"));
    let envelope: Envelope = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let bytes = |s: &str| STANDARD.decode(s).map_err(|e| bad(e.to_string()));
    Ok(StoredRecord {
        offset: 0,
        timestamp_ms: envelope.t,
        key: envelope.k.as_deref().map(bytes).transpose()?,
        headers: envelope
            .h
            .iter()
            .map(|(n, v)| Ok((n.clone(), bytes(v)?)))
            .collect::<Result<_, BackendError>>()?,
        payload: bytes(&envelope.p)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_it_was_and_encodes_alike_every_time() {
        let record = StoredRecord {
            offset: 0,
            timestamp_ms: 17,
            key: Some(b"k\0\xff".to_vec()),
            headers: vec![("a".into(), b"\x01\x02".to_vec())],
            payload: b"{\"x\":1}".to_vec(),
        };
        let text = encode(&record);
        assert_eq!(decode(&text).unwrap(), record);
        assert_eq!(encode(&record), text);
        assert!(decode("{}").is_err());
    }
}
