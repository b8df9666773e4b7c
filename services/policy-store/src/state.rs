//! The store's in-memory state: the compiler (sources and derived results) plus the policy
//! records as written, rebuilt at start from the snapshot and the log.

use std::collections::BTreeMap;

use dnsfence_policy::compile::{Compiler, SourceChange};
use dnsfence_policy::manifest;
use dnsfence_policy::model::{EventPayload, PolicyRecord, PolicyRef};

/// Everything a snapshot holds, in domain form.
#[derive(Debug, Default)]
pub struct SnapshotContent {
    pub revision: u64,
    pub policies: Vec<PolicyRecord>,
    pub namespaces: Vec<dnsfence_policy::model::Namespace>,
    pub workloads: Vec<dnsfence_policy::model::Workload>,
    pub allowlists: Vec<dnsfence_policy::allowlist::Allowlist>,
    pub bindings: Vec<dnsfence_policy::model::WorkloadBinding>,
}

#[derive(Debug, Default)]
pub struct StoreState {
    pub compiler: Compiler,
    pub records: BTreeMap<PolicyRef, PolicyRecord>,
    /// Revision of the `PolicyApplied` event of each policy's current manifest (for a policy
    /// restored from a snapshot: the snapshot's revision). The cluster controller reports it
    /// in the policy's status.
    pub applied_at: BTreeMap<PolicyRef, u64>,
    /// Revision of the last event handed to the log (durable once the log's head reaches it).
    pub revision: u64,
}

impl StoreState {
    /// Re-applies one logged event without compiling: derived events in the log already
    /// carry the compiler's results.
    pub fn restore(&mut self, revision: u64, payload: EventPayload) -> Result<(), String> {
        self.note_written(revision, &payload);
        match payload {
            EventPayload::PolicyApplied(record) => self.restore_policy(record)?,
            EventPayload::PolicyDeleted(reference) => {
                self.records.remove(&reference);
                self.compiler
                    .restore_source(SourceChange::DeletePolicy(reference));
            }
            EventPayload::NamespaceUpserted(ns) => {
                self.compiler
                    .restore_source(SourceChange::UpsertNamespace(ns));
            }
            EventPayload::NamespaceRemoved(name) => {
                self.compiler
                    .restore_source(SourceChange::RemoveNamespace(name));
            }
            EventPayload::WorkloadUpserted(w) => {
                self.compiler
                    .restore_source(SourceChange::UpsertWorkload(w));
            }
            EventPayload::WorkloadRemoved(key) => {
                self.compiler
                    .restore_source(SourceChange::RemoveWorkload(key));
            }
            derived => self.compiler.restore_derived(derived),
        }
        self.revision = revision;
        Ok(())
    }

    /// Keeps `applied_at` up to date for an event logged at `revision`.
    pub fn note_written(&mut self, revision: u64, payload: &EventPayload) {
        match payload {
            EventPayload::PolicyApplied(record) => {
                self.applied_at.insert(record.reference.clone(), revision);
            }
            EventPayload::PolicyDeleted(reference) => {
                self.applied_at.remove(reference);
            }
            _ => {}
        }
    }

    pub fn restore_snapshot(&mut self, snapshot: SnapshotContent) -> Result<(), String> {
        for record in snapshot.policies {
            self.applied_at
                .insert(record.reference.clone(), snapshot.revision);
            self.restore_policy(record)?;
        }
        for ns in snapshot.namespaces {
            self.compiler
                .restore_source(SourceChange::UpsertNamespace(ns));
        }
        for w in snapshot.workloads {
            self.compiler
                .restore_source(SourceChange::UpsertWorkload(w));
        }
        for list in snapshot.allowlists {
            self.compiler
                .restore_derived(EventPayload::AllowlistCompiled(list));
        }
        for b in snapshot.bindings {
            self.compiler
                .restore_derived(EventPayload::WorkloadBound(b));
        }
        self.revision = snapshot.revision;
        Ok(())
    }

    /// A logged manifest parses again with the same code that accepted it.
    fn restore_policy(&mut self, record: PolicyRecord) -> Result<(), String> {
        let policy = parse_record(&record)?;
        self.compiler
            .restore_source(SourceChange::ApplyPolicy(policy));
        self.records.insert(record.reference.clone(), record);
        Ok(())
    }

    /// The whole state as a snapshot at the current revision.
    pub fn snapshot(&self) -> SnapshotContent {
        SnapshotContent {
            revision: self.revision,
            policies: self.records.values().cloned().collect(),
            namespaces: self.compiler.namespaces().collect(),
            workloads: self.compiler.workloads().cloned().collect(),
            allowlists: self
                .compiler
                .allowlists()
                .map(|a| a.as_ref().clone())
                .collect(),
            bindings: self.compiler.bindings().cloned().collect(),
        }
    }
}

fn parse_record(record: &PolicyRecord) -> Result<dnsfence_policy::policy::Policy, String> {
    let objects = manifest::parse_documents(&record.manifest, &record.reference.namespace)
        .map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
    objects
        .into_iter()
        .find(|o| o.policy.reference == record.reference)
        .map(|o| o.policy)
        .ok_or_else(|| format!("the manifest of {} does not define it", record.reference))
}
