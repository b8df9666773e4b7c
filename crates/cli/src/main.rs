//! `dnsfence`: apply policies, register workloads, inspect the store and explain decisions.
//!
//! Exit codes: 0 done, 1 the input or request was rejected, 2 the store could not be reached.

mod args;
mod commands;
mod failure;
mod lab;
mod render;

use clap::Parser;

use crate::failure::Failure;

#[tokio::main]
async fn main() {
    let cli = args::Cli::parse();
    let code = match commands::run(cli).await {
        Ok(()) => 0,
        Err(Failure::Rejected(msg)) => {
            eprintln!("error: {msg}");
            1
        }
        Err(Failure::Unreachable(msg)) => {
            eprintln!("error: {msg}");
            2
        }
    };
    std::process::exit(code);
}
