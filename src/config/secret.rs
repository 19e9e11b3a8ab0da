//! Secrets in configuration: values that must never reach logs, errors, `plan` output
//! or status answers. [`Secret`] hides its value from `Debug` and `Display`;
//! [`redact_url`] and [`redact_line`] mask credentials in text that is shown to people.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that is used but never shown. `expose` is the only way to read it, so every
/// place that does is easy to find.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Secret)
    }
}

/// Serialized as a fingerprint, so that `plan` can tell that a secret changed without
/// showing it.
impl<T: AsRef<str>> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("[redacted:{}]", fingerprint(self.0.as_ref())))
    }
}

/// First eight hex digits of the SHA-256 of a secret: enough to see that it changed.
pub fn fingerprint(value: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(value.as_bytes())[..4])
}

/// The URL with any password replaced by `***`, for logs and messages.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(url) => url.to_string(),
        Err(_) => mask_userinfo(raw, '*'),
    }
}

/// Keys whose values are secrets wherever they appear in a configuration file.
pub const SECRET_KEYS: &[&str] = &[
    "hmac_secret",
    "secret_access_key",
    "session_token",
    "password",
    "admin_key",
];

/// A line of a configuration file made safe to print: a URL password and the value of a
/// secret key are masked with as many `*` as they have characters, so that carets
/// placed under the line still point at the right column.
pub fn redact_line(line: &str) -> String {
    let masked = mask_userinfo(line, '*');
    let key = masked
        .split('=')
        .next()
        .map(|k| k.trim().trim_matches('"'))
        .unwrap_or("");
    if masked.contains('=') && SECRET_KEYS.contains(&key) {
        let eq = masked.find('=').unwrap_or(0);
        let (head, value) = masked.split_at(eq + 1);
        return format!("{head}{}", mask_quoted(value));
    }
    masked
}

/// Replaces the password in every `scheme://user:password@` of `text`.
fn mask_userinfo(text: &str, mask: char) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| c == '/' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..=colon]);
                out.extend(std::iter::repeat_n(
                    mask,
                    authority[colon + 1..at].chars().count(),
                ));
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

/// Masks the contents of the first quoted string in `value`, keeping the quotes. A
/// placeholder such as `"${HMAC_SECRET}"` is left as it is: it names, it does not tell.
fn mask_quoted(value: &str) -> String {
    let Some(open) = value.find(['"', '\'']) else {
        return value.to_string();
    };
    let quote = value.as_bytes()[open] as char;
    let body_start = open + 1;
    let body_end = value[body_start..]
        .find(quote)
        .map(|i| body_start + i)
        .unwrap_or(value.len());
    let body = &value[body_start..body_end];
    if body.starts_with("${") && body.ends_with('}') {
        return value.to_string();
    }
    let mut out = value[..body_start].to_string();
    out.extend(std::iter::repeat_n('*', body.chars().count()));
    out.push_str(&value[body_end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let secret = Secret::new("hunter2".to_string());
        assert_eq!(format!("{secret:?}"), "[redacted]");
    }

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/orders"),
            "postgres://app:***@db:5432/orders"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn lines_keep_their_width_when_redacted() {
        let line = r#"url = "postgres://app:hunter2@db/orders" # main"#;
        let redacted = redact_line(line);
        assert_eq!(
            redacted,
            r#"url = "postgres://app:*******@db/orders" # main"#
        );
        assert_eq!(redacted.len(), line.len());
        assert_eq!(
            redact_line(r#"hmac_secret = "abc""#),
            r#"hmac_secret = "***""#
        );
        assert_eq!(
            redact_line(r#"hmac_secret = "${HMAC}""#),
            r#"hmac_secret = "${HMAC}""#
        );
        assert_eq!(redact_line("redis://h:6379"), "redis://h:6379");
    }
}
