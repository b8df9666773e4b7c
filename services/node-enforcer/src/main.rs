//! `dnsfence-node-enforcer`: the per-node enforcer. Everything but flag parsing and
//! telemetry setup lives in the library (`dnsfence_node_enforcer::run`).

use clap::Parser;
use dnsfence_node_enforcer::{Config, bind, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = dnsfence_telemetry::init(config.log_format)?;
    config.validate()?;
    let listeners = bind(&config).await?;
    let result = run(config, listeners, dnsfence_telemetry::shutdown_signal()).await;
    // the spans of the last grant batches still go out
    telemetry.shutdown().await;
    Ok(result?)
}
