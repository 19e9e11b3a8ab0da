//! Hot reload through the real binary: files added, edited (also by rename over the old
//! one), removed and broken while the server runs; a swapped symlinked directory;
//! SIGHUP and the admin API; a target's URL changed between deliveries; `wald plan`
//! against the server showing exactly what the next reload applies; and 100 reloads
//! under concurrent writers with nothing lost, nothing delivered twice and no write
//! refused.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, stop};
use serde_json::{Value, json};
use sha2::Digest;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const ADMIN_KEY: &str = "reload-admin-key";

/// A temporary pipelines directory, data directory and `wald.toml` with an admin key.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Result<Self> {
        Self::with("")
    }

    /// Reloads only when asked (SIGHUP or the admin API).
    fn unwatched() -> Result<Self> {
        Self::with("watch = false\n")
    }

    fn with(settings: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("pipelines"))?;
        let hash = hex::encode(sha2::Sha256::digest(ADMIN_KEY.as_bytes()));
        std::fs::write(
            dir.path().join("wald.toml"),
            format!(
                "admin_key_sha256 = \"{hash}\"\nwatch_debounce = \"50ms\"\nshutdown_timeout = \"5s\"\n{settings}"
            ),
        )?;
        Ok(Self { dir })
    }

    fn pipelines(&self) -> PathBuf {
        self.dir.path().join("pipelines")
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
    }

    async fn start(&self, pipelines: &Path) -> Result<Server> {
        let config = self.dir.path().join("wald.toml");
        Server::start(
            pipelines,
            &self.dir.path().join("data"),
            &["--config", &config.display().to_string()],
        )
        .await
    }

    /// Writes a pipeline file the way editors do: a new file renamed over the old one.
    fn put(&self, file: &str, text: &str) -> Result {
        let tmp = self.pipelines().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.pipelines().join(file))?;
        Ok(())
    }
}

/// A public namespace delivering to a JSON Lines file.
fn file_pipeline(namespace: &str, out: &Path, extra: &str) -> String {
    format!(
        "namespace = \"{namespace}\"\n{extra}\n[source]\ntype = \"http\"\npublic = true\n\
         [[target]]\nname = \"out\"\ntype = \"file\"\npath = \"{}\"\n",
        out.display()
    )
}

fn admin(server: &Server, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(method, server.url(path))
        .bearer_auth(ADMIN_KEY)
}

async fn reload(server: &Server) -> Result<Value> {
    let response = admin(server, reqwest::Method::POST, "/api/v1/admin/reload")
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    Ok(response.json().await?)
}

async fn pipelines(server: &Server) -> Result<Value> {
    let response = admin(server, reqwest::Method::GET, "/api/v1/admin/pipelines")
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    Ok(response.json().await?)
}

/// Polls the admin API until `done` holds, for at most 20 s.
async fn pipelines_until(server: &Server, done: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = pipelines(server).await?;
        if done(&now) {
            return Ok(now);
        }
        if Instant::now() > deadline {
            return Err(format!("the pipelines never reached the expected state: {now:#}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn namespace_names(pipelines: &Value) -> BTreeSet<String> {
    pipelines["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["namespace"].as_str().map(str::to_string))
        .collect()
}

fn namespace_entry<'a>(pipelines: &'a Value, name: &str) -> Option<&'a Value> {
    pipelines["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["namespace"] == name)
}

/// Writes one message; returns the status and the answer.
async fn write(
    client: &reqwest::Client,
    server: &Server,
    namespace: &str,
    n: u64,
) -> Result<(u16, Value)> {
    let response = client
        .post(server.url("/api/v1/wal/write"))
        .json(&json!({ "namespace": namespace, "payload": { "n": n } }))
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// The message ids in a JSON Lines file, in order.
fn delivered(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|v| v["message_id"].as_str().map(str::to_string))
        .collect()
}

/// Waits until every id of `ids` is in the file at `path`, for at most 30 s.
async fn delivered_until(path: &Path, ids: &[String]) -> Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = delivered(path);
        let have: HashSet<&String> = found.iter().collect();
        if ids.iter().all(|id| have.contains(id)) {
            return Ok(found);
        }
        if Instant::now() > deadline {
            let missing = ids.iter().filter(|id| !have.contains(id)).count();
            return Err(format!(
                "{missing} of {} messages never delivered to {}",
                ids.len(),
                path.display()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn files_added_edited_and_removed_change_the_running_service_without_a_restart() -> Result {
    let setup = Setup::new()?;
    setup.put(
        "alpha.toml",
        &file_pipeline("alpha", &setup.out("alpha.jsonl"), ""),
    )?;
    let server = setup.start(&setup.pipelines()).await?;
    let client = reqwest::Client::new();
    let first = pipelines(&server).await?;
    assert_eq!(first["generation"], 1);
    assert_eq!(
        namespace_names(&first),
        BTreeSet::from(["alpha".to_string()])
    );
    assert_eq!(write(&client, &server, "beta", 1).await?.0, 404);

    // Added: picked up by the directory watch.
    setup.put(
        "beta.toml",
        &file_pipeline("beta", &setup.out("beta.jsonl"), ""),
    )?;
    let now = pipelines_until(&server, |p| namespace_names(p).contains("beta")).await?;
    assert_eq!(now["generation"], 2);
    let (status, beta_first) = write(&client, &server, "beta", 1).await?;
    assert_eq!(status, 202);

    // Edited by rename over the old file: the new target path gets what follows.
    let (_, alpha_before) = write(&client, &server, "alpha", 1).await?;
    let before_id = alpha_before["message_id"].as_str().ok_or("id")?.to_string();
    delivered_until(&setup.out("alpha.jsonl"), std::slice::from_ref(&before_id)).await?;
    let hash = |p: &Value| namespace_entry(p, "alpha").map(|n| n["config_hash"].clone());
    let old_hash = hash(&now);
    setup.put(
        "alpha.toml",
        &file_pipeline("alpha", &setup.out("alpha-2.jsonl"), ""),
    )?;
    // (A later reload with nothing to change may follow; the generation stays.)
    let now = pipelines_until(&server, |p| p["generation"] == 3).await?;
    assert_ne!(hash(&now), old_hash);
    let (_, alpha_after) = write(&client, &server, "alpha", 2).await?;
    let after_id = alpha_after["message_id"].as_str().ok_or("id")?.to_string();
    delivered_until(&setup.out("alpha-2.jsonl"), std::slice::from_ref(&after_id)).await?;
    assert_eq!(delivered(&setup.out("alpha.jsonl")), [before_id]);

    // Removed: new writes get 404, the data stays; added again, it resumes from its
    // cursor and the message written before the removal is not delivered again.
    std::fs::remove_file(setup.pipelines().join("beta.toml"))?;
    pipelines_until(&server, |p| !namespace_names(p).contains("beta")).await?;
    assert_eq!(write(&client, &server, "beta", 2).await?.0, 404);
    assert!(setup.dir.path().join("data/beta/log").is_dir());
    setup.put(
        "beta.toml",
        &file_pipeline("beta", &setup.out("beta.jsonl"), ""),
    )?;
    pipelines_until(&server, |p| namespace_names(p).contains("beta")).await?;
    let (status, beta_second) = write(&client, &server, "beta", 3).await?;
    assert_eq!(status, 202);
    let ids: Vec<String> = [&beta_first, &beta_second]
        .iter()
        .filter_map(|w| w["message_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(delivered_until(&setup.out("beta.jsonl"), &ids).await?, ids);

    // SIGHUP reloads too; with nothing changed the generation stays.
    let generation = pipelines(&server).await?["generation"].clone();
    let reloads = pipelines(&server).await?["reloads"]["ok"]
        .as_u64()
        .unwrap_or(0);
    let pid = server.child.id().ok_or("exited")?;
    std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()?;
    let now = pipelines_until(&server, |p| {
        p["reloads"]["ok"].as_u64().unwrap_or(0) > reloads
            && p["last_reload"]["trigger"] == "signal"
    })
    .await?;
    assert_eq!(now["generation"], generation);

    // Each change is one reload or two (the editor's temporary file, then the
    // rename); reading the files during a reload is not a change.
    let reloads = now["reloads"]["ok"].as_u64().unwrap_or(u64::MAX);
    assert!(
        reloads < 20,
        "{reloads} reloads for 6 changes: the watch sees its own reads"
    );

    let metrics = reqwest::get(server.url("/metrics")).await?.text().await?;
    assert!(
        metrics.contains("wald_reloads_total{result=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("wald_config_generation {generation}")),
        "{metrics}"
    );
    assert!(stop(server.child).await?.success());
    Ok(())
}

#[tokio::test]
async fn a_bad_file_is_quarantined_and_every_running_namespace_is_left_untouched() -> Result {
    let setup = Setup::unwatched()?;
    let alpha = file_pipeline("alpha", &setup.out("alpha.jsonl"), "");
    setup.put("alpha.toml", &alpha)?;
    setup.put(
        "keep.toml",
        &file_pipeline("keep", &setup.out("keep.jsonl"), ""),
    )?;
    let server = setup.start(&setup.pipelines()).await?;
    let client = reqwest::Client::new();
    let hash = |p: &Value| namespace_entry(p, "alpha").map(|n| n["config_hash"].clone());
    let before = pipelines(&server).await?;

    let huge = format!("namespace = \"alpha\"\n# {}\n", "x".repeat(10 << 20));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "syntax error",
            alpha.replace("[source]", "[source"),
            "syntax",
        ),
        (
            "unknown key",
            alpha.replace("public = true", "public = true\npublik = true"),
            "unknown_key",
        ),
        ("truncated", alpha[..alpha.len() / 2].to_string(), ""),
        ("empty", String::new(), "empty_file"),
        ("10 MB", huge, "file_too_large"),
    ];
    for (what, text, code) in cases {
        setup.put("alpha.toml", &text)?;
        let outcome = reload(&server).await?;
        assert_eq!(outcome["result"], "partial", "{what}: {outcome:#}");
        let quarantined = outcome["quarantined"].as_array().ok_or("quarantined")?;
        let entry = quarantined
            .iter()
            .find(|q| {
                q["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("alpha.toml"))
            })
            .ok_or_else(|| format!("{what}: alpha.toml not quarantined: {outcome:#}"))?;
        assert_eq!(entry["namespace"], "alpha", "{what}");
        assert_eq!(entry["keeps_running"], true, "{what}");
        let error = &entry["errors"][0];
        if !code.is_empty() {
            assert_eq!(error["code"], code, "{what}: {error:#}");
        }
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}"
        );
        assert!(
            outcome["removed"].as_array().is_some_and(Vec::is_empty),
            "{what}"
        );
        let now = pipelines(&server).await?;
        assert_eq!(now["generation"], before["generation"], "{what}");
        assert_eq!(hash(&now), hash(&before), "{what}");
        assert_eq!(
            namespace_entry(&now, "alpha").ok_or("alpha")?["state"],
            "quarantined",
            "{what}"
        );
        for namespace in ["alpha", "keep"] {
            assert_eq!(
                write(&client, &server, namespace, 1).await?.0,
                202,
                "{what}: {namespace}"
            );
        }
    }

    // A second file for a running namespace: the first file goes on serving it.
    setup.put("alpha.toml", &alpha)?;
    setup.put("zz.toml", &file_pipeline("keep", &setup.out("x.jsonl"), ""))?;
    let outcome = reload(&server).await?;
    assert_eq!(outcome["result"], "partial", "{outcome:#}");
    assert_eq!(
        outcome["quarantined"][0]["errors"][0]["code"],
        "duplicate_namespace"
    );
    assert_eq!(outcome["quarantined"][0]["namespace"], "keep");
    assert!(
        outcome["changed"].as_array().is_some_and(Vec::is_empty),
        "{outcome:#}"
    );
    std::fs::remove_file(setup.pipelines().join("zz.toml"))?;

    // A file deleted between the listing and the read (here: a dangling link) is
    // reported the same way.
    std::os::unix::fs::symlink(
        setup.dir.path().join("gone.toml"),
        setup.pipelines().join("gone.toml"),
    )?;
    let outcome = reload(&server).await?;
    assert_eq!(
        outcome["quarantined"][0]["errors"][0]["code"], "unreadable",
        "{outcome:#}"
    );
    std::fs::remove_file(setup.pipelines().join("gone.toml"))?;

    // A good file again: running, and nothing was restarted by the broken ones.
    let outcome = reload(&server).await?;
    assert_eq!(outcome["result"], "ok", "{outcome:#}");
    assert!(
        outcome["changed"].as_array().is_some_and(Vec::is_empty),
        "{outcome:#}"
    );
    let now = pipelines(&server).await?;
    assert_eq!(
        namespace_entry(&now, "alpha").ok_or("alpha")?["state"],
        "running"
    );

    // A pipelines directory that is gone applies nothing.
    std::fs::rename(setup.pipelines(), setup.dir.path().join("moved"))?;
    let outcome = reload(&server).await?;
    assert_eq!(outcome["result"], "blocked", "{outcome:#}");
    assert_eq!(namespace_names(&pipelines(&server).await?).len(), 2);
    assert!(stop(server.child).await?.success());
    Ok(())
}

#[tokio::test]
async fn a_swapped_symlinked_directory_is_picked_up() -> Result {
    let setup = Setup::new()?;
    let v1 = setup.dir.path().join("v1");
    let v2 = setup.dir.path().join("v2");
    for (dir, name) in [(&v1, "one"), (&v2, "two")] {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join(format!("{name}.toml")),
            file_pipeline(name, &setup.out(&format!("{name}.jsonl")), ""),
        )?;
    }
    let link = setup.dir.path().join("current");
    std::os::unix::fs::symlink(&v1, &link)?;
    let server = setup.start(&link).await?;
    assert_eq!(
        namespace_names(&pipelines(&server).await?),
        BTreeSet::from(["one".to_string()])
    );

    // As `ln -sfn v2 current` does it: a new link renamed over the old one.
    let tmp = setup.dir.path().join("current.tmp");
    std::os::unix::fs::symlink(&v2, &tmp)?;
    std::fs::rename(&tmp, &link)?;
    pipelines_until(&server, |p| {
        namespace_names(p) == BTreeSet::from(["two".to_string()])
    })
    .await?;

    // The watch follows the new target: an edit inside it is seen.
    std::fs::write(
        v2.join("three.toml"),
        file_pipeline("three", &setup.out("three.jsonl"), ""),
    )?;
    pipelines_until(&server, |p| namespace_names(p).contains("three")).await?;
    assert!(stop(server.child).await?.success());
    Ok(())
}

#[tokio::test]
async fn a_kubernetes_style_configmap_update_is_picked_up() -> Result {
    // A mounted ConfigMap: the files are links through `..data`, itself a link to a
    // hidden directory of the current version; an update writes a new version and
    // renames a new `..data` link over the old one.
    let setup = Setup::new()?;
    let dir = setup.pipelines();
    let version = |name: &str, description: &str| -> Result {
        std::fs::create_dir_all(dir.join(name))?;
        let text = file_pipeline(
            "alpha",
            &setup.out("alpha.jsonl"),
            &format!("description = \"{description}\""),
        );
        std::fs::write(dir.join(name).join("alpha.toml"), text)?;
        Ok(())
    };
    version("..2026_11_28_a", "one")?;
    std::os::unix::fs::symlink("..2026_11_28_a", dir.join("..data"))?;
    std::os::unix::fs::symlink("..data/alpha.toml", dir.join("alpha.toml"))?;
    let server = setup.start(&dir).await?;
    assert_eq!(
        namespace_names(&pipelines(&server).await?),
        BTreeSet::from(["alpha".to_string()])
    );

    version("..2026_11_28_b", "two")?;
    std::os::unix::fs::symlink("..2026_11_28_b", dir.join("..data_tmp"))?;
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data"))?;
    std::fs::remove_dir_all(dir.join("..2026_11_28_a"))?;
    pipelines_until(&server, |p| p["generation"] == 2).await?;
    let status: Value = reqwest::get(server.url("/api/v1/wal/namespace/alpha/status"))
        .await?
        .json()
        .await?;
    assert_eq!(status["description"], "two", "{status:#}");
    assert!(stop(server.child).await?.success());
    Ok(())
}

/// An HTTP server that records the `n` of each message it receives.
async fn recorder() -> Result<(String, Arc<Mutex<Vec<u64>>>)> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<Value>| {
            let kept = kept.clone();
            async move {
                if let Some(n) = body["payload"]["n"].as_u64() {
                    kept.lock().map(|mut s| s.push(n)).ok();
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let address = common::serve(app).await?;
    Ok((format!("http://{address}/hook"), seen))
}

#[tokio::test]
async fn a_changed_target_url_applies_to_the_deliveries_that_follow() -> Result {
    let setup = Setup::unwatched()?;
    let (first_url, first) = recorder().await?;
    let (second_url, second) = recorder().await?;
    let hooked = |url: &str| {
        format!(
            "namespace = \"hooked\"\n[source]\ntype = \"http\"\npublic = true\n\
             [[target]]\nname = \"hook\"\ntype = \"http\"\nurl = \"{url}\"\nbody = \"envelope\"\n"
        )
    };
    setup.put("hooked.toml", &hooked(&first_url))?;
    let server = setup.start(&setup.pipelines()).await?;
    let client = reqwest::Client::new();
    let until = |seen: Arc<Mutex<Vec<u64>>>, n: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !seen.lock().map(|s| s.contains(&n)).unwrap_or(false) {
            if Instant::now() > deadline {
                return Err::<(), Box<dyn std::error::Error>>(
                    format!("message {n} never arrived").into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    };
    assert_eq!(write(&client, &server, "hooked", 1).await?.0, 202);
    until(first.clone(), 1).await?;
    setup.put("hooked.toml", &hooked(&second_url))?;
    let outcome = reload(&server).await?;
    assert_eq!(
        outcome["changed"][0]["keys"][0]["key"], "target[hook].url",
        "{outcome:#}"
    );
    assert_eq!(write(&client, &server, "hooked", 2).await?.0, 202);
    until(second.clone(), 2).await?;
    assert_eq!(*first.lock().map_err(|_| "lock")?, [1]);
    assert_eq!(*second.lock().map_err(|_| "lock")?, [2]);
    assert!(stop(server.child).await?.success());
    Ok(())
}

/// Runs `wald plan --format json` on `dir` against `server`.
fn plan(server: &Server, dir: &Path) -> Result<(i32, Value)> {
    let output = common::wald()
        .args([
            "plan",
            "--format",
            "json",
            "--server",
            &server.url(""),
            "--admin-key",
            ADMIN_KEY,
        ])
        .arg(dir)
        .output()?;
    let code = output.status.code().ok_or("killed")?;
    let answer = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    Ok((code, answer))
}

/// What a plan or a reload did, per namespace, in a comparable form.
fn summary(outcome: &Value) -> Value {
    let names = |key: &str| -> Vec<Value> {
        outcome[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| match key {
                "added" => entry["namespace"].clone(),
                "changed" => json!([
                    entry["namespace"],
                    entry["keys"],
                    entry["restarts_consumer"]
                ]),
                _ => entry.clone(),
            })
            .collect()
    };
    json!({ "added": names("added"), "changed": names("changed"), "removed": names("removed") })
}

#[tokio::test]
async fn plan_shows_exactly_the_diff_that_the_following_reload_applies() -> Result {
    let setup = Setup::unwatched()?;
    setup.put(
        "alpha.toml",
        &file_pipeline("alpha", &setup.out("alpha.jsonl"), ""),
    )?;
    setup.put(
        "gone.toml",
        &file_pipeline("gone", &setup.out("gone.jsonl"), ""),
    )?;
    let server = setup.start(&setup.pipelines()).await?;

    let (code, unchanged) = plan(&server, &setup.pipelines())?;
    assert_eq!(code, 0, "{unchanged:#}");

    setup.put(
        "alpha.toml",
        &file_pipeline(
            "alpha",
            &setup.out("alpha.jsonl"),
            "description = \"edited\"\n[consumer]\nbatch_size = 7",
        ),
    )?;
    std::fs::remove_file(setup.pipelines().join("gone.toml"))?;
    setup.put(
        "new.toml",
        &file_pipeline("new", &setup.out("new.jsonl"), ""),
    )?;
    let (code, planned) = plan(&server, &setup.pipelines())?;
    assert_eq!(code, 3, "{planned:#}");
    let keys: Vec<&str> = planned["changed"][0]["keys"]
        .as_array()
        .ok_or("keys")?
        .iter()
        .filter_map(|k| k["key"].as_str())
        .collect();
    assert_eq!(keys, ["consumer.batch_size", "description"]);
    assert_eq!(planned["changed"][0]["keys"][0]["from"], 256);
    assert_eq!(planned["changed"][0]["keys"][0]["to"], 7);
    // Planning changed nothing.
    assert_eq!(pipelines(&server).await?["generation"], 1);

    let applied = reload(&server).await?;
    assert_eq!(summary(&planned), summary(&applied));
    assert_eq!(plan(&server, &setup.pipelines())?.0, 0);

    // An invalid file: exit code 1, with its place.
    setup.put(
        "new.toml",
        "namespace = \"new\"\n[source]\ntype = \"http\"\npublik = true\n",
    )?;
    let (code, invalid) = plan(&server, &setup.pipelines())?;
    assert_eq!(code, 1, "{invalid:#}");
    assert_eq!(invalid["quarantined"][0]["errors"][0]["line"], 4);
    assert_eq!(invalid["quarantined"][0]["errors"][0]["column"], 1);

    // Without the admin key: refused, exit code 2.
    let output = common::wald()
        .args(["plan", "--server", &server.url("")])
        .arg(setup.pipelines())
        .env_remove("WALD_ADMIN_KEY")
        .output()?;
    assert_eq!(output.status.code(), Some(2));
    assert!(stop(server.child).await?.success());
    Ok(())
}

#[tokio::test]
async fn a_hundred_reloads_under_concurrent_writes_lose_nothing_and_refuse_nothing() -> Result {
    let setup = Setup::unwatched()?;
    let out = setup.out("steady.jsonl");
    let steady = |batch: u32| {
        file_pipeline(
            "steady",
            &out,
            &format!("[consumer]\nbatch_size = {batch}\nconcurrency = 2"),
        )
    };
    setup.put("steady.toml", &steady(16))?;
    let server = Arc::new(setup.start(&setup.pipelines()).await?);

    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (server, running) = (server.clone(), running.clone());
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acked = Vec::new();
            let mut n = w * 1_000_000;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, answer) = write(&client, &server, "steady", n)
                    .await
                    .map_err(|e| e.to_string())?;
                if status != 202 {
                    return Err(
                        format!("write refused with {status} during reloads: {answer}").into(),
                    );
                }
                acked.push(answer["message_id"].as_str().ok_or("id")?.to_string());
                n += 1;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(acked)
        }));
    }
    for round in 0..100u32 {
        // Change: the consumer restarts. Add and remove: another namespace comes and goes.
        setup.put("steady.toml", &steady(17 - round % 2))?;
        let extra = format!("extra-{}.toml", round % 3);
        if round % 2 == 0 {
            setup.put(
                &extra,
                &file_pipeline(
                    &format!("extra-{}", round % 3),
                    &setup.out("extra.jsonl"),
                    "",
                ),
            )?;
        } else {
            let _ = std::fs::remove_file(setup.pipelines().join(&extra));
        }
        let outcome = reload(&server).await?;
        assert_eq!(outcome["result"], "ok", "round {round}: {outcome:#}");
        assert_eq!(
            outcome["changed"][0]["namespace"], "steady",
            "round {round}: {outcome:#}"
        );
    }
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await?.map_err(|e| e.to_string())?);
    }
    assert!(
        acked.len() > 100,
        "only {} writes in 100 reloads",
        acked.len()
    );
    let found = delivered_until(&out, &acked).await?;
    let unique: HashSet<&String> = found.iter().collect();
    assert_eq!(unique.len(), found.len(), "a message was delivered twice");
    assert_eq!(found.len(), acked.len());
    let server = Arc::try_unwrap(server).map_err(|_| "server still shared")?;
    assert!(stop(server.child).await?.success());
    Ok(())
}
