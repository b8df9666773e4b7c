//! The programs' own run time on one packet, with `BPF_PROG_TEST_RUN` (through `bpftool prog
//! run ... repeat N`): the kernel times N runs of the pinned program on a crafted skb with one
//! pair of clock reads, so the figure is the program's cost without `bpf_stats_enabled`'s two
//! clock reads per run. Each sample is the average of one `repeat` batch; the median of the
//! samples is reported.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// An Ethernet + IPv4 + TCP (ACK) frame from `src:sport` to `dst:dport`.
pub fn tcp_ack_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0x02; 6]);
    f.extend_from_slice(&[0x04; 6]);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x10; // ACK
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    f.extend_from_slice(&tcp);
    f.resize(60, 0);
    f
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A `struct __sk_buff` context whose `ifindex` (offset 40) is the interface the program is
/// attached to: the programs check that the source pod sits behind that interface.
fn skb_context(ifindex: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// `samples` runs of `repeat` executions of the pinned program on `frame`; (median ns per
/// execution, its return value). `None` when bpftool is not installed.
pub fn median_run_ns(
    program: &Path,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
    samples: usize,
    scratch: &Path,
) -> anyhow::Result<Option<(f64, i64)>> {
    if Command::new("bpftool").arg("version").output().is_err() {
        return Ok(None);
    }
    let data = scratch.join("frame.bin");
    let ctx = scratch.join("ctx.bin");
    std::fs::write(&data, frame)?;
    std::fs::write(&ctx, skb_context(ifindex))?;
    let mut runs = Vec::with_capacity(samples);
    let mut verdict = 0;
    for _ in 0..samples {
        let out = Command::new("bpftool")
            .args(["prog", "run", "pinned"])
            .arg(program)
            .arg("data_in")
            .arg(&data)
            .arg("ctx_in")
            .arg(&ctx)
            .args(["repeat", &repeat.to_string()])
            .output()
            .context("running bpftool prog run")?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        // "Return value: 0, duration (average): 142ns"
        let Some(ns) = text.split("duration (average):").nth(1).and_then(|r| {
            r.trim()
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse::<f64>()
                .ok()
        }) else {
            bail!("unexpected bpftool output: {}", text.trim());
        };
        verdict = text
            .split("Return value:")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1);
        runs.push(ns);
    }
    runs.sort_by(f64::total_cmp);
    Ok(Some((runs[runs.len() / 2], verdict)))
}
