//! TLS command-line options shared by every service and client.
//!
//! Both structs are `clap::Args`, to be `#[command(flatten)]`ed into a binary's options. The
//! server and client flag sets are disjoint, so a binary that is both (a gateway serving
//! enforcers and watching the store) can flatten both. Files are read when the config is
//! built, not when flags are parsed, so a missing file is reported with its flag.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::error::ApiError;

/// A handshake that has not finished by then is a stuck or hostile peer; without a bound it
/// would hold a connection slot forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Server-side TLS: a certificate and key turn TLS on; a client CA additionally requires
/// every client to present a certificate it signed (mutual TLS).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTls {
    /// PEM certificate chain of this server (enables TLS; needs --tls-key).
    #[arg(long, env = "DNSFENCE_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "DNSFENCE_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate that client certificates must chain to (enables mutual TLS).
    #[arg(long, env = "DNSFENCE_TLS_CLIENT_CA", value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServerTls {
    pub fn enabled(&self) -> bool {
        self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_client_ca.is_some()
    }

    /// The TLS config, or `None` for plaintext when no TLS flag is set.
    pub fn server_config(&self) -> Result<Option<ServerTlsConfig>, ApiError> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (None, None) => {
                if self.tls_client_ca.is_some() {
                    return Err(ApiError::Tls(
                        "--tls-client-ca needs --tls-cert and --tls-key".into(),
                    ));
                }
                return Ok(None);
            }
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => {
                return Err(ApiError::Tls("--tls-cert needs --tls-key".into()));
            }
            (None, Some(_)) => {
                return Err(ApiError::Tls("--tls-key needs --tls-cert".into()));
            }
        };
        let identity =
            Identity::from_pem(read_pem("--tls-cert", cert)?, read_pem("--tls-key", key)?);
        let mut config = ServerTlsConfig::new()
            .identity(identity)
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.tls_client_ca {
            config = config.client_ca_root(Certificate::from_pem(read_pem("--tls-client-ca", ca)?));
        }
        Ok(Some(config))
    }
}

/// Client-side TLS: a CA turns TLS on (there are no built-in roots: dnsfence talks to its own
/// services, whose certificates come from the cluster's CA); a client certificate and key
/// answer a server that requires mutual TLS.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTls {
    /// PEM CA certificate the server's certificate must chain to (enables TLS).
    #[arg(long, env = "DNSFENCE_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate chain, for servers that require mutual TLS (needs --tls-client-key).
    #[arg(long, env = "DNSFENCE_TLS_CLIENT_CERT", value_name = "PEM")]
    pub tls_client_cert: Option<PathBuf>,

    /// PEM private key of --tls-client-cert.
    #[arg(long, env = "DNSFENCE_TLS_CLIENT_KEY", value_name = "PEM")]
    pub tls_client_key: Option<PathBuf>,

    /// Name to verify the server's certificate against, when it differs from the address's
    /// host (e.g. connecting by IP).
    #[arg(long, env = "DNSFENCE_TLS_DOMAIN", value_name = "NAME")]
    pub tls_domain: Option<String>,
}

impl ClientTls {
    pub fn enabled(&self) -> bool {
        self.tls_ca.is_some()
            || self.tls_client_cert.is_some()
            || self.tls_client_key.is_some()
            || self.tls_domain.is_some()
    }

    /// The TLS config, or `None` for plaintext when no TLS flag is set.
    pub fn client_config(&self) -> Result<Option<ClientTlsConfig>, ApiError> {
        let Some(ca) = &self.tls_ca else {
            if let Some(flag) = self.first_set_flag() {
                return Err(ApiError::Tls(format!("{flag} needs --tls-ca")));
            }
            return Ok(None);
        };
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read_pem("--tls-ca", ca)?))
            .timeout(HANDSHAKE_TIMEOUT);
        match (&self.tls_client_cert, &self.tls_client_key) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read_pem("--tls-client-cert", cert)?,
                    read_pem("--tls-client-key", key)?,
                ));
            }
            (Some(_), None) => {
                return Err(ApiError::Tls(
                    "--tls-client-cert needs --tls-client-key".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ApiError::Tls(
                    "--tls-client-key needs --tls-client-cert".into(),
                ));
            }
        }
        if let Some(domain) = &self.tls_domain {
            config = config.domain_name(domain.clone());
        }
        Ok(Some(config))
    }

    fn first_set_flag(&self) -> Option<&'static str> {
        if self.tls_client_cert.is_some() {
            Some("--tls-client-cert")
        } else if self.tls_client_key.is_some() {
            Some("--tls-client-key")
        } else if self.tls_domain.is_some() {
            Some("--tls-domain")
        } else {
            None
        }
    }
}

/// Reads a PEM file. The contents are parsed only when the TLS stack is built, whose errors
/// name no file; checking for a PEM block here keeps "wrong file" errors attached to the flag.
fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, ApiError> {
    let bytes = std::fs::read(path).map_err(|e| ApiError::file(flag, path, e))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(ApiError::Tls(format!(
            "{flag} {}: no PEM block in the file",
            path.display()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerTls,
        #[command(flatten)]
        client: ClientTls,
    }

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

    #[test]
    fn flags_parse_and_both_sets_flatten_together() {
        let cli = Cli::try_parse_from([
            "x",
            "--tls-cert",
            "/c.pem",
            "--tls-key",
            "/k.pem",
            "--tls-client-ca",
            "/ca.pem",
            "--tls-ca",
            "/sca.pem",
            "--tls-client-cert",
            "/cc.pem",
            "--tls-client-key",
            "/ck.pem",
            "--tls-domain",
            "store.dnsfence",
        ])
        .unwrap();
        assert_eq!(cli.server.tls_cert.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(
            cli.server.tls_client_ca.as_deref(),
            Some(Path::new("/ca.pem"))
        );
        assert_eq!(
            cli.client.tls_client_key.as_deref(),
            Some(Path::new("/ck.pem"))
        );
        assert_eq!(cli.client.tls_domain.as_deref(), Some("store.dnsfence"));
    }

    #[test]
    fn nothing_set_is_plaintext() {
        assert!(ServerTls::default().server_config().unwrap().is_none());
        assert!(ClientTls::default().client_config().unwrap().is_none());
    }

    #[test]
    fn server_flag_combinations() {
        let only_cert = ServerTls {
            tls_cert: Some("/c.pem".into()),
            ..Default::default()
        };
        assert_eq!(
            only_cert.server_config().unwrap_err().to_string(),
            "TLS: --tls-cert needs --tls-key"
        );
        let only_key = ServerTls {
            tls_key: Some("/k.pem".into()),
            ..Default::default()
        };
        assert_eq!(
            only_key.server_config().unwrap_err().to_string(),
            "TLS: --tls-key needs --tls-cert"
        );
        let only_ca = ServerTls {
            tls_client_ca: Some("/ca.pem".into()),
            ..Default::default()
        };
        assert!(
            only_ca
                .server_config()
                .unwrap_err()
                .to_string()
                .contains("--tls-client-ca needs")
        );
    }

    #[test]
    fn client_flag_combinations() {
        let no_ca = ClientTls {
            tls_domain: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(
            no_ca.client_config().unwrap_err().to_string(),
            "TLS: --tls-domain needs --tls-ca"
        );
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, PEM).unwrap();
        let half = ClientTls {
            tls_ca: Some(ca.clone()),
            tls_client_cert: Some(ca.clone()),
            ..Default::default()
        };
        assert_eq!(
            half.client_config().unwrap_err().to_string(),
            "TLS: --tls-client-cert needs --tls-client-key"
        );
        let ok = ClientTls {
            tls_ca: Some(ca),
            ..Default::default()
        };
        assert!(ok.client_config().unwrap().is_some());
    }

    #[test]
    fn missing_and_non_pem_files_name_the_flag_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let tls = ServerTls {
            tls_cert: Some(missing.clone()),
            tls_key: Some(missing.clone()),
            ..Default::default()
        };
        let err = tls.server_config().unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("--tls-cert {}: ", missing.display())),
            "{err}"
        );

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let tls = ClientTls {
            tls_ca: Some(garbage.clone()),
            ..Default::default()
        };
        let err = tls.client_config().unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "TLS: --tls-ca {}: no PEM block in the file",
                garbage.display()
            )
        );
    }
}
