//! `lab up`: validate, claim the state directory, then build underlay, nodes, cgroups, agents
//! and pods. Any failure tears down whatever was made.

use std::path::PathBuf;
use std::time::Duration;

use sluice_netdev::Netns;

use crate::cluster::Cluster;
use crate::error::{io, net, LabError, Result};
use crate::progress::Progress;
use crate::state::{LabPaths, LabState, NodeState, PodState};
use crate::{agent, bins, cgroup, control_plane, down, manifests, names, network, pods};

pub struct UpOptions {
    pub name: Option<String>,
    pub bin_dir: Option<PathBuf>,
    pub quiet: bool,
    pub ready_timeout: Duration,
}

pub fn up(text: &str, opts: &UpOptions) -> Result<(LabState, LabPaths)> {
    let cluster = Cluster::parse(text)?;
    let name = opts.name.clone().unwrap_or_else(|| cluster.name.clone());
    names::check_lab_name(&name).map_err(|reason| LabError::BadName {
        name: name.clone(),
        reason,
    })?;
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::NotRoot);
    }
    let bin_dir = bins::locate(opts.bin_dir.as_deref())?;
    let paths = LabPaths::new(&name);
    for node in &cluster.nodes {
        let sock = paths.agent_socket(&node.name);
        if !agent::socket_path_fits(&sock) {
            return Err(LabError::Invalid(format!(
                "node {:?}: the agent socket path {} is longer than 107 bytes; use a shorter lab or node name",
                node.name,
                sock.display()
            )));
        }
    }
    if let Some(leftover) = down::leftovers(&name).into_iter().next() {
        return Err(LabError::Exists {
            name,
            path: leftover,
        });
    }
    std::fs::create_dir_all(names::STATE_ROOT)
        .map_err(io(format!("create {}", names::STATE_ROOT)))?;
    match std::fs::create_dir(&paths.root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(LabError::Exists {
                name,
                path: paths.root.clone(),
            })
        }
        Err(e) => {
            return Err(LabError::Io {
                what: format!("create {}", paths.root.display()),
                source: e,
            })
        }
    }
    // From here on, everything made is undone on failure.
    let mut state = initial_state(&cluster, &name, bin_dir);
    let control_plane_steps = usize::from(cluster.kvstore == sluice_api::config::KvstoreKind::Etcd)
        + usize::from(cluster.source == sluice_api::config::SourceKind::Kubernetes);
    let mut progress = Progress::new(opts.quiet, 5 + control_plane_steps);
    match build(&cluster, &mut state, &paths, opts, &mut progress) {
        Ok(()) => Ok((state, paths)),
        Err(error) => {
            if !opts.quiet {
                eprintln!("lab {name}: failed; removing what was created");
            }
            match down::down(&name, true) {
                Ok(_) => Err(error),
                Err(e) => Err(LabError::UpFailed {
                    error: Box::new(error),
                    cleanup: vec![e.to_string()],
                }),
            }
        }
    }
}

fn initial_state(cluster: &Cluster, name: &str, bin_dir: PathBuf) -> LabState {
    LabState {
        name: name.to_string(),
        routing: cluster.routing,
        underlay: cluster.underlay,
        bin_dir,
        cgroup_root: None,
        cgroup_mounted: false,
        underlay_netns: names::underlay_netns(name),
        nodes: cluster
            .nodes
            .iter()
            .map(|n| NodeState {
                name: n.name.clone(),
                pod_cidr: n.pod_cidr,
                ip: n.ip,
                netns: names::node_netns(name, &n.name),
                agent_pid: None,
            })
            .collect(),
        pods: cluster
            .pods
            .iter()
            .map(|p| PodState {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                node: p.node.clone(),
                netns: names::pod_netns(name, &p.namespace, &p.name),
                labels: p.labels.clone(),
                tcp_ports: p.tcp_ports.clone(),
                udp_ports: p.udp_ports.clone(),
                container_id: None,
                ip: None,
                cni_result: None,
                server_pid: None,
            })
            .collect(),
        cni_plugins: cluster.cni_plugins.clone(),
        monitor_aggregation: cluster.monitor_aggregation,
        socket_lb: cluster.socket_lb,
        events_buffer_bytes: cluster.events_buffer_bytes,
        kvstore: cluster.kvstore,
        etcd_pid: None,
        source: cluster.source,
        apiserver_pid: None,
        maps: cluster.maps,
    }
}

fn build(
    cluster: &Cluster,
    state: &mut LabState,
    paths: &LabPaths,
    opts: &UpOptions,
    progress: &mut Progress,
) -> Result<()> {
    state.save(paths)?;
    progress.step(format!("desired state in {}", paths.manifests().display()));
    write_desired_state(cluster, state, paths)?;

    progress.step(format!(
        "network: underlay {} and {} node namespaces",
        state.underlay,
        state.nodes.len()
    ));
    let underlay = network::create_underlay(&state.underlay_netns, state.underlay)?;
    for (i, node) in cluster.nodes.iter().enumerate() {
        let netns = &state.nodes[i].netns;
        network::create_node(&underlay, state.underlay, i, node, netns)?;
        progress.detail(format!("{} {} (netns {netns})", node.name, node.ip));
    }

    progress.step("cgroups");
    let root = match cgroup::find_cgroup2().map_err(io("read /proc/mounts"))? {
        Some(root) => root,
        None => {
            let at = paths.cgroup_mount();
            cgroup::mount_cgroup2(&at).map_err(io(format!("mount cgroup2 at {}", at.display())))?;
            state.cgroup_mounted = true;
            at
        }
    };
    state.cgroup_root = Some(root.clone());
    state.save(paths)?;
    for node in &state.nodes {
        let dirs =
            [
                names::agent_cgroup(&root, &state.name, &node.name),
                names::node_pods_cgroup(&root, &state.name, &node.name),
            ]
            .into_iter()
            .chain(
                state.pods.iter().filter(|p| p.node == node.name).map(|p| {
                    names::pod_cgroup(&root, &state.name, &node.name, &p.namespace, &p.name)
                }),
            );
        for dir in dirs {
            std::fs::create_dir_all(&dir)
                .map_err(io(format!("create cgroup {}", dir.display())))?;
        }
    }
    progress.detail(names::lab_cgroup(&root, &state.name).display().to_string());

    if state.kvstore == sluice_api::config::KvstoreKind::Etcd {
        progress.step(format!("etcd on {}", control_plane::etcd_url(state)));
        let pid = control_plane::start_etcd(state, paths)?;
        state.etcd_pid = Some(pid);
        state.save(paths)?;
        progress.detail(format!("etcd pid {pid}"));
    }
    if state.source == sluice_api::config::SourceKind::Kubernetes {
        progress.step(format!(
            "API server (lab stand-in) on {}",
            control_plane::apiserver_url(state)
        ));
        let pid = control_plane::start_apiserver(state, paths)?;
        state.apiserver_pid = Some(pid);
        state.save(paths)?;
        progress.detail(format!(
            "pid {pid}, kubeconfig {}",
            paths.kubeconfig().display()
        ));
    }

    progress.step(format!("agents ({} routing)", state.routing));
    for i in 0..state.nodes.len() {
        agent::write_config(state, paths, &state.nodes[i].name)?;
        let pid = agent::start(state, paths, &state.nodes[i])?;
        state.nodes[i].agent_pid = Some(pid);
        state.save(paths)?;
    }
    for node in &state.nodes {
        let pid = node.agent_pid.unwrap_or_default();
        let s = agent::wait_ready(state, paths, &node.name, pid, opts.ready_timeout)?;
        progress.detail(format!(
            "{}: sluice-agent pid {pid} ready ({} remote nodes)",
            node.name,
            s.remote_nodes.len()
        ));
    }

    progress.step(format!("{} pods", state.pods.len()));
    for i in 0..state.pods.len() {
        create_pod(cluster, state, paths, i)?;
        let p = &state.pods[i];
        progress.detail(format!(
            "{} on {}: {}",
            p.key(),
            p.node,
            p.ip.map(|ip| ip.to_string()).unwrap_or_default()
        ));
    }
    Ok(())
}

fn write_desired_state(cluster: &Cluster, state: &LabState, paths: &LabPaths) -> Result<()> {
    let dir = paths.manifests();
    manifests::create_dir(&dir)?;
    for node in &cluster.nodes {
        manifests::write_node(&dir, node)?;
        let node_dir = paths.node_dir(&node.name);
        std::fs::create_dir_all(&node_dir).map_err(io(format!("create {}", node_dir.display())))?;
        pods::write_conflist(state, paths, &node.name)?;
    }
    for ns in &cluster.namespaces {
        manifests::write_namespace(&dir, ns)?;
    }
    for pod in &cluster.pods {
        manifests::write_pod(&dir, &pod.manifest)?;
    }
    for (i, extra) in cluster.extra_manifests.iter().enumerate() {
        let kind = extra
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("object");
        manifests::write_value(&manifests::extra_file(&dir, i, kind), extra)?;
    }
    Ok(())
}

fn create_pod(cluster: &Cluster, state: &mut LabState, paths: &LabPaths, i: usize) -> Result<()> {
    let key = state.pods[i].key();
    let netns = state.pods[i].netns.clone();
    Netns::create(&netns).map_err(net(format!("pod {key}: create network namespace {netns}")))?;
    let cid = pods::new_container_id()?;
    state.pods[i].container_id = Some(cid.clone());
    state.save(paths)?;
    let (result, ip) = pods::cni_add(state, paths, &state.pods[i], &cid)?;
    state.pods[i].cni_result = Some(result);
    state.pods[i].ip = Some(ip);
    state.save(paths)?;
    let node_ip = state.node(&state.pods[i].node)?.ip;
    if let Some(def) = cluster.pod(&key) {
        manifests::write_pod_running(&paths.manifests(), &def.manifest, ip, node_ip)?;
    }
    let pid = pods::start_servers(state, paths, &state.pods[i], Duration::from_secs(10))?;
    state.pods[i].server_pid = pid;
    state.save(paths)
}
