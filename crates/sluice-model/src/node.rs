//! A node as the datapath needs it: name, pod CIDR, underlay address.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeInfo {
    pub name: String,
    pub pod_cidr: Ipv4Net,
    pub address: Ipv4Addr,
}

impl NodeInfo {
    /// From a Node object: `spec.podCIDR` (or the first IPv4 of `spec.podCIDRs`) and the first
    /// `status.addresses` entry of type InternalIP. Errors name the field and value.
    pub fn from_node(node: &Node) -> Result<Self, String> {
        let name = node
            .metadata
            .name
            .clone()
            .ok_or("Node: metadata.name is missing")?;
        let spec = node.spec.as_ref();
        let cidr_text = spec
            .and_then(|s| s.pod_cidr.clone())
            .filter(|c| !c.contains(':'))
            .or_else(|| {
                // Dual-stack nodes list both families; the first IPv4 one is ours.
                spec.and_then(|s| {
                    s.pod_cidrs
                        .as_ref()?
                        .iter()
                        .find(|c| !c.contains(':'))
                        .cloned()
                })
            })
            .ok_or_else(|| format!("Node {name}: spec.podCIDR is missing"))?;
        let pod_cidr: Ipv4Net = cidr_text.parse().map_err(|_| {
            format!("Node {name}: spec.podCIDR: {cidr_text:?} is not a valid IPv4 CIDR")
        })?;
        if pod_cidr.trunc() != pod_cidr {
            return Err(format!(
                "Node {name}: spec.podCIDR: {cidr_text:?} has host bits set (did you mean {}?)",
                pod_cidr.trunc()
            ));
        }
        let address_text = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone())
            .ok_or_else(|| {
                format!("Node {name}: status.addresses has no entry of type InternalIP")
            })?;
        let address: Ipv4Addr = address_text.parse().map_err(|_| {
            format!("Node {name}: status.addresses[InternalIP]: {address_text:?} is not an IPv4 address")
        })?;
        Ok(NodeInfo {
            name,
            pod_cidr,
            address,
        })
    }

    /// MAC of this node's VXLAN device, derived from its address so every node knows every
    /// other node's without asking (locally administered, unicast: 0a:58 + the IPv4 octets).
    pub fn vxlan_mac(&self) -> [u8; 6] {
        vxlan_mac(self.address)
    }
}

pub fn vxlan_mac(address: Ipv4Addr) -> [u8; 6] {
    let o = address.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(yaml: &str) -> Node {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn reads_cidr_and_internal_ip() {
        let n = node(
            "metadata: {name: a}\nspec: {podCIDR: 10.0.1.0/24}\nstatus: {addresses: [{type: Hostname, address: a}, {type: InternalIP, address: 192.168.1.2}]}",
        );
        let info = NodeInfo::from_node(&n).unwrap();
        assert_eq!(info.pod_cidr, "10.0.1.0/24".parse().unwrap());
        assert_eq!(info.address, Ipv4Addr::new(192, 168, 1, 2));
        assert_eq!(info.vxlan_mac(), [0x0a, 0x58, 192, 168, 1, 2]);
    }

    #[test]
    fn a_dual_stack_node_gives_its_ipv4_pod_cidr() {
        let n = node(
            "metadata: {name: a}\nspec: {podCIDR: \"fd00:1::/64\", podCIDRs: [\"fd00:1::/64\", 10.0.7.0/24]}\nstatus: {addresses: [{type: InternalIP, address: 192.168.1.2}]}",
        );
        assert_eq!(
            NodeInfo::from_node(&n).unwrap().pod_cidr,
            "10.0.7.0/24".parse().unwrap()
        );
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let n = node("metadata: {name: a}\nspec: {podCIDR: 10.0.1.0/33}");
        assert_eq!(
            NodeInfo::from_node(&n).unwrap_err(),
            "Node a: spec.podCIDR: \"10.0.1.0/33\" is not a valid IPv4 CIDR"
        );
        let n = node("metadata: {name: a}\nspec: {podCIDR: 10.0.1.5/24}");
        assert!(NodeInfo::from_node(&n).unwrap_err().contains("host bits"));
        let n = node("metadata: {name: a}\nspec: {podCIDR: 10.0.1.0/24}");
        assert!(NodeInfo::from_node(&n).unwrap_err().contains("InternalIP"));
        let n = node("metadata: {name: a}\nspec: {podCIDR: 10.0.1.0/24}\nstatus: {addresses: [{type: InternalIP, address: nope}]}");
        assert!(NodeInfo::from_node(&n).unwrap_err().contains("\"nope\""));
    }
}
