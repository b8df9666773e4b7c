//! Flow logs: the ring buffer's drop and audit records as one JSON line each on stdout
//! (`--event-logs`, the EKS `networkPolicyEventLogs: Enabled`), in the schema the gateway's
//! DNS decision log uses ([`dnsfence_telemetry::jsonlog`]), so one `jq` filter reads both.
//!
//! The program already rate-limits records per pod; the reader writes at most
//! `--event-log-rate` lines a second on top and counts the rest
//! (`dnsfence_enforcer_flow_log_lines_dropped_total`). A reader thread blocks on the ring
//! buffer.

use std::{
    net::IpAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use dnsfence_policy::{
    allowlist::{Cause, Destination},
    ports::Protocol,
};
use dnsfence_telemetry::jsonlog::{LineLog, LogLine, rfc3339};

use crate::{Direction, EventReader, FlowEvent, Verdict, clock, node::Directory};

/// The IANA protocol number's name, as the decision log writes it.
fn protocol_name(number: u8) -> &'static str {
    match number {
        1 => "ICMP",
        6 => "TCP",
        17 => "UDP",
        58 => "ICMPv6",
        132 => "SCTP",
        _ => "other",
    }
}

/// (policy, rule) behind the verdict on `peer:port` for the pod's allowlist: the rule that
/// matched, or the policies that isolate the pod when none allowed it.
fn cause(
    directory: &Directory,
    event: &FlowEvent,
    peer: IpAddr,
    port: u16,
) -> (Option<String>, Option<String>) {
    let Some(allowlist) = directory.allowlists.get(&event.policy_id) else {
        return (None, None);
    };
    let protocol = match event.proto {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    };
    let decision = allowlist.decide(
        Destination::Address(peer),
        protocol.map(|p| (p, port)),
        directory.default,
    );
    let rule = match &decision.cause {
        Cause::Rule { origin, .. } => Some(format!("egress[{}]", origin.rule_index)),
        _ => None,
    };
    (decision.cause.policies(), rule)
}

/// The flow-log line for `event`, naming the pod, its allowlist and the policy behind the
/// verdict through `directory`.
pub fn flow_line(
    event: &FlowEvent,
    directory: &Directory,
    now_boot_ns: u64,
    now: SystemTime,
) -> LogLine {
    let age = Duration::from_nanos(now_boot_ns.saturating_sub(event.boot_ns));
    let time = now.checked_sub(age).unwrap_or(now);
    let workload = directory.pods.get(&event.pod);
    // From the packet's point of view: egress goes pod → peer, ingress peer → pod.
    let (src, dst, port) = match event.direction {
        Direction::Egress => (event.pod, event.peer, event.peer_port),
        Direction::Ingress => (event.peer, event.pod, event.pod_port),
    };
    let (policy, rule) = match event.direction {
        Direction::Egress => cause(directory, event, event.peer, event.peer_port),
        Direction::Ingress => (None, None),
    };
    LogLine {
        ts: rfc3339(time),
        service: "node-enforcer",
        kind: "flow",
        node: Some(directory.node.clone()).filter(|n| !n.is_empty()),
        namespace: workload.map(|k| k.namespace.clone()),
        pod: workload.map(|k| k.name.clone()),
        src: Some(src),
        dst: Some(dst),
        port: Some(port),
        proto: Some(protocol_name(event.proto)),
        direction: match event.direction {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        },
        verdict: match event.verdict {
            Verdict::Drop => "deny",
            Verdict::Pass => "audit",
        },
        reason: event.reason.map_or("unknown", |r| r.name()).to_owned(),
        policy,
        rule,
        allowlist: directory
            .policies
            .get(&event.policy_id)
            .map(|id| id.0.clone()),
        ..LogLine::default()
    }
}

/// Starts the reader thread; it stops when `stop` is set (within a poll interval).
pub fn start(
    mut reader: EventReader,
    directory: Arc<RwLock<Directory>>,
    log: LineLog,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("flow-logs".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match reader.next_timeout(Duration::from_millis(200)) {
                    Ok(Some(event)) => {
                        if !log.admit() {
                            continue;
                        }
                        let line = match directory.read() {
                            Ok(d) => flow_line(
                                &event,
                                &d,
                                clock::boot_time_ns().unwrap_or(event.boot_ns),
                                SystemTime::now(),
                            ),
                            Err(_) => continue,
                        };
                        log.write(&line);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "reading flow events failed");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::UNIX_EPOCH;

    use dnsfence_policy::allowlist::{Allowlist, DefaultPolicy};
    use dnsfence_policy::model::{
        Action, AllowlistId, Destinations, PolicyKind, PolicyRef, Rule, RuleKind, RuleOrigin, Tier,
        WorkloadKey,
    };

    use super::*;
    use crate::Reason;

    fn anp(name: &str) -> PolicyRef {
        PolicyRef {
            kind: PolicyKind::ApplicationNetworkPolicy,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_drop_names_pod_destination_and_the_isolating_policy() {
        let mut d = Directory {
            node: "node-1".into(),
            default: DefaultPolicy::DefaultAllow,
            ..Directory::default()
        };
        let pod: IpAddr = "192.0.2.10".parse().unwrap();
        d.pods.insert(
            pod,
            WorkloadKey {
                namespace: "default".into(),
                name: "nginx".into(),
            },
        );
        // a pod isolated by one policy whose only rule allows something else
        let allowlist = Allowlist::new(vec![
            Rule {
                tier: Tier::NetworkPolicy,
                priority: 0,
                kind: RuleKind::Match {
                    action: Action::Accept,
                    destinations: Destinations::Any,
                    ports: vec![dnsfence_policy::ports::PortRange::single(Protocol::Udp, 53)],
                    origin: RuleOrigin {
                        policy: anp("nginx-egress"),
                        rule_index: 0,
                        rule_name: String::new(),
                    },
                },
            },
            Rule {
                tier: Tier::NetworkPolicy,
                priority: 0,
                kind: RuleKind::Isolation {
                    by: vec![anp("nginx-egress")].into(),
                },
            },
        ]);
        d.policies.insert(3, AllowlistId("abc".into()));
        d.allowlists.insert(3, Arc::new(allowlist));
        let event = FlowEvent {
            boot_ns: 1_000,
            pod,
            peer: "203.0.113.20".parse().unwrap(),
            pod_port: 40000,
            peer_port: 443,
            proto: 6,
            verdict: Verdict::Drop,
            reason: Some(Reason::DefaultDeny),
            direction: Direction::Egress,
            ifindex: 4,
            policy_id: 3,
        };
        let line = flow_line(&event, &d, 1_000, UNIX_EPOCH);
        let v = serde_json::to_value(&line).unwrap();
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["service"], "node-enforcer");
        assert_eq!(v["kind"], "flow");
        assert_eq!(v["node"], "node-1");
        assert_eq!(v["pod"], "nginx");
        assert_eq!(v["namespace"], "default");
        assert_eq!(v["src"], "192.0.2.10");
        assert_eq!(v["dst"], "203.0.113.20");
        assert_eq!(v["port"], 443);
        assert_eq!(v["proto"], "TCP");
        assert_eq!(v["direction"], "egress");
        assert_eq!(v["verdict"], "deny");
        assert_eq!(v["reason"], "default_deny");
        assert_eq!(v["allowlist"], "abc");
        assert_eq!(v["policy"], "ApplicationNetworkPolicy default/nginx-egress");
        assert!(v["rule"].is_null());
        // the DNS-only fields are there, empty
        assert!(v["name"].is_null() && v["qtype"].is_null());
    }
}
