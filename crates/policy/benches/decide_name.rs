//! The DNS decision on an allowlist the size of the gateway benchmark's (1,000 names and
//! wildcards behind one ApplicationNetworkPolicy): nanoseconds per `decide_name`, for an
//! allowed name under a wildcard, an allowed exact name and a denied name.
//!
//!     cargo bench -p dnsfence-policy --bench decide_name
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use dnsfence_policy::allowlist::DefaultPolicy;
use dnsfence_policy::compile::{Compiler, SourceChange};
use dnsfence_policy::manifest::parse_documents;
use dnsfence_policy::model::{Binding, Workload, WorkloadKey};

const ROUNDS: u32 = 2_000_000;

fn main() {
    let mut names = String::new();
    for i in 0..500 {
        names.push_str(&format!("      - \"svc{i}.allowed.test\"\n"));
        names.push_str(&format!("      - \"*.z{i}.dyn.allowed.test\"\n"));
    }
    let yaml = format!(
        "apiVersion: networking.k8s.aws/v1alpha1\nkind: ApplicationNetworkPolicy\n\
         metadata: {{name: bench, namespace: default}}\nspec:\n  podSelector: {{matchLabels: {{app: bench}}}}\n\
         \x20 policyTypes: [Egress]\n  egress:\n  - to:\n    - domainNames:\n{names}\
         \x20   ports: [{{protocol: TCP, port: 443}}]\n"
    );
    let mut changes: Vec<SourceChange> = parse_documents(&yaml, "default")
        .expect("bench manifest parses")
        .into_iter()
        .map(|o| SourceChange::ApplyPolicy(o.policy))
        .collect();
    let key = WorkloadKey {
        namespace: "default".into(),
        name: "bench".into(),
    };
    changes.push(SourceChange::UpsertWorkload(Workload {
        key: key.clone(),
        labels: [("app".to_string(), "bench".to_string())]
            .into_iter()
            .collect(),
        ips: vec!["192.0.2.10".parse().unwrap()],
        node: "n1".into(),
    }));
    let mut compiler = Compiler::new();
    compiler.apply(changes);
    let Binding::Enforced(id) = &compiler.binding(&key).expect("bound").binding else {
        panic!("the bench pod is not enforced");
    };
    let allowlist = compiler.allowlist(id).expect("compiled");
    println!("decide_name, {ROUNDS} rounds each, 1,000 allowlist entries");
    for (what, name, allowed) in [
        ("wildcard match", "r1u123-beef.z42.dyn.allowed.test", true),
        ("exact match", "svc42.allowed.test", true),
        ("denied", "r1u123.denied.test", false),
    ] {
        assert_eq!(
            allowlist
                .decide_name(name, DefaultPolicy::DefaultAllow)
                .is_allowed(),
            allowed,
            "{name}"
        );
        let started = Instant::now();
        for _ in 0..ROUNDS {
            black_box(allowlist.decide_name(black_box(name), DefaultPolicy::DefaultAllow));
        }
        let ns = started.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
        println!("  {what:<15} {name:<35} {ns:7.1} ns");
    }
}
