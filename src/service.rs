//! `wald.toml`: the settings of the service itself. The file is optional and every key
//! has a default, so `wald serve` runs with none.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::alerts::config::AlertsConfig;
use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, Diagnostic, KeyPath, Severity};
use crate::config::env::Lookup;
use crate::config::file::Document;
use crate::config::secret::Secret;
use crate::config::units::{ByteSize, HumanDuration};
use crate::runtime::resources::HealthConfig;
use crate::status::config::StatusStoreConfig;
use crate::telemetry::LogFormat;
use crate::telemetry::traces::TelemetryConfig;

/// The service settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// Address of the HTTP API. Default: 127.0.0.1:8080.
    pub listen: SocketAddr,
    /// Where the embedded logs, cursors and the status store live. Default: data.
    pub data_dir: PathBuf,
    /// The directory of pipeline files, one namespace per `*.toml`. Default: pipelines.
    pub pipelines_dir: PathBuf,
    /// Reload when a file in `pipelines_dir` changes. Default: true.
    pub watch: bool,
    /// How long the pipelines directory must be quiet after a change before the
    /// reload, so that a burst of edits is one reload. Default: 100ms. Range: 0..=10s.
    pub watch_debounce: HumanDuration,
    /// SHA-256 (hex) of the admin key for `/api/v1/admin/*` and DLQ replay. Default:
    /// none, which disables those routes.
    pub admin_key_sha256: Option<Secret<String>>,
    /// `text` or `json` logs. Default: text.
    pub log_format: LogFormat,
    /// How long shutdown waits for in-flight writes and deliveries. Default: 30s.
    pub shutdown_timeout: HumanDuration,
    /// `[http]`: limits of the API server.
    pub http: HttpLimits,
    /// `[status_store]`: where transaction status is kept.
    pub status_store: StatusStoreConfig,
    /// `[alerts]`: where alerts are posted. Default: none (no alerts).
    pub alerts: Option<AlertsConfig>,
    /// `[health]`: free disk and memory limits.
    pub health: HealthConfig,
    /// `tls = { cert, key, client_ca }`: serve HTTPS. Default: none (plain HTTP).
    pub tls: Option<TlsConfig>,
    /// `[telemetry]`: where spans are exported.
    pub telemetry: TelemetryConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("data"),
            pipelines_dir: PathBuf::from("pipelines"),
            watch: true,
            watch_debounce: HumanDuration::from_millis(100),
            admin_key_sha256: None,
            log_format: LogFormat::Text,
            shutdown_timeout: HumanDuration::from_secs(30),
            http: HttpLimits::default(),
            status_store: StatusStoreConfig::default(),
            alerts: None,
            health: HealthConfig::default(),
            tls: None,
            telemetry: TelemetryConfig::default(),
        }
    }
}

/// `[http]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimits {
    /// Largest request body. Default: 8MiB. Range: 1KiB..=256MiB.
    pub max_body_bytes: ByteSize,
    /// Deepest JSON nesting accepted in a payload. Default: 64. Range: 1..=1024.
    pub max_json_depth: u32,
    /// Writes waiting for durability per namespace before new ones get 503.
    /// Default: 10000. Range: 1..=1000000.
    pub max_in_flight_per_namespace: u32,
    /// Time a client has to send its request headers, and a new connection its first
    /// request. Default: 10s.
    pub header_read_timeout: HumanDuration,
    /// Time a whole request may take. Default: 30s.
    pub request_timeout: HumanDuration,
    /// Time a connection with no request in flight stays open (keep-alive).
    /// Default: 60s.
    pub idle_timeout: HumanDuration,
    /// Connections open at once (fewer when the file descriptor limit is lower); at the
    /// limit a new one takes the place of the one idle the longest. Default: 10000.
    /// Range: 1..=1000000.
    pub max_connections: u32,
    /// `[http.cors]`: which web origins may call the API. Default: none (CORS off).
    pub cors: CorsConfig,
}

/// `tls = { cert, key, client_ca }`: HTTPS on the listener (see [`crate::http::tls`]).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file with the CA certificates that sign client certificates; when set,
    /// clients without such a certificate are refused. Default: none.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// `[http.cors]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins (`https://app.example.com`) whose pages may call the API; `"*"` for any.
    /// Default: none.
    pub allowed_origins: Vec<String>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: ByteSize::mib(8),
            max_json_depth: 64,
            max_in_flight_per_namespace: 10_000,
            header_read_timeout: HumanDuration::from_secs(10),
            request_timeout: HumanDuration::from_secs(30),
            idle_timeout: HumanDuration::from_secs(60),
            max_connections: 10_000,
            cors: CorsConfig::default(),
        }
    }
}

/// Reads a parsed `wald.toml`.
pub fn parse_service(doc: &mut Document<'_>) -> Option<ServiceConfig> {
    let root = std::mem::take(doc.root.get_mut());
    let span = doc.root.span();
    doc.section(toml::Spanned::new(span, root))
}

impl ServiceConfig {
    pub fn validate(&self) -> Vec<crate::config::diagnostic::Finding> {
        let mut checks = Checks::default();
        let root = KeyPath::root();
        if let Some(hash) = &self.admin_key_sha256 {
            checks.sha256(&root.key("admin_key_sha256"), hash.expose());
        }
        let http = root.key("http");
        checks.range(
            Code::InvalidValue,
            &http.key("max_body_bytes"),
            self.http.max_body_bytes,
            ByteSize::kib(1),
            ByteSize::mib(256),
        );
        checks.range(
            Code::InvalidValue,
            &http.key("max_json_depth"),
            self.http.max_json_depth,
            1,
            1024,
        );
        checks.range(
            Code::InvalidValue,
            &http.key("max_in_flight_per_namespace"),
            self.http.max_in_flight_per_namespace,
            1,
            1_000_000,
        );
        checks.range(
            Code::InvalidValue,
            &http.key("max_connections"),
            self.http.max_connections,
            1,
            1_000_000,
        );
        for (key, value) in [
            ("header_read_timeout", self.http.header_read_timeout),
            ("request_timeout", self.http.request_timeout),
            ("idle_timeout", self.http.idle_timeout),
        ] {
            if value.get().is_zero() {
                checks.error(
                    Code::InvalidValue,
                    &http.key(key),
                    format!("`{key}` is zero"),
                    format!("set `{key}` to for example \"10s\""),
                );
            }
        }
        if self.watch_debounce.get() > std::time::Duration::from_secs(10) {
            checks.error(
                Code::InvalidValue,
                &root.key("watch_debounce"),
                "`watch_debounce` is longer than 10s",
                "set `watch_debounce` to for example \"100ms\"",
            );
        }
        self.status_store
            .validate(&mut checks, &root.key("status_store"));
        if let Some(alerts) = &self.alerts {
            alerts.validate(&mut checks, &root.key("alerts"));
        }
        let telemetry = root.key("telemetry");
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            checks.error(
                Code::InvalidValue,
                &telemetry.key("sample_ratio"),
                format!("`sample_ratio` is {}", self.telemetry.sample_ratio),
                "give a share between 0.0 and 1.0, for example 0.1 for one trace in ten",
            );
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint
            && !url::Url::parse(endpoint).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            checks.error(
                Code::InvalidValue,
                &telemetry.key("otlp_endpoint"),
                format!("`{endpoint}` is not an http:// or https:// URL"),
                "give the collector's OTLP/HTTP address, for example \"http://otel-collector:4318\"",
            );
        }
        for (i, origin) in self.http.cors.allowed_origins.iter().enumerate() {
            if origin != "*" && axum::http::HeaderValue::from_str(origin).is_err()
                || origin.ends_with('/')
            {
                checks.error(
                    Code::InvalidValue,
                    &http.key("cors").key("allowed_origins").index(i),
                    format!("`{origin}` is not an origin"),
                    "write an origin as scheme://host[:port], for example \"https://app.example.com\", or \"*\"",
                );
            }
        }
        checks.findings
    }
}

/// Loads `wald.toml`; without a file, the defaults.
pub fn load_service(
    path: Option<&Path>,
    lookup: Lookup,
) -> (Option<ServiceConfig>, Vec<Diagnostic>) {
    let Some(path) = path else {
        return (Some(ServiceConfig::default()), Vec::new());
    };
    let rejected = |r: Box<crate::config::file::Rejected>| -> Vec<Diagnostic> {
        r.findings.into_iter().map(|f| r.source.place(f)).collect()
    };
    let text = match crate::config::file::read_text(path) {
        Ok(text) => text,
        Err(r) => return (None, rejected(r)),
    };
    let mut doc = match Document::parse(path, &text, lookup) {
        Ok(doc) => doc,
        Err(r) => return (None, rejected(r)),
    };
    let config = parse_service(&mut doc);
    let mut findings = std::mem::take(&mut doc.findings);
    if let Some(config) = &config {
        findings.extend(config.validate());
    }
    let has_errors = findings.iter().any(|f| f.severity == Severity::Error);
    let diagnostics = findings.into_iter().map(|f| doc.source.place(f)).collect();
    (config.filter(|_| !has_errors), diagnostics)
}
