//! Domain-name patterns and the reversed-label trie that matches them.
//!
//! Semantics follow the EKS ApplicationNetworkPolicy and the upstream network-policy-api
//! `DomainName` type: an exact name, or `*.` followed by a name, where `*` stands for one or
//! more whole labels (never the apex, never part of a label). Matching is case-insensitive and
//! ignores one trailing dot.

use std::collections::HashMap;
use std::fmt;

/// The longest presentation form of a DNS name (RFC 1035 §2.3.4, without the root dot).
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DomainPattern {
    /// Lower-case name without trailing dot.
    Exact(String),
    /// Lower-case suffix (without the `*.`): matches names with one or more labels in front.
    Wildcard(String),
}

impl DomainPattern {
    /// Parses and validates a `domainNames` entry. The error is the reason only; callers add
    /// the field path.
    pub fn parse(raw: &str) -> Result<DomainPattern, String> {
        let (wildcard, rest) = match raw.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        if rest.contains('*') || (raw.starts_with('*') && !wildcard) {
            return Err(format!(
                "{raw:?}: a wildcard may only be the whole leftmost label (\"*.example.com\")"
            ));
        }
        let name = rest.strip_suffix('.').unwrap_or(rest);
        validate_name(name, 2).map_err(|reason| format!("{raw:?}: {reason}"))?;
        let name = name.to_ascii_lowercase();
        Ok(if wildcard {
            DomainPattern::Wildcard(name)
        } else {
            DomainPattern::Exact(name)
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        let name = normalize_name(name);
        match self {
            DomainPattern::Exact(exact) => name == *exact,
            DomainPattern::Wildcard(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|front| front.len() > 1 && front.ends_with('.')),
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Exact(name) => f.write_str(name),
            DomainPattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// Checks a name as a client would query it (no wildcard; one label is enough, as in
/// `localhost`) and returns it normalized.
pub fn parse_query_name(raw: &str) -> Result<String, String> {
    let name = raw.strip_suffix('.').unwrap_or(raw);
    validate_name(name, 1).map_err(|reason| format!("{raw:?}: {reason}"))?;
    Ok(name.to_ascii_lowercase())
}

/// Lower-cases and strips one trailing dot: the form patterns are stored in.
pub fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The EKS CRD pattern (patterns need `min_labels` = 2): labels of letters, digits, `-` and
/// `_`, not starting or ending with `-`/`_`.
fn validate_name(name: &str, min_labels: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("a domain name may not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("longer than {MAX_NAME_LEN} characters"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < min_labels {
        return Err("needs at least two labels (\"example.com\")".into());
    }
    for label in labels {
        if label.is_empty() {
            return Err("empty label (two dots in a row, or a leading dot)".into());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "label {label:?} is longer than {MAX_LABEL_LEN} characters"
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("invalid character {bad:?} in label {label:?}"));
        }
        let edge = |c: char| c.is_ascii_alphanumeric();
        if !label.starts_with(edge) || !label.ends_with(edge) {
            return Err(format!(
                "label {label:?} must start and end with a letter or digit"
            ));
        }
    }
    Ok(())
}

/// A reversed-label trie from patterns to values (rule indices). A lookup walks the name's
/// labels from the right once, so its cost depends on the name, not on the number of patterns.
#[derive(Debug, Clone, Default)]
pub struct DomainTrie<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug, Clone)]
struct Node<T> {
    /// Keyed by the label's bytes (lower case): a lookup needs no UTF-8 check.
    children: HashMap<Box<[u8]>, Node<T>, foldhash::fast::RandomState>,
    /// Values whose pattern is exactly the name ending here.
    exact: Vec<T>,
    /// Values whose pattern is `*.` + the name ending here.
    wildcard: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: HashMap::default(),
            exact: Vec::new(),
            wildcard: Vec::new(),
        }
    }
}

impl<T: Copy> DomainTrie<T> {
    pub fn new() -> Self {
        DomainTrie {
            root: Node::default(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, pattern: &DomainPattern, value: T) {
        let (name, wildcard) = match pattern {
            DomainPattern::Exact(name) => (name, false),
            DomainPattern::Wildcard(suffix) => (suffix, true),
        };
        let mut node = &mut self.root;
        for label in name.rsplit('.') {
            node = node.children.entry(label.as_bytes().into()).or_default();
        }
        if wildcard {
            node.wildcard.push(value);
        } else {
            node.exact.push(value);
        }
        self.len += 1;
    }

    /// Calls `found` with every value whose pattern matches `name` (any case, optional
    /// trailing dot).
    pub fn for_each_match(&self, name: &str, mut found: impl FnMut(T)) {
        let name = name.strip_suffix('.').unwrap_or(name).as_bytes();
        if name.is_empty() {
            return;
        }
        let mut lower = [0u8; MAX_LABEL_LEN];
        let mut node = &self.root;
        let mut end = name.len();
        loop {
            let start = name[..end]
                .iter()
                .rposition(|&b| b == b'.')
                .map_or(0, |dot| dot + 1);
            let Some(label) = ascii_lower(&name[start..end], &mut lower) else {
                return;
            };
            let Some(child) = node.children.get(label) else {
                return;
            };
            node = child;
            if start == 0 {
                node.exact.iter().copied().for_each(&mut found);
                return;
            }
            // At least one label remains in front: `*.` patterns ending here match.
            node.wildcard.iter().copied().for_each(&mut found);
            end = start - 1;
        }
    }

    pub fn matches(&self, name: &str) -> Vec<T> {
        let mut out = Vec::new();
        self.for_each_match(name, |v| out.push(v));
        out
    }
}

/// Lower-cases a label into `buf` without allocating; `None` for labels too long to be in
/// the trie.
fn ascii_lower<'a>(label: &[u8], buf: &'a mut [u8; MAX_LABEL_LEN]) -> Option<&'a [u8]> {
    let out = buf.get_mut(..label.len())?;
    for (o, b) in out.iter_mut().zip(label) {
        *o = b.to_ascii_lowercase();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(s: &str) -> DomainPattern {
        DomainPattern::parse(s).unwrap()
    }

    /// The wildcard rule of EKS ApplicationNetworkPolicy and network-policy-api
    /// (apis/v1alpha2 `DomainName`): "`*.kubernetes.io` matches subdomains of kubernetes.io.
    /// www.kubernetes.io, blog.kubernetes.io, and latest.blog.kubernetes.io match, however
    /// kubernetes.io, and wikipedia.org do not."
    #[test]
    fn wildcard_rule_table() {
        let table: &[(&str, &str, bool)] = &[
            ("github.com", "github.com", true),
            ("github.com", "GitHub.COM", true),
            ("github.com", "github.com.", true),
            ("github.com.", "github.com", true),
            ("github.com", "api.github.com", false),
            ("github.com", "github.com.evil.test", false),
            ("github.com", "evilgithub.com", false),
            ("*.github.com", "api.github.com", true),
            ("*.github.com", "a.b.github.com", true),
            ("*.github.com", "API.GitHub.com.", true),
            ("*.github.com", "github.com", false),
            ("*.github.com", "evilgithub.com", false),
            ("*.github.com", "api.evilgithub.com", false),
            ("*.github.com", "github.com.evil.test", false),
            ("*.kubernetes.io", "blog.kubernetes.io", true),
            ("*.kubernetes.io", "latest.blog.kubernetes.io", true),
            ("*.kubernetes.io", "kubernetes.io", false),
            ("kubernetes.io", "www.kubernetes.io", false),
            ("kubernetes.io", "my-kubernetes.io", false),
            ("*.github.io", "user.github.io", true),
        ];
        for &(pattern, name, expected) in table {
            let pat = p(pattern);
            assert_eq!(pat.matches(name), expected, "{pattern} vs {name} (direct)");
            let mut trie = DomainTrie::new();
            trie.insert(&pat, 7u32);
            assert_eq!(
                trie.matches(name) == vec![7],
                expected,
                "{pattern} vs {name} (trie)"
            );
        }
    }

    #[test]
    fn rejects_bad_patterns_with_reason() {
        let cases: &[(&str, &str)] = &[
            ("*.*.com", "wildcard may only be the whole leftmost label"),
            ("api.*.com", "wildcard may only be the whole leftmost label"),
            (
                "*github.com",
                "wildcard may only be the whole leftmost label",
            ),
            ("*", "wildcard may only be the whole leftmost label"),
            ("github.*", "wildcard may only be the whole leftmost label"),
            ("", "may not be empty"),
            ("localhost", "at least two labels"),
            // The EKS CRD pattern wants two labels after "*." as well.
            ("*.com", "at least two labels"),
            ("a..com", "empty label"),
            (".github.com", "empty label"),
            ("-a.com", "must start and end"),
            ("a b.com", "invalid character"),
            ("gïthub.com", "invalid character"),
        ];
        for &(raw, reason) in cases {
            let err = DomainPattern::parse(raw).unwrap_err();
            assert!(err.contains(reason), "{raw:?}: {err}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(
            DomainPattern::parse(&long)
                .unwrap_err()
                .contains("longer than 63")
        );
    }

    #[test]
    fn query_names() {
        assert_eq!(
            parse_query_name("API.GitHub.com.").unwrap(),
            "api.github.com"
        );
        assert_eq!(parse_query_name("localhost").unwrap(), "localhost");
        assert!(
            parse_query_name("*.github.com")
                .unwrap_err()
                .contains("invalid character '*'")
        );
        assert!(parse_query_name("a..b").is_err());
    }

    #[test]
    fn trie_collects_every_matching_pattern() {
        let mut trie = DomainTrie::new();
        trie.insert(&p("a.b.example.com"), 1);
        trie.insert(&p("*.b.example.com"), 2);
        trie.insert(&p("*.example.com"), 3);
        trie.insert(&p("b.example.com"), 4);
        let mut got = trie.matches("A.b.example.com");
        got.sort();
        assert_eq!(got, vec![1, 2, 3]);
        let mut got = trie.matches("b.example.com");
        got.sort();
        assert_eq!(got, vec![3, 4]);
        assert!(trie.matches("npmjs.org").is_empty());
        assert!(trie.matches("").is_empty());
        assert!(trie.matches(&"x".repeat(300)).is_empty());
        // a trailing dot, upper case anywhere, a label too long to be a pattern's
        let mut got = trie.matches("Z.B.Example.COM.");
        got.sort();
        assert_eq!(got, vec![2, 3]);
        assert_eq!(
            trie.matches(&format!("{}.example.com", "y".repeat(64))),
            vec![3]
        );
        assert!(
            trie.matches(&format!("a.{}.com", "y".repeat(64)))
                .is_empty()
        );
        // an empty label ends the walk: only the suffix patterns met before it match
        assert_eq!(trie.matches("..example.com"), vec![3]);
        assert!(trie.matches(".").is_empty());
    }
}
