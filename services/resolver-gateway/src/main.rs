use clap::Parser;

// Every query allocates a few short-lived buffers; mimalloc's thread-local free lists cost
// about half of glibc malloc's per allocation on this path (see loadtest/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use dnsfence_resolver_gateway::{Config, bind, run};

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.validate().map_err(anyhow::Error::msg)?;
    let mut builder = match config.worker_threads {
        // One thread: the current-thread scheduler, without work stealing and its
        // bookkeeping per task poll (loadtest/README.md).
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()?.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let telemetry = dnsfence_telemetry::init(config.log_format)?;
    let listeners = bind(&config).await?;
    let result = run(config, listeners, dnsfence_telemetry::shutdown_signal()).await;
    // the spans of the last queries still go out
    telemetry.shutdown().await;
    Ok(result?)
}
