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

fn main() {
    restore_default_sigpipe();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(run());
}

/// A reader that goes away (`dnsfence lab status | head`) ends the program quietly, as it
/// does any Unix tool, instead of a panic in `println!` (Rust ignores SIGPIPE by default).
#[allow(unsafe_code)]
fn restore_default_sigpipe() {
    // SAFETY: called first in `main`, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

async fn run() {
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
