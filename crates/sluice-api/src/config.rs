//! The agent's configuration file (YAML), shared by the agent, the lab and `deploy/`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How packets for another node's pods leave this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    /// Kernel routes: each remote pod CIDR via that node's address.
    #[default]
    Native,
    /// A VXLAN device in external (collect_md) mode; the datapath picks the remote node.
    Vxlan,
}

impl RoutingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingMode::Native => "native",
            RoutingMode::Vxlan => "vxlan",
        }
    }
}

impl fmt::Display for RoutingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RoutingMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" => Ok(RoutingMode::Native),
            "vxlan" => Ok(RoutingMode::Vxlan),
            other => Err(format!(
                "routing mode {other:?} is not one of: native, vxlan"
            )),
        }
    }
}

/// Bytes a VXLAN-over-IPv4 header stack adds to every packet (outer IP 20 + UDP 8 + VXLAN 8 +
/// inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// Capacities of the datapath maps that grow with the cluster (entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct MapSizes {
    /// Service slots: one per frontend plus one per backend of each frontend.
    pub lb_slots: u32,
    /// Distinct service backends (address, port, protocol).
    pub backends: u32,
    /// Tracked connections (two entries per translated connection, one per policy-tracked
    /// direction; LRU when full).
    pub conntrack: u32,
    /// Policy entries of all local endpoints together.
    pub policy: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            lb_slots: 262_144,
            backends: 65_536,
            conntrack: 262_144,
            policy: 65_536,
        }
    }
}

/// Which trace events the datapath reports (drops and policy verdicts always are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MonitorAggregation {
    /// Every packet at every observation point.
    None,
    /// A flow's first packet, TCP SYN/FIN/RST, and again every 5 s of activity.
    #[default]
    Medium,
}

/// The Hubble-compatible flow observer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct HubbleConfig {
    pub enabled: bool,
    /// Unix socket of the `observer.Observer` gRPC service. Default `<stateDir>/hubble.sock`.
    pub socket: Option<PathBuf>,
    /// Also serve it on this TCP address (e.g. "0.0.0.0:4244"); "" = unix socket only.
    pub listen_address: String,
    /// Flows kept for `GetFlows` (Hubble's default: 4095).
    pub buffer_capacity: usize,
    pub monitor_aggregation: MonitorAggregation,
    /// Bytes of the datapath's event ring buffer (a power of two, 4096..=1 GiB).
    pub events_buffer_bytes: u32,
}

impl Default for HubbleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            socket: None,
            listen_address: String::new(),
            buffer_capacity: 4095,
            monitor_aggregation: MonitorAggregation::Medium,
            events_buffer_bytes: 4 << 20,
        }
    }
}

/// Where the agent reads desired state from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A directory of YAML manifests (the lab and single machines).
    #[default]
    Files,
    /// The Kubernetes API server (watches).
    Kubernetes,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Files => "files",
            SourceKind::Kubernetes => "kubernetes",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct KubernetesConfig {
    /// A kubeconfig file. Default: in-cluster service account when running in a pod, else
    /// `$KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
}

/// Which key-value store holds cluster-wide state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KvstoreKind {
    #[default]
    None,
    Etcd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct KvstoreConfig {
    #[serde(rename = "type")]
    pub kind: KvstoreKind,
    /// etcd client URLs, e.g. ["http://10.0.0.1:2379"].
    pub endpoints: Vec<String>,
    /// Key prefix; several clusters may share one etcd under different prefixes.
    pub prefix: String,
    /// Lifetime of this node's lease: its published entries vanish this long after it dies.
    pub lease_ttl_seconds: u32,
}

impl Default for KvstoreConfig {
    fn default() -> Self {
        Self {
            kind: KvstoreKind::None,
            endpoints: Vec::new(),
            prefix: "/sluice".into(),
            lease_ttl_seconds: 15,
        }
    }
}

/// `sluice-agent --config FILE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentConfig {
    /// This node's name; its Node object gives the pod CIDR and node address. May be left
    /// out when the agent gets `--node-name` (a DaemonSet shares one file among nodes).
    #[serde(default)]
    pub node_name: String,
    #[serde(default)]
    pub routing: RoutingMode,
    /// Where desired state comes from: `files` (the `manifests` directory) or `kubernetes`
    /// (the API server, see `kubernetes`).
    #[serde(default)]
    pub source: SourceKind,
    /// Directory of Kubernetes YAML manifests (the embedded desired-state source); required
    /// when `source` is `files`.
    #[serde(default)]
    pub manifests: Option<PathBuf>,
    /// How to reach the Kubernetes API server when `source` is `kubernetes`.
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    /// Cluster-wide datapath state (identities, endpoints, nodes): none (a shared identity
    /// directory, everything else from the source) or etcd.
    #[serde(default)]
    pub kvstore: KvstoreConfig,
    /// The agent API socket (created with mode 0600).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Where the agent keeps state that must survive restarts (IPAM, endpoints).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// bpffs directory for this node's pinned maps and links. Default `/sys/fs/bpf/sluice/<node>`.
    #[serde(default)]
    pub bpf_pin_path: Option<PathBuf>,
    /// UDP port of the VXLAN device.
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: u16,
    /// MTU of the node's underlay. Default: read from the device that holds the node address.
    #[serde(default)]
    pub underlay_mtu: Option<u32>,
    /// Capacities of the maps that grow with the cluster.
    #[serde(default)]
    pub maps: MapSizes,
    /// Where Prometheus `/metrics` is served ("" turns it off).
    #[serde(default = "default_metrics_address")]
    pub metrics_address: String,
    /// Translate service frontends at connect()/sendmsg() (cgroup v2 socket-LB).
    #[serde(default = "default_true")]
    pub socket_lb: bool,
    /// Entries of each Maglev table (NodePort/ExternalIP/LoadBalancer backend choice); a prime.
    #[serde(default = "default_maglev_size")]
    pub maglev_table_size: u32,
    /// The cgroup v2 directory socket-LB attaches to (it covers every process below it).
    /// Default: the root of the first cgroup2 mount.
    #[serde(default)]
    pub cgroup_path: Option<PathBuf>,
    /// Where security identities are allocated: a directory every agent of the cluster
    /// shares (one file per identity, claimed atomically). Default `<stateDir>/identities`,
    /// which suits a single node.
    #[serde(default)]
    pub identity_dir: Option<PathBuf>,
    /// Flow observability (Hubble's Observer API).
    #[serde(default)]
    pub hubble: HubbleConfig,
}

fn default_metrics_address() -> String {
    "127.0.0.1:9962".into()
}

fn default_maglev_size() -> u32 {
    16381
}

fn default_true() -> bool {
    true
}

fn default_socket() -> PathBuf {
    PathBuf::from(crate::DEFAULT_SOCKET)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/sluice")
}
fn default_vxlan_port() -> u16 {
    8472
}

impl AgentConfig {
    pub fn identity_dir(&self) -> PathBuf {
        self.identity_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("identities"))
    }

    pub fn hubble_socket(&self) -> PathBuf {
        self.hubble
            .socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join("hubble.sock"))
    }

    pub fn pin_path(&self) -> PathBuf {
        self.bpf_pin_path
            .clone()
            .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/sluice").join(&self.node_name))
    }
}
