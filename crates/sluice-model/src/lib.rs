//! Desired state and the pure logic around it. No I/O: every function here is unit-tested.

pub mod diff;
pub mod identity;
pub mod ipam;
pub mod lb;
pub mod maglev;
pub mod manifest;
pub mod node;
pub mod policy;
pub mod selector;
pub mod service;
pub mod slice_controller;
pub mod slices;
pub mod state;
pub mod yaml_documents;

pub use diff::{diff_maps, MapDiff};
pub use identity::{
    allocate, candidate_identities, policy_prefixes, AllocError, CidrIdentities, Claim,
    IdentityLabels, IdentityStore, IDENTITY_ANY, IDENTITY_HOST, IDENTITY_REMOTE_NODE,
    IDENTITY_WORLD,
};
pub use manifest::{
    parse_manifests, parse_manifests_reusing, ChangedObjects, Object, ObjectKind, ParsedDocuments,
    ParsedFile,
};
pub use node::NodeInfo;
pub use policy::{
    endpoint_policy, port_range_prefixes, simulate, trace, AddressKind, Direction,
    DirectionVerdict, EndpointPolicy, FlowPeer, Peer, PolicyInfo, PolicyKey, PolicyRule, PortRule,
    PortSpec, RuleRef, TraceResult,
};
pub use selector::LabelSelector;
pub use service::{Protocol, ServiceInfo};
pub use state::{ContainerPort, DesiredState, PodInfo};
