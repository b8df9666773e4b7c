//! Compiles the C datapath in `bpf/` into BPF objects in OUT_DIR, which the loader
//! embeds with `aya::include_bytes_aligned!`. clang-19 from Debian is the compiler
//! (see DESIGN.md, "Facts about this machine's toolchain"): no nightly Rust or
//! bpf-linker is needed.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, exit},
};

/// The compiler binary; `DNSFENCE_BPF_CLANG` overrides it (e.g. a newer clang).
fn clang() -> String {
    println!("cargo:rerun-if-env-changed=DNSFENCE_BPF_CLANG");
    env::var("DNSFENCE_BPF_CLANG").unwrap_or_else(|_| "clang-19".to_owned())
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    exit(1)
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let bpf_dir = manifest.join("../../bpf");
    let include = bpf_dir.join("include");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| fail("OUT_DIR is not set")));
    let clang = clang();

    println!(
        "cargo:rerun-if-changed={}",
        include.join("dnsfence_maps.h").display()
    );
    let sources = ["dnsfence.c"];
    for src in sources {
        let path = bpf_dir.join(src);
        println!("cargo:rerun-if-changed={}", path.display());
        compile(
            &clang,
            &path,
            &include,
            &out.join(Path::new(src).with_extension("o")),
        );
    }
}

fn compile(clang: &str, src: &Path, include: &Path, obj: &Path) {
    let status = Command::new(clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg(format!("-I{}", include.display()))
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(obj)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!(
            "{clang} failed to compile {} ({s})",
            src.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fail(&format!(
            "{clang} not found: the eBPF datapath needs it; install it with `apt-get install clang-19 libbpf-dev`"
        )),
        Err(e) => fail(&format!("cannot run {clang}: {e}")),
    }
}
