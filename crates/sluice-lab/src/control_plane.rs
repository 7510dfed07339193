//! The lab's control plane, on the underlay namespace at the outside host's address, so every
//! node reaches it over the underlay the way agents reach a real control plane: etcd
//! (`spec.kvstore: etcd`) and the stand-in API server (`spec.source: kubernetes`). Both live
//! in the lab's cgroup, so `down` kills them with the rest.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_netdev::Netns;

use crate::error::{io, net, Result};
use crate::process::{self, Placement};
use crate::state::{LabPaths, LabState};
use crate::{cgroup, names, network, LabError};

const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
const APISERVER_PORT: u16 = 6443;
const READY: Duration = Duration::from_secs(30);

pub fn etcd_url(state: &LabState) -> String {
    format!(
        "http://{}:{ETCD_CLIENT_PORT}",
        network::outside_ip(state.underlay)
    )
}

pub fn apiserver_url(state: &LabState) -> String {
    format!(
        "http://{}:{APISERVER_PORT}",
        network::outside_ip(state.underlay)
    )
}

/// Starts etcd (keeping its data from an earlier start) and waits until it serves clients.
pub fn start_etcd(state: &LabState, paths: &LabPaths) -> Result<u32> {
    let dir = paths.etcd_dir();
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let ip = network::outside_ip(state.underlay);
    let peer = format!("http://{ip}:{ETCD_PEER_PORT}");
    let client = etcd_url(state);
    let member = format!("lab-{}", state.name);
    let mut cmd = Command::new("etcd");
    cmd.args(["--name", &member, "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("{member}={peer}")]);
    start_in_underlay(
        state,
        &dir.join("etcd.log"),
        "etcd",
        cmd,
        "ready to serve client requests",
    )
    .map_err(|e| match e {
        LabError::Io { .. } if !which("etcd") => LabError::Invalid(
            "spec.kvstore: etcd: the etcd binary is missing; install it with `make deps` (Debian package etcd-server)".into(),
        ),
        other => other,
    })
}

/// Starts the stand-in API server over the lab's desired-state directory and writes the
/// kubeconfig agents use to reach it.
pub fn start_apiserver(state: &LabState, paths: &LabPaths) -> Result<u32> {
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster: {{server: \"{}\"}}\nusers:\n- name: agent\n  user: {{token: lab}}\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: agent}}\ncurrent-context: lab\n",
        apiserver_url(state)
    );
    crate::state::write_atomic(&paths.kubeconfig(), kubeconfig.as_bytes())?;
    let listen = format!("{}:{APISERVER_PORT}", network::outside_ip(state.underlay));
    let mut cmd = Command::new(state.bin_dir.join(crate::bins::SLUICE));
    cmd.args(["lab", "api-server", "--dir"])
        .arg(paths.manifests())
        .args(["--listen", &listen]);
    start_in_underlay(
        state,
        &paths.root.join("apiserver.log"),
        "apiserver",
        cmd,
        "apiserver: serving on",
    )
}

fn runs(pid: u32, program: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(program))
        .unwrap_or(false)
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Runs `cmd` in the underlay namespace and the lab's cgroup `<lab>/<what>`, logging to
/// `log_file`, and waits until the log shows `ready` after this start's marker.
fn start_in_underlay(
    state: &LabState,
    log_file: &Path,
    what: &str,
    mut cmd: Command,
    ready: &str,
) -> Result<u32> {
    let marker = format!("--- sluice lab: starting {what} ---");
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .map_err(io(format!("open {}", log_file.display())))?;
    writeln!(log, "{marker}").map_err(io(format!("write {}", log_file.display())))?;
    let err_log = log
        .try_clone()
        .map_err(io(format!("dup {}", log_file.display())))?;
    cmd.stdin(Stdio::null()).stdout(log).stderr(err_log);
    let underlay = Netns::open(&state.underlay_netns).map_err(net("the underlay namespace"))?;
    let cgroup_procs = match &state.cgroup_root {
        Some(root) => {
            let cg = names::lab_cgroup(root, &state.name).join(what);
            std::fs::create_dir_all(&cg).map_err(io(format!("create cgroup {}", cg.display())))?;
            Some(cgroup::procs_fd(&cg).map_err(io(format!("open {}/cgroup.procs", cg.display())))?)
        }
        None => None,
    };
    process::place(
        &mut cmd,
        Placement {
            netns: underlay.open_fd().map_err(net("the underlay namespace"))?,
            cgroup_procs,
            setsid: true,
        },
    );
    let child = cmd.spawn().map_err(io(format!("start {what}")))?;
    let pid = child.id();
    process::reap_in_background(child);
    let up = |text: &str| {
        text.rsplit(&marker)
            .next()
            .is_some_and(|l| l.contains(ready))
    };
    let serving = process::wait_until(READY, || {
        std::fs::read_to_string(log_file).is_ok_and(|t| up(&t)) || !process::alive(pid, None)
    });
    if !serving || !process::alive(pid, None) {
        let text = std::fs::read_to_string(log_file).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(LabError::Invalid(format!(
            "{what} did not come up within {READY:?} (log {}):\n{}",
            log_file.display(),
            tail.join("\n")
        )));
    }
    Ok(pid)
}

/// Stops a control-plane process (SIGKILL: as abrupt as a crash); etcd keeps its data. Only
/// if `pid` still runs a command line containing `program` (the pid may have been reused).
pub fn kill(pid: Option<u32>, program: &str) -> Result<()> {
    if let Some(pid) = pid.filter(|pid| runs(*pid, program)) {
        process::signal(pid, nix::sys::signal::Signal::SIGKILL)
            .map_err(io(format!("kill pid {pid}")))?;
        process::wait_until(Duration::from_secs(10), || !process::alive(pid, None));
    }
    Ok(())
}
