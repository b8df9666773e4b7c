//! The state file: what the enforcer must remember across a restart that the pinned maps do
//! not say. The last applied store revision (the tail resumes after it), the derived state
//! at that revision (this node's bindings and the allowlists, so a resumed tail needs no
//! snapshot and revocation has the allowlists to check against), the allowlist → policy id
//! mapping the `pods` and `cidrs` maps are keyed by, and, beside each grant, the name and
//! ports it was granted for.
//!
//! Encoded with protobuf (the store's own messages for allowlists and bindings), written to
//! a temporary file that is fsynced and renamed over the old one, then the directory is
//! fsynced: a crash leaves the old or the new file, never a torn one.

use std::{
    fs::File,
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
};

use dnsfence_api::{grants::v1 as gpb, store::v1 as pb};

use crate::{Error, Result};

/// Bumped when the file's meaning changes incompatibly; other versions are ignored.
pub const FORMAT: u32 = 1;

/// The whole file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StateFile {
    /// [`FORMAT`].
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// The node the state belongs to; a file of another node is ignored.
    #[prost(string, tag = "2")]
    pub node: String,
    /// The last store revision applied to the datapath.
    #[prost(uint64, tag = "3")]
    pub revision: u64,
    /// Every allowlist known at `revision`.
    #[prost(message, repeated, tag = "4")]
    pub allowlists: Vec<pb::Allowlist>,
    /// This node's workload bindings at `revision`.
    #[prost(message, repeated, tag = "5")]
    pub bindings: Vec<pb::WorkloadBinding>,
    /// Allowlist id → the datapath's policy id.
    #[prost(message, repeated, tag = "6")]
    pub policy_ids: Vec<PolicyIdRecord>,
    /// Next policy id to hand out.
    #[prost(uint32, tag = "7")]
    pub next_policy_id: u32,
    /// The grants' names and ports.
    #[prost(message, repeated, tag = "8")]
    pub grants: Vec<GrantRecordMessage>,
}

/// One allowlist's policy id.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PolicyIdRecord {
    /// The allowlist id.
    #[prost(string, tag = "1")]
    pub allowlist: String,
    /// Its id in the `pods` and `cidrs` maps.
    #[prost(uint32, tag = "2")]
    pub policy_id: u32,
}

/// One grant as received: for which name and ports, until when.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GrantRecordMessage {
    /// The pod's address (4 or 16 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub pod: Vec<u8>,
    /// The destination (4 or 16 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub destination: Vec<u8>,
    /// The name the gateway allowed.
    #[prost(string, tag = "3")]
    pub name: String,
    /// The ports granted.
    #[prost(message, repeated, tag = "4")]
    pub ports: Vec<gpb::PortRange>,
    /// CLOCK_BOOTTIME deadline in ns (the clock survives a process restart, not a reboot;
    /// after a reboot the pinned maps are gone too).
    #[prost(uint64, tag = "5")]
    pub expiry_boot_ns: u64,
}

/// An address as 4 or 16 bytes.
pub fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// An address from 4 or 16 bytes.
pub fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    if let Ok(a) = <[u8; 4]>::try_from(b) {
        return Some(IpAddr::from(a));
    }
    <[u8; 16]>::try_from(b).ok().map(IpAddr::from)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Reads the state file; `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<StateFile>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let state =
        <StateFile as prost::Message>::decode(bytes.as_slice()).map_err(|e| Error::StateFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if state.format != FORMAT {
        return Err(Error::StateFile {
            path: path.to_path_buf(),
            reason: format!("format {} (this build reads {FORMAT})", state.format),
        });
    }
    Ok(Some(state))
}

/// Writes the state file atomically: temporary file, fsync, rename, fsync of the directory.
pub fn save(path: &Path, state: &StateFile) -> Result<()> {
    let bytes = prost::Message::encode_to_vec(state);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tmp = tmp_path(path);
    {
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(&bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(&dir, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("enforcer.state");
        assert!(load(&path).unwrap().is_none());
        let state = StateFile {
            format: FORMAT,
            node: "n1".into(),
            revision: 42,
            policy_ids: vec![PolicyIdRecord {
                allowlist: "abc".into(),
                policy_id: 7,
            }],
            next_policy_id: 8,
            grants: vec![GrantRecordMessage {
                pod: ip_bytes("192.0.2.10".parse().unwrap()),
                destination: ip_bytes("2001:db8::1".parse().unwrap()),
                name: "github.com".into(),
                ports: vec![gpb::PortRange {
                    protocol: 6,
                    start: 443,
                    end: 443,
                }],
                expiry_boot_ns: 5,
            }],
            ..Default::default()
        };
        save(&path, &state).unwrap();
        assert_eq!(load(&path).unwrap().unwrap(), state);
        assert!(!tmp_path(&path).exists());
        let g = &state.grants[0];
        assert_eq!(
            ip_from_bytes(&g.destination),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(ip_from_bytes(&[1, 2, 3]), None);

        std::fs::write(&path, b"\xff\xff\xff garbage").unwrap();
        assert!(matches!(load(&path), Err(Error::StateFile { .. })));
        let other = StateFile {
            format: FORMAT + 1,
            ..Default::default()
        };
        save(&path, &other).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("format"));
    }
}
