//! What sluice keeps in etcd, and how keys and values are read back. Pure: no I/O.
//!
//! ```text
//! <prefix>/identities/<id>             -> identity label key      (no lease: identities outlive nodes)
//! <prefix>/nodes/<node>                -> NodeRecord (JSON)       (the node's lease)
//! <prefix>/endpoints/<node>/<pod ip>   -> EndpointRecord (JSON)   (the node's lease)
//! ```
//!
//! Anything under the prefix that does not parse, or whose key and value disagree (a record
//! under node A's key naming node B), is ignored with a reason: one bad writer cannot change
//! what another node is believed to have.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeRecord {
    pub name: String,
    pub address: Ipv4Addr,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Net,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointRecord {
    pub ip: Ipv4Addr,
    pub identity: u32,
    pub node: String,
    /// The node's address: where the datapath sends this pod's traffic.
    #[serde(rename = "nodeIP")]
    pub node_ip: Ipv4Addr,
    pub namespace: String,
    pub pod: String,
}

/// One key under the prefix, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Node(NodeRecord),
    Endpoint(EndpointRecord),
    /// Identities are read by the allocator, not by the watch.
    Identity,
}

/// Where a key points, without its value (deletions carry no value).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    Node(String),
    Endpoint { node: String, ip: Ipv4Addr },
    Identity(u32),
}

pub fn identity_key(prefix: &str, id: u32) -> String {
    format!("{prefix}/identities/{id}")
}

pub fn node_key(prefix: &str, node: &str) -> String {
    format!("{prefix}/nodes/{node}")
}

pub fn endpoint_key(prefix: &str, node: &str, ip: Ipv4Addr) -> String {
    format!("{prefix}/endpoints/{node}/{ip}")
}

/// Names are Kubernetes object names: no slashes, not empty.
fn valid_name(s: &str) -> bool {
    !s.is_empty() && !s.contains('/') && s.len() <= 253
}

pub fn parse_slot(prefix: &str, key: &[u8]) -> Result<Slot, String> {
    let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
    let rest = key
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| format!("{key}: not under {prefix}/"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        ["nodes", node] if valid_name(node) => Ok(Slot::Node(node.to_string())),
        ["endpoints", node, ip] if valid_name(node) => {
            let ip = ip
                .parse()
                .map_err(|_| format!("{key}: {ip:?} is not an IPv4 address"))?;
            Ok(Slot::Endpoint {
                node: node.to_string(),
                ip,
            })
        }
        ["identities", id] => id
            .parse()
            .map(Slot::Identity)
            .map_err(|_| format!("{key}: {id:?} is not an identity number")),
        _ => Err(format!("{key}: not a key sluice writes")),
    }
}

/// A key and its value; errors say what was wrong so the watcher can log and skip it.
pub fn parse_entry(prefix: &str, key: &[u8], value: &[u8]) -> Result<(Slot, Entry), String> {
    let slot = parse_slot(prefix, key)?;
    let shown = String::from_utf8_lossy(key).into_owned();
    let entry = match &slot {
        Slot::Node(name) => {
            let record: NodeRecord = serde_json::from_slice(value)
                .map_err(|e| format!("{shown}: not a node record: {e}"))?;
            if &record.name != name {
                return Err(format!(
                    "{shown}: the record names node {:?}, the key {name:?}",
                    record.name
                ));
            }
            Entry::Node(record)
        }
        Slot::Endpoint { node, ip } => {
            let record: EndpointRecord = serde_json::from_slice(value)
                .map_err(|e| format!("{shown}: not an endpoint record: {e}"))?;
            if &record.node != node || record.ip != *ip {
                return Err(format!(
                    "{shown}: the record names {} on node {:?}, the key {ip} on {node:?}",
                    record.ip, record.node
                ));
            }
            if record.identity == 0 {
                return Err(format!("{shown}: identity 0 is not an identity"));
            }
            Entry::Endpoint(record)
        }
        Slot::Identity(_) => Entry::Identity,
    };
    Ok((slot, entry))
}

/// What the other nodes published, as this agent last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub nodes: BTreeMap<String, NodeRecord>,
    /// (node, pod ip) -> record.
    pub endpoints: BTreeMap<(String, Ipv4Addr), EndpointRecord>,
}

impl ClusterView {
    /// Applies a put; returns whether anything changed.
    pub fn put(&mut self, entry: Entry) -> bool {
        match entry {
            Entry::Node(n) => self.nodes.insert(n.name.clone(), n.clone()) != Some(n),
            Entry::Endpoint(e) => {
                self.endpoints.insert((e.node.clone(), e.ip), e.clone()) != Some(e)
            }
            Entry::Identity => false,
        }
    }

    /// Applies a delete (an expired lease deletes every key under it).
    pub fn delete(&mut self, slot: &Slot) -> bool {
        match slot {
            Slot::Node(n) => self.nodes.remove(n).is_some(),
            Slot::Endpoint { node, ip } => self.endpoints.remove(&(node.clone(), *ip)).is_some(),
            Slot::Identity(_) => false,
        }
    }

    /// Pod address -> record, for nodes other than `own`. When two nodes claim one address
    /// (a dead node's records outlive it until its lease expires), a node that still
    /// publishes its node record wins; otherwise the first by node name.
    pub fn remote_endpoints(&self, own: &str) -> BTreeMap<Ipv4Addr, &EndpointRecord> {
        let mut out: BTreeMap<Ipv4Addr, &EndpointRecord> = BTreeMap::new();
        for ((node, ip), record) in &self.endpoints {
            if node == own {
                continue;
            }
            let alive = self.nodes.contains_key(node);
            match out.get(ip) {
                Some(existing) if self.nodes.contains_key(&existing.node) || !alive => {}
                _ => {
                    out.insert(*ip, record);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/sluice";

    fn endpoint(node: &str, ip: &str, identity: u32) -> EndpointRecord {
        EndpointRecord {
            ip: ip.parse().unwrap(),
            identity,
            node: node.into(),
            node_ip: "192.168.0.1".parse().unwrap(),
            namespace: "x".into(),
            pod: "a".into(),
        }
    }

    #[test]
    fn records_round_trip_through_their_keys() {
        let e = endpoint("n1", "10.1.0.5", 300);
        let key = endpoint_key(P, "n1", e.ip);
        assert_eq!(key, "/sluice/endpoints/n1/10.1.0.5");
        let value = serde_json::to_vec(&e).unwrap();
        let (slot, entry) = parse_entry(P, key.as_bytes(), &value).unwrap();
        assert_eq!(
            slot,
            Slot::Endpoint {
                node: "n1".into(),
                ip: e.ip
            }
        );
        assert_eq!(entry, Entry::Endpoint(e));

        let n = NodeRecord {
            name: "n1".into(),
            address: "192.168.0.1".parse().unwrap(),
            pod_cidr: "10.1.0.0/24".parse().unwrap(),
        };
        let value = serde_json::to_vec(&n).unwrap();
        assert!(String::from_utf8_lossy(&value).contains("\"podCIDR\""));
        let (_, entry) = parse_entry(P, node_key(P, "n1").as_bytes(), &value).unwrap();
        assert_eq!(entry, Entry::Node(n));
        assert_eq!(
            parse_slot(P, identity_key(P, 300).as_bytes()),
            Ok(Slot::Identity(300))
        );
    }

    #[test]
    fn corrupt_or_foreign_keys_are_refused_with_a_reason() {
        let good = serde_json::to_vec(&endpoint("n1", "10.1.0.5", 300)).unwrap();
        let cases: Vec<(&[u8], &[u8], &str)> = vec![
            (
                b"/sluice/endpoints/n1/10.1.0.5",
                b"{not json",
                "not an endpoint record",
            ),
            (b"/sluice/endpoints/n2/10.1.0.5", &good, "on node \"n1\""),
            (b"/sluice/endpoints/n1/10.1.0.6", &good, "the key 10.1.0.6"),
            (
                b"/sluice/endpoints/n1/not-an-ip",
                &good,
                "not an IPv4 address",
            ),
            (b"/sluice/something/else", b"", "not a key sluice writes"),
            (b"/other/endpoints/n1/10.1.0.5", &good, "not under /sluice/"),
            (
                b"/sluice/endpoints//10.1.0.5",
                &good,
                "not a key sluice writes",
            ),
            (&[0xff, 0xfe], b"", "not UTF-8"),
            (b"/sluice/identities/x", b"k", "not an identity number"),
        ];
        for (key, value, want) in cases {
            let err = parse_entry(P, key, value).unwrap_err();
            assert!(
                err.contains(want),
                "{:?}: {err}",
                String::from_utf8_lossy(key)
            );
        }
        let zero = serde_json::to_vec(&endpoint("n1", "10.1.0.5", 0)).unwrap();
        assert!(parse_entry(P, b"/sluice/endpoints/n1/10.1.0.5", &zero).is_err());
    }

    #[test]
    fn the_view_follows_puts_and_deletes_and_leaves_out_its_own_node() {
        let mut view = ClusterView::default();
        assert!(view.put(Entry::Endpoint(endpoint("n1", "10.1.0.5", 300))));
        assert!(!view.put(Entry::Endpoint(endpoint("n1", "10.1.0.5", 300))));
        assert!(view.put(Entry::Endpoint(endpoint("n2", "10.2.0.5", 301))));
        let remote = view.remote_endpoints("n1");
        assert_eq!(remote.len(), 1);
        assert_eq!(remote[&"10.2.0.5".parse().unwrap()].identity, 301);
        assert!(view.delete(&Slot::Endpoint {
            node: "n2".into(),
            ip: "10.2.0.5".parse().unwrap()
        }));
        assert!(view.remote_endpoints("n1").is_empty());
    }

    #[test]
    fn an_address_claimed_twice_goes_to_the_live_node() {
        let mut view = ClusterView::default();
        view.put(Entry::Endpoint(endpoint("a-dead", "10.9.0.5", 300)));
        view.put(Entry::Endpoint(endpoint("b-live", "10.9.0.5", 301)));
        view.put(Entry::Node(NodeRecord {
            name: "b-live".into(),
            address: "192.168.0.2".parse().unwrap(),
            pod_cidr: "10.9.0.0/24".parse().unwrap(),
        }));
        assert_eq!(
            view.remote_endpoints("me")[&"10.9.0.5".parse().unwrap()].node,
            "b-live"
        );
    }
}
