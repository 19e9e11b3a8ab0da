//! The HTTP target: a webhook called once per message, with an `Idempotency-Key` header
//! and Standard Webhooks signatures (<https://www.standardwebhooks.com>), or the legacy
//! HMAC-SHA256 of the body in `X-Wald-Signature`.
//! Its table and checks are in `config.rs`.

pub mod config;

use crate::targets::delivery::{DeliveryError, Message, ValueShape};

pub use config::*;

/// Longest `Retry-After` honoured, so that a target cannot park a message for days.
const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// A webhook ready to call, with its connection pool.
pub struct HttpTarget {
    client: reqwest::Client,
    config: Config,
    /// The keys of `signing_secrets`, decoded once.
    signing_keys: Vec<Vec<u8>>,
}

impl HttpTarget {
    pub fn new(config: &Config) -> Result<Self, DeliveryError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout.get())
            .build()
            .map_err(|e| DeliveryError::permanent(format!("building the HTTP client: {e}")))?;
        let signing_keys = config
            .signing_secrets
            .iter()
            .map(|s| {
                webhook_key(s.expose())
                    .ok_or_else(|| DeliveryError::permanent("a signing secret is not `whsec_...`"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            client,
            config: config.clone(),
            signing_keys,
        })
    }

    /// Calls the webhook with the message; a 2xx delivers it, a status in `retry_on`
    /// or a network error is retried, any other status is permanent.
    pub async fn deliver(&self, message: &Message) -> Result<(), DeliveryError> {
        let (body, content_type) = body(&self.config, message);
        let method = match self.config.method {
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
        };
        let mut request = self
            .client
            .request(method, &self.config.url)
            .header("content-type", content_type)
            .header("idempotency-key", &message.message_id);
        for (name, value) in &self.config.headers {
            request = request.header(name, value.expose());
        }
        if let Some(trace) = &message.trace {
            request = request.header("traceparent", &trace.traceparent);
            if let Some(state) = &trace.tracestate {
                request = request.header("tracestate", state);
            }
        }
        if !self.signing_keys.is_empty() {
            let timestamp = crate::message::now_ms() / 1000;
            let signatures =
                webhook_signatures(&self.signing_keys, &message.message_id, timestamp, &body);
            request = request
                .header("webhook-id", &message.message_id)
                .header("webhook-timestamp", timestamp)
                .header("webhook-signature", signatures);
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

/// The body `message` is sent with, and its content type.
fn body(config: &Config, message: &Message) -> (Vec<u8>, &'static str) {
    match config.body {
        ValueShape::Payload if !message.payload_is_json => {
            (message.payload.clone(), "application/octet-stream")
        }
        ValueShape::Payload => (message.payload.clone(), "application/json"),
        ValueShape::Envelope => (message.envelope(), "application/json"),
    }
}

/// The request delivering `message` would make, secrets and signatures left out.
pub fn preview(config: &Config, message: &Message) -> serde_json::Value {
    let (body, content_type) = body(config, message);
    let mut headers = serde_json::Map::new();
    headers.insert("content-type".into(), content_type.into());
    headers.insert("idempotency-key".into(), message.message_id.as_str().into());
    for name in config.headers.keys() {
        headers.insert(name.clone(), "(secret)".into());
    }
    if !config.signing_secrets.is_empty() {
        headers.insert("webhook-id".into(), message.message_id.as_str().into());
        headers.insert("webhook-timestamp".into(), "(time of sending)".into());
        headers.insert("webhook-signature".into(), "(signed)".into());
    }
    if config.hmac_secret.is_some() {
        headers.insert("x-wald-signature".into(), "(signed)".into());
    }
    serde_json::json!({
        "method": format!("{:?}", config.method).to_uppercase(),
        "url": redacted(&config.url),
        "headers": headers,
        "body": crate::targets::delivery::shown(&body),
    })
}

/// `sha256=<hex>` of the body's HMAC-SHA256 under `secret`.
fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under each key, separated by
/// spaces: the Standard Webhooks `webhook-signature` header.
fn webhook_signatures(keys: &[Vec<u8>], id: &str, timestamp: u64, body: &[u8]) -> String {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    keys.iter()
        .map(|key| {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key)
                .expect("HMAC takes keys of any length");
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body);
            let signature = mac.finalize().into_bytes();
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(signature)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
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
    fn standard_webhooks_signatures_match_the_specification_example() {
        // The example of the Standard Webhooks specification's reference libraries.
        let key = super::webhook_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            super::webhook_signatures(
                &[key.clone(), key],
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                body
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            super::sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
