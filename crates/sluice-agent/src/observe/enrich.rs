//! A datapath event becomes a Hubble flow: numbers become names (pods, services, rules), the
//! observation point and outcome become verdict and direction, kernel time becomes wall time.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sluice_datapath::abi::{self, ip_from_be, FlowEvent};
use sluice_hubble_api::flow;

use super::directory::{EndpointMeta, FlowDirectory, RuleMeta};

/// Cilium's monitor message types (flow.event_type.type): the datapath numbers its events
/// the same way.
pub const MONITOR_DROP: i32 = abi::EVENT_DROP as i32;
pub const MONITOR_TRACE: i32 = abi::EVENT_TRACE as i32;
pub const MONITOR_POLICY_VERDICT: i32 = abi::EVENT_POLICY_VERDICT as i32;
pub const MONITOR_TRACE_SOCK: i32 = abi::EVENT_TRACE_SOCK as i32;

/// Cilium's policy match types (flow.policy_match_type).
pub const MATCH_NONE: u32 = 0;
pub const MATCH_L3_ONLY: u32 = 1;
pub const MATCH_L3_L4: u32 = 2;
pub const MATCH_L4_ONLY: u32 = 3;
pub const MATCH_ALL: u32 = 4;

/// Converts bpf_ktime_get_ns() (CLOCK_MONOTONIC) to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    /// Wall time at monotonic zero.
    epoch: SystemTime,
}

impl BootClock {
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into the struct passed.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        Self {
            epoch: SystemTime::now() - mono,
        }
    }

    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        self.epoch + Duration::from_nanos(ktime_ns)
    }
}

pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub(crate) fn observation_point(point: u8) -> flow::TraceObservationPoint {
    use flow::TraceObservationPoint as P;
    match point {
        abi::POINT_FROM_ENDPOINT => P::FromEndpoint,
        abi::POINT_TO_ENDPOINT => P::ToEndpoint,
        abi::POINT_FROM_OVERLAY => P::FromOverlay,
        abi::POINT_TO_OVERLAY => P::ToOverlay,
        abi::POINT_FROM_NETDEV => P::FromNetwork,
        _ => P::UnknownPoint,
    }
}

fn endpoint(meta: &EndpointMeta, cluster: &str) -> flow::Endpoint {
    flow::Endpoint {
        id: meta.id,
        identity: meta.identity,
        cluster_name: if meta.pod_name.is_empty() {
            String::new()
        } else {
            cluster.to_string()
        },
        namespace: meta.namespace.clone(),
        labels: meta.labels.clone(),
        pod_name: meta.pod_name.clone(),
        ..Default::default()
    }
}

fn service(name: &str) -> flow::Service {
    let (namespace, name) = name.split_once('/').unwrap_or(("", name));
    flow::Service {
        name: name.to_string(),
        namespace: namespace.to_string(),
    }
}

fn l4(ev: &FlowEvent) -> Option<flow::Layer4> {
    use flow::layer4::Protocol;
    let sport = u16::from_be(ev.sport) as u32;
    let dport = u16::from_be(ev.dport) as u32;
    let protocol = match ev.proto {
        6 => Protocol::Tcp(flow::Tcp {
            source_port: sport,
            destination_port: dport,
            flags: Some(tcp_flags(ev.tcp_flags)),
        }),
        17 => Protocol::Udp(flow::Udp {
            source_port: sport,
            destination_port: dport,
        }),
        132 => Protocol::Sctp(flow::Sctp {
            source_port: sport,
            destination_port: dport,
        }),
        1 => Protocol::IcmPv4(flow::IcmPv4 {
            r#type: sport >> 8,
            code: sport & 0xff,
        }),
        _ => return None,
    };
    Some(flow::Layer4 {
        protocol: Some(protocol),
    })
}

fn tcp_flags(bits: u8) -> flow::TcpFlags {
    flow::TcpFlags {
        fin: bits & 0x01 != 0,
        syn: bits & 0x02 != 0,
        rst: bits & 0x04 != 0,
        psh: bits & 0x08 != 0,
        ack: bits & 0x10 != 0,
        urg: bits & 0x20 != 0,
        ece: bits & 0x40 != 0,
        cwr: bits & 0x80 != 0,
        ns: false,
    }
}

/// A datapath event with the names it had when it arrived. Resolving costs a few map
/// lookups and reference counts; the Hubble flow (strings, protobuf) is built only when a
/// client reads it, so a busy node does not format flows nobody asks for.
#[derive(Debug, Clone)]
pub struct Observed {
    pub ev: FlowEvent,
    pub src: Arc<EndpointMeta>,
    pub dst: Arc<EndpointMeta>,
    /// The source address shown: a socket event's pod address (the socket has not chosen
    /// one yet), else the packet's.
    pub src_ip: Option<Ipv4Addr>,
    pub service: Option<Arc<str>>,
    /// The rule that allowed a policy verdict.
    pub rule: Option<Arc<RuleMeta>>,
    pub node_name: Arc<str>,
}

fn is_sock_point(point: u8) -> bool {
    point == abi::POINT_SOCK_CONNECT || point == abi::POINT_SOCK_SENDMSG
}

/// Looks up who `ev` is about; None for events that describe nothing (no addresses, or a
/// type flows do not have).
pub fn resolve(ev: &FlowEvent, dir: &FlowDirectory) -> Option<Observed> {
    let known_type = matches!(
        ev.r#type,
        abi::EVENT_DROP | abi::EVENT_TRACE | abi::EVENT_POLICY_VERDICT | abi::EVENT_TRACE_SOCK
    );
    let is_sock = is_sock_point(ev.point);
    let saddr = ip_from_be(ev.saddr);
    let daddr = ip_from_be(ev.daddr);
    if !known_type || (!is_sock && saddr == Ipv4Addr::UNSPECIFIED && daddr == Ipv4Addr::UNSPECIFIED)
    {
        return None;
    }
    let (src, src_ip) = if is_sock {
        (
            dir.by_netns(ev.netns_cookie).unwrap_or_default(),
            dir.netns_address(ev.netns_cookie),
        )
    } else {
        (dir.endpoint(saddr), Some(saddr))
    };
    // A service: the frontend a destination was translated from, or a reply's source was
    // translated back to.
    let service = (ev.flags & (abi::EVF_SVC_DNAT | abi::EVF_SVC_REVNAT) != 0)
        .then(|| dir.service(ip_from_be(ev.svc_addr), u16::from_be(ev.svc_port), ev.proto))
        .flatten();
    let rule = (ev.r#type == abi::EVENT_POLICY_VERDICT && ev.flags & abi::EVF_POLICY_ALLOWED != 0)
        .then(|| dir.rules.get(&ev.policy_cookie).cloned())
        .flatten();
    Some(Observed {
        ev: *ev,
        src,
        dst: dir.endpoint(daddr),
        src_ip,
        service,
        rule,
        node_name: dir.node_name.clone(),
    })
}

/// When `o` happened, in wall-clock time.
pub fn flow_time(o: &Observed, clock: &BootClock) -> prost_types::Timestamp {
    timestamp(clock.wall(o.ev.ktime_ns))
}

/// The Hubble flow for a resolved event.
pub fn to_flow(o: &Observed, clock: &BootClock, cluster: &str) -> flow::Flow {
    let ev = &o.ev;
    let is_sock = is_sock_point(ev.point);
    let mut f = flow::Flow {
        time: Some(flow_time(o, clock)),
        uuid: uuid(ev),
        node_name: o.node_name.to_string(),
        r#type: flow::FlowType::L3L4 as i32,
        ..Default::default()
    };
    f.ip = Some(flow::Ip {
        source: o.src_ip.map(|a| a.to_string()).unwrap_or_default(),
        destination: ip_from_be(ev.daddr).to_string(),
        ip_version: flow::IpVersion::IPv4 as i32,
        ..Default::default()
    });
    f.l4 = l4(ev);
    f.source = Some(endpoint(&o.src, cluster));
    f.destination = Some(endpoint(&o.dst, cluster));
    if let Some(name) = &o.service {
        if ev.flags & abi::EVF_SVC_DNAT != 0 {
            f.destination_service = Some(service(name));
        } else {
            f.source_service = Some(service(name));
        }
    }

    let reply_known = ev.flags & abi::EVF_REPLY_KNOWN != 0;
    let is_reply = ev.flags & abi::EVF_REPLY != 0;
    if reply_known {
        f.is_reply = Some(is_reply);
        f.reply = is_reply;
    }
    f.interface = (ev.ifindex != 0).then(|| flow::NetworkInterface {
        index: ev.ifindex,
        name: String::new(),
    });

    f.verdict = verdict(ev) as i32;
    match ev.r#type {
        abi::EVENT_DROP => {
            f.drop_reason = ev.reason as u32;
            f.drop_reason_desc = ev.reason as i32;
            f.event_type = Some(flow::CiliumEventType {
                r#type: MONITOR_DROP,
                sub_type: ev.reason as i32,
            });
            if is_sock {
                f.r#type = flow::FlowType::Sock as i32;
            }
            f.traffic_direction = direction(ev.point, reply_known && is_reply) as i32;
        }
        abi::EVENT_TRACE => {
            let point = observation_point(ev.point);
            f.trace_observation_point = point as i32;
            f.event_type = Some(flow::CiliumEventType {
                r#type: MONITOR_TRACE,
                sub_type: point as i32,
            });
            f.traffic_direction = direction(ev.point, reply_known && is_reply) as i32;
        }
        abi::EVENT_POLICY_VERDICT => {
            let allowed = ev.flags & abi::EVF_POLICY_ALLOWED != 0;
            let ingress = ev.policy_dir == abi::POLICY_INGRESS;
            if !allowed {
                f.drop_reason = ev.reason as u32;
                f.drop_reason_desc = ev.reason as i32;
            }
            f.event_type = Some(flow::CiliumEventType {
                r#type: MONITOR_POLICY_VERDICT,
                sub_type: 0,
            });
            f.traffic_direction = if ingress {
                flow::TrafficDirection::Ingress
            } else {
                flow::TrafficDirection::Egress
            } as i32;
            f.policy_match_type = match_type(ev, allowed);
            if allowed {
                if let Some(rule) = &o.rule {
                    let p = flow::Policy {
                        name: rule.name.clone(),
                        namespace: rule.namespace.clone(),
                        labels: vec![rule.description.clone()],
                        ..Default::default()
                    };
                    if ingress {
                        f.ingress_allowed_by.push(p);
                    } else {
                        f.egress_allowed_by.push(p);
                    }
                }
            }
        }
        abi::EVENT_TRACE_SOCK => {
            f.r#type = flow::FlowType::Sock as i32;
            f.sock_xlate_point =
                flow::SocketTranslationPoint::SockXlatePointPostDirectionFwd as i32;
            f.socket_cookie = ev.sock_cookie;
            f.event_type = Some(flow::CiliumEventType {
                r#type: MONITOR_TRACE_SOCK,
                sub_type: 0,
            });
            f.traffic_direction = flow::TrafficDirection::Egress as i32;
        }
        // resolve() lets no other type through.
        _ => {}
    }
    f
}

/// A flow's verdict: drops and denied policy verdicts are dropped, socket translations
/// translated, the rest forwarded.
pub(crate) fn verdict(ev: &FlowEvent) -> flow::Verdict {
    match ev.r#type {
        abi::EVENT_DROP => flow::Verdict::Dropped,
        abi::EVENT_POLICY_VERDICT if ev.flags & abi::EVF_POLICY_ALLOWED == 0 => {
            flow::Verdict::Dropped
        }
        abi::EVENT_TRACE_SOCK => flow::Verdict::Translated,
        _ => flow::Verdict::Forwarded,
    }
}

/// From the endpoint's point of view: leaving it is egress unless it answers a connection
/// that came in (and the other way round).
fn direction(point: u8, is_reply: bool) -> flow::TrafficDirection {
    use flow::TrafficDirection as D;
    let leaving = match point {
        abi::POINT_FROM_ENDPOINT | abi::POINT_SOCK_CONNECT | abi::POINT_SOCK_SENDMSG => true,
        abi::POINT_TO_ENDPOINT => false,
        _ => return D::Unknown,
    };
    match (leaving, is_reply) {
        (true, false) | (false, true) => D::Egress,
        _ => D::Ingress,
    }
}

pub(crate) fn match_type(ev: &FlowEvent, allowed: bool) -> u32 {
    if !allowed {
        return MATCH_NONE;
    }
    let any_peer = ev.policy_identity == abi::IDENTITY_ANY;
    let l4 = ev.flags & abi::EVF_POLICY_L4 != 0;
    match (any_peer, l4) {
        (true, false) => MATCH_ALL,
        (true, true) => MATCH_L4_ONLY,
        (false, false) => MATCH_L3_ONLY,
        (false, true) => MATCH_L3_L4,
    }
}

/// A unique id per event: time, point, type and the tuple's hash.
fn uuid(ev: &FlowEvent) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        ev.saddr, ev.daddr, ev.sport, ev.dport, ev.proto, ev.point, ev.r#type,
    )
        .hash(&mut h);
    ev.sock_cookie.hash(&mut h);
    let a = h.finish();
    let t = ev.ktime_ns;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (t >> 32) as u32,
        (t >> 16) as u16,
        (t & 0xfff) as u16,
        (a >> 48) as u16 & 0xfff,
        a & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::directory::{pod_labels, RuleMeta};
    use sluice_datapath::abi::ip_to_be;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 7);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    fn directory() -> FlowDirectory {
        let mut d = FlowDirectory {
            node_name: "n1".into(),
            ..Default::default()
        };
        for (ip, ns, name, id) in [(A, "x", "a", 300), (B, "y", "b", 301)] {
            d.endpoints.insert(
                ip,
                Arc::new(EndpointMeta {
                    id: 3,
                    identity: id,
                    namespace: ns.into(),
                    pod_name: name.into(),
                    labels: pod_labels(ns, &Default::default()),
                    node_name: "n1".into(),
                }),
            );
        }
        d.frontends.insert((VIP, 80, 6), "y/web".into());
        d.netns.insert(99, A);
        d.rules.insert(
            4,
            Arc::new(RuleMeta {
                namespace: "y".into(),
                name: "allow-x".into(),
                description: "NetworkPolicy y/allow-x rule ingress[0]".into(),
            }),
        );
        d
    }

    fn event(kind: u8, point: u8) -> FlowEvent {
        FlowEvent {
            ktime_ns: 1_000,
            r#type: kind,
            point,
            proto: 6,
            tcp_flags: 0x02,
            saddr: ip_to_be(A),
            daddr: ip_to_be(B),
            sport: 40000u16.to_be(),
            dport: 8080u16.to_be(),
            ifindex: 3,
            ..Default::default()
        }
    }

    fn flow(ev: &FlowEvent) -> flow::Flow {
        let observed = resolve(ev, &directory()).expect("a flow");
        to_flow(&observed, &BootClock::now(), "default")
    }

    #[test]
    fn a_trace_names_both_pods_and_the_service() {
        let mut ev = event(abi::EVENT_TRACE, abi::POINT_FROM_ENDPOINT);
        ev.flags = abi::EVF_REPLY_KNOWN | abi::EVF_SVC_DNAT;
        ev.svc_addr = ip_to_be(VIP);
        ev.svc_port = 80u16.to_be();
        let f = flow(&ev);
        assert_eq!(f.verdict, flow::Verdict::Forwarded as i32);
        let (src, dst) = (f.source.unwrap(), f.destination.unwrap());
        assert_eq!((src.namespace.as_str(), src.pod_name.as_str()), ("x", "a"));
        assert_eq!((dst.identity, dst.pod_name.as_str()), (301, "b"));
        assert_eq!(f.destination_service.unwrap().name, "web");
        assert_eq!(f.is_reply, Some(false));
        assert_eq!(f.traffic_direction, flow::TrafficDirection::Egress as i32);
        assert_eq!(
            f.trace_observation_point,
            flow::TraceObservationPoint::FromEndpoint as i32
        );
        let Some(flow::layer4::Protocol::Tcp(tcp)) = f.l4.unwrap().protocol else {
            panic!("TCP")
        };
        assert_eq!((tcp.source_port, tcp.destination_port), (40000, 8080));
        assert!(tcp.flags.unwrap().syn);
    }

    #[test]
    fn a_reply_into_an_endpoint_belongs_to_its_egress_connection() {
        let mut ev = event(abi::EVENT_TRACE, abi::POINT_TO_ENDPOINT);
        ev.flags = abi::EVF_REPLY_KNOWN | abi::EVF_REPLY;
        let f = flow(&ev);
        assert_eq!(f.is_reply, Some(true));
        assert_eq!(f.traffic_direction, flow::TrafficDirection::Egress as i32);
        // Unknown at the overlay: left unset, as Hubble does.
        let f = flow(&event(abi::EVENT_TRACE, abi::POINT_FROM_OVERLAY));
        assert_eq!(f.is_reply, None);
    }

    #[test]
    fn drops_and_policy_verdicts_carry_reason_rule_and_match_type() {
        let mut ev = event(abi::EVENT_DROP, abi::POINT_TO_ENDPOINT);
        ev.reason = abi::DROP_POLICY_DENIED;
        let f = flow(&ev);
        assert_eq!(f.verdict, flow::Verdict::Dropped as i32);
        assert_eq!(f.drop_reason_desc, flow::DropReason::PolicyDenied as i32);
        assert_eq!(f.event_type.unwrap().sub_type, 133);

        let mut ev = event(abi::EVENT_POLICY_VERDICT, abi::POINT_TO_ENDPOINT);
        ev.policy_dir = abi::POLICY_INGRESS;
        ev.flags = abi::EVF_POLICY_ALLOWED | abi::EVF_POLICY_L4;
        ev.policy_identity = 300;
        ev.policy_cookie = 4;
        let f = flow(&ev);
        assert_eq!(f.verdict, flow::Verdict::Forwarded as i32);
        assert_eq!(f.policy_match_type, MATCH_L3_L4);
        assert_eq!(f.ingress_allowed_by[0].name, "allow-x");
        assert_eq!(f.traffic_direction, flow::TrafficDirection::Ingress as i32);
        ev.policy_identity = abi::IDENTITY_ANY;
        ev.flags = abi::EVF_POLICY_ALLOWED;
        assert_eq!(flow(&ev).policy_match_type, MATCH_ALL);
        ev.flags = 0;
        ev.reason = abi::DROP_POLICY_DENIED;
        let denied = flow(&ev);
        assert_eq!(denied.verdict, flow::Verdict::Dropped as i32);
        assert!(denied.ingress_allowed_by.is_empty());
    }

    #[test]
    fn a_socket_translation_names_the_pod_by_its_namespace_cookie() {
        let mut ev = event(abi::EVENT_TRACE_SOCK, abi::POINT_SOCK_CONNECT);
        ev.saddr = 0;
        ev.sport = 0;
        ev.netns_cookie = 99;
        ev.flags = abi::EVF_SVC_DNAT;
        ev.svc_addr = ip_to_be(VIP);
        ev.svc_port = 80u16.to_be();
        let f = flow(&ev);
        assert_eq!(f.r#type, flow::FlowType::Sock as i32);
        assert_eq!(f.verdict, flow::Verdict::Translated as i32);
        assert_eq!(f.source.unwrap().pod_name, "a");
        assert_eq!(f.ip.unwrap().source, "10.0.0.5");
        assert_eq!(f.destination_service.unwrap().namespace, "y");
    }

    #[test]
    fn an_event_without_addresses_is_not_a_flow() {
        let mut ev = event(abi::EVENT_TRACE, abi::POINT_FROM_ENDPOINT);
        ev.saddr = 0;
        ev.daddr = 0;
        assert!(resolve(&ev, &directory()).is_none());
        let mut ev = event(abi::EVENT_TRACE, abi::POINT_FROM_ENDPOINT);
        ev.r#type = 200;
        assert!(
            resolve(&ev, &directory()).is_none(),
            "an unknown event type"
        );
    }
}
