//! Logging set-up. `RUST_LOG` filters (default `info`); `log_format = "json"` in
//! `wald.toml` writes one JSON object per line. Colours only on a terminal.

pub mod traces;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use serde::{Deserialize, Serialize};

/// `log_format` in `wald.toml`: text lines, or one JSON object per line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber; logs go to stderr so that command output on stdout
/// stays clean.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Metric names of `/metrics`, in one place.
pub mod metric {
    pub const NAMESPACE_UP: &str = "wald_namespace_up";
    pub const WRITE_MESSAGES: &str = "wald_write_messages_total";
    pub const WRITE_PAYLOAD_BYTES: &str = "wald_write_payload_bytes_total";
    pub const WRITE_REFUSED: &str = "wald_write_refused_total";
    pub const APPEND_LATENCY: &str = "wald_append_latency_seconds";
    pub const LOG_APPENDS: &str = "wald_log_appends_total";
    pub const LOG_RECORDS: &str = "wald_log_records_total";
    pub const LOG_SYNCS: &str = "wald_log_syncs_total";
    pub const LOG_BYTES: &str = "wald_log_bytes_total";
    pub const LOG_NEXT_OFFSET: &str = "wald_log_next_offset";
    pub const HTTP_REQUESTS: &str = "wald_http_requests_total";
    pub const DELIVERIES: &str = "wald_deliveries_total";
    pub const CIRCUIT_STATE: &str = "wald_target_circuit_state";
    pub const CIRCUIT_OPENED: &str = "wald_target_circuit_opened_total";
    pub const RELOADS: &str = "wald_reloads_total";
    pub const RELOAD_DURATION: &str = "wald_reload_duration_seconds";
    pub const CONFIG_GENERATION: &str = "wald_config_generation";
    pub const QUARANTINED_FILES: &str = "wald_quarantined_files";
    pub const COMPONENT_UP: &str = "wald_component_up";
    pub const COMPONENT_FAILURES: &str = "wald_component_failures_total";
    pub const ALERTS: &str = "wald_alerts_total";
    pub const DATA_DIR_FREE_BYTES: &str = "wald_data_dir_free_bytes";
    pub const DATA_DIR_TOTAL_BYTES: &str = "wald_data_dir_total_bytes";
    pub const DATA_DIR_MIN_FREE_BYTES: &str = "wald_data_dir_min_free_bytes";
    pub const STORAGE_LOW: &str = "wald_storage_low";
    pub const RESIDENT_MEMORY_BYTES: &str = "wald_resident_memory_bytes";
    pub const RESIDENT_MEMORY_LIMIT_BYTES: &str = "wald_resident_memory_limit_bytes";
}
