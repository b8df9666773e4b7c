//! Log records and snapshots are the protobuf messages of the Watch stream: one encoding on
//! disk and on the wire, and a record can be streamed without re-encoding its meaning.

use dnsfence_api::store::v1 as pb;
use dnsfence_policy::allowlist::Allowlist;
use dnsfence_policy::model::{Event, Namespace, PolicyRecord, Workload, WorkloadBinding};
use prost::Message;

use crate::state::SnapshotContent;
use crate::watch::WatchParams;

pub fn event_to_proto(event: &Event) -> pb::Event {
    event.into()
}

pub fn encode_event(event: &Event) -> Vec<u8> {
    event_to_proto(event).encode_to_vec()
}

pub fn decode_event(bytes: &[u8]) -> Result<Event, String> {
    let message = pb::Event::decode(bytes).map_err(|e| e.to_string())?;
    Event::try_from(message).map_err(|e| e.to_string())
}

pub fn snapshot_to_proto(content: &SnapshotContent) -> pb::Snapshot {
    pb::Snapshot {
        revision: content.revision,
        last: true,
        policies: content.policies.iter().map(Into::into).collect(),
        namespaces: content.namespaces.iter().map(Into::into).collect(),
        workloads: content.workloads.iter().map(Into::into).collect(),
        allowlists: content.allowlists.iter().map(Into::into).collect(),
        bindings: content.bindings.iter().map(Into::into).collect(),
    }
}

pub fn encode_snapshot(content: &SnapshotContent) -> Vec<u8> {
    snapshot_to_proto(content).encode_to_vec()
}

pub fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotContent, String> {
    let m = pb::Snapshot::decode(bytes).map_err(|e| e.to_string())?;
    snapshot_from_proto(m)
}

pub fn snapshot_from_proto(m: pb::Snapshot) -> Result<SnapshotContent, String> {
    fn all<P, D>(items: Vec<P>, field: &str) -> Result<Vec<D>, String>
    where
        D: TryFrom<P, Error = dnsfence_api::ApiError>,
    {
        items
            .into_iter()
            .enumerate()
            .map(|(i, p)| D::try_from(p).map_err(|e| format!("{field}[{i}]: {e}")))
            .collect()
    }
    Ok(SnapshotContent {
        revision: m.revision,
        policies: all::<_, PolicyRecord>(m.policies, "policies")?,
        namespaces: all::<_, Namespace>(m.namespaces, "namespaces")?,
        workloads: all::<_, Workload>(m.workloads, "workloads")?,
        allowlists: all::<_, Allowlist>(m.allowlists, "allowlists")?,
        bindings: all::<_, WorkloadBinding>(m.bindings, "bindings")?,
    })
}

/// The snapshot a watcher asked for (its view and node), cut into parts of at most
/// `per_part` items; the last part has `last` set. Always at least one part.
pub fn snapshot_parts(
    content: SnapshotContent,
    params: &WatchParams,
    per_part: usize,
) -> Vec<pb::Snapshot> {
    use crate::watch::View;
    let revision = content.revision;
    let sources = params.view != View::Derived;
    let derived = params.view != View::Sources;
    let mut items: Vec<Item> = Vec::new();
    if sources {
        items.extend(content.policies.iter().map(|p| Item::Policy(p.into())));
        items.extend(content.namespaces.iter().map(|n| Item::Namespace(n.into())));
        items.extend(content.workloads.iter().map(|w| Item::Workload(w.into())));
    }
    if derived {
        items.extend(content.allowlists.iter().map(|a| Item::Allowlist(a.into())));
        items.extend(
            content
                .bindings
                .iter()
                .filter(|b| params.node.is_empty() || b.node == params.node)
                .map(|b| Item::Binding(b.into())),
        );
    }
    let mut parts: Vec<pb::Snapshot> = Vec::new();
    let mut items = items.into_iter().peekable();
    loop {
        let mut part = pb::Snapshot {
            revision,
            ..Default::default()
        };
        for item in items.by_ref().take(per_part.max(1)) {
            match item {
                Item::Policy(p) => part.policies.push(p),
                Item::Namespace(n) => part.namespaces.push(n),
                Item::Workload(w) => part.workloads.push(w),
                Item::Allowlist(a) => part.allowlists.push(a),
                Item::Binding(b) => part.bindings.push(b),
            }
        }
        part.last = items.peek().is_none();
        let last = part.last;
        parts.push(part);
        if last {
            return parts;
        }
    }
}

enum Item {
    Policy(pb::PolicyRecord),
    Namespace(pb::Namespace),
    Workload(pb::Workload),
    Allowlist(pb::Allowlist),
    Binding(pb::WorkloadBinding),
}
