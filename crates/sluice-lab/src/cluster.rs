//! The cluster file: a `Cluster` document followed by Kubernetes manifests. Parsing validates
//! everything and yields a [`Cluster`] that can be built without further checks.

mod file;
mod validate;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde_json::Value;
use sluice_api::config::{KvstoreKind, MonitorAggregation, RoutingMode, SourceKind};

pub use file::{API_VERSION, KIND};

/// The underlay when the cluster file names none.
pub const DEFAULT_UNDERLAY: &str = "192.168.50.0/24";

/// A validated cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub routing: RoutingMode,
    pub underlay: Ipv4Net,
    pub nodes: Vec<NodeDef>,
    /// Declared namespaces plus `default` (always present).
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<PodDef>,
    /// Other manifests (Service, NetworkPolicy) copied to the desired-state directory as-is.
    pub extra_manifests: Vec<Value>,
    /// Extra CNI plugins chained after `sluice-cni`.
    pub cni_plugins: Vec<Value>,
    pub monitor_aggregation: MonitorAggregation,
    /// Socket-LB in the agents (when the machine has cgroup v2).
    pub socket_lb: bool,
    pub events_buffer_bytes: u32,
    pub kvstore: KvstoreKind,
    pub source: SourceKind,
    pub maps: Option<sluice_api::config::MapSizes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDef {
    pub name: String,
    pub pod_cidr: Ipv4Net,
    /// Address on the underlay: node `i` gets the underlay's `i+1`-th address.
    pub ip: Ipv4Addr,
}

#[derive(Debug, Clone)]
pub struct PodDef {
    pub namespace: String,
    pub name: String,
    /// `spec.nodeName`, or the node the lab scheduled the pod on.
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub tcp_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
    /// The manifest with `spec.nodeName` filled in.
    pub manifest: Pod,
}

impl PodDef {
    pub fn key(&self) -> String {
        crate::names::pod_key(&self.namespace, &self.name)
    }
}

/// What is wrong with a cluster file: every problem found, each naming field and value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster file is not valid YAML: {0}")]
    Yaml(String),
    #[error("cluster file is invalid:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

impl ClusterError {
    /// The individual problems (one for a YAML error).
    pub fn problems(&self) -> Vec<String> {
        match self {
            ClusterError::Yaml(e) => vec![e.clone()],
            ClusterError::Invalid(p) => p.clone(),
        }
    }
}

impl Cluster {
    /// Parses and validates a cluster file.
    pub fn parse(text: &str) -> Result<Cluster, ClusterError> {
        // YAML 1.2 booleans only: a namespace called `y` or `no` stays a string.
        let options = serde_saphyr::options! { strict_booleans: true };
        let docs: Vec<Value> = serde_saphyr::from_multiple_with_options(text, options)
            .map_err(|e| ClusterError::Yaml(e.to_string()))?;
        validate::cluster(docs)
    }

    pub fn node(&self, name: &str) -> Option<&NodeDef> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn pod(&self, key: &str) -> Option<&PodDef> {
        self.pods.iter().find(|p| p.key() == key)
    }
}

#[cfg(test)]
mod tests;
