//! The desired state assembled from objects, with the cross-object checks no single object can
//! make (overlapping pod CIDRs, duplicate names).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::manifest::Object;
use crate::node::NodeInfo;
use crate::policy::PolicyInfo;
use crate::service::{Protocol, ServiceInfo};
use crate::slices::EndpointSliceInfo;

/// The label the API server puts on every namespace, naming it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node_name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub ip: Option<Ipv4Addr>,
    /// Container ports of all containers (named ports resolve against these).
    pub ports: Vec<ContainerPort>,
    /// Running and not reported unready (a Ready=False condition).
    pub ready: bool,
    /// metadata.deletionTimestamp is set.
    pub terminating: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Namespace name -> labels.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// "namespace/name" -> pod.
    pub pods: BTreeMap<String, PodInfo>,
    /// "namespace/name" -> service.
    pub services: BTreeMap<String, ServiceInfo>,
    /// "namespace/name" of the slice -> slice (IPv4 slices only).
    pub endpoint_slices: BTreeMap<String, EndpointSliceInfo>,
    /// "namespace/name" -> network policy.
    pub policies: BTreeMap<String, PolicyInfo>,
    /// Every service's endpoints come from EndpointSlices (the Kubernetes source, where the
    /// endpoint-slice controller writes them); otherwise sluice computes them from selectors.
    pub endpoints_from_slices: bool,
    /// (namespace, label key, label value) -> pod keys: selectors look up instead of scanning.
    by_label: BTreeMap<(String, String, String), BTreeSet<String>>,
}

impl DesiredState {
    /// Builds the state; objects that are invalid or conflict with an earlier one are left out
    /// and described in the returned problems, so one bad object never takes the rest down.
    pub fn build<'a>(objects: impl IntoIterator<Item = &'a Object>) -> (Self, Vec<String>) {
        Self::build_with_previous(objects, &DesiredState::default())
    }

    /// Like `build`, but an invalid NetworkPolicy keeps its valid version from `previous`:
    /// dropping it would open what it closed, and failing everything would cut off pods it
    /// has nothing to do with.
    pub fn build_with_previous<'a>(
        objects: impl IntoIterator<Item = &'a Object>,
        previous: &DesiredState,
    ) -> (Self, Vec<String>) {
        let mut state = DesiredState::default();
        let mut problems = Vec::new();
        let mut nodes: Vec<NodeInfo> = Vec::new();
        for object in objects {
            match object {
                Object::Node(node) => match NodeInfo::from_node(node) {
                    Ok(info) => nodes.push(info),
                    Err(e) => problems.push(e),
                },
                Object::Namespace(ns) => {
                    if let Some(name) = ns.metadata.name.clone() {
                        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
                        // Set by the API server on every namespace; selectors rely on it.
                        labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
                        state.namespaces.insert(name, labels);
                    } else {
                        problems.push("Namespace: metadata.name is missing".into());
                    }
                }
                Object::Pod(pod) => match pod_info(pod) {
                    Ok(info) => {
                        state
                            .pods
                            .insert(format!("{}/{}", info.namespace, info.name), info);
                    }
                    Err(e) => problems.push(e),
                },
                Object::Service(svc) => match ServiceInfo::from_service(svc) {
                    Ok(info) => {
                        state.services.insert(info.key(), info);
                    }
                    Err(e) => problems.push(e),
                },
                Object::EndpointSlice(slice) => match EndpointSliceInfo::from_slice(slice) {
                    Ok(Some(info)) => {
                        state
                            .endpoint_slices
                            .insert(format!("{}/{}", info.namespace, info.name), info);
                    }
                    Ok(None) => {}
                    Err(e) => problems.push(e),
                },
                Object::NetworkPolicy(np) => match PolicyInfo::from_policy(np) {
                    Ok(info) => {
                        state.policies.insert(info.key(), info);
                    }
                    Err(e) => {
                        let namespace = np.metadata.namespace.as_deref().unwrap_or("default");
                        let key = np
                            .metadata
                            .name
                            .as_ref()
                            .map(|n| format!("{namespace}/{n}"));
                        let kept = key.and_then(|k| previous.policies.get(&k));
                        match kept {
                            Some(old) if !state.policies.contains_key(&old.key()) => {
                                problems.push(format!("{e}; keeping the previous version"));
                                state.policies.insert(old.key(), old.clone());
                            }
                            _ => problems.push(e),
                        }
                    }
                },
                Object::Other { .. } => {}
            }
        }
        for (key, pod) in &state.pods {
            for (k, v) in &pod.labels {
                state
                    .by_label
                    .entry((pod.namespace.clone(), k.clone(), v.clone()))
                    .or_default()
                    .insert(key.clone());
            }
        }
        // Deterministic winner on conflicts: the node whose name sorts first.
        nodes.sort();
        for node in nodes {
            if state.nodes.contains_key(&node.name) {
                problems.push(format!(
                    "Node {}: defined more than once; keeping the first",
                    node.name
                ));
                continue;
            }
            if let Some(other) = state.nodes.values().find(|o| {
                o.pod_cidr.contains(&node.pod_cidr.network())
                    || node.pod_cidr.contains(&o.pod_cidr.network())
            }) {
                problems.push(format!(
                    "Node {}: spec.podCIDR {} overlaps Node {}'s {}; ignoring Node {}",
                    node.name, node.pod_cidr, other.name, other.pod_cidr, node.name
                ));
                continue;
            }
            state.nodes.insert(node.name.clone(), node);
        }
        (state, problems)
    }
}

impl DesiredState {
    /// Pods of `namespace` whose labels match every pair of `selector` (an empty selector
    /// matches nothing: a service without selector has its endpoints managed elsewhere).
    /// Cost follows the rarest label of the selector, not the number of pods.
    pub fn selected_pods(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> Vec<&PodInfo> {
        let sets: Option<Vec<&BTreeSet<String>>> = selector
            .iter()
            .map(|(k, v)| {
                self.by_label
                    .get(&(namespace.to_string(), k.clone(), v.clone()))
            })
            .collect();
        let Some(sets) = sets else { return Vec::new() };
        let Some(smallest) = sets.iter().min_by_key(|s| s.len()) else {
            return Vec::new();
        };
        smallest
            .iter()
            .filter(|key| sets.iter().all(|s| s.contains(*key)))
            .filter_map(|key| self.pods.get(key))
            .collect()
    }
}

fn pod_info(pod: &k8s_openapi::api::core::v1::Pod) -> Result<PodInfo, String> {
    let name = pod
        .metadata
        .name
        .clone()
        .ok_or("Pod: metadata.name is missing")?;
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let ip = match pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
        None => None,
        Some(text) => Some(text.parse().map_err(|_| {
            format!("Pod {namespace}/{name}: status.podIP: {text:?} is not an IPv4 address")
        })?),
    };
    let mut ports = Vec::new();
    for (ci, c) in pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .enumerate()
    {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let field = format!("Pod {namespace}/{name}: spec.containers[{ci}].ports[{pi}]");
            if !(1..=65535).contains(&p.container_port) {
                return Err(format!(
                    "{field}.containerPort: {} is outside 1..=65535",
                    p.container_port
                ));
            }
            let protocol = Protocol::parse(p.protocol.as_deref())
                .map_err(|m| format!("{field}.protocol: {m}"))?;
            ports.push(ContainerPort {
                name: p.name.clone(),
                port: p.container_port as u16,
                protocol,
            });
        }
    }
    let status = pod.status.as_ref();
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    let reported_unready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status != "True"));
    Ok(PodInfo {
        ports,
        ready: running && !reported_unready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        namespace,
        name,
        ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse_manifests;

    fn node(name: &str, cidr: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nspec: {{podCIDR: {cidr}}}\nstatus: {{addresses: [{{type: InternalIP, address: {ip}}}]}}\n---\n"
        )
    }

    #[test]
    fn overlapping_pod_cidrs_keep_the_first_node_and_name_both() {
        let text =
            node("b", "10.0.0.0/16", "192.168.0.3") + &node("a", "10.0.1.0/24", "192.168.0.2");
        let objects = parse_manifests("t", &text).unwrap();
        let (state, problems) = DesiredState::build(&objects);
        assert_eq!(state.nodes.keys().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("Node b") && problems[0].contains("Node a's 10.0.1.0/24"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_bad_object_does_not_hide_the_good_ones() {
        let text = node("a", "10.0.0.0/24", "192.168.0.2")
            + "apiVersion: v1\nkind: Node\nmetadata: {name: broken}\nspec: {}\n---\n"
            + "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x, labels: {app: p}}\nstatus: {podIP: 10.0.0.7}\n";
        let objects = parse_manifests("t", &text).unwrap();
        let (state, problems) = DesiredState::build(&objects);
        assert_eq!(state.nodes.len(), 1);
        assert_eq!(state.pods["x/p"].ip, Some(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(
            problems,
            vec!["Node broken: spec.podCIDR is missing".to_string()]
        );
    }
}
