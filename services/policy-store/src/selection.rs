//! How many pods each policy selects (its subject), as the policy's status reports it.
//!
//! Pods are counted by group of (namespace, labels): a selector is evaluated once per group,
//! not once per pod, so counting all policies costs policies × groups, and groups are few
//! where pods are many (replicas of one workload share their labels).

use std::collections::{BTreeMap, HashMap};

use dnsfence_policy::compile::namespace_labels;
use dnsfence_policy::model::{Labels, PolicyRef};
use dnsfence_policy::policy::Subject;

use crate::state::StoreState;

/// The number of pods each stored policy selects.
pub fn selected_pods(state: &StoreState) -> BTreeMap<PolicyRef, usize> {
    let mut groups: HashMap<(&str, &Labels), usize> = HashMap::new();
    for w in state.compiler.workloads() {
        *groups
            .entry((w.key.namespace.as_str(), &w.labels))
            .or_default() += 1;
    }
    let mut namespace_labels_cache: HashMap<&str, Labels> = HashMap::new();
    for (namespace, _) in groups.keys() {
        namespace_labels_cache.entry(namespace).or_insert_with(|| {
            match state.compiler.namespace(namespace) {
                Some(labels) => labels.clone(),
                None => namespace_labels(namespace, Labels::new()),
            }
        });
    }
    state
        .compiler
        .policies()
        .map(|policy| {
            let count = groups
                .iter()
                .filter(|((namespace, labels), _)| {
                    let ns_labels = namespace_labels_cache
                        .get(namespace)
                        .cloned()
                        .unwrap_or_default();
                    subject_selects(&policy.subject, namespace, &ns_labels, labels)
                })
                .map(|(_, n)| *n)
                .sum();
            (policy.reference.clone(), count)
        })
        .collect()
}

/// The policy's subject selects a pod of namespace `namespace` with these labels (the same
/// rule the compiler applies when it binds pods to allowlists).
pub fn subject_selects(
    subject: &Subject,
    namespace: &str,
    namespace_labels: &Labels,
    pod_labels: &Labels,
) -> bool {
    match subject {
        Subject::Namespace {
            namespace: own,
            pods,
        } => own == namespace && pods.matches(pod_labels),
        Subject::Namespaces(selector) => selector.matches(namespace_labels),
        Subject::Pods { namespaces, pods } => {
            namespaces.matches(namespace_labels) && pods.matches(pod_labels)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::writes;
    use dnsfence_policy::model::{Namespace, Workload, WorkloadKey};

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)], ip: &str) -> Workload {
        Workload {
            key: WorkloadKey {
                namespace: ns.into(),
                name: name.into(),
            },
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ips: vec![ip.parse().unwrap()],
            node: "n1".into(),
        }
    }

    fn apply(state: &mut StoreState, yaml: &str) {
        let objects = writes::parse_all(
            &[writes::ManifestInput {
                source: String::new(),
                content: yaml.into(),
            }],
            "default",
        )
        .unwrap();
        writes::apply(state, objects, false);
    }

    #[test]
    fn counts_follow_selectors_namespaces_and_their_labels() {
        let mut state = StoreState::default();
        apply(
            &mut state,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]\n",
        );
        apply(
            &mut state,
            "apiVersion: networking.k8s.aws/v1alpha1\nkind: ClusterNetworkPolicy\nmetadata: {name: prod}\nspec:\n  tier: Admin\n  priority: 10\n  subject:\n    namespaces: {matchLabels: {env: prod}}\n  egress: []\n",
        );
        writes::upsert_workloads(
            &mut state,
            vec![
                pod("shop", "web-1", &[("app", "web")], "10.0.0.1"),
                pod("shop", "web-2", &[("app", "web")], "10.0.0.2"),
                pod("shop", "db", &[("app", "db")], "10.0.0.3"),
                pod("other", "web", &[("app", "web")], "10.0.0.4"),
            ],
        );
        let np = |state: &StoreState| {
            let counts = selected_pods(state);
            let by_name = |name: &str| {
                counts
                    .iter()
                    .find(|(r, _)| r.name == name)
                    .map(|(_, n)| *n)
                    .unwrap()
            };
            (by_name("web"), by_name("prod"))
        };
        // The web pods of `shop` only; no namespace carries env=prod yet.
        assert_eq!(np(&state), (2, 0));
        writes::upsert_namespaces(
            &mut state,
            vec![Namespace {
                name: "shop".into(),
                labels: [("env".to_string(), "prod".to_string())].into(),
            }],
        );
        assert_eq!(np(&state), (2, 3));
        writes::remove_workloads(
            &mut state,
            vec![WorkloadKey {
                namespace: "shop".into(),
                name: "web-1".into(),
            }],
        );
        assert_eq!(np(&state), (1, 2));
    }
}
