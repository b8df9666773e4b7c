//! Flow logs: the ring buffer's drop and audit records as one JSON line each on stdout
//! (`--event-logs`, the EKS `networkPolicyEventLogs: Enabled`). The program already
//! rate-limits records per pod; a reader thread blocks on the ring buffer.

use std::{
    io::Write,
    net::IpAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{
    Direction, EventReader, FlowEvent, Verdict, clock, metrics::Metrics, node::Directory,
    types::Protocol,
};

/// One flow-log line for `event`, naming the pod and its allowlist through `directory`.
pub fn format_event(
    event: &FlowEvent,
    directory: &Directory,
    now_boot_ns: u64,
    now: SystemTime,
) -> String {
    let age = Duration::from_nanos(now_boot_ns.saturating_sub(event.boot_ns));
    let time = now.checked_sub(age).unwrap_or(now);
    let workload = directory.pods.get(&event.pod);
    let (pod, namespace) = match workload {
        Some(k) => (k.to_string(), k.namespace.clone()),
        None => (String::new(), String::new()),
    };
    let policy = directory
        .policies
        .get(&event.policy_id)
        .map(|id| id.0.clone())
        .unwrap_or_default();
    let (destination, port) = match event.direction {
        Direction::Egress => (event.peer, event.peer_port),
        Direction::Ingress => (event.pod, event.pod_port),
    };
    let value = serde_json::json!({
        "time": rfc3339(time),
        "pod": pod,
        "namespace": namespace,
        "pod_ip": ip_text(event.pod),
        "destination": ip_text(destination),
        "port": port,
        "protocol": Protocol::from_number(event.proto).to_string(),
        "direction": match event.direction {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        },
        "verdict": match event.verdict {
            Verdict::Drop => "drop",
            Verdict::Pass => "pass",
        },
        "reason": event.reason.map_or("unknown", |r| r.name()),
        "policy": policy,
    });
    value.to_string()
}

fn ip_text(ip: IpAddr) -> String {
    ip.to_string()
}

/// `2026-11-03T12:34:56.789Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // civil from days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Starts the reader thread; it stops when `stop` is set (within a poll interval).
pub fn start(
    mut reader: EventReader,
    directory: Arc<RwLock<Directory>>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("flow-logs".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match reader.next_timeout(Duration::from_millis(200)) {
                    Ok(Some(event)) => {
                        let line = match directory.read() {
                            Ok(d) => format_event(
                                &event,
                                &d,
                                clock::boot_time_ns().unwrap_or(event.boot_ns),
                                SystemTime::now(),
                            ),
                            Err(_) => continue,
                        };
                        let mut out = std::io::stdout().lock();
                        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                            tracing::warn!("writing a flow log failed");
                        }
                        metrics.flow_events.inc();
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
    use dnsfence_policy::model::{AllowlistId, WorkloadKey};

    use super::*;
    use crate::Reason;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_123); // 2024-02-29
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.123Z");
    }

    #[test]
    fn a_drop_names_pod_destination_and_policy() {
        let mut d = Directory::default();
        let pod: IpAddr = "192.0.2.10".parse().unwrap();
        d.pods.insert(
            pod,
            WorkloadKey {
                namespace: "default".into(),
                name: "nginx".into(),
            },
        );
        d.policies.insert(3, AllowlistId("abc".into()));
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
        let line = format_event(&event, &d, 1_000, UNIX_EPOCH);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["pod"], "default/nginx");
        assert_eq!(v["namespace"], "default");
        assert_eq!(v["destination"], "203.0.113.20");
        assert_eq!(v["port"], 443);
        assert_eq!(v["protocol"], "TCP");
        assert_eq!(v["verdict"], "drop");
        assert_eq!(v["reason"], "default_deny");
        assert_eq!(v["policy"], "abc");
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
    }
}
