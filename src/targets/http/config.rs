//! `[[target]]` with `type = "http"`: the table as written, with its defaults and its
//! checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, KeyPath};
use crate::config::secret::Secret;
use crate::config::units::HumanDuration;

use crate::targets::delivery::ValueShape;

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
    /// Signs each request the Standard Webhooks way (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`), once with each secret (`whsec_` and base64), so that a
    /// receiver can rotate: list the new secret beside the old until it switched.
    /// Default: none.
    #[serde(default)]
    pub signing_secrets: Vec<Secret<String>>,
    /// Legacy: signs each body with HMAC-SHA256 in `X-Wald-Signature`. Default: none.
    #[serde(default)]
    pub hmac_secret: Option<Secret<String>>,
}

/// The key of a Standard Webhooks secret (`whsec_<base64>`), if it is one.
pub fn webhook_key(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let encoded = secret.strip_prefix("whsec_")?;
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .filter(|key| key.len() >= 16)
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

pub fn default_retry_on() -> Vec<u16> {
    vec![408, 425, 429, 500, 502, 503, 504]
}

/// Headers that wald sets itself on every request.
const RESERVED_HEADERS: &[&str] = &[
    "content-length",
    "host",
    "idempotency-key",
    "x-wald-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
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
        for (i, secret) in self.signing_secrets.iter().enumerate() {
            if webhook_key(secret.expose()).is_none() {
                checks.error(
                    Code::InvalidValue,
                    &at.key("signing_secrets").index(i),
                    "a signing secret is `whsec_` followed by at least 16 bytes in base64",
                    "make one with `echo whsec_$(head -c 32 /dev/urandom | base64)` and pass it from an environment variable",
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
