//! The reference evaluator: decides a flow straight from the NetworkPolicy semantics (selectors
//! against actual pods and namespaces, ipBlocks against actual addresses, named ports on the
//! actual pod) and says why. It never looks at map entries, so it can check them.

use std::fmt;
use std::net::Ipv4Addr;

use super::flatten::resolve;
use super::{Direction, Peer, PolicyInfo, PolicyRule, PortSpec, RuleRef};
use crate::state::{DesiredState, PodInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    /// The node the pod on the other side runs on.
    Host,
    RemoteNode,
    World,
}

#[derive(Debug, Clone, Copy)]
pub enum FlowPeer<'a> {
    Pod(&'a PodInfo),
    Address { ip: Ipv4Addr, kind: AddressKind },
}

impl FlowPeer<'_> {
    fn ip(&self) -> Option<Ipv4Addr> {
        match self {
            FlowPeer::Pod(p) => p.ip,
            FlowPeer::Address { ip, .. } => Some(*ip),
        }
    }
}

impl fmt::Display for FlowPeer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowPeer::Pod(p) => write!(f, "{}/{}", p.namespace, p.name),
            FlowPeer::Address { ip, kind } => {
                let kind = match kind {
                    AddressKind::Host => "host",
                    AddressKind::RemoteNode => "remote node",
                    AddressKind::World => "world",
                };
                write!(f, "{ip} ({kind})")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectionVerdict {
    /// That side of the flow is not a pod.
    NotApplicable,
    NotIsolated,
    /// Every rule that allows the flow.
    Allowed(Vec<RuleRef>),
    Denied {
        /// "namespace/name" of the policies isolating the pod in this direction.
        isolating: Vec<String>,
        /// Per isolating policy (same order), why none of its rules matched.
        reasons: Vec<String>,
    },
}

impl DirectionVerdict {
    pub fn allows(&self) -> bool {
        !matches!(self, DirectionVerdict::Denied { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceResult {
    pub from: String,
    pub to: String,
    /// Judged at the source pod.
    pub egress: DirectionVerdict,
    /// Judged at the destination pod.
    pub ingress: DirectionVerdict,
    pub allowed: bool,
}

/// Whether policy lets `from` reach `to` with `protocol` (IP protocol number) and `port`.
/// A pod may always talk to itself, and a pod's own node may always reach it.
pub fn trace(
    state: &DesiredState,
    from: FlowPeer,
    to: FlowPeer,
    protocol: u8,
    port: u16,
) -> TraceResult {
    let flow = Flow {
        state,
        protocol,
        port,
    };
    let same_pod = matches!((from, to), (FlowPeer::Pod(a), FlowPeer::Pod(b))
        if a.namespace == b.namespace && a.name == b.name);
    let egress = match from {
        FlowPeer::Pod(_) if same_pod => {
            DirectionVerdict::Allowed(vec![RuleRef::Reserved("same-pod")])
        }
        FlowPeer::Pod(pod) => flow.judge(pod, Direction::Egress, to),
        FlowPeer::Address { .. } => DirectionVerdict::NotApplicable,
    };
    let ingress = match to {
        FlowPeer::Pod(_) if same_pod => {
            DirectionVerdict::Allowed(vec![RuleRef::Reserved("same-pod")])
        }
        FlowPeer::Pod(pod) => match (flow.judge(pod, Direction::Ingress, from), from) {
            (
                DirectionVerdict::Allowed(_) | DirectionVerdict::Denied { .. },
                FlowPeer::Address {
                    kind: AddressKind::Host,
                    ..
                },
            ) => DirectionVerdict::Allowed(vec![RuleRef::Reserved("host")]),
            (verdict, _) => verdict,
        },
        FlowPeer::Address { .. } => DirectionVerdict::NotApplicable,
    };
    TraceResult {
        from: from.to_string(),
        to: to.to_string(),
        allowed: egress.allows() && ingress.allows(),
        egress,
        ingress,
    }
}

struct Flow<'a> {
    state: &'a DesiredState,
    protocol: u8,
    port: u16,
}

/// How a rule's peer list matched the other side: named ports only resolve when the receiving
/// side is known as a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerMatch {
    /// By podSelector/namespaceSelector, or a rule without peers.
    Pod,
    /// Only by ipBlock.
    Address,
}

impl Flow<'_> {
    fn judge(&self, endpoint: &PodInfo, direction: Direction, other: FlowPeer) -> DirectionVerdict {
        let mut isolating = Vec::new();
        let mut reasons = Vec::new();
        let mut allowed = Vec::new();
        for policy in self.state.policies_selecting(endpoint) {
            let Some(rules) = policy.rules(direction) else {
                continue;
            };
            isolating.push(policy.key());
            let mut why = Vec::new();
            for (index, rule) in rules.iter().enumerate() {
                match self.rule(policy, rule, direction, endpoint, other) {
                    Ok(()) => allowed.push(RuleRef::Rule {
                        policy: policy.key(),
                        direction,
                        index,
                    }),
                    Err(reason) => why.push(format!("{direction}[{index}]: {reason}")),
                }
            }
            reasons.push(if rules.is_empty() {
                format!("has no {direction} rules")
            } else {
                why.join("; ")
            });
        }
        if isolating.is_empty() {
            DirectionVerdict::NotIsolated
        } else if !allowed.is_empty() {
            DirectionVerdict::Allowed(allowed)
        } else {
            DirectionVerdict::Denied { isolating, reasons }
        }
    }

    fn rule(
        &self,
        policy: &PolicyInfo,
        rule: &PolicyRule,
        direction: Direction,
        endpoint: &PodInfo,
        other: FlowPeer,
    ) -> Result<(), &'static str> {
        let matched: Vec<PeerMatch> = if rule.peers.is_empty() {
            vec![PeerMatch::Pod]
        } else {
            rule.peers
                .iter()
                .filter_map(|p| self.peer(policy, p, other))
                .collect()
        };
        if matched.is_empty() {
            return Err("peer not selected");
        }
        if rule.ports.is_empty() {
            return Ok(());
        }
        // The pod whose container ports a name refers to: the one receiving the traffic.
        let receiver = match (direction, other) {
            (Direction::Ingress, _) => Some(endpoint),
            (Direction::Egress, FlowPeer::Pod(pod)) if matched.contains(&PeerMatch::Pod) => {
                Some(pod)
            }
            (Direction::Egress, _) => None,
        };
        let port_ok = rule.ports.iter().any(|p| {
            let protocol = p.protocol.number();
            protocol == self.protocol
                && match &p.port {
                    PortSpec::Any => true,
                    PortSpec::Range { first, last } => (*first..=*last).contains(&self.port),
                    PortSpec::Named(name) => receiver
                        .is_some_and(|pod| resolve(pod, name, protocol).any(|n| n == self.port)),
                }
        });
        if port_ok {
            Ok(())
        } else {
            Err("port not allowed")
        }
    }

    fn peer(&self, policy: &PolicyInfo, peer: &Peer, other: FlowPeer) -> Option<PeerMatch> {
        match (peer, other) {
            (Peer::Pods { namespaces, pods }, FlowPeer::Pod(pod)) => {
                let ns_ok = match namespaces {
                    None => pod.namespace == policy.namespace,
                    Some(sel) => sel.matches(&self.state.namespace_labels(&pod.namespace)),
                };
                let pods_ok = pods.as_ref().is_none_or(|sel| sel.matches(&pod.labels));
                (ns_ok && pods_ok).then_some(PeerMatch::Pod)
            }
            (Peer::Pods { .. }, FlowPeer::Address { .. }) => None,
            (Peer::IpBlock { cidr, except }, other) => {
                let ip = other.ip()?;
                (cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip)))
                    .then_some(PeerMatch::Address)
            }
            (Peer::Ipv6Block, _) => None,
        }
    }
}

impl fmt::Display for TraceResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sides = [
            ("egress from", &self.from, &self.egress),
            ("ingress to", &self.to, &self.ingress),
        ];
        for (side, who, verdict) in sides {
            match verdict {
                DirectionVerdict::NotApplicable => {}
                DirectionVerdict::NotIsolated => writeln!(f, "{side} {who}: not isolated")?,
                DirectionVerdict::Allowed(rules) => {
                    let rules: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
                    writeln!(f, "{side} {who}: ALLOWED by {}", rules.join(", "))?;
                }
                DirectionVerdict::Denied { isolating, reasons } => {
                    writeln!(
                        f,
                        "{side} {who}: DENIED: isolated by {} and none of their rules match",
                        isolating
                            .iter()
                            .map(|p| format!("NetworkPolicy {p}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )?;
                    for (policy, reason) in isolating.iter().zip(reasons) {
                        writeln!(f, "  NetworkPolicy {policy}: {reason}")?;
                    }
                }
            }
        }
        write!(
            f,
            "verdict: {}",
            if self.allowed { "ALLOWED" } else { "DENIED" }
        )
    }
}
