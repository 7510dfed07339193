//! `lab down`: remove everything a lab made, from its record and by name, so it also works on a
//! half-built lab and twice in a row.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_netdev::{Netns, NETNS_RUN_DIR};

use crate::error::{LabError, Result};
use crate::state::{LabPaths, LabState};
use crate::{cgroup, names, pods};

/// What `down` did.
#[derive(Debug, Clone, Default)]
pub struct DownReport {
    pub name: String,
    /// False when nothing of the lab existed.
    pub found: bool,
    /// Best-effort steps that failed without leaving anything behind (e.g. CNI DEL).
    pub warnings: Vec<String>,
}

/// Everything of lab `name` that exists on the machine (state dir, netns, cgroup, pin dir).
pub fn leftovers(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let state = names::state_dir(name);
    if state.exists() {
        out.push(state);
    }
    let prefix = names::netns_prefix(name);
    for ns in Netns::list().unwrap_or_default() {
        if ns.starts_with(&prefix) {
            out.push(Path::new(NETNS_RUN_DIR).join(ns));
        }
    }
    if let Ok(Some(root)) = cgroup::find_cgroup2() {
        let cg = names::lab_cgroup(&root, name);
        if cg.exists() {
            out.push(cg);
        }
    }
    let pins = names::lab_pin_dir(name);
    if pins.exists() {
        out.push(pins);
    }
    out
}

pub fn down(name: &str, quiet: bool) -> Result<DownReport> {
    names::check_lab_name(name).map_err(|reason| LabError::BadName {
        name: name.to_string(),
        reason,
    })?;
    let paths = LabPaths::new(name);
    let mut report = DownReport {
        name: name.to_string(),
        found: !leftovers(name).is_empty(),
        ..Default::default()
    };
    if !report.found {
        return Ok(report);
    }
    let say = |what: &str| {
        if !quiet {
            eprintln!("lab {name}: {what}");
        }
    };
    let mut problems = Vec::new();
    let state = match LabState::load(&paths) {
        Ok(s) => Some(s),
        Err(LabError::NotFound { .. }) => None,
        Err(e) => {
            report.warnings.push(format!("{e}; removing by name only"));
            None
        }
    };

    // CNI DEL first, while the agents still run.
    if let Some(state) = &state {
        let added: Vec<_> = state
            .pods
            .iter()
            .filter(|p| p.container_id.is_some())
            .collect();
        if !added.is_empty() {
            say(&format!("CNI DEL for {} pods", added.len()));
        }
        for pod in added {
            if let Err(e) = pods::cni_del(state, &paths, pod) {
                report.warnings.push(format!("pod {}: {e}", pod.key()));
            }
        }
    }

    // The control plane by pid too, in case its cgroup is gone.
    if let Some(state) = &state {
        for (pid, program) in [
            (state.etcd_pid, "etcd"),
            (state.apiserver_pid, "api-server"),
        ] {
            if let Err(e) = crate::control_plane::kill(pid, program) {
                report.warnings.push(e.to_string());
            }
        }
    }
    // Every process of the lab is in its cgroup.
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(r) = state.as_ref().and_then(|s| s.cgroup_root.clone()) {
        roots.push(r);
    }
    if let Ok(Some(r)) = cgroup::find_cgroup2() {
        if !roots.contains(&r) {
            roots.push(r);
        }
    }
    for root in &roots {
        let cg = names::lab_cgroup(root, name);
        if cg.exists() {
            say(&format!("killing processes in {}", cg.display()));
            if let Err(e) = cgroup::kill_and_remove(&cg, Duration::from_secs(10)) {
                problems.push(e);
            }
        }
    }
    if state.as_ref().is_some_and(|s| s.cgroup_mounted) || is_mount_point(&paths.cgroup_mount()) {
        if let Err(e) = cgroup::unmount(&paths.cgroup_mount()) {
            problems.push(format!("unmount {}: {e}", paths.cgroup_mount().display()));
        }
    }

    // Pods, then nodes, then the underlay.
    let prefix = names::netns_prefix(name);
    let mut netns: Vec<String> = Netns::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    netns.sort_by_key(|n| {
        (
            !n.starts_with(&format!("{prefix}pod.")),
            n.ends_with("underlay"),
            n.clone(),
        )
    });
    if !netns.is_empty() {
        say(&format!("deleting {} network namespaces", netns.len()));
    }
    for ns in netns {
        if let Err(e) = Netns::delete(&ns) {
            problems.push(format!("delete network namespace {ns}: {e}"));
        }
    }

    let pins = names::lab_pin_dir(name);
    if pins.exists() {
        say(&format!("removing {}", pins.display()));
        if let Err(e) = std::fs::remove_dir_all(&pins) {
            problems.push(format!("remove {}: {e}", pins.display()));
        }
    }
    if paths.root.exists() && problems.is_empty() {
        if let Err(e) = std::fs::remove_dir_all(&paths.root) {
            problems.push(format!("remove {}: {e}", paths.root.display()));
        }
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(LabError::Cleanup {
            name: name.to_string(),
            problems,
        })
    }
}

fn is_mount_point(dir: &Path) -> bool {
    let (Ok(a), Ok(b)) = (std::fs::metadata(dir), std::fs::metadata(dir.join(".."))) else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    a.dev() != b.dev()
}
