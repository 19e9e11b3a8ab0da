//! `[[target]]` with `type = "postgres"`: the table as written, with its defaults and its
//! checks.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, KeyPath};
use crate::config::secret::Secret;
use crate::config::units::HumanDuration;
use crate::targets::template::{self, Field};

/// `[[target]]` with `type = "postgres"`: either a `statement` with named parameters or
/// a `table` with a column mapping.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `postgres://` URL, password included if any. Required.
    pub url: Secret<String>,
    /// A statement run for each message, with named parameters such as `$message_id`
    /// and `$payload.id`; an `INSERT ... VALUES` with one row goes as one multi-row
    /// INSERT per batch. Exactly one of `statement` and `table`.
    #[serde(default)]
    pub statement: Option<String>,
    /// A table to insert into, `name` or `schema.name`, with `columns`.
    #[serde(default)]
    pub table: Option<String>,
    /// Column name to placeholder, for `table`: `{ id = "$message_id", body = "$payload" }`.
    /// Default: none.
    #[serde(default)]
    pub columns: IndexMap<String, String>,
    /// Connections in the pool. Default: 4. Range: 1..=100.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Longest a batch may take before it is retried. Default: 10s.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

fn default_max_connections() -> u32 {
    4
}

fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

impl Config {
    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        checks.url(
            &at.key("url"),
            self.url.expose(),
            &["postgres", "postgresql"],
        );
        checks.range(
            Code::InvalidValue,
            &at.key("max_connections"),
            self.max_connections,
            1,
            100,
        );
        match (&self.statement, &self.table) {
            (Some(_), Some(_)) => checks.error(
                Code::InvalidValue,
                &at.key("table"),
                "`statement` and `table` are both set",
                "keep one: a `statement` with named parameters, or a `table` with `columns`",
            ),
            (None, None) => checks.error(
                Code::MissingKey,
                at,
                "a postgres target needs a `statement` or a `table`",
                "add `statement = \"INSERT INTO t (id, body) VALUES ($message_id, $payload) ON CONFLICT (id) DO NOTHING\"`",
            ),
            (Some(statement), None) => {
                let path = at.key("statement");
                if !self.columns.is_empty() {
                    checks.error(
                        Code::InvalidValue,
                        &at.key("columns"),
                        "`columns` only applies with `table`",
                        "remove `columns`, or use `table` instead of `statement`",
                    );
                }
                match template::parse_sql(statement) {
                    Ok(params) if !params.iter().any(|p| p.field == Field::MessageId) => checks.warning(
                        Code::NotIdempotent,
                        &path,
                        "the statement does not use `$message_id`: a redelivered message would be written twice",
                        "store `$message_id` in a unique column with `ON CONFLICT DO NOTHING`",
                    ),
                    Ok(_) => {}
                    Err(errors) => crate::targets::template::report_errors(checks, &path, errors),
                }
            }
            (None, Some(table)) => {
                if !is_table_name(table) {
                    checks.error(
                        Code::InvalidValue,
                        &at.key("table"),
                        format!("`{}` is not a plain table name", table.escape_debug()),
                        "write `name` or `schema.name` of letters, digits and `_`",
                    );
                }
                if self.columns.is_empty() {
                    checks.error(
                        Code::MissingKey,
                        at,
                        "`table` needs `columns`",
                        "add `columns = { id = \"$message_id\", body = \"$payload\" }`",
                    );
                }
                let mut has_id = false;
                for (column, value) in &self.columns {
                    let path = at.key("columns").key(column.clone());
                    if !is_identifier(column) {
                        checks.error(
                            Code::InvalidValue,
                            &path,
                            format!("`{}` is not a plain column name", column.escape_debug()),
                            "use letters, digits and `_`",
                        );
                    }
                    match value.strip_prefix('$').and_then(Field::parse) {
                        Some(field) => has_id |= field == Field::MessageId,
                        None => crate::targets::template::report_errors(
                            checks,
                            &path,
                            vec![template::TemplateError {
                                needle: value.clone(),
                                message: format!("`{value}` is not a placeholder"),
                                hint: format!("map each column to one of: {}, with a leading `$`", template::NAMES),
                            }],
                        ),
                    }
                }
                if !self.columns.is_empty() && !has_id {
                    checks.warning(
                        Code::NotIdempotent,
                        &at.key("columns"),
                        "no column takes `$message_id`: a redelivered message would be written twice",
                        "map a unique column to `$message_id`",
                    );
                }
            }
        }
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

fn is_table_name(name: &str) -> bool {
    match name.split_once('.') {
        Some((schema, table)) => is_identifier(schema) && is_identifier(table),
        None => is_identifier(name),
    }
}
