//! `${VAR}` and `${VAR:-default}` expansion in configuration strings. `$${` writes a
//! literal `${`. A variable that is unset and has no default is an error that names the
//! variable; every such error in a string is reported, not only the first.

/// Where the variables come from: the process environment in `wald`, a map in tests.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A placeholder that could not be filled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpandError {
    /// The text of the placeholder as written, up to the name (`${DATABASE_URL`), so
    /// that a diagnostic can point at it.
    pub needle: String,
    pub message: String,
    pub hint: String,
}

/// Whether `text` holds anything to expand; most strings do not, and stay borrowed.
pub fn has_placeholders(text: &str) -> bool {
    text.contains("${")
}

/// Expands every placeholder of `text`, or returns every error in it.
pub fn expand(text: &str, lookup: Lookup) -> Result<String, Vec<ExpandError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        if !tail.starts_with("${") {
            out.push('$');
            rest = &tail[1..];
            continue;
        }
        let Some(close) = tail.find('}') else {
            errors.push(ExpandError {
                needle: tail.to_string(),
                message: "`${` is not closed by `}`".into(),
                hint: "write `${NAME}`, or `$${` for a literal `${`".into(),
            });
            break;
        };
        let inner = &tail[2..close];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        let needle = format!("${{{name}");
        if !is_variable_name(name) {
            errors.push(ExpandError {
                needle,
                message: format!("`{name}` is not a valid environment variable name"),
                hint: "names are letters, digits and `_`, not starting with a digit".into(),
            });
        } else {
            match (lookup(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => errors.push(ExpandError {
                    needle,
                    message: format!("environment variable `{name}` is not set"),
                    hint: format!("set {name}, or give a default with `${{{name}:-value}}`"),
                }),
            }
        }
        rest = &tail[close + 1..];
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.internal".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn variables_and_defaults_are_expanded() {
        assert_eq!(
            expand("postgres://${HOST}:${PORT:-5432}/x", &env).unwrap(),
            "postgres://db.internal:5432/x"
        );
        assert_eq!(expand("a${EMPTY}b", &env).unwrap(), "ab");
        assert_eq!(
            expand("$payload and $${literal}", &env).unwrap(),
            "$payload and ${literal}"
        );
    }

    #[test]
    fn every_missing_variable_is_reported() {
        let errors = expand("${A}/${B}/${HOST}", &env).unwrap_err();
        let needles: Vec<_> = errors.iter().map(|e| e.needle.as_str()).collect();
        assert_eq!(needles, ["${A", "${B"]);
        assert!(errors[0].hint.contains("${A:-value}"));
    }

    #[test]
    fn malformed_placeholders_are_errors() {
        assert_eq!(expand("${OPEN", &env).unwrap_err().len(), 1);
        assert_eq!(expand("${1BAD}", &env).unwrap_err().len(), 1);
    }
}
