//! Shared helpers for the policy-store integration tests: start the store in-process or as a
//! child process, connect a client, build manifests and workloads, read Watch streams.
//!
//! Every test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use dnsfence_api::store::v1 as pb;
use dnsfence_api::store::v1::policy_store_client::PolicyStoreClient;
use dnsfence_api::{ClientTls, Listener};
use dnsfence_policy_store::{Config, Store, StoreError, serve};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Streaming;
use tonic::transport::Channel;

pub type Client = PolicyStoreClient<Channel>;

// The example manifests shipped with the repository, verbatim.
pub const ALLOW_GITHUB: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/seed/allow-github.yaml"
));
pub const ALLOW_DNS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/seed/allow-dns.yaml"
));
pub const MY_NODECLASS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/seed/my-nodeclass.yaml"
));

/// Large enough for snapshot parts of thousands of workloads.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Upper bound for anything that should be quick; generous for a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The store's config for `data_dir` plus extra flags, parsed like the binary parses argv.
pub fn config(data_dir: &Path, extra: &[&str]) -> Config {
    let mut args: Vec<String> = vec![
        "dnsfence-policy-store".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_string()));
    Config::parse_from(args)
}

/// A store served in this process on an ephemeral TCP port.
pub struct InProcess {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    store: Option<Arc<Store>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), StoreError>>>,
}

impl InProcess {
    /// Opens (replaying) the store in `data_dir` and serves it.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> anyhow::Result<InProcess> {
        InProcess::start_at(data_dir, extra, "127.0.0.1:0".parse()?).await
    }

    /// Like `start`, on a given address (to restart a store where its clients expect it).
    pub async fn start_at(
        data_dir: &Path,
        extra: &[&str],
        address: SocketAddr,
    ) -> anyhow::Result<InProcess> {
        let config = config(data_dir, extra);
        let listener = tokio::net::TcpListener::bind(address).await?;
        let addr = listener.local_addr()?;
        let store = Store::open(config.clone()).await?;
        let (shutdown, stop) = oneshot::channel::<()>();
        let served = Arc::clone(&store);
        let task = tokio::spawn(async move {
            serve(served, &config, vec![Listener::Tcp(listener)], async {
                let _ = stop.await;
            })
            .await
        });
        Ok(InProcess {
            addr,
            data_dir: data_dir.to_path_buf(),
            store: Some(store),
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        self.store.as_ref().expect("store is running")
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        connect(self.addr).await
    }

    /// Graceful stop: `serve` must return cleanly and in bounded time, and the data directory
    /// must be free for the next `start` afterwards.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().context("already stopped")?;
        let result = tokio::time::timeout(PATIENCE, task)
            .await
            .context("serve did not return within 30 s of shutdown")??;
        result.context("serve failed")?;
        // Our handle on the store would keep the log's database (and its lock) open.
        self.store.take();
        Ok(())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A plaintext client with the store's message size limit.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
    let channel = dnsfence_api::connect(
        &format!("http://{addr}"),
        &ClientTls::default(),
        Duration::from_secs(10),
    )
    .await?;
    Ok(PolicyStoreClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// A store running as a child process; SIGKILLed when dropped, so a failing test leaves no
/// process behind.
pub struct ChildStore {
    child: Child,
    pub addr: SocketAddr,
    pub log_path: PathBuf,
}

/// A port nobody listens on right now (bind to port 0 and let go).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl ChildStore {
    /// Starts the binary on a free port and waits until its Status answers.
    pub async fn start(
        data_dir: &Path,
        log_path: &Path,
        extra: &[&str],
    ) -> anyhow::Result<(ChildStore, Client)> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)?;
        let child = Command::new(env!("CARGO_BIN_EXE_dnsfence-policy-store"))
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(addr.to_string())
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning dnsfence-policy-store")?;
        let mut store = ChildStore {
            child,
            addr,
            log_path: log_path.to_path_buf(),
        };
        let client = store.wait_ready().await?;
        Ok((store, client))
    }

    async fn wait_ready(&mut self) -> anyhow::Result<Client> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the store exited with {status}:\n{}", self.log_tail());
            }
            if let Ok(mut client) = connect(self.addr).await
                && client.status(pb::StatusRequest {}).await.is_ok()
            {
                return Ok(client);
            }
            if started.elapsed() > PATIENCE {
                bail!("the store did not answer within 30 s:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"))
    }

    /// SIGKILL: no shutdown code runs, whatever was not durable is lost.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL)?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn terminate(&mut self) -> anyhow::Result<()> {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM)?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the store exited with {status}:\n{}", self.log_tail());
                }
                return Ok(());
            }
            if started.elapsed() > PATIENCE {
                bail!("the store did not stop on SIGTERM:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ChildStore {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

// ---- requests ----

pub fn manifest(source: &str, content: &str) -> pb::Manifest {
    pb::Manifest {
        source: source.to_string(),
        content: content.to_string(),
    }
}

pub fn apply_request(manifests: Vec<pb::Manifest>) -> pb::ApplyRequest {
    pb::ApplyRequest {
        manifests,
        default_namespace: String::new(),
        dry_run: false,
    }
}

/// Applies the seed's allow-github.yaml and allow-dns.yaml verbatim.
pub async fn apply_seed(client: &mut Client) -> anyhow::Result<pb::ApplyResponse> {
    Ok(client
        .apply(apply_request(vec![
            manifest("allow-github.yaml", ALLOW_GITHUB),
            manifest("allow-dns.yaml", ALLOW_DNS),
        ]))
        .await?
        .into_inner())
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

pub fn key(namespace: &str, name: &str) -> pb::WorkloadKey {
    pb::WorkloadKey {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

pub fn workload(
    namespace: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    ip: &str,
    node: &str,
) -> pb::Workload {
    pb::Workload {
        key: Some(key(namespace, name)),
        labels,
        ips: vec![ip.to_string()],
        node: node.to_string(),
    }
}

/// A distinct address for workload number `n` (up to 65k).
pub fn ip_of(n: usize) -> String {
    format!("10.{}.{}.{}", 100 + n / 65_536, (n / 256) % 256, n % 256)
}

pub async fn upsert(client: &mut Client, workloads: Vec<pb::Workload>) -> anyhow::Result<u64> {
    Ok(client
        .upsert_workloads(pb::UpsertWorkloadsRequest { workloads })
        .await?
        .into_inner()
        .revision)
}

/// A NetworkPolicy in `default` selecting pods labelled `app: <app>`, allowing egress to one
/// CIDR on TCP 443.
/// The seed scenario's `run=nginx` pod.
pub fn nginx_pod() -> pb::Workload {
    workload(
        "default",
        "nginx",
        labels(&[("run", "nginx")]),
        "192.0.2.10",
        "",
    )
}

/// The cluster DNS pod the seed's allow-dns policy selects (by namespace).
pub fn coredns_pod() -> pb::Workload {
    workload(
        "kube-system",
        "coredns",
        labels(&[("k8s-app", "kube-dns")]),
        "192.0.2.53",
        "",
    )
}

/// Registers one pod and returns the revision after it (panics on failure: tests only).
pub async fn add_pod(
    client: &mut Client,
    namespace: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    ip: &str,
    node: &str,
) -> u64 {
    upsert(client, vec![workload(namespace, name, labels, ip, node)])
        .await
        .unwrap()
}

/// Fetches one policy.
pub async fn get_policy(
    client: &mut Client,
    reference: pb::PolicyRef,
) -> Result<pb::PolicyRecord, tonic::Status> {
    client
        .get(pb::GetRequest {
            reference: Some(reference),
        })
        .await
        .map(tonic::Response::into_inner)
}

pub fn network_policy(name: &str, app: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {name}
  namespace: default
spec:
  podSelector:
    matchLabels:
      app: {app}
  policyTypes:
    - Egress
  egress:
    - to:
        - ipBlock:
            cidr: 203.0.113.0/24
      ports:
        - protocol: TCP
          port: 443
"
    )
}

pub fn policy_ref(kind: pb::PolicyKind, namespace: &str, name: &str) -> pb::PolicyRef {
    pb::PolicyRef {
        kind: kind as i32,
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

pub fn np_ref(name: &str) -> pb::PolicyRef {
    policy_ref(pb::PolicyKind::NetworkPolicy, "default", name)
}

pub async fn status(client: &mut Client) -> anyhow::Result<pb::StatusResponse> {
    Ok(client.status(pb::StatusRequest {}).await?.into_inner())
}

// ---- state ----

/// Everything List returns, each collection in a canonical order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct State {
    pub policies: Vec<pb::PolicyRecord>,
    pub workloads: Vec<pb::Workload>,
    pub namespaces: Vec<pb::Namespace>,
    pub allowlists: Vec<pb::Allowlist>,
    pub bindings: Vec<pb::WorkloadBinding>,
}

impl State {
    pub fn sort(&mut self) {
        self.policies.sort_by_key(|p| {
            p.reference
                .as_ref()
                .map(|r| (r.kind, r.namespace.clone(), r.name.clone()))
        });
        self.workloads.sort_by_key(|w| {
            w.key
                .as_ref()
                .map(|k| (k.namespace.clone(), k.name.clone()))
        });
        self.namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        self.allowlists.sort_by(|a, b| a.id.cmp(&b.id));
        self.bindings.sort_by_key(|b| {
            b.workload
                .as_ref()
                .map(|k| (k.namespace.clone(), k.name.clone()))
        });
    }

    /// The state a snapshot's parts describe.
    pub fn from_snapshot(parts: &[pb::Snapshot]) -> State {
        let mut state = State::default();
        for part in parts {
            state.policies.extend(part.policies.iter().cloned());
            state.workloads.extend(part.workloads.iter().cloned());
            state.namespaces.extend(part.namespaces.iter().cloned());
            state.allowlists.extend(part.allowlists.iter().cloned());
            state.bindings.extend(part.bindings.iter().cloned());
        }
        state.sort();
        state
    }
}

/// The whole state via List, and the revision every List answered at (they must agree: call
/// this only while nothing writes).
pub async fn list_all(client: &mut Client) -> anyhow::Result<(u64, State)> {
    let mut state = State::default();
    let mut revisions = Vec::new();
    for collection in [
        pb::Collection::Policies,
        pb::Collection::Workloads,
        pb::Collection::Namespaces,
        pb::Collection::Allowlists,
        pb::Collection::Bindings,
    ] {
        let r = client
            .list(pb::ListRequest {
                collection: collection as i32,
                namespace: String::new(),
            })
            .await?
            .into_inner();
        revisions.push(r.revision);
        state.policies.extend(r.policies);
        state.workloads.extend(r.workloads);
        state.namespaces.extend(r.namespaces);
        state.allowlists.extend(r.allowlists);
        state.bindings.extend(r.bindings);
    }
    if revisions.windows(2).any(|w| w[0] != w[1]) {
        bail!("List answered at different revisions {revisions:?}: something is writing");
    }
    state.sort();
    Ok((revisions[0], state))
}

// ---- watch ----

pub fn watch_request(from_revision: u64) -> pb::WatchRequest {
    pb::WatchRequest {
        from_revision,
        view: pb::View::All as i32,
        node: String::new(),
        snapshot: false,
    }
}

pub async fn watch(
    client: &mut Client,
    request: pb::WatchRequest,
) -> anyhow::Result<Streaming<pb::WatchResponse>> {
    Ok(client.watch(request).await?.into_inner())
}

/// The next message, failing after `PATIENCE` or when the stream ends.
pub async fn next(
    stream: &mut Streaming<pb::WatchResponse>,
) -> anyhow::Result<pb::watch_response::Kind> {
    let message = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .context("no watch message within 30 s")??
        .context("the watch stream ended")?;
    message.kind.context("a watch message without kind")
}

/// What a watch delivered up to and including its `caught_up` marker.
#[derive(Debug, Default)]
pub struct Replay {
    pub snapshot: Vec<pb::Snapshot>,
    pub events: Vec<pb::Event>,
    pub caught_up: u64,
}

/// Reads until `caught_up`.
pub async fn read_until_caught_up(
    stream: &mut Streaming<pb::WatchResponse>,
) -> anyhow::Result<Replay> {
    let mut replay = Replay::default();
    loop {
        match next(stream).await? {
            pb::watch_response::Kind::Snapshot(s) => replay.snapshot.push(s),
            pb::watch_response::Kind::Event(e) => replay.events.push(e),
            pb::watch_response::Kind::CaughtUp(r) => {
                replay.caught_up = r;
                return Ok(replay);
            }
        }
    }
}

/// Checks that `events` have the revisions `first..`, one after another.
pub fn assert_consecutive(events: &[pb::Event], first: u64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.revision,
            first + i as u64,
            "event #{i} has revision {} where {} was due (revisions must have no gaps)",
            e.revision,
            first + i as u64
        );
    }
}

/// The name of a PolicyApplied event's policy, if it is one.
pub fn applied_name(event: &pb::Event) -> Option<&str> {
    match &event.payload {
        Some(pb::event::Payload::PolicyApplied(p)) => p.reference.as_ref().map(|r| r.name.as_str()),
        _ => None,
    }
}

pub fn payload_name(event: &pb::Event) -> &'static str {
    use pb::event::Payload as P;
    match &event.payload {
        Some(P::PolicyApplied(_)) => "PolicyApplied",
        Some(P::PolicyDeleted(_)) => "PolicyDeleted",
        Some(P::NamespaceUpserted(_)) => "NamespaceUpserted",
        Some(P::NamespaceRemoved(_)) => "NamespaceRemoved",
        Some(P::WorkloadUpserted(_)) => "WorkloadUpserted",
        Some(P::WorkloadRemoved(_)) => "WorkloadRemoved",
        Some(P::AllowlistCompiled(_)) => "AllowlistCompiled",
        Some(P::AllowlistReleased(_)) => "AllowlistReleased",
        Some(P::WorkloadBound(_)) => "WorkloadBound",
        Some(P::WorkloadUnbound(_)) => "WorkloadUnbound",
        None => "empty",
    }
}

/// Polls Status until `done` holds.
pub async fn wait_status(
    client: &mut Client,
    what: &str,
    done: impl Fn(&pb::StatusResponse) -> bool,
) -> anyhow::Result<pb::StatusResponse> {
    let started = Instant::now();
    loop {
        let s = status(client).await?;
        if done(&s) {
            return Ok(s);
        }
        if started.elapsed() > PATIENCE {
            bail!("waited 30 s for {what}; last status {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
