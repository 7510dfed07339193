//! The cluster file's own document (`kind: Cluster`) as written by people. Strings stay strings
//! here so validation can quote exactly what was written.

use serde::Deserialize;
use serde_json::{Map, Value};

pub const API_VERSION: &str = "sluice.dev/v1alpha1";
pub const KIND: &str = "Cluster";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterDoc {
    pub api_version: String,
    /// Checked before typed parsing (the first document must be the Cluster).
    #[allow(dead_code)]
    pub kind: String,
    pub metadata: ClusterMeta,
    pub spec: ClusterSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterMeta {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSpec {
    /// `native` or `vxlan`; default `native`.
    #[serde(default)]
    pub routing: Option<String>,
    /// The network joining the nodes; default [`DEFAULT_UNDERLAY`](super::DEFAULT_UNDERLAY).
    #[serde(default)]
    pub underlay: Option<String>,
    pub nodes: Vec<NodeDoc>,
    #[serde(default)]
    pub cni: Option<CniDoc>,
    /// Which trace events the datapath reports: `medium` (default) or `none` (every packet).
    #[serde(default)]
    pub monitor_aggregation: Option<String>,
    /// Socket-LB in the agents (default true; needs a cgroup v2 mount).
    #[serde(default)]
    pub socket_lb: Option<bool>,
    /// Bytes of each agent's flow-event ring buffer (default 4 MiB).
    #[serde(default)]
    pub events_buffer_bytes: Option<u32>,
    /// Cluster-wide state: `none` (default: a shared identity directory) or `etcd` (the lab
    /// runs one etcd on the underlay and every agent uses it).
    #[serde(default)]
    pub kvstore: Option<String>,
    /// Where agents read desired state: `files` (default: the lab's manifest directory) or
    /// `kubernetes` (a stand-in API server serving that directory, with EndpointSlices).
    #[serde(default)]
    pub source: Option<String>,
    /// Capacities of each agent's maps (as in the agent's `maps`); default small ones, since a
    /// lab runs several agents on one machine.
    #[serde(default)]
    pub maps: Option<sluice_api::config::MapSizes>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDoc {
    pub name: String,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniDoc {
    /// Extra plugins chained after `sluice-cni`, as CNI plugin configurations.
    #[serde(default)]
    pub plugins: Vec<Map<String, Value>>,
}
