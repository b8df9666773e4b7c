//! Events of the log.

use dnsfence_policy::model::{AllowlistId, Event, EventPayload};

use super::policy::{decode_policy_record, decode_policy_ref};
use super::rules::decode_allowlist;
use super::workload::{
    decode_namespace, decode_workload, decode_workload_binding, decode_workload_key,
};
use super::{from_owned, required, try_from_proto};
use crate::error::{ApiError, Within};
use crate::store::v1 as pb;

use pb::event::Payload;

impl From<&EventPayload> for Payload {
    fn from(value: &EventPayload) -> Self {
        match value {
            EventPayload::PolicyApplied(record) => Payload::PolicyApplied(record.into()),
            EventPayload::PolicyDeleted(reference) => Payload::PolicyDeleted(reference.into()),
            EventPayload::NamespaceUpserted(ns) => Payload::NamespaceUpserted(ns.into()),
            EventPayload::NamespaceRemoved(name) => Payload::NamespaceRemoved(name.clone()),
            EventPayload::WorkloadUpserted(w) => Payload::WorkloadUpserted(w.into()),
            EventPayload::WorkloadRemoved(key) => Payload::WorkloadRemoved(key.into()),
            EventPayload::AllowlistCompiled(a) => Payload::AllowlistCompiled(a.into()),
            EventPayload::AllowlistReleased(id) => Payload::AllowlistReleased(id.0.clone()),
            EventPayload::WorkloadBound(b) => Payload::WorkloadBound(b.into()),
            EventPayload::WorkloadUnbound(key) => Payload::WorkloadUnbound(key.into()),
        }
    }
}
from_owned!(EventPayload => Payload);

fn non_empty(value: String, field: &str) -> Result<String, ApiError> {
    if value.is_empty() {
        Err(ApiError::invalid(field, "empty"))
    } else {
        Ok(value)
    }
}

/// Paths are named after the oneof's fields (`policy_applied.reference.kind`).
pub(crate) fn decode_payload(payload: Payload) -> Result<EventPayload, ApiError> {
    Ok(match payload {
        Payload::PolicyApplied(m) => {
            EventPayload::PolicyApplied(decode_policy_record(m).within("policy_applied")?)
        }
        Payload::PolicyDeleted(m) => {
            EventPayload::PolicyDeleted(decode_policy_ref(m).within("policy_deleted")?)
        }
        Payload::NamespaceUpserted(m) => {
            EventPayload::NamespaceUpserted(decode_namespace(m).within("namespace_upserted")?)
        }
        Payload::NamespaceRemoved(name) => {
            EventPayload::NamespaceRemoved(non_empty(name, "namespace_removed")?)
        }
        Payload::WorkloadUpserted(m) => {
            EventPayload::WorkloadUpserted(decode_workload(m).within("workload_upserted")?)
        }
        Payload::WorkloadRemoved(m) => {
            EventPayload::WorkloadRemoved(decode_workload_key(m).within("workload_removed")?)
        }
        Payload::AllowlistCompiled(m) => {
            EventPayload::AllowlistCompiled(decode_allowlist(m).within("allowlist_compiled")?)
        }
        Payload::AllowlistReleased(id) => {
            EventPayload::AllowlistReleased(AllowlistId(non_empty(id, "allowlist_released")?))
        }
        Payload::WorkloadBound(m) => {
            EventPayload::WorkloadBound(decode_workload_binding(m).within("workload_bound")?)
        }
        Payload::WorkloadUnbound(m) => {
            EventPayload::WorkloadUnbound(decode_workload_key(m).within("workload_unbound")?)
        }
    })
}

impl TryFrom<Payload> for EventPayload {
    type Error = ApiError;

    fn try_from(payload: Payload) -> Result<Self, ApiError> {
        decode_payload(payload).within("payload")
    }
}

impl From<&Event> for pb::Event {
    fn from(value: &Event) -> Self {
        pb::Event {
            revision: value.revision,
            payload: Some((&value.payload).into()),
        }
    }
}
from_owned!(Event => pb::Event);

pub(crate) fn decode_event(message: pb::Event) -> Result<Event, ApiError> {
    let payload = decode_payload(required(message.payload, "payload")?).within("payload")?;
    Ok(Event {
        revision: message.revision,
        payload,
    })
}
try_from_proto!(pb::Event => Event, decode_event, "event");

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use dnsfence_policy::model::{Binding, Namespace, PolicyRecord};

    use super::*;
    use crate::convert::policy::tests::{anp, cnp};
    use crate::convert::rules::tests::sample_allowlist;
    use crate::convert::workload::tests::{key, sample_binding, sample_workload};

    fn every_payload() -> Vec<EventPayload> {
        vec![
            EventPayload::PolicyApplied(PolicyRecord {
                reference: anp("team-a", "egress"),
                generation: 3,
                manifest: "apiVersion: networking.k8s.aws/v1alpha1\n".into(),
            }),
            EventPayload::PolicyDeleted(cnp("baseline")),
            EventPayload::NamespaceUpserted(Namespace {
                name: "team-a".into(),
                labels: [("env".into(), "prod".into())].into_iter().collect(),
            }),
            EventPayload::NamespaceRemoved("team-b".into()),
            EventPayload::WorkloadUpserted(sample_workload()),
            EventPayload::WorkloadRemoved(key("team-a", "web-1")),
            EventPayload::AllowlistCompiled(sample_allowlist()),
            EventPayload::AllowlistReleased(AllowlistId("deadbeef".into())),
            EventPayload::WorkloadBound(sample_binding(Binding::Enforced(AllowlistId(
                "deadbeef".into(),
            )))),
            EventPayload::WorkloadBound(sample_binding(Binding::Unenforced)),
            EventPayload::WorkloadUnbound(key("team-a", "web-0")),
        ]
    }

    #[test]
    fn every_event_round_trips() {
        for (i, payload) in every_payload().into_iter().enumerate() {
            let event = Event {
                revision: 100 + i as u64,
                payload,
            };
            let message = pb::Event::from(&event);
            assert_eq!(Event::try_from(message).unwrap(), event);
            let payload = Payload::from(&event.payload);
            assert_eq!(EventPayload::try_from(payload).unwrap(), event.payload);
        }
    }

    #[test]
    fn missing_payload() {
        let err = Event::try_from(pb::Event {
            revision: 1,
            payload: None,
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "event.payload: missing");
        match err {
            ApiError::Invalid { field, reason } => {
                assert_eq!(field, "event.payload");
                assert_eq!(reason, "missing");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn nested_errors_name_the_oneof_field() {
        let cases = [
            (
                Payload::NamespaceRemoved(String::new()),
                "event.payload.namespace_removed: empty",
            ),
            (
                Payload::AllowlistReleased(String::new()),
                "event.payload.allowlist_released: empty",
            ),
            (
                Payload::PolicyApplied(pb::PolicyRecord::default()),
                "event.payload.policy_applied.reference: missing",
            ),
            (
                Payload::PolicyDeleted(pb::PolicyRef::default()),
                "event.payload.policy_deleted.kind: unspecified",
            ),
            (
                Payload::NamespaceUpserted(pb::Namespace::default()),
                "event.payload.namespace_upserted.name: empty",
            ),
            (
                Payload::WorkloadUpserted(pb::Workload::default()),
                "event.payload.workload_upserted.key: missing",
            ),
            (
                Payload::WorkloadRemoved(pb::WorkloadKey::default()),
                "event.payload.workload_removed.namespace: empty",
            ),
            (
                Payload::AllowlistCompiled(pb::Allowlist::default()),
                "event.payload.allowlist_compiled.id: empty",
            ),
            (
                Payload::WorkloadBound(pb::WorkloadBinding::default()),
                "event.payload.workload_bound.workload: missing",
            ),
            (
                Payload::WorkloadUnbound(pb::WorkloadKey::default()),
                "event.payload.workload_unbound.namespace: empty",
            ),
        ];
        for (payload, expected) in cases {
            let message = pb::Event {
                revision: 9,
                payload: Some(payload),
            };
            assert_eq!(Event::try_from(message).unwrap_err().to_string(), expected);
        }
    }
}
