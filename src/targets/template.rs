//! Placeholders that targets fill from each message: `$payload.id` in a Postgres
//! statement, `{payload.id}` in a Redis key or a Kafka key template.
//!
//! Both syntaxes name the same fields: `message_id`, `transaction_id`, `key`,
//! `namespace`, `timestamp`, `payload` (the whole payload), `payload.<path>` (a field,
//! dotted for nesting) and `headers.<name>`. Parsing happens at validation, so an
//! unknown placeholder is an error in `wald validate`, not a failed delivery.

use serde::Serialize;

use super::delivery::Message;
use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, Finding, KeyPath, Location};

/// A message field a placeholder stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Field {
    MessageId,
    TransactionId,
    Key,
    Namespace,
    Timestamp,
    /// The payload (empty path) or a field of it.
    Payload(Vec<String>),
    Header(String),
}

impl Field {
    /// This field of `message`, as JSON: a missing payload field or header is null.
    pub fn value(&self, message: &Message) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Self::MessageId => Value::String(message.message_id.clone()),
            Self::TransactionId => Value::String(message.transaction_id.clone()),
            Self::Key => message.key.clone().map_or(Value::Null, Value::String),
            Self::Namespace => Value::String(message.namespace.clone()),
            Self::Timestamp => Value::from(message.timestamp_ms),
            Self::Payload(path) => {
                let mut value = message.payload_json();
                for step in path {
                    value = match value {
                        Value::Object(mut map) => map.remove(step).unwrap_or(Value::Null),
                        Value::Array(mut items) => step
                            .parse::<usize>()
                            .ok()
                            .filter(|i| *i < items.len())
                            .map_or(Value::Null, |i| items.swap_remove(i)),
                        _ => Value::Null,
                    };
                }
                value
            }
            Self::Header(name) => message
                .headers
                .get(name)
                .cloned()
                .map_or(Value::Null, Value::String),
        }
    }
}

/// The placeholder names that need no path, for hints.
pub const NAMES: &str = "message_id, transaction_id, key, namespace, timestamp, payload, payload.<field>, headers.<name>";

impl Field {
    /// The field named `name` (`payload.customer.id`), if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        let (head, rest) = match name.split_once('.') {
            Some((head, rest)) => (head, Some(rest)),
            None => (name, None),
        };
        let valid_path = |rest: &str| rest.split('.').all(|s| !s.is_empty());
        match (head, rest) {
            ("message_id", None) => Some(Self::MessageId),
            ("transaction_id", None) => Some(Self::TransactionId),
            ("key", None) => Some(Self::Key),
            ("namespace", None) => Some(Self::Namespace),
            ("timestamp", None) => Some(Self::Timestamp),
            ("payload", None) => Some(Self::Payload(Vec::new())),
            ("payload", Some(rest)) if valid_path(rest) => {
                Some(Self::Payload(rest.split('.').map(str::to_string).collect()))
            }
            ("headers", Some(rest)) if !rest.is_empty() => Some(Self::Header(rest.to_string())),
            _ => None,
        }
    }
}

/// A placeholder that is not a known field, or is malformed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    /// The placeholder as written, to point at.
    pub needle: String,
    pub message: String,
    pub hint: String,
}

/// One piece of a template: literal text or a field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Part {
    Text(String),
    Field(Field),
}

/// A key template such as `order:{payload.id}`; `{{` and `}}` write literal braces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Template {
    pub parts: Vec<Part>,
}

impl Template {
    /// The template filled from `message`: a field that is a JSON string is written
    /// as is, any other value as JSON, a missing one as nothing.
    pub fn render(&self, message: &Message) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field(field) => match field.value(message) {
                    serde_json::Value::String(s) => out.push_str(&s),
                    serde_json::Value::Null => {}
                    other => out.push_str(&other.to_string()),
                },
            }
        }
        out
    }

    pub fn parse(text: &str) -> Result<Self, Vec<TemplateError>> {
        let mut parts = Vec::new();
        let mut errors = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let Some(close) = text[i..].find('}') else {
                        errors.push(TemplateError {
                            needle: text[i..].to_string(),
                            message: "`{` is not closed by `}`".into(),
                            hint: "write `{payload.id}`, or `{{` for a literal brace".into(),
                        });
                        break;
                    };
                    let name = &text[i + 1..i + close];
                    match Field::parse(name.trim()) {
                        Some(field) => {
                            if !literal.is_empty() {
                                parts.push(Part::Text(std::mem::take(&mut literal)));
                            }
                            parts.push(Part::Field(field));
                        }
                        None => errors.push(unknown(&text[i..=i + close], name)),
                    }
                    while chars.peek().is_some_and(|(j, _)| *j <= i + close) {
                        chars.next();
                    }
                }
                '}' => errors.push(TemplateError {
                    needle: "}".into(),
                    message: "`}` without an opening `{`".into(),
                    hint: "write `}}` for a literal brace".into(),
                }),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        if errors.is_empty() {
            Ok(Self { parts })
        } else {
            Err(errors)
        }
    }

    /// Whether the template has any placeholder, or is constant text.
    pub fn has_fields(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field(_)))
    }

    /// Whether the template uses `field` anywhere.
    pub fn uses(&self, field: &Field) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Field(f) if f == field))
    }
}

fn unknown(needle: &str, name: &str) -> TemplateError {
    TemplateError {
        needle: needle.to_string(),
        message: format!("unknown placeholder `{name}`"),
        hint: format!("placeholders are: {NAMES}"),
    }
}

/// A named parameter of a SQL statement: `$payload.id` at `start..end` of the text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SqlParam {
    pub start: usize,
    pub end: usize,
    pub field: Field,
}

/// Finds the named parameters of a SQL statement, skipping string literals, quoted
/// identifiers and comments. Positional `$1` parameters are an error: wald numbers
/// them itself.
pub fn parse_sql(statement: &str) -> Result<Vec<SqlParam>, Vec<TemplateError>> {
    let bytes = statement.as_bytes();
    let mut params = Vec::new();
    let mut errors = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"') => {
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == quote {
                        if bytes.get(i + 1) == Some(&quote) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'$' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let end = i
                    + 1
                    + bytes[i + 1..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                errors.push(TemplateError {
                    needle: statement[i..end].to_string(),
                    message: format!(
                        "positional parameter `{}` in a statement with named parameters",
                        &statement[i..end]
                    ),
                    hint: format!(
                        "name the value instead: {NAMES}, each written with a leading `$`"
                    ),
                });
                i = end;
            }
            b'$' if bytes
                .get(i + 1)
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_') =>
            {
                let mut end = i + 1;
                while end < bytes.len() {
                    let b = bytes[end];
                    let dotted = b == b'.'
                        && bytes
                            .get(end + 1)
                            .is_some_and(|n| n.is_ascii_alphanumeric() || *n == b'_');
                    if b.is_ascii_alphanumeric() || b == b'_' || dotted {
                        end += 1;
                    } else {
                        break;
                    }
                }
                let name = &statement[i + 1..end];
                match Field::parse(name) {
                    Some(field) => params.push(SqlParam {
                        start: i,
                        end,
                        field,
                    }),
                    None => errors.push(unknown(&statement[i..end], name)),
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    if errors.is_empty() {
        Ok(params)
    } else {
        Err(errors)
    }
}

/// Rewrites named parameters as Postgres's `$1`, `$2`, ...; a field used twice keeps
/// one number. Returns the statement and the field of each number.
pub fn to_positional(statement: &str, params: &[SqlParam]) -> (String, Vec<Field>) {
    let mut out = String::with_capacity(statement.len());
    let mut fields: Vec<Field> = Vec::new();
    let mut last = 0;
    for param in params {
        out.push_str(&statement[last..param.start]);
        let number = match fields.iter().position(|f| *f == param.field) {
            Some(i) => i + 1,
            None => {
                fields.push(param.field.clone());
                fields.len()
            }
        };
        out.push_str(&format!("${number}"));
        last = param.end;
    }
    out.push_str(&statement[last..]);
    (out, fields)
}

/// Reports template errors at `path`, each pointing at its placeholder.
pub(crate) fn report_errors(checks: &mut Checks, path: &KeyPath, errors: Vec<TemplateError>) {
    for e in errors {
        checks.push(
            Finding::error(
                Code::UnknownPlaceholder,
                Location::Path {
                    path: path.clone(),
                    needle: Some(e.needle),
                },
                e.message,
            )
            .with_hint(e.hint),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_templates_mix_text_and_fields() {
        let t = Template::parse("order:{payload.id}:{key}{{x}}").unwrap();
        assert_eq!(
            t.parts,
            vec![
                Part::Text("order:".into()),
                Part::Field(Field::Payload(vec!["id".into()])),
                Part::Text(":".into()),
                Part::Field(Field::Key),
                Part::Text("{x}".into()),
            ]
        );
    }

    #[test]
    fn unknown_key_placeholders_are_reported_each() {
        let errors = Template::parse("{paylod.id}-{nope}-{message_id}").unwrap_err();
        let needles: Vec<_> = errors.iter().map(|e| e.needle.as_str()).collect();
        assert_eq!(needles, ["{paylod.id}", "{nope}"]);
    }

    #[test]
    fn sql_parameters_skip_literals_and_comments() {
        let sql = "INSERT INTO t (id, body, note) VALUES ($message_id, $payload, '$not_me') -- $nor_me\nON CONFLICT DO NOTHING";
        let params = parse_sql(sql).unwrap();
        let fields: Vec<_> = params.iter().map(|p| &p.field).collect();
        assert_eq!(fields, [&Field::MessageId, &Field::Payload(vec![])]);
        assert_eq!(&sql[params[0].start..params[0].end], "$message_id");
    }

    #[test]
    fn named_parameters_become_positional() {
        let sql = "INSERT INTO t VALUES ($message_id, $payload.id, $message_id)";
        let (positional, fields) = to_positional(sql, &parse_sql(sql).unwrap());
        assert_eq!(positional, "INSERT INTO t VALUES ($1, $2, $1)");
        assert_eq!(
            fields,
            [Field::MessageId, Field::Payload(vec!["id".into()])]
        );
    }

    #[test]
    fn sql_positional_and_unknown_parameters_are_errors() {
        let errors = parse_sql("INSERT INTO t VALUES ($1, $payload.a.b, $paylaod)").unwrap_err();
        let needles: Vec<_> = errors.iter().map(|e| e.needle.as_str()).collect();
        assert_eq!(needles, ["$1", "$paylaod"]);
    }
}
