//! Reading and writing the datapath's maps: pods, grants, CIDR rules, gateways, counters.
//! Userspace is the only writer of these maps (the programs only read them), so the
//! read-merge-write of a grant entry needs no lock beyond `&mut self`.

use std::net::IpAddr;

use aya::maps::{HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key};
use ipnet::IpNet;

use crate::{
    Datapath, Error, Result, clock,
    maps::{
        CIDR_ID_V4, COUNTERS_LEN, CidrKeyData, Counter, GatewayValue, GrantKey, PodKey, PodValue,
        Ports, addr16, ip_from16,
    },
    merge::{self, NarrowOutcome},
    types::{Counters, GrantSlot, Mode, PortSpec},
};

/// `DF_GW_DNS`.
const GW_DNS: u32 = 1;

/// A pod as the datapath knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodEntry {
    /// Host-side interface.
    pub ifindex: u32,
    /// Enforce / audit / allow.
    pub mode: Mode,
    /// Allowlist id (the cidrs rules it uses).
    pub policy_id: u32,
}

fn not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(nix::libc::ENOENT),
        _ => false,
    }
}

fn check_policy_id(id: u32) -> Result<()> {
    if id & CIDR_ID_V4 != 0 {
        return Err(Error::PolicyIdOutOfRange(id));
    }
    Ok(())
}

/// The cidrs key for (allowlist id, prefix): IPv4 prefixes are mapped and tagged.
fn cidr_key(id: u32, prefix: IpNet) -> Key<CidrKeyData> {
    let prefix = prefix.trunc();
    let (id, bits) = match prefix {
        IpNet::V4(p) => (id | CIDR_ID_V4, 96 + u32::from(p.prefix_len())),
        IpNet::V6(p) => (id, u32::from(p.prefix_len())),
    };
    Key::new(
        32 + bits,
        CidrKeyData {
            id,
            addr: addr16(prefix.addr()),
        },
    )
}

impl Datapath {
    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map> {
        self.ebpf.map_mut(name).ok_or(Error::Missing(name))
    }

    fn map(&self, name: &'static str) -> Result<&Map> {
        self.ebpf.map(name).ok_or(Error::Missing(name))
    }

    fn hash_mut<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>> {
        HashMap::try_from(self.map_mut(name)?).map_err(|e| Error::map(name, e))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<HashMap<&MapData, K, V>> {
        HashMap::try_from(self.map(name)?).map_err(|e| Error::map(name, e))
    }

    // ---- pods ----

    /// Registers (or updates) a pod address behind host interface `ifindex`. Write the pod
    /// before attaching to its interface: an unknown source address is dropped as spoofed.
    /// `policy_id` (< 2^31) selects the pod's CIDR rules.
    pub fn upsert_pod(
        &mut self,
        ip: IpAddr,
        ifindex: u32,
        mode: Mode,
        policy_id: u32,
    ) -> Result<()> {
        check_policy_id(policy_id)?;
        let value = PodValue {
            ifindex,
            policy_id,
            mode: mode.as_u8(),
            _pad: [0; 7],
        };
        self.hash_mut::<PodKey, PodValue>("pods")?
            .insert(PodKey { addr: addr16(ip) }, value, 0)
            .map_err(|e| Error::map("pods", e))
    }

    /// Forgets a pod address; returns whether it was known.
    pub fn remove_pod(&mut self, ip: IpAddr) -> Result<bool> {
        remove(
            &mut self.hash_mut::<PodKey, PodValue>("pods")?,
            "pods",
            &PodKey { addr: addr16(ip) },
        )
    }

    /// The pod entry for `ip`, if any.
    pub fn pod(&self, ip: IpAddr) -> Result<Option<PodEntry>> {
        match self
            .hash::<PodKey, PodValue>("pods")?
            .get(&PodKey { addr: addr16(ip) }, 0)
        {
            Ok(v) => Ok(Some(PodEntry {
                ifindex: v.ifindex,
                mode: Mode::from_u8(v.mode),
                policy_id: v.policy_id,
            })),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(Error::map("pods", e)),
        }
    }

    /// Every pod address the datapath knows.
    pub fn pods(&self) -> Result<Vec<(IpAddr, PodEntry)>> {
        let map = self.hash::<PodKey, PodValue>("pods")?;
        let mut out = Vec::new();
        for item in map.iter() {
            let (k, v) = item.map_err(|e| Error::map("pods", e))?;
            out.push((
                ip_from16(k.addr),
                PodEntry {
                    ifindex: v.ifindex,
                    mode: Mode::from_u8(v.mode),
                    policy_id: v.policy_id,
                },
            ));
        }
        Ok(out)
    }

    // ---- grants ----

    /// Grants `pod` access to `dst` on `ports` until `expiry_boot_ns` (CLOCK_BOOTTIME, see
    /// [`clock::deadline_after`]), merging into the pair's entry (see [`crate::merge`]).
    pub fn put_grant(
        &mut self,
        pod: IpAddr,
        dst: IpAddr,
        ports: &[PortSpec],
        expiry_boot_ns: u64,
    ) -> Result<()> {
        merge::validate(ports)?;
        let now = clock::boot_time_ns()?;
        let key = GrantKey {
            pod: addr16(pod),
            dst: addr16(dst),
        };
        let mut map = self.hash_mut::<GrantKey, Ports>("grants")?;
        let mut entry = match map.get(&key, 0) {
            Ok(v) => v,
            Err(e) if not_found(&e) => Ports::default(),
            Err(e) => return Err(Error::map("grants", e)),
        };
        merge::merge_grant(&mut entry, ports, expiry_boot_ns, now);
        map.insert(key, entry, 0)
            .map_err(|e| Error::map("grants", e))
    }

    /// The live port ranges granted to `pod` for `dst`, or `None` without an entry.
    pub fn grant(&self, pod: IpAddr, dst: IpAddr) -> Result<Option<Vec<GrantSlot>>> {
        let key = GrantKey {
            pod: addr16(pod),
            dst: addr16(dst),
        };
        match self.hash::<GrantKey, Ports>("grants")?.get(&key, 0) {
            Ok(v) => Ok(Some(merge::slots(&v, clock::boot_time_ns()?))),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(Error::map("grants", e)),
        }
    }

    /// Revokes everything `pod` was granted for `dst`; returns whether there was an entry.
    /// Connections already open stay tracked until idle.
    pub fn remove_grant(&mut self, pod: IpAddr, dst: IpAddr) -> Result<bool> {
        let key = GrantKey {
            pod: addr16(pod),
            dst: addr16(dst),
        };
        remove(
            &mut self.hash_mut::<GrantKey, Ports>("grants")?,
            "grants",
            &key,
        )
    }

    /// Restricts the pair's grant to what `allowed` still permits (after a policy change),
    /// keeping each range's deadline; deletes the entry when nothing is left.
    pub fn narrow_grant(
        &mut self,
        pod: IpAddr,
        dst: IpAddr,
        allowed: &[PortSpec],
    ) -> Result<NarrowOutcome> {
        merge::validate(allowed)?;
        let now = clock::boot_time_ns()?;
        let key = GrantKey {
            pod: addr16(pod),
            dst: addr16(dst),
        };
        let mut map = self.hash_mut::<GrantKey, Ports>("grants")?;
        let entry = match map.get(&key, 0) {
            Ok(v) => v,
            Err(e) if not_found(&e) => return Ok(NarrowOutcome::Absent),
            Err(e) => return Err(Error::map("grants", e)),
        };
        match merge::narrow(&entry, allowed, now) {
            (_, false) => Ok(NarrowOutcome::Unchanged),
            (Some(narrowed), true) => {
                map.insert(key, narrowed, 0)
                    .map_err(|e| Error::map("grants", e))?;
                Ok(NarrowOutcome::Narrowed)
            }
            (None, true) => {
                remove(&mut map, "grants", &key)?;
                Ok(NarrowOutcome::Removed)
            }
        }
    }

    /// Deletes every grant entry with no slot live at `now_boot_ns`; returns how many.
    /// The kernel already refuses new flows to expired slots: this only frees memory.
    pub fn sweep_expired(&mut self, now_boot_ns: u64) -> Result<usize> {
        let mut map = self.hash_mut::<GrantKey, Ports>("grants")?;
        let mut dead = Vec::new();
        for item in map.iter() {
            match item {
                Ok((k, v)) if merge::all_expired(&v, now_boot_ns) => dead.push(k),
                Ok(_) => {}
                // an entry deleted while we iterate
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(Error::map("grants", e)),
            }
        }
        let mut removed = 0;
        for k in &dead {
            if remove(&mut map, "grants", k)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Every (pod, destination) pair with a grant entry, live or not (walks the map). The
    /// service uses it to find grants it holds no record of (after a crash) when a pod's
    /// allowlist changes.
    pub fn grant_pairs(&self) -> Result<Vec<(IpAddr, IpAddr)>> {
        Ok(self
            .hash::<GrantKey, Ports>("grants")?
            .keys()
            .filter_map(std::result::Result::ok)
            .map(|k| (ip_from16(k.pod), ip_from16(k.dst)))
            .collect())
    }

    /// [`Datapath::sweep_expired`], also counting the entries left: one walk of the map
    /// gives the sweeper both the memory it freed and the size for the grants gauge.
    /// Returns (removed, remaining).
    pub fn sweep_expired_counted(&mut self, now_boot_ns: u64) -> Result<(usize, usize)> {
        let mut map = self.hash_mut::<GrantKey, Ports>("grants")?;
        let mut dead = Vec::new();
        let mut total = 0usize;
        for item in map.iter() {
            match item {
                Ok((k, v)) => {
                    total += 1;
                    if merge::all_expired(&v, now_boot_ns) {
                        dead.push(k);
                    }
                }
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(Error::map("grants", e)),
            }
        }
        let mut removed = 0;
        for k in &dead {
            if remove(&mut map, "grants", k)? {
                removed += 1;
            }
        }
        Ok((removed, total.saturating_sub(removed)))
    }

    /// Number of grant entries (walks the map: for tests and diagnostics).
    pub fn grant_count(&self) -> Result<usize> {
        Ok(self
            .hash::<GrantKey, Ports>("grants")?
            .keys()
            .filter(std::result::Result::is_ok)
            .count())
    }

    // ---- gateways ----

    /// Replaces the set of DNS gateway addresses (udp/tcp 53 to them always passes).
    pub fn set_gateways(&mut self, gateways: &[IpAddr]) -> Result<()> {
        let mut map = self.hash_mut::<PodKey, GatewayValue>("gateways")?;
        let want: Vec<PodKey> = gateways
            .iter()
            .map(|ip| PodKey { addr: addr16(*ip) })
            .collect();
        let stale: Vec<PodKey> = map
            .keys()
            .filter_map(std::result::Result::ok)
            .filter(|k| !want.contains(k))
            .collect();
        for k in &want {
            map.insert(*k, GatewayValue { flags: GW_DNS }, 0)
                .map_err(|e| Error::map("gateways", e))?;
        }
        for k in &stale {
            remove(&mut map, "gateways", k)?;
        }
        Ok(())
    }

    // ---- CIDR rules ----

    /// Sets the ports allowed to `prefix` for pods with allowlist `id` (< 2^31), replacing
    /// the entry. Longest prefix wins in the kernel, so the caller includes in a longer
    /// prefix's entry the ranges of shorter prefixes that cover it; an entry with no ranges
    /// denies (an `except` block).
    pub fn put_cidr(&mut self, id: u32, prefix: IpNet, ports: &[PortSpec]) -> Result<()> {
        check_policy_id(id)?;
        let value = merge::cidr_ports(ports)?;
        let mut trie =
            LpmTrie::<&mut MapData, CidrKeyData, Ports>::try_from(self.map_mut("cidrs")?)
                .map_err(|e| Error::map("cidrs", e))?;
        trie.insert(&cidr_key(id, prefix), value, 0)
            .map_err(|e| Error::map("cidrs", e))
    }

    /// Removes a CIDR rule; returns whether it existed.
    pub fn remove_cidr(&mut self, id: u32, prefix: IpNet) -> Result<bool> {
        check_policy_id(id)?;
        let mut trie =
            LpmTrie::<&mut MapData, CidrKeyData, Ports>::try_from(self.map_mut("cidrs")?)
                .map_err(|e| Error::map("cidrs", e))?;
        match trie.remove(&cidr_key(id, prefix)) {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(Error::map("cidrs", e)),
        }
    }

    /// The prefixes held for allowlist `id` (walks the trie), so a caller can remove the
    /// entries a new rule set no longer has.
    pub fn cidr_prefixes(&self, id: u32) -> Result<Vec<IpNet>> {
        check_policy_id(id)?;
        let trie = LpmTrie::<&MapData, CidrKeyData, Ports>::try_from(self.map("cidrs")?)
            .map_err(|e| Error::map("cidrs", e))?;
        let mut out = Vec::new();
        for key in trie.keys() {
            let key = match key {
                Ok(k) => k,
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(Error::map("cidrs", e)),
            };
            let data = key.data();
            if data.id & !CIDR_ID_V4 != id {
                continue;
            }
            let bits = key.prefix_len().saturating_sub(32);
            let net = if data.id & CIDR_ID_V4 != 0 {
                let IpAddr::V4(a) = ip_from16(data.addr) else {
                    continue;
                };
                let Ok(len) = u8::try_from(bits.saturating_sub(96)) else {
                    continue;
                };
                ipnet::Ipv4Net::new(a, len).map(IpNet::V4).ok()
            } else {
                let a = std::net::Ipv6Addr::from(data.addr);
                let Ok(len) = u8::try_from(bits) else {
                    continue;
                };
                ipnet::Ipv6Net::new(a, len).map(IpNet::V6).ok()
            };
            out.extend(net);
        }
        Ok(out)
    }

    // ---- counters ----

    /// Verdict counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let arr = PerCpuArray::<&MapData, Counter>::try_from(self.map("counters")?)
            .map_err(|e| Error::map("counters", e))?;
        let mut out = Vec::with_capacity(COUNTERS_LEN as usize);
        for i in 0..COUNTERS_LEN {
            let per_cpu = arr.get(&i, 0).map_err(|e| Error::map("counters", e))?;
            out.push(per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
                packets: acc.packets.wrapping_add(c.packets),
                bytes: acc.bytes.wrapping_add(c.bytes),
            }));
        }
        Ok(Counters::new(out))
    }
}

fn remove<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<&mut MapData, K, V>,
    name: &'static str,
    key: &K,
) -> Result<bool> {
    match map.remove(key) {
        Ok(()) => Ok(true),
        Err(e) if not_found(&e) => Ok(false),
        Err(e) => Err(Error::map(name, e)),
    }
}
