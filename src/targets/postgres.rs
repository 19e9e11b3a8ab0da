//! The Postgres target: each batch in one transaction, idempotent by message id. Its
//! configuration and checks live here.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::delivery::{DeliveryError, Message};
use super::template::{self, Field};
use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, KeyPath};
use crate::config::secret::Secret;
use crate::config::units::HumanDuration;

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
                    Err(errors) => super::template::report_errors(checks, &path, errors),
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
                        None => super::template::report_errors(
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

/// Connects and prepares the statement without running it: the server checks that the
/// table and columns exist and that the parameters fit.
pub async fn probe(config: &Config) -> Result<(), String> {
    use sqlx::{Executor, SqlSafeStr};

    let mut conn = connect(config.url.expose()).await?;
    let sql = config.positional_statement();
    conn.prepare(sqlx::AssertSqlSafe(sql).into_sql_str())
        .await
        .map(|_| ())
        .map_err(|e| format!("the statement does not prepare: {}", database_message(&e)))
}

/// The server's own words for a database error, without sqlx's decoration.
fn database_message(e: &sqlx::Error) -> String {
    match e.as_database_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

/// Connects and runs `SELECT 1`.
pub async fn probe_url(url: &str) -> Result<(), String> {
    use sqlx::Executor;

    let mut conn = connect(url).await?;
    conn.execute("SELECT 1")
        .await
        .map(|_| ())
        .map_err(|e| format!("SELECT 1 failed: {}", database_message(&e)))
}

async fn connect(url: &str) -> Result<sqlx::PgConnection, String> {
    use sqlx::Connection;

    sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| format!("cannot connect: {e}"))
}

impl Config {
    /// The statement with `$1`, `$2`, ... as Postgres takes it: `statement` rewritten,
    /// or an `INSERT ... ON CONFLICT DO NOTHING` built from `table` and `columns` (so a
    /// redelivered message is not written twice, given a unique `$message_id` column).
    pub fn positional_statement(&self) -> String {
        self.positional().0
    }

    /// The positional statement and the field each parameter stands for, in order.
    fn positional(&self) -> (String, Vec<Field>) {
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
    fn multi_row(&self) -> Option<MultiRow> {
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
struct MultiRow {
    prefix: String,
    row: String,
    suffix: String,
    params: Vec<template::SqlParam>,
    /// The distinct fields of a row, in the order of their parameter numbers.
    fields: Vec<Field>,
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
    fn max_rows(&self) -> usize {
        (65_535 / self.fields.len().max(1)).max(1)
    }

    fn statement(&self, rows: usize) -> String {
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

/// A Postgres target ready to deliver: a pool that connects when first needed, so that
/// a database that is down at start-up is only a retried delivery.
pub struct PostgresTarget {
    pool: sqlx::PgPool,
    statement: String,
    fields: Vec<Field>,
    /// A batch as one multi-row INSERT, where the statement allows it.
    multi_row: Option<MultiRow>,
    /// The type Postgres gives each parameter, learnt on first use.
    types: tokio::sync::OnceCell<Vec<String>>,
}

impl PostgresTarget {
    pub fn new(config: &Config) -> Result<Self, DeliveryError> {
        let options: sqlx::postgres::PgConnectOptions =
            config.url.expose().parse().map_err(|e| {
                DeliveryError::permanent(format!("the Postgres URL is not usable: {e}"))
            })?;
        // Named, so that an operator sees wald's connections in `pg_stat_activity`.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.timeout.get())
            .connect_lazy_with(options.application_name("wald"));
        let (statement, fields) = config.positional();
        Ok(Self {
            pool,
            statement,
            fields,
            multi_row: config.multi_row(),
            types: tokio::sync::OnceCell::new(),
        })
    }

    /// Writes the batch in one transaction: as one multi-row INSERT where the statement
    /// allows it, else the statement for each message. When a message is
    /// refused for good, the ones before it are committed without it, so that only the
    /// refused one goes to the DLQ; any other failure rolls the whole batch back.
    pub async fn deliver_batch(
        &self,
        messages: &[Message],
    ) -> Result<(), super::delivery::BatchError> {
        let failed_at = |delivered, error| super::delivery::BatchError { delivered, error };
        if let Some(multi) = &self.multi_row {
            match self.insert_rows(multi, messages).await {
                Ok(()) => return Ok(()),
                Err(error) if error.retriable => return Err(failed_at(0, error)),
                // A row was refused for good: find which, one row after the other.
                Err(_) => {}
            }
        }
        match self.run_in_transaction(messages).await {
            Ok(()) => Ok(()),
            Err((index, error)) if !error.retriable && index > 0 => {
                match self.run_in_transaction(&messages[..index]).await {
                    Ok(()) => Err(failed_at(index, error)),
                    Err((_, again)) => Err(failed_at(0, again)),
                }
            }
            // Nothing was committed: the batch fails at its first message.
            Err((_, error)) => Err(failed_at(0, error)),
        }
    }

    /// Inserts the messages as multi-row INSERTs, all in one transaction.
    async fn insert_rows(
        &self,
        multi: &MultiRow,
        messages: &[Message],
    ) -> Result<(), DeliveryError> {
        let types = self.parameter_types().await?;
        let mut transaction = self.pool.begin().await.map_err(classify)?;
        for chunk in messages.chunks(multi.max_rows()) {
            let statement = multi.statement(chunk.len());
            let mut query = sqlx::query(sqlx::AssertSqlSafe(statement));
            for message in chunk {
                for (field, pg_type) in multi.fields.iter().zip(types) {
                    query = bind(query, field.value(message), pg_type)?;
                }
            }
            query.execute(&mut *transaction).await.map_err(classify)?;
        }
        transaction.commit().await.map_err(classify)
    }

    /// Runs the statement for each message in one transaction; on failure, which
    /// message failed and why (the transaction is rolled back).
    async fn run_in_transaction(&self, messages: &[Message]) -> Result<(), (usize, DeliveryError)> {
        let types = self.parameter_types().await.map_err(|e| (0, e))?;
        let mut transaction = self.pool.begin().await.map_err(|e| (0, classify(e)))?;
        for (index, message) in messages.iter().enumerate() {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(self.statement.as_str()));
            for (field, pg_type) in self.fields.iter().zip(types) {
                query = bind(query, field.value(message), pg_type).map_err(|e| (index, e))?;
            }
            query
                .execute(&mut *transaction)
                .await
                .map_err(|e| (index, classify(e)))?;
        }
        transaction.commit().await.map_err(|e| (0, classify(e)))
    }

    /// The type Postgres gives each parameter of the statement, learnt once.
    async fn parameter_types(&self) -> Result<&Vec<String>, DeliveryError> {
        use sqlx::{AssertSqlSafe, Executor, SqlSafeStr, Statement, TypeInfo};

        self.types
            .get_or_try_init(|| async {
                let prepared = self
                    .pool
                    .prepare(AssertSqlSafe(self.statement.clone()).into_sql_str())
                    .await
                    .map_err(classify)?;
                Ok::<_, DeliveryError>(match prepared.parameters() {
                    Some(sqlx::Either::Left(types)) => {
                        types.iter().map(|t| t.name().to_string()).collect()
                    }
                    _ => Vec::new(),
                })
            })
            .await
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds `value` as Postgres's type for the parameter; a value that does not fit the
/// type is a permanent error (retrying cannot change it).
fn bind<'q>(
    query: PgQuery<'q>,
    value: serde_json::Value,
    pg_type: &str,
) -> Result<PgQuery<'q>, DeliveryError> {
    use serde_json::Value;
    let text = |v: &Value| match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    };
    let unfit = |v: &Value| DeliveryError::permanent(format!("{v} is not a valid {pg_type}"));
    Ok(match pg_type {
        "JSON" | "JSONB" => query.bind(sqlx::types::Json(value)),
        "INT8" | "INT4" | "INT2" => {
            let n = match &value {
                Value::Null => None,
                Value::Number(n) => Some(n.as_i64().ok_or_else(|| unfit(&value))?),
                Value::String(s) => Some(s.trim().parse::<i64>().map_err(|_| unfit(&value))?),
                _ => return Err(unfit(&value)),
            };
            match pg_type {
                "INT8" => query.bind(n),
                "INT4" => query.bind(
                    n.map(i32::try_from)
                        .transpose()
                        .map_err(|_| unfit(&value))?,
                ),
                _ => query.bind(
                    n.map(i16::try_from)
                        .transpose()
                        .map_err(|_| unfit(&value))?,
                ),
            }
        }
        "FLOAT8" | "FLOAT4" => query.bind(match &value {
            Value::Null => None,
            Value::Number(n) => Some(n.as_f64().ok_or_else(|| unfit(&value))?),
            Value::String(s) => Some(s.trim().parse::<f64>().map_err(|_| unfit(&value))?),
            _ => return Err(unfit(&value)),
        }),
        "BOOL" => query.bind(match &value {
            Value::Null => None,
            Value::Bool(b) => Some(*b),
            _ => return Err(unfit(&value)),
        }),
        "UUID" => query.bind(
            text(&value)
                .map(|s| uuid::Uuid::parse_str(&s).map_err(|_| unfit(&value)))
                .transpose()?,
        ),
        "TIMESTAMPTZ" | "TIMESTAMP" => query.bind(match &value {
            Value::Null => None,
            Value::Number(n) => {
                let ms = n.as_i64().ok_or_else(|| unfit(&value))?;
                Some(
                    sqlx::types::chrono::DateTime::from_timestamp_millis(ms)
                        .ok_or_else(|| unfit(&value))?,
                )
            }
            Value::String(s) => Some(
                sqlx::types::chrono::DateTime::parse_from_rfc3339(s)
                    .map_err(|_| unfit(&value))?
                    .to_utc(),
            ),
            _ => return Err(unfit(&value)),
        }),
        // Text, and whatever else Postgres can read from text.
        _ => query.bind(text(&value)),
    })
}

/// Whether a Postgres error may pass: connection trouble, resource shortage,
/// serialization failures and shutdowns are retried; constraint violations, bad data
/// and bad statements go to the DLQ at once.
fn classify(e: sqlx::Error) -> DeliveryError {
    let message = format!("postgres: {e}");
    let retriable = match &e {
        sqlx::Error::Database(db) => {
            let class = db.code().map(|c| c.chars().take(2).collect::<String>());
            !matches!(class.as_deref(), Some("22" | "23" | "42" | "2B" | "44"))
        }
        sqlx::Error::TypeNotFound { .. } | sqlx::Error::ColumnNotFound(_) => false,
        _ => true,
    };
    DeliveryError {
        message,
        retriable,
        retry_after: None,
    }
}

#[cfg(test)]
mod multi_row_tests {
    use super::*;

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
