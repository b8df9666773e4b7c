//! The gRPC face of the store: converts requests at the boundary and calls the store.

use std::sync::Arc;

use dnsfence_api::store::v1 as pb;
use dnsfence_api::store::v1::policy_store_server::PolicyStore;
use dnsfence_policy::model::{Namespace, PolicyRef, Workload, WorkloadKey};
use dnsfence_policy::ports::PortRange;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::config::Mode;
use crate::explain::{self, ExplainError, PodSelector};
use crate::role::Role;
use crate::store::{Store, WriteError};
use crate::watch::{self, View, WatchParams, WatchStream};
use crate::writes::{self, AppliedObject, ManifestInput, Outcome};

#[derive(Debug, Clone)]
pub struct StoreService {
    store: Arc<Store>,
}

impl StoreService {
    pub fn new(store: Arc<Store>) -> StoreService {
        StoreService { store }
    }

    fn check_writable(&self) -> Result<(), Status> {
        let config = self.store.config();
        writes_refused(&self.store.role(), config.mode, config.read_only).map_or(Ok(()), Err)
    }
}

/// Why the gRPC write API refuses a write in this role, if it does.
pub fn writes_refused(role: &Role, mode: Mode, read_only: bool) -> Option<Status> {
    match role {
        Role::Standalone if !read_only => None,
        Role::Standalone => Some(Status::permission_denied(
            "this store is read-only (--read-only): policies come from the Kubernetes API",
        )),
        Role::Leader => Some(Status::permission_denied(
            "cluster mode: policies, pods and namespaces come from the Kubernetes API; the store's write API is off (kubectl apply the policy instead)",
        )),
        Role::Follower {
            leader: Some(leader),
        } => Some(Status::failed_precondition(match mode {
            Mode::Standalone => format!(
                "this store is a read-only replica of the leader {leader}: send writes there"
            ),
            Mode::Cluster => format!(
                "this store is a read-only replica of the leader {leader}; in cluster mode policies, pods and namespaces come from the Kubernetes API"
            ),
        })),
        Role::Follower { leader: None } => Some(Status::unavailable(
            "this store is a read-only replica and no leader is known right now; retry shortly",
        )),
    }
}

fn bad<E: std::fmt::Display>(e: E) -> Status {
    Status::invalid_argument(e.to_string())
}

fn write_status(e: WriteError<Status>) -> Status {
    match e {
        WriteError::Rejected(status) => status,
        WriteError::Log(reason) => Status::unavailable(format!("the event log failed: {reason}")),
    }
}

fn applied_to_proto(o: &AppliedObject) -> pb::AppliedObject {
    use pb::applied_object::Outcome as P;
    pb::AppliedObject {
        reference: Some((&o.reference).into()),
        outcome: match o.outcome {
            Outcome::Created => P::Created,
            Outcome::Configured => P::Configured,
            Outcome::Unchanged => P::Unchanged,
            Outcome::Deleted => P::Deleted,
        } as i32,
        generation: o.generation,
    }
}

fn manifests(list: Vec<pb::Manifest>) -> Vec<ManifestInput> {
    list.into_iter()
        .map(|m| ManifestInput {
            source: m.source,
            content: m.content,
        })
        .collect()
}

fn default_namespace(ns: &str) -> &str {
    if ns.is_empty() { "default" } else { ns }
}

#[tonic::async_trait]
impl PolicyStore for StoreService {
    #[instrument(skip_all, fields(manifests = request.get_ref().manifests.len()))]
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        self.check_writable()?;
        let req = request.into_inner();
        let inputs = manifests(req.manifests);
        let objects = writes::parse_all(&inputs, default_namespace(&req.default_namespace))
            .map_err(|errors| Status::invalid_argument(errors.join("\n")))?;
        if objects.is_empty() {
            return Err(Status::invalid_argument("no objects in the request"));
        }
        let dry_run = req.dry_run;
        let (revision, results) = self
            .store
            .write(|state| Ok::<_, Status>(writes::apply(state, objects, dry_run)))
            .await
            .map_err(write_status)?;
        Ok(Response::new(pb::ApplyResponse {
            revision,
            objects: results.iter().map(applied_to_proto).collect(),
        }))
    }

    #[instrument(skip_all)]
    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.check_writable()?;
        let req = request.into_inner();
        let mut references: Vec<PolicyRef> = req
            .references
            .into_iter()
            .map(PolicyRef::try_from)
            .collect::<Result<_, _>>()
            .map_err(bad)?;
        let inputs = manifests(req.manifests);
        let objects = writes::parse_all(&inputs, default_namespace(&req.default_namespace))
            .map_err(|errors| Status::invalid_argument(errors.join("\n")))?;
        references.extend(objects.into_iter().map(|o| o.policy.reference));
        if references.is_empty() {
            return Err(Status::invalid_argument("nothing to delete"));
        }
        let (revision, results) = self
            .store
            .write(|state| {
                writes::delete(state, references)
                    .map_err(|missing| Status::not_found(format!("{missing} does not exist")))
            })
            .await
            .map_err(write_status)?;
        Ok(Response::new(pb::DeleteResponse {
            revision,
            objects: results.iter().map(applied_to_proto).collect(),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::PolicyRecord>, Status> {
        let reference = request
            .into_inner()
            .reference
            .ok_or_else(|| Status::invalid_argument("reference: missing"))?;
        let reference = PolicyRef::try_from(reference).map_err(bad)?;
        let state = self.store.read().await;
        state
            .records
            .get(&reference)
            .map(|r| Response::new(r.into()))
            .ok_or_else(|| Status::not_found(format!("{reference} does not exist")))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let req = request.into_inner();
        let collection = pb::Collection::try_from(req.collection).map_err(|_| {
            Status::invalid_argument(format!("collection: unknown value {}", req.collection))
        })?;
        let ns = req.namespace;
        let in_ns = |n: &str| ns.is_empty() || n == ns;
        let state = self.store.read().await;
        let mut out = pb::ListResponse {
            revision: state.revision,
            ..Default::default()
        };
        match collection {
            pb::Collection::Unspecified => {
                return Err(Status::invalid_argument("collection: unspecified"));
            }
            pb::Collection::Policies => {
                out.policies = state
                    .records
                    .values()
                    .filter(|r| r.reference.namespace.is_empty() || in_ns(&r.reference.namespace))
                    .map(Into::into)
                    .collect();
            }
            pb::Collection::Workloads => {
                out.workloads = state
                    .compiler
                    .workloads()
                    .filter(|w| in_ns(&w.key.namespace))
                    .map(Into::into)
                    .collect();
            }
            pb::Collection::Namespaces => {
                out.namespaces = state.compiler.namespaces().map(|n| (&n).into()).collect();
            }
            pb::Collection::Allowlists => {
                out.allowlists = state
                    .compiler
                    .allowlists()
                    .map(|a| a.as_ref().into())
                    .collect();
                out.allowlists.sort_by(|a, b| a.id.cmp(&b.id));
            }
            pb::Collection::Bindings => {
                let mut bindings: Vec<_> = state
                    .compiler
                    .bindings()
                    .filter(|b| in_ns(&b.workload.namespace))
                    .collect();
                bindings.sort_by(|a, b| a.workload.cmp(&b.workload));
                out.bindings = bindings.into_iter().map(Into::into).collect();
            }
        }
        Ok(Response::new(out))
    }

    #[instrument(skip_all, fields(destination = %request.get_ref().destination))]
    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let req = request.into_inner();
        let pod = match req.pod {
            Some(pb::explain_request::Pod::Workload(key)) => {
                PodSelector::Key(WorkloadKey::try_from(key).map_err(bad)?)
            }
            Some(pb::explain_request::Pod::Ip(ip)) => {
                PodSelector::Ip(ip.parse().map_err(|_| {
                    Status::invalid_argument(format!("ip: {ip:?} is not an address"))
                })?)
            }
            None => return Err(Status::invalid_argument("pod: missing")),
        };
        let port = req.port.map(PortRange::try_from).transpose().map_err(bad)?;
        let default = dnsfence_api::default_policy_from_proto(req.default_policy)
            .map_err(bad)?
            .unwrap_or(self.store.config().default_policy);
        let state = self.store.read().await;
        let e = explain::explain(&state, &pod, &req.destination, port, default).map_err(
            |e| match e {
                ExplainError::UnknownWorkload(_) => Status::not_found(e.to_string()),
                ExplainError::BadDestination(_) => Status::invalid_argument(e.to_string()),
            },
        )?;
        Ok(Response::new(pb::ExplainResponse {
            revision: state.revision,
            workload: Some((&e.workload).into()),
            allowlist_id: e.allowlist.map(|id| id.0).unwrap_or_default(),
            verdict: pb::Verdict::from(e.verdict) as i32,
            reason: e.reason,
            deciding_rule: e.deciding_rule.as_ref().map(Into::into),
            allowed_ports: e.allowed_ports.iter().map(Into::into).collect(),
            default_policy: pb::DefaultPolicy::from(default) as i32,
        }))
    }

    #[instrument(skip_all, fields(count = request.get_ref().workloads.len()))]
    async fn upsert_workloads(
        &self,
        request: Request<pb::UpsertWorkloadsRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.check_writable()?;
        let workloads: Vec<Workload> = request
            .into_inner()
            .workloads
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                let w = Workload::try_from(w)
                    .map_err(|e| Status::invalid_argument(format!("workloads[{i}]: {e}")))?;
                writes::validate_workload(&w, &format!("workloads[{i}]"))
                    .map_err(Status::invalid_argument)?;
                Ok(w)
            })
            .collect::<Result<_, Status>>()?;
        let (revision, ()) = self
            .store
            .write(|state| Ok::<_, Status>((writes::upsert_workloads(state, workloads), ())))
            .await
            .map_err(write_status)?;
        Ok(Response::new(pb::WriteResponse { revision }))
    }

    async fn remove_workloads(
        &self,
        request: Request<pb::RemoveWorkloadsRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.check_writable()?;
        let keys: Vec<WorkloadKey> = request
            .into_inner()
            .workloads
            .into_iter()
            .map(WorkloadKey::try_from)
            .collect::<Result<_, _>>()
            .map_err(bad)?;
        let (revision, ()) = self
            .store
            .write(|state| Ok::<_, Status>((writes::remove_workloads(state, keys), ())))
            .await
            .map_err(write_status)?;
        Ok(Response::new(pb::WriteResponse { revision }))
    }

    async fn upsert_namespaces(
        &self,
        request: Request<pb::UpsertNamespacesRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.check_writable()?;
        let namespaces: Vec<Namespace> = request
            .into_inner()
            .namespaces
            .into_iter()
            .enumerate()
            .map(|(i, n)| {
                let n = Namespace::try_from(n)
                    .map_err(|e| Status::invalid_argument(format!("namespaces[{i}]: {e}")))?;
                writes::validate_namespace(&n, &format!("namespaces[{i}]"))
                    .map_err(Status::invalid_argument)?;
                Ok(n)
            })
            .collect::<Result<_, Status>>()?;
        let (revision, ()) = self
            .store
            .write(|state| Ok::<_, Status>((writes::upsert_namespaces(state, namespaces), ())))
            .await
            .map_err(write_status)?;
        Ok(Response::new(pb::WriteResponse { revision }))
    }

    async fn remove_namespaces(
        &self,
        request: Request<pb::RemoveNamespacesRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.check_writable()?;
        let names = request.into_inner().names;
        let (revision, ()) = self
            .store
            .write(|state| Ok::<_, Status>((writes::remove_namespaces(state, names), ())))
            .await
            .map_err(write_status)?;
        Ok(Response::new(pb::WriteResponse { revision }))
    }

    type WatchStream = WatchStream;

    #[instrument(skip_all, fields(from = request.get_ref().from_revision, node = %request.get_ref().node))]
    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        let view = match pb::View::try_from(req.view) {
            Ok(pb::View::Unspecified | pb::View::All) => View::All,
            Ok(pb::View::Derived) => View::Derived,
            Ok(pb::View::Sources) => View::Sources,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "view: unknown value {}",
                    req.view
                )));
            }
        };
        let params = WatchParams {
            from_revision: req.from_revision,
            view,
            node: req.node,
            snapshot: req.snapshot,
        };
        Ok(Response::new(watch::start(Arc::clone(&self.store), params)))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let state = self.store.read().await;
        let log = self.store.log();
        Ok(Response::new(pb::StatusResponse {
            revision: state.revision,
            first_retained: log.first_retained(),
            snapshot_revision: self.store.snapshot_revision(),
            policies: state.records.len() as u64,
            workloads: state.compiler.workload_count() as u64,
            namespaces: state.compiler.namespace_count() as u64,
            allowlists: state.compiler.allowlist_count() as u64,
            watchers: u32::try_from(self.store.watchers()).unwrap_or(u32::MAX),
            version: env!("CARGO_PKG_VERSION").to_string(),
            writes_enabled: self.check_writable().is_ok(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::Peer;
    use tonic::Code;

    #[test]
    fn writes_are_refused_by_role_with_the_leader_named() {
        assert!(writes_refused(&Role::Standalone, Mode::Standalone, false).is_none());
        let read_only = writes_refused(&Role::Standalone, Mode::Standalone, true);
        assert_eq!(read_only.map(|s| s.code()), Some(Code::PermissionDenied));
        let leader = writes_refused(&Role::Leader, Mode::Cluster, false);
        assert_eq!(leader.map(|s| s.code()), Some(Code::PermissionDenied));
        let peer = Peer {
            identity: "store-0".into(),
            address: "http://store-0.dnsfence-policy-store.dnsfence.svc:50051".into(),
        };
        let follower = writes_refused(
            &Role::Follower {
                leader: Some(peer.clone()),
            },
            Mode::Cluster,
            false,
        )
        .map(|s| (s.code(), s.message().to_string()));
        let (code, message) = follower.unwrap_or((Code::Ok, String::new()));
        assert_eq!(code, Code::FailedPrecondition);
        assert!(message.contains("store-0 (http://store-0."), "{message}");
        let unknown = writes_refused(&Role::Follower { leader: None }, Mode::Cluster, false);
        assert_eq!(unknown.map(|s| s.code()), Some(Code::Unavailable));
    }
}
