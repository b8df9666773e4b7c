//! The node's state file: what [`Node::to_state`] persists and [`Node::restore`] takes over.

use super::*;

impl Node {
    /// Takes the state to persist.
    pub fn to_state(&mut self) -> StateFile {
        self.dirty = false;
        let mut policy_ids: Vec<PolicyIdRecord> = self
            .policy_ids
            .iter()
            .map(|(id, pid)| PolicyIdRecord {
                allowlist: id.0.clone(),
                policy_id: *pid,
            })
            .collect();
        policy_ids.sort_by_key(|r| r.policy_id);
        let grants = self
            .grants
            .iter()
            .flat_map(|((pod, dst), records)| {
                records.iter().map(|r| GrantRecordMessage {
                    pod: state::ip_bytes(*pod),
                    destination: state::ip_bytes(*dst),
                    name: r.name.clone(),
                    ports: r.ports.iter().map(gpb::PortRange::from).collect(),
                    expiry_boot_ns: r.expiry_boot_ns,
                })
            })
            .collect();
        StateFile {
            format: state::FORMAT,
            node: self.node.clone(),
            revision: self.revision,
            allowlists: self
                .allowlists
                .values()
                .map(|a| pb::Allowlist::from(a.as_ref()))
                .collect(),
            bindings: self
                .bindings
                .values()
                .map(pb::WorkloadBinding::from)
                .collect(),
            policy_ids,
            next_policy_id: self.next_policy_id,
            grants,
        }
    }

    /// Takes over a state file's content (the datapath is reconciled by [`Node::reconcile`]).
    /// A file that does not decode leaves the node empty (the tail then starts from a
    /// snapshot) and is reported.
    pub fn restore(&mut self, file: StateFile) -> std::result::Result<(), String> {
        let mut allowlists = HashMap::new();
        for a in file.allowlists {
            let a = Allowlist::try_from(a).map_err(|e| e.to_string())?;
            allowlists.insert(a.id().clone(), Arc::new(a));
        }
        let mut bindings = HashMap::new();
        for b in file.bindings {
            let b = WorkloadBinding::try_from(b).map_err(|e| e.to_string())?;
            bindings.insert(b.workload.clone(), b);
        }
        let mut grants: HashMap<(IpAddr, IpAddr), Vec<GrantRecord>> = HashMap::new();
        let now = clock::boot_time_ns().unwrap_or(0);
        for g in file.grants {
            let (Some(pod), Some(dst)) = (
                state::ip_from_bytes(&g.pod),
                state::ip_from_bytes(&g.destination),
            ) else {
                continue;
            };
            if g.expiry_boot_ns <= now {
                continue;
            }
            let ports: std::result::Result<Vec<PortRange>, _> =
                g.ports.into_iter().map(PortRange::try_from).collect();
            let Ok(ports) = ports else { continue };
            grants.entry((pod, dst)).or_default().push(GrantRecord {
                name: g.name,
                ports,
                expiry_boot_ns: g.expiry_boot_ns,
            });
        }
        self.allowlists = allowlists;
        self.bindings = bindings;
        self.grants = grants;
        self.policy_ids = file
            .policy_ids
            .into_iter()
            .filter(|r| r.policy_id != 0 && r.policy_id < POLICY_ID_LIMIT)
            .map(|r| (AllowlistId(r.allowlist), r.policy_id))
            .collect();
        self.next_policy_id = file.next_policy_id.max(1);
        self.revision = file.revision;
        Ok(())
    }
}
