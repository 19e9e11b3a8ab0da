//! The Redis target: one command per message, pipelined per batch. Its configuration and
//! checks live here.

use serde::{Deserialize, Serialize};

use super::delivery::{DeliveryError, Message, ValueShape};
use super::template::Template;
use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, KeyPath};
use crate::config::secret::Secret;
use crate::config::units::HumanDuration;

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
            Err(errors) => super::template::report_errors(checks, &at.key("key"), errors),
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
                    super::template::report_errors(checks, &at.key("field"), errors);
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

/// A Redis target ready to deliver: one connection that reconnects by itself; a
/// command that failed with the connection is sent again by the retry.
pub struct RedisTarget {
    client: ::redis::Client,
    connection: tokio::sync::OnceCell<::redis::aio::ConnectionManager>,
    command: Command,
    key: Template,
    field: Option<Template>,
    ttl_ms: Option<u64>,
    value: ValueShape,
}

impl RedisTarget {
    pub fn new(config: &Config) -> Result<Self, DeliveryError> {
        let invalid = |what: &str| {
            DeliveryError::permanent(format!("the Redis target's {what} is not valid"))
        };
        Ok(Self {
            client: ::redis::Client::open(config.url.expose().as_str())
                .map_err(|_| invalid("url"))?,
            connection: tokio::sync::OnceCell::new(),
            command: config.command,
            key: Template::parse(&config.key).map_err(|_| invalid("key"))?,
            field: config
                .field
                .as_deref()
                .map(Template::parse)
                .transpose()
                .map_err(|_| invalid("field"))?,
            ttl_ms: config.ttl.map(|t| t.get().as_millis() as u64),
            value: config.value,
        })
    }

    /// Sends the messages' commands as one pipeline. A command the server refuses is
    /// reported with the ones before it delivered; the ones after it were run too and
    /// are sent again with the retry (at least once).
    pub async fn deliver_batch(
        &self,
        messages: &[Message],
    ) -> Result<(), super::delivery::BatchError> {
        let failed_at = |delivered, error| super::delivery::BatchError { delivered, error };
        let mut connection = self
            .connection
            .get_or_try_init(|| self.client.get_connection_manager())
            .await
            .map_err(|e| failed_at(0, classify(e)))?
            .clone();
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        for message in messages {
            pipe.add_command(self.command(message));
        }
        let results: Vec<::redis::RedisResult<::redis::Value>> = pipe
            .query_async(&mut connection)
            .await
            .map_err(|e| failed_at(0, classify(e)))?;
        let refused = results
            .into_iter()
            .enumerate()
            .find_map(|(i, result)| result.err().map(|e| (i, e)));
        match refused {
            None => Ok(()),
            Some((i, e)) => Err(failed_at(i, classify(e))),
        }
    }

    /// The command that delivers `message`.
    fn command(&self, message: &Message) -> ::redis::Cmd {
        let key = self.key.render(message);
        let value = match self.value {
            ValueShape::Payload => message.payload.clone(),
            ValueShape::Envelope => message.envelope(),
        };
        match self.command {
            Command::Set => {
                let mut c = ::redis::cmd("SET");
                c.arg(&key).arg(value);
                if let Some(ttl) = self.ttl_ms {
                    c.arg("PX").arg(ttl);
                }
                c
            }
            Command::Del => {
                let mut c = ::redis::cmd("DEL");
                c.arg(&key);
                c
            }
            Command::Hset => {
                let mut c = ::redis::cmd("HSET");
                let field = self
                    .field
                    .as_ref()
                    .map(|f| f.render(message))
                    .unwrap_or_default();
                c.arg(&key).arg(field).arg(value);
                c
            }
            Command::Xadd => {
                let mut c = ::redis::cmd("XADD");
                c.arg(&key)
                    .arg("*")
                    .arg("message_id")
                    .arg(&message.message_id)
                    .arg("value")
                    .arg(value);
                c
            }
            Command::Publish => {
                let mut c = ::redis::cmd("PUBLISH");
                c.arg(&key).arg(value);
                c
            }
            Command::Lpush => {
                let mut c = ::redis::cmd("LPUSH");
                c.arg(&key).arg(value);
                c
            }
        }
    }
}

/// Connection trouble, timeouts and a busy or loading server are retried; an error
/// the server gives for the command itself (wrong type, syntax) is permanent.
fn classify(e: ::redis::RedisError) -> DeliveryError {
    let retriable = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ::redis::ErrorKind::Server(::redis::ServerErrorKind::BusyLoading)
                | ::redis::ErrorKind::Server(::redis::ServerErrorKind::TryAgain)
                | ::redis::ErrorKind::Server(::redis::ServerErrorKind::ClusterDown)
                | ::redis::ErrorKind::Server(::redis::ServerErrorKind::MasterDown)
        );
    DeliveryError {
        message: format!("redis: {e}"),
        retriable,
        retry_after: None,
    }
}
