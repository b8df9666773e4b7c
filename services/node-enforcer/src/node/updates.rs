//! Store updates: this node's pods and their allowlists, become `pods` and `cidrs` entries
//! and attached interfaces.

use super::*;

impl Node {
    /// Applies a batch of tail updates, then re-checks the grants of every pod whose
    /// allowlist changed.
    pub fn apply(&mut self, updates: Vec<TailUpdate>) -> Applied {
        let mut out = Applied::default();
        let mut recheck = HashSet::new();
        for update in updates {
            match update {
                TailUpdate::Reset(state) => {
                    self.reset(state, &mut recheck);
                    out.changed = true;
                }
                TailUpdate::Event(event) => {
                    self.event(event.payload, &mut recheck);
                    self.revision = self.revision.max(event.revision);
                    out.changed = true;
                }
                TailUpdate::CaughtUp(revision) => {
                    if revision > self.revision {
                        self.revision = revision;
                        out.changed = true;
                    }
                    out.caught_up = true;
                }
                TailUpdate::Disconnected(_) => {}
            }
        }
        self.recheck(&recheck);
        self.release_unused_policies();
        self.publish();
        self.metrics.store_revision.set(gauge(self.revision));
        out.resync = std::mem::take(&mut self.resync);
        out
    }

    pub(super) fn reset(&mut self, state: DerivedState, recheck: &mut HashSet<IpAddr>) {
        self.allowlists = state
            .allowlists
            .into_iter()
            .map(|a| (a.id().clone(), Arc::new(a)))
            .collect();
        let new: HashMap<WorkloadKey, WorkloadBinding> = state
            .bindings
            .into_iter()
            .filter(|b| b.node == self.node)
            .map(|b| (b.workload.clone(), b))
            .collect();
        let gone: Vec<WorkloadKey> = self
            .bindings
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.unbind(&key);
        }
        for b in new.into_values() {
            self.bind(b, recheck);
        }
        self.revision = state.revision;
        self.finish_reconcile();
    }

    pub(super) fn event(&mut self, payload: EventPayload, recheck: &mut HashSet<IpAddr>) {
        match payload {
            EventPayload::AllowlistCompiled(allowlist) => {
                let id = allowlist.id().clone();
                self.allowlists.insert(id.clone(), Arc::new(allowlist));
                if let Some(pid) = self.policy_ids.get(&id).copied() {
                    self.write_cidrs(&id, pid);
                    // the pods bound to it were bound before its rules were known
                    recheck.extend(self.pods_of(&id));
                }
            }
            EventPayload::AllowlistReleased(id) if !self.in_use(&id) => {
                self.allowlists.remove(&id);
            }
            EventPayload::WorkloadBound(binding) => self.bind(binding, recheck),
            EventPayload::WorkloadUnbound(key) => self.unbind(&key),
            _ => {}
        }
    }

    pub(super) fn pods_of(&self, id: &AllowlistId) -> Vec<IpAddr> {
        self.bindings
            .values()
            .filter(|b| b.binding == Binding::Enforced(id.clone()))
            .flat_map(|b| b.ips.iter().copied())
            .collect()
    }

    pub(super) fn in_use(&self, id: &AllowlistId) -> bool {
        self.bindings
            .values()
            .any(|b| b.binding == Binding::Enforced(id.clone()))
    }

    /// The datapath mode and policy id of a binding (assigning a policy id on first use).
    pub(super) fn mode_of(&mut self, binding: &Binding) -> (Mode, u32) {
        match binding {
            Binding::Enforced(id) => (self.default.enforced_mode(), self.policy_id(id)),
            Binding::Unenforced => (self.default.unenforced_mode(), 0),
        }
    }

    pub(super) fn policy_id(&mut self, id: &AllowlistId) -> u32 {
        if let Some(pid) = self.policy_ids.get(id) {
            return *pid;
        }
        let used: HashSet<u32> = self.policy_ids.values().copied().collect();
        let mut pid = self.next_policy_id;
        while pid == 0 || pid >= POLICY_ID_LIMIT || used.contains(&pid) {
            pid = if pid == 0 || pid >= POLICY_ID_LIMIT - 1 {
                1
            } else {
                pid + 1
            };
        }
        self.next_policy_id = pid + 1;
        self.policy_ids.insert(id.clone(), pid);
        if self.allowlists.contains_key(id) {
            self.write_cidrs(id, pid);
        } else {
            tracing::warn!(allowlist = %id, "a pod is bound to an allowlist this node never received; resyncing from a snapshot");
            self.resync = true;
        }
        pid
    }

    /// Writes the allowlist's CIDR rules under `pid`, then removes entries of `pid` the new
    /// rules no longer have (in that order, so nothing still allowed is ever missing).
    pub(super) fn write_cidrs(&mut self, id: &AllowlistId, pid: u32) {
        let entries = match self.allowlists.get(id) {
            Some(a) => cidr_entries(a, self.default.evaluation()),
            None => Vec::new(),
        };
        let want: HashSet<IpNet> = entries.iter().map(|(p, _)| *p).collect();
        for (prefix, specs) in &entries {
            let (prefix, specs) = (*prefix, specs.clone());
            self.dp_call("put_cidr", |dp| dp.put_cidr(pid, prefix, &specs));
        }
        match self.dp.cidr_prefixes(pid) {
            Ok(existing) => {
                for prefix in existing.into_iter().filter(|p| !want.contains(p)) {
                    self.dp_call("remove_cidr", |dp| dp.remove_cidr(pid, prefix).map(drop));
                }
            }
            Err(e) => self.fail("listing cidrs", &e),
        }
    }

    pub(super) fn release_unused_policies(&mut self) {
        let unused: Vec<(AllowlistId, u32)> = self
            .policy_ids
            .iter()
            .filter(|(id, _)| !self.in_use(id))
            .map(|(id, pid)| (id.clone(), *pid))
            .collect();
        for (id, pid) in unused {
            match self.dp.cidr_prefixes(pid) {
                Ok(prefixes) => {
                    for prefix in prefixes {
                        self.dp_call("remove_cidr", |dp| dp.remove_cidr(pid, prefix).map(drop));
                    }
                }
                Err(e) => self.fail("listing cidrs", &e),
            }
            self.policy_ids.remove(&id);
            tracing::debug!(allowlist = %id, policy_id = pid, "policy id released");
        }
    }

    /// Takes a binding of a workload: writes its addresses with their mode and policy,
    /// attaches to their interfaces, forgets addresses it no longer has, and queues its
    /// addresses for a grant re-check when its allowlist changed.
    pub(super) fn bind(&mut self, b: WorkloadBinding, recheck: &mut HashSet<IpAddr>) {
        if b.node != self.node {
            // moved to another node
            self.unbind(&b.workload);
            return;
        }
        let old = self.bindings.insert(b.workload.clone(), b.clone());
        let new_ips = ip_list(&b);
        if let Some(old) = &old {
            for ip in ip_list(old).difference(&new_ips) {
                self.forget_pod(*ip);
            }
            if old.binding != b.binding {
                recheck.extend(new_ips.iter().copied());
            }
        }
        let (mode, policy_id) = self.mode_of(&b.binding);
        for ip in new_ips {
            // an address that belonged to another workload: that one is gone
            if let Some(p) = self.pods.get(&ip)
                && p.key != b.workload
            {
                let other = p.key.clone();
                self.drop_ip_of(&other, ip);
            }
            let entry = self.pods.entry(ip).or_insert_with(|| PodState {
                key: b.workload.clone(),
                mode,
                policy_id,
                ifindex: None,
            });
            entry.key = b.workload.clone();
            entry.mode = mode;
            entry.policy_id = policy_id;
            self.place(ip);
        }
    }

    pub(super) fn drop_ip_of(&mut self, key: &WorkloadKey, ip: IpAddr) {
        if let Some(b) = self.bindings.get_mut(key) {
            b.ips.retain(|a| *a != ip);
        }
        self.forget_pod(ip);
    }

    pub(super) fn unbind(&mut self, key: &WorkloadKey) {
        if let Some(old) = self.bindings.remove(key) {
            for ip in old.ips {
                if self.pods.get(&ip).is_some_and(|p| p.key == *key) {
                    self.forget_pod(ip);
                }
            }
        }
    }

    /// Removes a pod address: its `pods` entry, its grants, its interface when no other
    /// pod uses it.
    pub(super) fn forget_pod(&mut self, ip: IpAddr) {
        let Some(pod) = self.pods.remove(&ip) else {
            return;
        };
        self.dp_call("remove_pod", |dp| dp.remove_pod(ip).map(drop));
        let pairs: Vec<(IpAddr, IpAddr)> = self
            .grants
            .keys()
            .filter(|(p, _)| *p == ip)
            .copied()
            .collect();
        for (p, d) in pairs {
            self.grants.remove(&(p, d));
            self.dp_call("remove_grant", |dp| dp.remove_grant(p, d).map(drop));
            self.dirty = true;
        }
        if let Some(ifindex) = pod.ifindex {
            self.leave(ifindex, ip);
        }
    }

    /// Finds the pod's interface, writes its entry, attaches. Without a route the pod
    /// stays pending and is retried.
    pub(super) fn place(&mut self, ip: IpAddr) {
        let Some(pod) = self.pods.get(&ip).cloned() else {
            return;
        };
        match netlink::pod_interface(ip) {
            Ok(Some(ifindex)) => {
                if let Err(e) = self.dp.upsert_pod(ip, ifindex, pod.mode, pod.policy_id) {
                    self.fail("writing a pod", &e);
                    return;
                }
                if let Some(old) = pod.ifindex
                    && old != ifindex
                {
                    self.leave(old, ip);
                }
                self.interfaces.entry(ifindex).or_default().insert(ip);
                if !self.attached.contains(&ifindex) {
                    match self.dp.attach(ifindex) {
                        Ok(()) => {
                            tracing::info!(ifindex, pod = %pod.key, %ip, "attached");
                            self.attached.insert(ifindex);
                        }
                        Err(e) => {
                            self.fail("attaching", &e);
                            if let Some(p) = self.pods.get_mut(&ip) {
                                p.ifindex = None;
                            }
                            return;
                        }
                    }
                }
                if let Some(p) = self.pods.get_mut(&ip) {
                    p.ifindex = Some(ifindex);
                }
            }
            Ok(None) => {
                if let Some(old) = pod.ifindex {
                    self.dp_call("remove_pod", |dp| dp.remove_pod(ip).map(drop));
                    self.leave(old, ip);
                }
                if let Some(p) = self.pods.get_mut(&ip) {
                    p.ifindex = None;
                }
                tracing::debug!(%ip, pod = %pod.key, "no host route to the pod yet; retrying");
            }
            Err(e) => self.fail("finding a pod's interface", &e),
        }
    }

    pub(super) fn leave(&mut self, ifindex: u32, ip: IpAddr) {
        let empty = match self.interfaces.get_mut(&ifindex) {
            Some(set) => {
                set.remove(&ip);
                set.is_empty()
            }
            None => true,
        };
        if empty {
            self.interfaces.remove(&ifindex);
            self.detach(ifindex);
        }
    }

    pub(super) fn detach(&mut self, ifindex: u32) {
        if self.attached.remove(&ifindex) {
            match self.dp.detach(ifindex) {
                Ok(()) => tracing::info!(ifindex, "detached: no pod uses the interface"),
                Err(e) => self.fail("detaching", &e),
            }
        }
    }

    /// Looks again for the interfaces of pods that have none (or, with `all`, of every
    /// pod: a pod re-created with the same address gets a new interface).
    pub fn retry_interfaces(&mut self, all: bool) {
        let ips: Vec<IpAddr> = self
            .pods
            .iter()
            .filter(|(_, p)| all || p.ifindex.is_none())
            .map(|(ip, _)| *ip)
            .collect();
        for ip in ips {
            let before = self.pods.get(&ip).and_then(|p| p.ifindex);
            if all && before.is_some() {
                // only act on a change: the route moved or vanished
                match netlink::pod_interface(ip) {
                    Ok(now) if now == before => continue,
                    Ok(_) => {}
                    Err(e) => {
                        self.fail("finding a pod's interface", &e);
                        continue;
                    }
                }
            }
            self.place(ip);
        }
        self.publish();
    }
}
