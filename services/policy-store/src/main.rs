use clap::Parser;
use dnsfence_policy_store::{Config, bind, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = dnsfence_telemetry::init(config.log_format)?;
    let listeners = bind(&config).await?;
    let result = run(config, listeners, dnsfence_telemetry::shutdown_signal()).await;
    telemetry.shutdown().await;
    Ok(result?)
}
