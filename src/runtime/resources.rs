//! The machine's resources as the service sees them: free space on the file system of
//! `data_dir` and the process's resident memory, sampled every [`SAMPLE_EVERY`].
//!
//! Below `[health] min_free_disk` new writes are refused (503 `storage_low`) *before*
//! the disk is full, and taken again as soon as space is back; over
//! `[health] max_resident_memory` readiness fails. Both show in readiness, namespace
//! status and `/metrics`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::units::ByteSize;
use crate::shutdown::Stopping;

/// How often free space and memory are read.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// `[health]` in `wald.toml`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Free space under `data_dir` below which new writes are refused with 503
    /// `storage_low`. `0` turns the check off. Default: 128MiB.
    pub min_free_disk: ByteSize,
    /// Resident memory above which readiness fails. Default: none (not checked).
    pub max_resident_memory: Option<ByteSize>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            min_free_disk: ByteSize::mib(128),
            max_resident_memory: None,
        }
    }
}

/// The latest sample, shared by the sampling task, the write routes and the probes.
pub struct Resources {
    data_dir: PathBuf,
    config: HealthConfig,
    free_disk: AtomicU64,
    total_disk: AtomicU64,
    resident_memory: AtomicU64,
    /// Set when the last sample could not read the disk's free space.
    disk_unknown: AtomicBool,
}

/// What readiness and status show of the resources.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ResourcesStatus {
    pub data_dir: String,
    pub free_disk_bytes: u64,
    pub total_disk_bytes: u64,
    pub min_free_disk_bytes: u64,
    /// Free space is below `min_free_disk`: writes are refused.
    pub storage_low: bool,
    pub resident_memory_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_resident_memory_bytes: Option<u64>,
    /// Resident memory is above `max_resident_memory`: readiness fails.
    pub memory_high: bool,
}

impl Resources {
    /// Resources of `data_dir`, sampled once now.
    pub fn new(data_dir: &Path, config: HealthConfig) -> Arc<Self> {
        let resources = Arc::new(Self {
            data_dir: data_dir.to_path_buf(),
            config,
            free_disk: AtomicU64::new(u64::MAX),
            total_disk: AtomicU64::new(0),
            resident_memory: AtomicU64::new(0),
            disk_unknown: AtomicBool::new(false),
        });
        resources.sample();
        resources
    }

    /// Samples every [`SAMPLE_EVERY`] until `stop`, logging when storage turns low and
    /// when it recovers.
    pub fn spawn(self: &Arc<Self>, stop: Stopping) -> tokio::task::JoinHandle<()> {
        let resources = self.clone();
        tokio::spawn(async move {
            let mut was_low = resources.storage_low();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(SAMPLE_EVERY) => {}
                    () = stop.wait() => return,
                }
                resources.sample();
                let low = resources.storage_low();
                let free = resources.free_disk.load(Ordering::Relaxed);
                if low && !was_low {
                    warn!(data_dir = %resources.data_dir.display(), free_bytes = free,
                        min_free_bytes = resources.config.min_free_disk.bytes(),
                        "Free space under the data directory is low: new writes are refused until space is back.");
                } else if was_low && !low {
                    info!(data_dir = %resources.data_dir.display(), free_bytes = free,
                        "Free space under the data directory is back: writes are taken again.");
                }
                was_low = low;
            }
        })
    }

    /// Reads free space and resident memory now.
    pub fn sample(&self) {
        match disk_space(&self.data_dir) {
            Ok((free, total)) => {
                self.free_disk.store(free, Ordering::Relaxed);
                self.total_disk.store(total, Ordering::Relaxed);
                self.disk_unknown.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                if !self.disk_unknown.swap(true, Ordering::Relaxed) {
                    warn!(data_dir = %self.data_dir.display(), error = %e,
                        "Cannot read the free space under the data directory.");
                }
            }
        }
        if let Some(resident) = resident_memory() {
            self.resident_memory.store(resident, Ordering::Relaxed);
        }
    }

    /// Free space is below `min_free_disk`: new writes are refused.
    pub fn storage_low(&self) -> bool {
        self.free_disk.load(Ordering::Relaxed) < self.config.min_free_disk.bytes()
    }

    /// Resident memory is above `max_resident_memory`.
    pub fn memory_high(&self) -> bool {
        self.config
            .max_resident_memory
            .is_some_and(|limit| self.resident_memory.load(Ordering::Relaxed) > limit.bytes())
    }

    pub fn status(&self) -> ResourcesStatus {
        let free = self.free_disk.load(Ordering::Relaxed);
        ResourcesStatus {
            data_dir: self.data_dir.display().to_string(),
            free_disk_bytes: if free == u64::MAX { 0 } else { free },
            total_disk_bytes: self.total_disk.load(Ordering::Relaxed),
            min_free_disk_bytes: self.config.min_free_disk.bytes(),
            storage_low: self.storage_low(),
            resident_memory_bytes: self.resident_memory.load(Ordering::Relaxed),
            max_resident_memory_bytes: self.config.max_resident_memory.map(|m| m.bytes()),
            memory_high: self.memory_high(),
        }
    }
}

/// Free (to an unprivileged process) and total bytes of the file system holding `dir`,
/// or of its nearest existing ancestor (the data directory may not exist yet).
fn disk_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    let mut path = dir;
    while !path.exists() {
        match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => path = parent,
            _ => {
                path = Path::new(".");
                break;
            }
        }
    }
    let stat = rustix::fs::statvfs(path)?;
    Ok((
        stat.f_bavail.saturating_mul(stat.f_frsize),
        stat.f_blocks.saturating_mul(stat.f_frsize),
    ))
}

/// The process's resident memory, from `/proc/self/statm` (Linux).
fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_reads_real_space_and_memory() {
        let dir = tempfile::tempdir().unwrap();
        let resources = Resources::new(&dir.path().join("not/yet"), HealthConfig::default());
        let status = resources.status();
        assert!(status.total_disk_bytes > 0);
        assert!(status.free_disk_bytes <= status.total_disk_bytes);
        assert!(status.resident_memory_bytes > 1024 * 1024);
        assert!(!status.memory_high);
    }

    #[test]
    fn limits_turn_storage_low_and_memory_high() {
        let dir = tempfile::tempdir().unwrap();
        let resources = Resources::new(
            dir.path(),
            HealthConfig {
                min_free_disk: ByteSize::gib(1 << 30),
                max_resident_memory: Some(ByteSize::kib(1)),
            },
        );
        assert!(resources.storage_low());
        assert!(resources.memory_high());
        let off = Resources::new(
            dir.path(),
            HealthConfig {
                min_free_disk: ByteSize::kib(0),
                max_resident_memory: None,
            },
        );
        assert!(!off.storage_low());
        assert!(!off.memory_high());
    }
}
