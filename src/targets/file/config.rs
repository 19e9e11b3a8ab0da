//! `[[target]]` with `type = "file"`: the table as written, with its defaults and its
//! checks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, KeyPath};

/// `[[target]]` with `type = "file"`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The file to append to, relative to the working directory. Required.
    pub path: PathBuf,
    /// `fdatasync` the file after each batch. Default: false.
    #[serde(default)]
    pub fsync: bool,
}

impl Config {
    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        let path = at.key("path");
        if self.path.as_os_str().is_empty() {
            checks.error(
                Code::InvalidValue,
                &path,
                "`path` is empty",
                "write for example \"data/out/orders.jsonl\"",
            );
        } else if self.path.to_string_lossy().ends_with('/') {
            checks.error(
                Code::InvalidValue,
                &path,
                "`path` names a directory",
                "name a file, for example \"data/out/orders.jsonl\"",
            );
        }
    }
}
