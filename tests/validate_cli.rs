//! `wald validate` through the real binary: the shipped pipelines, every fixture under
//! `tests/fixtures/`, bad input of every kind, output formats, secrets, `--connect`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{Found, psql, root, run, service_available, stderr, stdout, validate_json, wald};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

#[test]
fn shipped_pipelines_and_every_example_are_valid() -> Result {
    let output = run(&["validate", "pipelines/", "pipelines/examples/"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let text = stdout(&output);
    assert!(text.starts_with("ok: "), "{text}");
    assert!(
        text.contains("3 test cases held"),
        "the orders pipeline's cases: {text}"
    );
    for kind in [
        "kafka",
        "sqs",
        "redis_streams",
        "postgres",
        "redis",
        "http",
        "file",
    ] {
        let listed = std::fs::read_dir(root().join("pipelines/examples"))?
            .chain(std::fs::read_dir(root().join("pipelines"))?)
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
            .any(|e| {
                std::fs::read_to_string(e.path())
                    .is_ok_and(|t| t.contains(&format!("type = \"{kind}\"")))
            });
        assert!(listed, "no example uses `type = \"{kind}\"`");
    }
    Ok(())
}

/// The findings a fixture declares in its `# expect: CODE LINE:COLUMN` comments.
fn expectations(file: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(file)?;
    Ok(text
        .lines()
        .filter_map(|line| line.strip_prefix("# expect: "))
        .map(|rest| {
            let (code, place) = rest.split_once(' ').unwrap_or((rest, "-"));
            (code.to_string(), place.trim().to_string())
        })
        .collect())
}

/// Each entry of `dir` (a file, or a directory validated as one set) and the findings
/// of `severity` it must produce, exactly.
fn check_fixtures(dir: &str, severity: &str) -> Result<usize> {
    let mut checked = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(root().join(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::result::Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        let files: Vec<PathBuf> = if entry.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&entry)?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::result::Result<_, _>>()?;
            files.sort();
            files
        } else {
            vec![entry.clone()]
        };
        let mut expected = BTreeSet::new();
        for file in &files {
            for (code, place) in expectations(file)? {
                expected.insert((
                    file.file_name().unwrap().to_string_lossy().into_owned(),
                    code,
                    place,
                ));
            }
        }
        assert!(
            !expected.is_empty(),
            "{} declares no `# expect:`",
            entry.display()
        );
        let (code, found) = validate_json(&[&entry]);
        let got: BTreeSet<_> = found
            .into_iter()
            .filter(|f: &Found| f.severity == severity)
            .map(|f| {
                (
                    Path::new(&f.file)
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                    f.code,
                    f.place,
                )
            })
            .collect();
        assert_eq!(got, expected, "findings of {}", entry.display());
        let want_exit = if severity == "error" { 1 } else { 0 };
        assert_eq!(code, Some(want_exit), "exit code for {}", entry.display());
        checked += 1;
    }
    Ok(checked)
}

#[test]
fn every_invalid_fixture_reports_exactly_its_expected_errors() -> Result {
    let checked = check_fixtures("tests/fixtures/invalid", "error")?;
    assert!(checked >= 20, "only {checked} fixtures");
    Ok(())
}

#[test]
fn every_warning_fixture_reports_exactly_its_expected_warnings() -> Result {
    check_fixtures("tests/fixtures/warnings", "warning")?;
    Ok(())
}

#[test]
fn deny_warnings_makes_a_warning_fatal() {
    let file = "tests/fixtures/warnings/no_targets.toml";
    assert_eq!(run(&["validate", file]).status.code(), Some(0));
    assert_eq!(
        run(&["validate", "--deny-warnings", file]).status.code(),
        Some(1)
    );
}

#[test]
fn every_error_of_every_file_is_reported_in_one_run() {
    let (code, found) = validate_json(&[
        &root().join("tests/fixtures/invalid/unknown_key_consumer_retry.toml"),
        &root().join("tests/fixtures/invalid/invalid_batch.toml"),
        &root().join("tests/fixtures/invalid/unknown_type.toml"),
    ]);
    assert_eq!(code, Some(1));
    let errors = found.iter().filter(|f| f.severity == "error").count();
    assert_eq!(errors, 2 + 3 + 2, "{found:#?}");
}

#[test]
fn human_output_shows_file_line_column_the_line_a_caret_and_a_hint() {
    let output = run(&[
        "validate",
        "tests/fixtures/invalid/unknown_key_consumer_retry.toml",
    ]);
    let text = stdout(&output);
    assert!(
        text.contains("error[unknown_key]: unknown key `max_attemps`"),
        "{text}"
    );
    assert!(
        text.contains("--> tests/fixtures/invalid/unknown_key_consumer_retry.toml:11:1"),
        "{text}"
    );
    assert!(text.contains("11 | max_attemps = 3"), "{text}");
    assert!(text.contains("   | ^^^^^^^^^^^\n"), "{text}");
    assert!(
        text.contains("= hint: did you mean `max_attempts`?"),
        "{text}"
    );
    assert!(text.contains("invalid: 2 errors"), "{text}");
}

#[test]
fn json_output_has_one_object_per_finding_with_every_field() -> Result {
    let output = run(&[
        "validate",
        "--format",
        "json",
        "tests/fixtures/invalid/unknown_type.toml",
    ]);
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line)?;
        for field in [
            "file", "line", "column", "severity", "code", "message", "hint",
        ] {
            assert!(v.get(field).is_some(), "{field} missing in {line}");
        }
        assert_eq!(v["code"], "unknown_type");
        assert_eq!(v["severity"], "error");
    }
    Ok(())
}

#[test]
fn bad_input_of_every_kind_gets_a_clear_error_and_exit_code() -> Result {
    let dir = tempfile::tempdir()?;
    let write = |name: &str, bytes: &[u8]| -> Result<PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes)?;
        Ok(path)
    };
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let latin1 = write("latin1.toml", b"namespace = \"caf\xe9\"\n")?;
    let cases: Vec<(PathBuf, i32, &str)> = vec![
        (write("empty.toml", b"")?, 1, "empty_file"),
        (write("garbage.toml", &garbage)?, 1, "not_utf8"),
        (latin1, 1, "not_utf8"),
        (
            write("huge.toml", &vec![b'#'; 10 * 1024 * 1024])?,
            1,
            "file_too_large",
        ),
        (
            write(
                "deep.toml",
                format!("a = {}", "[".repeat(100_000)).as_bytes(),
            )?,
            1,
            "syntax",
        ),
        (
            write(
                "deep-tables.toml",
                format!("a = {}", "{ b = ".repeat(50_000)).as_bytes(),
            )?,
            1,
            "syntax",
        ),
        (dir.path().join("no-such-file.toml"), 2, "unreadable"),
    ];
    let empty_dir = dir.path().join("empty-dir");
    std::fs::create_dir(&empty_dir)?;
    let loop_link = dir.path().join("loop.toml");
    std::os::unix::fs::symlink(&loop_link, &loop_link)?;
    let mut cases = cases;
    cases.push((empty_dir, 1, "no_pipelines"));
    cases.push((loop_link, 2, "unreadable"));

    for (path, exit, code) in cases {
        let output = wald().arg("validate").arg(&path).output()?;
        assert!(
            !stderr(&output).contains("panicked"),
            "{}: {}",
            path.display(),
            stderr(&output)
        );
        assert_eq!(
            output.status.code(),
            Some(exit),
            "{}: {}",
            path.display(),
            stdout(&output)
        );
        assert!(
            stdout(&output).contains(&format!("[{code}]")),
            "{}: {}",
            path.display(),
            stdout(&output)
        );
    }
    Ok(())
}

#[test]
fn not_utf8_points_at_the_first_bad_byte() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("latin1.toml");
    std::fs::write(&path, b"namespace = \"ok\"\ndescription = \"caf\xe9\"\n")?;
    let (_, found) = validate_json(&[&path]);
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].code.as_str(), found[0].place.as_str()),
        ("not_utf8", "2:19")
    );
    Ok(())
}

#[test]
fn a_symlinked_directory_of_pipelines_is_followed() -> Result {
    let dir = tempfile::tempdir()?;
    let link = dir.path().join("pipelines");
    std::os::unix::fs::symlink(root().join("pipelines"), &link)?;
    let output = wald().arg("validate").arg(&link).output()?;
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    Ok(())
}

#[test]
fn secrets_never_appear_in_any_output() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("leaky.toml");
    std::fs::write(
        &path,
        r#"namespace = "leaky"
[source]
type = "http"
public = true
[[target]]
name = "cache"
type = "redis"
url = "postgres://app:hunter2-inline@127.0.0.1/test"
command = "SET"
key = "k:{payload.id}"
[[target]]
name = "hook"
type = "http"
url = "${WALD_TEST_SECRET_URL}"
hmac_secret = "short-inline"
"#,
    )?;
    for format in ["human", "json"] {
        let output = wald()
            .args(["validate", "--format", format])
            .arg(&path)
            .env(
                "WALD_TEST_SECRET_URL",
                "ftp://user:from-the-env@example.invalid/",
            )
            .output()?;
        let all = format!("{}{}", stdout(&output), stderr(&output));
        assert_eq!(output.status.code(), Some(1), "{all}");
        for secret in ["hunter2-inline", "from-the-env", "short-inline"] {
            assert!(
                !all.contains(secret),
                "`{secret}` leaked in {format} output:\n{all}"
            );
        }
        assert!(all.contains("invalid_url"), "{all}");
    }
    Ok(())
}

#[test]
fn environment_variables_and_defaults_are_expanded() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("env.toml");
    std::fs::write(
        &path,
        "namespace = \"${WALD_TEST_NS}\"\n[source]\ntype = \"http\"\npublic = true\n[[target]]\nname = \"out\"\ntype = \"file\"\npath = \"${WALD_TEST_UNSET_DIR:-data/out}/x.jsonl\"\n",
    )?;
    let output = wald()
        .arg("validate")
        .arg(&path)
        .env("WALD_TEST_NS", "from-env")
        .output()?;
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("(from-env)"),
        "{}",
        stdout(&output)
    );
    Ok(())
}

#[test]
fn hash_key_prints_the_sha256_of_a_key_from_an_argument_or_stdin() -> Result {
    let expected = "58ebcfbdf9c28b0b88a63d61ebb4139a0d102711fb0472f878df4fa84731e400";
    let output = run(&["hash-key", "orders-demo-key"]);
    assert_eq!(stdout(&output).trim(), expected);

    let mut child = wald()
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child
        .stdin
        .take()
        .ok_or("stdin")?
        .write_all(b"orders-demo-key\n")?;
    let output = child.wait_with_output()?;
    assert_eq!(stdout(&output).trim(), expected);

    let output = run(&["hash-key", "--generate"]);
    let text = stdout(&output);
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .ok_or("no key line")?
        .trim()
        .to_string();
    let hash = text
        .lines()
        .find_map(|l| l.strip_prefix("sha256:"))
        .ok_or("no hash line")?
        .trim()
        .to_string();
    assert!(key.starts_with("wald_") && key.len() > 40, "{key}");
    assert_eq!(stdout(&run(&["hash-key", &key])).trim(), hash);
    Ok(())
}

#[test]
fn connect_reaches_postgres_and_redis_and_names_what_it_cannot_reach() -> Result {
    if !service_available("Postgres", "127.0.0.1:5432")
        || !service_available("Redis", "127.0.0.1:6379")
    {
        return Ok(());
    }
    let table = format!("wald_connect_test_{}", std::process::id());
    let sql = |sql: String| psql(&["-c".as_ref(), sql.as_ref()]);
    let created = sql(format!(
        "CREATE TABLE IF NOT EXISTS {table} (id text PRIMARY KEY, body jsonb)"
    ))?;
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );

    let dir = tempfile::tempdir()?;
    let reachable = dir.path().join("reachable.toml");
    std::fs::write(
        &reachable,
        format!(
            r#"namespace = "reachable"
[source]
type = "http"
public = true
[producer]
type = "redis_streams"
url = "redis://127.0.0.1:6379"
[[target]]
name = "db"
type = "postgres"
url = "postgres://postgres@127.0.0.1:5432/test"
statement = "INSERT INTO {table} (id, body) VALUES ($message_id, $payload) ON CONFLICT (id) DO NOTHING"
[[target]]
name = "cache"
type = "redis"
url = "redis://127.0.0.1:6379"
command = "SET"
key = "k:{{payload.id}}"
[[target]]
name = "out"
type = "file"
path = "{}/out/x.jsonl"
"#,
            dir.path().display()
        ),
    )?;
    let output = wald()
        .args(["validate", "--connect"])
        .arg(&reachable)
        .output()?;
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("every backend and target reached"),
        "{}",
        stdout(&output)
    );

    let unreachable = dir.path().join("unreachable.toml");
    std::fs::write(
        &unreachable,
        r#"namespace = "unreachable"
[source]
type = "http"
public = true
[producer]
type = "redis_streams"
url = "redis://127.0.0.1:1"
[[target]]
name = "db"
type = "postgres"
url = "postgres://postgres@127.0.0.1:5432/test"
statement = "INSERT INTO wald_no_such_table (id) VALUES ($message_id)"
[[target]]
name = "hook"
type = "http"
url = "http://127.0.0.1:1/hook"
"#,
    )?;
    // Without --connect the file is valid; with it, each of the three is named.
    let (code, found) = validate_json(&[&unreachable]);
    assert_eq!((code, found), (Some(0), Vec::new()));
    let output = wald()
        .args(["validate", "--connect", "--format", "json"])
        .arg(&unreachable)
        .output()?;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let unreachable_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"unreachable\""))
        .collect();
    assert_eq!(unreachable_lines.len(), 3, "{text}");
    assert!(text.contains("redis_streams backend"), "{text}");
    assert!(
        text.contains("target `db`") && text.contains("wald_no_such_table"),
        "{text}"
    );
    assert!(text.contains("target `hook`"), "{text}");

    sql(format!("DROP TABLE IF EXISTS {table}"))?;
    Ok(())
}

#[test]
fn the_postgres_example_prepares_against_the_example_migration() -> Result {
    if !service_available("Postgres", "127.0.0.1:5432") {
        return Ok(());
    }
    let migration = root().join("migrations/examples/0001_example_tables.sql");
    let migrated = psql(&["-f".as_ref(), migration.as_os_str()])?;
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let output = wald()
        .args(["validate", "--connect", "pipelines/examples/postgres.toml"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
        .output()?;
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    Ok(())
}
