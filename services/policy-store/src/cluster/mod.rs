//! Cluster mode: the store learns policies, pods and namespaces from the Kubernetes API.
//!
//! One replica writes: the one holding the Lease ([`lease`]) runs the [`controller`]. The
//! others are followers ([`replica`]) that copy the leader's log and serve `Watch` from their
//! copy, ready to take over. [`run`] is the loop that moves a replica between the two roles.

pub mod controller;
pub mod convert;
pub mod lease;
pub mod replica;
pub mod resources;
pub mod status;
pub mod sync;

use dnsfence_api::ClientTls;
use kube::Client;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::ClusterConfig;
use crate::error::StoreError;
use crate::metrics::StoreMetrics;
use crate::role::{Peer, Role};
use crate::store::Store;
use controller::{Controller, ControllerConfig};
use lease::{LeaseElector, Standing};
use replica::ReplicaState;

/// How far a new leader moves its log's numbering past the revision the previous leader last
/// published in the Lease: more than any store can write between two renewals. Revisions are
/// u64, so this costs nothing.
pub const TAKEOVER_REVISION_GAP: u64 = 1 << 32;

/// Whether this replica is in sync with the world: the leader once the controller listed
/// every kind into the store, a follower once it caught up with the leader.
#[derive(Debug, Clone)]
pub struct Readiness {
    leader_synced: watch::Receiver<bool>,
    replica: watch::Receiver<ReplicaState>,
    role: watch::Receiver<Role>,
}

impl Readiness {
    pub fn new(
        leader_synced: watch::Receiver<bool>,
        replica: watch::Receiver<ReplicaState>,
        role: watch::Receiver<Role>,
    ) -> Readiness {
        Readiness {
            leader_synced,
            replica,
            role,
        }
    }

    pub fn ready(&self) -> bool {
        match &*self.role.borrow() {
            Role::Standalone => true,
            Role::Leader => *self.leader_synced.borrow(),
            Role::Follower { .. } => self.replica.borrow().caught_up,
        }
    }
}

/// Everything cluster mode needs besides the store.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub cluster: ClusterConfig,
    pub namespace: String,
    pub identity: String,
    pub peer_tls: ClientTls,
}

impl ClusterSettings {
    pub fn from_config(config: &crate::Config) -> Result<ClusterSettings, StoreError> {
        Ok(ClusterSettings {
            cluster: config.cluster.clone(),
            namespace: config
                .cluster
                .resolved_lease_namespace()
                .map_err(StoreError::Config)?,
            identity: config
                .cluster
                .resolved_identity()
                .map_err(StoreError::Config)?,
            peer_tls: config.peer_tls.clone(),
        })
    }
}

/// The running follower.
struct Following {
    task: JoinHandle<()>,
    leader: watch::Sender<Option<Peer>>,
}

/// The running leader.
struct Leading {
    task: JoinHandle<()>,
    renewed: Instant,
}

/// Runs the election and the role it gives until `stop` turns true; releases the Lease when
/// leading at that point.
pub async fn run(
    store: Arc<Store>,
    client: Client,
    settings: ClusterSettings,
    metrics: Arc<StoreMetrics>,
    mut stop: watch::Receiver<bool>,
    readiness: watch::Sender<Option<Readiness>>,
) -> Result<(), StoreError> {
    let duration = settings.cluster.lease_duration;
    // client-go's proportions: renew every third, give up after two thirds without renewal.
    let renew_every = duration / 3;
    let renew_deadline = duration * 2 / 3;
    let retry_every = duration / 5;
    let mut elector = LeaseElector::new(
        client.clone(),
        &settings.namespace,
        &settings.cluster.lease_name,
        &settings.identity,
        duration,
    );
    let (leader_synced_tx, leader_synced) = watch::channel(false);
    let (replica_tx, replica_rx) = watch::channel(ReplicaState::default());
    readiness.send_replace(Some(Readiness {
        leader_synced,
        replica: replica_rx,
        role: store.subscribe_role(),
    }));
    info!(identity = %settings.identity, lease = %settings.cluster.lease_name, namespace = %settings.namespace, "cluster mode: joining the election");
    let mut leading: Option<Leading> = None;
    let mut following: Option<Following> = None;
    loop {
        let deadline = leading.as_ref().map(|l| l.renewed + renew_deadline);
        let head = store.log().head();
        let round = tokio::time::timeout(renew_every, elector.try_acquire_or_renew(head));
        tokio::select! {
            outcome = round => match outcome {
                Ok(Ok(Standing::Leading { acquired })) => {
                    if let Some(l) = leading.as_mut() {
                        l.renewed = Instant::now();
                    } else {
                        if let Some(f) = following.take() {
                            f.task.abort();
                            let _ = f.task.await;
                        }
                        if let Some(a) = &acquired
                            && a.previous_holder.as_deref() != Some(settings.identity.as_str())
                        {
                            // Consumers may have seen revisions of the previous leader this
                            // replica never copied: move past them.
                            let target = a.previous_revision.max(store.log().head()) + TAKEOVER_REVISION_GAP;
                            if let Err(e) = store.advance_to(target).await {
                                warn!(error = %e, "could not move the log past the previous leader's");
                                return Err(e);
                            }
                        }
                        leading = Some(start_leader(&store, &client, &settings, &metrics, &leader_synced_tx));
                    }
                }
                Ok(Ok(Standing::Following { holder })) => {
                    if leading.is_some() {
                        warn!(holder = ?holder, "lost the Lease: stepping down");
                    }
                    step_down(&mut leading, &metrics).await;
                    let peer = holder
                        .filter(|h| *h != settings.identity)
                        .map(|h| Peer {
                            address: settings.cluster.peer_address(&h, &settings.namespace),
                            identity: h,
                        });
                    store.set_role(Role::Follower { leader: peer.clone() });
                    match &following {
                        Some(f) => {
                            f.leader.send_if_modified(|current| {
                                let changed = *current != peer;
                                *current = peer.clone();
                                changed
                            });
                        }
                        None => {
                            following = Some(start_follower(&store, peer, &settings, &metrics, &replica_tx));
                        }
                    }
                }
                Ok(Err(e)) => warn!(error = %e, "the Lease could not be read or written"),
                Err(_) => warn!("the Lease round timed out"),
            },
            () = sleep_until(deadline) => {
                warn!("could not renew the Lease in time: stepping down");
                step_down(&mut leading, &metrics).await;
                store.set_role(Role::Follower { leader: None });
            }
            () = stopped(&mut stop) => break,
        }
        if leading.is_none() && following.is_none() {
            following = Some(start_follower(
                &store,
                None,
                &settings,
                &metrics,
                &replica_tx,
            ));
        }
        let wait = if leading.is_some() {
            renew_every
        } else {
            retry_every
        };
        let deadline = leading.as_ref().map(|l| l.renewed + renew_deadline);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = sleep_until(deadline) => {}
            () = stopped(&mut stop) => break,
        }
    }
    if let Some(f) = following.take() {
        f.task.abort();
    }
    if leading.is_some() {
        step_down(&mut leading, &metrics).await;
        let head = store.log().head();
        match tokio::time::timeout(renew_every, elector.release(head)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "releasing the Lease failed; it expires instead"),
            Err(_) => warn!("releasing the Lease timed out; it expires instead"),
        }
    }
    Ok(())
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn start_leader(
    store: &Arc<Store>,
    client: &Client,
    settings: &ClusterSettings,
    metrics: &Arc<StoreMetrics>,
    synced: &watch::Sender<bool>,
) -> Leading {
    store.set_role(Role::Leader);
    metrics.leader.set(1);
    metrics.leader_transitions.inc();
    synced.send_replace(false);
    let controller = Controller::new(
        client.clone(),
        Arc::clone(store),
        Arc::clone(metrics),
        ControllerConfig {
            discovery_interval: settings.cluster.discovery_interval,
            status_interval: settings.cluster.status_interval,
        },
    );
    let mut ready = controller.ready();
    let synced = synced.clone();
    let task = tokio::spawn(async move {
        let forward = async move {
            if ready.wait_for(|r| *r).await.is_ok() {
                synced.send_replace(true);
            }
            std::future::pending::<()>().await;
        };
        tokio::join!(controller.run(), forward);
    });
    Leading {
        task,
        renewed: Instant::now(),
    }
}

async fn step_down(leading: &mut Option<Leading>, metrics: &StoreMetrics) {
    if let Some(l) = leading.take() {
        l.task.abort();
        let _ = l.task.await;
        metrics.leader.set(0);
    }
}

fn start_follower(
    store: &Arc<Store>,
    peer: Option<Peer>,
    settings: &ClusterSettings,
    metrics: &Arc<StoreMetrics>,
    progress: &watch::Sender<ReplicaState>,
) -> Following {
    let (leader, leader_rx) = watch::channel(peer);
    let task = tokio::spawn(replica::follow(
        Arc::clone(store),
        leader_rx,
        settings.peer_tls.clone(),
        Arc::clone(metrics),
        progress.clone(),
    ));
    Following { task, leader }
}

/// Standalone `--follow`: copies the given store's log until stopped.
pub fn spawn_standalone_follower(
    store: &Arc<Store>,
    address: &str,
    tls: &ClientTls,
    metrics: &Arc<StoreMetrics>,
    progress: watch::Sender<ReplicaState>,
) -> JoinHandle<()> {
    let peer = Peer {
        identity: address.to_string(),
        address: address.to_string(),
    };
    let (leader, leader_rx) = watch::channel(Some(peer));
    let store = Arc::clone(store);
    let tls = tls.clone();
    let metrics = Arc::clone(metrics);
    tokio::spawn(async move {
        // Held for as long as the follower runs: a closed channel would end it.
        let _leader = leader;
        replica::follow(store, leader_rx, tls, metrics, progress).await;
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    /// The TLS stack the Kubernetes client builds on is usable in this binary (one rustls
    /// crypto provider, compiled in): a client for an https API server can be built. Nothing
    /// is contacted.
    #[tokio::test]
    async fn a_client_for_an_https_api_server_builds() {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context: {cluster: c, user: u, namespace: dnsfence}\ncurrent-context: x\n",
        )
        .unwrap();
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        assert_eq!(client.default_namespace(), "dnsfence");
    }
}
