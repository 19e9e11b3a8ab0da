//! Processing: what a message becomes on its way from the log to one target, and
//! whether it goes there at all. The namespace's `[[processor]]` steps run first, in
//! order, then the target's `filter` and `transform`. Each is a jq program over the
//! message as its envelope (`{"payload", "key", "headers", "message_id",
//! "transaction_id", "namespace", "offset", "timestamp_ms"}`).
//!
//! - A filter keeps the message when it gives `true`; `false`, `null` or no output
//!   skip it for this target. Any other value is an error.
//! - A transform gives the message anew: `payload`, `key` and `headers` it gives
//!   replace the message's (those it leaves out stay); the ids, the namespace, the
//!   offset and the timestamp cannot change. No output skips the message.
//! - An expression that fails on a message (a type error, `error(...)`, its bounds in
//!   [`jq`]) fails that message for that target for good: it goes to the DLQ with the
//!   error.
//!
//! Processing runs at delivery: the log keeps what was acknowledged, and a replay from
//! the DLQ runs the processing configured then.

pub mod config;
pub mod jq;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::targets::{Message, TargetConfig};
use config::{Expression, ProcessorConfig};
use jq::{Program, Val};

/// What processing made of a message for one target.
#[derive(Debug, PartialEq)]
pub enum Processed {
    /// Deliver this.
    Deliver(Message),
    /// The step named kept it from the target.
    Skipped(String),
    /// A step failed on it; for good.
    Failed(String),
}

/// One target's processing: the namespace's steps, then its own.
#[derive(Clone, Default)]
pub struct Processing {
    steps: Vec<Step>,
}

#[derive(Clone)]
struct Step {
    /// `processor[0]`, `processor "enrich"`, `filter`, `transform`.
    name: String,
    filter: bool,
    program: Arc<Program>,
}

impl Processing {
    /// The namespace's steps, then `target`'s own, its `filter` and its `transform`
    /// (expressions that did not compile are left out: a pipeline with one does not
    /// run).
    pub fn new(namespace: &[ProcessorConfig], target: &TargetConfig) -> Self {
        Self::of(
            namespace,
            &target.processor,
            target.filter.as_ref(),
            target.transform.as_ref(),
        )
    }

    fn of(
        namespace: &[ProcessorConfig],
        own: &[ProcessorConfig],
        filter: Option<&Expression>,
        transform: Option<&Expression>,
    ) -> Self {
        let mut steps = Vec::new();
        let mut add = |name: String, filter: bool, expression: Option<&Expression>| {
            if let Some(program) = expression.and_then(Expression::program) {
                steps.push(Step {
                    name,
                    filter,
                    program: program.clone(),
                });
            }
        };
        let named = |i: usize, p: &ProcessorConfig, prefix: &str| match &p.name {
            Some(name) => format!("{prefix}processor `{name}`"),
            None => format!("{prefix}processor[{i}]"),
        };
        for (i, p) in namespace.iter().enumerate() {
            add(named(i, p, ""), true, p.filter.as_ref());
            add(named(i, p, ""), false, p.transform.as_ref());
        }
        for (i, p) in own.iter().enumerate() {
            add(named(i, p, "target "), true, p.filter.as_ref());
            add(named(i, p, "target "), false, p.transform.as_ref());
        }
        add("filter".into(), true, filter);
        add("transform".into(), false, transform);
        Self { steps }
    }

    /// Runs every step on `message`: its envelope is made a jq value once, each step
    /// runs on what the one before gave, and the message is rebuilt once at the end.
    pub fn apply(&self, message: Message) -> Processed {
        if self.steps.is_empty() {
            return Processed::Deliver(message);
        }
        let mut value = match envelope(&message) {
            Ok(value) => value,
            Err(e) => return Processed::Failed(format!("{}: {e}", self.steps[0].name)),
        };
        let mut transformed_by = None;
        for step in &self.steps {
            // A transform takes the value (so that it updates it in place), a filter
            // a share of it.
            let input = match step.filter {
                true => value.clone(),
                false => std::mem::take(&mut value),
            };
            let out = match step.program.run(input) {
                Ok(out) => out,
                Err(e) => return Processed::Failed(format!("{}: {e}", step.name)),
            };
            match (step.filter, out) {
                (true, Some(Val::Bool(true))) => {}
                (true, Some(Val::Bool(false) | Val::Null) | None) | (false, None) => {
                    return Processed::Skipped(step.name.clone());
                }
                (true, Some(other)) => {
                    let shown: String = other.to_string().chars().take(80).collect();
                    return Processed::Failed(format!(
                        "{}: a filter gives true or false, not {shown}",
                        step.name
                    ));
                }
                (false, Some(out)) => {
                    value = out;
                    transformed_by = Some(&step.name);
                }
            }
        }
        let Some(step) = transformed_by else {
            return Processed::Deliver(message);
        };
        match reshape(message, &value) {
            Ok(message) => Processed::Deliver(message),
            Err(e) => Processed::Failed(format!("{step}: {e}")),
        }
    }
}

/// `message` as jq sees it: its envelope, built as a value (the payload parsed, a
/// binary one as a base64 string).
fn envelope(message: &Message) -> Result<Val, String> {
    let payload = if message.payload_is_json {
        jaq_json::read::parse_single(&message.payload)
            .map_err(|e| format!("the payload is not JSON: {e}"))?
    } else {
        Val::from(
            message
                .payload_json()
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    let text = |s: &str| Val::from(s.to_string());
    let mut headers = jaq_json::Map::default();
    for (name, value) in &message.headers {
        headers.insert(text(name), text(value));
    }
    let values = [
        Val::obj(headers),
        message.key.as_deref().map_or(Val::Null, text),
        text(&message.message_id),
        text(&message.namespace),
        Val::from(message.offset as isize),
        payload,
        Val::from(message.timestamp_ms as isize),
        text(&message.transaction_id),
    ];
    let mut fields = jaq_json::Map::with_capacity_and_hasher(FIELDS.len(), Default::default());
    ENVELOPE_KEYS.with(|keys| fields.extend(keys.iter().cloned().zip(values)));
    Ok(Val::obj(fields))
}

/// The envelope's fields, in its order.
const FIELDS: [&str; 8] = [
    "headers",
    "key",
    "message_id",
    "namespace",
    "offset",
    "payload",
    "timestamp_ms",
    "transaction_id",
];

thread_local! {
    /// [`FIELDS`] as jq values, made once per thread.
    static ENVELOPE_KEYS: [Val; 8] = FIELDS.map(|k| Val::from(k.to_string()));
}

/// `message` as a transform's output `out` gives it.
fn reshape(mut message: Message, out: &Val) -> Result<Message, String> {
    let text = |v: &Val| match v {
        Val::TStr(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        _ => None,
    };
    let is = |v: &Val, s: &str| matches!(v, Val::TStr(bytes) if bytes[..] == *s.as_bytes());
    let Val::Obj(fields) = out else {
        return Err(
            "a transform gives the message as an object: `.payload |= ...`, or `{payload: ...}`"
                .into(),
        );
    };
    for (name, value) in fields.iter() {
        let field = match name {
            Val::TStr(bytes) => &bytes[..],
            _ => &b""[..],
        };
        let unchanged = match field {
            b"payload" => {
                message.payload = jq::to_json(value)?;
                message.payload_is_json = true;
                continue;
            }
            b"key" => {
                message.key = match value {
                    Val::Null => None,
                    other => Some(text(other).ok_or("`key` is a string or null")?),
                };
                continue;
            }
            b"headers" => {
                let Val::Obj(headers) = value else {
                    return Err("`headers` is an object of strings".into());
                };
                message.headers = headers
                    .iter()
                    .map(|(name, value)| {
                        let name = text(name).unwrap_or_default();
                        match text(value) {
                            Some(value) => Ok((name, value)),
                            None => Err(format!("header `{name}` is not a string")),
                        }
                    })
                    .collect::<Result<BTreeMap<_, _>, _>>()?;
                continue;
            }
            b"message_id" => is(value, &message.message_id),
            b"transaction_id" => is(value, &message.transaction_id),
            b"namespace" => is(value, &message.namespace),
            b"offset" => *value == Val::from(message.offset as isize),
            b"timestamp_ms" => *value == Val::from(message.timestamp_ms as isize),
            other => {
                return Err(format!(
                    "`{}` is not part of a message: a transform gives the message (`.payload |= ...`, `{{payload: ...}}`), not its payload",
                    String::from_utf8_lossy(other)
                ));
            }
        };
        if !unchanged {
            return Err(format!(
                "`{}` cannot be changed",
                String::from_utf8_lossy(field)
            ));
        }
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message {
            namespace: "shop".into(),
            offset: 7,
            message_id: "m1".into(),
            transaction_id: "t1".into(),
            key: Some("k".into()),
            timestamp_ms: 1000,
            headers: BTreeMap::from([("source".into(), "web".into())]),
            payload: br#"{"kind":"refund","amount":5,"ssn":"123"}"#.to_vec(),
            payload_is_json: true,
            trace: None,
        }
    }

    fn expression(code: &str) -> Expression {
        Expression::from(code.to_string())
    }

    fn processor(filter: Option<&str>, transform: Option<&str>) -> ProcessorConfig {
        ProcessorConfig {
            name: None,
            filter: filter.map(expression),
            transform: transform.map(expression),
        }
    }

    #[test]
    fn steps_run_in_order_then_the_targets_own() {
        let processing = Processing::of(
            &[processor(None, Some(".payload |= del(.ssn)"))],
            &[processor(Some(".payload.amount > 1"), None)],
            Some(&expression(".payload.kind == \"refund\"")),
            Some(&expression(
                "{payload: {refund: .payload.amount}, key: .message_id, headers: (.headers + {\"x\": \"1\"})}",
            )),
        );
        let Processed::Deliver(out) = processing.apply(message()) else {
            panic!("delivered");
        };
        assert_eq!(out.payload, br#"{"refund":5}"#);
        assert_eq!(out.key.as_deref(), Some("m1"));
        assert_eq!(out.headers.get("x").map(String::as_str), Some("1"));
        assert_eq!(out.message_id, "m1");

        let not_a_refund = Processing::of(
            &[],
            &[],
            Some(&expression(".payload.kind == \"sale\"")),
            None,
        );
        assert_eq!(
            not_a_refund.apply(message()),
            Processed::Skipped("filter".into())
        );
        let empty = Processing::of(&[processor(None, Some("empty"))], &[], None, None);
        assert_eq!(
            empty.apply(message()),
            Processed::Skipped("processor[0]".into())
        );
    }

    #[test]
    fn what_a_transform_cannot_do_fails_the_message() {
        for (code, says) in [
            (".message_id = \"other\"", "`message_id` cannot be changed"),
            (".payload", "not its payload"),
            ("[.payload]", "as an object"),
            ("{payload: 1, extra: 2}", "`extra` is not part of a message"),
            (
                "{payload: 1, headers: {a: 1}}",
                "header `a` is not a string",
            ),
            ("{payload: (.payload.kind + 1)}", "transform:"),
        ] {
            let processing = Processing::of(&[], &[], None, Some(&expression(code)));
            match processing.apply(message()) {
                Processed::Failed(e) => assert!(e.contains(says), "{code}: {e}"),
                other => panic!("{code}: {other:?}"),
            }
        }
        let processing = Processing::of(&[], &[], Some(&expression(".payload.amount")), None);
        assert!(
            matches!(processing.apply(message()), Processed::Failed(e) if e.contains("true or false"))
        );
    }
}
