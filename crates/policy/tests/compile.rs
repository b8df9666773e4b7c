//! The compiler and first-match evaluation, driven by manifests as a user writes them.
//! Tier semantics follow network-policy-api `ClusterNetworkPolicy` (apis/v1alpha2: Admin
//! before the NetworkPolicy tier before Baseline; Pass skips the rest of its tier) and DESIGN.md's
//! tie-break (Deny before Accept before Pass at one priority).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use dnsfence_policy::allowlist::{Cause, DefaultPolicy, Destination, Verdict};
use dnsfence_policy::compile::{Compiler, SourceChange};
use dnsfence_policy::manifest::parse_documents;
use dnsfence_policy::model::{
    Action, Binding, EventPayload, Labels, Namespace, Tier, Workload, WorkloadKey,
};
use dnsfence_policy::ports::Protocol;

fn policies(yaml: &str) -> Vec<SourceChange> {
    parse_documents(yaml, "default")
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_iter()
        .map(|o| SourceChange::ApplyPolicy(o.policy))
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(ns: &str, name: &str, l: &[(&str, &str)], ip: &str) -> Workload {
    Workload {
        key: key(ns, name),
        labels: labels(l),
        ips: vec![ip.parse().unwrap()],
        node: "n1".into(),
    }
}

fn key(ns: &str, name: &str) -> WorkloadKey {
    WorkloadKey {
        namespace: ns.into(),
        name: name.into(),
    }
}

fn ip(s: &str) -> Destination<'static> {
    Destination::Address(s.parse::<IpAddr>().unwrap())
}

fn decide(c: &Compiler, pod: &str, dest: Destination<'_>, port: u16) -> (Verdict, Cause) {
    let (ns, name) = pod.split_once('/').unwrap();
    let binding = c.binding(&key(ns, name)).expect("pod is bound");
    let Binding::Enforced(id) = &binding.binding else {
        panic!("{pod} is not enforced");
    };
    let d = c.allowlist(id).unwrap().decide(
        dest,
        Some((Protocol::Tcp, port)),
        DefaultPolicy::DefaultAllow,
    );
    (d.verdict, d.cause)
}

/// A compiler holding the policies of `yaml`.
fn compiled(yaml: &str) -> Compiler {
    let mut c = Compiler::new();
    c.apply(policies(yaml));
    c
}

fn add(c: &mut Compiler, w: Workload) -> Vec<EventPayload> {
    c.apply(vec![SourceChange::UpsertWorkload(w)])
}

fn count(events: &[EventPayload], name: &str) -> usize {
    events.iter().filter(|e| e.name() == name).count()
}

const NGINX_EGRESS: &str = r#"
apiVersion: networking.k8s.aws/v1alpha1
kind: ApplicationNetworkPolicy
metadata: {name: nginx-egress, namespace: default}
spec:
  podSelector: {matchLabels: {run: nginx}}
  policyTypes: [Egress]
  egress:
  - to: [{domainNames: ["github.com", "api.github.com"]}]
    ports: [{protocol: TCP, port: 443}]
"#;

#[test]
fn pods_with_the_same_labels_share_one_allowlist_and_changes_are_incremental() {
    let mut c = Compiler::new();
    c.apply(policies(NGINX_EGRESS));
    let events = c.apply(
        (0..3)
            .map(|i| {
                SourceChange::UpsertWorkload(pod(
                    "default",
                    &format!("nginx-{i}"),
                    &[("run", "nginx")],
                    &format!("192.0.2.{}", 10 + i),
                ))
            })
            .collect(),
    );
    assert_eq!(count(&events, "AllowlistCompiled"), 1, "{events:?}");
    assert_eq!(count(&events, "WorkloadBound"), 3);
    assert_eq!(c.allowlist_count(), 1);

    // A pod no policy selects: only its own binding, to no allowlist.
    let events = add(
        &mut c,
        pod("other", "web", &[("run", "nginx")], "192.0.2.50"),
    );
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        matches!(&events[0], EventPayload::WorkloadBound(b) if b.binding == Binding::Unenforced)
    );

    // The same upsert again changes nothing and says nothing.
    assert!(
        add(
            &mut c,
            pod("other", "web", &[("run", "nginx")], "192.0.2.50")
        )
        .is_empty()
    );

    // Changing the policy recompiles the three selected pods once, and releases the old list.
    let changed = NGINX_EGRESS.replace("\"api.github.com\"", "\"registry.npmjs.org\"");
    let events = c.apply(policies(&changed));
    assert_eq!(count(&events, "AllowlistCompiled"), 1, "{events:?}");
    assert_eq!(count(&events, "WorkloadBound"), 3);
    assert_eq!(count(&events, "AllowlistReleased"), 1);
    assert_eq!(events.len(), 5);
    let last = events.last().unwrap();
    assert_eq!(
        last.name(),
        "AllowlistReleased",
        "releases come after the rebinds"
    );
    assert_eq!(c.allowlist_count(), 1);

    // Deleting it leaves the pods unenforced.
    let reference = c.policies().next().unwrap().reference.clone();
    let events = c.apply(vec![SourceChange::DeletePolicy(reference)]);
    assert_eq!(count(&events, "WorkloadBound"), 3);
    assert_eq!(count(&events, "AllowlistReleased"), 1);
    assert_eq!(c.allowlist_count(), 0);
}

#[test]
fn admin_tier_decides_before_network_policies_and_pass_hands_over() {
    let mut c = compiled(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: app-egress, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 198.51.100.0/24}}, {ipBlock: {cidr: 203.0.113.0/24}}]
---
apiVersion: networking.k8s.aws/v1alpha1
kind: ClusterNetworkPolicy
metadata: {name: guardrails}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {}}
  egress:
  - name: block-one-host
    action: Deny
    to: [{networks: [198.51.100.7/32]}]
  - name: let-teams-decide
    action: Pass
    to: [{networks: [203.0.113.0/24]}]
---
apiVersion: networking.k8s.aws/v1alpha1
kind: ClusterNetworkPolicy
metadata: {name: deny-the-rest}
spec:
  tier: Admin
  priority: 20
  subject: {namespaces: {}}
  egress:
  - name: everything-else
    action: Deny
    to: [{networks: [0.0.0.0/0]}]
"#,
    );
    add(&mut c, pod("default", "app", &[], "192.0.2.10"));
    // Admin Deny wins over the NetworkPolicy allow.
    let (v, cause) = decide(&c, "default/app", ip("198.51.100.7"), 443);
    assert_eq!(v, Verdict::Deny);
    assert!(
        matches!(cause, Cause::Rule { tier: Tier::Admin, action: Action::Deny, ref origin, .. } if origin.rule_name == "block-one-host"),
        "{cause:?}"
    );
    // Passed to the NetworkPolicy tier, which allows it: the priority-20 Deny never sees it.
    let (v, cause) = decide(&c, "default/app", ip("203.0.113.5"), 443);
    assert_eq!(v, Verdict::Allow, "{cause:?}");
    assert!(
        matches!(
            cause,
            Cause::Rule {
                tier: Tier::NetworkPolicy,
                ..
            }
        ),
        "{cause:?}"
    );
    // Neither passed nor denied first: the lower-precedence Admin Deny decides, even though the
    // NetworkPolicy would allow it.
    let (v, cause) = decide(&c, "default/app", ip("198.51.100.8"), 443);
    assert_eq!(v, Verdict::Deny);
    assert!(
        matches!(cause, Cause::Rule { priority: 20, .. }),
        "{cause:?}"
    );
}

#[test]
fn at_one_priority_deny_wins_over_accept() {
    let mut c = compiled(
        r#"
apiVersion: networking.k8s.aws/v1alpha1
kind: ClusterNetworkPolicy
metadata: {name: a-accept}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {}}
  egress:
  - {action: Accept, to: [{networks: [192.0.2.0/24]}]}
---
apiVersion: networking.k8s.aws/v1alpha1
kind: ClusterNetworkPolicy
metadata: {name: b-deny}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {}}
  egress:
  - {action: Deny, to: [{networks: [192.0.2.0/24]}]}
"#,
    );
    add(&mut c, pod("default", "app", &[], "198.51.100.1"));
    let (v, _) = decide(&c, "default/app", ip("192.0.2.1"), 80);
    assert_eq!(v, Verdict::Deny);
}

#[test]
fn baseline_applies_only_to_pods_no_network_policy_isolates() {
    let mut c = compiled(
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: baseline-deny}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {}}
  egress:
  - {name: deny-all, action: Deny, to: [{networks: [0.0.0.0/0]}]}
"#,
    );
    c.apply(policies(NGINX_EGRESS));
    c.apply(vec![
        SourceChange::UpsertWorkload(pod("default", "nginx", &[("run", "nginx")], "192.0.2.10")),
        SourceChange::UpsertWorkload(pod("default", "batch", &[("run", "batch")], "192.0.2.11")),
    ]);
    let (v, cause) = decide(&c, "default/batch", ip("198.51.100.1"), 443);
    assert_eq!(v, Verdict::Deny);
    assert!(
        matches!(
            cause,
            Cause::Rule {
                tier: Tier::Baseline,
                ..
            }
        ),
        "{cause:?}"
    );
    // nginx is isolated by its ApplicationNetworkPolicy: that tier's verdict is final.
    let (v, cause) = decide(&c, "default/nginx", Destination::Name("github.com"), 443);
    assert_eq!(v, Verdict::Allow, "{cause:?}");
    let (v, cause) = decide(&c, "default/nginx", ip("198.51.100.1"), 443);
    assert_eq!(v, Verdict::Deny);
    assert!(matches!(cause, Cause::Isolation { .. }), "{cause:?}");
}

#[test]
fn a_name_is_granted_only_the_ports_its_rules_leave_open() {
    let mut c = compiled(
        r#"
apiVersion: networking.k8s.aws/v1alpha1
kind: ClusterNetworkPolicy
metadata: {name: no-smtp}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress:
  - {action: Deny, to: [{networks: [0.0.0.0/0, "::/0"]}], ports: [{portNumber: {protocol: TCP, port: 25}}]}
  - {action: Accept, to: [{domainNames: ["*.example.com"]}], ports: [{portRange: {protocol: TCP, start: 1, end: 1024}}]}
"#,
    );
    add(&mut c, pod("default", "app", &[], "192.0.2.10"));
    let id = match &c.binding(&key("default", "app")).unwrap().binding {
        Binding::Enforced(id) => id.clone(),
        Binding::Unenforced => panic!("enforced"),
    };
    let list = c.allowlist(&id).unwrap();
    let address: IpAddr = "198.51.100.25".parse().unwrap();
    let d = list.allowed_ports(
        Destination::Resolved("mail.example.com", address),
        DefaultPolicy::DefaultDeny,
    );
    assert!(d.allowed.contains(Protocol::Tcp, 24));
    assert!(
        !d.allowed.contains(Protocol::Tcp, 25),
        "the network Deny came first"
    );
    assert!(d.allowed.contains(Protocol::Tcp, 1024));
    assert!(
        !d.allowed.contains(Protocol::Tcp, 1025),
        "DefaultDeny closes the rest"
    );
    // Before resolution only the name's rules are known: the name resolves.
    assert!(
        list.decide_name("mail.example.com", DefaultPolicy::DefaultDeny)
            .is_allowed()
    );
    assert!(
        !list
            .decide_name("example.com", DefaultPolicy::DefaultDeny)
            .is_allowed()
    );
    // A rule with networks: the address matters, so callers may not evaluate the name once.
    assert!(!list.is_address_independent());
    let by_name = list.decide_name("mail.example.com", DefaultPolicy::DefaultDeny);
    assert_ne!(by_name.allowed, d.allowed);

    let mut names_only = compiled(
        r#"
apiVersion: networking.k8s.aws/v1alpha1
kind: ClusterNetworkPolicy
metadata: {name: names}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress:
  - {action: Accept, to: [{domainNames: ["*.example.com"]}], ports: [{portRange: {protocol: TCP, start: 1, end: 1024}}]}
"#,
    );
    add(&mut names_only, pod("default", "app", &[], "192.0.2.10"));
    let id = match &names_only.binding(&key("default", "app")).unwrap().binding {
        Binding::Enforced(id) => id.clone(),
        Binding::Unenforced => panic!("enforced"),
    };
    let list = names_only.allowlist(&id).unwrap();
    assert!(list.is_address_independent());
    assert_eq!(
        list.allowed_ports(
            Destination::Resolved("mail.example.com", address),
            DefaultPolicy::DefaultDeny
        )
        .allowed,
        list.decide_name("mail.example.com", DefaultPolicy::DefaultDeny)
            .allowed
    );
}

#[test]
fn pod_peers_follow_the_pods_they_select() {
    let mut c = compiled(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{protocol: TCP, port: 5432}]
"#,
    );
    add(&mut c, pod("shop", "web", &[("app", "web")], "192.0.2.10"));
    assert_eq!(
        decide(&c, "shop/web", ip("192.0.2.20"), 5432).0,
        Verdict::Deny
    );

    // A db pod appears: web's rules now name its address.
    let events = add(&mut c, pod("shop", "db", &[("app", "db")], "192.0.2.20"));
    assert!(
        events.iter().any(
            |e| matches!(e, EventPayload::WorkloadBound(b) if b.workload == key("shop", "web"))
        ),
        "{events:?}"
    );
    assert_eq!(
        decide(&c, "shop/web", ip("192.0.2.20"), 5432).0,
        Verdict::Allow
    );
    // A db pod of another namespace is not a peer of a podSelector-only rule.
    add(&mut c, pod("other", "db", &[("app", "db")], "192.0.2.30"));
    assert_eq!(
        decide(&c, "shop/web", ip("192.0.2.30"), 5432).0,
        Verdict::Deny
    );
    // It leaves: so does the allowance.
    c.apply(vec![SourceChange::RemoveWorkload(key("shop", "db"))]);
    assert_eq!(
        decide(&c, "shop/web", ip("192.0.2.20"), 5432).0,
        Verdict::Deny
    );
}

#[test]
fn relabelling_a_namespace_moves_its_pods_in_and_out_of_a_cluster_policy() {
    let mut c = compiled(
        r#"
apiVersion: networking.k8s.aws/v1alpha1
kind: ClusterNetworkPolicy
metadata: {name: prod-egress}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {env: prod}}}
  egress:
  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}
"#,
    );
    add(&mut c, pod("shop", "web", &[], "192.0.2.10"));
    assert_eq!(
        c.binding(&key("shop", "web")).unwrap().binding,
        Binding::Unenforced
    );
    let ns = |env: &str| Namespace {
        name: "shop".into(),
        labels: labels(&[("env", env)]),
    };
    c.apply(vec![SourceChange::UpsertNamespace(ns("prod"))]);
    assert_eq!(
        decide(&c, "shop/web", ip("198.51.100.1"), 443).0,
        Verdict::Deny
    );
    c.apply(vec![SourceChange::UpsertNamespace(ns("dev"))]);
    assert_eq!(
        c.binding(&key("shop", "web")).unwrap().binding,
        Binding::Unenforced
    );
}

#[test]
fn a_pod_that_changes_node_is_unbound_before_it_is_bound_again() {
    let mut c = Compiler::new();
    c.apply(policies(NGINX_EGRESS));
    let mut nginx = pod("default", "nginx", &[("run", "nginx")], "192.0.2.10");
    c.apply(vec![SourceChange::UpsertWorkload(nginx.clone())]);
    nginx.node = "n2".into();
    let events = c.apply(vec![SourceChange::UpsertWorkload(nginx)]);
    let names: Vec<&str> = events.iter().map(EventPayload::name).collect();
    assert_eq!(
        names,
        vec!["WorkloadUnbound", "WorkloadBound"],
        "{events:?}"
    );
    assert!(matches!(&events[1], EventPayload::WorkloadBound(b) if b.node == "n2"));
}
