//! The agent's state and the single thread that owns it. API requests and desired-state
//! snapshots arrive as commands; one command runs at a time, so there are no locks and a
//! reconcile never interleaves with a CNI request.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::Instant;

use sluice_api::config::{AgentConfig, RoutingMode};
use sluice_api::{AgentStatus, ApiError, AttachmentKey, Counter, ErrorKind, Request, Response};
use sluice_datapath::{abi, Datapath};
use sluice_model::{DesiredState, NodeInfo};
use sluice_netdev::NetHandle;
use tokio::sync::oneshot;

use crate::source::Snapshot;
use crate::store::{Record, Store};

/// Snapshots slower than this log where their time went.
const SLOW_SNAPSHOT: std::time::Duration = std::time::Duration::from_millis(20);

pub enum Command {
    Api(Request, oneshot::Sender<Response>),
    Snapshot(Snapshot),
    /// What the other nodes published in the kvstore.
    Cluster(crate::kvstore::ClusterView),
    Shutdown(oneshot::Sender<()>),
}

/// The node this agent runs on, once its Node object has been seen.
#[derive(Debug, Clone)]
pub struct SelfNode {
    pub info: NodeInfo,
    pub underlay_mtu: u32,
}

pub struct Core {
    pub(crate) cfg: AgentConfig,
    pub(crate) source: String,
    /// The source reached its origin on its latest snapshot, and when it last did.
    pub(crate) source_connected: bool,
    pub(crate) last_sync: Option<std::time::SystemTime>,
    /// The etcd session, when `kvstore.type` is etcd, and what it last saw.
    pub(crate) kvstore: Option<crate::kvstore::Kvstore>,
    pub(crate) cluster: Option<crate::kvstore::ClusterView>,
    pub(crate) dp: Datapath,
    pub(crate) net: NetHandle,
    pub(crate) store: Store,
    pub(crate) records: BTreeMap<AttachmentKey, Record>,
    /// Addresses whose store files are damaged: never handed out.
    pub(crate) reserved: BTreeMap<Ipv4Addr, String>,
    pub(crate) last_allocated: Option<Ipv4Addr>,
    pub(crate) node: Option<SelfNode>,
    /// Remote nodes as last programmed (routes, tunnel entries).
    pub(crate) remote: BTreeMap<String, NodeInfo>,
    /// Whether stale routes/tunnels from a previous run have been swept.
    pub(crate) swept: bool,
    pub(crate) desired: DesiredState,
    /// `desired` was built from a snapshot (later ones may update it by their change list).
    pub(crate) desired_built: bool,
    pub(crate) source_problems: Vec<String>,
    /// Problems found at start (damaged state, re-attach failures); kept for the process' life.
    pub(crate) state_problems: Vec<String>,
    /// Problems of the latest node reconcile (replaced each time).
    pub(crate) node_problems: Vec<String>,
    /// Set when no device holds the node address (nothing to attach from_netdev to).
    pub(crate) uplink_problem: Option<String>,
    /// Problems of the latest service reconcile (replaced each time).
    pub(crate) service_problems: Vec<String>,
    pub(crate) started: Instant,
    pub(crate) lb: crate::services::LbState,
    /// The service maps match `desired` (so the next change may be applied incrementally).
    pub(crate) services_synced: bool,
    /// Kept so the programs stay loaded while the process runs (the links are pinned anyway).
    pub(crate) sock_lb: Option<sluice_datapath::socklb::SockLb>,
    pub(crate) policy: crate::policy::PolicyState,
    pub(crate) kept: crate::kept_policies::KeptPolicies,
    /// Problems of the latest policy reconcile (replaced each time).
    pub(crate) policy_problems: Vec<String>,
    /// Who is who, for the flow observer (None when it is off).
    pub(crate) flow_directory: Option<crate::observe::SharedDirectory>,
    pub(crate) netns_cookies: std::collections::HashMap<std::path::PathBuf, u64>,
    pub(crate) host_netns_cookie: Option<u64>,
    pub(crate) metrics: crate::metrics::AgentMetrics,
}

impl Core {
    pub fn run(mut self, rx: mpsc::Receiver<Command>) {
        for command in rx {
            match command {
                Command::Api(request, reply) => {
                    let span = tracing::debug_span!("request", op = request_name(&request));
                    let _enter = span.enter();
                    let response = match self.handle(request) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(error = %e.msg, details = %e.details, "request failed");
                            Response::Error(e)
                        }
                    };
                    let _ = reply.send(response);
                }
                Command::Snapshot(snapshot) => {
                    let span = tracing::info_span!("reconcile");
                    let _enter = span.enter();
                    self.apply_snapshot(snapshot);
                }
                Command::Cluster(view) => {
                    let span = tracing::info_span!("reconcile", cause = "kvstore");
                    let _enter = span.enter();
                    self.cluster = Some(view);
                    self.reconcile_policy();
                }
                Command::Shutdown(done) => {
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    fn handle(&mut self, request: Request) -> Result<Response, ApiError> {
        match request {
            Request::Add { key, netns, pod } => {
                let added = self.add(key, netns, pod);
                // Identity and policy before the runtime starts the pod's processes.
                self.reconcile_policy();
                self.refresh_flow_directory();
                added.map(Response::Added)
            }
            Request::Del { key, .. } => {
                let deleted = self.del(&key);
                self.reconcile_policy();
                self.refresh_flow_directory();
                deleted.map(|existed| Response::Deleted { existed })
            }
            Request::Check { key, netns } => self
                .check(&key, &netns)
                .map(|problems| Response::Checked { problems }),
            Request::Gc { valid } => self
                .gc(&valid)
                .map(|removed| Response::Collected { removed }),
            Request::Status => Ok(Response::Status(self.status())),
            Request::ListEndpoints => Ok(Response::Endpoints {
                endpoints: self.endpoint_list(),
            }),
            Request::ListServices => Ok(Response::Services {
                services: self.service_list(),
            }),
            Request::GetEndpoint { pod } => {
                self.endpoint_detail(&pod).map(Response::EndpointDetail)
            }
            Request::ListPolicies => Ok(Response::Policies {
                policies: self.policy_list(),
            }),
            Request::PolicyTrace {
                from,
                to,
                protocol,
                port,
            } => self
                .policy_trace(&from, &to, &protocol, port)
                .map(Response::Trace),
        }
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) {
        let started = Instant::now();
        let mut steps: Vec<(&str, std::time::Duration)> = Vec::new();
        let mut step = |name, since: &mut Instant| {
            steps.push((name, since.elapsed()));
            *since = Instant::now();
        };
        let mut at = Instant::now();
        // An invalid policy keeps its last valid version (kept on disk, so across restarts
        // too): never fail open or closed on a typo.
        let previous = self.kept.as_previous();
        // With the source's change list only the changed objects are rebuilt, and `old` holds
        // just what they were (all the service reconcile looks at then); without one (the
        // first snapshot, a relist) everything is.
        let changed = snapshot.changed;
        let (old, mut problems) = match changed.as_ref().filter(|_| self.desired_built) {
            Some(changed) => self.desired.update(&snapshot.objects, changed, &previous),
            None => {
                let (mut desired, problems) =
                    DesiredState::build_with_previous(&snapshot.objects, &previous);
                desired.endpoints_from_slices =
                    self.cfg.source == sluice_api::config::SourceKind::Kubernetes;
                self.desired_built = true;
                (std::mem::replace(&mut self.desired, desired), problems)
            }
        };
        step("build", &mut at);
        if let Err(e) = self.kept.update(&snapshot.objects, &self.desired) {
            problems.push(format!("keeping the last valid policies: {e}"));
        }
        step("kept-policies", &mut at);
        self.source_connected = snapshot.connected;
        if snapshot.connected {
            self.last_sync = Some(std::time::SystemTime::now());
        }
        problems.extend(snapshot.problems);
        for p in &problems {
            tracing::warn!(problem = %p, "desired state");
        }
        self.source_problems = problems;
        self.reconcile_nodes();
        step("nodes", &mut at);
        self.reconcile_services(self.services_synced.then_some(&old), changed.as_ref());
        step("services", &mut at);
        self.reconcile_policy();
        step("policy", &mut at);
        self.refresh_flow_directory();
        step("flow-directory", &mut at);
        // Freeing tens of thousands of objects takes milliseconds nobody needs to wait for.
        std::thread::spawn(move || drop(old));
        step("drop-old", &mut at);
        let total = started.elapsed();
        self.metrics.observe_reconcile("snapshot", total);
        // Where a slow snapshot's time went, for whoever wonders why a change took long.
        if total > SLOW_SNAPSHOT {
            let parts: Vec<String> = steps
                .iter()
                .map(|(name, d)| format!("{name} {:.1}", d.as_secs_f64() * 1e3))
                .collect();
            tracing::info!(
                objects = snapshot.objects.len(),
                ms = total.as_secs_f64() * 1e3,
                steps = %parts.join(", "),
                "slow snapshot"
            );
        }
    }

    /// `old`: the state the maps were last reconciled to, when they were.
    fn reconcile_services(
        &mut self,
        old: Option<&DesiredState>,
        changed: Option<&sluice_model::ChangedObjects>,
    ) {
        // NodePorts and Local traffic policies need to know which node this is.
        let Some(node) = &self.node else { return };
        let view = sluice_model::lb::NodeView {
            name: &node.info.name,
            address: node.info.address,
        };
        let started = Instant::now();
        self.service_problems.clear();
        let result = self
            .lb
            .reconcile(&mut self.dp, old, &self.desired, view, changed);
        self.metrics
            .observe_reconcile("services", started.elapsed());
        // A failed or partial pass leaves the maps behind `desired`: the next one starts over
        // (and so retries what did not fit once room is made).
        self.services_synced = result.as_ref().is_ok_and(|r| r.skipped.is_empty());
        match result {
            Ok(r) => {
                if r.added + r.removed + r.changed > 0 {
                    tracing::info!(
                        added = r.added,
                        removed = r.removed,
                        changed = r.changed,
                        micros = started.elapsed().as_micros() as u64,
                        "service frontends reconciled"
                    );
                }
                for why in &r.skipped {
                    tracing::error!("{why}");
                }
                self.service_problems.extend(r.skipped);
            }
            Err(e) => {
                tracing::error!(error = %e, "programming services");
                self.service_problems
                    .push(format!("programming services: {e}"));
            }
        }
    }

    fn service_list(&self) -> Vec<sluice_api::ServiceEntry> {
        self.lb
            .list()
            .into_iter()
            .map(|(f, origin, entry)| sluice_api::ServiceEntry {
                frontend: format!("{}:{}/{}", f.address, f.port, f.protocol),
                kind: origin.map(|o| o.kind.to_string()).unwrap_or_default(),
                service: origin.map(|o| o.service.clone()).unwrap_or_default(),
                port_name: origin.map(|o| o.port_name.clone()).unwrap_or_default(),
                backends: entry
                    .backends
                    .iter()
                    .map(|(a, p)| format!("{a}:{p}"))
                    .collect(),
                affinity_timeout: entry.affinity_timeout,
            })
            .collect()
    }

    pub(crate) fn ready(&self) -> bool {
        self.node.is_some()
    }

    pub(crate) fn require_ready(&self) -> Result<&SelfNode, ApiError> {
        self.node.as_ref().ok_or_else(|| {
            ApiError::new(
                ErrorKind::Unavailable,
                format!(
                    "node {:?} is not in the desired state yet (no Node object with that name in {})",
                    self.cfg.node_name, self.source
                ),
            )
        })
    }

    pub(crate) fn pod_mtu(&self, node: &SelfNode) -> u32 {
        match self.cfg.routing {
            RoutingMode::Native => node.underlay_mtu,
            RoutingMode::Vxlan => node.underlay_mtu - sluice_api::config::VXLAN_OVERHEAD,
        }
    }

    fn status(&self) -> AgentStatus {
        let pod_cidr = self.node.as_ref().map(|n| n.info.pod_cidr);
        let capacity = pod_cidr.map(sluice_model::ipam::capacity).unwrap_or(0);
        let in_use = self.records.len() + self.reserved.len();
        let mut problems = self.source_problems.clone();
        problems.extend(self.state_problems.iter().cloned());
        problems.extend(self.node_problems.iter().cloned());
        problems.extend(self.uplink_problem.iter().cloned());
        problems.extend(self.service_problems.iter().cloned());
        problems.extend(self.policy_problems.iter().cloned());
        if let Some(kv) = &self.kvstore {
            let s = kv.status();
            if !s.connected {
                problems.push(format!(
                    "kvstore: etcd at {} unreachable ({}); keeping the last cluster state",
                    s.endpoints,
                    s.last_error.as_deref().unwrap_or("connecting")
                ));
            }
        }
        if self.node.is_none() {
            problems.push(format!(
                "Node {:?} not found in {}",
                self.cfg.node_name, self.source
            ));
        }
        let counters = match self.dp.metrics() {
            Ok(m) => m.into_iter().map(|(k, v)| counter(k, v)).collect(),
            Err(e) => {
                problems.push(format!("reading datapath counters: {e}"));
                Vec::new()
            }
        };
        AgentStatus {
            node: self.cfg.node_name.clone(),
            routing: self.cfg.routing.to_string(),
            pod_cidr,
            node_ip: self.node.as_ref().map(|n| n.info.address),
            ready: self.ready(),
            endpoints: self.records.len(),
            ips_allocated: in_use,
            ips_free: capacity.saturating_sub(in_use),
            remote_nodes: self
                .remote
                .values()
                .map(|n| sluice_api::RemoteNode {
                    name: n.name.clone(),
                    address: n.address,
                    pod_cidr: n.pod_cidr,
                })
                .collect(),
            source: self.source.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            pin_path: self.dp.pin_path().to_path_buf(),
            problems,
            socket_lb: self.sock_lb.is_some()
                && sluice_datapath::socklb::SockLb::is_attached(self.dp.pin_path()),
            conntrack_entries: self.dp.lb_ref().conntrack_len(),
            conntrack_max: sluice_datapath::lb::map_capacity(
                &self.dp.pin_path().join(sluice_datapath::lb::MAP_CT),
            ),
            services: self.lb.frontends(),
            backends: self.lb.backend_count(),
            counters,
            policies: self.desired.policies.len(),
            policy_entries: self.policy.counts().0,
            ipcache_entries: self.policy.counts().1,
            flow_events_lost: self.dp.events_lost().unwrap_or(0),
            map_pressure: {
                let (slots, slot_max) = self.lb.slot_pressure();
                vec![
                    ("lb4_services".into(), slots as u64, slot_max as u64),
                    (
                        "policy".into(),
                        self.policy.counts().0 as u64,
                        self.cfg.maps.policy as u64,
                    ),
                ]
            },
            hubble_socket: self.cfg.hubble.enabled.then(|| self.cfg.hubble_socket()),
            source_connected: self.source_connected,
            last_sync_unix: self.last_sync.and_then(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs())
            }),
            pods: self.desired.pods.len(),
            identities: self.policy.identity_count(),
            kvstore: self.kvstore.as_ref().map(|kv| kv.status()),
        }
    }
}

fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Add { .. } => "add",
        Request::Del { .. } => "del",
        Request::Check { .. } => "check",
        Request::Gc { .. } => "gc",
        Request::Status => "status",
        Request::ListEndpoints => "list_endpoints",
        Request::ListServices => "list_services",
        Request::GetEndpoint { .. } => "get_endpoint",
        Request::ListPolicies => "list_policies",
        Request::PolicyTrace { .. } => "policy_trace",
    }
}

fn counter(k: abi::MetricsKey, v: abi::MetricsValue) -> Counter {
    let point = match k.point {
        abi::POINT_FROM_ENDPOINT => "from-endpoint",
        abi::POINT_TO_ENDPOINT => "to-endpoint",
        abi::POINT_FROM_OVERLAY => "from-overlay",
        abi::POINT_TO_OVERLAY => "to-overlay",
        abi::POINT_FROM_NETDEV => "from-netdev",
        _ => "unknown",
    };
    let outcome = match k.outcome {
        abi::OUTCOME_TO_STACK => "to-stack",
        abi::OUTCOME_REDIRECT => "redirect",
        abi::OUTCOME_ENCAP => "encap",
        abi::OUTCOME_DROP => "drop",
        abi::OUTCOME_DNAT => "service-dnat",
        abi::OUTCOME_REVNAT => "service-revnat",
        abi::OUTCOME_ROUTED => "routed",
        abi::OUTCOME_REJECT => "reject",
        abi::OUTCOME_POLICY_ALLOWED => "policy-allowed",
        _ => "unknown",
    };
    let reason = match k.reason {
        0 => String::new(),
        abi::DROP_INVALID_SOURCE_IP => "invalid-source-ip".into(),
        abi::DROP_INVALID_PACKET => "invalid-packet".into(),
        abi::DROP_NO_TUNNEL_ENDPOINT => "no-tunnel-endpoint".into(),
        abi::DROP_NO_SERVICE_BACKEND => "service-backend-not-found".into(),
        abi::DROP_CT_INSERT_FAILED => "ct-map-insertion-failed".into(),
        abi::DROP_FIB_LOOKUP_FAILED => "fib-lookup-failed".into(),
        abi::DROP_POLICY_DENIED => "policy-denied".into(),
        other => format!("reason-{other}"),
    };
    Counter {
        point: point.into(),
        outcome: outcome.into(),
        reason,
        packets: v.packets,
        bytes: v.bytes,
    }
}
