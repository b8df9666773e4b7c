//! Collecting the errors of one object, and turning serde's errors into path + reason.

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::error::{ManifestError, ManifestErrorKind};

/// The reason given for a required field that is absent, whether serde or a validator finds it.
pub(super) const REQUIRED: &str = "required field is missing";

/// The errors found in one object. Validators record every problem they see and keep going,
/// so that one apply reports all that is wrong with an object, not just the first thing.
#[derive(Debug)]
pub(super) struct Findings {
    object: String,
    errors: Vec<ManifestError>,
}

impl Findings {
    pub(super) fn new(object: impl Into<String>) -> Findings {
        Findings {
            object: object.into(),
            errors: Vec::new(),
        }
    }

    pub(super) fn push(
        &mut self,
        kind: ManifestErrorKind,
        path: impl Into<String>,
        reason: impl Into<String>,
    ) {
        self.errors.push(ManifestError {
            kind,
            object: self.object.clone(),
            path: path.into(),
            reason: reason.into(),
        });
    }

    pub(super) fn invalid(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.push(ManifestErrorKind::Invalid, path, reason);
    }

    pub(super) fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    pub(super) fn into_errors(self) -> Vec<ManifestError> {
        self.errors
    }

    /// Deserializes `value` strictly, recording the first type/unknown-field/missing-field
    /// error with its path. Serde stops at the first error, so at most one is recorded.
    pub(super) fn deserialize<T: DeserializeOwned>(&mut self, value: Value) -> Option<T> {
        match deserialize_with_path(value) {
            Ok(parsed) => Some(parsed),
            Err((path, reason)) => {
                self.invalid(path, reason);
                None
            }
        }
    }

    /// Like [`Findings::deserialize`], letting the caller reword the reason (to add a hint).
    pub(super) fn deserialize_with_hint<T: DeserializeOwned>(
        &mut self,
        value: Value,
        hint: impl Fn(&str) -> Option<String>,
    ) -> Option<T> {
        match deserialize_with_path(value) {
            Ok(parsed) => Some(parsed),
            Err((path, reason)) => {
                let reason = hint(&reason).unwrap_or(reason);
                self.invalid(path, reason);
                None
            }
        }
    }
}

/// `(path, reason)` of the first deserialization error. serde_path_to_error reports a missing
/// field at the path of the struct that lacks it; the field is appended so that the path names
/// what must be added (`spec.podSelector`, not `spec`).
fn deserialize_with_path<T: DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        // serde_path_to_error prints the root as ".".
        let path = if path == "." { String::new() } else { path };
        let message = error.inner().to_string();
        match missing_field(&message) {
            Some(field) => (join(&path, field), REQUIRED.to_string()),
            None => (path, message),
        }
    })
}

fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
}

/// `parent.field`, or `field` at the root.
pub(super) fn join(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}
