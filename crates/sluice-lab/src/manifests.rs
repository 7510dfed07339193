//! The lab's desired-state directory (`manifests/`): what a Kubernetes API server would hold.
//! Every agent of the lab watches it. Files are replaced atomically.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    HostIP, Namespace, Node, NodeAddress, NodeSpec, NodeStatus, Pod, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use crate::cluster::NodeDef;
use crate::error::{io, Result};
use crate::state::write_atomic;

pub fn node_file(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("node-{node}.yaml"))
}

pub fn namespace_file(dir: &Path, ns: &str) -> PathBuf {
    dir.join(format!("namespace-{ns}.yaml"))
}

pub fn pod_file(dir: &Path, ns: &str, pod: &str) -> PathBuf {
    dir.join(format!("pod-{ns}-{pod}.yaml"))
}

pub fn extra_file(dir: &Path, index: usize, kind: &str) -> PathBuf {
    dir.join(format!("{}-{index}.yaml", kind.to_ascii_lowercase()))
}

fn write_yaml<T: Serialize>(path: &Path, object: &T) -> Result<()> {
    let text = serde_saphyr::to_string(object).map_err(|e| {
        crate::LabError::Invalid(format!("cannot write {} as YAML: {e}", path.display()))
    })?;
    write_atomic(path, text.as_bytes())
}

pub fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))
}

/// The Node object an agent learns its pod CIDR and address from.
pub fn node_object(node: &NodeDef) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/hostname".to_string(),
                node.name.clone(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(node.pod_cidr.to_string()),
            pod_cidrs: Some(vec![node.pod_cidr.to_string()]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: node.ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: node.name.clone(),
                },
            ]),
            ..Default::default()
        }),
    }
}

pub fn write_node(dir: &Path, node: &NodeDef) -> Result<()> {
    write_yaml(&node_file(dir, &node.name), &node_object(node))
}

pub fn write_namespace(dir: &Path, ns: &Namespace) -> Result<()> {
    let name = ns.metadata.name.as_deref().unwrap_or_default();
    write_yaml(&namespace_file(dir, name), ns)
}

/// The pod as scheduled (spec.nodeName set), before it has an address.
pub fn write_pod(dir: &Path, pod: &Pod) -> Result<()> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    write_yaml(&pod_file(dir, ns, name), pod)
}

/// Replaces a pod's labels in its manifest (what `kubectl label --overwrite` would do).
pub fn set_pod_labels(
    dir: &Path,
    ns: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<()> {
    let path = pod_file(dir, ns, name);
    let text = std::fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))?;
    let mut pod: Pod = serde_saphyr::from_str(&text)
        .map_err(|e| crate::LabError::Invalid(format!("{}: {e}", path.display())))?;
    pod.metadata.labels = Some(labels.clone());
    write_pod(dir, &pod)
}

/// The pod after its sandbox is up, as a kubelet reports it.
pub fn write_pod_running(dir: &Path, pod: &Pod, ip: Ipv4Addr, host_ip: Ipv4Addr) -> Result<()> {
    let mut pod = pod.clone();
    pod.status = Some(running_status(ip, host_ip));
    write_pod(dir, &pod)
}

pub fn running_status(ip: Ipv4Addr, host_ip: Ipv4Addr) -> PodStatus {
    PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some(ip.to_string()),
        pod_ips: Some(vec![PodIP { ip: ip.to_string() }]),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: host_ip.to_string(),
        }]),
        ..Default::default()
    }
}

pub fn write_value(path: &Path, value: &serde_json::Value) -> Result<()> {
    write_yaml(path, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_objects_carry_cidr_and_internal_ip() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeDef {
            name: "node-a".into(),
            pod_cidr: "10.10.0.0/24".parse().unwrap(),
            ip: "192.168.50.1".parse().unwrap(),
        };
        write_node(dir.path(), &node).unwrap();
        let text = std::fs::read_to_string(node_file(dir.path(), "node-a")).unwrap();
        let back: Node = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(back.spec.unwrap().pod_cidr.as_deref(), Some("10.10.0.0/24"));
        let addrs = back.status.unwrap().addresses.unwrap();
        assert!(
            addrs
                .iter()
                .any(|a| a.type_ == "InternalIP" && a.address == "192.168.50.1"),
            "{text}"
        );
        assert!(text.contains("kind: Node"), "{text}");
    }

    #[test]
    fn running_pods_have_pod_ip_and_phase() {
        let dir = tempfile::tempdir().unwrap();
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("a".into()),
                namespace: Some("x".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        write_pod_running(
            dir.path(),
            &pod,
            "10.10.0.5".parse().unwrap(),
            "192.168.50.1".parse().unwrap(),
        )
        .unwrap();
        let back: Pod = serde_saphyr::from_str(
            &std::fs::read_to_string(pod_file(dir.path(), "x", "a")).unwrap(),
        )
        .unwrap();
        let status = back.status.unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.10.0.5"));
        assert_eq!(status.pod_ips.unwrap()[0].ip, "10.10.0.5");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
