//! Desired state and the pure logic around it. No I/O: every function here is unit-tested.

pub mod diff;
pub mod ipam;
pub mod lb;
pub mod maglev;
pub mod manifest;
pub mod node;
pub mod service;
pub mod slices;
pub mod state;

pub use diff::{diff_maps, MapDiff};
pub use manifest::{parse_manifests, Object};
pub use node::NodeInfo;
pub use service::{Protocol, ServiceInfo};
pub use state::{ContainerPort, DesiredState, PodInfo};
