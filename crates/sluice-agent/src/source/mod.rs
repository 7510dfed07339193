//! Desired-state sources. A source delivers snapshots of the objects it knows; the reconciler
//! diffs each snapshot against what it has programmed, so a source may be a file watcher
//! (re-reads a directory) or the Kubernetes API server (kube-rs watchers) without the
//! reconciler changing.

pub mod kubernetes;
pub mod manifests;

use std::sync::Arc;

use sluice_model::Object;

/// Everything a source currently knows, plus what it could not read.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Shared with the source's own copy: a snapshot of 20k objects costs no deep copy.
    pub objects: Vec<Arc<Object>>,
    /// Problems with the input (unreadable files, invalid documents); the objects from a file
    /// that stopped parsing are kept as they were last read.
    pub problems: Vec<String>,
    /// The source could read its origin this time (the API server answered, the directory
    /// was readable); when false, `objects` is the last state it read.
    pub connected: bool,
    /// The objects that may differ from the previous snapshot; None when the source cannot
    /// tell (the first snapshot, a relist), and then everything is compared.
    pub changed: Option<sluice_model::ChangedObjects>,
}

/// The source the configuration names. The Kubernetes client is built here (bad kubeconfig
/// fails the start); the first request is made when the source runs.
pub async fn open(cfg: &sluice_api::config::AgentConfig) -> anyhow::Result<Box<dyn Source>> {
    use anyhow::Context;
    use sluice_api::config::SourceKind;
    Ok(match cfg.source {
        SourceKind::Files => {
            let dir = cfg
                .manifests
                .as_ref()
                .context("manifests: a directory is required when source is files")?;
            std::fs::create_dir_all(dir)
                .with_context(|| format!("manifest directory {}", dir.display()))?;
            Box::new(manifests::ManifestDir::new(dir))
        }
        SourceKind::Kubernetes => {
            Box::new(kubernetes::KubernetesSource::from_config(&cfg.kubernetes).await?)
        }
    })
}

pub trait Source: Send + 'static {
    /// Short description for `sluice status`, e.g. "files:/etc/sluice/manifests".
    fn describe(&self) -> String;
    /// Runs until `tx` closes, sending a snapshot first and then on every change.
    fn run(self: Box<Self>, tx: std::sync::mpsc::Sender<Snapshot>);
}
