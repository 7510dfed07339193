//! `sluice lab`: a Kubernetes cluster made of network namespaces on one machine.
//!
//! A cluster file (a `Cluster` document, then Namespace/Pod manifests) becomes: an underlay
//! namespace with a bridge, one namespace per node running a real `sluice-agent`, and one
//! namespace per pod set up through CNI exactly as a container runtime would, running small
//! TCP/UDP/HTTP servers. Every process sits in a cgroup under `sluice-lab-<lab>` so `down` can
//! kill them all. State lives in `/run/sluice-lab/<lab>/`.
//!
//! ```no_run
//! use sluice_lab::{Lab, LabOptions, probe};
//! let lab = Lab::up(std::path::Path::new("examples/two-node-native.yaml"), LabOptions::default())?.into_guard();
//! let ip = lab.pod_ip("y/b")?;
//! let body = lab.run_in_pod("x/a", move || probe::http_get((ip, 80).into(), std::time::Duration::from_secs(2)))??;
//! assert_eq!(body, "y/b\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod agent;
pub mod apiserver;
mod bins;
mod cgroup;
pub mod cluster;
mod control_plane;
mod down;
mod error;
mod lab;
mod manifests;
pub mod names;
mod network;
mod pods;
pub mod probe;
mod process;
mod progress;
pub mod serve;
pub mod state;
mod up;

pub use cluster::{Cluster, ClusterError};
pub use down::{leftovers, DownReport};
pub use error::{LabError, Result};
pub use lab::{ClusterSource, Lab, LabGuard, LabOptions};
pub use state::{LabState, NodeState, PodState};
