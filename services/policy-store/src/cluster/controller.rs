//! The controller: one `kube::runtime::watcher` per watched kind (pods, namespaces and the
//! policy kinds), each turning Kubernetes changes into writes of the store.
//!
//! Every watcher starts (and restarts after a watch that could not resume) with a full
//! list. The listed objects are buffered until the list is complete and then *replace* what
//! the store holds of that kind in one write: whatever the store has that the list does not
//! was deleted while nobody watched (the store was down, or the watch broke), and goes. Live
//! changes are applied in batches of what arrived together. Errors are counted and retried
//! with the watcher's default backoff; nothing here ever gives up.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dnsfence_policy::manifest::ParsedObject;
use dnsfence_policy::model::{Namespace, PolicyRef, Workload, WorkloadKey};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Pod};
use kube::api::Api;
use kube::core::DynamicObject;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use super::convert;
use super::resources::{self, PolicyResource};
use super::status::{Observation, StatusWriter, Verdict};
use super::sync;
use crate::metrics::{KubeEvent, StoreMetrics, WatchedKind};
use crate::store::Store;

/// Watch events handled in one store write at most.
const BATCH: usize = 512;

/// What the controller needs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How often to look again for the optional upstream ClusterNetworkPolicy API.
    pub discovery_interval: Duration,
    /// Least time between two rounds of status updates.
    pub status_interval: Duration,
}

pub struct Controller {
    client: Client,
    store: Arc<Store>,
    metrics: Arc<StoreMetrics>,
    status: Arc<StatusWriter>,
    config: ControllerConfig,
    /// Kinds whose first full list reached the store.
    synced: AtomicUsize,
    /// Becomes true once every required kind was listed once: the store reflects the cluster.
    ready: watch::Sender<bool>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One change of an object of kind `K`.
#[derive(Debug)]
enum Change<K> {
    Apply(K),
    Delete(K),
}

/// What a watcher hands over: live changes, or a complete fresh list.
#[derive(Debug)]
enum Batch<K> {
    Changes(Vec<Change<K>>),
    Relisted(Vec<K>),
}

impl Controller {
    pub fn new(
        client: Client,
        store: Arc<Store>,
        metrics: Arc<StoreMetrics>,
        config: ControllerConfig,
    ) -> Arc<Controller> {
        let status = Arc::new(StatusWriter::new(
            client.clone(),
            Arc::clone(&store),
            Arc::clone(&metrics),
            config.status_interval,
        ));
        let (ready, _) = watch::channel(false);
        Arc::new(Controller {
            client,
            store,
            metrics,
            status,
            config,
            synced: AtomicUsize::new(0),
            ready,
        })
    }

    /// True once pods, namespaces and every required policy kind were listed into the store.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Watches everything and writes statuses until the returned future is dropped.
    pub async fn run(self: Arc<Self>) {
        info!("controller starting");
        let policies = resources::policy_resources()
            .into_iter()
            .map(|r| Arc::clone(&self).watch_policies(r));
        futures::join!(
            Arc::clone(&self).watch_pods(),
            Arc::clone(&self).watch_namespaces(),
            futures::future::join_all(policies),
            self.status.run(self.ready.subscribe()),
        );
    }

    fn required_kinds() -> usize {
        // Pods, namespaces and the policy kinds that are not optional.
        2 + resources::policy_resources()
            .iter()
            .filter(|r| !r.optional)
            .count()
    }

    fn first_sync_done(&self, kind: WatchedKind) {
        let synced = self.synced.fetch_add(1, Ordering::AcqRel) + 1;
        info!(?kind, "first full list written to the store");
        if synced >= Self::required_kinds() {
            self.ready.send_replace(true);
        }
    }

    async fn watch_pods(self: Arc<Self>) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        let me = Arc::clone(&self);
        drive(
            stream,
            WatchedKind::Pod,
            &self.metrics,
            move |batch, first| {
                let me = Arc::clone(&me);
                async move { me.pods(batch, first).await }
            },
        )
        .instrument(info_span!("watch", kind = "Pod"))
        .await;
    }

    async fn pods(&self, batch: Batch<Pod>, first: bool) {
        let result = match batch {
            Batch::Relisted(pods) => {
                let fresh: Vec<Workload> =
                    pods.iter().filter_map(convert::pod_to_workload).collect();
                sync::write_workloads(&self.store, fresh, Vec::new(), true).await
            }
            Batch::Changes(changes) => {
                // The last change of each pod counts.
                let mut last: BTreeMap<WorkloadKey, Option<Workload>> = BTreeMap::new();
                for change in changes {
                    match change {
                        Change::Apply(pod) => {
                            last.insert(convert::pod_key(&pod), convert::pod_to_workload(&pod));
                        }
                        Change::Delete(pod) => {
                            last.insert(convert::pod_key(&pod), None);
                        }
                    }
                }
                let mut upserts = Vec::new();
                let mut removals = Vec::new();
                for (key, workload) in last {
                    match workload {
                        Some(w) => upserts.push(w),
                        None => removals.push(key),
                    }
                }
                sync::write_workloads(&self.store, upserts, removals, false).await
            }
        };
        self.written(result, WatchedKind::Pod, first);
    }

    async fn watch_namespaces(self: Arc<Self>) {
        let api: Api<KubeNamespace> = Api::all(self.client.clone());
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        let me = Arc::clone(&self);
        drive(
            stream,
            WatchedKind::Namespace,
            &self.metrics,
            move |batch, first| {
                let me = Arc::clone(&me);
                async move { me.namespaces(batch, first).await }
            },
        )
        .instrument(info_span!("watch", kind = "Namespace"))
        .await;
    }

    async fn namespaces(&self, batch: Batch<KubeNamespace>, first: bool) {
        let result = match batch {
            Batch::Relisted(list) => {
                let fresh: Vec<Namespace> = list.iter().map(convert::namespace_to_source).collect();
                sync::write_namespaces(&self.store, fresh, Vec::new(), true).await
            }
            Batch::Changes(changes) => {
                let mut last: BTreeMap<String, Option<Namespace>> = BTreeMap::new();
                for change in changes {
                    match change {
                        Change::Apply(ns) => {
                            last.insert(ns.name_any(), Some(convert::namespace_to_source(&ns)));
                        }
                        Change::Delete(ns) => {
                            last.insert(ns.name_any(), None);
                        }
                    }
                }
                let mut upserts = Vec::new();
                let mut removals = Vec::new();
                for (name, ns) in last {
                    match ns {
                        Some(n) => upserts.push(n),
                        None => removals.push(name),
                    }
                }
                sync::write_namespaces(&self.store, upserts, removals, false).await
            }
        };
        self.written(result, WatchedKind::Namespace, first);
    }

    fn written(&self, result: Result<u64, crate::StoreError>, kind: WatchedKind, first: bool) {
        match result {
            Ok(revision) => {
                debug!(?kind, revision, "written");
                if first {
                    self.first_sync_done(kind);
                }
                self.status.poke();
            }
            // The log failed: the store is stopping (crash-only); nothing to retry here.
            Err(e) => warn!(?kind, error = %e, "writing to the store failed"),
        }
    }

    async fn watch_policies(self: Arc<Self>, resource: PolicyResource) {
        let kind = resource.watched_kind();
        let span = info_span!("watch", kind = ?kind);
        async {
            if resource.optional {
                self.wait_until_served(&resource).await;
            }
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource.api);
            let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
            let me = Arc::clone(&self);
            drive(stream, kind, &self.metrics, move |batch, first| {
                let me = Arc::clone(&me);
                let resource = resource.clone();
                async move { me.policies(&resource, batch, first).await }
            })
            .await;
        }
        .instrument(span)
        .await;
    }

    /// Returns once the cluster serves the optional resource; asks again every
    /// discovery interval (sooner after errors).
    async fn wait_until_served(&self, resource: &PolicyResource) {
        let mut backoff =
            dnsfence_api::Backoff::new(Duration::from_secs(1), self.config.discovery_interval);
        loop {
            match resources::is_served(&self.client, &resource.api).await {
                Ok(true) => {
                    info!(api = %resource.api.api_version, kind = %resource.api.kind, "served by this cluster: watching it");
                    return;
                }
                Ok(false) => tokio::time::sleep(self.config.discovery_interval).await,
                Err(e) => {
                    warn!(api = %resource.api.api_version, error = %e, "discovery failed; will retry");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    async fn policies(&self, resource: &PolicyResource, batch: Batch<DynamicObject>, first: bool) {
        let kind = resource.kind;
        let (listed, changes) = match batch {
            Batch::Relisted(objects) => (true, objects.into_iter().map(Change::Apply).collect()),
            Batch::Changes(changes) => (false, changes),
        };
        // The last change of each object counts.
        let mut last: BTreeMap<PolicyRef, Change<DynamicObject>> = BTreeMap::new();
        for change in changes {
            let reference = match &change {
                Change::Apply(o) | Change::Delete(o) => convert::policy_ref(kind, o),
            };
            last.insert(reference, change);
        }
        let mut parsed: Vec<ParsedObject> = Vec::new();
        let mut deletions: Vec<PolicyRef> = Vec::new();
        let mut observations: Vec<(PolicyRef, Observation)> = Vec::new();
        for (reference, change) in &last {
            match change {
                Change::Apply(object) => {
                    let manifest = convert::policy_manifest(kind, object);
                    let namespace = reference.namespace.as_str();
                    let verdict = match sync::parse_policy(&manifest, namespace) {
                        Ok(p) if p.policy.reference == *reference => {
                            parsed.push(p);
                            Verdict::Accepted
                        }
                        Ok(p) => Verdict::Invalid(format!(
                            "parsed as {} instead of {reference}",
                            p.policy.reference
                        )),
                        Err(message) => {
                            info!(policy = %reference, %message, "invalid policy");
                            Verdict::Invalid(message)
                        }
                    };
                    observations.push((
                        reference.clone(),
                        Observation {
                            resource: resource.clone(),
                            namespace: kind.is_namespaced().then(|| reference.namespace.clone()),
                            name: reference.name.clone(),
                            generation: convert::generation(object),
                            verdict,
                            current: object.data.get("status").cloned(),
                        },
                    ));
                }
                Change::Delete(_) => deletions.push(reference.clone()),
            }
        }
        let replace = listed.then(|| (kind, last.keys().cloned().collect::<BTreeSet<_>>()));
        if listed {
            // Objects gone from the list have no status left to write.
            for tracked in self.status.tracked_of(kind) {
                if !last.contains_key(&tracked) {
                    self.status.forget(&tracked);
                }
            }
        }
        for reference in &deletions {
            self.status.forget(reference);
        }
        let gate = self.status.hold().await;
        let result = sync::write_policies(&self.store, parsed, deletions, replace).await;
        let ok = result.is_ok();
        for (reference, observation) in observations {
            if ok {
                self.status.observe(reference, observation);
            }
        }
        drop(gate);
        self.written(
            result,
            resource.watched_kind(),
            first && resource_is_required(resource),
        );
    }
}

fn resource_is_required(resource: &PolicyResource) -> bool {
    !resource.optional
}

/// Reads a watcher, groups what arrived together into batches and hands them to `handle`,
/// with `first` set for the first complete list.
async fn drive<K, S, F, Fut>(stream: S, kind: WatchedKind, metrics: &StoreMetrics, mut handle: F)
where
    K: Debug,
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
    F: FnMut(Batch<K>, bool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let stream = stream.ready_chunks(BATCH);
    futures::pin_mut!(stream);
    let mut listing: Option<Vec<K>> = None;
    let mut listed_once = false;
    while let Some(items) = stream.next().await {
        let mut changes: Vec<Change<K>> = Vec::new();
        for item in items {
            match item {
                Ok(Event::Apply(o)) => {
                    metrics.kube_event(kind, KubeEvent::Apply);
                    changes.push(Change::Apply(o));
                }
                Ok(Event::Delete(o)) => {
                    metrics.kube_event(kind, KubeEvent::Delete);
                    changes.push(Change::Delete(o));
                }
                Ok(Event::Init) => {
                    if !changes.is_empty() {
                        handle(Batch::Changes(std::mem::take(&mut changes)), false).await;
                    }
                    listing = Some(Vec::new());
                }
                Ok(Event::InitApply(o)) => listing.get_or_insert_with(Vec::new).push(o),
                Ok(Event::InitDone) => {
                    if !changes.is_empty() {
                        handle(Batch::Changes(std::mem::take(&mut changes)), false).await;
                    }
                    metrics.kube_event(kind, KubeEvent::Resync);
                    let objects = listing.take().unwrap_or_default();
                    info!(?kind, objects = objects.len(), "full list received");
                    handle(Batch::Relisted(objects), !listed_once).await;
                    listed_once = true;
                }
                Err(e) => {
                    metrics.watch_error(kind);
                    warn!(?kind, error = %e, "watch failed; retrying with backoff");
                }
            }
        }
        if !changes.is_empty() {
            handle(Batch::Changes(changes), false).await;
        }
    }
}
