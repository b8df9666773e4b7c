//! The programs' own run time on one packet, with `BPF_PROG_TEST_RUN` (through `bpftool prog
//! run ... repeat N`): the kernel times N runs of the pinned program on a crafted skb with one
//! pair of clock reads, so the figure is the program's cost without `bpf_stats_enabled`'s two
//! clock reads per run. Each sample is the average of one `repeat` batch; the median of the
//! samples is reported.

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// An Ethernet + IPv4 or IPv6 + TCP (ACK) frame from `src:sport` to `dst:dport` (both
/// addresses of one family; IPv4 without options, IPv6 without extension headers).
pub fn tcp_ack_frame(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(80);
    f.extend_from_slice(&[0x02; 6]);
    f.extend_from_slice(&[0x04; 6]);
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
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
        }
        (src, dst) => {
            let (src, dst) = (v6(src), v6(dst));
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&20u16.to_be_bytes()); // payload: the TCP header
            ip[6] = 6; // next header: TCP
            ip[7] = 64;
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            f.extend_from_slice(&ip);
        }
    }
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x10; // ACK
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    f.extend_from_slice(&tcp);
    f.resize(f.len().max(60), 0);
    f
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
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

/// One program and the frame to run it on.
pub struct Case<'a> {
    pub program: &'a Path,
    pub frame: Vec<u8>,
}

/// Runs each case once with `repeat` 1,000 (untimed warm-up: the first run of a new flow
/// takes the rule path and creates its conntrack entry), then `samples` rounds of
/// `repeat` executions of every case in turn, so that a burst of background load spreads
/// over the cases instead of landing on one. Per case: (median ns per execution, its
/// return value). `None` when bpftool is not installed.
pub fn median_run_ns(
    cases: &[Case<'_>],
    ifindex: u32,
    repeat: u32,
    samples: usize,
    scratch: &Path,
) -> anyhow::Result<Option<Vec<(f64, i64)>>> {
    if Command::new("bpftool").arg("version").output().is_err() {
        return Ok(None);
    }
    let ctx = scratch.join("ctx.bin");
    std::fs::write(&ctx, skb_context(ifindex))?;
    let mut data = Vec::with_capacity(cases.len());
    for (i, case) in cases.iter().enumerate() {
        let path = scratch.join(format!("frame{i}.bin"));
        std::fs::write(&path, &case.frame)?;
        data.push(path);
    }
    let run = |i: usize, repeat: u32| -> anyhow::Result<(f64, i64)> {
        let out = Command::new("bpftool")
            .args(["prog", "run", "pinned"])
            .arg(cases[i].program)
            .arg("data_in")
            .arg(&data[i])
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
        let verdict = text
            .split("Return value:")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1);
        Ok((ns, verdict))
    };
    for i in 0..cases.len() {
        run(i, 1_000)?;
    }
    let mut runs = vec![Vec::with_capacity(samples); cases.len()];
    let mut verdicts = vec![0; cases.len()];
    for _ in 0..samples {
        for (i, r) in runs.iter_mut().enumerate() {
            let (ns, verdict) = run(i, repeat)?;
            r.push(ns);
            verdicts[i] = verdict;
        }
    }
    Ok(Some(
        runs.into_iter()
            .zip(verdicts)
            .map(|(mut r, v)| {
                r.sort_by(f64::total_cmp);
                (r[r.len() / 2], v)
            })
            .collect(),
    ))
}
