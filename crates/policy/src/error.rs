use std::fmt;

/// What is wrong with a manifest. Displayed as `OBJECT: PATH: REASON`, e.g.
/// `default/nginx-egress: spec.egress[0].to[0].domainNames[1]: "*.*.com": a wildcard may only
/// be the whole leftmost label`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub kind: ManifestErrorKind,
    /// `namespace/name`, `name` for cluster-scoped objects, or `document N` (1-based) when the
    /// document has no usable name.
    pub object: String,
    /// Field path in the manifest (`spec.egress[0].ports[1].endPort`); empty when the error
    /// concerns the whole document.
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestErrorKind {
    /// Not YAML/JSON at all.
    Syntax,
    /// An `apiVersion`/`kind` dnsfence does not accept.
    UnsupportedKind,
    /// Unknown field, wrong type, or a value that breaks a rule of the API.
    Invalid,
    /// The same object twice in one apply.
    Duplicate,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.object)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.reason)
    }
}
