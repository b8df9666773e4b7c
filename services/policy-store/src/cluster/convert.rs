//! Kubernetes objects into the store's sources: pods into workloads, namespaces into their
//! labels, policy objects into the manifests the policy library parses.

use std::net::IpAddr;

use dnsfence_policy::model::{Namespace, PolicyKind, PolicyRef, Workload, WorkloadKey};
use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Pod};
use kube::ResourceExt;
use kube::core::DynamicObject;
use serde_json::{Map, Value};
use tracing::warn;

/// Phases after which a pod's addresses are released (and may be reused by another pod).
const TERMINAL_PHASES: [&str; 2] = ["Succeeded", "Failed"];

/// Identity of a pod.
pub fn pod_key(pod: &Pod) -> WorkloadKey {
    WorkloadKey {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
    }
}

/// The workload a pod is, or `None` when it is none (yet or any more): not given an address
/// yet, finished (its addresses may already belong to another pod), or on the host network
/// (its address is the node's, shared with every other host-network pod; no per-pod policy
/// can apply to it).
pub fn pod_to_workload(pod: &Pod) -> Option<Workload> {
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status
        .phase
        .as_deref()
        .is_some_and(|p| TERMINAL_PHASES.contains(&p))
    {
        return None;
    }
    let key = pod_key(pod);
    let mut texts: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    // Older API servers and some tests fill only podIP.
    if texts.is_empty()
        && let Some(ip) = status.pod_ip.as_deref()
    {
        texts.push(ip);
    }
    let mut ips: Vec<IpAddr> = Vec::with_capacity(texts.len());
    for text in texts {
        match text.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) => {
                warn!(pod = %key, ip = text, "status.podIPs holds something that is not an address; ignored")
            }
        }
    }
    if ips.is_empty() {
        return None;
    }
    Some(Workload {
        key,
        labels: pod.labels().clone(),
        ips,
        node: spec.node_name.clone().unwrap_or_default(),
    })
}

pub fn namespace_to_source(ns: &KubeNamespace) -> Namespace {
    Namespace {
        name: ns.name_any(),
        labels: ns.labels().clone(),
    }
}

/// The reference a policy object of `kind` has in the store.
pub fn policy_ref(kind: PolicyKind, object: &DynamicObject) -> PolicyRef {
    PolicyRef {
        kind,
        namespace: if kind.is_namespaced() {
            object.namespace().unwrap_or_default()
        } else {
            String::new()
        },
        name: object.name_any(),
    }
}

/// The manifest the store keeps for a policy object: its type, name, namespace, labels and
/// spec, as YAML. Everything the API server adds (resourceVersion, managedFields, status,
/// annotations such as kubectl's last-applied copy) is left out: none of it changes what the
/// policy means, and keeping it would make every status update look like a new version.
/// Fields of `spec` are kept as they are, unknown ones included, so the strict parser sees
/// what the user wrote and names the field it rejects.
pub fn policy_manifest(kind: PolicyKind, object: &DynamicObject) -> String {
    let mut metadata = Map::new();
    metadata.insert("name".into(), Value::String(object.name_any()));
    if let Some(ns) = object.namespace() {
        metadata.insert("namespace".into(), Value::String(ns));
    }
    let labels = object.labels();
    if !labels.is_empty() {
        metadata.insert(
            "labels".into(),
            Value::Object(
                labels
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        );
    }
    let mut document = Map::new();
    document.insert(
        "apiVersion".into(),
        Value::String(kind.api_version().into()),
    );
    document.insert("kind".into(), Value::String(kind.kind().into()));
    document.insert("metadata".into(), Value::Object(metadata));
    // A missing spec stays missing: the parser reports it as required.
    if let Some(spec) = object.data.get("spec") {
        document.insert("spec".into(), spec.clone());
    }
    let document = Value::Object(document);
    // serde_yaml writes any JSON value; if it ever could not, JSON is YAML too.
    serde_yaml::to_string(&document).unwrap_or_else(|_| document.to_string())
}

/// The object's metadata.generation (0 when the API server set none).
pub fn generation(object: &DynamicObject) -> i64 {
    object.metadata.generation.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::writes::{ManifestInput, parse_all};
    use serde_json::json;

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_running_pod_is_a_workload_with_every_address_its_node_and_labels() {
        let p = pod(json!({
            "metadata": {"name": "web-0", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-a", "containers": []},
            "status": {"phase": "Running", "podIP": "10.1.0.7",
                       "podIPs": [{"ip": "10.1.0.7"}, {"ip": "fd00::7"}]}
        }));
        let w = pod_to_workload(&p).unwrap();
        assert_eq!(w.key.to_string(), "shop/web-0");
        assert_eq!(w.node, "node-a");
        assert_eq!(w.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(
            w.ips,
            vec![
                "10.1.0.7".parse::<IpAddr>().unwrap(),
                "fd00::7".parse().unwrap()
            ]
        );
    }

    #[test]
    fn pods_without_their_own_address_are_no_workloads() {
        let pending = pod(json!({
            "metadata": {"name": "p", "namespace": "a"},
            "spec": {"containers": []},
            "status": {"phase": "Pending"}
        }));
        assert_eq!(pod_to_workload(&pending), None);
        let finished = pod(json!({
            "metadata": {"name": "p", "namespace": "a"},
            "spec": {"nodeName": "n", "containers": []},
            "status": {"phase": "Succeeded", "podIPs": [{"ip": "10.0.0.1"}]}
        }));
        assert_eq!(pod_to_workload(&finished), None);
        let host = pod(json!({
            "metadata": {"name": "p", "namespace": "a"},
            "spec": {"nodeName": "n", "hostNetwork": true, "containers": []},
            "status": {"phase": "Running", "podIPs": [{"ip": "192.0.2.10"}]}
        }));
        assert_eq!(pod_to_workload(&host), None);
        // podIP alone (no podIPs) still counts; garbage is skipped, not fatal.
        let old = pod(json!({
            "metadata": {"name": "p", "namespace": "a"},
            "spec": {"nodeName": "n", "containers": []},
            "status": {"phase": "Running", "podIP": "10.0.0.2"}
        }));
        assert_eq!(pod_to_workload(&old).unwrap().ips.len(), 1);
        let garbage = pod(json!({
            "metadata": {"name": "p", "namespace": "a"},
            "spec": {"nodeName": "n", "containers": []},
            "status": {"phase": "Running", "podIPs": [{"ip": "not-an-ip"}]}
        }));
        assert_eq!(pod_to_workload(&garbage), None);
    }

    #[test]
    fn namespaces_keep_their_labels() {
        let ns: KubeNamespace = serde_json::from_value(json!({
            "metadata": {"name": "shop", "labels": {"env": "prod"}}
        }))
        .unwrap();
        let n = namespace_to_source(&ns);
        assert_eq!(n.name, "shop");
        assert_eq!(n.labels.get("env").map(String::as_str), Some("prod"));
    }

    fn anp(spec: Value, extra_meta: Value) -> DynamicObject {
        let mut metadata = json!({"name": "allow-github", "namespace": "shop",
            "resourceVersion": "42", "generation": 3, "uid": "u-1",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "managedFields": [{"manager": "kubectl"}]});
        if let (Some(m), Some(extra)) = (metadata.as_object_mut(), extra_meta.as_object()) {
            m.extend(extra.clone());
        }
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.aws/v1alpha1",
            "kind": "ApplicationNetworkPolicy",
            "metadata": metadata,
            "spec": spec,
            "status": {"conditions": [{"type": "Accepted", "status": "True"}]}
        }))
        .unwrap()
    }

    fn parse(text: &str) -> Result<usize, Vec<String>> {
        parse_all(
            &[ManifestInput {
                source: String::new(),
                content: text.into(),
            }],
            "default",
        )
        .map(|o| o.len())
    }

    #[test]
    fn a_policy_object_becomes_a_manifest_without_server_fields() {
        let spec = json!({"podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"domainNames": ["github.com"]}], "ports": [{"protocol": "TCP", "port": 443}]}]});
        let object = anp(spec.clone(), json!({}));
        let text = policy_manifest(PolicyKind::ApplicationNetworkPolicy, &object);
        assert_eq!(parse(&text), Ok(1), "{text}");
        for absent in [
            "resourceVersion",
            "managedFields",
            "status",
            "last-applied",
            "uid",
        ] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
        assert_eq!(
            policy_ref(PolicyKind::ApplicationNetworkPolicy, &object).to_string(),
            "ApplicationNetworkPolicy shop/allow-github"
        );
        assert_eq!(generation(&object), 3);
        // A status or resourceVersion change is the same manifest; a spec change is not.
        let restatused = anp(spec.clone(), json!({"resourceVersion": "43"}));
        assert_eq!(
            policy_manifest(PolicyKind::ApplicationNetworkPolicy, &restatused),
            text
        );
        let mut changed = spec;
        changed["egress"][0]["ports"][0]["port"] = json!(8443);
        assert_ne!(
            policy_manifest(
                PolicyKind::ApplicationNetworkPolicy,
                &anp(changed, json!({}))
            ),
            text
        );
    }

    #[test]
    fn the_parser_names_the_field_of_an_invalid_policy_object() {
        let object = anp(
            json!({"podSelector": {},
                   "egress": [{"to": [{"domainNames": ["*.*.example.com"]}]}]}),
            json!({}),
        );
        let errors = parse(&policy_manifest(
            PolicyKind::ApplicationNetworkPolicy,
            &object,
        ))
        .unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("shop/allow-github: spec.egress[0].to[0].domainNames[0]: "),
            "{errors:?}"
        );
    }

    #[test]
    fn cluster_scoped_policies_have_no_namespace() {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "baseline-dns", "generation": 1},
            "spec": {"tier": "Baseline", "priority": 5,
                     "subject": {"namespaces": {}},
                     "egress": [{"action": "Accept", "to": [{"domainNames": ["example.com"]}]}]}
        }))
        .unwrap();
        let text = policy_manifest(PolicyKind::UpstreamClusterNetworkPolicy, &object);
        assert!(
            text.contains("apiVersion: policy.networking.k8s.io/v1alpha2"),
            "{text}"
        );
        assert!(!text.contains("  namespace:"), "{text}");
        assert_eq!(parse(&text), Ok(1), "{text}");
        assert_eq!(
            policy_ref(PolicyKind::UpstreamClusterNetworkPolicy, &object).namespace,
            ""
        );
    }
}
