//! The deployment files hold together: the container image's and the Kubernetes
//! settings and pipelines validate with the real binary, the pod's grace period
//! outlasts wald's shutdown timeout, and its memory limit sits above the memory at which
//! readiness fails. (`.ci/run` renders the manifests with `kubectl kustomize` and checks
//! them against the Kubernetes schemas; `scripts/container-image` builds and runs the
//! image.)

mod common;

use std::path::PathBuf;

fn deploy(path: &str) -> PathBuf {
    common::root().join("deploy").join(path)
}

/// The value of `key: <value>` on its first line in `text`.
fn yaml_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches('"'))
}

fn toml_value(path: &std::path::Path, keys: &[&str]) -> toml::Value {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut value: toml::Value = toml::from_str(&text).unwrap_or(toml::Value::Boolean(false));
    for key in keys {
        value = value
            .get(key)
            .cloned()
            .unwrap_or(toml::Value::Boolean(false));
    }
    value
}

fn bytes(size: &str) -> u64 {
    let (number, unit) = size.split_at(
        size.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(size.len()),
    );
    let number: u64 = number.parse().unwrap_or(0);
    number
        * match unit {
            "Ki" | "KiB" => 1 << 10,
            "Mi" | "MiB" => 1 << 20,
            "Gi" | "GiB" => 1 << 30,
            _ => 1,
        }
}

#[test]
fn the_shipped_settings_and_pipelines_validate() {
    for (config, pipelines) in [
        ("wald.toml", vec![common::root().join("pipelines")]),
        (
            "kubernetes/base/wald.toml",
            vec![
                deploy("kubernetes/base/pipelines"),
                deploy("kubernetes/overlays/example/pipelines"),
            ],
        ),
    ] {
        let mut command = common::wald();
        command
            .env(
                "WALD_ADMIN_KEY_SHA256",
                "e2186dbdb1bb4193608605e84f33208765b5693b55edd4f730a719a100eeea6f",
            )
            .args(["validate", "--deny-warnings", "--config"])
            .arg(deploy(config))
            .args(&pipelines);
        let output = command.output().expect("wald validate runs");
        assert!(
            output.status.success(),
            "{config}: {}{}",
            common::stdout(&output),
            common::stderr(&output)
        );
    }
}

#[test]
fn the_pod_outlasts_the_shutdown_and_readiness_fails_before_the_memory_limit() {
    let statefulset =
        std::fs::read_to_string(deploy("kubernetes/base/statefulset.yaml")).expect("statefulset");
    let config = deploy("kubernetes/base/wald.toml");
    let grace: u64 = yaml_value(&statefulset, "terminationGracePeriodSeconds")
        .and_then(|v| v.parse().ok())
        .expect("terminationGracePeriodSeconds");
    let shutdown = toml_value(&config, &["shutdown_timeout"]);
    let shutdown = humantime::parse_duration(shutdown.as_str().expect("shutdown_timeout"))
        .expect("a duration");
    assert!(
        grace > shutdown.as_secs() + 5,
        "{grace} s against {shutdown:?}"
    );

    let limit = statefulset
        .split("limits:")
        .nth(1)
        .and_then(|rest| yaml_value(rest, "memory"))
        .map(bytes)
        .expect("a memory limit");
    let readiness = toml_value(&config, &["health", "max_resident_memory"]);
    let readiness = bytes(readiness.as_str().expect("max_resident_memory"));
    assert!(
        readiness > 0 && readiness < limit,
        "{readiness} against {limit}"
    );
    assert!(statefulset.contains("readOnlyRootFilesystem: true"));
    assert!(statefulset.contains("runAsNonRoot: true"));
    assert!(statefulset.contains("allowPrivilegeEscalation: false"));
}
