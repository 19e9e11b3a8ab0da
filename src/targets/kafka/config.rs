//! `[[target]]` with `type = "kafka"`: the table as written, with its defaults and its
//! checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::checks::Checks;
use crate::config::diagnostic::KeyPath;
use crate::config::units::HumanDuration;
use crate::kafka::{check_brokers, check_delivery_timeout, check_options, check_topic};
use crate::targets::template::Template;

use crate::targets::delivery::ValueShape;

/// `[[target]]` with `type = "kafka"`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Bootstrap servers, `host:port` separated by commas. Required.
    pub brokers: String,
    /// Topic to produce to. Required.
    pub topic: String,
    /// Record key template. Default: the message's key.
    #[serde(default)]
    pub key: Option<String>,
    /// The record value: the `payload` alone or the whole `envelope`. Default: payload.
    #[serde(default)]
    pub value: ValueShape,
    /// Longest wait for the broker's acknowledgement. Default: 30s. Range: 1s..=5m.
    #[serde(default = "crate::kafka::default_delivery_timeout")]
    pub delivery_timeout: HumanDuration,
    /// Further librdkafka properties. Default: none.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl Config {
    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        check_brokers(checks, &at.key("brokers"), &self.brokers);
        check_topic(checks, &at.key("topic"), &self.topic);
        if let Some(key) = &self.key
            && let Err(errors) = Template::parse(key)
        {
            crate::targets::template::report_errors(checks, &at.key("key"), errors);
        }
        check_delivery_timeout(checks, &at.key("delivery_timeout"), self.delivery_timeout);
        check_options(checks, &at.key("options"), &self.options);
    }
}
