//! Policy identity: kinds, references and stored policy records.

use dnsfence_policy::model::{PolicyKind, PolicyRecord, PolicyRef};

use super::{from_owned, known_enum, required, try_from_proto};
use crate::error::{ApiError, Within};
use crate::store::v1 as pb;

impl From<PolicyKind> for pb::PolicyKind {
    fn from(value: PolicyKind) -> Self {
        match value {
            PolicyKind::NetworkPolicy => pb::PolicyKind::NetworkPolicy,
            PolicyKind::ApplicationNetworkPolicy => pb::PolicyKind::ApplicationNetworkPolicy,
            PolicyKind::ClusterNetworkPolicy => pb::PolicyKind::ClusterNetworkPolicy,
            PolicyKind::UpstreamClusterNetworkPolicy => {
                pb::PolicyKind::UpstreamClusterNetworkPolicy
            }
        }
    }
}

impl TryFrom<pb::PolicyKind> for PolicyKind {
    type Error = ApiError;

    fn try_from(value: pb::PolicyKind) -> Result<Self, ApiError> {
        match value {
            pb::PolicyKind::NetworkPolicy => Ok(PolicyKind::NetworkPolicy),
            pb::PolicyKind::ApplicationNetworkPolicy => Ok(PolicyKind::ApplicationNetworkPolicy),
            pb::PolicyKind::ClusterNetworkPolicy => Ok(PolicyKind::ClusterNetworkPolicy),
            pb::PolicyKind::UpstreamClusterNetworkPolicy => {
                Ok(PolicyKind::UpstreamClusterNetworkPolicy)
            }
            pb::PolicyKind::Unspecified => Err(ApiError::invalid("kind", "unspecified")),
        }
    }
}

pub(crate) fn decode_policy_kind(value: i32) -> Result<PolicyKind, ApiError> {
    known_enum::<pb::PolicyKind>(value, "kind").and_then(PolicyKind::try_from)
}

impl From<&PolicyRef> for pb::PolicyRef {
    fn from(value: &PolicyRef) -> Self {
        pb::PolicyRef {
            kind: pb::PolicyKind::from(value.kind) as i32,
            namespace: value.namespace.clone(),
            name: value.name.clone(),
        }
    }
}
from_owned!(PolicyRef => pb::PolicyRef);

pub(crate) fn decode_policy_ref(message: pb::PolicyRef) -> Result<PolicyRef, ApiError> {
    let kind = decode_policy_kind(message.kind)?;
    if message.name.is_empty() {
        return Err(ApiError::invalid("name", "empty"));
    }
    // Whether the namespace fits the kind is left to the store: a request may leave it empty
    // for the store to fill in from the request's default namespace.
    Ok(PolicyRef {
        kind,
        namespace: message.namespace,
        name: message.name,
    })
}
try_from_proto!(pb::PolicyRef => PolicyRef, decode_policy_ref, "policy_ref");

impl From<&PolicyRecord> for pb::PolicyRecord {
    fn from(value: &PolicyRecord) -> Self {
        pb::PolicyRecord {
            reference: Some((&value.reference).into()),
            generation: value.generation,
            manifest: value.manifest.clone(),
        }
    }
}
from_owned!(PolicyRecord => pb::PolicyRecord);

pub(crate) fn decode_policy_record(message: pb::PolicyRecord) -> Result<PolicyRecord, ApiError> {
    let reference =
        decode_policy_ref(required(message.reference, "reference")?).within("reference")?;
    Ok(PolicyRecord {
        reference,
        generation: message.generation,
        manifest: message.manifest,
    })
}
try_from_proto!(pb::PolicyRecord => PolicyRecord, decode_policy_record, "policy_record");

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    pub(crate) fn anp(namespace: &str, name: &str) -> PolicyRef {
        PolicyRef {
            kind: PolicyKind::ApplicationNetworkPolicy,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub(crate) fn cnp(name: &str) -> PolicyRef {
        PolicyRef {
            kind: PolicyKind::UpstreamClusterNetworkPolicy,
            namespace: String::new(),
            name: name.into(),
        }
    }

    #[test]
    fn policy_kind_round_trip() {
        for kind in PolicyKind::ALL {
            assert_eq!(
                PolicyKind::try_from(pb::PolicyKind::from(kind)).unwrap(),
                kind
            );
            assert_eq!(
                decode_policy_kind(pb::PolicyKind::from(kind) as i32).unwrap(),
                kind
            );
        }
        let err = PolicyKind::try_from(pb::PolicyKind::Unspecified).unwrap_err();
        assert_eq!(err.to_string(), "kind: unspecified");
        assert_eq!(
            decode_policy_kind(17).unwrap_err().to_string(),
            "kind: unknown value 17"
        );
    }

    #[test]
    fn policy_ref_round_trip() {
        for reference in [anp("team-a", "egress"), cnp("baseline")] {
            let message = pb::PolicyRef::from(&reference);
            assert_eq!(PolicyRef::try_from(message).unwrap(), reference);
        }
    }

    #[test]
    fn policy_ref_rejections() {
        let good = pb::PolicyRef::from(anp("team-a", "egress"));
        let cases = [
            (
                pb::PolicyRef {
                    kind: 0,
                    ..good.clone()
                },
                "policy_ref.kind: unspecified",
            ),
            (
                pb::PolicyRef {
                    kind: 99,
                    ..good.clone()
                },
                "policy_ref.kind: unknown value 99",
            ),
            (
                pb::PolicyRef {
                    name: String::new(),
                    ..good
                },
                "policy_ref.name: empty",
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(
                PolicyRef::try_from(message).unwrap_err().to_string(),
                expected
            );
        }
    }

    #[test]
    fn policy_record_round_trip_and_missing_reference() {
        let record = PolicyRecord {
            reference: anp("team-a", "egress"),
            generation: 7,
            manifest: "kind: ApplicationNetworkPolicy\n".into(),
        };
        let message = pb::PolicyRecord::from(&record);
        assert_eq!(PolicyRecord::try_from(message.clone()).unwrap(), record);

        let err = PolicyRecord::try_from(pb::PolicyRecord {
            reference: None,
            ..message.clone()
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "policy_record.reference: missing");

        let mut bad = message;
        if let Some(r) = bad.reference.as_mut() {
            r.kind = 0;
        }
        let err = PolicyRecord::try_from(bad).unwrap_err();
        assert_eq!(err.to_string(), "policy_record.reference.kind: unspecified");
    }
}
