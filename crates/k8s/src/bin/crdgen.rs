//! Writes the CRDs generated from `dnsfence-k8s`'s types into `deploy/crds/`, or with
//! `--check` only reports which committed files differ from them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// Generate deploy/crds/*.yaml from the Rust types in crates/k8s.
#[derive(Debug, Parser)]
#[command(name = "crdgen", version, about, long_about = None)]
struct Args {
    /// Directory to write the CRD files into (default: the workspace's deploy/crds).
    #[arg(long, env = "DNSFENCE_CRD_DIR")]
    out_dir: Option<PathBuf>,

    /// Write nothing; exit with status 1 if a file is missing or differs.
    #[arg(long)]
    check: bool,
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let out_dir = args.out_dir.unwrap_or_else(default_out_dir);
    let files = dnsfence_k8s::crd_files().context("generating the CRDs")?;
    let mut stale = 0;
    for file in &files {
        let path = out_dir.join(&file.file_name);
        let current = std::fs::read_to_string(&path).ok();
        if current.as_deref() == Some(file.yaml.as_str()) {
            println!("{}: up to date", path.display());
            continue;
        }
        if args.check {
            println!("{}: differs from the types", path.display());
            stale += 1;
            continue;
        }
        std::fs::create_dir_all(&out_dir)
            .with_context(|| format!("creating {}", out_dir.display()))?;
        std::fs::write(&path, &file.yaml).with_context(|| format!("writing {}", path.display()))?;
        println!("{}: written", path.display());
    }
    if stale > 0 {
        println!("run `cargo run -p dnsfence-k8s --bin crdgen` to regenerate");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `deploy/crds` of the workspace this crate was built in (the crate is `crates/k8s`).
fn default_out_dir() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(manifest_dir)
        .join("deploy/crds")
}
