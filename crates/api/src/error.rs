//! The one error type of this crate: conversion failures and transport setup failures.

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A message that does not convert to a domain value. `field` is the path from the
    /// outermost converted message (`allowlist.rules[2].match.ports[0].end`).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },

    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("TLS: {0}")]
    Tls(String),

    #[error("endpoint: {0}")]
    Endpoint(String),

    #[error("reflection service: {0}")]
    Reflection(String),

    /// Connecting failed; `reason` is the whole cause chain ("Connection refused", "invalid
    /// peer certificate").
    #[error("connecting to {address}: {reason}")]
    Connect { address: String, reason: String },

    /// A listener failed while serving.
    #[error("serving on {listener}: {reason}")]
    Serve { listener: String, reason: String },
}

impl ApiError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn missing(field: impl Into<String>) -> ApiError {
        ApiError::invalid(field, "missing")
    }

    /// Puts `prefix` in front of the field path of an `Invalid` error, so nested conversions
    /// can report `rules[2].match.ports[0].end` without knowing where they are called from.
    /// Other errors pass unchanged.
    pub fn within(self, prefix: &str) -> ApiError {
        match self {
            ApiError::Invalid { field, reason } => ApiError::Invalid {
                field: join_path(prefix, &field),
                reason,
            },
            other => other,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> ApiError {
        ApiError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn file(flag: &str, path: &std::path::Path, source: std::io::Error) -> ApiError {
        ApiError::io(format!("{flag} {}", path.display()), source)
    }
}

/// `prefix` + `field` with a dot between, except before an index (`rules` + `[2]`).
fn join_path(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else if field.is_empty() {
        prefix.to_owned()
    } else if field.starts_with('[') {
        format!("{prefix}{field}")
    } else {
        format!("{prefix}.{field}")
    }
}

/// Extension for `Result<T, ApiError>`: prefix the field path of a conversion error.
pub(crate) trait Within<T> {
    fn within(self, prefix: &str) -> Result<T, ApiError>;
}

impl<T> Within<T> for Result<T, ApiError> {
    fn within(self, prefix: &str) -> Result<T, ApiError> {
        self.map_err(|e| e.within(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_nest() {
        let e = ApiError::invalid("end", "0 is not a port")
            .within("ports[0]")
            .within("match")
            .within("rules[2]")
            .within("allowlist");
        assert_eq!(
            e.to_string(),
            "allowlist.rules[2].match.ports[0].end: 0 is not a port"
        );
        let e = ApiError::invalid("[1]", "bad").within("ips");
        assert_eq!(e.to_string(), "ips[1]: bad");
    }
}
