//! `lab.json` and the layout of a lab's state directory.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_api::config::RoutingMode;

use crate::error::{io, LabError, Result};
use crate::names;

/// Everything `down`, `status` and `exec` need to know about a lab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabState {
    pub name: String,
    pub routing: RoutingMode,
    pub underlay: Ipv4Net,
    pub bin_dir: PathBuf,
    /// The cgroup v2 mount the lab's cgroups live under.
    pub cgroup_root: Option<PathBuf>,
    /// True when the lab mounted `cgroup_root` itself (under its state dir).
    #[serde(default)]
    pub cgroup_mounted: bool,
    pub underlay_netns: String,
    pub nodes: Vec<NodeState>,
    pub pods: Vec<PodState>,
    /// Extra CNI plugins chained after sluice-cni.
    #[serde(default)]
    pub cni_plugins: Vec<Value>,
    #[serde(default)]
    pub monitor_aggregation: sluice_api::config::MonitorAggregation,
    #[serde(default = "yes")]
    pub socket_lb: bool,
    #[serde(default = "four_mib")]
    pub events_buffer_bytes: u32,
    #[serde(default)]
    pub kvstore: sluice_api::config::KvstoreKind,
    /// The lab's etcd (kvstore: etcd), running in the underlay namespace.
    #[serde(default)]
    pub etcd_pid: Option<u32>,
    /// Where agents read desired state: the directory, or the stand-in API server serving it.
    #[serde(default)]
    pub source: sluice_api::config::SourceKind,
    #[serde(default)]
    pub apiserver_pid: Option<u32>,
    /// The agents' map capacities when the cluster file set them.
    #[serde(default)]
    pub maps: Option<sluice_api::config::MapSizes>,
}

fn four_mib() -> u32 {
    4 << 20
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    pub name: String,
    pub pod_cidr: Ipv4Net,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub agent_pid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub tcp_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
    /// Set before CNI ADD runs, so `down` can DEL a half-added pod.
    pub container_id: Option<String>,
    pub ip: Option<Ipv4Addr>,
    /// The cached CNI ADD result (given back to DEL).
    pub cni_result: Option<Value>,
    pub server_pid: Option<u32>,
}

impl PodState {
    pub fn key(&self) -> String {
        names::pod_key(&self.namespace, &self.name)
    }
}

impl LabState {
    pub fn node(&self, name: &str) -> Result<&NodeState> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| LabError::UnknownNode {
                lab: self.name.clone(),
                node: name.to_string(),
                known: self.nodes.iter().map(|n| n.name.clone()).collect(),
            })
    }

    pub fn pod(&self, key: &str) -> Result<&PodState> {
        let key = if key.contains('/') {
            key.to_string()
        } else {
            names::pod_key("default", key)
        };
        self.pods
            .iter()
            .find(|p| p.key() == key)
            .ok_or_else(|| LabError::UnknownPod {
                lab: self.name.clone(),
                pod: key,
                known: self.pods.iter().map(PodState::key).collect(),
            })
    }

    pub fn load(paths: &LabPaths) -> Result<LabState> {
        let file = paths.lab_json();
        let bytes = std::fs::read(&file).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                LabError::NotFound {
                    name: paths.name.clone(),
                    path: file.clone(),
                }
            } else {
                LabError::Io {
                    what: format!("read {}", file.display()),
                    source: e,
                }
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|e| LabError::State {
            what: file.display().to_string(),
            reason: e.to_string(),
        })
    }

    pub fn save(&self, paths: &LabPaths) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).expect("lab state always serializes");
        write_atomic(&paths.lab_json(), &text)
    }
}

/// Paths inside `/run/sluice-lab/<lab>/`.
#[derive(Debug, Clone)]
pub struct LabPaths {
    pub name: String,
    pub root: PathBuf,
}

impl LabPaths {
    pub fn new(name: &str) -> LabPaths {
        LabPaths {
            name: name.to_string(),
            root: names::state_dir(name),
        }
    }
    pub fn lab_json(&self) -> PathBuf {
        self.root.join("lab.json")
    }
    /// The identity allocator every agent of the lab shares.
    pub fn identities(&self) -> PathBuf {
        self.root.join("identities")
    }

    pub fn manifests(&self) -> PathBuf {
        self.root.join("manifests")
    }
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node)
    }
    pub fn agent_config(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.yaml")
    }
    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.log")
    }
    pub fn agent_state(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("state")
    }
    pub fn agent_socket(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.sock")
    }
    pub fn conflist(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("sluice.conflist")
    }
    pub fn pod_dir(&self, namespace: &str, pod: &str) -> PathBuf {
        self.root.join("pods").join(format!("{namespace}.{pod}"))
    }
    pub fn serve_log(&self, namespace: &str, pod: &str) -> PathBuf {
        self.pod_dir(namespace, pod).join("serve.log")
    }
    pub fn cni_result(&self, namespace: &str, pod: &str) -> PathBuf {
        self.pod_dir(namespace, pod).join("cni-result.json")
    }
    /// Where the lab mounts cgroup2 when the machine has none mounted.
    pub fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }

    pub fn etcd_dir(&self) -> PathBuf {
        self.root.join("etcd")
    }

    pub fn cgroup_mount(&self) -> PathBuf {
        self.root.join("cgroup2")
    }
}

/// Writes through a hidden temporary file and a rename, so a watcher never reads half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, bytes).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!(
        "rename {} to {}",
        tmp.display(),
        path.display()
    )))
}

/// Names of the labs that have a state directory.
pub fn list_labs() -> Result<Vec<String>> {
    let mut out = Vec::new();
    match std::fs::read_dir(names::STATE_ROOT) {
        Ok(dir) => {
            for e in dir.flatten() {
                if e.path().is_dir() {
                    out.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(LabError::Io {
                what: format!("read {}", names::STATE_ROOT),
                source: e,
            })
        }
    }
    out.sort();
    Ok(out)
}

/// `name`, or the only lab when none is given.
pub fn resolve(name: Option<&str>) -> Result<String> {
    if let Some(n) = name {
        return Ok(n.to_string());
    }
    let labs = list_labs()?;
    match labs.len() {
        0 => Err(LabError::NoLabs),
        1 => Ok(labs.into_iter().next().unwrap_or_default()),
        _ => Err(LabError::Ambiguous(labs)),
    }
}
