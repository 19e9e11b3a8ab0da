//! The embedded log's configuration: `[producer]` with `type = "embedded"`.

use serde::{Deserialize, Serialize};

use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, KeyPath};
use crate::config::units::{ByteSize, HumanDuration};

/// `[producer]` with `type = "embedded"`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// A segment file is closed and a new one started at this size. Default: 64MiB.
    /// Range: 1MiB..=1GiB.
    pub segment_size: ByteSize,
    /// ... or at this age, whichever comes first. Default: 1h. Range: 1m..=30d.
    pub segment_age: HumanDuration,
    /// Consumed segments older than this are deleted. Default: 7d.
    pub retention: HumanDuration,
    /// Consumed segments beyond this total size are deleted, oldest first.
    /// Default: none (no size cap).
    pub retention_bytes: Option<ByteSize>,
    /// Also delete segments no consumer group has read yet once they pass retention.
    /// Default: false (unconsumed data is kept).
    pub delete_unconsumed: bool,
    /// `always`: every write is `fdatasync`ed before it is acknowledged (group commit).
    /// `interval`: acknowledged once written, synced every `sync_interval`; a crash can
    /// lose the last interval. Default: always.
    pub sync: SyncMode,
    /// How often `sync = "interval"` syncs. Default: 100ms. Range: 1ms..=10s.
    pub sync_interval: HumanDuration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            segment_size: ByteSize::mib(64),
            segment_age: HumanDuration::from_secs(3600),
            retention: HumanDuration::from_secs(7 * 24 * 3600),
            retention_bytes: None,
            delete_unconsumed: false,
            sync: SyncMode::Always,
            sync_interval: HumanDuration::from_millis(100),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    Always,
    Interval,
}

impl Config {
    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        checks.range(
            Code::BackendLimit,
            &at.key("segment_size"),
            self.segment_size,
            ByteSize::mib(1),
            ByteSize::gib(1),
        );
        let age = self.segment_age.get().as_secs();
        if !(60..=30 * 24 * 3600).contains(&age) {
            checks.error(
                Code::InvalidValue,
                &at.key("segment_age"),
                "`segment_age` must be from 1m to 30d",
                "set `segment_age` to for example \"1h\"",
            );
        }
        let interval = self.sync_interval.get();
        if interval.is_zero() || interval > std::time::Duration::from_secs(10) {
            checks.error(
                Code::InvalidValue,
                &at.key("sync_interval"),
                "`sync_interval` must be from 1ms to 10s",
                "set `sync_interval` to for example \"100ms\"",
            );
        }
        if self.sync == SyncMode::Always && self.sync_interval != Config::default().sync_interval {
            checks.warning(
                Code::InvalidValue,
                &at.key("sync_interval"),
                "`sync_interval` has no effect with `sync = \"always\"`",
                "remove `sync_interval`, or set `sync = \"interval\"`",
            );
        }
        if let Some(cap) = self.retention_bytes
            && cap < self.segment_size
        {
            checks.error(
                Code::InvalidValue,
                &at.key("retention_bytes"),
                "`retention_bytes` is smaller than one segment",
                "set `retention_bytes` to several times `segment_size`",
            );
        }
    }
}
