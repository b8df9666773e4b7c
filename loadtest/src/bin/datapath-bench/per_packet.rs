//! The programs' run time per packet as `kernel.bpf_stats_enabled` counts it, as a
//! distribution rather than the average: the pod sends one 64-byte request at a time on an
//! established connection, and the program's `run_time_ns`/`run_cnt` are read before and
//! after each round trip. A round trip in which a program ran exactly once gives one sample
//! of that run's time (the kernel's own figure, including its two `sched_clock()` reads
//! around the program); round trips with more runs (a delayed ACK, a retransmission) are
//! left out.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;
use dnsfence_node_enforcer::Hook;

use super::{fdinfo, field, in_ns, warm_echo_connection};

/// Per-run nanoseconds of (`pod_egress`, `pod_ingress`) over `n` round trips from `pod`.
pub fn samples(pin_dir: &Path, pod: &str, n: usize) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let open = |hook: Hook| -> anyhow::Result<_> {
        let path = pin_dir.join("progs").join(hook.program());
        let info = aya::programs::ProgramInfo::from_pin(&path)
            .with_context(|| format!("program pin {}", path.display()))?;
        Ok(info.fd()?)
    };
    let (egress, ingress) = (open(Hook::PodEgress)?, open(Hook::PodIngress)?);
    in_ns(pod, move || {
        let stats = |fd: &_| -> anyhow::Result<(u64, u64)> {
            let f = fdinfo(fd)?;
            Ok((field(&f, "run_time_ns"), field(&f, "run_cnt")))
        };
        let mut c = warm_echo_connection()?;
        let msg = [0x42u8; 64];
        let mut back = [0u8; 64];
        let (mut out, mut inn) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            let (e0, i0) = (stats(&egress)?, stats(&ingress)?);
            c.write_all(&msg)?;
            c.read_exact(&mut back)?;
            let (e1, i1) = (stats(&egress)?, stats(&ingress)?);
            if e1.1 == e0.1 + 1 {
                out.push(e1.0 - e0.0);
            }
            if i1.1 == i0.1 + 1 {
                inn.push(i1.0 - i0.0);
            }
        }
        Ok((out, inn))
    })
}

/// (median, p90) of `v`, 0 when empty.
pub fn median_p90(v: &mut [u64]) -> (u64, u64) {
    v.sort_unstable();
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    (at(0.5), at(0.9))
}
