//! `[[target]]` with `type = "redis"`: the table as written, with its defaults and its
//! checks.

use serde::{Deserialize, Serialize};

use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, KeyPath};
use crate::config::secret::Secret;
use crate::config::units::HumanDuration;
use crate::targets::delivery::ValueShape;
use crate::targets::template::Template;

/// `[[target]]` with `type = "redis"`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `redis://` or `rediss://` URL. Required.
    pub url: Secret<String>,
    /// `SET`, `DEL`, `HSET`, `XADD`, `PUBLISH` or `LPUSH`. Required.
    pub command: Command,
    /// Key template, for example `order:{payload.id}`; the channel for `PUBLISH`.
    /// Required.
    pub key: String,
    /// Hash field template, for `HSET` only. Required with `HSET`.
    #[serde(default)]
    pub field: Option<String>,
    /// Expiry of the key, for `SET` only. Default: none.
    #[serde(default)]
    pub ttl: Option<HumanDuration>,
    /// What is written: the `payload` alone or the whole `envelope` (ids, key, headers,
    /// timestamp and payload). Default: payload.
    #[serde(default)]
    pub value: ValueShape,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    Set,
    Del,
    Hset,
    Xadd,
    Publish,
    Lpush,
}

impl Config {
    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        checks.url(&at.key("url"), self.url.expose(), &["redis", "rediss"]);
        match Template::parse(&self.key) {
            Ok(t) if t.parts.is_empty() => checks.error(
                Code::InvalidValue,
                &at.key("key"),
                "`key` is empty",
                "write for example \"order:{payload.id}\"",
            ),
            Ok(_) => {}
            Err(errors) => crate::targets::template::report_errors(checks, &at.key("key"), errors),
        }
        match (&self.field, self.command) {
            (None, Command::Hset) => checks.error(
                Code::MissingKey,
                at,
                "`HSET` needs a `field`",
                "add `field = \"{payload.id}\"` or another field template",
            ),
            (Some(_), command) if command != Command::Hset => checks.error(
                Code::InvalidValue,
                &at.key("field"),
                "`field` only applies to `HSET`",
                "remove `field`, or use `command = \"HSET\"`",
            ),
            (Some(field), _) => {
                if let Err(errors) = Template::parse(field) {
                    crate::targets::template::report_errors(checks, &at.key("field"), errors);
                }
            }
            (None, _) => {}
        }
        if let Some(ttl) = self.ttl {
            if self.command != Command::Set {
                checks.error(
                    Code::InvalidValue,
                    &at.key("ttl"),
                    "`ttl` only applies to `SET`",
                    "remove `ttl`, or use `command = \"SET\"`",
                );
            } else if ttl.get().as_millis() == 0 {
                checks.error(
                    Code::InvalidValue,
                    &at.key("ttl"),
                    "`ttl` is zero",
                    "set at least \"1ms\", or remove `ttl`",
                );
            }
        }
        if self.command == Command::Set && Template::parse(&self.key).is_ok_and(|t| !t.has_fields())
        {
            checks.warning(
                Code::InvalidValue,
                &at.key("key"),
                "`key` has no placeholder: every message overwrites the same key",
                "include a field, for example \"order:{payload.id}\"",
            );
        }
    }
}
