//! Who is who, for turning datapath events into flows: pods by address (with identity,
//! labels and node), service frontends, nodes, the network namespaces of local pods and the
//! policy rules behind entry cookies. Rebuilt by the core thread after every change and
//! shared read-only with the event reader.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, LazyLock};

/// A pod as flows show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointMeta {
    /// The local endpoint's id (its host-side ifindex); 0 for pods on other nodes.
    pub id: u32,
    pub identity: u32,
    pub namespace: String,
    pub pod_name: String,
    /// "k8s:key=value", sorted, with the namespace as `k8s:io.kubernetes.pod.namespace`.
    pub labels: Vec<String>,
    pub node_name: String,
}

/// The NetworkPolicy rule an entry cookie stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMeta {
    pub namespace: String,
    pub name: String,
    /// "ns/name ingress rule 1", as `sluice endpoint get` prints it.
    pub description: String,
}

/// Everything is shared (`Arc`): an event keeps the records it was resolved to, so the
/// reader only bumps reference counts per event and builds the flow when a client reads it.
#[derive(Debug, Clone, Default)]
pub struct FlowDirectory {
    pub node_name: Arc<str>,
    /// This node's address.
    pub node_ip: Option<Ipv4Addr>,
    pub endpoints: HashMap<Ipv4Addr, Arc<EndpointMeta>>,
    /// Node addresses -> the node as an endpoint (this node is the host, others remote
    /// nodes); filled by `add_node` once `node_ip` is known.
    pub(super) nodes: HashMap<Ipv4Addr, Arc<EndpointMeta>>,
    /// (address, port, IP protocol) of a frontend -> "namespace/name" of its service.
    pub frontends: HashMap<(Ipv4Addr, u16, u8), Arc<str>>,
    /// Network-namespace cookie of a local pod -> its address (socket events carry the cookie).
    pub netns: HashMap<u64, Ipv4Addr>,
    /// The node's own namespace (sockets of host processes).
    pub host_netns: Option<u64>,
    pub rules: HashMap<u32, Arc<RuleMeta>>,
}

use sluice_datapath::abi::{IDENTITY_HOST, IDENTITY_REMOTE_NODE, IDENTITY_WORLD};

static WORLD: LazyLock<Arc<EndpointMeta>> = LazyLock::new(|| {
    Arc::new(EndpointMeta {
        identity: IDENTITY_WORLD,
        labels: vec!["reserved:world".into()],
        ..Default::default()
    })
});

impl FlowDirectory {
    /// Records node `name` at `ip` (set `node_ip` first: it decides host or remote node).
    pub fn add_node(&mut self, ip: Ipv4Addr, name: &str) {
        let host = Some(ip) == self.node_ip;
        let meta = EndpointMeta {
            identity: if host {
                IDENTITY_HOST
            } else {
                IDENTITY_REMOTE_NODE
            },
            labels: vec![if host {
                "reserved:host".into()
            } else {
                "reserved:remote-node".into()
            }],
            node_name: name.to_string(),
            ..Default::default()
        };
        self.nodes.insert(ip, Arc::new(meta));
    }

    /// The endpoint behind `ip`: a pod, this or another node, or the world.
    pub fn endpoint(&self, ip: Ipv4Addr) -> Arc<EndpointMeta> {
        self.endpoints
            .get(&ip)
            .or_else(|| self.nodes.get(&ip))
            .unwrap_or(&WORLD)
            .clone()
    }

    /// The service a frontend belongs to, if it is one.
    pub fn service(&self, ip: Ipv4Addr, port: u16, proto: u8) -> Option<Arc<str>> {
        self.frontends.get(&(ip, port, proto)).cloned()
    }

    /// The pod (or the host) a socket event came from.
    pub fn by_netns(&self, cookie: u64) -> Option<Arc<EndpointMeta>> {
        if let Some(ip) = self.netns.get(&cookie) {
            return Some(self.endpoint(*ip));
        }
        (self.host_netns == Some(cookie)).then(|| {
            Arc::new(EndpointMeta {
                identity: IDENTITY_HOST,
                labels: vec!["reserved:host".into()],
                node_name: self.node_name.to_string(),
                ..Default::default()
            })
        })
    }

    /// The address of the local pod whose namespace has `cookie`.
    pub fn netns_address(&self, cookie: u64) -> Option<Ipv4Addr> {
        self.netns.get(&cookie).copied()
    }
}

/// Hubble's label form of a pod's labels and namespace.
pub fn pod_labels(
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let mut out: Vec<String> = labels.iter().map(|(k, v)| format!("k8s:{k}={v}")).collect();
    out.push(format!("k8s:io.kubernetes.pod.namespace={namespace}"));
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory() -> FlowDirectory {
        let mut d = FlowDirectory {
            node_name: "n1".into(),
            node_ip: Some(Ipv4Addr::new(192, 168, 1, 1)),
            host_netns: Some(1),
            ..Default::default()
        };
        d.add_node(Ipv4Addr::new(192, 168, 1, 1), "n1");
        d.add_node(Ipv4Addr::new(192, 168, 1, 2), "n2");
        d.endpoints.insert(
            Ipv4Addr::new(10, 0, 0, 5),
            Arc::new(EndpointMeta {
                id: 12,
                identity: 300,
                namespace: "x".into(),
                pod_name: "a".into(),
                labels: pod_labels("x", &[("app".to_string(), "a".to_string())].into()),
                node_name: "n1".into(),
            }),
        );
        d.netns.insert(77, Ipv4Addr::new(10, 0, 0, 5));
        d
    }

    #[test]
    fn addresses_resolve_to_pods_nodes_or_the_world() {
        let d = directory();
        let pod = d.endpoint(Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!((pod.namespace.as_str(), pod.pod_name.as_str()), ("x", "a"));
        assert_eq!(
            pod.labels,
            vec!["k8s:app=a", "k8s:io.kubernetes.pod.namespace=x"]
        );
        assert_eq!(d.endpoint(Ipv4Addr::new(192, 168, 1, 1)).identity, 1);
        assert_eq!(d.endpoint(Ipv4Addr::new(192, 168, 1, 2)).identity, 6);
        let world = d.endpoint(Ipv4Addr::new(8, 8, 8, 8));
        assert_eq!(
            (world.identity, world.labels[0].as_str()),
            (2, "reserved:world")
        );
    }

    #[test]
    fn socket_namespaces_resolve_to_their_pod_or_the_host() {
        let d = directory();
        assert_eq!(d.by_netns(77).unwrap().pod_name, "a");
        assert_eq!(d.by_netns(1).unwrap().identity, IDENTITY_HOST);
        assert!(d.by_netns(5).is_none());
    }
}
