//! `[status_store]` of `wald.toml`: which store keeps transaction status, where, and for
//! how long. The table as written, with its defaults and its checks.

use serde::{Deserialize, Serialize};

use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, KeyPath};
use crate::config::secret::Secret;
use crate::config::units::HumanDuration;

/// `[status_store]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatusStoreConfig {
    /// `embedded` (in `data_dir`), `postgres` or `redis` (shared by several instances).
    /// Default: embedded.
    #[serde(rename = "type")]
    pub kind: StatusStoreKind,
    /// Connection URL; required for `postgres` and `redis`, not allowed for `embedded`.
    pub url: Option<Secret<String>>,
    /// How long a transaction's status is kept after its last change. Default: 7d.
    pub retention: HumanDuration,
}

impl Default for StatusStoreConfig {
    fn default() -> Self {
        Self {
            kind: StatusStoreKind::Embedded,
            url: None,
            retention: HumanDuration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusStoreKind {
    Embedded,
    Postgres,
    Redis,
}

impl StatusStoreConfig {
    /// Checks the table at `at` (`status_store`).
    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        match (self.kind, &self.url) {
            (StatusStoreKind::Embedded, Some(_)) => checks.error(
                Code::InvalidValue,
                &at.key("url"),
                "the embedded status store takes no `url`",
                "remove `url`, or set `type = \"postgres\"` or `\"redis\"`",
            ),
            (StatusStoreKind::Postgres, Some(url)) => {
                checks.url(&at.key("url"), url.expose(), &["postgres", "postgresql"]);
            }
            (StatusStoreKind::Redis, Some(url)) => {
                checks.url(&at.key("url"), url.expose(), &["redis", "rediss"]);
            }
            (StatusStoreKind::Postgres | StatusStoreKind::Redis, None) => checks.error(
                Code::MissingKey,
                at,
                "this status store needs a `url`",
                "add `url = \"${STATUS_STORE_URL}\"`",
            ),
            (StatusStoreKind::Embedded, None) => {}
        }
    }
}
