//! The compiled BPF objects, embedded at build time (see build.rs).

use aya::include_bytes_aligned;

/// tc programs for the host side of each pod veth: `from_container`, `to_container`.
pub static ENDPOINT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/endpoint.bpf.o"));
/// tc programs for the VXLAN device: `from_overlay`, `to_overlay`.
pub static OVERLAY: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay.bpf.o"));

pub const MAP_ENDPOINTS: &str = "sluice_endpoints";
pub const MAP_TUNNELS: &str = "sluice_tunnels";
pub const MAP_CONFIG: &str = "sluice_config";
pub const MAP_METRICS: &str = "sluice_metrics";
/// Counters without a reason, indexed `point * OUTCOMES + outcome`.
pub const MAP_METRICS_PLAIN: &str = "sluice_metrics_plain";
/// tc program for the node's uplink: `from_netdev`.
pub static HOST: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/host.bpf.o"));
/// cgroup socket-LB programs: `sock_connect4`, `sock_sendmsg4`, `sock_recvmsg4`,
/// `sock_getpeername4`.
pub static SOCK: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock.bpf.o"));
pub const MAP_EVENTS: &str = "sluice_events";
pub const MAP_EVENTS_LOST: &str = "sluice_events_lost";
