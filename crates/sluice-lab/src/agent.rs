//! Running one `sluice-agent` per node inside the node's namespace and cgroup.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_api::config::AgentConfig;
use sluice_api::{AgentStatus, Client, Request, Response};
use sluice_netdev::Netns;

use crate::cgroup;
use crate::error::{io, net, tail, LabError, Result};
use crate::process::{self, Placement};
use crate::state::{write_atomic, LabPaths, LabState, NodeState};
use crate::{bins, names};

pub fn config(state: &LabState, paths: &LabPaths, node: &str) -> AgentConfig {
    AgentConfig {
        node_name: node.to_string(),
        routing: state.routing,
        source: state.source,
        manifests: (state.source == sluice_api::config::SourceKind::Files)
            .then(|| paths.manifests()),
        kubernetes: sluice_api::config::KubernetesConfig {
            kubeconfig: (state.source == sluice_api::config::SourceKind::Kubernetes)
                .then(|| paths.kubeconfig()),
        },
        kvstore: match state.kvstore {
            sluice_api::config::KvstoreKind::Etcd => sluice_api::config::KvstoreConfig {
                kind: sluice_api::config::KvstoreKind::Etcd,
                endpoints: vec![crate::control_plane::etcd_url(state)],
                ..Default::default()
            },
            sluice_api::config::KvstoreKind::None => Default::default(),
        },
        socket: paths.agent_socket(node),
        state_dir: paths.agent_state(node),
        bpf_pin_path: Some(names::node_pin_dir(&state.name, node)),
        vxlan_port: 8472,
        underlay_mtu: None,
        maglev_table_size: 16381,
        // Small maps unless the cluster file says: a lab runs several nodes (and labs) on
        // one machine.
        maps: state.maps.unwrap_or(sluice_api::config::MapSizes {
            lb_slots: 65_536,
            backends: 16_384,
            conntrack: 65_536,
            policy: 16_384,
        }),
        // Each node has its own network namespace, so every agent can use the same port.
        metrics_address: "127.0.0.1:9962".into(),
        // Never the host's root cgroup: without a lab cgroup, no socket-LB.
        socket_lb: state.socket_lb && state.cgroup_root.is_some(),
        // Socket-LB covers this node's pods only (not other nodes, labs or the host).
        cgroup_path: state
            .cgroup_root
            .as_deref()
            .map(|root| names::node_pods_cgroup(root, &state.name, node)),
        // One allocator for the whole lab: every node gives the same labels the same number.
        identity_dir: Some(paths.identities()),
        // The observer listens on <stateDir>/hubble.sock; `sluice observe` reads every node's.
        // Also on Hubble's port inside the node, as a DaemonSet's host-network agent would.
        hubble: sluice_api::config::HubbleConfig {
            monitor_aggregation: state.monitor_aggregation,
            listen_address: "0.0.0.0:4244".into(),
            events_buffer_bytes: state.events_buffer_bytes,
            ..Default::default()
        },
    }
}

pub fn write_config(state: &LabState, paths: &LabPaths, node: &str) -> Result<()> {
    let cfg = config(state, paths, node);
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(io(format!("create {}", cfg.state_dir.display())))?;
    let text = serde_saphyr::to_string(&cfg)
        .map_err(|e| LabError::Invalid(format!("cannot write agent config of node {node}: {e}")))?;
    write_atomic(&paths.agent_config(node), text.as_bytes())
}

fn agent_cgroup(state: &LabState, node: &str) -> Option<std::path::PathBuf> {
    state
        .cgroup_root
        .as_deref()
        .map(|r| names::agent_cgroup(r, &state.name, node))
}

/// The agent's cgroup as /proc/PID/cgroup shows it.
pub fn cgroup_rel(state: &LabState, node: &str) -> Option<String> {
    let root = state.cgroup_root.as_deref()?;
    process::cgroup_rel(root, &names::agent_cgroup(root, &state.name, node))
}

/// Starts the agent of `node` (detached); returns its pid.
pub fn start(state: &LabState, paths: &LabPaths, node: &NodeState) -> Result<u32> {
    let log_path = paths.agent_log(&node.name);
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(format!("open {}", log_path.display())))?;
    let _ = writeln!(
        log,
        "--- sluice lab: starting sluice-agent for node {} ---",
        node.name
    );
    let ns = Netns::open(&node.netns).map_err(net(format!("node {}", node.name)))?;
    let netns = ns.open_fd().map_err(net(format!("node {}", node.name)))?;
    let cgroup_procs = match agent_cgroup(state, &node.name) {
        Some(cg) => {
            Some(cgroup::procs_fd(&cg).map_err(io(format!("open {}/cgroup.procs", cg.display())))?)
        }
        None => None,
    };
    let err_log = log
        .try_clone()
        .map_err(io(format!("dup {}", log_path.display())))?;
    let mut cmd = Command::new(state.bin_dir.join(bins::AGENT));
    cmd.arg("--config")
        .arg(paths.agent_config(&node.name))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log);
    process::place(
        &mut cmd,
        Placement {
            netns,
            cgroup_procs,
            setsid: true,
        },
    );
    let child = cmd
        .spawn()
        .map_err(io(format!("start {} for node {}", bins::AGENT, node.name)))?;
    let pid = child.id();
    process::reap_in_background(child);
    Ok(pid)
}

pub fn client(paths: &LabPaths, node: &str, timeout: Duration) -> Client {
    Client::new(paths.agent_socket(node)).with_timeout(timeout)
}

pub fn status(paths: &LabPaths, node: &str) -> Result<AgentStatus> {
    match client(paths, node, Duration::from_secs(5)).call(&Request::Status) {
        Ok(Response::Status(s)) => Ok(s),
        Ok(other) => Err(LabError::Invalid(format!(
            "agent of node {node} answered Status with {other:?}"
        ))),
        Err(source) => Err(LabError::AgentApi {
            node: node.to_string(),
            source,
        }),
    }
}

/// Waits until the agent answers Status with `ready: true`. Fails early when it exits.
pub fn wait_ready(
    state: &LabState,
    paths: &LabPaths,
    node: &str,
    pid: u32,
    timeout: Duration,
) -> Result<AgentStatus> {
    let deadline = Instant::now() + timeout;
    let cg = cgroup_rel(state, node);
    let log = paths.agent_log(node);
    let fail = |reason: String| LabError::Agent {
        node: node.to_string(),
        reason,
        log: log.clone(),
        log_tail: tail(&log, 20),
    };
    loop {
        if !process::alive(pid, cg.as_deref()) {
            return Err(fail(format!("(pid {pid}) exited before it was ready")));
        }
        let last = match client(paths, node, Duration::from_secs(2)).call(&Request::Status) {
            Ok(Response::Status(s)) if s.ready => return Ok(s),
            Ok(Response::Status(s)) => format!("not ready (problems: {})", s.problems.join("; ")),
            Ok(other) => format!("unexpected answer {other:?}"),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(fail(format!(
                "(pid {pid}) was not ready after {timeout:?}: {last}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pids in the node's agent cgroup (the agent, and anything it left running).
pub fn pids(state: &LabState, node: &str) -> Vec<u32> {
    agent_cgroup(state, node)
        .map(|cg| cgroup::procs(&cg).unwrap_or_default())
        .unwrap_or_default()
}

pub fn socket_path_fits(path: &Path) -> bool {
    // sun_path holds 108 bytes including the terminating NUL.
    path.as_os_str().len() < 108
}
