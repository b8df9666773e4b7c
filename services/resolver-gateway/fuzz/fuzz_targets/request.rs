//! Any bytes as a DNS query from a known pod, over UDP and TCP: the gateway must never
//! panic, and whatever it answers must be a DNS message with the query's ID.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dnsfence_api::tail::{DerivedState, TailUpdate};
use dnsfence_policy::allowlist::{Allowlist, DefaultPolicy};
use dnsfence_policy::model::{Binding, WorkloadBinding, WorkloadKey};
use dnsfence_resolver_gateway::config::{
    AckTimeoutAction, DecisionLogs, DeniedRcode, UnknownSource,
};
use dnsfence_resolver_gateway::grants::GrantHub;
use dnsfence_resolver_gateway::handler::{Gateway, Now, Settings};
use dnsfence_resolver_gateway::identity::Identities;
use dnsfence_resolver_gateway::metrics::{GatewayMetrics, Transport};
use dnsfence_resolver_gateway::resolve::{CacheConfig, Resolver, UpstreamConfig};
use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;

struct World {
    runtime: tokio::runtime::Runtime,
    gateway: Arc<Gateway>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let gateway = runtime.block_on(async {
            let mut registry = prometheus_client::registry::Registry::default();
            let metrics = Arc::new(GatewayMetrics::register(&mut registry));
            // Port 9 (discard): nothing answers, and every attempt times out at once.
            let upstream = UpstreamConfig {
                servers: vec!["127.0.0.1:9".parse().unwrap()],
                timeout: Duration::from_millis(1),
                attempts: 1,
                sockets_per_server: 1,
            };
            let resolver = Arc::new(
                Resolver::new("fuzz", upstream, CacheConfig::default(), &mut registry)
                    .await
                    .unwrap(),
            );
            let identities = Identities::new();
            let allowlist = Allowlist::new(Vec::new());
            identities.apply(TailUpdate::Reset(DerivedState {
                revision: 1,
                bindings: vec![WorkloadBinding {
                    workload: WorkloadKey {
                        namespace: "default".into(),
                        name: "fuzz".into(),
                    },
                    ips: vec!["127.0.0.2".parse().unwrap()],
                    node: "node".into(),
                    binding: Binding::Enforced(allowlist.id().clone()),
                }],
                allowlists: vec![allowlist],
            }));
            identities.apply(TailUpdate::CaughtUp(1));
            let settings = Settings {
                cluster_domain: "cluster.local".into(),
                default_policy: DefaultPolicy::DefaultDeny,
                unknown_source: UnknownSource::Refuse,
                denied_rcode: DeniedRcode::Refused,
                grant_min_ttl: Duration::from_secs(30),
                grant_max_ttl: Duration::from_secs(3600),
                grant_ack_timeout: Duration::from_millis(1),
                ack_timeout_action: AckTimeoutAction::Answer,
                max_udp_payload: 1232,
                answer_cache_size: 1000,
                // the fuzzer's denials would flood stdout
                decision_logs: DecisionLogs::None,
                decision_log_rate: 0,
            };
            let hub = GrantHub::new(Arc::clone(&metrics));
            Arc::new(Gateway::new(
                settings,
                identities,
                Arc::clone(&resolver),
                resolver,
                hub,
                metrics,
            ))
        });
        World { runtime, gateway }
    })
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    let src: SocketAddr = "127.0.0.2:5353".parse().unwrap();
    // The fast path first, as the UDP loop does, then what it leaves for later.
    let now = world.gateway.answer_now(data, src, Transport::Udp);
    if let Now::Answer(bytes) = &now {
        assert_eq!(&bytes[..2], &data[..2], "answer carries the query's ID");
    }
    let later = world
        .runtime
        .block_on(world.gateway.handle_later(data, src, Transport::Udp, now));
    if let Some(bytes) = later {
        assert_eq!(&bytes[..2], &data[..2], "answer carries the query's ID");
    }
    for transport in [Transport::Udp, Transport::Tcp] {
        let answer = world
            .runtime
            .block_on(world.gateway.handle(data, src, transport));
        if let Some(bytes) = answer {
            let message = Message::from_vec(&bytes).expect("the gateway's answer parses");
            assert_eq!(&bytes[..2], &data[..2], "answer carries the query's ID");
            if transport == Transport::Udp {
                let edns = Message::from_vec(data).is_ok_and(|q| q.edns.is_some());
                let limit = if edns { 1232 } else { 512 };
                assert!(
                    bytes.len() <= limit,
                    "{} bytes over UDP (limit {limit})",
                    bytes.len()
                );
            }
            let _ = message;
        }
    }
});
