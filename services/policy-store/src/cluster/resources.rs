//! The Kubernetes resources the controller consumes. Policies are read as `DynamicObject`s
//! and handed to the policy library as manifests, so the library's strict parser (and its
//! messages) decide what is valid, whichever CRD version the cluster has installed.

use dnsfence_policy::model::PolicyKind;
use kube::Client;
use kube::core::{ApiResource, GroupVersionKind};
use tracing::{debug, info};

use crate::metrics::WatchedKind;

/// How a policy kind's status is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusStyle {
    /// Not written (networking.k8s.io/v1 NetworkPolicy has no status).
    None,
    /// Our CRDs (networking.k8s.aws): conditions plus observedGeneration, storeRevision and
    /// selectedPods.
    Full,
    /// The upstream CRD's schema holds only `conditions`; anything else would be pruned, so
    /// the revision and pod count go into the condition's message.
    ConditionsOnly,
}

/// One watched policy resource.
#[derive(Debug, Clone)]
pub struct PolicyResource {
    pub kind: PolicyKind,
    pub api: ApiResource,
    pub status: StatusStyle,
    /// Consumed only when the cluster serves it (checked by discovery).
    pub optional: bool,
}

impl PolicyResource {
    pub fn namespaced(&self) -> bool {
        self.kind.is_namespaced()
    }

    pub fn watched_kind(&self) -> WatchedKind {
        match self.kind {
            PolicyKind::NetworkPolicy => WatchedKind::NetworkPolicy,
            PolicyKind::ApplicationNetworkPolicy => WatchedKind::ApplicationNetworkPolicy,
            PolicyKind::ClusterNetworkPolicy => WatchedKind::ClusterNetworkPolicy,
            PolicyKind::UpstreamClusterNetworkPolicy => WatchedKind::UpstreamClusterNetworkPolicy,
        }
    }
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// `networking.k8s.aws/v1alpha1` ApplicationNetworkPolicy (namespaced).
pub fn application_network_policy() -> PolicyResource {
    PolicyResource {
        kind: PolicyKind::ApplicationNetworkPolicy,
        api: resource(
            "networking.k8s.aws",
            "v1alpha1",
            "ApplicationNetworkPolicy",
            "applicationnetworkpolicies",
        ),
        status: StatusStyle::Full,
        optional: false,
    }
}

/// `networking.k8s.aws/v1alpha1` ClusterNetworkPolicy (cluster-scoped).
pub fn cluster_network_policy() -> PolicyResource {
    PolicyResource {
        kind: PolicyKind::ClusterNetworkPolicy,
        api: resource(
            "networking.k8s.aws",
            "v1alpha1",
            "ClusterNetworkPolicy",
            "clusternetworkpolicies",
        ),
        status: StatusStyle::Full,
        optional: false,
    }
}

/// `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy (cluster-scoped, optional).
pub fn upstream_cluster_network_policy() -> PolicyResource {
    PolicyResource {
        kind: PolicyKind::UpstreamClusterNetworkPolicy,
        api: resource(
            "policy.networking.k8s.io",
            "v1alpha2",
            "ClusterNetworkPolicy",
            "clusternetworkpolicies",
        ),
        status: StatusStyle::ConditionsOnly,
        optional: true,
    }
}

/// `networking.k8s.io/v1` NetworkPolicy.
pub fn network_policy() -> PolicyResource {
    PolicyResource {
        kind: PolicyKind::NetworkPolicy,
        api: resource(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
        ),
        status: StatusStyle::None,
        optional: false,
    }
}

/// Every policy resource, the optional one last.
pub fn policy_resources() -> Vec<PolicyResource> {
    vec![
        network_policy(),
        application_network_policy(),
        cluster_network_policy(),
        upstream_cluster_network_policy(),
    ]
}

/// Whether the cluster serves `resource` now: `Ok(false)` when its group/version or the
/// resource is not there (404), an error when the API could not be asked.
pub async fn is_served(client: &Client, resource: &ApiResource) -> Result<bool, kube::Error> {
    match client.list_api_group_resources(&resource.api_version).await {
        Ok(list) => {
            let found = list.resources.iter().any(|r| r.name == resource.plural);
            debug!(api = %resource.api_version, plural = %resource.plural, found, "discovery");
            Ok(found)
        }
        Err(kube::Error::Api(status)) if status.code == 404 => {
            info!(api = %resource.api_version, "not served by this cluster");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}
