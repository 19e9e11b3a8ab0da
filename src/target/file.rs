//! The file target: JSON Lines, one delivered message (with its `message_id`) per line.
//! For the out-of-the-box demo and for debugging. Its configuration and checks live here.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::{DeliveryError, Message};

use crate::config::diagnostic::{Code, KeyPath};
use crate::config::validate::Checks;

/// `[[target]]` with `type = "file"`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The file to append to, relative to the working directory. Required.
    pub path: PathBuf,
    /// `fdatasync` the file after each batch. Default: false.
    #[serde(default)]
    pub fsync: bool,
}

impl Config {
    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        let path = at.key("path");
        if self.path.as_os_str().is_empty() {
            checks.error(
                Code::InvalidValue,
                &path,
                "`path` is empty",
                "write for example \"data/out/orders.jsonl\"",
            );
        } else if self.path.to_string_lossy().ends_with('/') {
            checks.error(
                Code::InvalidValue,
                &path,
                "`path` names a directory",
                "name a file, for example \"data/out/orders.jsonl\"",
            );
        }
    }
}

/// An open file target: appends one envelope per line.
pub struct FileTarget {
    path: PathBuf,
    fsync: bool,
    file: tokio::sync::Mutex<tokio::fs::File>,
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
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)
            .await
            .map_err(failed)?;
        Ok(Self {
            path: config.path.clone(),
            fsync: config.fsync,
            file: tokio::sync::Mutex::new(file),
        })
    }

    pub async fn deliver(&self, message: &Message) -> Result<(), DeliveryError> {
        let mut line = message.envelope().to_string().into_bytes();
        line.push(b'\n');
        // One write per line, under the lock, so that lines never interleave.
        let mut file = self.file.lock().await;
        let written = match file.write_all(&line).await {
            Ok(()) => file.flush().await,
            Err(e) => Err(e),
        };
        let synced = match written {
            Ok(()) if self.fsync => file.sync_data().await,
            other => other,
        };
        synced
            .map_err(|e| DeliveryError::retriable(format!("writing {}: {e}", self.path.display())))
    }
}
