//! The HTTP target: a webhook called once per message, with an `Idempotency-Key` header
//! and an optional HMAC-SHA256 signature of the body. Its configuration and checks
//! live here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, KeyPath};
use crate::config::secret::Secret;
use crate::config::units::HumanDuration;

use super::delivery::ValueShape;
use super::delivery::{DeliveryError, Message};

/// `[[target]]` with `type = "http"`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `http://` or `https://` URL. Required.
    pub url: String,
    /// `POST`, `PUT` or `PATCH`. Default: POST.
    #[serde(default)]
    pub method: Method,
    /// Extra request headers; values may use `${VAR}`. Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret<String>>,
    /// Longest a request may take before it is retried. Default: 5s. Range: 1ms..=5m.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// The request body: the `payload` alone or the whole `envelope`. Default: envelope.
    #[serde(default = "default_body")]
    pub body: ValueShape,
    /// Status codes that are retried; any other non-2xx goes to the DLQ at once.
    /// Default: [408, 425, 429, 500, 502, 503, 504].
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<u16>,
    /// Signs each body with HMAC-SHA256 in `X-Wald-Signature`. Default: none.
    #[serde(default)]
    pub hmac_secret: Option<Secret<String>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Post,
    Put,
    Patch,
}

fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(5)
}

fn default_body() -> ValueShape {
    ValueShape::Envelope
}

fn default_retry_on() -> Vec<u16> {
    vec![408, 425, 429, 500, 502, 503, 504]
}

/// Headers that wald sets itself on every request.
const RESERVED_HEADERS: &[&str] = &[
    "content-length",
    "host",
    "idempotency-key",
    "x-wald-signature",
    "transfer-encoding",
];

impl Config {
    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        checks.url(&at.key("url"), &self.url, &["http", "https"]);
        let timeout = self.timeout.get();
        if timeout.is_zero() || timeout > std::time::Duration::from_secs(300) {
            checks.error(
                Code::InvalidValue,
                &at.key("timeout"),
                "`timeout` must be from 1ms to 5m",
                "set `timeout` to for example \"5s\"",
            );
        }
        for (i, status) in self.retry_on.iter().enumerate() {
            if !(100..=599).contains(status) || (200..300).contains(status) {
                checks.error(
                    Code::InvalidValue,
                    &at.key("retry_on").index(i),
                    format!("{status} is not an HTTP error status"),
                    "list statuses from 400 to 599, for example [429, 503]",
                );
            }
        }
        for name in self.headers.keys() {
            let path = at.key("headers").key(name.clone());
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid {
                checks.error(
                    Code::InvalidValue,
                    &path,
                    format!("`{}` is not a valid header name", name.escape_debug()),
                    "use letters, digits and `-`",
                );
            } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                checks.error(
                    Code::InvalidValue,
                    &path,
                    format!("`{name}` is set by wald on every request"),
                    "remove it from `headers`",
                );
            }
        }
        if let Some(secret) = &self.hmac_secret
            && secret.expose().len() < 16
        {
            checks.error(
                Code::InvalidValue,
                &at.key("hmac_secret"),
                "`hmac_secret` is shorter than 16 bytes",
                "use a long random secret, from an environment variable: \"${WEBHOOK_SECRET}\"",
            );
        }
    }
}

/// Longest `Retry-After` honoured, so that a target cannot park a message for days.
const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// A webhook ready to call, with its connection pool.
pub struct HttpTarget {
    client: reqwest::Client,
    config: Config,
}

impl HttpTarget {
    pub fn new(config: &Config) -> Result<Self, DeliveryError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout.get())
            .build()
            .map_err(|e| DeliveryError::permanent(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            client,
            config: config.clone(),
        })
    }

    /// Calls the webhook with the message; a 2xx delivers it, a status in `retry_on`
    /// or a network error is retried, any other status is permanent.
    pub async fn deliver(&self, message: &Message) -> Result<(), DeliveryError> {
        let body = match self.config.body {
            ValueShape::Payload => message.payload.clone(),
            ValueShape::Envelope => message.envelope(),
        };
        let method = match self.config.method {
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
        };
        let content_type =
            if matches!(self.config.body, ValueShape::Payload) && !message.payload_is_json {
                "application/octet-stream"
            } else {
                "application/json"
            };
        let mut request = self
            .client
            .request(method, &self.config.url)
            .header("content-type", content_type)
            .header("idempotency-key", &message.message_id);
        for (name, value) in &self.config.headers {
            request = request.header(name, value.expose());
        }
        if let Some(secret) = &self.config.hmac_secret {
            request = request.header("x-wald-signature", sign(secret.expose(), &body));
        }
        let response = request.body(body).send().await.map_err(|e| {
            DeliveryError::retriable(format!(
                "calling {}: {}",
                redacted(&self.config.url),
                e.without_url()
            ))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| std::time::Duration::from_secs(s).min(MAX_RETRY_AFTER));
        let message = format!("{} answered {status}", redacted(&self.config.url));
        if self.config.retry_on.contains(&status.as_u16()) {
            Err(DeliveryError {
                message,
                retriable: true,
                retry_after,
            })
        } else {
            Err(DeliveryError::permanent(message))
        }
    }
}

/// `sha256=<hex>` of the body's HMAC-SHA256 under `secret`.
fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The URL without credentials or query, for errors and logs.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "the webhook".to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            super::sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
