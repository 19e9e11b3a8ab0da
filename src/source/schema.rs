//! `[source] schema`: the JSON Schema (draft 2020-12, 2019-09, 7, 6 or 4, as its
//! `$schema` says; 2020-12 without one) that every payload of the namespace satisfies.
//! The file is read and compiled when the pipeline file is loaded, so a reload that
//! finds it changed changes the namespace; a payload is checked before anything is
//! appended. References (`$ref`) resolve within the file: nothing is fetched.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Most violations one refusal lists.
pub const MAX_VIOLATIONS: usize = 20;
/// Longest message of one violation, in characters.
const MAX_MESSAGE_CHARS: usize = 200;
/// Largest schema file.
const MAX_SCHEMA_BYTES: u64 = 1 << 20;

/// `schema = "..."` as written, and the schema it names once loaded.
#[derive(Clone, Deserialize, Serialize)]
#[serde(from = "String")]
pub struct SchemaFile {
    /// As written: relative to the pipeline file's directory.
    pub path: String,
    /// SHA-256 of the file's bytes once read, so that a reload sees a change of the
    /// schema alone.
    pub sha256: Option<String>,
    #[serde(skip)]
    pub loaded: Option<Schema>,
}

impl From<String> for SchemaFile {
    fn from(path: String) -> Self {
        Self {
            path,
            sha256: None,
            loaded: None,
        }
    }
}

impl std::fmt::Debug for SchemaFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaFile")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl SchemaFile {
    /// Reads and compiles the schema, its path taken from the directory of
    /// `pipeline_file`. The error says what is wrong, for the `schema` key.
    pub fn load(&mut self, pipeline_file: &Path) -> Result<(), String> {
        use sha2::Digest;
        let path = pipeline_file
            .parent()
            .unwrap_or(Path::new("."))
            .join(&self.path);
        let bytes = read(&path).map_err(|e| format!("schema file {}: {e}", path.display()))?;
        let document: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("schema file {} is not JSON: {e}", path.display()))?;
        let validator = jsonschema::validator_for(&document).map_err(|e| {
            format!(
                "schema file {} is not a valid JSON Schema: {} (at {})",
                path.display(),
                e.masked(),
                e.instance_path()
            )
        })?;
        self.sha256 = Some(hex::encode(sha2::Sha256::digest(&bytes)));
        self.loaded = Some(Schema {
            path,
            validator: Arc::new(validator),
        });
        Ok(())
    }
}

fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SCHEMA_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SCHEMA_BYTES {
        return Err(std::io::Error::other("larger than 1 MiB"));
    }
    Ok(bytes)
}

/// A compiled schema.
#[derive(Clone)]
pub struct Schema {
    pub path: PathBuf,
    validator: Arc<jsonschema::Validator>,
}

/// One way a payload breaks the schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Violation {
    /// JSON pointer to the offending part of the payload (`""` for the whole).
    #[schema(example = "/amount")]
    pub pointer: String,
    /// What is wrong there.
    #[schema(example = "value is not of type \"number\"")]
    pub message: String,
}

impl Schema {
    /// Checks `payload` (JSON text): every violation, at most [`MAX_VIOLATIONS`].
    pub fn check(&self, payload: &[u8]) -> Result<(), Vec<Violation>> {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return Err(vec![Violation {
                pointer: String::new(),
                message: "the payload is not JSON, and the namespace has a schema".into(),
            }]);
        };
        if self.validator.is_valid(&value) {
            return Ok(());
        }
        Err(self
            .validator
            .iter_errors(&value)
            .take(MAX_VIOLATIONS)
            .map(|e| Violation {
                pointer: e.instance_path().to_string(),
                message: e
                    .masked()
                    .to_string()
                    .chars()
                    .take(MAX_MESSAGE_CHARS)
                    .collect(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(text: &str) -> Result<Schema, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("s.json"), text).map_err(|e| e.to_string())?;
        let mut file = SchemaFile::from("s.json".to_string());
        file.load(&dir.path().join("p.toml"))?;
        file.loaded.ok_or_else(|| "not loaded".into())
    }

    #[test]
    fn every_violation_is_listed_with_its_pointer() -> Result<(), String> {
        let s = schema(
            r#"{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                "required": ["id"], "properties": {"id": {"type": "string"}, "amount": {"type": "number"}}}"#,
        )?;
        assert!(s.check(br#"{"id": "a", "amount": 3}"#).is_ok());
        let violations = s.check(br#"{"amount": "x"}"#).expect_err("invalid");
        let pointers: Vec<&str> = violations.iter().map(|v| v.pointer.as_str()).collect();
        assert!(pointers.contains(&"/amount"), "{violations:?}");
        assert!(
            pointers.contains(&""),
            "the missing `id` is the whole's: {violations:?}"
        );
        assert!(
            s.check(b"\x00\x01").is_err(),
            "binary payloads break a schema"
        );
        Ok(())
    }

    #[test]
    fn draft_07_is_understood() -> Result<(), String> {
        let s = schema(
            r#"{"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "string"}], "additionalItems": false}"#,
        )?;
        assert!(s.check(br#"["a"]"#).is_ok());
        assert!(s.check(br#"["a", 1]"#).is_err());
        Ok(())
    }

    #[test]
    fn a_schema_that_is_not_one_is_refused() {
        let e = schema(r#"{"type": 12}"#).err().unwrap_or_default();
        assert!(e.contains("not a valid JSON Schema"), "{e}");
        let e = schema("{not json").err().unwrap_or_default();
        assert!(e.contains("is not JSON"), "{e}");
        let e = schema(r#"{"$ref": "https://example.com/other.json"}"#)
            .err()
            .unwrap_or_default();
        assert!(
            e.contains("not a valid JSON Schema"),
            "nothing is fetched: {e}"
        );
    }
}
