//! The subcommands that talk to a running server over HTTP: `plan`, `write`, `status`,
//! `tx`, `dlq`, `pause` and `resume`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::config::{self, env};
use crate::pipeline::{self};

use super::args::*;
use super::render::*;

pub(super) fn plan(
    config_path: Option<&Path>,
    paths: Vec<PathBuf>,
    format: Format,
    server: &str,
    admin_key: Option<&str>,
) -> anyhow::Result<ExitCode> {
    use base64::Engine;
    let (service, _) = crate::service::load_service(
        service_config_path(config_path).as_deref(),
        &env::process_env,
    );
    let paths = pipeline_paths(service.as_ref(), paths);
    let mut problems = Vec::new();
    let files = pipeline::collect_files(&paths, &mut problems);
    let mut sent = Vec::new();
    for file in &files {
        match config::file::read_bytes(file) {
            Ok(bytes) => sent.push(serde_json::json!({
                "name": file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                "content_base64": base64::engine::general_purpose::STANDARD.encode(bytes),
            })),
            Err(rejected) => problems.extend(
                rejected
                    .findings
                    .into_iter()
                    .map(|f| rejected.source.place(f)),
            ),
        }
    }
    if !problems.is_empty() {
        print_diagnostics(&problems);
        return Ok(ExitCode::from(2));
    }
    let url = format!("{}/api/v1/admin/plan", server.trim_end_matches('/'));
    let mut request = reqwest::Client::new()
        .post(&url)
        .json(&serde_json::json!({ "files": sent }));
    if let Some(key) = admin_key {
        request = request.bearer_auth(key);
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let answer = runtime.block_on(async {
        let response = request.send().await?;
        let ok = response.status().is_success();
        let body = response
            .json::<serde_json::Value>()
            .await
            .unwrap_or_default();
        Ok::<_, reqwest::Error>((ok, body))
    });
    let (ok, body) = match answer {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("error: no answer from {url}: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if !ok {
        eprintln!(
            "error: {}",
            body["error"]["message"]
                .as_str()
                .unwrap_or("the server refused the plan")
        );
        return Ok(ExitCode::from(2));
    }
    match format {
        Format::Json => writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(&body)?
        )?,
        Format::Human => write!(std::io::stdout(), "{}", render_plan(&body))?,
    }
    let count = |key: &str| body[key].as_array().map_or(0, Vec::len);
    let code = if count("quarantined") + count("blocked_by") > 0 {
        1
    } else if count("added") + count("changed") + count("removed") > 0 {
        3
    } else {
        0
    };
    Ok(ExitCode::from(code))
}

pub(super) fn write(args: WriteArgs) -> anyhow::Result<ExitCode> {
    let requests: Vec<serde_json::Value> = match (&args.file, &args.payload) {
        (Some(path), _) => {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?
            };
            text.lines()
                .enumerate()
                .filter(|(_, line)| !line.trim().is_empty())
                .map(|(i, line)| {
                    serde_json::from_str(line)
                        .with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))
                })
                .collect::<anyhow::Result<_>>()?
        }
        (None, Some(payload)) => {
            let payload: serde_json::Value = serde_json::from_str(payload)
                .context("the payload is not JSON; quote a string as '\"text\"'")?;
            let mut request =
                serde_json::json!({ "namespace": args.namespace, "payload": payload });
            if let Some(key) = &args.key {
                request["key"] = key.clone().into();
            }
            if let Some(delay) = &args.delay {
                request["delay"] = delay.clone().into();
            }
            vec![request]
        }
        (None, None) => anyhow::bail!("give a payload or --file"),
    };
    let url = format!("{}/api/v1/wal/write", args.server.trim_end_matches('/'));
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut refused = false;
        for request in requests {
            let mut call = client.post(&url).json(&request);
            if let Some(key) = &args.api_key {
                call = call.bearer_auth(key);
            }
            let response = match call.send().await {
                Ok(response) => response,
                Err(e) => {
                    eprintln!("error: no answer from {url}: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            refused |= !response.status().is_success();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            writeln!(std::io::stdout(), "{body}")?;
        }
        Ok(ExitCode::from(u8::from(refused)))
    })
}

pub(super) fn status(server: &str, namespace: Option<&str>) -> anyhow::Result<ExitCode> {
    let base = server.trim_end_matches('/');
    let url = match namespace {
        Some(namespace) => format!("{base}/api/v1/wal/namespace/{namespace}/status"),
        None => format!("{base}/api/v1/health"),
    };
    show(&url, |body| {
        body["status"] == "ok" || body["state"] == "running"
    })
}

pub(super) fn transaction(server: &str, id: &str) -> anyhow::Result<ExitCode> {
    let url = format!(
        "{}/api/v1/wal/transaction/{id}/status",
        server.trim_end_matches('/')
    );
    show(&url, |_| true)
}

pub(super) fn dlq(
    action: DlqAction,
    server: &str,
    admin_key: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let base = server.trim_end_matches('/');
    let client = reqwest::Client::new();
    let request = match action {
        DlqAction::List {
            namespace,
            target,
            state,
            from,
            limit,
        } => {
            let mut url = url::Url::parse(&format!("{base}/api/v1/wal/namespace/{namespace}/dlq"))
                .context("the server URL is not valid")?;
            {
                let mut query = url.query_pairs_mut();
                query
                    .append_pair("state", &state)
                    .append_pair("limit", &limit.to_string());
                if let Some(target) = &target {
                    query.append_pair("target", target);
                }
                if let Some(from) = from {
                    query.append_pair("from", &from.to_string());
                }
            }
            client.get(url)
        }
        DlqAction::Replay {
            namespace,
            ids,
            target,
            dry_run,
            rate,
        } => {
            let mut body = serde_json::json!({ "dry_run": dry_run });
            if !ids.is_empty() {
                body["ids"] = ids.into();
            }
            if let Some(target) = target {
                body["target"] = target.into();
            }
            if let Some(rate) = rate {
                body["rate_per_second"] = rate.into();
            }
            client
                .post(format!(
                    "{base}/api/v1/wal/namespace/{namespace}/dlq/replay"
                ))
                .json(&body)
        }
    };
    let request = match admin_key {
        Some(key) => request.bearer_auth(key),
        None => request,
    };
    send_and_show(request, |_| true)
}

/// `wald pause` (`paused`) and `wald resume`.
pub(super) fn pause(args: PauseArgs, paused: bool) -> anyhow::Result<ExitCode> {
    let verb = if paused { "pause" } else { "resume" };
    let mut url = url::Url::parse(&format!(
        "{}/api/v1/admin/namespaces/{}/{verb}",
        args.server.trim_end_matches('/'),
        args.namespace
    ))
    .context("the server URL is not valid")?;
    if let Some(target) = &args.target {
        url.query_pairs_mut().append_pair("target", target);
    }
    let request = reqwest::Client::new().post(url);
    let request = match &args.admin_key {
        Some(key) => request.bearer_auth(key),
        None => request,
    };
    send_and_show(request, |_| true)
}

/// GETs `url` and prints the JSON answer; exits 0 when the answer is a success that
/// `good` accepts, 1 otherwise, 2 when there was no answer.
pub(super) fn show(
    url: &str,
    good: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<ExitCode> {
    send_and_show(reqwest::Client::new().get(url), good)
}

/// Sends `request` and prints the JSON answer; exits 0 when the answer is a success
/// that `good` accepts, 1 otherwise, 2 when there was no answer.
pub(super) fn send_and_show(
    request: reqwest::RequestBuilder,
    good: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                eprintln!("error: no answer: {e}");
                return Ok(ExitCode::from(2));
            }
        };
        let ok = response.status().is_success();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(&body)?
        )?;
        Ok(ExitCode::from(u8::from(!(ok && good(&body)))))
    })
}
