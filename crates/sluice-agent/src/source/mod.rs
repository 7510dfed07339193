//! Desired-state sources. A source delivers snapshots of the objects it knows; the reconciler
//! diffs each snapshot against what it has programmed, so a source may be a file watcher
//! (re-reads a directory) or, later, a Kubernetes watcher (kube-rs) without the reconciler
//! changing.

pub mod manifests;

use sluice_model::Object;

/// Everything a source currently knows, plus what it could not read.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub objects: Vec<Object>,
    /// Problems with the input (unreadable files, invalid documents); the objects from a file
    /// that stopped parsing are kept as they were last read.
    pub problems: Vec<String>,
}

pub trait Source: Send + 'static {
    /// Short description for `sluice status`, e.g. "files:/etc/sluice/manifests".
    fn describe(&self) -> String;
    /// Runs until `tx` closes, sending a snapshot first and then on every change.
    fn run(self: Box<Self>, tx: std::sync::mpsc::Sender<Snapshot>);
}
