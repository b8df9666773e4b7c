//! The controller's writes: the same write paths as the gRPC API (validation, compilation,
//! events), called in-process. Each function is one atomic write of the store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use dnsfence_policy::manifest::ParsedObject;
use dnsfence_policy::model::{Namespace, PolicyKind, PolicyRef, Workload, WorkloadKey};
use tracing::warn;

use crate::error::StoreError;
use crate::store::{Store, WriteError};
use crate::writes::{self, ManifestInput};

fn write_error(e: WriteError<std::convert::Infallible>) -> StoreError {
    match e {
        WriteError::Log(reason) => StoreError::LogFailed(reason),
        WriteError::Rejected(never) => match never {},
    }
}

/// Runs a store write to its end even if the caller is dropped (a controller stepping down is
/// aborted at any await): a write cancelled between changing the state and queueing its
/// events would leave the state ahead of the log.
async fn shielded<T: Send + 'static>(
    write: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::spawn(write)
        .await
        .map_err(|e| StoreError::LogFailed(format!("a store write task failed: {e}")))
}

/// Parses one policy manifest: the object, or the parser's messages (each naming the object
/// and the field) joined into one line.
pub fn parse_policy(manifest: &str, namespace: &str) -> Result<ParsedObject, String> {
    let input = ManifestInput {
        source: String::new(),
        content: manifest.to_string(),
    };
    let mut objects = writes::parse_all(&[input], namespace).map_err(|e| e.join("; "))?;
    match (objects.pop(), objects.is_empty()) {
        (Some(object), true) => Ok(object),
        _ => Err("the object did not parse into exactly one policy".into()),
    }
}

/// Applies `objects` and deletes `deletions` (those the store has) in one write. With
/// `replace_kind`, also deletes every stored policy of that kind whose reference is not in
/// `listed`: what a fresh list no longer has was deleted while nobody watched.
pub async fn write_policies(
    store: &Arc<Store>,
    objects: Vec<ParsedObject>,
    deletions: Vec<PolicyRef>,
    replace_kind: Option<(PolicyKind, BTreeSet<PolicyRef>)>,
) -> Result<u64, StoreError> {
    let store = Arc::clone(store);
    let (revision, ()) = shielded(async move {
        store
            .write(move |state| {
                let (mut events, _) = writes::apply(state, objects, false);
                let mut gone: BTreeSet<PolicyRef> = deletions
                    .into_iter()
                    .filter(|r| state.records.contains_key(r))
                    .collect();
                if let Some((kind, listed)) = &replace_kind {
                    gone.extend(
                        state
                            .records
                            .keys()
                            .filter(|r| r.kind == *kind && !listed.contains(*r))
                            .cloned(),
                    );
                }
                if !gone.is_empty() {
                    // Only references the store has: this cannot fail.
                    if let Ok((deleted, _)) = writes::delete(state, gone.into_iter().collect()) {
                        events.extend(deleted);
                    }
                }
                Ok::<_, std::convert::Infallible>((events, ()))
            })
            .await
            .map_err(write_error)
    })
    .await??;
    Ok(revision)
}

/// Upserts and removes workloads in one write; with `replace`, every stored workload not in
/// `upserts` is removed too (a fresh list of pods).
pub async fn write_workloads(
    store: &Arc<Store>,
    upserts: Vec<Workload>,
    removals: Vec<WorkloadKey>,
    replace: bool,
) -> Result<u64, StoreError> {
    let upserts: Vec<Workload> = upserts
        .into_iter()
        .filter(|w| match writes::validate_workload(w, "pod") {
            Ok(()) => true,
            Err(reason) => {
                warn!(pod = %w.key, %reason, "pod skipped");
                false
            }
        })
        .collect();
    let store = Arc::clone(store);
    let (revision, ()) = shielded(async move {
        store
            .write(move |state| {
                let mut gone: BTreeSet<WorkloadKey> = removals.into_iter().collect();
                if replace {
                    let listed: BTreeSet<&WorkloadKey> = upserts.iter().map(|w| &w.key).collect();
                    gone.extend(
                        state
                            .compiler
                            .workloads()
                            .filter(|w| !listed.contains(&w.key))
                            .map(|w| w.key.clone()),
                    );
                }
                // A pod upserted and removed in one batch ends removed only if it is not upserted.
                let upserted: BTreeSet<&WorkloadKey> = upserts.iter().map(|w| &w.key).collect();
                gone.retain(|k| !upserted.contains(k));
                let mut events = writes::remove_workloads(state, gone.into_iter().collect());
                events.extend(writes::upsert_workloads(state, upserts));
                Ok::<_, std::convert::Infallible>((events, ()))
            })
            .await
            .map_err(write_error)
    })
    .await??;
    Ok(revision)
}

/// Upserts and removes namespaces in one write; with `replace`, every stored namespace not
/// in `upserts` is removed too.
pub async fn write_namespaces(
    store: &Arc<Store>,
    upserts: Vec<Namespace>,
    removals: Vec<String>,
    replace: bool,
) -> Result<u64, StoreError> {
    let store = Arc::clone(store);
    let (revision, ()) = shielded(async move {
        store
            .write(move |state| {
                let upserted: BTreeMap<&str, ()> =
                    upserts.iter().map(|n| (n.name.as_str(), ())).collect();
                let mut gone: BTreeSet<String> = removals.into_iter().collect();
                if replace {
                    gone.extend(
                        state
                            .compiler
                            .namespaces()
                            .filter(|n| !upserted.contains_key(n.name.as_str()))
                            .map(|n| n.name),
                    );
                }
                gone.retain(|n| !upserted.contains_key(n.as_str()));
                let mut events = writes::remove_namespaces(state, gone.into_iter().collect());
                events.extend(writes::upsert_namespaces(state, upserts));
                Ok::<_, std::convert::Infallible>((events, ()))
            })
            .await
            .map_err(write_error)
    })
    .await??;
    Ok(revision)
}
