//! Kubernetes label selectors (`matchLabels` + `matchExpressions`), in the manifest form and
//! evaluated against labels. Only the store evaluates them: consumers receive IPs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::Labels;

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// `{}`: selects everything.
    pub fn is_everything(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Checks the rules of metav1.LabelSelector; the error is `(field suffix, reason)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (key, value) in &self.match_labels {
            validate_label_key(key).map_err(|e| (format!("matchLabels.{key}"), e))?;
            validate_label_value(value).map_err(|e| (format!("matchLabels.{key}"), e))?;
        }
        for (i, req) in self.match_expressions.iter().enumerate() {
            let at = |f: &str| format!("matchExpressions[{i}].{f}");
            validate_label_key(&req.key).map_err(|e| (at("key"), e))?;
            match req.operator {
                Operator::In | Operator::NotIn if req.values.is_empty() => {
                    return Err((
                        at("values"),
                        format!("must be non-empty for operator {:?}", req.operator),
                    ));
                }
                Operator::Exists | Operator::DoesNotExist if !req.values.is_empty() => {
                    return Err((
                        at("values"),
                        format!("must be empty for operator {:?}", req.operator),
                    ));
                }
                _ => {}
            }
            for (j, v) in req.values.iter().enumerate() {
                validate_label_value(v).map_err(|e| (at(&format!("values[{j}]")), e))?;
            }
        }
        Ok(())
    }
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// `[prefix/]name`: prefix a DNS subdomain (≤253), name ≤63 of `[A-Za-z0-9._-]` starting and
/// ending alphanumeric.
fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && (prefix.is_empty() || prefix.len() > 253)
    {
        return Err(format!(
            "label key {key:?}: prefix must be 1-253 characters"
        ));
    }
    if name.is_empty() || name.len() > 63 || !label_chars_ok(name) {
        return Err(format!(
            "label key {key:?}: name must be 1-63 characters of letters, digits, '-', '_', '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 63 || !label_chars_ok(value) {
        return Err(format!(
            "label value {value:?}: must be at most 63 characters of letters, digits, '-', '_', '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn label_chars_ok(s: &str) -> bool {
    let edge = |c: char| c.is_ascii_alphanumeric();
    s.starts_with(edge)
        && s.ends_with(edge)
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(yaml: &str) -> LabelSelector {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn match_labels_and_expressions() {
        let s = sel(
            "matchLabels: {run: nginx}\nmatchExpressions:\n- {key: tier, operator: In, values: [web, api]}\n- {key: canary, operator: DoesNotExist}\n",
        );
        assert!(s.matches(&labels(&[("run", "nginx"), ("tier", "web")])));
        assert!(!s.matches(&labels(&[("run", "nginx"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[
            ("run", "nginx"),
            ("tier", "web"),
            ("canary", "")
        ])));
        assert!(!s.matches(&labels(&[("tier", "web")])));
        let s = sel(
            "matchExpressions: [{key: env, operator: NotIn, values: [prod]}, {key: team, operator: Exists}]",
        );
        assert!(s.matches(&labels(&[("team", "a")])));
        assert!(!s.matches(&labels(&[("team", "a"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[])));
        assert!(sel("{}").matches(&labels(&[])));
    }

    #[test]
    fn validation_names_the_field() {
        let (field, reason) = sel("matchExpressions: [{key: a, operator: In}]")
            .validate()
            .unwrap_err();
        assert_eq!(field, "matchExpressions[0].values");
        assert!(reason.contains("non-empty"));
        let (field, _) = sel("matchExpressions: [{key: a, operator: Exists, values: [x]}]")
            .validate()
            .unwrap_err();
        assert_eq!(field, "matchExpressions[0].values");
        assert!(sel("matchLabels: {'bad key!': x}").validate().is_err());
        assert!(
            sel("matchLabels: {'kubernetes.io/metadata.name': kube-system}")
                .validate()
                .is_ok()
        );
        assert!(
            serde_yaml::from_str::<LabelSelector>("matchExpressions: [{key: a, operator: Maybe}]")
                .is_err()
        );
        assert!(serde_yaml::from_str::<LabelSelector>("matchLabel: {a: b}").is_err());
    }
}
