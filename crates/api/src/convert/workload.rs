//! Namespaces, workloads and their bindings to allowlists.

use dnsfence_policy::model::{
    AllowlistId, Binding, Namespace, Workload, WorkloadBinding, WorkloadKey,
};

use super::{from_owned, ip_list, ip_texts, required, try_from_proto};
use crate::error::{ApiError, Within};
use crate::store::v1 as pb;

impl From<&Namespace> for pb::Namespace {
    fn from(value: &Namespace) -> Self {
        pb::Namespace {
            name: value.name.clone(),
            labels: value.labels.clone(),
        }
    }
}
from_owned!(Namespace => pb::Namespace);

pub(crate) fn decode_namespace(message: pb::Namespace) -> Result<Namespace, ApiError> {
    if message.name.is_empty() {
        return Err(ApiError::invalid("name", "empty"));
    }
    Ok(Namespace {
        name: message.name,
        labels: message.labels,
    })
}
try_from_proto!(pb::Namespace => Namespace, decode_namespace, "namespace");

impl From<&WorkloadKey> for pb::WorkloadKey {
    fn from(value: &WorkloadKey) -> Self {
        pb::WorkloadKey {
            namespace: value.namespace.clone(),
            name: value.name.clone(),
        }
    }
}
from_owned!(WorkloadKey => pb::WorkloadKey);

pub(crate) fn decode_workload_key(message: pb::WorkloadKey) -> Result<WorkloadKey, ApiError> {
    if message.namespace.is_empty() {
        return Err(ApiError::invalid("namespace", "empty"));
    }
    if message.name.is_empty() {
        return Err(ApiError::invalid("name", "empty"));
    }
    Ok(WorkloadKey {
        namespace: message.namespace,
        name: message.name,
    })
}
try_from_proto!(pb::WorkloadKey => WorkloadKey, decode_workload_key, "workload_key");

fn decode_key_field(key: Option<pb::WorkloadKey>, field: &str) -> Result<WorkloadKey, ApiError> {
    decode_workload_key(required(key, field)?).within(field)
}

impl From<&Workload> for pb::Workload {
    fn from(value: &Workload) -> Self {
        pb::Workload {
            key: Some((&value.key).into()),
            labels: value.labels.clone(),
            ips: ip_texts(&value.ips),
            node: value.node.clone(),
        }
    }
}
from_owned!(Workload => pb::Workload);

pub(crate) fn decode_workload(message: pb::Workload) -> Result<Workload, ApiError> {
    Ok(Workload {
        key: decode_key_field(message.key, "key")?,
        labels: message.labels,
        ips: ip_list(message.ips, "ips")?,
        node: message.node,
    })
}
try_from_proto!(pb::Workload => Workload, decode_workload, "workload");

impl From<&WorkloadBinding> for pb::WorkloadBinding {
    fn from(value: &WorkloadBinding) -> Self {
        pb::WorkloadBinding {
            workload: Some((&value.workload).into()),
            ips: ip_texts(&value.ips),
            node: value.node.clone(),
            allowlist_id: match &value.binding {
                Binding::Enforced(id) => id.0.clone(),
                Binding::Unenforced => String::new(),
            },
        }
    }
}
from_owned!(WorkloadBinding => pb::WorkloadBinding);

pub(crate) fn decode_workload_binding(
    message: pb::WorkloadBinding,
) -> Result<WorkloadBinding, ApiError> {
    Ok(WorkloadBinding {
        workload: decode_key_field(message.workload, "workload")?,
        ips: ip_list(message.ips, "ips")?,
        node: message.node,
        binding: if message.allowlist_id.is_empty() {
            Binding::Unenforced
        } else {
            Binding::Enforced(AllowlistId(message.allowlist_id))
        },
    })
}
try_from_proto!(
    pb::WorkloadBinding => WorkloadBinding,
    decode_workload_binding,
    "workload_binding"
);

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    pub(crate) fn key(namespace: &str, name: &str) -> WorkloadKey {
        WorkloadKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub(crate) fn sample_workload() -> Workload {
        Workload {
            key: key("team-a", "web-0"),
            labels: [
                ("app".into(), "web".into()),
                ("tier".into(), "front".into()),
            ]
            .into_iter()
            .collect(),
            ips: vec!["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()],
            node: "node-1".into(),
        }
    }

    pub(crate) fn sample_binding(binding: Binding) -> WorkloadBinding {
        WorkloadBinding {
            workload: key("team-a", "web-0"),
            ips: vec!["10.0.0.7".parse().unwrap()],
            node: "node-1".into(),
            binding,
        }
    }

    #[test]
    fn namespace_round_trip_and_empty_name() {
        let namespace = Namespace {
            name: "team-a".into(),
            labels: [("kubernetes.io/metadata.name".into(), "team-a".into())]
                .into_iter()
                .collect(),
        };
        assert_eq!(
            Namespace::try_from(pb::Namespace::from(&namespace)).unwrap(),
            namespace
        );
        let err = Namespace::try_from(pb::Namespace::default()).unwrap_err();
        assert_eq!(err.to_string(), "namespace.name: empty");
    }

    #[test]
    fn workload_key_round_trip_and_rejections() {
        let k = key("ns", "pod");
        assert_eq!(WorkloadKey::try_from(pb::WorkloadKey::from(&k)).unwrap(), k);
        let err = WorkloadKey::try_from(pb::WorkloadKey::from(key("", "pod"))).unwrap_err();
        assert_eq!(err.to_string(), "workload_key.namespace: empty");
        let err = WorkloadKey::try_from(pb::WorkloadKey::from(key("ns", ""))).unwrap_err();
        assert_eq!(err.to_string(), "workload_key.name: empty");
    }

    #[test]
    fn workload_round_trip() {
        let workload = sample_workload();
        let message = pb::Workload::from(&workload);
        assert_eq!(message.ips, vec!["10.0.0.7", "fd00::7"]);
        assert_eq!(Workload::try_from(message).unwrap(), workload);
    }

    #[test]
    fn workload_rejections() {
        let good = pb::Workload::from(sample_workload());
        let err = Workload::try_from(pb::Workload {
            ips: vec!["10.0.0.7".into(), "10.0.0.256".into()],
            ..good.clone()
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("workload.ips[1]: \"10.0.0.256\" is not an IP address"),
            "{err}"
        );
        match err {
            ApiError::Invalid { field, .. } => assert_eq!(field, "workload.ips[1]"),
            other => panic!("unexpected {other:?}"),
        }
        let err = Workload::try_from(pb::Workload {
            key: None,
            ..good.clone()
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "workload.key: missing");
        let err = Workload::try_from(pb::Workload {
            key: Some(pb::WorkloadKey::default()),
            ..good
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "workload.key.namespace: empty");
    }

    #[test]
    fn binding_round_trip_both_ways() {
        for binding in [
            Binding::Enforced(AllowlistId("0123abcd".into())),
            Binding::Unenforced,
        ] {
            let value = sample_binding(binding);
            let message = pb::WorkloadBinding::from(&value);
            assert_eq!(WorkloadBinding::try_from(message).unwrap(), value);
        }
        let message = pb::WorkloadBinding::from(sample_binding(Binding::Unenforced));
        assert!(message.allowlist_id.is_empty());
    }

    #[test]
    fn binding_rejections() {
        let good = pb::WorkloadBinding::from(sample_binding(Binding::Unenforced));
        let err = WorkloadBinding::try_from(pb::WorkloadBinding {
            workload: None,
            ..good.clone()
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "workload_binding.workload: missing");
        let err = WorkloadBinding::try_from(pb::WorkloadBinding {
            ips: vec!["::1".into(), "::1::2".into()],
            ..good
        })
        .unwrap_err();
        assert!(
            err.to_string().starts_with("workload_binding.ips[1]: "),
            "{err}"
        );
    }
}
