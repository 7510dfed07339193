//! The agent API: what `sluice-cni` and the `sluice` CLI say to `sluice-agent`.
//!
//! Transport: one request per connection on a unix socket (mode 0600). The client writes one
//! JSON line, the agent answers with one JSON line and closes. Blocking on purpose: the CNI
//! plugin is a short-lived process and must stay small.

pub mod config;

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Where the agent listens when nothing else is configured.
pub const DEFAULT_SOCKET: &str = "/run/sluice/agent.sock";

/// One pod attachment: the runtime's (container id, interface name) pair, as in CNI.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

/// The Kubernetes pod behind an attachment, when the runtime told us (CNI_ARGS K8S_POD_*).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Allocate an address, create the pod's veth pair, attach the datapath.
    Add {
        key: AttachmentKey,
        /// Path of the pod's network namespace (CNI_NETNS).
        netns: PathBuf,
        #[serde(default)]
        pod: Option<PodRef>,
    },
    /// Undo `Add`. Succeeds when nothing is known about the attachment.
    Del {
        key: AttachmentKey,
        #[serde(default)]
        netns: Option<PathBuf>,
    },
    /// Compare what exists with what `Add` made; answers with the differences.
    Check { key: AttachmentKey, netns: PathBuf },
    /// Remove every attachment not in `valid` (CNI GC).
    Gc { valid: Vec<AttachmentKey> },
    /// Agent health and counts.
    Status,
    /// Local endpoints.
    ListEndpoints,
    /// Service frontends and their backends as programmed in the datapath.
    ListServices,
    /// One local endpoint's identity and computed allow-lists; `pod` is "namespace/name"
    /// or the pod's address.
    GetEndpoint { pod: String },
    /// The NetworkPolicies of the desired state and the pods each selects.
    ListPolicies,
    /// Whether policy lets `from` reach `to` on `port`/`protocol`, and which rule decides.
    /// `from`/`to`: "namespace/name" of a pod, or an IPv4 address.
    PolicyTrace {
        from: String,
        to: String,
        protocol: String,
        port: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Added(Attachment),
    Deleted { existed: bool },
    Checked { problems: Vec<String> },
    Collected { removed: Vec<AttachmentKey> },
    Status(AgentStatus),
    Endpoints { endpoints: Vec<Endpoint> },
    Services { services: Vec<ServiceEntry> },
    EndpointDetail(EndpointDetail),
    Policies { policies: Vec<PolicySummary> },
    Trace(PolicyTrace),
    Error(ApiError),
}

/// A local endpoint as policy sees it (`sluice endpoint get`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointDetail {
    pub pod: Option<PodRef>,
    pub address: Ipv4Addr,
    /// Security identity (0: the pod is not in the desired state yet).
    pub identity: u32,
    pub labels: std::collections::BTreeMap<String, String>,
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    /// What may come in / go out, as programmed.
    pub ingress: Vec<AllowEntry>,
    pub egress: Vec<AllowEntry>,
}

/// One programmed allowance of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowEntry {
    /// "identity 301 (k8s:ns=x;app=a)", "10.0.0.0/8", "any", "host"
    pub peer: String,
    /// "TCP/80", "UDP/8000-8007", "TCP/any", "any"
    pub ports: String,
    /// The rule that allows it, e.g. "NetworkPolicy x/allow rule ingress[0]".
    pub rule: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySummary {
    /// "namespace/name"
    pub name: String,
    /// "Ingress", "Egress"
    pub types: Vec<String>,
    /// Pods it selects, "namespace/name".
    pub selects: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyTrace {
    pub allowed: bool,
    /// Human-readable reasoning, one step per line.
    pub explanation: String,
}

/// What `Add` made: enough for a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub key: AttachmentKey,
    /// The pod's address with its prefix length as configured on the interface (a /32).
    pub address: Ipv4Net,
    /// Next hop the pod routes through (link-local, answered by the host side).
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    pub host_ifname: String,
    pub host_mac: String,
    pub pod_mac: String,
    /// Routes installed in the pod, as (destination, gateway).
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub key: AttachmentKey,
    #[serde(default)]
    pub pod: Option<PodRef>,
    pub address: Ipv4Addr,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub pod_mac: String,
    /// Whether both tc programs are attached to the host-side device right now.
    pub datapath_attached: bool,
}

/// One service frontend as programmed (like a row of `cilium service list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// "10.96.0.10:80/TCP"
    pub frontend: String,
    /// "ClusterIP", ...
    pub kind: String,
    /// "namespace/name"; empty when the agent has not seen the object since it started.
    pub service: String,
    pub port_name: String,
    /// "10.0.1.5:8080"
    pub backends: Vec<String>,
    #[serde(default)]
    pub affinity_timeout: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub node: String,
    pub routing: String,
    pub pod_cidr: Option<Ipv4Net>,
    pub node_ip: Option<Ipv4Addr>,
    /// True once the datapath is loaded and the desired state has been read once.
    pub ready: bool,
    pub endpoints: usize,
    pub ips_allocated: usize,
    pub ips_free: usize,
    pub remote_nodes: Vec<RemoteNode>,
    pub source: String,
    pub uptime_seconds: u64,
    pub pin_path: PathBuf,
    /// Human-readable problems; empty when healthy.
    pub problems: Vec<String>,
    /// Socket-LB programs are attached (cgroup connect/sendmsg/recvmsg/getpeername).
    #[serde(default)]
    pub socket_lb: bool,
    /// Connection-tracking map pressure: entries in use and capacity.
    #[serde(default)]
    pub conntrack_entries: usize,
    #[serde(default)]
    pub conntrack_max: u32,
    /// Service frontends and distinct backends programmed.
    #[serde(default)]
    pub services: usize,
    #[serde(default)]
    pub backends: usize,
    /// Datapath packet counters, summed over CPUs.
    #[serde(default)]
    pub counters: Vec<Counter>,
    /// NetworkPolicies in the desired state.
    #[serde(default)]
    pub policies: usize,
    /// Policy entries of this node's endpoints, as programmed.
    #[serde(default)]
    pub policy_entries: usize,
    /// Addresses the ipcache knows (pods and nodes).
    #[serde(default)]
    pub ipcache_entries: usize,
    /// Flow events the datapath's ring buffer had no room for, since the map was created.
    #[serde(default)]
    pub flow_events_lost: u64,
    /// (entries, capacity) of the other maps that grow with the cluster, by map name.
    #[serde(default)]
    pub map_pressure: Vec<(String, u64, u64)>,
    /// Where the Hubble Observer API listens; None when the observer is off.
    #[serde(default)]
    pub hubble_socket: Option<PathBuf>,
    /// The source reached its origin (API server, manifest directory) on its latest read.
    #[serde(default)]
    pub source_connected: bool,
    /// When the source last delivered a complete, connected snapshot (Unix seconds).
    #[serde(default)]
    pub last_sync_unix: Option<u64>,
    /// Pods in the desired state (all nodes).
    #[serde(default)]
    pub pods: usize,
    /// Security identities this agent has resolved.
    #[serde(default)]
    pub identities: usize,
    /// The etcd session; None when there is no kvstore.
    #[serde(default)]
    pub kvstore: Option<KvstoreStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvstoreStatus {
    pub endpoints: String,
    pub connected: bool,
    pub last_error: Option<String>,
    /// Keys this node publishes (its node record and endpoints).
    pub published: usize,
    /// Keys under the prefix that were ignored as corrupt or foreign.
    pub ignored: usize,
    pub remote_nodes: usize,
    pub remote_endpoints: usize,
}

/// One datapath counter: where (observation point), what happened, and why (drops).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// "from-endpoint", "to-endpoint", "from-overlay", "to-overlay".
    pub point: String,
    /// "to-stack", "redirect", "encap", "drop".
    pub outcome: String,
    /// Drop reason name, empty unless dropped.
    #[serde(default)]
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteNode {
    pub name: String,
    pub address: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request names something invalid; nothing was changed.
    InvalidArgument,
    /// `Add` for an attachment that already exists.
    AlreadyExists,
    /// No free address left in the node's pod CIDR.
    Exhausted,
    /// The pod's network namespace or interface does not exist.
    NotFound,
    /// The agent is up but not ready (datapath not loaded, node unknown).
    Unavailable,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Self {
            kind,
            msg: msg.into(),
            details: String::new(),
        }
    }
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach sluice-agent at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to sluice-agent at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sluice-agent at {path} sent an unreadable answer: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Agent(#[from] ApiError),
}

/// Blocking client; one connection per call.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            timeout: Duration::from_secs(30),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request; an agent-side error comes back as `ClientError::Agent`.
    pub fn call(&self, request: &Request) -> Result<Response, ClientError> {
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let mut stream =
            UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
                path: self.path.clone(),
                source,
            })?;
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let mut line = serde_json::to_vec(request).expect("requests always serialize");
        line.push(b'\n');
        stream.write_all(&line).map_err(io)?;
        let mut answer = String::new();
        BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
        let response: Response =
            serde_json::from_str(&answer).map_err(|source| ClientError::Decode {
                path: self.path.clone(),
                source,
            })?;
        match response {
            Response::Error(e) => Err(ClientError::Agent(e)),
            other => Ok(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_json() {
        let req = Request::Add {
            key: AttachmentKey {
                container_id: "abc".into(),
                ifname: "eth0".into(),
            },
            netns: "/run/netns/x".into(),
            pod: Some(PodRef {
                namespace: "default".into(),
                name: "a".into(),
            }),
        };
        let text = serde_json::to_string(&req).unwrap();
        assert!(text.contains(r#""op":"add""#), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
    }

    #[test]
    fn errors_carry_their_kind() {
        let resp = Response::Error(ApiError::new(
            ErrorKind::Exhausted,
            "pod CIDR 10.0.0.0/30 is full",
        ));
        let text = serde_json::to_string(&resp).unwrap();
        assert!(text.contains(r#""kind":"exhausted""#), "{text}");
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), resp);
    }
}
