//! Rust mirrors of `bpf/include/sluice/abi.h`. `tests/abi_layout.rs` compares each struct's size
//! and field offsets with the BTF of the compiled objects, so the two cannot drift silently.
//! Addresses are stored in network byte order, exactly as the datapath reads them.

use std::net::Ipv4Addr;

pub const ROUTING_NATIVE: u32 = 0;
pub const ROUTING_VXLAN: u32 = 1;

pub const POINT_FROM_ENDPOINT: u8 = 1;
pub const POINT_TO_ENDPOINT: u8 = 2;
pub const POINT_FROM_OVERLAY: u8 = 3;
pub const POINT_TO_OVERLAY: u8 = 4;
pub const POINT_FROM_NETDEV: u8 = 5;
/// One more than the largest point (abi.h SLUICE_POINTS).
pub const POINTS: u32 = 8;
/// Outcome slots per point in the plain counters (abi.h SLUICE_OUTCOMES).
pub const OUTCOMES: u32 = 16;

pub const OUTCOME_TO_STACK: u8 = 1;
pub const OUTCOME_REDIRECT: u8 = 2;
pub const OUTCOME_ENCAP: u8 = 3;
pub const OUTCOME_DROP: u8 = 4;

pub const DROP_INVALID_SOURCE_IP: u16 = 132;
pub const DROP_POLICY_DENIED: u16 = 133;
pub const DROP_INVALID_PACKET: u16 = 134;
pub const DROP_CT_INSERT_FAILED: u16 = 155;
pub const DROP_NO_SERVICE_BACKEND: u16 = 158;
pub const DROP_NO_TUNNEL_ENDPOINT: u16 = 160;
pub const DROP_FIB_LOOKUP_FAILED: u16 = 169;

pub const OUTCOME_DNAT: u8 = 5;
pub const OUTCOME_REVNAT: u8 = 6;
pub const OUTCOME_ROUTED: u8 = 7;
pub const OUTCOME_REJECT: u8 = 8;
pub const OUTCOME_POLICY_ALLOWED: u8 = 9;

pub const SVC_AFFINITY: u16 = 0x1;
pub const SVC_EXTERNAL: u16 = 0x2;
pub const SVC_MAGLEV: u16 = 0x4;
pub const MAGLEV_DEFAULT_SIZE: u32 = 16381;

/// Source given to a pod's packets when it reaches itself through a service.
pub const HAIRPIN_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 42, 1);

pub const CT_SERVICE: u8 = 0;
pub const CT_REPLY: u8 = 1;
/// Policy: a local endpoint's connection, keyed from its side.
pub const CT_ENDPOINT: u8 = 2;
/// Written by older datapaths: a connection to a local endpoint, keyed as received.
pub const CT_LEGACY_INGRESS: u8 = 3;
/// Ct4Entry.flags of CT_ENDPOINT entries: the connection was opened towards the endpoint.
pub const CT_F_ADMITTED_INGRESS: u16 = 0x1;
pub const CT_F_NOT_TRANSLATED: u16 = 0x2;
pub const CT_F_PEER_ADMITTED: u16 = 0x4;

pub const IDENTITY_ANY: u32 = 0;
pub const IDENTITY_HOST: u32 = 1;
pub const IDENTITY_WORLD: u32 = 2;
pub const IDENTITY_REMOTE_NODE: u32 = 6;

pub const EP_INGRESS_ISOLATED: u32 = 0x1;
pub const EP_EGRESS_ISOLATED: u32 = 0x2;

pub const POLICY_INGRESS: u8 = 0;
pub const POLICY_EGRESS: u8 = 1;
pub const VERDICT_ALLOW: u8 = 1;
/// Bits of a policy key after its prefix length (endpoint, identity, direction, proto, port).
pub const POLICY_FULL_PREFIX: u32 = 96;
pub const POLICY_ENTRY_L4: u8 = 0x1;

pub const EVENT_DROP: u8 = 1;
pub const EVENT_TRACE: u8 = 4;
pub const EVENT_POLICY_VERDICT: u8 = 5;
pub const EVENT_TRACE_SOCK: u8 = 7;
pub const POINT_SOCK_CONNECT: u8 = 6;
pub const POINT_SOCK_SENDMSG: u8 = 7;

pub const AGGREGATION_NONE: u8 = 0;
pub const AGGREGATION_MEDIUM: u8 = 1;

pub const EVF_REPLY: u8 = 0x1;
pub const EVF_REPLY_KNOWN: u8 = 0x2;
pub const EVF_SVC_DNAT: u8 = 0x4;
pub const EVF_SVC_REVNAT: u8 = 0x8;
pub const EVF_POLICY_ALLOWED: u8 = 0x10;
pub const EVF_POLICY_L4: u8 = 0x20;

/// The address as the datapath stores it (network byte order in a native u32).
pub fn ip_to_be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub fn ip_from_be(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EndpointKey {
    pub ip: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    pub ifindex: u32,
    pub pod_mac: [u8; 6],
    pub host_mac: [u8; 6],
    pub flags: u32,
    pub identity: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TunnelKey {
    pub prefixlen: u32,
    pub ip: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TunnelInfo {
    pub node_ip: u32,
    pub node_mac: [u8; 6],
    pub flags: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    pub routing_mode: u32,
    pub vxlan_ifindex: u32,
    pub vxlan_mac: [u8; 6],
    pub reserved: u16,
    pub node_ip: u32,
    pub vni: u32,
    pub maglev_size: u32,
    pub policy_revision: u32,
    pub monitor_aggregation: u8,
    pub pad: [u8; 3],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MetricsKey {
    pub point: u8,
    pub outcome: u8,
    pub reason: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsValue {
    pub packets: u64,
    pub bytes: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Lb4Key {
    pub address: u32,
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
    pub slot: u16,
    pub pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lb4Service {
    pub backend_id: u32,
    pub count: u16,
    pub flags: u16,
    pub rev_nat_id: u32,
    pub affinity_timeout: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Lb4Backend {
    pub address: u32,
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lb4RevNat {
    pub address: u32,
    pub port: u16,
    pub pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ct4Key {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ct4Entry {
    pub last_seen_ns: u64,
    pub nat_address: u32,
    pub nat_port: u16,
    pub flags: u16,
    pub rev_nat_id: u32,
    pub backend_id: u32,
    pub alt_address: u32,
    pub policy_revision: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Lb4AffinityKey {
    pub client: u32,
    pub rev_nat_id: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lb4Affinity {
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IpcacheKey {
    pub prefixlen: u32,
    pub ip: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpcacheInfo {
    pub identity: u32,
    pub node_ip: u32,
}

/// The whole LPM key as C declares it (for the layout test); maps use `PolicyKeyData`
/// behind aya's `Key` (which adds the prefix length).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PolicyKey {
    pub prefixlen: u32,
    pub endpoint: u32,
    pub identity: u32,
    pub direction: u8,
    pub proto: u8,
    pub dport: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct PolicyKeyData {
    pub endpoint: u32,
    pub identity: u32,
    pub direction: u8,
    pub proto: u8,
    pub dport: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyEntry {
    pub verdict: u8,
    pub flags: u8,
    pub proxy_port: u16,
    pub cookie: u32,
}

/// One event of the sluice_events ring buffer (see abi.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowEvent {
    pub ktime_ns: u64,
    pub sock_cookie: u64,
    pub netns_cookie: u64,
    pub ifindex: u32,
    pub len: u32,
    pub r#type: u8,
    pub point: u8,
    pub outcome: u8,
    pub proto: u8,
    pub reason: u16,
    pub tcp_flags: u8,
    pub flags: u8,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub svc_addr: u32,
    pub svc_port: u16,
    pub policy_dir: u8,
    pub pad: u8,
    pub policy_identity: u32,
    pub policy_cookie: u32,
}

impl FlowEvent {
    /// Reads an event from ring-buffer bytes; None when they are too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<FlowEvent> {
        if bytes.len() < std::mem::size_of::<FlowEvent>() {
            return None;
        }
        // SAFETY: FlowEvent is plain repr(C) data for which any bit pattern is valid, and
        // the length was checked; read_unaligned copes with the buffer's alignment.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const FlowEvent) })
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventsLost {
    pub events: u64,
}

// SAFETY: plain #[repr(C)] data with no padding-sensitive invariants; any bit pattern is valid.
unsafe impl aya::Pod for EndpointKey {}
unsafe impl aya::Pod for EndpointInfo {}
unsafe impl aya::Pod for TunnelKey {}
unsafe impl aya::Pod for TunnelInfo {}
unsafe impl aya::Pod for DatapathConfig {}
unsafe impl aya::Pod for MetricsKey {}
unsafe impl aya::Pod for MetricsValue {}
unsafe impl aya::Pod for Lb4Key {}
unsafe impl aya::Pod for Lb4Service {}
unsafe impl aya::Pod for Lb4Backend {}
unsafe impl aya::Pod for Lb4RevNat {}
unsafe impl aya::Pod for Ct4Key {}
unsafe impl aya::Pod for Ct4Entry {}
unsafe impl aya::Pod for Lb4AffinityKey {}
unsafe impl aya::Pod for Lb4Affinity {}
unsafe impl aya::Pod for IpcacheInfo {}
unsafe impl aya::Pod for PolicyKeyData {}
unsafe impl aya::Pod for PolicyEntry {}
unsafe impl aya::Pod for EventsLost {}

/// One shared struct's layout: (C struct name, size, [(field, offset, size)]).
pub type Layout = (&'static str, usize, Vec<(&'static str, usize, usize)>);

/// Every shared struct's layout: what the layout test compares against the objects' BTF.
pub fn layouts() -> Vec<Layout> {
    macro_rules! layout {
        ($c:literal, $t:ty, [$($f:ident),*]) => {
            ($c, std::mem::size_of::<$t>(), vec![$((
                stringify!($f).trim_start_matches("r#"),
                std::mem::offset_of!($t, $f),
                {
                    let v: $t = Default::default();
                    std::mem::size_of_val(&v.$f)
                },
            )),*])
        };
    }
    vec![
        layout!("endpoint_key", EndpointKey, [ip]),
        layout!(
            "endpoint_info",
            EndpointInfo,
            [ifindex, pod_mac, host_mac, flags, identity]
        ),
        layout!("tunnel_key", TunnelKey, [prefixlen, ip]),
        layout!("tunnel_info", TunnelInfo, [node_ip, node_mac, flags]),
        layout!(
            "datapath_config",
            DatapathConfig,
            [
                routing_mode,
                vxlan_ifindex,
                vxlan_mac,
                reserved,
                node_ip,
                vni,
                maglev_size,
                policy_revision,
                monitor_aggregation,
                pad
            ]
        ),
        layout!("metrics_key", MetricsKey, [point, outcome, reason]),
        layout!("metrics_value", MetricsValue, [packets, bytes]),
        layout!("lb4_key", Lb4Key, [address, port, proto, scope, slot, pad]),
        layout!(
            "lb4_service",
            Lb4Service,
            [backend_id, count, flags, rev_nat_id, affinity_timeout]
        ),
        layout!("lb4_backend", Lb4Backend, [address, port, proto, flags]),
        layout!("lb4_revnat", Lb4RevNat, [address, port, pad]),
        layout!(
            "ct4_key",
            Ct4Key,
            [saddr, daddr, sport, dport, proto, dir, pad]
        ),
        layout!(
            "ct4_entry",
            Ct4Entry,
            [
                last_seen_ns,
                nat_address,
                nat_port,
                flags,
                rev_nat_id,
                backend_id,
                alt_address,
                policy_revision
            ]
        ),
        layout!("lb4_affinity_key", Lb4AffinityKey, [client, rev_nat_id]),
        layout!("lb4_affinity", Lb4Affinity, [last_used_ns, backend_id, pad]),
        layout!("ipcache_key", IpcacheKey, [prefixlen, ip]),
        layout!("ipcache_info", IpcacheInfo, [identity, node_ip]),
        layout!(
            "policy_key",
            PolicyKey,
            [prefixlen, endpoint, identity, direction, proto, dport]
        ),
        layout!(
            "policy_entry",
            PolicyEntry,
            [verdict, flags, proxy_port, cookie]
        ),
        layout!(
            "flow_event",
            FlowEvent,
            [
                ktime_ns,
                sock_cookie,
                netns_cookie,
                ifindex,
                len,
                r#type,
                point,
                outcome,
                proto,
                reason,
                tcp_flags,
                flags,
                saddr,
                daddr,
                sport,
                dport,
                svc_addr,
                svc_port,
                policy_dir,
                pad,
                policy_identity,
                policy_cookie
            ]
        ),
        layout!("events_lost", EventsLost, [events]),
    ]
}
