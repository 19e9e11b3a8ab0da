//! The file target: JSON Lines, one delivered message (with its `message_id`) per line.
//! For the out-of-the-box demo and for debugging.
//! Its table and checks are in `config.rs`.

pub mod config;

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::targets::delivery::{BatchError, DeliveryError, Message};

pub use config::*;

/// An open file target: appends one envelope per line.
pub struct FileTarget {
    path: PathBuf,
    fsync: bool,
    file: Arc<Mutex<File>>,
}

impl FileTarget {
    /// Opens (or creates) the file for appending, and its directory.
    pub async fn open(config: &Config) -> Result<Self, DeliveryError> {
        let failed = |e: std::io::Error| {
            DeliveryError::retriable(format!("opening {}: {e}", config.path.display()))
        };
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(failed)?;
        }
        // Without blocking: a FIFO at the path would otherwise wait for a reader (with
        // none, the open fails and is retried; a full one fails the write, retried
        // too). Devices such as /dev/stdout stay allowed.
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&config.path)
            .await
            .map_err(failed)?;
        Ok(Self {
            path: config.path.clone(),
            fsync: config.fsync,
            file: Arc::new(Mutex::new(file.into_std().await)),
        })
    }

    /// Appends the batch, one line a message, with one write and (with `fsync`) one
    /// `fdatasync`.
    pub async fn deliver_batch(&self, messages: &[Message]) -> Result<(), BatchError> {
        let mut lines = Vec::new();
        let mut ends = Vec::with_capacity(messages.len());
        for message in messages {
            lines.extend(message.envelope());
            lines.push(b'\n');
            ends.push(lines.len());
        }
        let (file, fsync) = (self.file.clone(), self.fsync);
        tokio::task::spawn_blocking(move || append_lines(&file, &lines, &ends, fsync))
            .await
            .unwrap_or_else(|e| Err((0, std::io::Error::other(e))))
            .map_err(|(delivered, e)| BatchError {
                delivered,
                error: DeliveryError::retriable(format!("writing {}: {e}", self.path.display())),
            })
    }
}

/// The line delivering `message` would append.
pub fn preview(config: &Config, message: &Message) -> serde_json::Value {
    serde_json::json!({
        "path": config.path.display().to_string(),
        "line": crate::targets::delivery::shown(&message.envelope()),
    })
}

/// Writes `lines`, the `i`th of which ends at `ends[i]`, at the end of `file`, and
/// syncs them with `fsync`. On failure: how many lines were delivered, with the error.
/// A line written in part is cut off again, so that its retry starts a line; a failed
/// sync delivers none.
fn append_lines(
    file: &Mutex<File>,
    lines: &[u8],
    ends: &[usize],
    fsync: bool,
) -> Result<(), (usize, std::io::Error)> {
    let file = file.lock().unwrap_or_else(|e| e.into_inner());
    let start = file.metadata().map_err(|e| (0, e))?.len();
    let mut written = 0;
    while written < lines.len() {
        let error = match (&*file).write(&lines[written..]) {
            Ok(0) => std::io::ErrorKind::WriteZero.into(),
            Ok(n) => {
                written += n;
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => e,
        };
        let whole = ends.iter().take_while(|end| **end <= written).count();
        let kept = whole.checked_sub(1).map_or(0, |last| ends[last]);
        let _ = file.set_len(start + kept as u64);
        return Err((whole, error));
    }
    if fsync {
        file.sync_data().map_err(|e| (0, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(offset: u64, payload: &[u8], payload_is_json: bool) -> Message {
        Message {
            namespace: "shop".into(),
            offset,
            message_id: format!("m{offset}"),
            transaction_id: "t".into(),
            key: None,
            timestamp_ms: 1,
            headers: Default::default(),
            payload: payload.to_vec(),
            payload_is_json,
            trace: None,
        }
    }

    async fn target(path: &std::path::Path) -> FileTarget {
        let config = Config {
            path: path.to_path_buf(),
            fsync: true,
        };
        FileTarget::open(&config).await.expect("opens")
    }

    #[tokio::test]
    async fn a_batch_is_one_line_a_message_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out/orders.jsonl");
        let target = target(&path).await;
        let batch = [
            message(1, br#"{"b": 2, "a": [1, 2]}"#, true),
            message(2, b"{\n  \"spans\": \"lines\"\n}", true),
            message(3, &[0, 159, 146, 150], false),
        ];
        target.deliver_batch(&batch).await.expect("delivered");
        target.deliver_batch(&batch[..1]).await.expect("delivered");
        let text = std::fs::read_to_string(&path).expect("written");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        let ids: Vec<&str> = lines
            .iter()
            .map(|l| l["message_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["m1", "m2", "m3", "m1"]);
        assert_eq!(
            lines[0]["payload"],
            serde_json::json!({"a": [1, 2], "b": 2})
        );
        assert_eq!(lines[1]["payload"], serde_json::json!({"spans": "lines"}));
        assert_eq!(lines[2]["payload"], serde_json::json!("AJ+Slg=="));
        assert_eq!(lines[2]["namespace"], "shop");
    }

    #[tokio::test]
    async fn a_failed_write_delivers_nothing_and_is_retriable() {
        let target = target(std::path::Path::new("/dev/full")).await;
        let failed = target
            .deliver_batch(&[message(1, b"1", true), message(2, b"2", true)])
            .await
            .expect_err("/dev/full takes nothing");
        assert_eq!(failed.delivered, 0);
        assert!(failed.error.retriable, "{:?}", failed.error);
    }
}
