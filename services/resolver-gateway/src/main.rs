use clap::Parser;

// Every query allocates a few short-lived buffers; mimalloc's thread-local free lists cost
// about half of glibc malloc's per allocation on this path (see loadtest/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use dnsfence_resolver_gateway::{Config, bind, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = dnsfence_telemetry::init(config.log_format)?;
    config.validate().map_err(anyhow::Error::msg)?;
    let listeners = bind(&config).await?;
    let result = run(config, listeners, dnsfence_telemetry::shutdown_signal()).await;
    // the spans of the last queries still go out
    telemetry.shutdown().await;
    Ok(result?)
}
