//! `[alerts]` in `wald.toml`: where alerts go, how they are signed, and how many are
//! posted one by one before a storm is summed up.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, KeyPath};
use crate::config::secret::Secret;
use crate::config::units::HumanDuration;
use crate::targets::ValueShape;
use crate::targets::http;

/// `[alerts]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// `http://` or `https://` URL that receives each alert as a JSON `POST`. Required.
    pub url: String,
    /// Signs each alert the Standard Webhooks way, once with each secret
    /// (`whsec_` and base64). Default: none.
    #[serde(default)]
    pub signing_secrets: Vec<Secret<String>>,
    /// Extra request headers; values may use `${VAR}`. Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret<String>>,
    /// Longest one post may take. Default: 5s. Range: 1ms..=5m.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Alerts posted one by one in a `window`; those beyond are counted and posted as
    /// one `alerts.summary` when the window ends. Default: 10. Range: 1..=1000.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// See `burst`. Default: 1m. Range: 1s..=1d.
    #[serde(default = "default_window")]
    pub window: HumanDuration,
}

fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(5)
}

fn default_burst() -> u32 {
    10
}

fn default_window() -> HumanDuration {
    HumanDuration::from_secs(60)
}

impl AlertsConfig {
    /// The webhook that posts the alerts: an `http` target with these settings.
    pub fn webhook(&self) -> http::Config {
        http::Config {
            url: self.url.clone(),
            method: http::Method::Post,
            headers: self.headers.clone(),
            timeout: self.timeout,
            body: ValueShape::Payload,
            retry_on: http::default_retry_on(),
            signing_secrets: self.signing_secrets.clone(),
            hmac_secret: None,
        }
    }

    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        self.webhook().validate(checks, at);
        checks.range(Code::InvalidValue, &at.key("burst"), self.burst, 1, 1000);
        let window = self.window.get();
        if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&window) {
            checks.error(
                Code::InvalidValue,
                &at.key("window"),
                "`window` must be from 1s to 1d",
                "set `window` to for example \"1m\"",
            );
        }
    }
}
