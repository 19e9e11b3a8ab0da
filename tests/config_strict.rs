//! Strict parsing through the library: an unknown key is an error in every table and in
//! every tagged variant (serde's `deny_unknown_fields` has holes with tagged enums and
//! `flatten`; wald dispatches tags itself, and these tests hold it to that).

use std::path::Path;

use wald::config::diagnostic::{Code, Severity};
use wald::pipeline::load_pipeline_text;

fn no_env(_: &str) -> Option<String> {
    None
}

const HEAD: &str = "namespace = \"strict\"\n[source]\ntype = \"http\"\npublic = true\n";

/// A minimal valid body for each tagged table, by its `type`.
const PRODUCERS: &[(&str, &str)] = &[
    ("embedded", "type = \"embedded\"\n"),
    (
        "kafka",
        "type = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopic = \"t\"\n",
    ),
    (
        "sqs",
        "type = \"sqs\"\nqueue_url = \"http://127.0.0.1:4566/000000000000/q\"\n",
    ),
    (
        "redis_streams",
        "type = \"redis_streams\"\nurl = \"redis://127.0.0.1:6379\"\n",
    ),
];

const TARGETS: &[(&str, &str)] = &[
    (
        "postgres",
        "type = \"postgres\"\nurl = \"postgres://127.0.0.1/test\"\nstatement = \"INSERT INTO t (id) VALUES ($message_id) ON CONFLICT DO NOTHING\"\n",
    ),
    (
        "redis",
        "type = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\ncommand = \"DEL\"\nkey = \"k:{payload.id}\"\n",
    ),
    (
        "http",
        "type = \"http\"\nurl = \"http://127.0.0.1:9000/hook\"\n",
    ),
    (
        "kafka",
        "type = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopic = \"t\"\n",
    ),
    ("file", "type = \"file\"\npath = \"data/out/x.jsonl\"\n"),
];

const TARGET_FILE: &str =
    "[[target]]\nname = \"out\"\ntype = \"file\"\npath = \"data/out/x.jsonl\"\n";

/// Errors of `text`, as (code, line).
fn errors(text: &str) -> Vec<(Code, Option<usize>)> {
    let (source, _, findings) = load_pipeline_text(Path::new("strict.toml"), text, &no_env);
    findings
        .into_iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| {
            let d = source.place(f);
            (d.code, d.line)
        })
        .collect()
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(needle))
        .expect("needle in text")
        + 1
}

#[test]
fn every_minimal_variant_is_valid() {
    for (kind, body) in PRODUCERS {
        let text = format!("{HEAD}[producer]\n{body}{TARGET_FILE}");
        assert_eq!(errors(&text), [], "producer {kind}");
    }
    for (kind, body) in TARGETS {
        let text = format!("{HEAD}[[target]]\nname = \"t\"\n{body}");
        assert_eq!(errors(&text), [], "target {kind}");
    }
}

#[test]
fn an_unknown_key_is_an_error_in_every_producer_variant() {
    for (kind, body) in PRODUCERS {
        let text = format!("{HEAD}[producer]\n{body}bogus_key = 1\n{TARGET_FILE}");
        assert_eq!(
            errors(&text),
            [(Code::UnknownKey, Some(line_of(&text, "bogus_key")))],
            "producer {kind}"
        );
    }
}

#[test]
fn an_unknown_key_is_an_error_in_every_target_variant() {
    for (kind, body) in TARGETS {
        let text = format!("{HEAD}[[target]]\nname = \"t\"\n{body}bogus_key = 1\n");
        assert_eq!(
            errors(&text),
            [(Code::UnknownKey, Some(line_of(&text, "bogus_key")))],
            "target {kind}"
        );
    }
}

#[test]
fn a_key_of_another_variant_is_not_accepted() {
    // `topic` belongs to kafka; on an embedded producer it must not pass unnoticed.
    let text = format!("{HEAD}[producer]\ntype = \"embedded\"\ntopic = \"t\"\n{TARGET_FILE}");
    assert_eq!(
        errors(&text),
        [(Code::UnknownKey, Some(line_of(&text, "topic")))]
    );
    let text = format!(
        "{HEAD}[[target]]\nname = \"t\"\ntype = \"file\"\npath = \"x\"\ncommand = \"SET\"\n"
    );
    assert_eq!(
        errors(&text),
        [(Code::UnknownKey, Some(line_of(&text, "command")))]
    );
}

#[test]
fn unknown_keys_are_errors_in_nested_and_inline_tables() {
    let text = format!("{HEAD}rate_limit = {{ per_second = 5, brust = 10 }}\n{TARGET_FILE}");
    assert_eq!(
        errors(&text),
        [(Code::UnknownKey, Some(line_of(&text, "rate_limit")))]
    );
    let text = format!("{HEAD}[consumer.dlq]\nenabled = true\nreplays = 3\n{TARGET_FILE}");
    assert_eq!(
        errors(&text),
        [(Code::UnknownKey, Some(line_of(&text, "replays")))]
    );
    let text = format!(
        "{HEAD}[[target]]\nname = \"t\"\ntype = \"file\"\npath = \"x\"\nretry = {{ max_attempt = 3 }}\n"
    );
    assert_eq!(
        errors(&text),
        [(Code::UnknownKey, Some(line_of(&text, "retry")))]
    );
}

#[test]
fn a_tagged_table_without_type_is_an_error() {
    let text = format!("{HEAD}[[target]]\nname = \"t\"\npath = \"x\"\n");
    assert_eq!(
        errors(&text),
        [(Code::MissingKey, Some(line_of(&text, "[[target]]")))]
    );
}

#[test]
fn errors_in_separate_tables_are_all_reported() {
    let text = "namespace = \"strict\"\ncolour = 1\n[source]\ntype = \"http\"\npublic = true\nshape = 2\n\
                [consumer]\nsize = 3\n[producer]\ntype = \"embedded\"\nweight = 4\n\
                [[target]]\nname = \"a\"\ntype = \"file\"\npath = \"x\"\nsmell = 5\n";
    let mut lines: Vec<_> = errors(text).into_iter().map(|(_, line)| line).collect();
    lines.sort();
    let want: Vec<_> = ["colour", "shape", "size", "weight", "smell"]
        .iter()
        .map(|k| Some(line_of(text, k)))
        .collect();
    assert_eq!(lines, want);
}
