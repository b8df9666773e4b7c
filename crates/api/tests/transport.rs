//! End-to-end transport tests: one router served on TCP and a Unix socket at once, clients on
//! both, mutual TLS, and shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use dnsfence_api::transport::{Listener, connect, health_and_reflection, serve, server_builder};
use dnsfence_api::{ClientTls, ServerTls};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const TIMEOUT: Duration = Duration::from_secs(5);

struct Running {
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), dnsfence_api::ApiError>>,
}

impl Running {
    /// Triggers shutdown and checks that `serve` returns, cleanly, in bounded time.
    async fn shut_down(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("serve did not return after shutdown")
            .unwrap()
            .unwrap();
    }
}

fn start(tls: &ServerTls, listeners: Vec<Listener>) -> Running {
    let (_reporter, health, reflection) = health_and_reflection().unwrap();
    let router = server_builder(tls)
        .unwrap()
        .add_service(health)
        .add_service(reflection);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(router, listeners, async {
        let _ = stopped.await;
    }));
    Running { stop, server }
}

async fn tcp_listener() -> (Listener, u16) {
    let listener = Listener::bind("127.0.0.1:0").await.unwrap();
    let Listener::Tcp(tcp) = &listener else {
        panic!("expected a TCP listener");
    };
    let port = tcp.local_addr().unwrap().port();
    (listener, port)
}

async fn health_status(channel: Channel) -> Result<i32, tonic::Status> {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(response.into_inner().status)
}

async fn reflected_services(channel: Channel) -> Vec<String> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

#[tokio::test]
async fn serves_tcp_and_unix_at_once_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let (tcp, port) = tcp_listener().await;
    let unix_address = format!("unix://{}", socket.display());
    let unix = Listener::bind(&unix_address).await.unwrap();
    let running = start(&ServerTls::default(), vec![tcp, unix]);

    let plain = ClientTls::default();
    let over_tcp = connect(&format!("http://127.0.0.1:{port}"), &plain, TIMEOUT)
        .await
        .unwrap();
    let over_unix = connect(&unix_address, &plain, TIMEOUT).await.unwrap();
    let serving = ServingStatus::Serving as i32;
    assert_eq!(health_status(over_tcp.clone()).await.unwrap(), serving);
    assert_eq!(health_status(over_unix.clone()).await.unwrap(), serving);

    let services = reflected_services(over_unix).await;
    for expected in [
        "dnsfence.store.v1.PolicyStore",
        "dnsfence.grants.v1.Grants",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            services.iter().any(|s| s == expected),
            "{expected} not in {services:?}"
        );
    }

    // Clients still hold open connections: shutdown must drain them, not wait forever.
    running.shut_down().await;
    assert!(health_status(over_tcp).await.is_err());
    assert!(connect(&unix_address, &plain, TIMEOUT).await.is_err());
}

#[tokio::test]
async fn connect_errors_name_the_address_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix://{}", dir.path().join("nobody.sock").display());
    let err = connect(&address, &ClientTls::default(), TIMEOUT)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("connecting to {address}: ")),
        "{err}"
    );
    assert!(err.contains("No such file"), "{err}");
}

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A CA, a server certificate for `localhost`/127.0.0.1 and a client certificate, as PEM files.
fn make_pki(dir: &Path) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "dnsfence test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let mut server_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server_params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server_params.signed_by(&server_key, &ca).unwrap();

    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, "enforcer-node-1");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().unwrap();
    let client_cert = client_params.signed_by(&client_key, &ca).unwrap();

    Pki {
        ca: write(dir, "ca.pem", &ca.pem()),
        server_cert: write(dir, "server.pem", &server_cert.pem()),
        server_key: write(dir, "server-key.pem", &server_key.serialize_pem()),
        client_cert: write(dir, "client.pem", &client_cert.pem()),
        client_key: write(dir, "client-key.pem", &client_key.serialize_pem()),
    }
}

async fn check_over_tls(address: &str, tls: &ClientTls) -> Result<i32, String> {
    let channel = connect(address, tls, TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    health_status(channel).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let (tcp, port) = tcp_listener().await;
    let server_tls = ServerTls {
        tls_cert: Some(pki.server_cert.clone()),
        tls_key: Some(pki.server_key.clone()),
        tls_client_ca: Some(pki.ca.clone()),
    };
    let running = start(&server_tls, vec![tcp]);

    let with_cert = ClientTls {
        tls_ca: Some(pki.ca.clone()),
        tls_client_cert: Some(pki.client_cert.clone()),
        tls_client_key: Some(pki.client_key.clone()),
        tls_domain: None,
    };
    let serving = ServingStatus::Serving as i32;
    // host:port picks https because TLS flags are set; the certificate names 127.0.0.1.
    let address = format!("127.0.0.1:{port}");
    assert_eq!(check_over_tls(&address, &with_cert).await, Ok(serving));
    // By name, through --tls-domain.
    let by_domain = ClientTls {
        tls_domain: Some("localhost".into()),
        ..with_cert.clone()
    };
    let https = format!("https://127.0.0.1:{port}");
    assert_eq!(check_over_tls(&https, &by_domain).await, Ok(serving));

    // With TLS 1.3 the client may finish its side of the handshake before the server rejects
    // it, so the refusal shows either when connecting or on the first call.
    let without_cert = ClientTls {
        tls_ca: Some(pki.ca.clone()),
        ..Default::default()
    };
    let refused = check_over_tls(&address, &without_cert).await.unwrap_err();
    assert!(refused.contains("CertificateRequired"), "{refused}");

    let wrong_name = ClientTls {
        tls_domain: Some("store.example.com".into()),
        ..with_cert.clone()
    };
    let refused = check_over_tls(&address, &wrong_name).await.unwrap_err();
    assert!(refused.contains("not valid for name"), "{refused}");

    // A plaintext client cannot talk to a TLS port.
    let plaintext = check_over_tls(&format!("http://{address}"), &ClientTls::default()).await;
    assert!(plaintext.is_err(), "plaintext got {plaintext:?}");

    running.shut_down().await;
}
