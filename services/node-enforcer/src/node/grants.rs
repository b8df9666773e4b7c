//! Grant batches become `grants` entries, each remembered with the name and ports it was
//! granted for, and re-checked when the pod's allowlist changes (revocation).

use super::*;

impl Node {
    /// What the pod's current allowlist allows of a grant; everything granted when the
    /// node does not know the pod or its allowlist (the gateway decided with what it knew).
    pub(super) fn allowed_for(
        &self,
        pod: IpAddr,
        dst: IpAddr,
        name: &str,
        ports: &[PortRange],
    ) -> PortSet {
        let Some(key) = self.pods.get(&pod).map(|p| &p.key) else {
            return port_set(ports);
        };
        let Some(binding) = self.bindings.get(key) else {
            return port_set(ports);
        };
        match &binding.binding {
            Binding::Enforced(id) => match self.allowlists.get(id) {
                Some(a) => allowed_of_grant(a, name, dst, ports, self.default.evaluation()),
                None => port_set(ports),
            },
            Binding::Unenforced => match self.default {
                NodeDefault::DefaultAllow => port_set(ports),
                NodeDefault::DefaultDeny | NodeDefault::Audit => PortSet::empty(),
            },
        }
    }

    /// Writes a batch of grants into the map, each narrowed to what the pod's current
    /// allowlist allows (a gateway that has not seen a policy change yet cannot undo a
    /// revocation), and remembers them. Returns how many map writes failed; the caller
    /// acks only a batch that was written entirely.
    pub fn install_grants(&mut self, grants: Vec<Grant>) -> Result<usize> {
        let mut failed = 0;
        for g in grants {
            let expiry = clock::deadline_after(g.lifetime)?;
            for pod in self.grant_sources(g.pod_ip, g.destination_ip) {
                let allowed = self.allowed_for(pod, g.destination_ip, &g.name, &g.ports);
                if allowed.is_empty() {
                    tracing::debug!(%pod, destination = %g.destination_ip, name = %g.name, "grant not allowed by the pod's current allowlist; not written");
                } else if let Err(e) =
                    self.dp
                        .put_grant(pod, g.destination_ip, &port_specs(&allowed), expiry)
                {
                    self.fail("writing a grant", &e);
                    failed += 1;
                    continue;
                }
                let records = self.grants.entry((pod, g.destination_ip)).or_default();
                match records
                    .iter_mut()
                    .find(|r| r.name == g.name && r.ports == g.ports)
                {
                    Some(r) => r.expiry_boot_ns = r.expiry_boot_ns.max(expiry),
                    None => records.push(GrantRecord {
                        name: g.name.clone(),
                        ports: g.ports.clone(),
                        expiry_boot_ns: expiry,
                    }),
                }
                self.dirty = true;
            }
        }
        Ok(failed)
    }

    /// The pod addresses a grant is written for: the gateway names the address the query
    /// came from, but a dual-stack pod that asked over IPv4 connects to an AAAA answer from
    /// its IPv6 address (and the other way round). A destination is only reachable from
    /// an address of its own family, so the grant goes to the workload's addresses of the
    /// destination's family; an unknown pod keeps the address the gateway gave.
    pub(super) fn grant_sources(&self, pod: IpAddr, dst: IpAddr) -> Vec<IpAddr> {
        let binding = self.pods.get(&pod).and_then(|p| self.bindings.get(&p.key));
        let mut out: Vec<IpAddr> = match binding {
            Some(b) => b
                .ips
                .iter()
                .copied()
                .filter(|a| a.is_ipv4() == dst.is_ipv4())
                .collect(),
            None => Vec::new(),
        };
        if out.is_empty() {
            out.push(pod);
        }
        out
    }

    /// Revocation: re-checks every grant of `ips` by the name and ports it was granted
    /// for against the pod's allowlist now; removes what is no longer allowed, narrows
    /// what is partly allowed, keeps (or restores, if an earlier policy had removed it)
    /// what is allowed. Grants the node holds no record of (lost in a crash between two
    /// state-file writes) cannot be checked and are removed.
    pub(super) fn recheck(&mut self, ips: &HashSet<IpAddr>) {
        if ips.is_empty() {
            return;
        }
        let now = match clock::boot_time_ns() {
            Ok(n) => n,
            Err(e) => {
                self.fail("reading the clock", &e);
                return;
            }
        };
        match self.dp.grant_pairs() {
            Ok(pairs) => {
                for (pod, dst) in pairs {
                    if ips.contains(&pod)
                        && !self.grants.contains_key(&(pod, dst))
                        && let Ok(true) = self.dp.remove_grant(pod, dst)
                    {
                        self.metrics.revoked_grants.inc();
                        tracing::info!(%pod, destination = %dst, "revoked a grant with no record of its name");
                    }
                }
            }
            Err(e) => self.fail("listing grants", &e),
        }
        let keys: Vec<(IpAddr, IpAddr)> = self
            .grants
            .keys()
            .filter(|(p, _)| ips.contains(p))
            .copied()
            .collect();
        for (pod, dst) in keys {
            let records = self.grants.get(&(pod, dst)).cloned().unwrap_or_default();
            let mut union = PortSet::empty();
            let mut puts = Vec::new();
            for r in records.iter().filter(|r| r.expiry_boot_ns > now) {
                let allowed = self.allowed_for(pod, dst, &r.name, &r.ports);
                if !allowed.is_empty() {
                    union = union.union(&allowed);
                    puts.push((port_specs(&allowed), r.expiry_boot_ns));
                }
            }
            if union.is_empty() {
                match self.dp.remove_grant(pod, dst) {
                    Ok(true) => {
                        self.metrics.revoked_grants.inc();
                        tracing::info!(%pod, destination = %dst, names = ?records.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), "revoked");
                    }
                    Ok(false) => {}
                    Err(e) => self.fail("revoking a grant", &e),
                }
                continue;
            }
            match self.dp.narrow_grant(pod, dst, &port_specs(&union)) {
                Ok(NarrowOutcome::Narrowed | NarrowOutcome::Removed) => {
                    self.metrics.revoked_grants.inc();
                    tracing::info!(%pod, destination = %dst, allowed = %union, "narrowed");
                }
                Ok(NarrowOutcome::Unchanged | NarrowOutcome::Absent) => {}
                Err(e) => self.fail("narrowing a grant", &e),
            }
            for (specs, expiry) in puts {
                self.dp_call("put_grant", |dp| dp.put_grant(pod, dst, &specs, expiry));
            }
        }
    }

    /// Removes expired grant entries from the map and expired records; returns the number
    /// of entries removed.
    pub fn sweep(&mut self) -> Result<usize> {
        let now = clock::boot_time_ns()?;
        let (removed, remaining) = self.dp.sweep_expired_counted(now)?;
        self.metrics.grants.set(gauge(remaining as u64));
        self.metrics.swept_grants.inc_by(removed as u64);
        let before = self.grants.len();
        self.grants.retain(|_, records| {
            records.retain(|r| r.expiry_boot_ns > now);
            !records.is_empty()
        });
        if self.grants.len() != before {
            self.dirty = true;
        }
        Ok(removed)
    }

    /// The records held for a pair (for tests and diagnostics).
    pub fn grant_records(&self, pod: IpAddr, dst: IpAddr) -> Vec<GrantRecord> {
        self.grants.get(&(pod, dst)).cloned().unwrap_or_default()
    }
}
