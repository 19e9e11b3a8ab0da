//! The Redis target: one command per message, pipelined per batch. Its table and checks
//! are in `config.rs`.

pub mod config;

use crate::targets::delivery::{DeliveryError, Message, ValueShape};
use crate::targets::template::Template;

pub use config::*;

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

/// The command delivering `message` would send, each argument as text.
pub fn preview(config: &Config, message: &Message) -> serde_json::Value {
    let Ok(target) = RedisTarget::new(config) else {
        return serde_json::Value::Null;
    };
    let command: Vec<String> = target
        .command(message)
        .args_iter()
        .map(|arg| match arg {
            ::redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            _ => "0".to_string(),
        })
        .collect();
    serde_json::json!({ "command": command })
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
