//! The lab's error type. Messages name the lab, node, pod or path involved.

use std::path::PathBuf;

use crate::cluster::ClusterError;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("lab name {name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("lab {name:?} already exists ({}); remove it with `sluice lab down {name}`", .path.display())]
    Exists { name: String, path: PathBuf },
    #[error("lab {name:?} does not exist (no {})", .path.display())]
    NotFound { name: String, path: PathBuf },
    #[error("no lab exists; create one with `sluice lab up FILE`")]
    NoLabs,
    #[error("several labs exist ({}); name one", .0.join(", "))]
    Ambiguous(Vec<String>),
    #[error("sluice lab needs root (it creates network namespaces and cgroups)")]
    NotRoot,
    #[error("missing {} in {} (set SLUICE_BIN_DIR, or build them: cargo build -p sluice -p sluice-agent -p sluice-cni)", .missing.join(", "), .dir.display())]
    Binaries { dir: PathBuf, missing: Vec<String> },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Net {
        what: String,
        source: sluice_netdev::Error,
    },
    #[error("CNI {command} for pod {pod}: {source}")]
    Cni {
        command: &'static str,
        pod: String,
        source: Box<sluice_cni::runtime::RuntimeError>,
    },
    #[error("CNI result for pod {pod} has no IPv4 address: {result}")]
    CniResult { pod: String, result: String },
    #[error("agent of node {node} {reason}; last lines of {}:\n{log_tail}", .log.display())]
    Agent {
        node: String,
        reason: String,
        log: PathBuf,
        log_tail: String,
    },
    #[error("asking the agent of node {node}: {source}")]
    AgentApi {
        node: String,
        source: sluice_api::ClientError,
    },
    #[error("servers of pod {pod} {reason}; last lines of {}:\n{log_tail}", .log.display())]
    Serve {
        pod: String,
        reason: String,
        log: PathBuf,
        log_tail: String,
    },
    #[error("lab {lab} has no pod {pod:?} (pods: {})", .known.join(", "))]
    UnknownPod {
        lab: String,
        pod: String,
        known: Vec<String>,
    },
    #[error("lab {lab} has no node {node:?} (nodes: {})", .known.join(", "))]
    UnknownNode {
        lab: String,
        node: String,
        known: Vec<String>,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{what} is unreadable: {reason}")]
    State { what: String, reason: String },
    #[error("lab {name} was not removed completely:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Cleanup { name: String, problems: Vec<String> },
    #[error("{error}\n(cleanup after the failure also reported problems:\n{})", .cleanup.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    UpFailed {
        error: Box<LabError>,
        cleanup: Vec<String>,
    },
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

pub(crate) fn net(what: impl Into<String>) -> impl FnOnce(sluice_netdev::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Net { what, source }
}

/// The last `lines` lines of a log file (or why it cannot be read).
pub(crate) fn tail(path: &std::path::Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            let out = all[start..]
                .iter()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n");
            if out.is_empty() {
                "    (empty)".into()
            } else {
                out
            }
        }
        Err(e) => format!("    (cannot read: {e})"),
    }
}
