//! The SQL a Postgres target runs: its `statement` with positional parameters, or the
//! `INSERT` built from its `table`, and a batch as one multi-row `INSERT` where the
//! statement allows it.

use crate::targets::template::{self, Field};

use super::config::Config;
impl Config {
    /// The statement with `$1`, `$2`, ... as Postgres takes it: `statement` rewritten,
    /// or an `INSERT ... ON CONFLICT DO NOTHING` built from `table` and `columns` (so a
    /// redelivered message is not written twice, given a unique `$message_id` column).
    pub fn positional_statement(&self) -> String {
        self.positional().0
    }

    /// The positional statement and the field each parameter stands for, in order.
    pub(super) fn positional(&self) -> (String, Vec<Field>) {
        match (&self.statement, &self.table) {
            (Some(statement), _) => {
                let params = template::parse_sql(statement).unwrap_or_default();
                template::to_positional(statement, &params)
            }
            (None, Some(table)) => {
                let columns: Vec<&str> = self.columns.keys().map(String::as_str).collect();
                let values: Vec<&str> = self.columns.values().map(String::as_str).collect();
                let insert = format!(
                    "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT DO NOTHING",
                    columns.join(", "),
                    values.join(", ")
                );
                let params = template::parse_sql(&insert).unwrap_or_default();
                template::to_positional(&insert, &params)
            }
            (None, None) => (String::new(), Vec::new()),
        }
    }

    /// The parts of a multi-row INSERT, when a batch can go as one: always for
    /// `table`; for a `statement` of the form `INSERT ... VALUES (row) [rest]` with one
    /// row and no parameters outside it (such as `ON CONFLICT (id) DO NOTHING`, or
    /// `DO UPDATE SET body = EXCLUDED.body`).
    pub(super) fn multi_row(&self) -> Option<MultiRow> {
        match (&self.statement, &self.table) {
            (None, Some(table)) => {
                let columns: Vec<&str> = self.columns.keys().map(String::as_str).collect();
                let values: Vec<&str> = self.columns.values().map(String::as_str).collect();
                MultiRow::new(
                    format!("INSERT INTO {table} ({}) VALUES ", columns.join(", ")),
                    format!("({})", values.join(", ")),
                    " ON CONFLICT DO NOTHING".to_string(),
                )
            }
            (Some(statement), None) => {
                let (start, end) = single_values_row(statement)?;
                let (prefix, rest) = statement.split_at(start);
                let (row, suffix) = rest.split_at(end - start);
                let no_params = |part: &str| template::parse_sql(part).is_ok_and(|p| p.is_empty());
                if !no_params(prefix) || !no_params(suffix) {
                    return None;
                }
                MultiRow::new(prefix.to_string(), row.to_string(), suffix.to_string())
            }
            _ => None,
        }
    }
}

/// Where the one row of an `INSERT ... VALUES (row) ...` statement is (its parentheses
/// included), if the statement is one; `None` for anything else, or anything this
/// simple scan is not sure of (several rows, dollar quotes, unbalanced parentheses).
fn single_values_row(statement: &str) -> Option<(usize, usize)> {
    let head = statement.trim_start();
    if !head.get(..6)?.eq_ignore_ascii_case("insert") {
        return None;
    }
    let b = statement.as_bytes();
    let (mut i, mut depth) = (0, 0usize);
    let (mut after_values, mut start, mut row) = (false, None, None);
    while i < b.len() {
        match b[i] {
            quote @ (b'\'' | b'"') => {
                i += 1;
                while i < b.len() && b[i] != quote {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                // `$name` is a parameter; `$$` or `$tag$` opens a dollar-quoted string.
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                    .map_or(b.len(), |p| i + 1 + p);
                if b.get(tag_end) == Some(&b'$') {
                    return None;
                }
            }
            b'(' => {
                if depth == 0 && after_values {
                    if row.is_some() {
                        return None;
                    }
                    start = Some(i);
                }
                depth += 1;
            }
            b')' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 && after_values {
                    row = Some((start?, i + 1));
                    after_values = false;
                    let next = statement[i + 1..].trim_start();
                    if next.starts_with(',') {
                        return None;
                    }
                }
            }
            c if depth == 0 && (c.is_ascii_alphabetic() || c == b'_') => {
                let end = b[i..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                    .map_or(b.len(), |p| i + p);
                if statement[i..end].eq_ignore_ascii_case("values") {
                    if row.is_some() || after_values {
                        return None;
                    }
                    after_values = true;
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if depth != 0 {
        return None;
    }
    row
}

/// A batch's rows as one statement: `prefix`, then `row` once per message with its own
/// parameter numbers, then `suffix` (`ON CONFLICT ...`).
pub(super) struct MultiRow {
    prefix: String,
    row: String,
    suffix: String,
    params: Vec<template::SqlParam>,
    /// The distinct fields of a row, in the order of their parameter numbers.
    pub(super) fields: Vec<Field>,
}

impl MultiRow {
    fn new(prefix: String, row: String, suffix: String) -> Option<Self> {
        let params = template::parse_sql(&row).ok()?;
        let (_, fields) = template::to_positional(&row, &params);
        Some(Self {
            prefix,
            row,
            suffix,
            params,
            fields,
        })
    }

    /// Postgres takes at most 65535 parameters in one statement.
    pub(super) fn max_rows(&self) -> usize {
        (65_535 / self.fields.len().max(1)).max(1)
    }

    pub(super) fn statement(&self, rows: usize) -> String {
        let per_row = self.fields.len();
        let mut out = self.prefix.clone();
        for r in 0..rows {
            if r > 0 {
                out.push_str(", ");
            }
            let mut last = 0;
            for param in &self.params {
                out.push_str(&self.row[last..param.start]);
                let index = self
                    .fields
                    .iter()
                    .position(|f| *f == param.field)
                    .unwrap_or(0);
                out.push_str(&format!("${}", r * per_row + index + 1));
                last = param.end;
            }
            out.push_str(&self.row[last..]);
        }
        out.push_str(&self.suffix);
        out
    }
}

#[cfg(test)]
mod multi_row_tests {
    use super::*;
    use crate::config::secret::Secret;
    use crate::config::units::HumanDuration;
    use indexmap::IndexMap;

    #[test]
    fn each_row_of_a_multi_row_insert_has_its_own_parameter_numbers() {
        let config: Config = toml::from_str(
            "url = \"postgres://x@localhost/db\"\ntable = \"t\"\n\
             columns = { id = \"$message_id\", body = \"$payload\", copy = \"$message_id\" }\n",
        )
        .expect("a valid table target");
        let multi = config.multi_row().expect("a table target");
        assert_eq!(
            multi.statement(2),
            "INSERT INTO t (id, body, copy) VALUES ($1, $2, $1), ($3, $4, $3) ON CONFLICT DO NOTHING"
        );
        assert_eq!(multi.max_rows(), 65_535 / 2);
        assert_eq!(
            config.positional_statement(),
            "INSERT INTO t (id, body, copy) VALUES ($1, $2, $1) ON CONFLICT DO NOTHING"
        );
    }

    fn statement_target(statement: &str) -> Config {
        Config {
            url: Secret::new("postgres://x@localhost/db".into()),
            statement: Some(statement.into()),
            table: None,
            columns: IndexMap::new(),
            max_connections: 4,
            timeout: HumanDuration::from_secs(10),
        }
    }

    #[test]
    fn an_insert_statement_with_one_row_goes_as_one_statement_per_batch() {
        let config = statement_target(
            "insert into orders (id, body, note) values ($message_id, $payload, 'a (b), c') \
             ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body",
        );
        let multi = config.multi_row().expect("one row of values");
        assert_eq!(
            multi.statement(2),
            "insert into orders (id, body, note) values ($1, $2, 'a (b), c'), ($3, $4, 'a (b), c') \
             ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body"
        );
    }

    #[test]
    fn other_statements_go_a_row_at_a_time() {
        for statement in [
            "UPDATE orders SET body = $payload WHERE id = $message_id",
            "INSERT INTO t (id) SELECT $message_id",
            "INSERT INTO t (id) VALUES ($message_id), ($key)",
            "INSERT INTO t (id, body) VALUES ($message_id, $$x$$)",
            "INSERT INTO t (id) VALUES ($message_id) ON CONFLICT (id) DO UPDATE SET body = $payload",
            "WITH x AS (SELECT 1) INSERT INTO t (id) VALUES ($message_id)",
        ] {
            assert!(
                statement_target(statement).multi_row().is_none(),
                "{statement}"
            );
        }
    }
}
