//! The Postgres target: each batch in one transaction, idempotent by message id.
//! Its table and checks are in `config.rs`, the SQL it runs in `sql.rs`.

pub mod config;
mod sql;

use sql::MultiRow;

use crate::probe::Unreachable;
use crate::targets::delivery::{DeliveryError, Message};
use crate::targets::template::Field;

pub use config::*;

/// Connects and prepares the statement without running it: the server checks that the
/// table and columns exist and that the parameters fit.
pub async fn probe(config: &Config) -> Result<(), Unreachable> {
    use sqlx::{Executor, SqlSafeStr};

    let mut conn = crate::probe::postgres_connection(config.url.expose()).await?;
    let sql = config.positional_statement();
    conn.prepare(sqlx::AssertSqlSafe(sql).into_sql_str())
        .await
        .map(|_| ())
        .map_err(|e| {
            let why = crate::probe::postgres_message(&e);
            format!("the statement does not prepare: {why}").into()
        })
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

/// The statement delivering `message` would run, with its parameters.
pub fn preview(config: &Config, message: &Message) -> serde_json::Value {
    let (statement, fields) = config.positional();
    let parameters: Vec<serde_json::Value> = fields.iter().map(|f| f.value(message)).collect();
    serde_json::json!({ "statement": statement, "parameters": parameters })
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
