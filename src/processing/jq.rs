//! jq programs, through jaq: compiled once, from the file's text; run on one message at
//! a time with bounded work.
//!
//! Bounds, per run: at most [`MAX_STEPS`] evaluation steps (each term of the program
//! evaluated counts one; `range` is defined in jq here so that each number it yields
//! counts too), and recursion no deeper than the thread's stack allows with a
//! [`STACK_RESERVE`] to spare. A run past either ends with an error, never a crash: the
//! step is counted where jaq looks up the program, and a run out of bounds unwinds to
//! [`Program::run`]. One operation that builds a huge value at once (`"x" * 1e9`,
//! `.[1e9] = 1`) is bounded by memory only.
//!
//! Not available: `env` and `$ENV` (the service's environment holds secrets), `input`
//! and `inputs`; `debug` and `stderr` pass their input on and log nothing.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, DataT, Vars, data::HasLut};
pub use jaq_json::Val;

/// Most evaluation steps of one run.
pub const MAX_STEPS: u64 = 1_000_000;
/// Stack kept free under a run's deepest recursion.
const STACK_RESERVE: usize = 256 * 1024;

/// `range/3` in jq, so that its every output is a step; jaq's own is native.
const RANGE: &str = "def range($from; $upto; $by): \
    def next: if ($by > 0 and . < $upto) or ($by < 0 and . > $upto) or ($by == 0 and . != $upto) \
    then ., (. + $by | next) else ({}[]) end; $from | next;";

/// Natives left out (see the module docs), and `range`, defined in jq instead.
const LEFT_OUT: &[&str] = &["env", "input", "inputs", "range"];
/// Natives that would log what they are given: they give nothing and log nothing.
const SILENCED: &[&str] = &["debug_empty", "stderr_empty"];

fn nothing(_: jaq_core::Cv<'_, Data>) -> jaq_core::ValXs<'_, <Data as DataT>::V<'_>> {
    Box::new(std::iter::empty())
}

/// The data jaq runs over: the program, looked up at every step, which counts it.
struct Data;

impl DataT for Data {
    type V<'a> = Val;
    type Data<'a> = Counted<'a>;
}

#[derive(Clone)]
struct Counted<'a>(&'a jaq_core::Lut<Data>);

impl<'a> HasLut<'a, Data> for Counted<'a> {
    fn lut(&self) -> &'a jaq_core::Lut<Data> {
        step();
        self.0
    }
}

thread_local! {
    /// Steps left to the run on this thread.
    static STEPS_LEFT: Cell<u64> = const { Cell::new(0) };
}

/// Why a run was stopped.
struct OutOfBounds(&'static str);

fn step() {
    let left = STEPS_LEFT.get();
    if left == 0 {
        std::panic::panic_any(OutOfBounds("it took more than 1000000 steps"));
    }
    STEPS_LEFT.set(left - 1);
    if stacker::remaining_stack().is_some_and(|rest| rest < STACK_RESERVE) {
        std::panic::panic_any(OutOfBounds("it recursed too deep"));
    }
}

/// A run stopped for its bounds unwinds quietly: the default hook would print a panic.
fn quiet_out_of_bounds() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<OutOfBounds>() {
                previous(info);
            }
        }));
    });
}

/// A compiled jq program.
pub struct Program {
    filter: jaq_core::Filter<Data>,
}

/// Where and why a program does not compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError {
    /// Byte offset in the program's text.
    pub offset: usize,
    pub message: String,
    pub hint: &'static str,
}

impl Program {
    pub fn compile(code: &str) -> Result<Self, Vec<CompileError>> {
        let at = |s: &str| {
            (s.as_ptr() as usize)
                .checked_sub(code.as_ptr() as usize)
                .filter(|o| *o <= code.len())
                .unwrap_or(0)
        };
        let defs = jaq_core::load::parse(RANGE, |p| p.defs())
            .unwrap_or_default()
            .into_iter()
            .chain(jaq_core::defs())
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs::<Data>()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .filter(|(name, _, _)| !LEFT_OUT.contains(name) && !SILENCED.contains(name))
            .chain(SILENCED.iter().map(|name| {
                let run: jaq_core::RunPtr<Data> = nothing;
                jaq_core::native::run::<Data>((name, jaq_core::native::v(0), run))
            }));
        let arena = Arena::default();
        let modules = Loader::new(defs)
            .load(&arena, File { code, path: () })
            .map_err(|errors| {
                let mut found = Vec::new();
                for (_, error) in errors {
                    match error {
                        jaq_core::load::Error::Io(io) => {
                            found.extend(io.into_iter().map(|(s, e)| CompileError {
                                offset: at(s),
                                message: format!("cannot import: {e}"),
                                hint: "a filter or transform cannot import modules",
                            }))
                        }
                        jaq_core::load::Error::Lex(lex) => {
                            found.extend(lex.into_iter().map(|(expected, s)| CompileError {
                                offset: at(s),
                                message: format!("expected {}", expected.as_str()),
                                hint: "check the brackets and quotes of the expression",
                            }))
                        }
                        jaq_core::load::Error::Parse(parse) => {
                            found.extend(parse.into_iter().map(|(expected, s)| CompileError {
                                offset: at(s),
                                message: if s.is_empty() {
                                    format!("expected {} before the end", expected.as_str())
                                } else {
                                    format!("expected {}", expected.as_str())
                                },
                                hint: "the expression is jq; see https://jqlang.org/manual/",
                            }))
                        }
                    }
                }
                found
            })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| {
                errors
                    .into_iter()
                    .flat_map(|(_, undefined)| undefined)
                    .map(|(name, kind)| CompileError {
                        offset: at(name),
                        message: format!("unknown {} `{name}`", undefined_kind(&kind)),
                        hint: "jq's builtins are available except env, $ENV, input and inputs; the message is `.`: .payload, .key, .headers, .message_id, .namespace",
                    })
                    .collect::<Vec<_>>()
            })?;
        Ok(Self { filter })
    }

    /// Runs the program on `input`: its first output, or none. An error or the bounds
    /// are an `Err`.
    pub fn run(&self, input: Val) -> Result<Option<Val>, String> {
        quiet_out_of_bounds();
        STEPS_LEFT.set(MAX_STEPS);
        let ran = catch_unwind(AssertUnwindSafe(|| {
            let ctx = Ctx::<Data>::new(Counted(&self.filter.lut), Vars::new([]));
            match self.filter.id.run((ctx, input)).next() {
                None => Ok(None),
                Some(Ok(value)) => Ok(Some(value)),
                Some(Err(e)) => Err(match e.get_err() {
                    Ok(error) => error.to_string(),
                    Err(_) => "it called `halt`".to_string(),
                }),
            }
        }));
        STEPS_LEFT.set(0);
        match ran {
            Ok(out) => out,
            Err(panic) => Err(match panic.downcast_ref::<OutOfBounds>() {
                Some(OutOfBounds(why)) => format!("stopped: {why}"),
                None => "the expression failed inside jq".to_string(),
            }),
        }
    }
}

/// How deep a value written as JSON may nest: as deep as a payload may come in.
const MAX_DEPTH: usize = 128;

/// `value` as JSON text, or why it is not JSON: a byte string, a number JSON cannot
/// write (NaN, an infinity), a key that is not a string, or nesting deeper than a
/// payload may. Numbers are written as jq writes them (a decimal as it was read).
pub fn to_json(value: &Val) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(256);
    write_json(&mut out, value, 0)?;
    Ok(out)
}

fn write_json(out: &mut Vec<u8>, value: &Val, depth: usize) -> Result<(), String> {
    use jaq_json::Num;
    // Writing to a `Vec` cannot fail.
    let text = |out: &mut Vec<u8>, bytes: &[u8]| {
        let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(bytes));
    };
    match value {
        Val::Null => out.extend_from_slice(b"null"),
        Val::Bool(true) => out.extend_from_slice(b"true"),
        Val::Bool(false) => out.extend_from_slice(b"false"),
        Val::TStr(bytes) => text(out, bytes),
        Val::Num(Num::Int(i)) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Val::Num(Num::Float(f)) if f.is_finite() => {
            out.extend_from_slice(ryu::Buffer::new().format_finite(*f).as_bytes())
        }
        Val::Num(Num::Float(_)) => return Err("its result is not JSON: NaN or an infinity".into()),
        Val::Num(number) => out.extend_from_slice(number.to_string().as_bytes()),
        Val::BStr(_) => return Err("its result is not JSON: a byte string".into()),
        Val::Arr(_) | Val::Obj(_) if depth == MAX_DEPTH => {
            return Err(format!("its result nests deeper than {MAX_DEPTH} levels"));
        }
        Val::Arr(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(out, item, depth + 1)?;
            }
            out.push(b']');
        }
        Val::Obj(fields) => {
            out.push(b'{');
            for (i, (key, item)) in fields.iter().enumerate() {
                let Val::TStr(key) = key else {
                    return Err("its result is not JSON: a key that is not a string".into());
                };
                if i > 0 {
                    out.push(b',');
                }
                text(out, key);
                out.push(b':');
                write_json(out, item, depth + 1)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn undefined_kind(kind: &jaq_core::compile::Undefined) -> &'static str {
    use jaq_core::compile::Undefined;
    match kind {
        Undefined::Var => "variable",
        Undefined::Label => "label",
        Undefined::Mod => "module",
        _ => "filter",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(code: &str, input: &str) -> Result<Option<String>, String> {
        let program = Program::compile(code).map_err(|e| format!("{e:?}"))?;
        let input = jaq_json::read::parse_single(input.as_bytes()).map_err(|e| e.to_string())?;
        program.run(input).map(|out| out.map(|v| v.to_string()))
    }

    #[test]
    fn runs_jq() {
        assert_eq!(
            run(
                ".payload.kind == \"refund\"",
                r#"{"payload": {"kind": "refund"}}"#
            ),
            Ok(Some("true".into()))
        );
        assert_eq!(
            run(
                ".payload |= del(.ssn)",
                r#"{"payload": {"ssn": 1, "a": 2}}"#
            ),
            Ok(Some(r#"{"payload":{"a":2}}"#.into()))
        );
        assert_eq!(run("[range(3)]", "null"), Ok(Some("[0,1,2]".into())));
        assert_eq!(run("[range(0; 10; 4)]", "null"), Ok(Some("[0,4,8]".into())));
        assert_eq!(
            run("[limit(3; repeat(1))]", "null"),
            Ok(Some("[1,1,1]".into()))
        );
        assert_eq!(run("empty", "null"), Ok(None));
        assert_eq!(run(".a + 1", r#"{"a": 1}"#), Ok(Some("2".into())));
    }

    #[test]
    fn errors_at_run_time_are_errors() {
        let e = run(".a + 1", r#"{"a": "x"}"#).expect_err("a type error");
        assert!(e.contains("cannot"), "{e}");
        let e = run("error(\"no\")", "null").expect_err("error/1");
        assert!(e.contains("no"), "{e}");
        assert!(run("halt", "null").is_err());
    }

    #[test]
    fn runs_are_bounded() {
        for code in [
            "def f: f; f",
            "repeat(1) | select(false)",
            "[range(1e12)]",
            "last(range(1e15))",
            "def f: 1 + f; f",
            "[recurse(. + 1)] | length",
        ] {
            let e = run(code, "0").expect_err(code);
            assert!(e.starts_with("stopped:"), "{code}: {e}");
        }
        // The thread is fine afterwards.
        assert_eq!(run("1 + 1", "null"), Ok(Some("2".into())));
    }

    #[test]
    fn compile_errors_say_where() {
        let errors = Program::compile(".payload | nosuchfn(1)")
            .err()
            .unwrap_or_default();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].offset, 11);
        assert!(errors[0].message.contains("nosuchfn"), "{errors:?}");
        let errors = Program::compile(".a | if . then 1")
            .err()
            .unwrap_or_default();
        assert!(!errors.is_empty());
        assert!(errors[0].message.starts_with("expected"), "{errors:?}");
        let errors = Program::compile("env.HOME").err().unwrap_or_default();
        assert!(errors[0].message.contains("env"), "{errors:?}");
        let errors = Program::compile("$ENV.HOME").err().unwrap_or_default();
        assert!(!errors.is_empty(), "$ENV is not available");
    }

    #[test]
    fn json_is_written_as_jq_writes_it() {
        for text in [
            r#"{"a":[1,-2,12.5,1e100,0.1,null,true,false],"b":{"c":"quote \" back \\ nl \n tab \t ü"}}"#,
            "123456789012345678901234567890",
            "1.000",
            "[]",
            "{}",
            r#""\u0001""#,
        ] {
            let value = jaq_json::read::parse_single(text.as_bytes()).expect(text);
            let ours = String::from_utf8(to_json(&value).expect(text)).expect(text);
            assert_eq!(ours, value.to_string(), "{text}");
            let _: serde_json::Value = serde_json::from_str(&ours).expect(text);
        }
        let computed = |code: &str| {
            let out = Program::compile(code)
                .ok()
                .and_then(|p| p.run(Val::Null).ok().flatten());
            to_json(&out.expect(code))
        };
        assert_eq!(
            computed("[1.5 * 2, 7 / 2]").as_deref(),
            Ok(&b"[3.0,3.5]"[..])
        );
        for (code, says) in [
            ("nan", "NaN"),
            ("[infinite]", "infinity"),
            ("\"a\" | tobytes", "byte string"),
            ("reduce range(200) as $i (0; [.])", "deeper than 128"),
        ] {
            let e = computed(code).expect_err(code);
            assert!(e.contains(says), "{code}: {e}");
        }
    }
}
