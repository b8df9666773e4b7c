//! The world the gateway tests run in, all real and on loopback: a policy store, an
//! authoritative upstream (hickory-server) with the test zones, the gateway itself, gRPC
//! grant subscribers that ack (or not), and a DNS client that queries from a chosen
//! 127.0.0.0/8 source address, since the source address is how the gateway knows the pod.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use dnsfence_api::grants::v1 as gpb;
use dnsfence_api::grants::v1::grants_client::GrantsClient;
use dnsfence_api::store::v1 as pb;
use dnsfence_api::store::v1::policy_store_client::PolicyStoreClient;
use dnsfence_api::{ClientTls, Listener};
use dnsfence_test_authority::{Authority, RunningAuthority, Zone};
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub const PATIENCE: Duration = Duration::from_secs(20);

pub const ALLOW_GITHUB: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/seed/allow-github.yaml"
));

/// Names of the test zones the second policy allows, on 443/TCP and 8000-8099/TCP.
pub const TEST_EGRESS: &str = r#"
apiVersion: networking.k8s.aws/v1alpha1
kind: ApplicationNetworkPolicy
metadata:
  name: test-egress
  namespace: default
spec:
  podSelector:
    matchLabels:
      run: nginx
  policyTypes:
  - Egress
  egress:
  - to:
    - domainNames:
      - "*.example.test"
      - "alias.example.test"
    ports:
    - protocol: TCP
      port: 443
    - protocol: TCP
      port: 8000
      endPort: 8099
"#;

/// The pods: source addresses the DNS client queries from.
pub const NGINX_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
pub const NGINX_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
pub const PLAIN: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
pub const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

pub const GITHUB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const API_GITHUB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
pub const NPMJS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
pub const BIG_COUNT: usize = 2000;

/// The upstream's zones.
pub fn zones() -> Vec<Zone> {
    let mut example = Zone::new("example.test.")
        .a("www", Ipv4Addr::new(198, 51, 100, 1), 300)
        .aaaa("www", Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 300)
        .a("zero", Ipv4Addr::new(198, 51, 100, 2), 0)
        .a("five", Ipv4Addr::new(198, 51, 100, 3), 5)
        .a("long", Ipv4Addr::new(198, 51, 100, 4), 86_400)
        .txt("www", "hello", 300)
        .cname("alias", "hop.example.test.", 300)
        .cname("hop", "www.example.test.", 300)
        .cname("split", "edge.cdn.test.", 300);
    for i in 0..BIG_COUNT {
        let ip = Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250) as u8 + 1);
        example = example.a("big", ip, 60);
    }
    vec![
        Zone::new("github.com.")
            .a("@", GITHUB, 60)
            .a("api", API_GITHUB, 60),
        Zone::new("npmjs.com.").a("@", NPMJS, 60),
        example,
        Zone::new("cdn.test.").a("edge", Ipv4Addr::new(198, 51, 100, 50), 120),
        Zone::new("cluster.local.").a("kubernetes.default.svc", Ipv4Addr::new(192, 0, 2, 1), 30),
    ]
}

pub async fn start_authority() -> anyhow::Result<RunningAuthority> {
    Ok(Authority::start(zones(), "127.0.0.1:0".parse()?).await?)
}

/// A policy store served in-process on an ephemeral port.
pub struct StoreHandle {
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl StoreHandle {
    pub async fn start() -> anyhow::Result<StoreHandle> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        StoreHandle::serve(listener).await
    }

    /// Serves on `addr` (a port a test reserved earlier).
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<StoreHandle> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        StoreHandle::serve(listener).await
    }

    async fn serve(listener: tokio::net::TcpListener) -> anyhow::Result<StoreHandle> {
        let dir = tempfile::tempdir()?;
        let config = dnsfence_policy_store::Config::parse_from([
            "dnsfence-policy-store",
            "--data-dir",
            &dir.path().display().to_string(),
            "--listen",
            "127.0.0.1:0",
        ]);
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = dnsfence_policy_store::run(config, vec![Listener::Tcp(listener)], async {
                let _ = stopped.await;
            })
            .await;
        });
        Ok(StoreHandle {
            addr,
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub async fn client(&self) -> anyhow::Result<PolicyStoreClient<Channel>> {
        let channel = dnsfence_api::connect(
            &format!("http://{}", self.addr),
            &ClientTls::default(),
            PATIENCE,
        )
        .await?;
        Ok(PolicyStoreClient::new(channel))
    }

    pub async fn apply(&self, source: &str, content: &str) -> anyhow::Result<()> {
        self.client()
            .await?
            .apply(pb::ApplyRequest {
                manifests: vec![pb::Manifest {
                    source: source.into(),
                    content: content.into(),
                }],
                default_namespace: String::new(),
                dry_run: false,
            })
            .await
            .with_context(|| format!("apply {source}"))?;
        Ok(())
    }

    pub async fn delete(&self, source: &str, content: &str) -> anyhow::Result<()> {
        self.client()
            .await?
            .delete(pb::DeleteRequest {
                manifests: vec![pb::Manifest {
                    source: source.into(),
                    content: content.into(),
                }],
                default_namespace: String::new(),
                references: Vec::new(),
            })
            .await?;
        Ok(())
    }

    pub async fn pod(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        ip: IpAddr,
        node: &str,
    ) -> anyhow::Result<()> {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        self.client()
            .await?
            .upsert_workloads(pb::UpsertWorkloadsRequest {
                workloads: vec![pb::Workload {
                    key: Some(pb::WorkloadKey {
                        namespace: "default".into(),
                        name: name.into(),
                    }),
                    labels,
                    ips: vec![ip.to_string()],
                    node: node.into(),
                }],
            })
            .await?;
        Ok(())
    }

    /// The seed policy, the test policy, and the pods of [`NGINX_A`], [`NGINX_B`], [`PLAIN`].
    pub async fn seed(&self) -> anyhow::Result<()> {
        self.apply("allow-github.yaml", ALLOW_GITHUB).await?;
        self.apply("test-egress.yaml", TEST_EGRESS).await?;
        self.pod("nginx-a", &[("run", "nginx")], NGINX_A.into(), "node-a")
            .await?;
        self.pod("nginx-b", &[("run", "nginx")], NGINX_B.into(), "node-b")
            .await?;
        self.pod("plain", &[("app", "other")], PLAIN.into(), "node-a")
            .await?;
        Ok(())
    }
}

impl Drop for StoreHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The gateway served in-process; stopped when dropped.
pub struct GatewayHandle {
    pub dns: SocketAddr,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl GatewayHandle {
    /// `extra` are flags as on the command line.
    pub async fn start(
        store: SocketAddr,
        upstreams: &[SocketAddr],
        extra: &[&str],
    ) -> anyhow::Result<GatewayHandle> {
        let list: Vec<String> = upstreams.iter().map(ToString::to_string).collect();
        let mut args = vec![
            "dnsfence-resolver-gateway".to_string(),
            format!("--store=http://{store}"),
            format!("--upstream={}", list.join(",")),
            "--dns-listen=127.0.0.1:0".into(),
            "--grpc-listen=127.0.0.1:0".into(),
            "--metrics-listen=127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_string()));
        let config = dnsfence_resolver_gateway::Config::try_parse_from(args)?;
        let listeners = dnsfence_resolver_gateway::bind(&config).await?;
        let dns = listeners.dns_addr()?;
        let http = listeners.http_addr().context("no http listener")?;
        let grpc = match &listeners.grpc {
            Listener::Tcp(l) => l.local_addr()?,
            Listener::Unix(_) => bail!("expected a TCP gRPC listener"),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            dnsfence_resolver_gateway::run(config, listeners, async {
                let _ = stopped.await;
            })
            .await?;
            Ok(())
        });
        Ok(GatewayHandle {
            dns,
            grpc,
            http,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Waits until /readyz says ready.
    pub async fn ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if matches!(http_get(self.http, "/readyz").await, Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("gateway not ready after {PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts a gateway and waits until it caught up with the store.
    pub async fn start_ready(
        store: SocketAddr,
        upstreams: &[SocketAddr],
        extra: &[&str],
    ) -> anyhow::Result<GatewayHandle> {
        let gateway = GatewayHandle::start(store, upstreams, extra).await?;
        gateway.ready().await?;
        Ok(gateway)
    }

    /// Subscribes as `node`'s enforcer and waits until the gateway registered the stream.
    pub async fn subscribe(&self, node: &str, mode: AckMode) -> anyhow::Result<Subscriber> {
        let before = self.subscribers().await?;
        let sub = Subscriber::connect(self.grpc, node, mode).await?;
        self.wait_subscribers(before + 1).await?;
        Ok(sub)
    }

    /// The gateway's count of enforcer subscriptions.
    pub async fn subscribers(&self) -> anyhow::Result<usize> {
        Ok(metric(&self.metrics().await?, "dnsfence_gateway_subscribers", &[]) as usize)
    }

    /// Waits until the gateway counts exactly `n` subscriptions.
    pub async fn wait_subscribers(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        while self.subscribers().await? != n {
            if Instant::now() > deadline {
                bail!("the gateway never counted {n} subscriptions");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(http_get(self.http, "/metrics").await?.1)
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task).await???;
        }
        Ok(())
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Sum of a metric's samples whose line contains every one of `parts`.
pub fn metric(text: &str, name: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A minimal HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split(' ')
        .nth(1)
        .context("no status")?
        .parse::<u16>()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// One received batch, when it arrived and when we acked it.
#[derive(Debug, Clone)]
pub struct Received {
    pub batch: gpb::GrantBatch,
    pub received: Instant,
    pub acked: Option<Instant>,
}

/// How a test subscriber acks.
#[derive(Debug, Clone, Copy)]
pub enum AckMode {
    Immediately,
    After(Duration),
    Never,
}

/// An enforcer stand-in at the gRPC level: a real client of the Grants stream that records
/// every batch and acks as told.
pub struct Subscriber {
    pub batches: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Subscriber {
    pub async fn connect(
        grpc: SocketAddr,
        node: &str,
        mode: AckMode,
    ) -> anyhow::Result<Subscriber> {
        let channel =
            dnsfence_api::connect(&format!("http://{grpc}"), &ClientTls::default(), PATIENCE)
                .await?;
        let mut client = GrantsClient::new(channel);
        let (tx, rx) = mpsc::channel::<gpb::SubscribeRequest>(1024);
        tx.send(gpb::SubscribeRequest {
            kind: Some(gpb::subscribe_request::Kind::Hello(gpb::Hello {
                node: node.into(),
            })),
        })
        .await?;
        let mut inbound = client
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let batches: Arc<Mutex<Vec<Received>>> = Arc::default();
        let seen = Arc::clone(&batches);
        let task = tokio::spawn(async move {
            while let Ok(Some(batch)) = inbound.message().await {
                let received = Instant::now();
                let seq = batch.seq;
                let index = {
                    let mut all = seen.lock().unwrap();
                    all.push(Received {
                        batch,
                        received,
                        acked: None,
                    });
                    all.len() - 1
                };
                let delay = match mode {
                    AckMode::Never => continue,
                    AckMode::Immediately => Duration::ZERO,
                    AckMode::After(d) => d,
                };
                let tx = tx.clone();
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    seen.lock().unwrap()[index].acked = Some(Instant::now());
                    let _ = tx
                        .send(gpb::SubscribeRequest {
                            kind: Some(gpb::subscribe_request::Kind::Ack(gpb::Ack { seq })),
                        })
                        .await;
                });
            }
        });
        Ok(Subscriber { batches, task })
    }

    pub fn grants(&self) -> Vec<gpb::Grant> {
        self.batches
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.batch.grants.clone())
            .collect()
    }

    pub fn clear(&self) {
        self.batches.lock().unwrap().clear();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn ip_of(bytes: &[u8]) -> IpAddr {
    match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        _ => {
            let mut b = [0u8; 16];
            b.copy_from_slice(bytes);
            IpAddr::V6(Ipv6Addr::from(b))
        }
    }
}

/// Builds a query with EDNS (4096-byte buffer) unless `edns` is false.
pub fn query(name: &str, qtype: RecordType, edns: bool) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        m.set_edns(e);
    }
    m
}

/// Sends `message` over UDP from `source` (a loopback address) and waits for the answer.
pub async fn udp_exchange(
    server: SocketAddr,
    source: Ipv4Addr,
    message: &Message,
) -> anyhow::Result<Message> {
    let bytes = message.to_vec()?;
    let answer = udp_raw(server, source, &bytes, PATIENCE)
        .await?
        .context("no answer")?;
    Ok(Message::from_vec(&answer)?)
}

/// Sends raw bytes; `None` if nothing came back within `wait`.
pub async fn udp_raw(
    server: SocketAddr,
    source: Ipv4Addr,
    bytes: &[u8],
    wait: Duration,
) -> anyhow::Result<Option<Vec<u8>>> {
    let socket = UdpSocket::bind(SocketAddr::new(source.into(), 0)).await?;
    socket.send_to(bytes, server).await?;
    let mut buf = vec![0u8; 65_535];
    match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
        Ok(r) => {
            let (len, _) = r?;
            Ok(Some(buf[..len].to_vec()))
        }
        Err(_) => Ok(None),
    }
}

pub async fn udp(
    server: SocketAddr,
    source: Ipv4Addr,
    name: &str,
    qtype: RecordType,
) -> anyhow::Result<Message> {
    udp_exchange(server, source, &query(name, qtype, true)).await
}

/// A TCP connection from `source`.
pub async fn tcp_connect(
    server: SocketAddr,
    source: Ipv4Addr,
) -> anyhow::Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.into(), 0))?;
    Ok(socket.connect(server).await?)
}

pub async fn tcp_send(stream: &mut tokio::net::TcpStream, bytes: &[u8]) -> anyhow::Result<()> {
    let len = u16::try_from(bytes.len())?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(bytes).await?;
    Ok(())
}

pub async fn tcp_receive(stream: &mut tokio::net::TcpStream) -> anyhow::Result<Message> {
    let mut len = [0u8; 2];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut len)).await??;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    Ok(Message::from_vec(&buf)?)
}

/// Queries until the answer has `rcode` (the gateway learns store changes asynchronously).
pub async fn udp_until(
    server: SocketAddr,
    source: Ipv4Addr,
    name: &str,
    qtype: RecordType,
    rcode: hickory_proto::op::ResponseCode,
) -> anyhow::Result<Message> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = udp(server, source, name, qtype).await?;
        if answer.metadata.response_code == rcode {
            return Ok(answer);
        }
        if Instant::now() > deadline {
            bail!(
                "{name}: still {:?} after {PATIENCE:?}",
                answer.metadata.response_code
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn tcp(
    server: SocketAddr,
    source: Ipv4Addr,
    name: &str,
    qtype: RecordType,
) -> anyhow::Result<Message> {
    let mut stream = tcp_connect(server, source).await?;
    tcp_send(&mut stream, &query(name, qtype, true).to_vec()?).await?;
    tcp_receive(&mut stream).await
}

/// The A/AAAA addresses of an answer.
pub fn addresses(message: &Message) -> Vec<IpAddr> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// The Extended DNS Error of an answer: (info code, text).
pub fn ede(message: &Message) -> Option<(u16, String)> {
    let edns = message.edns.as_ref()?;
    for (code, option) in edns.options().as_ref() {
        if u16::from(*code) == 15
            && let hickory_proto::rr::rdata::opt::EdnsOption::Unknown(_, data) = option
        {
            let info = u16::from_be_bytes([data[0], data[1]]);
            return Some((info, String::from_utf8_lossy(&data[2..]).into_owned()));
        }
    }
    None
}

/// A UDP "upstream" that receives and never answers.
pub async fn silent_upstream() -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while socket.recv_from(&mut buf).await.is_ok() {}
    });
    Ok((addr, task))
}

/// Everything most tests need: upstream, store with the seed, gateway, ready.
pub struct World {
    pub authority: RunningAuthority,
    pub store: StoreHandle,
    pub gateway: GatewayHandle,
}

impl World {
    pub async fn start(extra: &[&str]) -> anyhow::Result<World> {
        let authority = start_authority().await?;
        let store = StoreHandle::start().await?;
        store.seed().await?;
        let gateway = GatewayHandle::start(store.addr, &[authority.addr()], extra).await?;
        gateway.ready().await?;
        Ok(World {
            authority,
            store,
            gateway,
        })
    }
}
