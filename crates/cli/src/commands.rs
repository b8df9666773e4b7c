//! One function per subcommand: build the request, call the store, print the result.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use dnsfence_api::store::v1 as pb;
use dnsfence_api::store::v1::policy_store_client::PolicyStoreClient;
use tonic::transport::Channel;

use crate::args::{
    ApplyArgs, Cli, Command, DeleteArgs, EventsArgs, ExplainArgs, GetArgs, NamespaceCommand,
    Resource, ViewArg, WorkloadCommand,
};
use crate::failure::Failure;
use crate::render;

type Client = PolicyStoreClient<Channel>;

pub async fn run(cli: Cli) -> Result<(), Failure> {
    // Input is checked before connecting, so a typo is exit 1 even with no store around.
    match cli.command {
        Command::Apply(a) => {
            let manifests = read_manifests(&a.files)?;
            apply(
                &mut connect(&cli.store, &cli.tls, cli.timeout).await?,
                a,
                manifests,
            )
            .await
        }
        Command::Delete(d) => {
            let request = delete_request(&d)?;
            let mut client = connect(&cli.store, &cli.tls, cli.timeout).await?;
            let resp = client.delete(request).await?.into_inner();
            for o in &resp.objects {
                println!("{}", render::applied(o));
            }
            println!("revision {}", resp.revision);
            Ok(())
        }
        Command::Get(g) => get(&mut connect(&cli.store, &cli.tls, cli.timeout).await?, g).await,
        Command::Events(e) => {
            // A follow stream has no deadline; each unary call does.
            let timeout = if e.follow {
                std::time::Duration::from_secs(365 * 24 * 3600)
            } else {
                cli.timeout
            };
            events(&mut connect(&cli.store, &cli.tls, timeout).await?, e).await
        }
        Command::Workload(w) => workload(&cli.store, &cli.tls, cli.timeout, w).await,
        Command::Namespace(n) => namespace(&cli.store, &cli.tls, cli.timeout, n).await,
        Command::Explain(e) => {
            let request = explain_request(&e)?;
            let mut client = connect(&cli.store, &cli.tls, cli.timeout).await?;
            let resp = client.explain(request).await?.into_inner();
            render::explanation(&resp, &e.destination, e.output)
        }
        Command::Lab(l) => crate::lab::run(l),
        Command::Version => {
            println!("dnsfence {}", env!("CARGO_PKG_VERSION"));
            let mut client = connect(&cli.store, &cli.tls, cli.timeout).await?;
            let s = client.status(pb::StatusRequest {}).await?.into_inner();
            println!(
                "policy-store {} at {}: revision {}, {} policies, {} workloads, {} allowlists{}",
                s.version,
                cli.store,
                s.revision,
                s.policies,
                s.workloads,
                s.allowlists,
                if s.writes_enabled { "" } else { " (read-only)" }
            );
            Ok(())
        }
    }
}

async fn connect(
    address: &str,
    tls: &dnsfence_api::ClientTls,
    timeout: std::time::Duration,
) -> Result<Client, Failure> {
    let channel = dnsfence_api::connect(address, tls, timeout).await?;
    Ok(PolicyStoreClient::new(channel)
        .max_decoding_message_size(256 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024))
}

/// Reads files, directories (their *.yaml, *.yml and *.json, sorted) and stdin.
fn read_manifests(paths: &[PathBuf]) -> Result<Vec<pb::Manifest>, Failure> {
    let mut out = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut content = String::new();
            std::io::stdin()
                .read_to_string(&mut content)
                .map_err(|e| Failure::rejected(format!("reading stdin: {e}")))?;
            out.push(pb::Manifest {
                source: "<stdin>".into(),
                content,
            });
        } else if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| Failure::rejected(format!("{}: {e}", path.display())))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                })
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(Failure::rejected(format!(
                    "{}: no *.yaml, *.yml or *.json files",
                    path.display()
                )));
            }
            for f in files {
                out.push(read_file(&f)?);
            }
        } else {
            out.push(read_file(path)?);
        }
    }
    Ok(out)
}

fn read_file(path: &Path) -> Result<pb::Manifest, Failure> {
    let content = std::fs::read_to_string(path)
        .map_err(|e| Failure::rejected(format!("{}: {e}", path.display())))?;
    Ok(pb::Manifest {
        source: path.display().to_string(),
        content,
    })
}

async fn apply(
    client: &mut Client,
    a: ApplyArgs,
    manifests: Vec<pb::Manifest>,
) -> Result<(), Failure> {
    let resp = client
        .apply(pb::ApplyRequest {
            manifests,
            default_namespace: a.namespace,
            dry_run: a.dry_run,
        })
        .await?
        .into_inner();
    for o in &resp.objects {
        let suffix = if a.dry_run { " (dry run)" } else { "" };
        println!("{}{suffix}", render::applied(o));
    }
    println!("revision {}", resp.revision);
    Ok(())
}

fn delete_request(d: &DeleteArgs) -> Result<pb::DeleteRequest, Failure> {
    let manifests = if d.files.is_empty() {
        Vec::new()
    } else {
        read_manifests(&d.files)?
    };
    let mut references = Vec::new();
    if let Some(kind) = &d.kind {
        let kind = parse_kind(kind)?;
        if d.names.is_empty() {
            return Err(Failure::rejected(
                "name the objects to delete: KIND NAME...",
            ));
        }
        for name in &d.names {
            references.push(pb::PolicyRef {
                kind: pb::PolicyKind::from(kind) as i32,
                namespace: if kind.is_namespaced() {
                    d.namespace.clone()
                } else {
                    String::new()
                },
                name: name.clone(),
            });
        }
    }
    if references.is_empty() && manifests.is_empty() {
        return Err(Failure::rejected(
            "nothing to delete: give -f FILE or KIND NAME...",
        ));
    }
    Ok(pb::DeleteRequest {
        references,
        manifests,
        default_namespace: d.namespace.clone(),
    })
}

fn parse_kind(s: &str) -> Result<dnsfence_policy::model::PolicyKind, Failure> {
    use dnsfence_policy::model::PolicyKind as K;
    Ok(match s.to_ascii_lowercase().as_str() {
        "anp" | "applicationnetworkpolicy" | "applicationnetworkpolicies" => {
            K::ApplicationNetworkPolicy
        }
        "netpol" | "networkpolicy" | "networkpolicies" => K::NetworkPolicy,
        "cnp" | "clusternetworkpolicy" | "clusternetworkpolicies" => K::ClusterNetworkPolicy,
        "cnp.policy.networking.k8s.io" | "clusternetworkpolicy.policy.networking.k8s.io" => {
            K::UpstreamClusterNetworkPolicy
        }
        other => {
            return Err(Failure::rejected(format!(
                "{other:?} is not a policy kind: anp, netpol, cnp or cnp.policy.networking.k8s.io"
            )));
        }
    })
}

async fn get(client: &mut Client, g: GetArgs) -> Result<(), Failure> {
    let collection = match g.resource {
        Resource::Policies => pb::Collection::Policies,
        Resource::Workloads => pb::Collection::Workloads,
        Resource::Namespaces => pb::Collection::Namespaces,
        Resource::Allowlists => pb::Collection::Allowlists,
        Resource::Bindings => pb::Collection::Bindings,
    };
    let resp = client
        .list(pb::ListRequest {
            collection: collection as i32,
            namespace: g.namespace.unwrap_or_default(),
        })
        .await?
        .into_inner();
    render::listing(g.resource, &resp, g.output)
}

async fn events(client: &mut Client, e: EventsArgs) -> Result<(), Failure> {
    let view = match e.view {
        ViewArg::All => pb::View::All,
        ViewArg::Derived => pb::View::Derived,
        ViewArg::Sources => pb::View::Sources,
    };
    let mut stream = client
        .watch(pb::WatchRequest {
            from_revision: e.from.saturating_sub(1),
            view: view as i32,
            node: String::new(),
            snapshot: false,
        })
        .await?
        .into_inner();
    while let Some(item) = stream.message().await? {
        match item.kind {
            Some(pb::watch_response::Kind::Event(ev)) => render::event(&ev, e.output)?,
            Some(pb::watch_response::Kind::Snapshot(s)) if s.last => {
                println!(
                    "# events up to revision {} were compacted away; the log continues after it",
                    s.revision
                );
            }
            Some(pb::watch_response::Kind::CaughtUp(_)) if !e.follow => return Ok(()),
            _ => {}
        }
    }
    Ok(())
}

fn parse_pod(s: &str) -> Result<pb::WorkloadKey, Failure> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok(pb::WorkloadKey {
            namespace: ns.into(),
            name: name.into(),
        }),
        _ => Err(Failure::rejected(format!(
            "{s:?}: name the pod as NAMESPACE/NAME"
        ))),
    }
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Failure::rejected(format!("--label {l:?}: expected KEY=VALUE")))
        })
        .collect()
}

async fn workload(
    store: &str,
    tls: &dnsfence_api::ClientTls,
    timeout: std::time::Duration,
    w: WorkloadCommand,
) -> Result<(), Failure> {
    let revision = match w {
        WorkloadCommand::Add {
            pod,
            ips,
            labels,
            node,
        } => {
            let key = parse_pod(&pod)?;
            for ip in &ips {
                ip.parse::<std::net::IpAddr>()
                    .map_err(|_| Failure::rejected(format!("--ip {ip:?}: not an IP address")))?;
            }
            let labels = parse_labels(&labels)?;
            let mut client = connect(store, tls, timeout).await?;
            client
                .upsert_workloads(pb::UpsertWorkloadsRequest {
                    workloads: vec![pb::Workload {
                        key: Some(key),
                        labels: labels.into_iter().collect(),
                        ips,
                        node,
                    }],
                })
                .await?
                .into_inner()
                .revision
        }
        WorkloadCommand::Remove { pods } => {
            let keys = pods
                .iter()
                .map(|p| parse_pod(p))
                .collect::<Result<_, _>>()?;
            let mut client = connect(store, tls, timeout).await?;
            client
                .remove_workloads(pb::RemoveWorkloadsRequest { workloads: keys })
                .await?
                .into_inner()
                .revision
        }
    };
    println!("revision {revision}");
    Ok(())
}

async fn namespace(
    store: &str,
    tls: &dnsfence_api::ClientTls,
    timeout: std::time::Duration,
    n: NamespaceCommand,
) -> Result<(), Failure> {
    let revision = match n {
        NamespaceCommand::Add { name, labels } => {
            let labels = parse_labels(&labels)?;
            let mut client = connect(store, tls, timeout).await?;
            client
                .upsert_namespaces(pb::UpsertNamespacesRequest {
                    namespaces: vec![pb::Namespace {
                        name,
                        labels: labels.into_iter().collect(),
                    }],
                })
                .await?
                .into_inner()
                .revision
        }
        NamespaceCommand::Remove { names } => {
            let mut client = connect(store, tls, timeout).await?;
            client
                .remove_namespaces(pb::RemoveNamespacesRequest { names })
                .await?
                .into_inner()
                .revision
        }
    };
    println!("revision {revision}");
    Ok(())
}

fn explain_request(e: &ExplainArgs) -> Result<pb::ExplainRequest, Failure> {
    let pod = if e.pod.contains('/') {
        pb::explain_request::Pod::Workload(parse_pod(&e.pod)?)
    } else {
        e.pod.parse::<std::net::IpAddr>().map_err(|_| {
            Failure::rejected(format!(
                "{:?}: give the pod as NAMESPACE/NAME or an IP address",
                e.pod
            ))
        })?;
        pb::explain_request::Pod::Ip(e.pod.clone())
    };
    let port = e
        .port
        .as_deref()
        .map(|p| {
            p.parse::<dnsfence_policy::ports::PortRange>()
                .map_err(|reason| Failure::rejected(format!("--port: {reason}")))
        })
        .transpose()?;
    let default_policy = match e.default.as_deref() {
        None => pb::DefaultPolicy::Unspecified,
        Some(d) => match dnsfence_policy::allowlist::DefaultPolicy::parse(d) {
            Some(d) => pb::DefaultPolicy::from(d),
            None => {
                return Err(Failure::rejected(format!(
                    "--default {d:?}: expected DefaultAllow or DefaultDeny"
                )));
            }
        },
    };
    Ok(pb::ExplainRequest {
        pod: Some(pod),
        destination: e.destination.clone(),
        port: port.as_ref().map(Into::into),
        default_policy: default_policy as i32,
    })
}
