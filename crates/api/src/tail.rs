//! Tailing the store's derived view: what gateways and enforcers consume.
//!
//! [`tail_derived`] keeps one `Watch` open, decodes it into domain types and hands a consumer
//! an ordered stream of [`TailUpdate`]s. When the stream breaks (store restarted, network
//! gone) it reconnects with jittered backoff and resumes after the last revision it delivered,
//! so a consumer sees every derived event exactly once, or a [`TailUpdate::Reset`] that
//! replaces its whole state when the store compacted past that revision.

use std::time::Duration;

use dnsfence_policy::allowlist::Allowlist;
use dnsfence_policy::model::{Event, WorkloadBinding};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tracing::{Instrument, debug, info, warn};

use crate::error::ApiError;
use crate::store::v1 as pb;
use crate::store::v1::policy_store_client::PolicyStoreClient;
use crate::store::v1::watch_response::Kind;
use crate::trace::TraceContext;
use crate::transport::Backoff;

/// The derived state at one revision: everything a consumer needs to start over.
#[derive(Debug, Clone, Default)]
pub struct DerivedState {
    pub revision: u64,
    pub allowlists: Vec<Allowlist>,
    pub bindings: Vec<WorkloadBinding>,
}

#[derive(Debug, Clone)]
pub enum TailUpdate {
    /// Replace everything with this state; events after `revision` follow.
    Reset(DerivedState),
    Event(Event),
    /// Everything the store had when this watch began has been delivered. Sent after every
    /// (re)connection; the first one means the consumer may report ready.
    CaughtUp(u64),
    /// The watch broke; the tail is reconnecting. Consumers keep their state meanwhile.
    Disconnected(String),
}

/// What to tail and from where.
#[derive(Debug, Clone)]
pub struct TailConfig {
    /// Only bindings of this node (empty: all nodes).
    pub node: String,
    /// The last revision the consumer already applied (0: none, start from a snapshot).
    pub from_revision: u64,
    /// Deadline for opening the watch; the stream itself has none.
    pub connect_timeout: Duration,
}

/// Starts tailing on `channel`; updates arrive on the returned receiver until it is dropped.
pub fn tail_derived(channel: Channel, config: TailConfig) -> mpsc::Receiver<TailUpdate> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(run(channel, config, tx));
    rx
}

async fn run(channel: Channel, config: TailConfig, tx: mpsc::Sender<TailUpdate>) {
    let mut client = PolicyStoreClient::with_interceptor(channel, TraceContext)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let mut last = config.from_revision;
    let mut backoff = Backoff::default();
    loop {
        let request = pb::WatchRequest {
            from_revision: last,
            view: pb::View::Derived as i32,
            node: config.node.clone(),
            snapshot: last == 0,
        };
        let mut req = tonic::Request::new(request);
        req.set_timeout(Duration::from_secs(24 * 3600 * 365));
        // Opening the watch is traced (a root span per connection); the stream is not.
        let span = tracing::info_span!(
            target: dnsfence_telemetry::OTEL_TARGET,
            "store watch",
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = "dnsfence.store.v1.PolicyStore",
            rpc.method = "Watch",
            dnsfence.node = %config.node,
            dnsfence.revision = last,
        );
        let opened = tokio::time::timeout(config.connect_timeout, client.watch(req))
            .instrument(span)
            .await;
        let reason = match opened {
            Err(_) => format!(
                "opening the watch timed out after {:?}",
                config.connect_timeout
            ),
            Ok(Err(status)) => format!("opening the watch failed: {}", status.message()),
            Ok(Ok(response)) => {
                let mut stream = response.into_inner();
                match follow(&mut stream, &mut last, &tx, &mut backoff).await {
                    Ok(()) => return,
                    Err(reason) => reason,
                }
            }
        };
        if tx.is_closed() {
            return;
        }
        warn!(%reason, revision = last, "store watch interrupted; reconnecting");
        if tx.send(TailUpdate::Disconnected(reason)).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Reads one watch stream. `Ok(())` means the consumer went away; `Err` the stream broke.
async fn follow(
    stream: &mut tonic::Streaming<pb::WatchResponse>,
    last: &mut u64,
    tx: &mpsc::Sender<TailUpdate>,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let mut partial: Option<DerivedState> = None;
    loop {
        let message = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Err("the store closed the watch".into()),
            Err(status) => return Err(format!("watch stream: {}", status.message())),
        };
        let update = match message.kind {
            None => continue,
            Some(Kind::Snapshot(part)) => {
                let state = partial.get_or_insert_with(DerivedState::default);
                let complete = part.last;
                add_snapshot_part(state, part).map_err(|e| format!("bad snapshot: {e}"))?;
                if !complete {
                    continue;
                }
                let Some(state) = partial.take() else {
                    continue;
                };
                *last = state.revision;
                debug!(
                    revision = state.revision,
                    allowlists = state.allowlists.len(),
                    bindings = state.bindings.len(),
                    "store snapshot"
                );
                TailUpdate::Reset(state)
            }
            Some(Kind::Event(event)) => {
                let event = Event::try_from(event).map_err(|e| format!("bad event: {e}"))?;
                if event.revision <= *last {
                    continue;
                }
                *last = event.revision;
                TailUpdate::Event(event)
            }
            Some(Kind::CaughtUp(revision)) => {
                backoff.reset();
                info!(revision, "caught up with the store");
                TailUpdate::CaughtUp(revision)
            }
        };
        if tx.send(update).await.is_err() {
            return Ok(());
        }
    }
}

fn add_snapshot_part(state: &mut DerivedState, part: pb::Snapshot) -> Result<(), ApiError> {
    for a in part.allowlists {
        state.allowlists.push(Allowlist::try_from(a)?);
    }
    for b in part.bindings {
        state.bindings.push(WorkloadBinding::try_from(b)?);
    }
    state.revision = part.revision;
    Ok(())
}
