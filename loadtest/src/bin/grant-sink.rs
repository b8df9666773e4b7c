//! A grant subscriber for benchmarks without a datapath: subscribes to a gateway's `Grants`
//! stream as a node's enforcer would, keeps every grant in a map keyed like the eBPF grants
//! map (pod, destination), acks each batch, and reconnects with backoff. At exit (SIGTERM or
//! ctrl-c) it prints how many batches and grants it took.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use dnsfence_api::grants::v1 as pb;
use dnsfence_api::grants::v1::grants_client::GrantsClient;
use dnsfence_api::{Backoff, ClientTls, Grant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, Parser)]
#[command(
    name = "grant-sink",
    about = "Subscribe to a gateway's grants, store and ack them"
)]
struct Args {
    /// The gateway's gRPC address.
    #[arg(
        long,
        env = "DNSFENCE_GATEWAY",
        default_value = "http://127.0.0.1:50052"
    )]
    gateway: String,
    /// The node name to subscribe as.
    #[arg(long, env = "DNSFENCE_NODE_NAME", default_value = "node-1")]
    node: String,
}

#[derive(Debug, Default)]
struct Totals {
    batches: u64,
    grants: u64,
    held: HashMap<(IpAddr, IpAddr), Instant>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut totals = Totals::default();
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
    let stop = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            result = subscribe(&args, &mut totals) => {
                if let Err(error) = result {
                    eprintln!("grant-sink: {error:#}; reconnecting");
                } else {
                    backoff.reset();
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            _ = &mut stop => break,
            _ = term.recv() => break,
        }
    }
    println!(
        "grant-sink: {} batches, {} grants, {} (pod, destination) pairs held",
        totals.batches,
        totals.grants,
        totals.held.len()
    );
    Ok(())
}

async fn subscribe(args: &Args, totals: &mut Totals) -> anyhow::Result<()> {
    let channel =
        dnsfence_api::connect(&args.gateway, &ClientTls::default(), Duration::from_secs(2))
            .await
            .context("connecting")?;
    let mut client = GrantsClient::new(channel);
    let (tx, rx) = mpsc::channel(4096);
    tx.send(pb::SubscribeRequest {
        kind: Some(pb::subscribe_request::Kind::Hello(pb::Hello {
            node: args.node.clone(),
        })),
    })
    .await?;
    let mut batches = client
        .subscribe(ReceiverStream::new(rx))
        .await
        .context("subscribing")?
        .into_inner();
    eprintln!(
        "grant-sink: subscribed to {} as {}",
        args.gateway, args.node
    );
    while let Some(batch) = batches.message().await? {
        let now = Instant::now();
        for grant in batch.grants {
            let grant = Grant::try_from(grant)?;
            totals
                .held
                .insert((grant.pod_ip, grant.destination_ip), now + grant.lifetime);
            totals.grants += 1;
        }
        totals.batches += 1;
        tx.send(pb::SubscribeRequest {
            kind: Some(pb::subscribe_request::Kind::Ack(pb::Ack { seq: batch.seq })),
        })
        .await?;
    }
    anyhow::bail!("the gateway ended the stream")
}
