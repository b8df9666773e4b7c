//! What each write turns into: the source events a request causes plus the derived events the
//! compiler emits for them. Every function here validates fully before it changes anything, so
//! a rejected request leaves the state as it was.

use std::collections::BTreeSet;

use dnsfence_policy::compile::SourceChange;
use dnsfence_policy::manifest::{self, ParsedObject};
use dnsfence_policy::model::{
    EventPayload, Namespace, PolicyRecord, PolicyRef, Workload, WorkloadKey,
};

use crate::state::StoreState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedObject {
    pub reference: PolicyRef,
    pub outcome: Outcome,
    pub generation: u64,
}

/// A manifest as the client sent it: where it came from (for messages) and its text.
#[derive(Debug, Clone)]
pub struct ManifestInput {
    pub source: String,
    pub content: String,
}

/// Parses every manifest; all errors of all manifests, each prefixed with its source.
pub fn parse_all(
    manifests: &[ManifestInput],
    default_namespace: &str,
) -> Result<Vec<ParsedObject>, Vec<String>> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    let mut seen: BTreeSet<PolicyRef> = BTreeSet::new();
    for m in manifests {
        let prefix = if m.source.is_empty() {
            String::new()
        } else {
            format!("{}: ", m.source)
        };
        match manifest::parse_documents(&m.content, default_namespace) {
            Ok(parsed) => {
                for o in parsed {
                    if !seen.insert(o.policy.reference.clone()) {
                        errors.push(format!(
                            "{prefix}{}: appears more than once in this request",
                            o.policy.reference
                        ));
                    }
                    objects.push(o);
                }
            }
            Err(errs) => errors.extend(errs.iter().map(|e| format!("{prefix}{e}"))),
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    }
}

pub fn apply(
    state: &mut StoreState,
    objects: Vec<ParsedObject>,
    dry_run: bool,
) -> (Vec<EventPayload>, Vec<AppliedObject>) {
    let mut sources = Vec::new();
    let mut changes = Vec::new();
    let mut results = Vec::new();
    for object in objects {
        let reference = object.policy.reference.clone();
        let previous = state.records.get(&reference);
        let (outcome, generation) = match previous {
            Some(p) if p.manifest == object.manifest => (Outcome::Unchanged, p.generation),
            Some(p) => (Outcome::Configured, p.generation + 1),
            None => (Outcome::Created, 1),
        };
        results.push(AppliedObject {
            reference: reference.clone(),
            outcome,
            generation,
        });
        if outcome == Outcome::Unchanged {
            continue;
        }
        let record = PolicyRecord {
            reference,
            generation,
            manifest: object.manifest,
        };
        sources.push(EventPayload::PolicyApplied(record));
        changes.push(SourceChange::ApplyPolicy(object.policy));
    }
    if dry_run {
        return (Vec::new(), results);
    }
    for event in &sources {
        if let EventPayload::PolicyApplied(record) = event {
            state
                .records
                .insert(record.reference.clone(), record.clone());
        }
    }
    let derived = state.compiler.apply(changes);
    sources.extend(derived);
    (sources, results)
}

/// Deletes all of `references` or none: the first unknown one is the error.
pub fn delete(
    state: &mut StoreState,
    references: Vec<PolicyRef>,
) -> Result<(Vec<EventPayload>, Vec<AppliedObject>), PolicyRef> {
    let mut unique = BTreeSet::new();
    for r in &references {
        let Some(record) = state.records.get(r) else {
            return Err(r.clone());
        };
        unique.insert((r.clone(), record.generation));
    }
    let mut events = Vec::new();
    let mut changes = Vec::new();
    let mut results = Vec::new();
    for (reference, generation) in unique {
        state.records.remove(&reference);
        events.push(EventPayload::PolicyDeleted(reference.clone()));
        changes.push(SourceChange::DeletePolicy(reference.clone()));
        results.push(AppliedObject {
            reference,
            outcome: Outcome::Deleted,
            generation,
        });
    }
    events.extend(state.compiler.apply(changes));
    Ok((events, results))
}

/// Checks the names Kubernetes would accept for a pod or namespace.
pub fn validate_workload(w: &Workload, at: &str) -> Result<(), String> {
    validate_dns_label(&w.key.namespace).map_err(|r| format!("{at}.key.namespace: {r}"))?;
    validate_subdomain(&w.key.name).map_err(|r| format!("{at}.key.name: {r}"))?;
    if w.ips.is_empty() {
        return Err(format!("{at}.ips: a workload needs at least one address"));
    }
    Ok(())
}

pub fn validate_namespace(ns: &Namespace, at: &str) -> Result<(), String> {
    validate_dns_label(&ns.name).map_err(|r| format!("{at}.name: {r}"))
}

fn validate_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err(format!("{s:?} must be 1-63 characters"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || s.starts_with('-')
        || s.ends_with('-')
    {
        return Err(format!(
            "{s:?} must be lower-case letters, digits and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn validate_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!("{s:?} must be 1-253 characters"));
    }
    s.split('.').try_for_each(validate_dns_label)
}

pub fn upsert_workloads(state: &mut StoreState, workloads: Vec<Workload>) -> Vec<EventPayload> {
    let mut events = Vec::new();
    let mut changes = Vec::new();
    for w in workloads {
        if state.compiler.workload(&w.key) == Some(&w) {
            continue;
        }
        events.push(EventPayload::WorkloadUpserted(w.clone()));
        changes.push(SourceChange::UpsertWorkload(w));
    }
    events.extend(state.compiler.apply(changes));
    events
}

pub fn remove_workloads(state: &mut StoreState, keys: Vec<WorkloadKey>) -> Vec<EventPayload> {
    let mut events = Vec::new();
    let mut changes = Vec::new();
    let unique: BTreeSet<WorkloadKey> = keys.into_iter().collect();
    for key in unique {
        if state.compiler.workload(&key).is_none() {
            continue;
        }
        events.push(EventPayload::WorkloadRemoved(key.clone()));
        changes.push(SourceChange::RemoveWorkload(key));
    }
    events.extend(state.compiler.apply(changes));
    events
}

pub fn upsert_namespaces(state: &mut StoreState, namespaces: Vec<Namespace>) -> Vec<EventPayload> {
    let mut events = Vec::new();
    let mut changes = Vec::new();
    for ns in namespaces {
        let labels = dnsfence_policy::compile::namespace_labels(&ns.name, ns.labels.clone());
        if state.compiler.namespace(&ns.name) == Some(&labels) {
            continue;
        }
        let ns = Namespace {
            name: ns.name,
            labels,
        };
        events.push(EventPayload::NamespaceUpserted(ns.clone()));
        changes.push(SourceChange::UpsertNamespace(ns));
    }
    events.extend(state.compiler.apply(changes));
    events
}

pub fn remove_namespaces(state: &mut StoreState, names: Vec<String>) -> Vec<EventPayload> {
    let mut events = Vec::new();
    let mut changes = Vec::new();
    let unique: BTreeSet<String> = names.into_iter().collect();
    for name in unique {
        if state.compiler.namespace(&name).is_none() {
            continue;
        }
        events.push(EventPayload::NamespaceRemoved(name.clone()));
        changes.push(SourceChange::RemoveNamespace(name));
    }
    events.extend(state.compiler.apply(changes));
    events
}
