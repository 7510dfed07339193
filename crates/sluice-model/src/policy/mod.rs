//! Kubernetes NetworkPolicy: the validated policy objects (parse), the per-endpoint map
//! entries the datapath looks up (flatten), and a reference evaluator that explains verdicts
//! straight from the semantics (trace). The tests check the last two against each other.

use std::fmt;

use ipnet::Ipv4Net;

use crate::selector::LabelSelector;
use crate::service::Protocol;
use crate::state::{DesiredState, PodInfo};

mod flatten;
mod parse;
mod trace;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod truth;

pub use flatten::{endpoint_policy, port_range_prefixes, simulate, EndpointPolicy, PolicyKey};
pub use trace::{trace, AddressKind, DirectionVerdict, FlowPeer, TraceResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The spelling in policyTypes and in field paths (`spec.ingress[0]`).
    pub fn field(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    pub namespace: String,
    pub name: String,
    pub pod_selector: LabelSelector,
    /// Some when policyTypes contains that direction (the policy isolates selected pods in it).
    pub ingress: Option<Vec<PolicyRule>>,
    pub egress: Option<Vec<PolicyRule>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    /// Empty: every source (ingress) or destination (egress).
    pub peers: Vec<Peer>,
    /// Empty: every protocol and port.
    pub ports: Vec<PortRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// namespaces None = the policy's own namespace; pods None = every pod of the selected
    /// namespaces.
    Pods {
        namespaces: Option<LabelSelector>,
        pods: Option<LabelSelector>,
    },
    IpBlock {
        cidr: Ipv4Net,
        except: Vec<Ipv4Net>,
    },
    /// An IPv6 ipBlock: valid Kubernetes, matches nothing here (sluice is IPv4-only).
    Ipv6Block,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    pub protocol: Protocol,
    pub port: PortSpec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    Any,
    /// A single port has first == last.
    Range {
        first: u16,
        last: u16,
    },
    /// A container port name, resolved on the pod that receives the traffic.
    Named(String),
}

/// Which rule allowed something: a policy's rule, or one of the fixed allowances.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleRef {
    Rule {
        /// "namespace/name"
        policy: String,
        direction: Direction,
        index: usize,
    },
    Reserved(&'static str),
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleRef::Rule {
                policy,
                direction,
                index,
            } => write!(f, "NetworkPolicy {policy} rule {direction}[{index}]"),
            RuleRef::Reserved(what) => write!(f, "reserved rule {what:?}"),
        }
    }
}

impl PolicyInfo {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn rules(&self, direction: Direction) -> Option<&[PolicyRule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Whether the policy applies to `pod` at all (its namespace, its podSelector).
    pub fn selects(&self, pod: &PodInfo) -> bool {
        pod.namespace == self.namespace && self.pod_selector.matches(&pod.labels)
    }

    /// The pods the policy applies to, in key order.
    pub fn selected_pods<'a>(&self, state: &'a DesiredState) -> Vec<&'a PodInfo> {
        state.pods.values().filter(|p| self.selects(p)).collect()
    }

    /// Every ipBlock of the policy in force, with its except list.
    pub fn ip_blocks(&self) -> impl Iterator<Item = (&Ipv4Net, &[Ipv4Net])> {
        let rules = self.ingress.iter().chain(self.egress.iter()).flatten();
        rules.flat_map(|r| r.peers.iter()).filter_map(|p| match p {
            Peer::IpBlock { cidr, except } => Some((cidr, except.as_slice())),
            _ => None,
        })
    }
}

impl DesiredState {
    /// Policies that apply to `pod`, in key order.
    pub fn policies_selecting(&self, pod: &PodInfo) -> Vec<&PolicyInfo> {
        self.policies.values().filter(|p| p.selects(pod)).collect()
    }

    /// Labels of a namespace; one without a Namespace object has none.
    /// A namespace without a Namespace object has only the label naming it, as the API
    /// server would give it.
    pub fn namespace_labels(
        &self,
        namespace: &str,
    ) -> std::borrow::Cow<'_, std::collections::BTreeMap<String, String>> {
        match self.namespaces.get(namespace) {
            Some(labels) => std::borrow::Cow::Borrowed(labels),
            None => std::borrow::Cow::Owned(
                [(
                    crate::state::NAMESPACE_NAME_LABEL.to_string(),
                    namespace.to_string(),
                )]
                .into(),
            ),
        }
    }
}
