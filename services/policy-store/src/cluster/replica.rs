//! A follower: copies the leader's log into its own by the leader's `Watch` (view All), so it
//! serves `Watch` to gateways and enforcers from its copy and can take over as leader with the
//! state already built.
//!
//! The copy keeps the leader's revisions. A follower that starts, or follows a leader it did
//! not follow before, begins with a snapshot of the leader's state (its own log may hold
//! events a deposed leader wrote that the new leader never had); later reconnections to the
//! same leader resume after the last copied revision. A gap or an event that does not apply
//! also ends in a fresh snapshot.

use std::sync::Arc;
use std::time::Duration;

use dnsfence_api::store::v1 as pb;
use dnsfence_api::store::v1::policy_store_client::PolicyStoreClient;
use dnsfence_api::store::v1::watch_response::Kind;
use dnsfence_api::{Backoff, ClientTls};
use dnsfence_policy::model::Event;
use futures::StreamExt;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::codec;
use crate::error::StoreError;
use crate::metrics::StoreMetrics;
use crate::role::Peer;
use crate::store::Store;

/// Deadline for connecting and opening the Watch; the stream itself has none.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Events copied per store write at most.
const BATCH: usize = 1024;
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The follower's progress, for readiness and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaState {
    /// The leader whose history the local log continues (`None`: not yet in sync).
    pub synced_with: Option<String>,
    /// Set once a Watch on the current leader delivered everything the leader had.
    pub caught_up: bool,
}

/// Copies the log of whichever leader `leader` names, until dropped. Progress is published
/// on `progress`.
pub async fn follow(
    store: Arc<Store>,
    mut leader: watch::Receiver<Option<Peer>>,
    tls: ClientTls,
    metrics: Arc<StoreMetrics>,
    progress: watch::Sender<ReplicaState>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let peer = leader.borrow_and_update().clone();
        let Some(peer) = peer else {
            progress.send_modify(|p| p.caught_up = false);
            if leader.changed().await.is_err() {
                return;
            }
            continue;
        };
        let span = info_span!("replicate", leader = %peer);
        let outcome = tokio::select! {
            r = session(&store, &peer, &tls, &metrics, &progress, &mut backoff).instrument(span) => r,
            changed = leader.changed() => {
                if changed.is_err() {
                    return;
                }
                Err(SessionEnd::Retry("the leader changed".into()))
            }
        };
        metrics.replica_connected.set(0);
        progress.send_modify(|p| p.caught_up = false);
        match outcome {
            Ok(()) => {}
            Err(SessionEnd::Retry(reason)) => {
                warn!(leader = %peer, %reason, "replication interrupted; reconnecting");
            }
            Err(SessionEnd::Resync(reason)) => {
                warn!(leader = %peer, %reason, "replication broke; starting over from a snapshot");
                progress.send_modify(|p| p.synced_with = None);
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            changed = leader.changed() => if changed.is_err() { return },
        }
    }
}

#[derive(Debug)]
enum SessionEnd {
    /// Reconnect and resume.
    Retry(String),
    /// Reconnect and start over from a snapshot.
    Resync(String),
}

fn retry<E: std::fmt::Display>(e: E) -> SessionEnd {
    SessionEnd::Retry(e.to_string())
}

async fn session(
    store: &Arc<Store>,
    peer: &Peer,
    tls: &ClientTls,
    metrics: &StoreMetrics,
    progress: &watch::Sender<ReplicaState>,
    backoff: &mut Backoff,
) -> Result<(), SessionEnd> {
    let channel = dnsfence_api::connect(&peer.address, tls, CONNECT_TIMEOUT)
        .await
        .map_err(retry)?;
    let mut client = PolicyStoreClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let fresh = progress.borrow().synced_with.as_deref() != Some(peer.identity.as_str());
    let from_revision = store.read().await.revision;
    let request = pb::WatchRequest {
        from_revision,
        view: pb::View::All as i32,
        node: String::new(),
        snapshot: fresh,
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, client.watch(request))
        .await
        .map_err(|_| retry("opening the Watch timed out"))?
        .map_err(retry)?
        .into_inner();
    metrics.replica_connected.set(1);
    info!(from_revision, snapshot = fresh, "replicating");
    let mut parts: Vec<pb::Snapshot> = Vec::new();
    let mut chunks = stream.ready_chunks(BATCH);
    while let Some(items) = chunks.next().await {
        let mut events: Vec<Event> = Vec::new();
        for item in items {
            let kind = item.map_err(retry)?.kind;
            match kind {
                Some(Kind::Event(e)) => {
                    let revision = e.revision;
                    let event = Event::try_from(e).map_err(|e| {
                        SessionEnd::Resync(format!("event {revision} is unreadable: {e}"))
                    })?;
                    events.push(event);
                }
                Some(Kind::Snapshot(part)) => {
                    copy(store, metrics, std::mem::take(&mut events)).await?;
                    let last = part.last;
                    parts.push(part);
                    if last {
                        let revision = adopt(store, std::mem::take(&mut parts))
                            .await
                            .map_err(|e| SessionEnd::Resync(e.to_string()))?;
                        metrics.replica_resyncs.inc();
                        info!(revision, "adopted the leader's snapshot");
                        progress.send_modify(|p| p.synced_with = Some(peer.identity.clone()));
                    }
                }
                Some(Kind::CaughtUp(revision)) => {
                    copy(store, metrics, std::mem::take(&mut events)).await?;
                    if progress.borrow().synced_with.as_deref() != Some(peer.identity.as_str()) {
                        // Resumed without a snapshot: the log continued this leader's already.
                        progress.send_modify(|p| p.synced_with = Some(peer.identity.clone()));
                    }
                    progress.send_modify(|p| p.caught_up = true);
                    backoff.reset();
                    info!(revision, "caught up with the leader");
                }
                None => debug!("empty Watch message"),
            }
        }
        copy(store, metrics, events).await?;
    }
    Err(retry("the leader ended the Watch"))
}

async fn copy(
    store: &Arc<Store>,
    metrics: &StoreMetrics,
    events: Vec<Event>,
) -> Result<(), SessionEnd> {
    if events.is_empty() {
        return Ok(());
    }
    let count = events.len() as u64;
    match store.replicate(events).await {
        Ok(_) => {
            metrics.replicated_events.inc_by(count);
            Ok(())
        }
        Err(e @ StoreError::Replication(_)) => Err(SessionEnd::Resync(e.to_string())),
        Err(e) => Err(retry(e)),
    }
}

/// Joins the parts of a snapshot and makes it this store's state.
async fn adopt(store: &Arc<Store>, parts: Vec<pb::Snapshot>) -> Result<u64, StoreError> {
    let mut whole = pb::Snapshot {
        last: true,
        ..Default::default()
    };
    for part in parts {
        whole.revision = part.revision;
        whole.policies.extend(part.policies);
        whole.namespaces.extend(part.namespaces);
        whole.workloads.extend(part.workloads);
        whole.allowlists.extend(part.allowlists);
        whole.bindings.extend(part.bindings);
    }
    let revision = whole.revision;
    let content = codec::snapshot_from_proto(whole)
        .map_err(|reason| StoreError::CorruptSnapshot { revision, reason })?;
    store.install_snapshot(content).await
}
