//! Output: aligned tables for people, JSON/YAML for scripts.

use dnsfence_api::store::v1 as pb;
use serde_json::{Value, json};

use crate::args::{Output, Resource};
use crate::failure::Failure;

fn kind_name(kind: i32) -> &'static str {
    match pb::PolicyKind::try_from(kind) {
        Ok(pb::PolicyKind::NetworkPolicy) => "NetworkPolicy",
        Ok(pb::PolicyKind::ApplicationNetworkPolicy) => "ApplicationNetworkPolicy",
        Ok(pb::PolicyKind::ClusterNetworkPolicy) => "ClusterNetworkPolicy",
        Ok(pb::PolicyKind::UpstreamClusterNetworkPolicy) => {
            "ClusterNetworkPolicy.policy.networking.k8s.io"
        }
        _ => "?",
    }
}

fn reference(r: Option<&pb::PolicyRef>) -> String {
    match r {
        Some(r) if r.namespace.is_empty() => format!("{} {}", kind_name(r.kind), r.name),
        Some(r) => format!("{} {}/{}", kind_name(r.kind), r.namespace, r.name),
        None => "?".into(),
    }
}

pub fn applied(o: &pb::AppliedObject) -> String {
    let outcome = match pb::applied_object::Outcome::try_from(o.outcome) {
        Ok(pb::applied_object::Outcome::Created) => "created",
        Ok(pb::applied_object::Outcome::Configured) => "configured",
        Ok(pb::applied_object::Outcome::Unchanged) => "unchanged",
        Ok(pb::applied_object::Outcome::Deleted) => "deleted",
        _ => "?",
    };
    format!(
        "{} {outcome} (generation {})",
        reference(o.reference.as_ref()),
        o.generation
    )
}

fn port(p: &pb::PortRange) -> String {
    let proto = match pb::Protocol::try_from(p.protocol) {
        Ok(pb::Protocol::Tcp) => "TCP",
        Ok(pb::Protocol::Udp) => "UDP",
        Ok(pb::Protocol::Sctp) => "SCTP",
        _ => "?",
    };
    if p.start == p.end {
        format!("{}/{proto}", p.start)
    } else if p.start == 1 && p.end == 65535 {
        format!("*/{proto}")
    } else {
        format!("{}-{}/{proto}", p.start, p.end)
    }
}

fn labels(map: &std::collections::BTreeMap<String, String>) -> String {
    let mut pairs: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}

/// Prints rows as columns separated by two spaces, the first row being the header.
fn table(rows: Vec<Vec<String>>) {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn print_value(value: &Value, output: Output) -> Result<(), Failure> {
    let text = match output {
        Output::Yaml => serde_yaml::to_string(value)
            .map_err(|e| Failure::rejected(format!("rendering YAML: {e}")))?,
        _ => serde_json::to_string_pretty(value)
            .map_err(|e| Failure::rejected(format!("rendering JSON: {e}")))?,
    };
    println!("{}", text.trim_end());
    Ok(())
}

fn rule_json(rule: &pb::Rule) -> Value {
    let tier = match pb::Tier::try_from(rule.tier) {
        Ok(pb::Tier::Admin) => "Admin",
        Ok(pb::Tier::NetworkPolicyTier) => "NetworkPolicy",
        Ok(pb::Tier::Baseline) => "Baseline",
        _ => "?",
    };
    match &rule.kind {
        Some(pb::rule::Kind::Match(m)) => {
            let action = match pb::Action::try_from(m.action) {
                Ok(pb::Action::Accept) => "Accept",
                Ok(pb::Action::Deny) => "Deny",
                Ok(pb::Action::Pass) => "Pass",
                _ => "?",
            };
            let origin = m.origin.as_ref();
            json!({
                "tier": tier,
                "priority": rule.priority,
                "action": action,
                "anyDestination": m.any_destination,
                "domains": m.domains,
                "cidrs": m.cidrs.iter().map(|c| if c.except.is_empty() { c.cidr.clone() } else { format!("{} except {}", c.cidr, c.except.join(",")) }).collect::<Vec<_>>(),
                "ports": m.ports.iter().map(port).collect::<Vec<_>>(),
                "policy": reference(origin.and_then(|o| o.policy.as_ref())),
                "rule": origin.map_or(0, |o| o.rule_index),
                "ruleName": origin.map(|o| o.rule_name.clone()).unwrap_or_default(),
            })
        }
        Some(pb::rule::Kind::Isolation(i)) => json!({
            "tier": tier,
            "isolation": i.by.iter().map(|r| reference(Some(r))).collect::<Vec<_>>(),
        }),
        None => Value::Null,
    }
}

fn rule_summary(rule: &pb::Rule) -> String {
    let v = rule_json(rule);
    if let Some(by) = v.get("isolation") {
        return format!("deny the rest (isolated by {by})");
    }
    let dest = if v["anyDestination"] == json!(true) {
        "anywhere".to_string()
    } else {
        let mut parts: Vec<String> = Vec::new();
        for key in ["domains", "cidrs"] {
            if let Some(list) = v[key].as_array() {
                parts.extend(list.iter().filter_map(|x| x.as_str().map(String::from)));
            }
        }
        parts.join(" ")
    };
    let ports: Vec<String> = v["ports"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{} {} -> {} on {} ({})",
        v["tier"].as_str().unwrap_or("?"),
        v["action"].as_str().unwrap_or("?"),
        dest,
        if ports.is_empty() {
            "all ports".into()
        } else {
            ports.join(",")
        },
        v["policy"].as_str().unwrap_or("?"),
    )
}

pub fn listing(resource: Resource, resp: &pb::ListResponse, output: Output) -> Result<(), Failure> {
    let wide = output == Output::Wide;
    match resource {
        Resource::Policies => {
            if matches!(output, Output::Yaml | Output::Json) {
                // The manifests as written, as kubectl prints a List.
                let items: Vec<Value> = resp
                    .policies
                    .iter()
                    .filter_map(|p| serde_yaml::from_str::<Value>(&p.manifest).ok())
                    .collect();
                return print_value(
                    &json!({"apiVersion": "v1", "kind": "List", "items": items}),
                    output,
                );
            }
            let mut rows = vec![vec![
                "KIND".into(),
                "NAMESPACE".into(),
                "NAME".into(),
                "GENERATION".into(),
            ]];
            for p in &resp.policies {
                let r = p.reference.clone().unwrap_or_default();
                rows.push(vec![
                    kind_name(r.kind).into(),
                    r.namespace,
                    r.name,
                    p.generation.to_string(),
                ]);
            }
            table(rows);
        }
        Resource::Workloads => {
            let values: Vec<Value> = resp
                .workloads
                .iter()
                .map(|w| {
                    let k = w.key.clone().unwrap_or_default();
                    json!({"namespace": k.namespace, "name": k.name, "ips": w.ips, "node": w.node, "labels": w.labels})
                })
                .collect();
            if matches!(output, Output::Yaml | Output::Json) {
                return print_value(&Value::Array(values), output);
            }
            let mut rows = vec![vec![
                "NAMESPACE".into(),
                "NAME".into(),
                "IPS".into(),
                "NODE".into(),
            ]];
            if wide {
                rows[0].push("LABELS".into());
            }
            for w in &resp.workloads {
                let k = w.key.clone().unwrap_or_default();
                let mut row = vec![k.namespace, k.name, w.ips.join(","), w.node.clone()];
                if wide {
                    row.push(labels(&w.labels));
                }
                rows.push(row);
            }
            table(rows);
        }
        Resource::Namespaces => {
            if matches!(output, Output::Yaml | Output::Json) {
                let values: Vec<Value> = resp
                    .namespaces
                    .iter()
                    .map(|n| json!({"name": n.name, "labels": n.labels}))
                    .collect();
                return print_value(&Value::Array(values), output);
            }
            let mut rows = vec![vec!["NAME".into(), "LABELS".into()]];
            for n in &resp.namespaces {
                rows.push(vec![n.name.clone(), labels(&n.labels)]);
            }
            table(rows);
        }
        Resource::Allowlists => {
            if matches!(output, Output::Yaml | Output::Json) {
                let values: Vec<Value> = resp
                    .allowlists
                    .iter()
                    .map(|a| json!({"id": a.id, "rules": a.rules.iter().map(rule_json).collect::<Vec<_>>()}))
                    .collect();
                return print_value(&Value::Array(values), output);
            }
            let mut rows = vec![vec!["ID".into(), "RULES".into()]];
            if wide {
                rows[0].push("FIRST RULES".into());
            }
            for a in &resp.allowlists {
                let mut row = vec![a.id.clone(), a.rules.len().to_string()];
                if wide {
                    row.push(
                        a.rules
                            .iter()
                            .take(3)
                            .map(rule_summary)
                            .collect::<Vec<_>>()
                            .join("; "),
                    );
                }
                rows.push(row);
            }
            table(rows);
        }
        Resource::Bindings => {
            if matches!(output, Output::Yaml | Output::Json) {
                let values: Vec<Value> = resp
                    .bindings
                    .iter()
                    .map(|b| {
                        let k = b.workload.clone().unwrap_or_default();
                        json!({"namespace": k.namespace, "name": k.name, "ips": b.ips, "node": b.node, "allowlist": b.allowlist_id})
                    })
                    .collect();
                return print_value(&Value::Array(values), output);
            }
            let mut rows = vec![vec![
                "NAMESPACE".into(),
                "NAME".into(),
                "NODE".into(),
                "ALLOWLIST".into(),
            ]];
            for b in &resp.bindings {
                let k = b.workload.clone().unwrap_or_default();
                let id = if b.allowlist_id.is_empty() {
                    "(none: node default)".into()
                } else {
                    b.allowlist_id.clone()
                };
                rows.push(vec![k.namespace, k.name, b.node.clone(), id]);
            }
            table(rows);
        }
    }
    Ok(())
}

fn event_json(ev: &pb::Event) -> Value {
    use pb::event::Payload as P;
    let (kind, detail) = match &ev.payload {
        Some(P::PolicyApplied(r)) => (
            "PolicyApplied",
            json!({"policy": reference(r.reference.as_ref()), "generation": r.generation}),
        ),
        Some(P::PolicyDeleted(r)) => ("PolicyDeleted", json!({"policy": reference(Some(r))})),
        Some(P::NamespaceUpserted(n)) => (
            "NamespaceUpserted",
            json!({"namespace": n.name, "labels": n.labels}),
        ),
        Some(P::NamespaceRemoved(n)) => ("NamespaceRemoved", json!({"namespace": n})),
        Some(P::WorkloadUpserted(w)) => {
            let k = w.key.clone().unwrap_or_default();
            (
                "WorkloadUpserted",
                json!({"workload": format!("{}/{}", k.namespace, k.name), "ips": w.ips, "node": w.node, "labels": w.labels}),
            )
        }
        Some(P::WorkloadRemoved(k)) => (
            "WorkloadRemoved",
            json!({"workload": format!("{}/{}", k.namespace, k.name)}),
        ),
        Some(P::AllowlistCompiled(a)) => (
            "AllowlistCompiled",
            json!({"allowlist": a.id, "rules": a.rules.iter().map(rule_json).collect::<Vec<_>>()}),
        ),
        Some(P::AllowlistReleased(id)) => ("AllowlistReleased", json!({"allowlist": id})),
        Some(P::WorkloadBound(b)) => {
            let k = b.workload.clone().unwrap_or_default();
            (
                "WorkloadBound",
                json!({"workload": format!("{}/{}", k.namespace, k.name), "ips": b.ips, "node": b.node, "allowlist": b.allowlist_id}),
            )
        }
        Some(P::WorkloadUnbound(k)) => (
            "WorkloadUnbound",
            json!({"workload": format!("{}/{}", k.namespace, k.name)}),
        ),
        None => ("Unknown", Value::Null),
    };
    json!({"revision": ev.revision, "event": kind, "detail": detail})
}

pub fn event(ev: &pb::Event, output: Output) -> Result<(), Failure> {
    let v = event_json(ev);
    if matches!(output, Output::Json | Output::Yaml) {
        println!("{v}");
        return Ok(());
    }
    let detail = &v["detail"];
    let summary = match v["event"].as_str().unwrap_or("") {
        "AllowlistCompiled" => {
            let n = detail["rules"].as_array().map_or(0, Vec::len);
            format!("{} ({n} rules)", detail["allowlist"].as_str().unwrap_or(""))
        }
        "WorkloadBound" => {
            let al = detail["allowlist"].as_str().unwrap_or("");
            format!(
                "{} -> {}",
                detail["workload"].as_str().unwrap_or(""),
                if al.is_empty() { "(no policy)" } else { al }
            )
        }
        _ => detail
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        format!(
                            "{k}={}",
                            v.as_str().map_or_else(|| v.to_string(), String::from)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default(),
    };
    println!(
        "{:>8}  {:<18}  {summary}",
        ev.revision,
        v["event"].as_str().unwrap_or("")
    );
    Ok(())
}

pub fn explanation(
    resp: &pb::ExplainResponse,
    destination: &str,
    output: Output,
) -> Result<(), Failure> {
    let k = resp.workload.clone().unwrap_or_default();
    let verdict = match pb::Verdict::try_from(resp.verdict) {
        Ok(pb::Verdict::Allow) => "ALLOW",
        Ok(pb::Verdict::Deny) => "DENY",
        _ => "?",
    };
    if matches!(output, Output::Json | Output::Yaml) {
        let v = json!({
            "pod": format!("{}/{}", k.namespace, k.name),
            "destination": destination,
            "verdict": verdict,
            "reason": resp.reason,
            "allowedPorts": resp.allowed_ports.iter().map(port).collect::<Vec<_>>(),
            "rule": resp.deciding_rule.as_ref().map(rule_json),
            "allowlist": resp.allowlist_id,
            "revision": resp.revision,
        });
        return print_value(&v, output);
    }
    println!("{verdict}: {}/{} -> {destination}", k.namespace, k.name);
    println!("  because:   {}", resp.reason);
    if let Some(rule) = &resp.deciding_rule {
        println!("  rule:      {}", rule_summary(rule));
    }
    if !resp.allowed_ports.is_empty() {
        println!(
            "  ports:     {}",
            resp.allowed_ports
                .iter()
                .map(port)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "  allowlist: {}",
        if resp.allowlist_id.is_empty() {
            "(none)"
        } else {
            &resp.allowlist_id
        }
    );
    println!("  revision:  {}", resp.revision);
    Ok(())
}
