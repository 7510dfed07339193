//! Policies flattened into the per-endpoint entries the datapath looks up: all selector
//! matching, port-name resolution and range splitting happens here, so the kernel only does
//! an exact match on identity and a longest-prefix match on protocol and port.

use std::collections::{BTreeMap, BTreeSet};

use super::{Direction, Peer, PolicyInfo, PolicyRule, PortSpec, RuleRef};
use crate::identity::{CidrIdentities, IdentityLabels, IDENTITY_ANY, IDENTITY_HOST};
use crate::state::{DesiredState, PodInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub direction: Direction,
    /// The peer's identity; IDENTITY_ANY matches every peer.
    pub identity: u32,
    /// 0 = any protocol.
    pub protocol: u8,
    /// Only the top `port_prefix_len` bits are significant (and the rest are zero).
    pub port: u16,
    /// 0..=16; 0 = any port. Must be 0 when protocol is 0.
    pub port_prefix_len: u8,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    pub entries: BTreeMap<PolicyKey, RuleRef>,
}

impl EndpointPolicy {
    pub fn isolated(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.ingress_isolated,
            Direction::Egress => self.egress_isolated,
        }
    }
}

/// The fewest aligned blocks (value, prefix length) that together are exactly
/// `first..=last`; empty when first > last.
pub fn port_range_prefixes(first: u16, last: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut cur, last) = (first as u32, last as u32);
    while cur <= last {
        // Largest block aligned at cur that does not pass last.
        let mut size = if cur == 0 {
            1 << 16
        } else {
            1 << cur.trailing_zeros()
        };
        while cur + size - 1 > last {
            size >>= 1;
        }
        out.push((cur as u16, 16 - size.trailing_zeros() as u8));
        cur += size;
    }
    out
}

/// A peer a rule's entries are keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target<'a> {
    Any,
    Pods(u32, &'a IdentityLabels),
    Cidr(u32),
}

/// Everything `endpoint` may send (egress) or receive (ingress) as map entries.
/// `identities` must hold every pod's identity; `cidrs` every prefix of `policy_prefixes`.
///
/// Named ports resolve on the pod receiving the traffic: for ingress the endpoint's own
/// container ports; for egress the container ports of the pods with the peer's identity (pods
/// of one identity are expected to declare the same ports). An egress rule without peers and
/// with a named port is expanded to every pod identity, since no address-only peer can have a
/// port name; for ipBlock peers in egress a named port resolves to nothing.
pub fn endpoint_policy(
    state: &DesiredState,
    identities: &BTreeMap<IdentityLabels, u32>,
    cidrs: &CidrIdentities,
    endpoint: &PodInfo,
) -> EndpointPolicy {
    let mut out = EndpointPolicy::default();
    let mut pods_by_identity: BTreeMap<IdentityLabels, Vec<&PodInfo>> = BTreeMap::new();
    for pod in state.pods.values() {
        pods_by_identity
            .entry(IdentityLabels::of(pod))
            .or_default()
            .push(pod);
    }
    let ctx = Context {
        state,
        identities,
        cidrs,
        endpoint,
        pods_by_identity,
    };
    for policy in state.policies_selecting(endpoint) {
        for direction in [Direction::Ingress, Direction::Egress] {
            let Some(rules) = policy.rules(direction) else {
                continue;
            };
            match direction {
                Direction::Ingress => out.ingress_isolated = true,
                Direction::Egress => out.egress_isolated = true,
            }
            for (index, rule) in rules.iter().enumerate() {
                let by = RuleRef::Rule {
                    policy: policy.key(),
                    direction,
                    index,
                };
                ctx.rule_entries(policy, rule, direction, &by, &mut out.entries);
            }
        }
    }
    if out.ingress_isolated {
        // Traffic from the pod's own node (kubelet probes) is always allowed.
        let key = PolicyKey {
            direction: Direction::Ingress,
            identity: IDENTITY_HOST,
            protocol: 0,
            port: 0,
            port_prefix_len: 0,
        };
        insert(&mut out.entries, key, &RuleRef::Reserved("host"));
    }
    out
}

/// Keeps the RuleRef that sorts first, so the result does not depend on rule order.
fn insert(entries: &mut BTreeMap<PolicyKey, RuleRef>, key: PolicyKey, by: &RuleRef) {
    match entries.get(&key) {
        Some(old) if old <= by => {}
        _ => {
            entries.insert(key, by.clone());
        }
    }
}

struct Context<'a> {
    state: &'a DesiredState,
    identities: &'a BTreeMap<IdentityLabels, u32>,
    cidrs: &'a CidrIdentities,
    endpoint: &'a PodInfo,
    pods_by_identity: BTreeMap<IdentityLabels, Vec<&'a PodInfo>>,
}

impl<'a> Context<'a> {
    fn targets(&self, policy: &PolicyInfo, rule: &PolicyRule) -> BTreeSet<Target<'a>> {
        if rule.peers.is_empty() {
            return BTreeSet::from([Target::Any]);
        }
        let mut out = BTreeSet::new();
        for peer in &rule.peers {
            match peer {
                Peer::Pods { namespaces, pods } => {
                    for (labels, id) in self.identities {
                        let ns_ok = match namespaces {
                            None => labels.namespace == policy.namespace,
                            Some(sel) => {
                                sel.matches(&self.state.namespace_labels(&labels.namespace))
                            }
                        };
                        let pods_ok = pods.as_ref().is_none_or(|sel| sel.matches(&labels.labels));
                        if ns_ok && pods_ok {
                            out.insert(Target::Pods(*id, labels));
                        }
                    }
                }
                Peer::IpBlock { cidr, except } => {
                    for (prefix, id) in self.cidrs.iter() {
                        if cidr.contains(prefix) && !except.iter().any(|e| e.contains(prefix)) {
                            out.insert(Target::Cidr(id));
                        }
                    }
                }
                Peer::Ipv6Block => {}
            }
        }
        out
    }

    /// Port numbers `name`/`protocol` resolves to when traffic goes to pods of `labels`.
    fn named(&self, labels: &IdentityLabels, name: &str, protocol: u8) -> BTreeSet<u16> {
        let pods = self.pods_by_identity.get(labels).into_iter().flatten();
        pods.flat_map(|p| resolve(p, name, protocol)).collect()
    }

    fn rule_entries(
        &self,
        policy: &PolicyInfo,
        rule: &PolicyRule,
        direction: Direction,
        by: &RuleRef,
        entries: &mut BTreeMap<PolicyKey, RuleRef>,
    ) {
        let key = |identity, protocol, port, port_prefix_len| PolicyKey {
            direction,
            identity,
            protocol,
            port,
            port_prefix_len,
        };
        for target in self.targets(policy, rule) {
            let identity = match target {
                Target::Any => IDENTITY_ANY,
                Target::Pods(id, _) | Target::Cidr(id) => id,
            };
            if rule.ports.is_empty() {
                insert(entries, key(identity, 0, 0, 0), by);
                continue;
            }
            for port in &rule.ports {
                let protocol = port.protocol.number();
                match &port.port {
                    PortSpec::Any => insert(entries, key(identity, protocol, 0, 0), by),
                    PortSpec::Range { first, last } => {
                        for (value, len) in port_range_prefixes(*first, *last) {
                            insert(entries, key(identity, protocol, value, len), by);
                        }
                    }
                    PortSpec::Named(name) => {
                        // (identity, port number) pairs the name stands for.
                        let resolved: Vec<(u32, u16)> = match (direction, target) {
                            (Direction::Ingress, _) => resolve(self.endpoint, name, protocol)
                                .map(|n| (identity, n))
                                .collect(),
                            (Direction::Egress, Target::Pods(id, labels)) => self
                                .named(labels, name, protocol)
                                .into_iter()
                                .map(|n| (id, n))
                                .collect(),
                            (Direction::Egress, Target::Any) => self
                                .identities
                                .iter()
                                .flat_map(|(labels, id)| {
                                    self.named(labels, name, protocol)
                                        .into_iter()
                                        .map(move |n| (*id, n))
                                })
                                .collect(),
                            (Direction::Egress, Target::Cidr(_)) => Vec::new(),
                        };
                        for (id, n) in resolved {
                            insert(entries, key(id, protocol, n, 16), by);
                        }
                    }
                }
            }
        }
    }
}

/// Container ports of `pod` named `name` with protocol number `protocol`.
pub(super) fn resolve<'p>(
    pod: &'p PodInfo,
    name: &'p str,
    protocol: u8,
) -> impl Iterator<Item = u16> + 'p {
    pod.ports
        .iter()
        .filter(move |cp| cp.name.as_deref() == Some(name) && cp.protocol.number() == protocol)
        .map(|cp| cp.port)
}

/// The datapath's lookup: not isolated allows; otherwise the peer's identity, then the CIDR
/// identity of its address, then IDENTITY_ANY are tried in turn, each with a longest-prefix
/// match over (direction, identity, protocol, port bits). Some(rule) means allowed.
pub fn simulate(
    policy: &EndpointPolicy,
    direction: Direction,
    peer_identity: u32,
    cidr_identity: Option<u32>,
    protocol: u8,
    port: u16,
) -> Option<RuleRef> {
    if !policy.isolated(direction) {
        return Some(RuleRef::Reserved("not-isolated"));
    }
    let candidates = [Some(peer_identity), cidr_identity, Some(IDENTITY_ANY)];
    for identity in candidates.into_iter().flatten() {
        let lowest = PolicyKey {
            direction,
            identity,
            protocol: 0,
            port: 0,
            port_prefix_len: 0,
        };
        let highest = PolicyKey {
            protocol: u8::MAX,
            port: u16::MAX,
            port_prefix_len: u8::MAX,
            ..lowest
        };
        let best = policy
            .entries
            .range(lowest..=highest)
            .filter(|(k, _)| {
                k.protocol == 0
                    || (k.protocol == protocol && prefix_matches(k.port, k.port_prefix_len, port))
            })
            .max_by_key(|(k, _)| {
                if k.protocol == 0 {
                    0
                } else {
                    8 + k.port_prefix_len as u32
                }
            });
        if let Some((_, rule)) = best {
            return Some(rule.clone());
        }
    }
    None
}

fn prefix_matches(value: u16, len: u8, port: u16) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u16::MAX << (16 - len.min(16))
    };
    (value & mask) == (port & mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_split_into_aligned_blocks() {
        assert_eq!(port_range_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_range_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_range_prefixes(1, 65535).len(), 16);
        assert_eq!(
            port_range_prefixes(32000, 32767),
            vec![(32000, 8), (32256, 7)]
        );
        assert!(port_range_prefixes(2, 1).is_empty());
        assert_eq!(port_range_prefixes(65535, 65535), vec![(65535, 16)]);
    }

    proptest! {
        /// Exact cover without overlap, blocks aligned, no two siblings left unmerged.
        #[test]
        fn range_cover_is_exact(a in any::<u16>(), b in any::<u16>()) {
            let (first, last) = (a.min(b), a.max(b));
            let blocks = port_range_prefixes(first, last);
            let mut covered = 0u32;
            let mut next = first as u32;
            for (value, len) in &blocks {
                let size = 1u32 << (16 - *len as u32);
                prop_assert_eq!(*value as u32 % size, 0, "aligned");
                prop_assert_eq!(*value as u32, next, "contiguous, in order");
                next += size;
                covered += size;
            }
            prop_assert_eq!(next, last as u32 + 1);
            prop_assert_eq!(covered, (last - first) as u32 + 1);
            // Minimal: the greedy cover never exceeds 2 blocks per bit.
            prop_assert!(blocks.len() <= 32);
            for p in [first, last, first.wrapping_add(1).min(last)] {
                prop_assert_eq!(blocks.iter().filter(|(v, l)| prefix_matches(*v, *l, p)).count(), 1);
            }
        }
    }
}
