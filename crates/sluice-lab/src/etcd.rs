//! The lab's etcd (`spec.kvstore: etcd`): one member in the underlay namespace, listening on
//! the outside host's address, so every node reaches it over the underlay the way agents
//! reach a control-plane etcd. It lives in the lab's cgroup, so `down` kills it with the rest.

use std::fs::OpenOptions;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_netdev::Netns;

use crate::error::{io, net, Result};
use crate::process::{self, Placement};
use crate::state::{LabPaths, LabState};
use crate::{cgroup, names, network, LabError};

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
const READY: Duration = Duration::from_secs(30);
const MARKER: &str = "--- sluice lab: starting etcd ---";

pub fn client_url(state: &LabState) -> String {
    format!(
        "http://{}:{CLIENT_PORT}",
        network::outside_ip(state.underlay)
    )
}

fn etcd_cgroup(state: &LabState) -> Option<std::path::PathBuf> {
    state
        .cgroup_root
        .as_deref()
        .map(|root| names::lab_cgroup(root, &state.name).join("etcd"))
}

fn log_path(paths: &LabPaths) -> std::path::PathBuf {
    paths.etcd_dir().join("etcd.log")
}

/// Starts etcd (keeping its data from an earlier start) and waits until it serves clients.
pub fn start(state: &LabState, paths: &LabPaths) -> Result<u32> {
    let dir = paths.etcd_dir();
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let log_file = log_path(paths);
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)
        .map_err(io(format!("open {}", log_file.display())))?;
    writeln!(log, "{MARKER}").map_err(io(format!("write {}", log_file.display())))?;
    let err_log = log
        .try_clone()
        .map_err(io(format!("dup {}", log_file.display())))?;
    let ip = network::outside_ip(state.underlay);
    let peer = format!("http://{ip}:{PEER_PORT}");
    let client = client_url(state);
    let member = format!("lab-{}", state.name);
    let mut cmd = Command::new("etcd");
    cmd.args(["--name", &member, "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("{member}={peer}")])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log);
    let underlay = Netns::open(&state.underlay_netns).map_err(net("the underlay namespace"))?;
    let cgroup_procs = match etcd_cgroup(state) {
        Some(cg) => {
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
    let child = cmd.spawn().map_err(|e| {
        LabError::Invalid(format!(
            "spec.kvstore: etcd: cannot start etcd ({e}); install it with `make deps` (Debian package etcd-server)"
        ))
    })?;
    let pid = child.id();
    process::reap_in_background(child);
    // Readiness as etcd logs it, after this start's marker (the log is appended to).
    let serving = process::wait_until(READY, || {
        std::fs::read_to_string(&log_file)
            .map(|t| {
                t.rsplit(MARKER)
                    .next()
                    .is_some_and(|l| l.contains("ready to serve client requests"))
            })
            .unwrap_or(false)
            || !process::alive(pid, None)
    });
    if !serving || !process::alive(pid, None) {
        let tail = std::fs::read_to_string(&log_file).unwrap_or_default();
        let tail: String = tail.lines().rev().take(15).collect::<Vec<_>>().join("\n");
        return Err(LabError::Invalid(format!(
            "etcd did not come up within {READY:?} (log {}):\n{tail}",
            log_file.display()
        )));
    }
    Ok(pid)
}

/// Stops etcd (SIGKILL: as abrupt as a crash); its data stays for the next start.
pub fn kill(state: &LabState) -> Result<()> {
    if let Some(pid) = state.etcd_pid {
        process::signal(pid, nix::sys::signal::Signal::SIGKILL)
            .map_err(io(format!("kill etcd pid {pid}")))?;
        process::wait_until(Duration::from_secs(10), || !process::alive(pid, None));
    }
    Ok(())
}
