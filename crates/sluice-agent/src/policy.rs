//! Network policy: an identity for every pod's labels, the ipcache (address -> identity), the
//! ipBlock prefixes, and the local endpoints' policy entries, each reconciled by diffing the
//! desired entries against what is programmed, so a change writes only what differs.
//!
//! Write order keeps every moment safe: new entries first, then the endpoints' isolation
//! flags, then removals, then the revision bump that makes tracked connections re-judge.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use sluice_api::{AllowEntry, EndpointDetail, PodRef};
use sluice_datapath::abi::{self, ip_to_be, IpcacheInfo, PolicyEntry, PolicyKeyData};
use sluice_datapath::policy::PolicyMapKey;
use sluice_datapath::Datapath;
use sluice_model::identity::{
    policy_prefixes, CidrIdentities, IdentityLabels, IDENTITY_ANY, IDENTITY_HOST,
    IDENTITY_REMOTE_NODE,
};
use sluice_model::policy::{endpoint_policy, Direction, EndpointPolicy, PolicyKey, RuleRef};
use sluice_model::{DesiredState, NodeInfo};

use crate::identities::IdentityAllocator;
use crate::kvstore::EndpointRecord;

/// A pod attached on this node: its address and, when the runtime said, which pod it is.
pub struct LocalEndpoint {
    pub address: Ipv4Addr,
    pub pod: Option<PodRef>,
}

pub struct PolicyState {
    identities: IdentityAllocator,
    cidr_ids: CidrIdentities,
    ipcache: BTreeMap<(Ipv4Addr, u8), IpcacheInfo>,
    cidrs: BTreeMap<(Ipv4Addr, u8), u32>,
    entries: BTreeMap<PolicyMapKey, PolicyEntry>,
    /// Local endpoint address -> (identity, SLUICE_EP_* flags) as programmed.
    endpoint_bits: BTreeMap<Ipv4Addr, (u32, u32)>,
    /// The cookie each rule got; numbers stay stable for the process' life.
    cookies: BTreeMap<RuleRef, u32>,
    views: BTreeMap<Ipv4Addr, EndpointView>,
}

struct EndpointView {
    pod: Option<PodRef>,
    labels: BTreeMap<String, String>,
    policy: EndpointPolicy,
}

#[derive(Debug, Default)]
pub struct Changes {
    pub written: usize,
    pub removed: usize,
    pub problems: Vec<String>,
}

impl PolicyState {
    /// Reads what a previous run programmed, so the first reconcile only writes differences.
    pub fn load(dp: &Datapath, identities: IdentityAllocator) -> Result<Self, String> {
        let maps = dp.policy_ref();
        let ipcache = maps
            .ipcache()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(ip, len, info)| ((ip, len), info))
            .collect();
        let cidrs: BTreeMap<(Ipv4Addr, u8), u32> = maps
            .cidrs()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(ip, len, id)| ((ip, len), id))
            .collect();
        let entries = maps
            .entries()
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        let endpoint_bits = dp
            .endpoints()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(ip, info)| (ip, (info.identity, info.flags)))
            .collect();
        let cidr_ids = CidrIdentities::restore(
            cidrs
                .iter()
                .filter_map(|((ip, len), id)| Ipv4Net::new(*ip, *len).ok().map(|net| (net, *id))),
        );
        Ok(Self {
            identities,
            cidr_ids,
            ipcache,
            cidrs,
            entries,
            endpoint_bits,
            cookies: BTreeMap::new(),
            views: BTreeMap::new(),
        })
    }

    /// Identity and flags to keep when an endpoint's entry is rewritten for other reasons.
    pub fn endpoint_bits(&self, address: Ipv4Addr) -> (u32, u32) {
        self.endpoint_bits.get(&address).copied().unwrap_or((0, 0))
    }

    pub fn reconcile(
        &mut self,
        dp: &mut Datapath,
        desired: &DesiredState,
        node: &NodeInfo,
        local: &[LocalEndpoint],
        remote: Option<&BTreeMap<Ipv4Addr, &EndpointRecord>>,
    ) -> Changes {
        let mut changes = Changes::default();
        let ids = self.resolve_identities(desired, &mut changes.problems);
        self.cidr_ids.update(&policy_prefixes(desired));

        // Who every address is.
        let mut ipcache = BTreeMap::new();
        for pod in desired.pods.values() {
            let (Some(ip), Some(id)) = (pod.ip, ids.get(&IdentityLabels::of(pod))) else {
                continue;
            };
            let node_ip = match pod.node_name.as_deref() {
                Some(n) if n != node.name => desired.nodes.get(n).map(|n| n.address),
                _ => None,
            };
            // With a kvstore, other nodes' pods are known from what those nodes published.
            if remote.is_some() && node_ip.is_some() {
                continue;
            }
            ipcache.insert(
                (ip, 32),
                IpcacheInfo {
                    identity: *id,
                    node_ip: node_ip.map(ip_to_be).unwrap_or(0),
                },
            );
        }
        for (ip, record) in remote.into_iter().flatten() {
            ipcache.insert(
                (*ip, 32),
                IpcacheInfo {
                    identity: record.identity,
                    node_ip: ip_to_be(record.node_ip),
                },
            );
        }
        for other in desired.nodes.values() {
            let (identity, node_ip) = if other.name == node.name {
                (IDENTITY_HOST, 0)
            } else {
                (IDENTITY_REMOTE_NODE, ip_to_be(other.address))
            };
            ipcache.insert((other.address, 32), IpcacheInfo { identity, node_ip });
        }
        let cidrs: BTreeMap<(Ipv4Addr, u8), u32> = self
            .cidr_ids
            .iter()
            .map(|(net, id)| ((net.network(), net.prefix_len()), id))
            .collect();

        // What every local endpoint may do.
        let mut entries = BTreeMap::new();
        let mut bits = BTreeMap::new();
        let mut views = BTreeMap::new();
        for ep in local {
            let pod = ep.pod.as_ref().and_then(|r| {
                let mut p = desired
                    .pods
                    .get(&format!("{}/{}", r.namespace, r.name))?
                    .clone();
                p.ip = Some(ep.address);
                Some(p)
            });
            let (identity, policy) = match &pod {
                Some(p) => {
                    let identity = ids.get(&IdentityLabels::of(p)).copied().unwrap_or(0);
                    if identity != 0 {
                        ipcache.insert(
                            (ep.address, 32),
                            IpcacheInfo {
                                identity,
                                node_ip: 0,
                            },
                        );
                    }
                    (identity, endpoint_policy(desired, &ids, &self.cidr_ids, p))
                }
                // Not in the desired state (yet): nothing selects it, so nothing isolates it.
                None => (0, EndpointPolicy::default()),
            };
            for (key, rule) in &policy.entries {
                let cookie = self.cookie(rule);
                entries.insert(
                    map_key(ep.address, key),
                    PolicyEntry {
                        verdict: abi::VERDICT_ALLOW,
                        // Tells flows whether the match was on peers alone or on a port too.
                        flags: if key.protocol != 0 {
                            abi::POLICY_ENTRY_L4
                        } else {
                            0
                        },
                        cookie,
                        ..Default::default()
                    },
                );
            }
            let mut flags = 0;
            if policy.ingress_isolated {
                flags |= abi::EP_INGRESS_ISOLATED;
            }
            if policy.egress_isolated {
                flags |= abi::EP_EGRESS_ISOLATED;
            }
            bits.insert(ep.address, (identity, flags));
            views.insert(
                ep.address,
                EndpointView {
                    pod: ep.pod.clone(),
                    labels: pod.map(|p| p.labels).unwrap_or_default(),
                    policy,
                },
            );
        }
        self.views = views;

        // 1. Additions and changes.
        let problems = &mut changes.problems;
        changes.written += write_missing(
            dp,
            &mut self.ipcache,
            &ipcache,
            problems,
            "the ipcache",
            |dp, k, v| dp.policy().set_ipcache(k.0, k.1, *v),
        );
        changes.written += write_missing(
            dp,
            &mut self.cidrs,
            &cidrs,
            problems,
            "an ipBlock prefix",
            |dp, k, v| dp.policy().set_cidr(k.0, k.1, *v),
        );
        changes.written += write_missing(
            dp,
            &mut self.entries,
            &entries,
            problems,
            "a policy entry (is maps.policy large enough?)",
            |dp, k, v| dp.policy().set_entry(*k, *v),
        );
        let mut fail = |what: &str, e: sluice_datapath::Error| {
            changes.problems.push(format!("{what}: {e}"));
        };
        // 2. Isolation and identity of each endpoint, now that its entries are in place.
        for (address, (identity, flags)) in &bits {
            if self.endpoint_bits.get(address) == Some(&(*identity, *flags)) {
                continue;
            }
            match dp.endpoint(*address) {
                Ok(Some(mut info)) => {
                    info.identity = *identity;
                    info.flags = *flags;
                    match dp.upsert_endpoint(*address, info) {
                        Ok(()) => {
                            self.endpoint_bits.insert(*address, (*identity, *flags));
                            changes.written += 1;
                        }
                        Err(e) => fail("writing an endpoint's policy flags", e),
                    }
                }
                Ok(None) => {}
                Err(e) => fail("reading an endpoint", e),
            }
        }
        self.endpoint_bits.retain(|a, _| bits.contains_key(a));
        // 3. Removals.
        let problems = &mut changes.problems;
        changes.removed += remove_stale(
            dp,
            &mut self.entries,
            &entries,
            problems,
            "a policy entry",
            |dp, k| dp.policy().remove_entry(*k),
        );
        changes.removed += remove_stale(
            dp,
            &mut self.cidrs,
            &cidrs,
            problems,
            "an ipBlock prefix",
            |dp, k| dp.policy().remove_cidr(k.0, k.1),
        );
        changes.removed += remove_stale(
            dp,
            &mut self.ipcache,
            &ipcache,
            problems,
            "an ipcache entry",
            |dp, k| dp.policy().remove_ipcache(k.0, k.1),
        );
        // 4. Tracked connections re-judge on their next packet.
        if changes.written + changes.removed > 0 {
            if let Err(e) = dp.bump_policy_revision() {
                changes
                    .problems
                    .push(format!("bumping the policy revision: {e}"));
            }
        }
        changes
    }

    fn resolve_identities(
        &mut self,
        desired: &DesiredState,
        problems: &mut Vec<String>,
    ) -> BTreeMap<IdentityLabels, u32> {
        let mut ids = BTreeMap::new();
        for pod in desired.pods.values() {
            let labels = IdentityLabels::of(pod);
            if ids.contains_key(&labels) {
                continue;
            }
            match self.identities.resolve(&labels) {
                Ok(id) => {
                    ids.insert(labels, id);
                }
                Err(e) => problems.push(format!(
                    "Pod {}/{}: no security identity: {e}",
                    pod.namespace, pod.name
                )),
            }
        }
        ids
    }

    fn cookie(&mut self, rule: &RuleRef) -> u32 {
        let next = self.cookies.len() as u32;
        *self.cookies.entry(rule.clone()).or_insert(next)
    }

    /// The endpoint at `address` as policy sees it, with its allow-lists as programmed.
    pub fn detail(&self, address: Ipv4Addr) -> Option<EndpointDetail> {
        let view = self.views.get(&address)?;
        let (identity, _) = self.endpoint_bits(address);
        let mut ingress = Vec::new();
        let mut egress = Vec::new();
        for (key, rule) in &view.policy.entries {
            let entry = AllowEntry {
                peer: self.describe_peer(key.identity),
                ports: describe_ports(key),
                rule: rule.to_string(),
            };
            match key.direction {
                Direction::Ingress => ingress.push(entry),
                Direction::Egress => egress.push(entry),
            }
        }
        Some(EndpointDetail {
            pod: view.pod.clone(),
            address,
            identity,
            labels: view.labels.clone(),
            ingress_isolated: view.policy.ingress_isolated,
            egress_isolated: view.policy.egress_isolated,
            ingress,
            egress,
        })
    }

    /// Local endpoint addresses whose pod is `namespace/name`.
    pub fn address_of(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        self.views
            .iter()
            .find(|(_, v)| {
                v.pod
                    .as_ref()
                    .is_some_and(|p| p.namespace == namespace && p.name == name)
            })
            .map(|(a, _)| *a)
    }

    fn describe_peer(&self, identity: u32) -> String {
        match identity {
            IDENTITY_ANY => "any".into(),
            IDENTITY_HOST => "host".into(),
            IDENTITY_REMOTE_NODE => "remote-node".into(),
            id => {
                if let Some(labels) = self.identities.labels_of(id) {
                    return format!("identity {id} ({})", labels.key());
                }
                match self.cidr_ids.iter().find(|(_, i)| *i == id) {
                    Some((net, _)) => format!("{net}"),
                    None => format!("identity {id}"),
                }
            }
        }
    }

    /// Identities of single addresses (pods, nodes) as programmed in the ipcache.
    pub fn address_identities(&self) -> impl Iterator<Item = (Ipv4Addr, u32)> + '_ {
        self.ipcache
            .iter()
            .filter(|((_, len), _)| *len == 32)
            .map(|((ip, _), info)| (*ip, info.identity))
    }

    /// Every rule cookie handed out, with its rule.
    pub fn rule_cookies(&self) -> impl Iterator<Item = (u32, &RuleRef)> + '_ {
        self.cookies.iter().map(|(rule, cookie)| (*cookie, rule))
    }

    pub fn identity_count(&self) -> usize {
        self.identities.len()
    }

    /// (policy entries, ipcache entries) as programmed.
    pub fn counts(&self) -> (usize, usize) {
        (self.entries.len(), self.ipcache.len())
    }
}

/// Writes the entries of `desired` that `programmed` lacks or holds otherwise; returns how
/// many were written. `programmed` follows what succeeded.
fn write_missing<K: Ord + Copy, V: PartialEq + Copy>(
    dp: &mut Datapath,
    programmed: &mut BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    problems: &mut Vec<String>,
    what: &str,
    mut write: impl FnMut(&mut Datapath, &K, &V) -> sluice_datapath::Result<()>,
) -> usize {
    let mut written = 0;
    for (k, v) in desired {
        if programmed.get(k) == Some(v) {
            continue;
        }
        match write(dp, k, v) {
            Ok(()) => {
                programmed.insert(*k, *v);
                written += 1;
            }
            Err(e) => problems.push(format!("writing {what}: {e}")),
        }
    }
    written
}

/// Removes the programmed entries `desired` no longer has; returns how many.
fn remove_stale<K: Ord + Copy, V>(
    dp: &mut Datapath,
    programmed: &mut BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    problems: &mut Vec<String>,
    what: &str,
    mut remove: impl FnMut(&mut Datapath, &K) -> sluice_datapath::Result<bool>,
) -> usize {
    let stale: Vec<K> = programmed
        .keys()
        .filter(|k| !desired.contains_key(k))
        .copied()
        .collect();
    let mut removed = 0;
    for k in stale {
        match remove(dp, &k) {
            Ok(_) => {
                programmed.remove(&k);
                removed += 1;
            }
            Err(e) => problems.push(format!("removing {what}: {e}")),
        }
    }
    removed
}

/// The datapath key of a model entry: the endpoint and identity exact, then as many bits of
/// direction, protocol and port as the entry pins down.
pub fn map_key(endpoint: Ipv4Addr, key: &PolicyKey) -> PolicyMapKey {
    let prefix_len = if key.protocol == 0 {
        72
    } else {
        80 + key.port_prefix_len as u32
    };
    PolicyMapKey {
        prefix_len,
        data: PolicyKeyData {
            endpoint: ip_to_be(endpoint),
            identity: key.identity,
            direction: match key.direction {
                Direction::Ingress => abi::POLICY_INGRESS,
                Direction::Egress => abi::POLICY_EGRESS,
            },
            proto: key.protocol,
            dport: key.port.to_be(),
        },
    }
}

fn describe_ports(key: &PolicyKey) -> String {
    let proto = match key.protocol {
        0 => return "any".into(),
        6 => "TCP".to_string(),
        17 => "UDP".to_string(),
        132 => "SCTP".to_string(),
        n => format!("proto-{n}"),
    };
    if key.port_prefix_len == 0 {
        return format!("{proto}/any");
    }
    let span = 1u32 << (16 - key.port_prefix_len as u32);
    let last = key.port as u32 + span - 1;
    if span == 1 {
        format!("{proto}/{}", key.port)
    } else {
        format!("{proto}/{}-{last}", key.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keys_pin_down_what_the_entry_names() {
        let ep = Ipv4Addr::new(10, 0, 0, 5);
        let any = PolicyKey {
            direction: Direction::Egress,
            identity: 300,
            protocol: 0,
            port: 0,
            port_prefix_len: 0,
        };
        let k = map_key(ep, &any);
        assert_eq!(k.prefix_len, 72);
        assert_eq!(k.data.direction, abi::POLICY_EGRESS);
        let range = PolicyKey {
            protocol: 6,
            port: 8080,
            port_prefix_len: 13,
            ..any
        };
        let k = map_key(ep, &range);
        assert_eq!(k.prefix_len, 93);
        assert_eq!(k.data.dport, 8080u16.to_be());
        assert_eq!(describe_ports(&range), "TCP/8080-8087");
        let one = PolicyKey {
            port_prefix_len: 16,
            ..range
        };
        assert_eq!(map_key(ep, &one).prefix_len, 96);
        assert_eq!(describe_ports(&one), "TCP/8080");
        assert_eq!(describe_ports(&any), "any");
    }
}
