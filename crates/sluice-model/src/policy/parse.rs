//! NetworkPolicy objects into PolicyInfo, with the API server's validation: a policy that would
//! be rejected there is rejected here, naming the field and value.

use ipnet::{Ipv4Net, Ipv6Net};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Direction, Peer, PolicyInfo, PolicyRule, PortRule, PortSpec};
use crate::selector;
use crate::service::Protocol;

impl PolicyInfo {
    pub fn from_policy(np: &NetworkPolicy) -> Result<Self, String> {
        let name = np
            .metadata
            .name
            .clone()
            .ok_or("NetworkPolicy: metadata.name is missing")?;
        let namespace = np
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let prefix = |m: String| format!("NetworkPolicy {namespace}/{name}: {m}");
        let spec = np.spec.clone().unwrap_or_default();
        let pod_selector = match &spec.pod_selector {
            Some(s) => selector::parse(s, "spec.podSelector").map_err(prefix)?,
            None => Default::default(),
        };
        let mut types = Vec::new();
        for (i, t) in spec.policy_types.iter().flatten().enumerate() {
            types.push(match t.as_str() {
                "Ingress" => Direction::Ingress,
                "Egress" => Direction::Egress,
                other => {
                    return Err(prefix(format!(
                        "spec.policyTypes[{i}]: {other:?} is not one of Ingress, Egress"
                    )))
                }
            });
        }
        let egress_rules = spec.egress.as_deref().unwrap_or_default();
        // Kubernetes' defaulting: every policy isolates for ingress; egress only when it says
        // something about egress.
        if types.is_empty() {
            types.push(Direction::Ingress);
            if !egress_rules.is_empty() {
                types.push(Direction::Egress);
            }
        }
        let ingress = if types.contains(&Direction::Ingress) {
            let rules = spec.ingress.as_deref().unwrap_or_default().iter();
            let rules = rules.enumerate().map(|(i, r)| {
                rule(
                    &format!("spec.ingress[{i}]"),
                    "from",
                    r.from.as_deref(),
                    r.ports.as_deref(),
                )
            });
            Some(rules.collect::<Result<Vec<_>, _>>().map_err(prefix)?)
        } else {
            None
        };
        let egress = if types.contains(&Direction::Egress) {
            let rules = egress_rules.iter().enumerate().map(|(i, r)| {
                rule(
                    &format!("spec.egress[{i}]"),
                    "to",
                    r.to.as_deref(),
                    r.ports.as_deref(),
                )
            });
            Some(rules.collect::<Result<Vec<_>, _>>().map_err(prefix)?)
        } else {
            None
        };
        Ok(PolicyInfo {
            namespace,
            name,
            pod_selector,
            ingress,
            egress,
        })
    }
}

fn rule(
    at: &str,
    peers_field: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
) -> Result<PolicyRule, String> {
    let peers = peers.unwrap_or_default().iter().enumerate();
    let peers = peers.map(|(i, p)| peer(&format!("{at}.{peers_field}[{i}]"), p));
    let ports = ports.unwrap_or_default().iter().enumerate();
    let ports = ports.map(|(i, p)| port(&format!("{at}.ports[{i}]"), p));
    Ok(PolicyRule {
        peers: peers.collect::<Result<_, _>>()?,
        ports: ports.collect::<Result<_, _>>()?,
    })
}

fn peer(at: &str, p: &NetworkPolicyPeer) -> Result<Peer, String> {
    let selected = |s: &Option<_>, field: &str| {
        s.as_ref()
            .map(|s| selector::parse(s, &format!("{at}.{field}")))
            .transpose()
    };
    match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
        (None, None, None) => Err(format!(
            "{at}: must set one of podSelector, namespaceSelector, ipBlock"
        )),
        (Some(block), None, None) => ip_block(&format!("{at}.ipBlock"), block),
        (Some(_), _, _) => Err(format!(
            "{at}: ipBlock may not be combined with podSelector or namespaceSelector"
        )),
        (None, pods, namespaces) => Ok(Peer::Pods {
            namespaces: selected(namespaces, "namespaceSelector")?,
            pods: selected(pods, "podSelector")?,
        }),
    }
}

fn ip_block(at: &str, block: &IPBlock) -> Result<Peer, String> {
    let text = block.cidr.as_str();
    let except = block.except.as_deref().unwrap_or_default();
    if text.contains(':') {
        let cidr: Ipv6Net = text
            .parse()
            .map_err(|_| format!("{at}.cidr: {text:?} is not an IPv6 CIDR"))?;
        let cidr = cidr.trunc();
        for (i, e) in except.iter().enumerate() {
            let field = format!("{at}.except[{i}]");
            let net: Ipv6Net = e
                .parse()
                .map_err(|_| format!("{field}: {e:?} is not an IPv6 CIDR"))?;
            if !(cidr.contains(&net) && net.prefix_len() > cidr.prefix_len()) {
                return Err(format!("{field}: {e:?} is not strictly inside cidr {cidr}"));
            }
        }
        return Ok(Peer::Ipv6Block);
    }
    let cidr: Ipv4Net = text
        .parse()
        .map_err(|_| format!("{at}.cidr: {text:?} is not an IPv4 CIDR"))?;
    let cidr = cidr.trunc();
    let mut nets = Vec::new();
    for (i, e) in except.iter().enumerate() {
        let field = format!("{at}.except[{i}]");
        let net: Ipv4Net = e
            .parse()
            .map_err(|_| format!("{field}: {e:?} is not an IPv4 CIDR"))?;
        let net = net.trunc();
        if !(cidr.contains(&net) && net.prefix_len() > cidr.prefix_len()) {
            return Err(format!("{field}: {e:?} is not strictly inside cidr {cidr}"));
        }
        nets.push(net);
    }
    Ok(Peer::IpBlock { cidr, except: nets })
}

fn port(at: &str, p: &NetworkPolicyPort) -> Result<PortRule, String> {
    let protocol =
        Protocol::parse(p.protocol.as_deref()).map_err(|m| format!("{at}.protocol: {m}"))?;
    let number = |n: i32| {
        if (1..=65535).contains(&n) {
            Ok(n as u16)
        } else {
            Err(format!("{at}.port: {n} is outside 1..=65535"))
        }
    };
    let first = match &p.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(number(*n)?),
        Some(IntOrString::String(s)) => match s.parse::<i32>() {
            Ok(n) => Some(number(n)?),
            Err(_) => {
                check_port_name(s).map_err(|m| format!("{at}.port: {s:?} {m}"))?;
                if let Some(end) = p.end_port {
                    return Err(format!(
                        "{at}.endPort: {end} needs a numeric port, not the name {s:?}"
                    ));
                }
                return Ok(PortRule {
                    protocol,
                    port: PortSpec::Named(s.clone()),
                });
            }
        },
    };
    let port = match (first, p.end_port) {
        (None, None) => PortSpec::Any,
        (None, Some(end)) => return Err(format!("{at}.endPort: {end} needs a numeric port")),
        (Some(first), None) => PortSpec::Range { first, last: first },
        (Some(first), Some(end)) => {
            if end < first as i32 || end > 65535 {
                return Err(format!("{at}.endPort: {end} is outside {first}..=65535"));
            }
            PortSpec::Range {
                first,
                last: end as u16,
            }
        }
    };
    Ok(PortRule { protocol, port })
}

/// An IANA service name, as container port names are.
fn check_port_name(s: &str) -> Result<(), String> {
    let ok = (1..=15).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err("is neither a port number nor a port name (1-15 of a-z, 0-9, '-', with a letter, no leading, trailing or double '-')".into())
    }
}
