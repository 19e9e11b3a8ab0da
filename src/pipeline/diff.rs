//! What a reload changes: the namespaces that run now against a freshly loaded set of
//! pipeline files. Per namespace: added, changed (which keys, and what the change
//! restarts), removed or unchanged; per rejected file: the error, and which namespace
//! keeps running on its last good configuration. `wald plan` and the reload itself
//! both call [`diff`], so a plan shows exactly what the following reload applies.
//!
//! Keys are compared on the configuration's serialized form, in which every secret is
//! a fingerprint: a changed password shows as changed, never as its value.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::config::PipelineConfig;
use super::{LoadReport, LoadedPipeline};
use crate::config::diagnostic::{Diagnostic, Severity};

/// A namespace as it runs now.
pub struct Current<'a> {
    pub file: &'a Path,
    pub config: &'a PipelineConfig,
}

/// What a reload of a set of files does.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Plan {
    /// New namespaces.
    pub added: Vec<Added>,
    /// Namespaces whose configuration changed.
    pub changed: Vec<Changed>,
    /// Namespaces whose file is gone: they stop; their data stays on disk.
    pub removed: Vec<String>,
    /// Namespaces left exactly as they run.
    pub unchanged: Vec<String>,
    /// Files with errors. The namespace each ran before keeps running as it was.
    pub quarantined: Vec<Quarantined>,
    /// Errors about the pipelines directory itself (missing, unreadable, empty): when
    /// there are any, nothing at all is applied.
    #[schema(value_type = Vec<Object>)]
    pub blocked_by: Vec<Diagnostic>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Added {
    pub namespace: String,
    #[schema(value_type = String)]
    pub file: PathBuf,
    #[serde(skip)]
    pub pipeline: LoadedPipeline,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Changed {
    pub namespace: String,
    #[schema(value_type = String)]
    pub file: PathBuf,
    /// Every key whose value changed, with its old and new value (secrets as
    /// fingerprints).
    pub keys: Vec<KeyChange>,
    /// Delivery stops after its in-flight batch, commits, and starts again with the
    /// new consumer settings and targets (`[consumer]`, `[[target]]`).
    pub restarts_consumer: bool,
    /// The backend is replaced: the namespace stops on the old one and starts on the
    /// new (`[producer] type`, or any `[producer]` key of a shared backend). Other
    /// `[producer]` keys of the embedded log apply to the open log.
    pub replaces_backend: bool,
    #[serde(skip)]
    pub pipeline: LoadedPipeline,
}

/// One key that differs: `consumer.batch_size`, `target[billing].url`, ...
#[derive(Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct KeyChange {
    pub key: String,
    /// The old value; absent when the key is new.
    #[schema(value_type = Object)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    /// The new value; absent when the key is gone.
    #[schema(value_type = Object)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Quarantined {
    #[schema(value_type = String)]
    pub file: PathBuf,
    /// The namespace the file declared or last ran, where that much is known.
    pub namespace: Option<String>,
    /// Whether that namespace keeps running on its last good configuration.
    pub keeps_running: bool,
    /// Every error of the file, with line and column.
    #[schema(value_type = Vec<Object>)]
    pub errors: Vec<Diagnostic>,
}

impl Plan {
    /// Whether applying this plan changes nothing that runs.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// Compares what runs (`current`, by namespace) with a freshly loaded `report`.
pub fn diff(current: &BTreeMap<String, Current<'_>>, report: LoadReport) -> Plan {
    let mut plan = Plan::default();
    let files: BTreeSet<&PathBuf> = report.files.iter().collect();
    plan.blocked_by = report
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error && !files.contains(&d.file))
        .cloned()
        .collect();
    if !plan.blocked_by.is_empty() {
        return plan;
    }
    let desired: BTreeMap<String, LoadedPipeline> = report
        .pipelines
        .into_iter()
        .map(|p| (p.config.namespace.clone(), p))
        .collect();

    // A rejected file holds the namespace it ran (or declares) on its old configuration,
    // unless a good file declares that namespace now.
    let mut held = BTreeSet::new();
    for (file, declared) in report.rejected {
        let ran = current
            .iter()
            .find(|(_, c)| c.file == file)
            .map(|(name, _)| name.clone());
        let namespace = ran.or(declared);
        let keeps_running = namespace
            .as_ref()
            .is_some_and(|n| current.contains_key(n) && !desired.contains_key(n));
        if keeps_running {
            held.extend(namespace.clone());
        }
        let errors = report
            .diagnostics
            .iter()
            .filter(|d| d.file == file && d.severity == Severity::Error)
            .cloned()
            .collect();
        plan.quarantined.push(Quarantined {
            file,
            namespace,
            keeps_running,
            errors,
        });
    }

    plan.removed = current
        .keys()
        .filter(|name| !desired.contains_key(*name) && !held.contains(*name))
        .cloned()
        .collect();
    for (name, pipeline) in desired {
        let file = pipeline.source.path.clone();
        let Some(now) = current.get(&name) else {
            plan.added.push(Added {
                namespace: name,
                file,
                pipeline,
            });
            continue;
        };
        let mut keys = Vec::new();
        if now.file != file {
            keys.push(KeyChange {
                key: "file".into(),
                from: Some(now.file.display().to_string().into()),
                to: Some(file.display().to_string().into()),
            });
        }
        compare(
            "",
            &to_value(now.config),
            &to_value(&pipeline.config),
            &mut keys,
        );
        if keys.is_empty() {
            plan.unchanged.push(name);
            continue;
        }
        let under = |prefix: &str| {
            keys.iter().any(|k| {
                k.key == prefix
                    || k.key.starts_with(&format!("{prefix}."))
                    || k.key.starts_with(&format!("{prefix}["))
            })
        };
        plan.changed.push(Changed {
            // Processing is built with the targets.
            restarts_consumer: under("consumer") || under("target") || under("processor"),
            // The embedded log takes its other `[producer]` keys in place; a shared
            // backend is reopened for any of them.
            replaces_backend: under("producer.type")
                || (under("producer")
                    && !matches!(
                        pipeline.config.producer,
                        crate::producer::BackendConfig::Embedded(_)
                    )),
            namespace: name,
            file,
            keys,
            pipeline,
        });
    }
    plan
}

/// The configuration as the diff sees it: its serialized form, secrets fingerprinted.
pub fn to_value(config: &PipelineConfig) -> Value {
    serde_json::to_value(config).unwrap_or(Value::Null)
}

/// A short, stable hash of a configuration (secrets included through their
/// fingerprints), for telling at a glance whether two servers run the same.
pub fn config_hash(config: &PipelineConfig) -> String {
    use sha2::Digest;
    let text = to_value(config).to_string();
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
}

/// Appends every key under `path` whose value differs between `old` and `new`.
fn compare(path: &str, old: &Value, new: &Value, out: &mut Vec<KeyChange>) {
    let join = |key: &str| {
        // The configuration's `targets` is `[[target]]` in the file.
        let key = match key {
            "targets" if path.is_empty() => "target",
            "processors" if path.is_empty() => "processor",
            _ => key,
        };
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => compare(&join(key), x, y, out),
                    (x, y) => out.push(KeyChange {
                        key: join(key),
                        from: x.cloned(),
                        to: y.cloned(),
                    }),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if named(a) && named(b) => {
            // Targets are told apart by name, so that inserting one does not show every
            // later one as changed.
            let by_name = |items: &[Value]| -> BTreeMap<String, Value> {
                items
                    .iter()
                    .filter_map(|v| Some((v.get("name")?.as_str()?.to_string(), v.clone())))
                    .collect()
            };
            let (a, b) = (by_name(a), by_name(b));
            let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for name in names {
                let at = format!("{path}[{name}]");
                match (a.get(name), b.get(name)) {
                    (Some(x), Some(y)) => compare(&at, x, y, out),
                    (x, y) => out.push(KeyChange {
                        key: at,
                        from: x.cloned(),
                        to: y.cloned(),
                    }),
                }
            }
        }
        (Value::Array(a), Value::Array(b))
            if a.len() == b.len() && a.iter().chain(b).all(Value::is_object) =>
        {
            // Steps in order (`[[processor]]`): told apart by place.
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                compare(&format!("{path}[{i}]"), x, y, out);
            }
        }
        (a, b) if a != b => out.push(KeyChange {
            key: path.to_string(),
            from: Some(a.clone()),
            to: Some(b.clone()),
        }),
        _ => {}
    }
}

/// Whether every item is an object with a unique string `name`.
fn named(items: &[Value]) -> bool {
    let names: BTreeSet<&str> = items
        .iter()
        .filter_map(|v| v.get("name")?.as_str())
        .collect();
    names.len() == items.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::load_pipeline_set;

    fn report(files: &[(&str, &str)]) -> LoadReport {
        let files = files
            .iter()
            .map(|(name, text)| (PathBuf::from(name), Ok(text.as_bytes().to_vec())))
            .collect();
        load_pipeline_set(files, &|_| None)
    }

    /// The namespaces of `report`, as if they ran.
    fn running(report: &LoadReport) -> BTreeMap<String, Current<'_>> {
        report
            .pipelines
            .iter()
            .map(|p| {
                let current = Current {
                    file: &p.source.path,
                    config: &p.config,
                };
                (p.config.namespace.clone(), current)
            })
            .collect()
    }

    const ORDERS: &str = r#"
namespace = "orders"
[source]
type = "http"
public = true
[[target]]
name = "audit"
type = "file"
path = "out/orders.jsonl"
"#;

    #[test]
    fn any_producer_key_replaces_a_shared_backend_and_none_the_embedded_log() {
        let on = |producer: &str| ORDERS.replace("[[target]]", &format!("{producer}\n[[target]]"));
        let redis = on("[producer]\ntype = \"redis_streams\"\nurl = \"redis://127.0.0.1:6379\"");
        let before = report(&[("orders.toml", &redis)]);
        let current = running(&before);
        let edited = redis.replace("6379\"", "6379\"\nclaim_idle = \"5s\"");
        let plan = diff(&current, report(&[("orders.toml", &edited)]));
        assert!(plan.changed[0].replaces_backend);

        let embedded = on("[producer]\ntype = \"embedded\"\nsegment_size = \"64MiB\"");
        let before = report(&[("orders.toml", &embedded)]);
        let current = running(&before);
        let edited = embedded.replace("64MiB", "32MiB");
        let plan = diff(&current, report(&[("orders.toml", &edited)]));
        assert!(!plan.changed[0].replaces_backend);
    }

    #[test]
    fn a_changed_target_key_is_named_and_restarts_the_consumer() {
        let before = report(&[("orders.toml", ORDERS)]);
        let current = running(&before);
        let edited = ORDERS.replace("out/orders.jsonl", "out/other.jsonl");
        let plan = diff(&current, report(&[("orders.toml", &edited)]));
        assert_eq!(plan.changed.len(), 1);
        let changed = &plan.changed[0];
        assert_eq!(changed.keys.len(), 1);
        assert_eq!(changed.keys[0].key, "target[audit].path");
        assert!(changed.restarts_consumer);
        assert!(!changed.replaces_backend);

        let described = ORDERS.replace("[source]", "description = \"x\"\n[source]");
        let plan = diff(&current, report(&[("orders.toml", &described)]));
        assert_eq!(plan.changed[0].keys[0].key, "description");
        assert!(!plan.changed[0].restarts_consumer);

        let plan = diff(&current, report(&[("orders.toml", ORDERS)]));
        assert!(plan.is_empty());
        assert_eq!(plan.unchanged, ["orders"]);
    }

    #[test]
    fn a_changed_filter_or_processor_is_named_and_restarts_the_consumer() {
        let processed = ORDERS.replace(
            "[[target]]",
            "[[processor]]\ntransform = \".payload |= del(.card)\"\n[[target]]",
        ) + "filter = \".payload.ok\"\n";
        let before = report(&[("orders.toml", &processed)]);
        let current = running(&before);
        for (edited, key) in [
            (
                processed.replace("del(.card)", "del(.pan)"),
                "processor[0].transform",
            ),
            (
                processed.replace(".payload.ok", ".payload.fine"),
                "target[audit].filter",
            ),
        ] {
            let plan = diff(&current, report(&[("orders.toml", &edited)]));
            let changed = &plan.changed[0];
            assert_eq!(changed.keys.len(), 1, "{:?}", changed.keys);
            assert_eq!(changed.keys[0].key, key);
            assert!(changed.restarts_consumer, "{key}");
        }
    }

    #[test]
    fn a_broken_file_keeps_its_namespace_and_others_still_apply() {
        let before = report(&[("orders.toml", ORDERS)]);
        let current = running(&before);
        let other = ORDERS.replace("\"orders\"", "\"other\"");
        let plan = diff(
            &current,
            report(&[
                ("orders.toml", "namespace = \"orders\"\n[source"),
                ("other.toml", &other),
            ]),
        );
        assert!(plan.removed.is_empty());
        assert_eq!(plan.added.len(), 1);
        assert_eq!(plan.quarantined.len(), 1);
        assert!(plan.quarantined[0].keeps_running);
        assert_eq!(plan.quarantined[0].namespace.as_deref(), Some("orders"));
        assert!(!plan.quarantined[0].errors.is_empty());
    }

    #[test]
    fn a_changed_secret_shows_as_a_fingerprint() {
        let with_key = |key: &str| {
            ORDERS.replace(
                "path = \"out/orders.jsonl\"",
                &format!("path = \"out/orders.jsonl\"\n[[target]]\nname = \"hook\"\ntype = \"http\"\nurl = \"http://127.0.0.1:1/x\"\nhmac_secret = \"{key}\""),
            )
        };
        let before = report(&[("orders.toml", &with_key("first-secret-value"))]);
        let current = running(&before);
        let plan = diff(
            &current,
            report(&[("orders.toml", &with_key("second-secret-value"))]),
        );
        let shown = serde_json::to_string(&plan).unwrap_or_default();
        assert_eq!(plan.changed[0].keys[0].key, "target[hook].hmac_secret");
        assert!(!shown.contains("secret-value"), "{shown}");
        assert!(shown.contains("[redacted:"), "{shown}");
    }
}
