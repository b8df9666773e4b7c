//! Shared generators for the benchmarks.

use std::net::Ipv4Addr;

use dnsfence_policy::model::{Workload, WorkloadKey};

/// Pod `i` of a synthetic cluster: spread over `namespaces`, one `app` label out of `apps`,
/// a unique 10.0.0.0/8 address, one of 50 nodes.
pub fn synthetic_workload(i: usize, namespaces: usize, apps: usize) -> Workload {
    let ns = i % namespaces;
    let ip = Ipv4Addr::from(0x0a00_0000u32 + i as u32 + 1);
    Workload {
        key: WorkloadKey {
            namespace: format!("ns-{ns}"),
            name: format!("pod-{i}"),
        },
        labels: [(
            "app".to_string(),
            format!("app-{}", (i / namespaces) % apps),
        )]
        .into_iter()
        .collect(),
        ips: vec![ip.into()],
        node: format!("node-{}", i % 50),
    }
}
