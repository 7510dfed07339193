//! [`Lab`]: a running lab, for the CLI and for end-to-end tests.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use nix::sys::signal::Signal;
use sluice_api::AgentStatus;
use sluice_netdev::Netns;

use crate::down::{self, DownReport};
use crate::error::{io, net, tail, LabError, Result};
use crate::process::{self, Placement};
use crate::state::{self, LabPaths, LabState, NodeState, PodState};
use crate::up::{self, UpOptions};
use crate::{agent, cgroup, names};

/// Where a cluster file comes from.
#[derive(Debug, Clone)]
pub enum ClusterSource {
    Text(String),
    Path(PathBuf),
}

impl From<&str> for ClusterSource {
    fn from(text: &str) -> Self {
        ClusterSource::Text(text.to_string())
    }
}
impl From<String> for ClusterSource {
    fn from(text: String) -> Self {
        ClusterSource::Text(text)
    }
}
impl From<&Path> for ClusterSource {
    fn from(p: &Path) -> Self {
        ClusterSource::Path(p.to_path_buf())
    }
}
impl From<PathBuf> for ClusterSource {
    fn from(p: PathBuf) -> Self {
        ClusterSource::Path(p)
    }
}

impl ClusterSource {
    pub fn read(&self) -> Result<String> {
        match self {
            ClusterSource::Text(t) => Ok(t.clone()),
            ClusterSource::Path(p) => {
                std::fs::read_to_string(p).map_err(io(format!("read cluster file {}", p.display())))
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Lab name; default the Cluster's `metadata.name`.
    pub name: Option<String>,
    /// Directory of `sluice`, `sluice-agent`, `sluice-cni`; default env `SLUICE_BIN_DIR`, else
    /// the running executable's directory.
    pub bin_dir: Option<PathBuf>,
    /// No progress lines on stderr.
    pub quiet: bool,
    /// How long each agent may take to become ready.
    pub ready_timeout: Duration,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            name: None,
            bin_dir: None,
            quiet: false,
            ready_timeout: Duration::from_secs(60),
        }
    }
}

/// A lab that exists on this machine.
#[derive(Debug)]
pub struct Lab {
    state: LabState,
    paths: LabPaths,
}

impl Lab {
    /// Brings a lab up; on failure nothing of it is left.
    pub fn up(cluster: impl Into<ClusterSource>, opts: LabOptions) -> Result<Lab> {
        let text = cluster.into().read()?;
        let (state, paths) = up::up(
            &text,
            &UpOptions {
                name: opts.name,
                bin_dir: opts.bin_dir,
                quiet: opts.quiet,
                ready_timeout: opts.ready_timeout,
            },
        )?;
        Ok(Lab { state, paths })
    }

    /// An existing lab; `None` picks the only one.
    pub fn open(name: Option<&str>) -> Result<Lab> {
        let name = state::resolve(name)?;
        let paths = LabPaths::new(&name);
        let state = LabState::load(&paths)?;
        Ok(Lab { state, paths })
    }

    /// Removes lab `name` completely (idempotent; works on half-built labs).
    pub fn down(name: &str) -> Result<DownReport> {
        down::down(name, true)
    }

    /// Like [`Lab::down`], with progress lines on stderr.
    pub fn down_verbose(name: &str) -> Result<DownReport> {
        down::down(name, false)
    }

    /// Names of the labs on this machine.
    pub fn list() -> Result<Vec<String>> {
        state::list_labs()
    }

    /// A guard that tears the lab down when dropped (also on panic).
    pub fn into_guard(self) -> LabGuard {
        LabGuard { lab: Some(self) }
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }
    pub fn state(&self) -> &LabState {
        &self.state
    }
    pub fn paths(&self) -> &LabPaths {
        &self.paths
    }
    pub fn nodes(&self) -> &[NodeState] {
        &self.state.nodes
    }
    pub fn pods(&self) -> &[PodState] {
        &self.state.pods
    }

    /// `ns/name` (or `name` in `default`).
    pub fn pod(&self, pod: &str) -> Result<&PodState> {
        self.state.pod(pod)
    }
    pub fn node(&self, node: &str) -> Result<&NodeState> {
        self.state.node(node)
    }

    pub fn pod_ip(&self, pod: &str) -> Result<Ipv4Addr> {
        let p = self.pod(pod)?;
        p.ip.ok_or_else(|| {
            LabError::Invalid(format!(
                "pod {} has no address (CNI ADD did not finish)",
                p.key()
            ))
        })
    }
    pub fn node_ip(&self, node: &str) -> Result<Ipv4Addr> {
        Ok(self.node(node)?.ip)
    }
    pub fn agent_socket(&self, node: &str) -> Result<PathBuf> {
        Ok(self.paths.agent_socket(&self.node(node)?.name))
    }

    /// Relabels a pod: its manifest changes and the agents react as to a `kubectl label`.
    pub fn set_pod_labels(&mut self, pod: &str, labels: &[(&str, &str)]) -> Result<()> {
        let labels: std::collections::BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (ns, name) = {
            let p = self.pod(pod)?;
            (p.namespace.clone(), p.name.clone())
        };
        crate::manifests::set_pod_labels(&self.paths.manifests(), &ns, &name, &labels)?;
        if let Some(p) = self
            .state
            .pods
            .iter_mut()
            .find(|p| p.namespace == ns && p.name == name)
        {
            p.labels = labels;
        }
        self.state.save(&self.paths)
    }

    /// Adds or replaces a manifest file of the desired state, as `kubectl apply` would; the
    /// agents react as to any change. `name` ([a-z0-9-]) names the file `applied-<name>.yaml`.
    pub fn apply_manifest(&self, name: &str, yaml: &str) -> Result<()> {
        let path = self.applied_file(name)?;
        crate::state::write_atomic(&path, yaml.as_bytes())
    }

    /// Removes a file `apply_manifest` wrote; Ok(false) when there was none.
    pub fn delete_manifest(&self, name: &str) -> Result<bool> {
        let path = self.applied_file(name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(crate::error::io(format!("remove {}", path.display()))(e)),
        }
    }

    fn applied_file(&self, name: &str) -> Result<std::path::PathBuf> {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(LabError::Invalid(format!(
                "manifest name {name:?}: use lowercase letters, digits and '-'"
            )));
        }
        Ok(self.paths.manifests().join(format!("applied-{name}.yaml")))
    }

    /// The address of the outside host (see [`crate::network::outside_ip`]).
    pub fn outside_ip(&self) -> Ipv4Addr {
        crate::network::outside_ip(self.state.underlay)
    }
    pub fn outside_netns(&self) -> Result<Netns> {
        Netns::open(&self.state.underlay_netns).map_err(net("the outside host".to_string()))
    }

    pub fn pod_netns(&self, pod: &str) -> Result<Netns> {
        let p = self.pod(pod)?;
        Netns::open(&p.netns).map_err(net(format!("pod {}", p.key())))
    }
    pub fn node_netns(&self, node: &str) -> Result<Netns> {
        let n = self.node(node)?;
        Netns::open(&n.netns).map_err(net(format!("node {}", n.name)))
    }

    /// A command that runs inside the pod's network namespace and cgroup.
    pub fn command_in_pod(&self, pod: &str, program: impl AsRef<OsStr>) -> Result<Command> {
        let p = self.pod(pod)?;
        let netns = self
            .pod_netns(pod)?
            .open_fd()
            .map_err(net(format!("pod {}", p.key())))?;
        let cgroup_procs = match &self.state.cgroup_root {
            Some(root) => {
                let cg = names::pod_cgroup(root, &self.state.name, &p.node, &p.namespace, &p.name);
                cgroup::procs_fd(&cg).ok()
            }
            None => None,
        };
        let mut cmd = Command::new(program);
        process::place(
            &mut cmd,
            Placement {
                netns,
                cgroup_procs,
                setsid: false,
            },
        );
        Ok(cmd)
    }

    /// A command that runs inside the node's network namespace.
    pub fn command_in_node(&self, node: &str, program: impl AsRef<OsStr>) -> Result<Command> {
        command_in_netns(&self.node_netns(node)?, &format!("node {node}"), program)
    }

    /// Runs `argv` in the pod and collects its output.
    pub fn exec_in_pod<S: AsRef<OsStr>>(&self, pod: &str, argv: &[S]) -> Result<Output> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| LabError::Invalid("exec: empty command".into()))?;
        let mut cmd = self.command_in_pod(pod, program)?;
        cmd.args(args);
        cmd.output()
            .map_err(io(format!("run {:?} in pod {pod}", program.as_ref())))
    }

    /// Runs `argv` in the node's namespace and collects its output.
    pub fn exec_in_node<S: AsRef<OsStr>>(&self, node: &str, argv: &[S]) -> Result<Output> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| LabError::Invalid("exec: empty command".into()))?;
        let mut cmd = self.command_in_node(node, program)?;
        cmd.args(args);
        cmd.output()
            .map_err(io(format!("run {:?} in node {node}", program.as_ref())))
    }

    /// A command that runs on the outside host (the underlay namespace).
    pub fn command_outside(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        command_in_netns(&self.outside_netns()?, "the outside host", program)
    }

    /// Runs `f` on a thread on the outside host.
    pub fn run_outside<F: FnOnce() -> T + Send, T: Send>(&self, f: F) -> Result<T> {
        self.outside_netns()?
            .run(f)
            .map_err(net("enter the outside host".to_string()))
    }

    /// Runs `f` on a thread inside the pod's network namespace. Sockets made there keep
    /// working from any thread afterwards.
    pub fn run_in_pod<F: FnOnce() -> T + Send, T: Send>(&self, pod: &str, f: F) -> Result<T> {
        self.pod_netns(pod)?
            .run(f)
            .map_err(net(format!("enter pod {pod}")))
    }

    /// Runs `f` on a thread inside the node's network namespace.
    pub fn run_in_node<F: FnOnce() -> T + Send, T: Send>(&self, node: &str, f: F) -> Result<T> {
        self.node_netns(node)?
            .run(f)
            .map_err(net(format!("enter node {node}")))
    }

    pub fn agent_status(&self, node: &str) -> Result<AgentStatus> {
        agent::status(&self.paths, &self.node(node)?.name)
    }

    /// Kills the lab's etcd (SIGKILL) and waits until it is gone; `start_etcd` brings it back
    /// with its data. An error when the lab has no kvstore.
    pub fn kill_etcd(&mut self) -> Result<()> {
        self.require_etcd()?;
        crate::control_plane::kill(self.state.etcd_pid, "etcd")?;
        self.state.etcd_pid = None;
        self.state.save(&self.paths)
    }

    pub fn start_etcd(&mut self) -> Result<()> {
        self.require_etcd()?;
        let pid = crate::control_plane::start_etcd(&self.state, &self.paths)?;
        self.state.etcd_pid = Some(pid);
        self.state.save(&self.paths)
    }

    /// Kills the stand-in API server (agents then keep their last state); `start_apiserver`
    /// brings it back. An error when the lab's source is files.
    pub fn kill_apiserver(&mut self) -> Result<()> {
        self.require_apiserver()?;
        crate::control_plane::kill(self.state.apiserver_pid, "api-server")?;
        self.state.apiserver_pid = None;
        self.state.save(&self.paths)
    }

    pub fn start_apiserver(&mut self) -> Result<()> {
        self.require_apiserver()?;
        let pid = crate::control_plane::start_apiserver(&self.state, &self.paths)?;
        self.state.apiserver_pid = Some(pid);
        self.state.save(&self.paths)
    }

    fn require_apiserver(&self) -> Result<()> {
        if self.state.source != sluice_api::config::SourceKind::Kubernetes {
            return Err(crate::LabError::Invalid(format!(
                "lab {} has no API server (spec.source is files)",
                self.state.name
            )));
        }
        Ok(())
    }

    fn require_etcd(&self) -> Result<()> {
        if self.state.kvstore != sluice_api::config::KvstoreKind::Etcd {
            return Err(crate::LabError::Invalid(format!(
                "lab {} has no etcd (spec.kvstore is none)",
                self.state.name
            )));
        }
        Ok(())
    }

    /// Whether the node's agent process is running.
    pub fn agent_alive(&self, node: &str) -> Result<bool> {
        let n = self.node(node)?;
        let cg = agent::cgroup_rel(&self.state, &n.name);
        Ok(n.agent_pid
            .is_some_and(|pid| process::alive(pid, cg.as_deref())))
    }

    /// Stops the node's agent (SIGTERM, or SIGKILL when `kill9`), waits until it is gone, starts
    /// it again and waits until it is ready.
    pub fn restart_agent(&mut self, node: &str, kill9: bool) -> Result<AgentStatus> {
        let name = self.node(node)?.name.clone();
        let sig = if kill9 {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        let mut pids = agent::pids(&self.state, &name);
        pids.extend(self.node(&name)?.agent_pid);
        let cg = agent::cgroup_rel(&self.state, &name);
        for &pid in &pids {
            if process::alive(pid, cg.as_deref()) {
                process::signal(pid, sig).map_err(io(format!(
                    "send {sig} to agent of node {name} (pid {pid})"
                )))?;
            }
        }
        let gone = process::wait_until(Duration::from_secs(30), || {
            agent::pids(&self.state, &name).is_empty()
                && pids.iter().all(|&p| !process::alive(p, cg.as_deref()))
        });
        if !gone {
            let log = self.paths.agent_log(&name);
            return Err(LabError::Agent {
                node: name,
                reason: format!("(pids {pids:?}) did not exit within 30s of {sig}"),
                log_tail: tail(&log, 20),
                log,
            });
        }
        let pid = agent::start(&self.state, &self.paths, self.node(&name)?)?;
        if let Some(n) = self.state.nodes.iter_mut().find(|n| n.name == name) {
            n.agent_pid = Some(pid);
        }
        self.state.save(&self.paths)?;
        agent::wait_ready(
            &self.state,
            &self.paths,
            &name,
            pid,
            Duration::from_secs(60),
        )
    }
}

/// Tears its lab down when dropped, even during a panic. Derefs to [`Lab`].
#[derive(Debug)]
pub struct LabGuard {
    lab: Option<Lab>,
}

impl LabGuard {
    /// Tears down now and reports what happened.
    pub fn down(mut self) -> Result<DownReport> {
        let lab = self
            .lab
            .take()
            .expect("a guard holds its lab until dropped");
        Lab::down(lab.name())
    }
}

/// A command that enters `ns` (and no cgroup) before it runs.
fn command_in_netns(ns: &Netns, what: &str, program: impl AsRef<OsStr>) -> Result<Command> {
    let netns = ns.open_fd().map_err(net(what.to_string()))?;
    let mut cmd = Command::new(program);
    process::place(
        &mut cmd,
        Placement {
            netns,
            cgroup_procs: None,
            setsid: false,
        },
    );
    Ok(cmd)
}

impl std::ops::Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        self.lab
            .as_ref()
            .expect("a guard holds its lab until dropped")
    }
}

impl std::ops::DerefMut for LabGuard {
    fn deref_mut(&mut self) -> &mut Lab {
        self.lab
            .as_mut()
            .expect("a guard holds its lab until dropped")
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(lab) = self.lab.take() {
            if let Err(e) = Lab::down(lab.name()) {
                eprintln!("tearing down lab {}: {e}", lab.name());
            }
        }
    }
}
