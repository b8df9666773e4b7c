//! A mock Kubernetes API for the controller tests, in the style of kube-rs's controller-rs:
//! the controller's `kube::Client` talks to a `tower_test::mock` service; the test receives
//! each request, checks its method, path, query and body, and sends a canned JSON response.
//! Watches get a streaming response the test writes watch events into.
//!
//! The controller runs one watcher per kind concurrently, so requests of different kinds
//! arrive in any order: `expect` takes the next request that matches (keeping the others, in
//! arrival order, for later expectations). Every wait is bounded, so a scenario whose
//! controller never sends an expected request fails instead of hanging.
#![allow(dead_code)]

pub mod harness;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dnsfence_policy::model::{Event, EventPayload};
use dnsfence_policy_store::Store;
use dnsfence_policy_store::state::StoreState;
use futures::channel::mpsc;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{Value, json};
use tower_test::mock::{self, SendResponse};

pub type MockBody = UnsyncBoxBody<Bytes, Infallible>;
type Handle = mock::Handle<Request<kube::client::Body>, Response<MockBody>>;

/// How long any single expectation may take; generous for a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub const PODS: &str = "/api/v1/pods";
pub const NAMESPACES: &str = "/api/v1/namespaces";
pub const NETWORK_POLICIES: &str = "/apis/networking.k8s.io/v1/networkpolicies";
pub const ANPS: &str = "/apis/networking.k8s.aws/v1alpha1/applicationnetworkpolicies";
pub const CNPS: &str = "/apis/networking.k8s.aws/v1alpha1/clusternetworkpolicies";
pub const UPSTREAM_CNPS: &str = "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies";
pub const UPSTREAM_DISCOVERY: &str = "/apis/policy.networking.k8s.io/v1alpha2";

/// One request the controller sent, with its body read.
pub struct ApiRequest {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub body: Option<Value>,
    respond: SendResponse<Response<MockBody>>,
}

impl std::fmt::Debug for ApiRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}?{:?}", self.method, self.path, self.query)?;
        if let Some(b) = &self.body {
            write!(f, " {b}")?;
        }
        Ok(())
    }
}

impl ApiRequest {
    pub fn is_watch(&self) -> bool {
        self.query.get("watch").map(String::as_str) == Some("true")
    }

    pub fn query(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    pub fn respond(self, status: u16, body: Value) {
        let bytes = Bytes::from(body.to_string());
        let response = Response::builder()
            .status(StatusCode::from_u16(status).expect("a valid status"))
            .header("content-type", "application/json")
            .body(Full::new(bytes).boxed_unsync())
            .expect("a valid response");
        self.respond.send_response(response);
    }

    /// The API server's answer for a missing object or resource.
    pub fn not_found(self) {
        let message = format!(
            "the server could not find the requested resource ({})",
            self.path
        );
        self.respond(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": message, "reason": "NotFound", "code": 404}),
        );
    }

    pub fn conflict(self) {
        self.respond(
            409,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "the object has been modified; please apply your changes to the latest version and try again",
                   "reason": "Conflict", "code": 409}),
        );
    }

    /// Answers a watch with a stream the test feeds.
    pub fn stream(self) -> WatchFeed {
        let (tx, rx) = mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
        let response = Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(StreamBody::new(rx).boxed_unsync())
            .expect("a valid response");
        self.respond.send_response(response);
        WatchFeed { tx }
    }
}

/// The body of an open watch.
pub struct WatchFeed {
    tx: mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>,
}

impl WatchFeed {
    fn line(&self, value: Value) {
        let mut text = value.to_string();
        text.push('\n');
        // The controller closed the watch: what it would have read does not matter.
        let _ = self.tx.unbounded_send(Ok(Frame::data(Bytes::from(text))));
    }

    pub fn added(&self, object: &Value) {
        self.line(json!({"type": "ADDED", "object": object}));
    }

    pub fn modified(&self, object: &Value) {
        self.line(json!({"type": "MODIFIED", "object": object}));
    }

    pub fn deleted(&self, object: &Value) {
        self.line(json!({"type": "DELETED", "object": object}));
    }

    /// An ERROR event; 410 (Gone: the resource version is too old) forces a relist.
    pub fn error(&self, code: u16, reason: &str) {
        self.line(json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{reason} (code {code})"), "reason": reason, "code": code}}));
    }

    /// Ends the response, as the API server does when a watch times out.
    pub fn close(self) {}
}

pub struct MockApi {
    handle: Handle,
    backlog: VecDeque<ApiRequest>,
}

/// A client wired to a new mock API.
pub fn mock_api() -> (kube::Client, MockApi) {
    let (service, handle) = mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    let client = kube::Client::new(service, "default");
    (
        client,
        MockApi {
            handle,
            backlog: VecDeque::new(),
        },
    )
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (pair.to_string(), String::new()),
        })
        .collect()
}

impl MockApi {
    async fn receive(&mut self) -> Option<ApiRequest> {
        let (request, respond) = self.handle.next_request().await?;
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            None
        } else {
            Some(serde_json::from_slice(&bytes).expect("a JSON request body"))
        };
        Some(ApiRequest {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: parse_query(parts.uri.query()),
            content_type: parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body,
            respond,
        })
    }

    /// The next request `matches` accepts; others wait in the backlog for later expectations.
    pub async fn expect(
        &mut self,
        what: &str,
        matches: impl Fn(&ApiRequest) -> bool,
    ) -> ApiRequest {
        if let Some(i) = self.backlog.iter().position(&matches) {
            return self.backlog.remove(i).expect("position is in range");
        }
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let request = match tokio::time::timeout_at(deadline, self.receive()).await {
                Ok(Some(r)) => r,
                Ok(None) => panic!("expected {what}, but the client went away"),
                Err(_) => panic!(
                    "expected {what} within {PATIENCE:?}; meanwhile received {:?}",
                    self.backlog
                ),
            };
            if matches(&request) {
                return request;
            }
            self.backlog.push_back(request);
        }
    }

    pub async fn expect_list(&mut self, path: &str) -> ApiRequest {
        let r = self
            .expect(&format!("GET {path} (list)"), |r| {
                r.method == Method::GET && r.path == path && !r.is_watch()
            })
            .await;
        assert_eq!(r.query("limit"), Some("500"), "list pages of 500: {r:?}");
        r
    }

    /// A watch of `path` resuming at `resource_version`.
    pub async fn expect_watch(&mut self, path: &str, resource_version: &str) -> ApiRequest {
        let r = self
            .expect(&format!("GET {path} (watch)"), |r| {
                r.method == Method::GET && r.path == path && r.is_watch()
            })
            .await;
        assert_eq!(
            r.query("resourceVersion"),
            Some(resource_version),
            "watch resumes at the list's (or last event's) version: {r:?}"
        );
        assert_eq!(r.query("allowWatchBookmarks"), Some("true"), "{r:?}");
        r
    }

    /// A merge patch of `path` (a status subresource).
    pub async fn expect_patch(&mut self, path: &str) -> ApiRequest {
        let r = self
            .expect(&format!("PATCH {path}"), |r| {
                r.method == Method::PATCH && r.path == path
            })
            .await;
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/merge-patch+json"),
            "{r:?}"
        );
        r
    }

    /// Lists `items` at `resource_version` and opens the watch after it.
    pub async fn serve_list_and_watch(
        &mut self,
        path: &str,
        list_kind: &str,
        items: Vec<Value>,
        resource_version: &str,
    ) -> WatchFeed {
        self.expect_list(path).await.respond(
            200,
            json!({"apiVersion": "v1", "kind": list_kind,
                   "metadata": {"resourceVersion": resource_version}, "items": items}),
        );
        self.expect_watch(path, resource_version).await.stream()
    }

    /// Requests received but not expected yet.
    pub fn backlog(&self) -> &VecDeque<ApiRequest> {
        &self.backlog
    }
}

/// What the cluster holds when the controller starts.
#[derive(Debug, Default)]
pub struct World {
    pub pods: Vec<Value>,
    pub namespaces: Vec<Value>,
    pub network_policies: Vec<Value>,
    pub anps: Vec<Value>,
    pub cnps: Vec<Value>,
    /// `None`: the cluster does not serve policy.networking.k8s.io/v1alpha2.
    pub upstream_cnps: Option<Vec<Value>>,
}

/// The open watches after the initial sync.
pub struct Feeds {
    pub pods: WatchFeed,
    pub namespaces: WatchFeed,
    pub network_policies: WatchFeed,
    pub anps: WatchFeed,
    pub cnps: WatchFeed,
    pub upstream_cnps: Option<WatchFeed>,
}

/// The resource version every initial list is served at.
pub const LIST_VERSION: &str = "1000";

/// Serves the discovery request and the first list and watch of every kind.
pub async fn initial_sync(api: &mut MockApi, world: World) -> Feeds {
    let discovery = api
        .expect("discovery of policy.networking.k8s.io/v1alpha2", |r| {
            r.method == Method::GET && r.path == UPSTREAM_DISCOVERY
        })
        .await;
    match &world.upstream_cnps {
        None => discovery.not_found(),
        Some(_) => discovery.respond(
            200,
            json!({"kind": "APIResourceList", "apiVersion": "v1",
                   "groupVersion": "policy.networking.k8s.io/v1alpha2",
                   "resources": [{"name": "clusternetworkpolicies", "singularName": "clusternetworkpolicy",
                                  "namespaced": false, "kind": "ClusterNetworkPolicy",
                                  "verbs": ["get", "list", "watch", "patch"]},
                                 {"name": "clusternetworkpolicies/status", "singularName": "",
                                  "namespaced": false, "kind": "ClusterNetworkPolicy",
                                  "verbs": ["get", "patch", "update"]}]}),
        ),
    }
    let v = LIST_VERSION;
    let pods = api
        .serve_list_and_watch(PODS, "PodList", world.pods, v)
        .await;
    let namespaces = api
        .serve_list_and_watch(NAMESPACES, "NamespaceList", world.namespaces, v)
        .await;
    let network_policies = api
        .serve_list_and_watch(
            NETWORK_POLICIES,
            "NetworkPolicyList",
            world.network_policies,
            v,
        )
        .await;
    let anps = api
        .serve_list_and_watch(ANPS, "ApplicationNetworkPolicyList", world.anps, v)
        .await;
    let cnps = api
        .serve_list_and_watch(CNPS, "ClusterNetworkPolicyList", world.cnps, v)
        .await;
    let upstream_cnps = match world.upstream_cnps {
        Some(items) => Some(
            api.serve_list_and_watch(UPSTREAM_CNPS, "ClusterNetworkPolicyList", items, v)
                .await,
        ),
        None => None,
    };
    Feeds {
        pods,
        namespaces,
        network_policies,
        anps,
        cnps,
        upstream_cnps,
    }
}

// ---- Objects as the API server returns them ----

pub fn namespace(name: &str, labels: Value, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": labels, "resourceVersion": rv, "uid": format!("ns-{name}")},
           "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

/// A running pod with its addresses and node.
pub fn pod(ns: &str, name: &str, labels: Value, ips: &[&str], node: &str, rv: &str) -> Value {
    let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "labels": labels, "resourceVersion": rv,
                        "uid": format!("pod-{ns}-{name}")},
           "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.example/app:1"}]},
           "status": {"phase": "Running", "podIP": ips.first(), "podIPs": pod_ips}})
}

/// A pod not scheduled yet: no node, no address.
pub fn pending_pod(ns: &str, name: &str, labels: Value, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "labels": labels, "resourceVersion": rv},
           "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
           "status": {"phase": "Pending"}})
}

pub fn anp(ns: &str, name: &str, generation: i64, rv: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.aws/v1alpha1", "kind": "ApplicationNetworkPolicy",
           "metadata": {"name": name, "namespace": ns, "generation": generation, "resourceVersion": rv,
                        "uid": format!("anp-{ns}-{name}"),
                        "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
           "spec": spec})
}

pub fn cnp(api_version: &str, name: &str, generation: i64, rv: &str, spec: Value) -> Value {
    json!({"apiVersion": api_version, "kind": "ClusterNetworkPolicy",
           "metadata": {"name": name, "generation": generation, "resourceVersion": rv,
                        "uid": format!("cnp-{name}")},
           "spec": spec})
}

/// `object` as the API server returns it after a status patch.
pub fn with_status(object: &Value, status: &Value, rv: &str) -> Value {
    let mut o = object.clone();
    o["status"] = status.clone();
    o["metadata"]["resourceVersion"] = json!(rv);
    o
}

/// Egress to `domains` on TCP 443 for pods labelled app=`app`.
pub fn egress_to(app: &str, domains: &[&str], port: u16) -> Value {
    json!({"podSelector": {"matchLabels": {"app": app}},
           "policyTypes": ["Egress"],
           "egress": [{"to": [{"domainNames": domains}],
                       "ports": [{"protocol": "TCP", "port": port}]}]})
}

// ---- The store's side ----

/// Every event the store logged after `after`, decoded.
pub fn events_after(store: &Store, after: u64) -> Vec<Event> {
    let records = store
        .log()
        .read_from(after + 1, 100_000)
        .expect("the log is readable");
    records
        .iter()
        .map(|r| dnsfence_policy_store::codec::decode_event(&r.bytes).expect("a decodable event"))
        .collect()
}

/// The store's head once `done` holds for its state; bounded by PATIENCE.
pub async fn wait_for_state(
    store: &Arc<Store>,
    what: &str,
    done: impl Fn(&StoreState) -> bool,
) -> u64 {
    let mut head = store.log().subscribe();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        {
            let state = store.read().await;
            if done(&state) && store.log().head() >= state.revision {
                return state.revision;
            }
        }
        match tokio::time::timeout_at(deadline, head.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("the log stopped while waiting for {what}"),
            Err(_) => panic!("the store never reached: {what}"),
        }
    }
}

/// A short name per event, for readable assertions: `PolicyApplied ANP shop/x gen 2`, ...
pub fn describe(event: &Event) -> String {
    match &event.payload {
        EventPayload::PolicyApplied(r) => {
            format!("PolicyApplied {} gen {}", r.reference, r.generation)
        }
        EventPayload::PolicyDeleted(r) => format!("PolicyDeleted {r}"),
        EventPayload::NamespaceUpserted(n) => format!("NamespaceUpserted {}", n.name),
        EventPayload::NamespaceRemoved(n) => format!("NamespaceRemoved {n}"),
        EventPayload::WorkloadUpserted(w) => {
            format!("WorkloadUpserted {} on {}", w.key, w.node)
        }
        EventPayload::WorkloadRemoved(k) => format!("WorkloadRemoved {k}"),
        EventPayload::AllowlistCompiled(_) => "AllowlistCompiled".to_string(),
        EventPayload::AllowlistReleased(_) => "AllowlistReleased".to_string(),
        EventPayload::WorkloadBound(b) => format!(
            "WorkloadBound {} on {} {}",
            b.workload,
            b.node,
            match b.binding {
                dnsfence_policy::model::Binding::Enforced(_) => "enforced",
                dnsfence_policy::model::Binding::Unenforced => "unenforced",
            }
        ),
        EventPayload::WorkloadUnbound(k) => format!("WorkloadUnbound {k}"),
    }
}

pub fn describe_all(events: &[Event]) -> Vec<String> {
    events.iter().map(describe).collect()
}
