//! The one error type of configuration loading.
//!
//! Every problem names the file, the field (a dotted path such as `proxy.target_url`, or
//! `[2].api_id` for the third definition of a file holding an array) and the reason, because
//! `pipegate check` prints them for a person who has to find and fix the line.

use std::fmt;
use std::path::{Path, PathBuf};

/// A problem found in tyk.conf or in an API definition file.
///
/// Displays as `<file>: <field path>: <reason>`; when the problem concerns the file as a whole
/// (unreadable, not JSON) the field part is left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in, as it was reached from the tyk.conf path given.
    pub file: PathBuf,
    /// Dotted path of the field (`coprocess_options.pipe_command[0]`); empty for file-level
    /// problems.
    pub field: String,
    /// What is wrong and, where it helps, what to write instead.
    pub reason: String,
    /// 1-based (line, column) of a JSON syntax error, so tools can jump to it.
    pub position: Option<(usize, usize)>,
}

impl ConfigError {
    /// An error about one field of `file`.
    pub fn new(file: &Path, field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            field: field.into(),
            reason: reason.into(),
            position: None,
        }
    }

    /// A JSON syntax or encoding error, naming the line and column serde_json stopped at.
    pub(crate) fn json_syntax(file: &Path, err: &serde_json::Error) -> Self {
        let full = err.to_string();
        // serde_json appends " at line L column C"; we say it our own way below.
        let what = match full.rfind(" at line ") {
            Some(cut) => &full[..cut],
            None => full.as_str(),
        };
        let (line, column) = (err.line(), err.column());
        ConfigError {
            file: file.to_path_buf(),
            field: String::new(),
            reason: format!(
                "invalid JSON at line {line}, column {column}: {what}; fix the syntax there \
                 (trailing commas and comments are not allowed in JSON)"
            ),
            position: Some((line, column)),
        }
    }

    /// The file could not be read at all.
    pub(crate) fn unreadable(file: &Path, err: &std::io::Error) -> Self {
        ConfigError::new(
            file,
            "",
            format!("cannot read the file: {err}; check that the path exists and is readable"),
        )
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.field,
                self.reason
            )
        }
    }
}

impl std::error::Error for ConfigError {}
