//! The controller under test: a store, a controller on a mock API, and helpers to read what
//! reached the log.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use dnsfence_policy::model::{EventPayload, PolicyKind, PolicyRef, WorkloadKey};
use dnsfence_policy_store::cluster::controller::{Controller, ControllerConfig};
use dnsfence_policy_store::metrics::StoreMetrics;
use dnsfence_policy_store::role::Role;
use dnsfence_policy_store::{Config, Store};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::*;

pub struct Running {
    pub store: Arc<Store>,
    pub api: MockApi,
    pub metrics: Arc<StoreMetrics>,
    controller: JoinHandle<()>,
}

impl Running {
    pub async fn start(dir: &Path) -> Running {
        let config = Config::parse_from([
            "dnsfence-policy-store",
            "--data-dir",
            &dir.display().to_string(),
        ]);
        let store = Store::open(config).await.unwrap();
        Running::with_store(store)
    }

    pub fn with_store(store: Arc<Store>) -> Running {
        store.set_role(Role::Leader);
        let (client, api) = mock_api();
        let metrics = Arc::new(StoreMetrics::default());
        let controller = Controller::new(
            client,
            Arc::clone(&store),
            Arc::clone(&metrics),
            ControllerConfig {
                discovery_interval: Duration::from_secs(3600),
                status_interval: Duration::from_millis(10),
            },
        );
        let controller = tokio::spawn(controller.run());
        Running {
            store,
            api,
            metrics,
            controller,
        }
    }

    /// Stops the controller and closes the store's log (as a stopping process would).
    pub async fn stop(self) -> Arc<Store> {
        self.controller.abort();
        let _ = self.controller.await;
        assert!(
            self.api.backlog().is_empty(),
            "requests nobody expected: {:?}",
            self.api.backlog()
        );
        self.store
    }

    pub fn head(&self) -> u64 {
        self.store.log().head()
    }
}

pub fn shop_ns() -> Value {
    namespace("shop", json!({}), "10")
}

pub fn web_pod(ip: &str, node: &str, rv: &str) -> Value {
    pod("shop", "web-1", json!({"app": "web"}), &[ip], node, rv)
}

pub fn anp_ref(name: &str) -> PolicyRef {
    PolicyRef {
        kind: PolicyKind::ApplicationNetworkPolicy,
        namespace: "shop".into(),
        name: name.into(),
    }
}

pub fn key(ns: &str, name: &str) -> WorkloadKey {
    WorkloadKey {
        namespace: ns.into(),
        name: name.into(),
    }
}

pub const ANP_STATUS: &str = "/apis/networking.k8s.aws/v1alpha1/namespaces/shop/applicationnetworkpolicies/allow-github/status";

/// The revision of the first event satisfying `f` after `after`.
pub fn revision_of(store: &Store, after: u64, f: impl Fn(&EventPayload) -> bool) -> u64 {
    events_after(store, after)
        .into_iter()
        .find(|e| f(&e.payload))
        .expect("the event is in the log")
        .revision
}

pub fn accepted_condition(status: &Value) -> &Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Accepted")
        .expect("an Accepted condition")
}
