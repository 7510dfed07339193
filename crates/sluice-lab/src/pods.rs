//! Pods: a network namespace set up through CNI exactly as a container runtime does, and the
//! small servers (`sluice lab serve`) that give tests something to reach.

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_cni::runtime::{self, ConfList, ExecNetns, Invocation};
use sluice_netdev::{Netns, NETNS_RUN_DIR};

use crate::cgroup;
use crate::error::{io, net, tail, LabError, Result};
use crate::process::{self, Placement};
use crate::state::{write_atomic, LabPaths, LabState, PodState};
use crate::{bins, names};

/// The conflist a node's runtime uses: sluice-cni, then the cluster's extra plugins.
pub fn conflist(socket: &std::path::Path, extra: &[Value]) -> Value {
    let mut plugins = vec![json!({ "type": bins::CNI, "agentSocket": socket })];
    plugins.extend(extra.iter().cloned());
    json!({ "cniVersion": "1.1.0", "name": "sluice", "plugins": plugins })
}

pub fn write_conflist(state: &LabState, paths: &LabPaths, node: &str) -> Result<()> {
    let list = conflist(&paths.agent_socket(node), &state.cni_plugins);
    let bytes = serde_json::to_vec_pretty(&list).expect("conflists serialize");
    write_atomic(&paths.conflist(node), &bytes)
}

/// A fresh container id (64 hex digits, like containerd's).
pub fn new_container_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io("read /dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn invocation(state: &LabState, pod: &PodState, container_id: &str) -> Result<Invocation> {
    let node = state.node(&pod.node)?;
    Ok(Invocation {
        container_id: container_id.to_string(),
        netns: PathBuf::from(NETNS_RUN_DIR).join(&pod.netns),
        ifname: names::POD_IFNAME.to_string(),
        args: runtime::k8s_args(&pod.namespace, &pod.name, container_id),
        cni_path: vec![state.bin_dir.clone(), PathBuf::from(bins::SYSTEM_CNI_DIR)],
        exec_netns: Some(ExecNetns::Path(
            PathBuf::from(NETNS_RUN_DIR).join(&node.netns),
        )),
        ..Default::default()
    })
}

fn load_conflist(paths: &LabPaths, node: &str) -> Result<ConfList> {
    let file = paths.conflist(node);
    let bytes = std::fs::read(&file).map_err(io(format!("read {}", file.display())))?;
    ConfList::parse(&bytes).map_err(|e| LabError::State {
        what: file.display().to_string(),
        reason: e.to_string(),
    })
}

/// CNI ADD for `pod`; returns the result and the pod's address.
pub fn cni_add(
    state: &LabState,
    paths: &LabPaths,
    pod: &PodState,
    container_id: &str,
) -> Result<(Value, Ipv4Addr)> {
    let list = load_conflist(paths, &pod.node)?;
    let inv = invocation(state, pod, container_id)?;
    let result = runtime::add(&list, &inv).map_err(|source| LabError::Cni {
        command: "ADD",
        pod: pod.key(),
        source: Box::new(source),
    })?;
    let ip = result_ipv4(&result).ok_or_else(|| LabError::CniResult {
        pod: pod.key(),
        result: result.to_string(),
    })?;
    let dir = paths.pod_dir(&pod.namespace, &pod.name);
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let bytes = serde_json::to_vec_pretty(&result).expect("CNI results serialize");
    write_atomic(&paths.cni_result(&pod.namespace, &pod.name), &bytes)?;
    Ok((result, ip))
}

/// CNI DEL for `pod` with its cached ADD result (best effort is the caller's choice).
pub fn cni_del(state: &LabState, paths: &LabPaths, pod: &PodState) -> Result<()> {
    let Some(cid) = &pod.container_id else {
        return Ok(());
    };
    let list = load_conflist(paths, &pod.node)?;
    let mut inv = invocation(state, pod, cid)?;
    if Netns::open(&pod.netns).is_err() {
        inv.netns = PathBuf::new();
    }
    runtime::del(&list, &inv, pod.cni_result.as_ref()).map_err(|source| LabError::Cni {
        command: "DEL",
        pod: pod.key(),
        source: Box::new(source),
    })
}

/// The first IPv4 address of a CNI result (`ips[].address`, e.g. "10.10.0.5/32").
pub fn result_ipv4(result: &Value) -> Option<Ipv4Addr> {
    result.get("ips")?.as_array()?.iter().find_map(|ip| {
        let addr = ip.get("address")?.as_str()?;
        addr.split('/').next()?.parse().ok()
    })
}

fn ports_arg(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts `sluice lab serve` in the pod's namespace and cgroup; waits until it listens.
pub fn start_servers(
    state: &LabState,
    paths: &LabPaths,
    pod: &PodState,
    timeout: Duration,
) -> Result<Option<u32>> {
    if pod.tcp_ports.is_empty() && pod.udp_ports.is_empty() {
        return Ok(None);
    }
    let dir = paths.pod_dir(&pod.namespace, &pod.name);
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let log_path = paths.serve_log(&pod.namespace, &pod.name);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(format!("open {}", log_path.display())))?;
    let netns = Netns::open(&pod.netns)
        .and_then(|n| n.open_fd())
        .map_err(net(format!("pod {}", pod.key())))?;
    let cgroup_procs = match &state.cgroup_root {
        Some(root) => {
            let cg = names::pod_cgroup(root, &state.name, &pod.node, &pod.namespace, &pod.name);
            Some(cgroup::procs_fd(&cg).map_err(io(format!("open {}/cgroup.procs", cg.display())))?)
        }
        None => None,
    };
    let mut cmd = Command::new(state.bin_dir.join(bins::SLUICE));
    cmd.args(["lab", "serve", "--pod", &pod.key()]);
    if !pod.tcp_ports.is_empty() {
        cmd.args(["--tcp", &ports_arg(&pod.tcp_ports)]);
    }
    if !pod.udp_ports.is_empty() {
        cmd.args(["--udp", &ports_arg(&pod.udp_ports)]);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
    process::place(
        &mut cmd,
        Placement {
            netns,
            cgroup_procs,
            setsid: true,
        },
    );
    let mut child = cmd
        .spawn()
        .map_err(io(format!("start servers of pod {}", pod.key())))?;
    let pid = child.id();
    let fail = |reason: String| LabError::Serve {
        pod: pod.key(),
        reason,
        log: log_path.clone(),
        log_tail: tail(&log_path, 10),
    };
    let Some(stdout) = child.stdout.take() else {
        return Err(fail("have no stdout pipe".into()));
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    process::reap_in_background(child);
    match rx.recv_timeout(timeout) {
        Ok(line) if line.trim() == crate::serve::READY => Ok(Some(pid)),
        Ok(line) if line.is_empty() => Err(fail(format!("(pid {pid}) exited before listening"))),
        Ok(line) => Err(fail(format!(
            "(pid {pid}) said {line:?} instead of {:?}",
            crate::serve::READY
        ))),
        Err(_) => Err(fail(format!(
            "(pid {pid}) did not listen within {timeout:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_chains_extra_plugins_after_sluice() {
        let extra = vec![json!({"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}})];
        let list = conflist(std::path::Path::new("/run/x.sock"), &extra);
        let parsed = ConfList::parse(&serde_json::to_vec(&list).unwrap()).unwrap();
        assert_eq!(parsed.plugin_types(), ["sluice-cni", "tuning"]);
        assert_eq!(parsed.plugins[0]["agentSocket"], "/run/x.sock");
    }

    #[test]
    fn addresses_from_results() {
        let r = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.10.0.5/32", "gateway": "169.254.0.1"}]});
        assert_eq!(result_ipv4(&r), Some("10.10.0.5".parse().unwrap()));
        assert_eq!(result_ipv4(&json!({"ips": []})), None);
    }

    #[test]
    fn container_ids_are_unique_hex() {
        let a = new_container_id().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_container_id().unwrap());
    }
}
