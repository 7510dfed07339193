//! Service translation in the endpoint programs, run with BPF_PROG_TEST_RUN: frontend to
//! backend with connection tracking, the reverse translation of replies, affinity, and the
//! drop when a service has no backend.

mod common;

use std::net::Ipv4Addr;

use common::{checksum, packet, parse, require_root, run, TestDatapath};
use sluice_datapath::abi::*;
use sluice_datapath::testrun::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};
use sluice_datapath::EndpointInfo;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 5);
const LOCAL_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 6);
const REMOTE_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 20, 1, 7);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const LO: u32 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;

fn be(ip: Ipv4Addr) -> u32 {
    ip_to_be(ip)
}

/// The flags of `local`'s policy entry for its connection with `peer` (keyed from its side).
fn endpoint_flags(
    ct: &[(Ct4Key, Ct4Entry)],
    local: (Ipv4Addr, u16),
    peer: (Ipv4Addr, u16),
) -> Option<u16> {
    ct.iter()
        .find(|(k, _)| {
            k.dir == CT_ENDPOINT
                && (k.saddr, k.sport) == (be(local.0), local.1.to_be())
                && (k.daddr, k.dport) == (be(peer.0), peer.1.to_be())
        })
        .map(|(_, e)| e.flags)
}

fn key(vip: Ipv4Addr, port: u16, proto: u8, slot: u16) -> Lb4Key {
    Lb4Key {
        address: be(vip),
        port: port.to_be(),
        proto,
        slot,
        ..Default::default()
    }
}

/// VIP:80/TCP and VIP:53/UDP -> both backends (port 8080 / 5353); EMPTY_VIP:80 has none.
fn setup(t: &mut TestDatapath, affinity: bool) {
    t.dp.upsert_endpoint(
        CLIENT,
        EndpointInfo {
            ifindex: LO,
            ..Default::default()
        },
    )
    .unwrap();
    t.dp.upsert_endpoint(
        LOCAL_BACKEND,
        EndpointInfo {
            ifindex: 77,
            ..Default::default()
        },
    )
    .unwrap();
    let lb = t.dp.lb();
    for (id, (addr, port, proto)) in [
        (1, (LOCAL_BACKEND, 8080, TCP)),
        (2, (REMOTE_BACKEND, 8080, TCP)),
        (3, (LOCAL_BACKEND, 5353, UDP)),
        (4, (REMOTE_BACKEND, 5353, UDP)),
    ] {
        lb.set_backend(
            id,
            Lb4Backend {
                address: be(addr),
                port: u16::to_be(port),
                proto,
                flags: 0,
            },
        )
        .unwrap();
    }
    let flags = if affinity { SVC_AFFINITY } else { 0 };
    for (rev, port, proto, ids) in [(10u32, 80u16, TCP, [1u32, 2]), (11, 53, UDP, [3, 4])] {
        lb.set_slot(
            key(VIP, port, proto, 0),
            Lb4Service {
                count: 2,
                flags,
                rev_nat_id: rev,
                affinity_timeout: 60,
                ..Default::default()
            },
        )
        .unwrap();
        for (slot, id) in ids.iter().enumerate() {
            lb.set_slot(
                key(VIP, port, proto, slot as u16 + 1),
                Lb4Service {
                    backend_id: *id,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        lb.set_revnat(
            rev,
            Lb4RevNat {
                address: be(VIP),
                port: port.to_be(),
                pad: 0,
            },
        )
        .unwrap();
    }
    lb.set_slot(
        key(EMPTY_VIP, 80, TCP, 0),
        Lb4Service {
            count: 0,
            rev_nat_id: 12,
            ..Default::default()
        },
    )
    .unwrap();
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

#[test]
fn a_connection_is_translated_tracked_and_its_replies_reversed() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, false);
    let syn = packet(TCP, (CLIENT, 40000), (VIP, 80), SYN, true);
    let out = run(&mut t, sluice_datapath::FROM_CONTAINER, &syn);
    let p = parse(&out.packet);
    assert!(p.ip_ok && p.l4_ok, "checksums stay valid after DNAT");
    assert_eq!(p.src, (CLIENT, 40000));
    assert!(
        p.dst == (LOCAL_BACKEND, 8080) || p.dst == (REMOTE_BACKEND, 8080),
        "{:?}",
        p.dst
    );
    let expect = if p.dst.0 == LOCAL_BACKEND {
        TC_ACT_REDIRECT
    } else {
        TC_ACT_OK
    };
    assert_eq!(out.retval, expect);
    let backend = p.dst;

    // The rest of the connection sticks to the same backend.
    for _ in 0..20 {
        let out = run(
            &mut t,
            sluice_datapath::FROM_CONTAINER,
            &packet(TCP, (CLIENT, 40000), (VIP, 80), ACK, true),
        );
        assert_eq!(parse(&out.packet).dst, backend);
    }

    // The backend's reply reaches the client as if from the frontend.
    let reply = packet(TCP, backend, (CLIENT, 40000), SYN | ACK, true);
    let out = run(&mut t, sluice_datapath::TO_CONTAINER, &reply);
    assert_eq!(out.retval, TC_ACT_OK);
    let p = parse(&out.packet);
    assert_eq!(p.src, (VIP, 80));
    assert!(p.ip_ok && p.l4_ok, "checksums stay valid after reverse NAT");

    let ct = t.dp.lb_ref().conntrack().unwrap();
    let count = |dir| ct.iter().filter(|(k, _)| k.dir == dir).count();
    assert_eq!(
        (count(CT_SERVICE), count(CT_REPLY)),
        (1, 1),
        "one forward and one reply entry: {ct:?}"
    );
    // Policy tracks it too, once per local endpoint and from that endpoint's side: the
    // client's egress, and a backend of this node's ingress (judged inline as it is handed
    // over; then both entries know the other admitted it).
    let tracked = |local: (Ipv4Addr, u16), peer: (Ipv4Addr, u16), flags: u16| {
        endpoint_flags(&ct, local, peer) == Some(flags)
    };
    let local_backend = backend.0 == LOCAL_BACKEND;
    let peer_admitted = if local_backend { CT_F_PEER_ADMITTED } else { 0 };
    assert!(
        tracked((CLIENT, 40000), backend, peer_admitted),
        "the client's connection: {ct:?}"
    );
    assert_eq!(
        tracked(
            backend,
            (CLIENT, 40000),
            CT_F_ADMITTED_INGRESS | peer_admitted
        ),
        local_backend,
        "the backend's side, when it is on this node: {ct:?}"
    );
    assert_eq!(
        count(CT_ENDPOINT),
        1 + local_backend as usize,
        "nothing else is tracked: {ct:?}"
    );
}

#[test]
fn new_connections_spread_over_backends() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, false);
    let mut seen = std::collections::BTreeSet::new();
    for sport in 41000..41040 {
        let out = run(
            &mut t,
            sluice_datapath::FROM_CONTAINER,
            &packet(TCP, (CLIENT, sport), (VIP, 80), SYN, true),
        );
        seen.insert(parse(&out.packet).dst);
    }
    assert_eq!(
        seen.len(),
        2,
        "40 connections all landed on one backend: {seen:?}"
    );
}

#[test]
fn client_ip_affinity_pins_every_connection_to_one_backend() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, true);
    let mut seen = std::collections::BTreeSet::new();
    for sport in 42000..42030 {
        let out = run(
            &mut t,
            sluice_datapath::FROM_CONTAINER,
            &packet(TCP, (CLIENT, sport), (VIP, 80), SYN, true),
        );
        seen.insert(parse(&out.packet).dst);
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(t.dp.lb_ref().affinities().unwrap().len(), 1);
}

#[test]
fn udp_with_and_without_checksum() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, false);
    let out = run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &packet(UDP, (CLIENT, 5000), (VIP, 53), 0, true),
    );
    let p = parse(&out.packet);
    assert_eq!(p.dst.1, 5353);
    assert!(p.ip_ok && p.l4_ok && p.l4_csum != 0);
    let out = run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &packet(UDP, (CLIENT, 5001), (VIP, 53), 0, false),
    );
    let p = parse(&out.packet);
    assert_eq!(p.dst.1, 5353);
    assert_eq!(p.l4_csum, 0, "a UDP packet without checksum stays without");
}

#[test]
fn a_service_without_backends_rejects_tcp_and_udp() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, false);
    let syn = packet(TCP, (CLIENT, 40000), (EMPTY_VIP, 80), SYN, true);
    let out = run(&mut t, sluice_datapath::FROM_CONTAINER, &syn);
    assert_eq!(
        out.retval, TC_ACT_REDIRECT,
        "the answer goes straight back to the pod"
    );
    let p = parse(&out.packet);
    assert_eq!(
        (p.src, p.dst),
        ((EMPTY_VIP, 80), (CLIENT, 40000)),
        "as if from the closed port"
    );
    assert!(p.ip_ok && p.l4_ok, "checksums valid");
    let tcp = &out.packet[34..];
    assert_eq!(tcp[13], 0x14, "RST|ACK");
    let seq_in = u32::from_be_bytes(syn[38..42].try_into().unwrap());
    // The test SYN carries 4 bytes of data: the RST acknowledges them with the SYN.
    assert_eq!(
        u32::from_be_bytes(tcp[8..12].try_into().unwrap()),
        seq_in + 1 + 4,
        "acknowledges the SYN"
    );
    assert_eq!(u32::from_be_bytes(tcp[4..8].try_into().unwrap()), 0);
    assert_eq!(
        (&out.packet[0..6], &out.packet[6..12]),
        (&syn[6..12], &syn[0..6]),
        "MACs swapped"
    );

    // UDP: ICMP port unreachable from the frontend, quoting the datagram's headers.
    t.dp.lb()
        .set_slot(
            key(EMPTY_VIP, 80, UDP, 0),
            Lb4Service {
                count: 0,
                rev_nat_id: 14,
                ..Default::default()
            },
        )
        .unwrap();
    let datagram = packet(UDP, (CLIENT, 5000), (EMPTY_VIP, 80), 0, true);
    let out = run(&mut t, sluice_datapath::FROM_CONTAINER, &datagram);
    assert_eq!(
        out.retval, TC_ACT_REDIRECT,
        "the error goes back to the pod"
    );
    let icmp = &out.packet;
    assert_eq!(
        icmp.len(),
        14 + 20 + 8 + 20 + 8,
        "Ethernet + IP + ICMP + quoted IP + 8 bytes"
    );
    assert_eq!(
        (&icmp[0..6], &icmp[6..12]),
        (&datagram[6..12], &datagram[0..6]),
        "MACs swapped"
    );
    let ip = &icmp[14..34];
    assert_eq!(checksum(ip), 0, "IP header checksum");
    assert_eq!(ip[9], 1, "ICMP");
    assert_eq!(&ip[12..16], &EMPTY_VIP.octets(), "from the frontend");
    assert_eq!(&ip[16..20], &CLIENT.octets(), "to the client");
    let body = &icmp[34..];
    assert_eq!((body[0], body[1]), (3, 3), "destination unreachable: port");
    assert_eq!(checksum(body), 0, "ICMP checksum");
    assert_eq!(
        &body[8..36],
        &datagram[14..42],
        "quotes the datagram's IP and UDP headers"
    );
    let counted = |outcome| {
        t.dp.metrics()
            .unwrap()
            .into_iter()
            .find(|(k, _)| k.outcome == outcome && k.reason == DROP_NO_SERVICE_BACKEND)
            .map(|(_, v)| v.packets)
    };
    assert_eq!(counted(OUTCOME_REJECT), Some(2), "the SYN and the datagram");
}

#[test]
fn an_established_connection_outlives_its_backend_leaving_the_service() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, false);
    let out = run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &packet(TCP, (CLIENT, 43000), (VIP, 80), SYN, true),
    );
    let backend = parse(&out.packet).dst;
    // Both backends leave: the service has none, and the backend entries are gone.
    let lb = t.dp.lb();
    lb.set_slot(
        key(VIP, 80, TCP, 0),
        Lb4Service {
            count: 0,
            rev_nat_id: 10,
            ..Default::default()
        },
    )
    .unwrap();
    lb.remove_backend(1).unwrap();
    lb.remove_backend(2).unwrap();
    let out = run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &packet(TCP, (CLIENT, 43000), (VIP, 80), ACK, true),
    );
    assert_ne!(out.retval, TC_ACT_SHOT);
    assert_eq!(parse(&out.packet).dst, backend);
    // A new connection has nowhere to go: it is refused.
    let out = run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &packet(TCP, (CLIENT, 43001), (VIP, 80), SYN, true),
    );
    assert_eq!(out.retval, TC_ACT_REDIRECT);
    assert_eq!(parse(&out.packet).src, (VIP, 80), "a RST from the frontend");
}

#[test]
fn a_pod_reaches_itself_through_its_service() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, false);
    // A service whose only backend is the client itself.
    let lb = t.dp.lb();
    lb.set_backend(
        9,
        Lb4Backend {
            address: be(CLIENT),
            port: 8080u16.to_be(),
            proto: TCP,
            flags: 0,
        },
    )
    .unwrap();
    let self_vip = Ipv4Addr::new(10, 96, 0, 12);
    lb.set_slot(
        key(self_vip, 80, TCP, 0),
        Lb4Service {
            count: 1,
            rev_nat_id: 13,
            ..Default::default()
        },
    )
    .unwrap();
    lb.set_slot(
        key(self_vip, 80, TCP, 1),
        Lb4Service {
            backend_id: 9,
            ..Default::default()
        },
    )
    .unwrap();

    let out = run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &packet(TCP, (CLIENT, 44000), (self_vip, 80), SYN, true),
    );
    let p = parse(&out.packet);
    assert_eq!(p.dst, (CLIENT, 8080));
    assert_eq!(
        p.src,
        (HAIRPIN_IP, 44000),
        "source moved off the pod's own address"
    );
    assert!(p.ip_ok && p.l4_ok);
    assert_eq!(
        out.retval, TC_ACT_REDIRECT,
        "delivered straight back to the pod"
    );

    // The pod answers the hairpin address; the reply comes back from the frontend.
    let out = run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &packet(TCP, (CLIENT, 8080), (HAIRPIN_IP, 44000), SYN | ACK, true),
    );
    let p = parse(&out.packet);
    assert_eq!(p.src, (self_vip, 80));
    assert_eq!(p.dst, (CLIENT, 44000));
    assert!(p.ip_ok && p.l4_ok);
    assert_eq!(out.retval, TC_ACT_REDIRECT);

    // Later packets of the connection keep both translations.
    let out = run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &packet(TCP, (CLIENT, 44000), (self_vip, 80), ACK, true),
    );
    let p = parse(&out.packet);
    assert_eq!((p.src, p.dst), ((HAIRPIN_IP, 44000), (CLIENT, 8080)));
}

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 254);

/// A network namespace where the FIB knows the node network (192.168.50.0/24 on a veth) and
/// the remote pod CIDR (via 192.168.50.2), so packets we route ourselves have somewhere to go.
/// PROG_TEST_RUN runs in the namespace of the calling thread.
struct NodeNetwork {
    ns: sluice_netdev::Netns,
}

impl NodeNetwork {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "sdp{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let ns = sluice_netdev::Netns::create(&name).unwrap();
        sluice_netdev::sysctl_set(&ns, "net/ipv4/ip_forward", "1").unwrap();
        let h = sluice_netdev::NetHandle::new(&ns).unwrap();
        h.create_veth("up0", "up1").unwrap();
        h.add_address("up0", "192.168.50.1/24".parse().unwrap())
            .unwrap();
        h.set_up("up1").unwrap();
        h.set_up("up0").unwrap();
        h.replace_route(&sluice_netdev::Route {
            dst: "10.20.0.0/16".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(192, 168, 50, 2)),
            ..Default::default()
        })
        .unwrap();
        Self { ns }
    }

    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns.run(f).unwrap()
    }
}

impl Drop for NodeNetwork {
    fn drop(&mut self) {
        if let Some(name) = self.ns.name() {
            let _ = sluice_netdev::Netns::delete(name);
        }
    }
}

/// NODE:30080 -> the remote backend, NODE:30081 -> CLIENT:8080 (a pod on this node).
fn setup_nodeports(t: &mut TestDatapath) {
    setup(t, false);
    t.dp.set_config(sluice_datapath::DatapathConfig {
        node_ip: be(NODE),
        ..Default::default()
    })
    .unwrap();
    let lb = t.dp.lb();
    lb.set_backend(
        20,
        Lb4Backend {
            address: be(CLIENT),
            port: 8080u16.to_be(),
            proto: TCP,
            flags: 0,
        },
    )
    .unwrap();
    for (port, backend, rev) in [(30080u16, 2u32, 30u32), (30081, 20, 31)] {
        lb.set_slot(
            key(NODE, port, TCP, 0),
            Lb4Service {
                count: 1,
                flags: SVC_EXTERNAL,
                rev_nat_id: rev,
                ..Default::default()
            },
        )
        .unwrap();
        lb.set_slot(
            key(NODE, port, TCP, 1),
            Lb4Service {
                backend_id: backend,
                ..Default::default()
            },
        )
        .unwrap();
    }
}

#[test]
fn nodeport_to_a_remote_backend_is_snatted_and_its_replies_reversed() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup_nodeports(&mut t);
    let net = NodeNetwork::new();
    let syn = packet(TCP, (OUTSIDE, 50000), (NODE, 30080), SYN, true);
    let out = net.run(|| run(&mut t, sluice_datapath::FROM_NETDEV, &syn));
    assert_eq!(
        out.retval,
        TC_ACT_REDIRECT,
        "routed by us to the backend's node (its source is now this node); counters {:?}",
        t.dp.metrics().unwrap()
    );
    let p = parse(&out.packet);
    assert_eq!(p.dst, (REMOTE_BACKEND, 8080));
    assert_eq!(
        p.src,
        (NODE, 50000),
        "source is this node, so the reply comes back here"
    );
    assert!(p.ip_ok && p.l4_ok);

    let reply = packet(TCP, (REMOTE_BACKEND, 8080), (NODE, 50000), SYN | ACK, true);
    let out = net.run(|| run(&mut t, sluice_datapath::FROM_NETDEV, &reply));
    assert_eq!(
        out.retval, TC_ACT_REDIRECT,
        "routed by us back out to the client"
    );
    let p = parse(&out.packet);
    assert_eq!((p.src, p.dst), ((NODE, 30080), (OUTSIDE, 50000)));
    assert_eq!(p.ttl, 63, "routed: TTL decremented");
    assert!(p.ip_ok && p.l4_ok);
}

#[test]
fn nodeport_to_a_local_backend_keeps_the_client_address() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup_nodeports(&mut t);
    let out = run(
        &mut t,
        sluice_datapath::FROM_NETDEV,
        &packet(TCP, (OUTSIDE, 50001), (NODE, 30081), SYN, true),
    );
    assert_eq!(out.retval, TC_ACT_REDIRECT, "straight to the pod");
    let p = parse(&out.packet);
    assert_eq!((p.src, p.dst), ((OUTSIDE, 50001), (CLIENT, 8080)));

    // The pod's reply leaves through its veth, is translated there and routed out by us.
    let net = NodeNetwork::new();
    let reply = packet(TCP, (CLIENT, 8080), (OUTSIDE, 50001), SYN | ACK, true);
    let out = net.run(|| run(&mut t, sluice_datapath::FROM_CONTAINER, &reply));
    assert_eq!(out.retval, TC_ACT_REDIRECT);
    let p = parse(&out.packet);
    assert_eq!((p.src, p.dst), ((NODE, 30081), (OUTSIDE, 50001)));
    assert!(p.ip_ok && p.l4_ok);
}

#[test]
fn the_uplink_leaves_cluster_ips_and_other_traffic_alone() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup_nodeports(&mut t);
    for packet in [
        packet(TCP, (OUTSIDE, 50002), (VIP, 80), SYN, true),
        packet(TCP, (OUTSIDE, 50002), (NODE, 22), SYN, true),
        packet(UDP, (OUTSIDE, 50002), (NODE, 8472), 0, true),
    ] {
        let out = run(&mut t, sluice_datapath::FROM_NETDEV, &packet);
        assert_eq!((out.retval, &out.packet), (TC_ACT_OK, &packet));
    }
}

/// The datapath's flow hash (lib/lb.h), restated: the test predicts every choice from it.
fn flow_hash(saddr: Ipv4Addr, daddr: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> u32 {
    let (s, d) = (be(saddr), be(daddr));
    let mix = |h: u32, v: u32| {
        h ^ (v
            .wrapping_add(0x7f4a7c15)
            .wrapping_add(h << 6)
            .wrapping_add(h >> 2))
    };
    let mut h = s.wrapping_mul(0x9e3779b1);
    h = mix(h, d);
    h = mix(h, ((sport.to_be() as u32) << 16) | dport.to_be() as u32);
    h = mix(h, proto as u32);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85ebca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2ae35);
    h ^ (h >> 16)
}

#[test]
fn external_frontends_pick_backends_from_the_maglev_table() {
    if !require_root() {
        return;
    }
    const SIZE: u32 = 251;
    let backends = [
        (Ipv4Addr::new(10, 20, 1, 7), 21u32),
        (Ipv4Addr::new(10, 20, 1, 8), 22),
        (Ipv4Addr::new(10, 20, 1, 9), 23),
    ];
    let names: Vec<String> = backends
        .iter()
        .map(|(ip, _)| format!("{ip}:8080"))
        .collect();
    let table: Vec<u32> = sluice_model::maglev::table(&names, SIZE)
        .unwrap()
        .into_iter()
        .map(|i| backends[i as usize].1)
        .collect();
    // Two nodes with the same table choose alike.
    let mut nodes = [TestDatapath::load(), TestDatapath::load()];
    for t in nodes.iter_mut() {
        setup(t, false);
        t.dp.set_config(sluice_datapath::DatapathConfig {
            node_ip: be(NODE),
            maglev_size: SIZE,
            ..Default::default()
        })
        .unwrap();
        let lb = t.dp.lb();
        for (ip, id) in backends {
            lb.set_backend(
                id,
                Lb4Backend {
                    address: be(ip),
                    port: 8080u16.to_be(),
                    proto: TCP,
                    flags: 0,
                },
            )
            .unwrap();
        }
        lb.set_slot(
            key(NODE, 30090, TCP, 0),
            Lb4Service {
                count: 3,
                flags: SVC_EXTERNAL | SVC_MAGLEV,
                rev_nat_id: 40,
                ..Default::default()
            },
        )
        .unwrap();
        for (slot, (_, id)) in backends.iter().enumerate() {
            lb.set_slot(
                key(NODE, 30090, TCP, slot as u16 + 1),
                Lb4Service {
                    backend_id: *id,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        lb.set_maglev(40, &table).unwrap();
        assert_eq!(lb.maglev_slot(40, 7).unwrap(), Some(table[7]));
    }
    let net = NodeNetwork::new();
    let mut seen = std::collections::BTreeSet::new();
    for sport in 51000..51060u16 {
        let syn = packet(TCP, (OUTSIDE, sport), (NODE, 30090), SYN, true);
        let expected_id = table[(flow_hash(OUTSIDE, NODE, sport, 30090, TCP) % SIZE) as usize];
        let expected = backends
            .iter()
            .find(|(_, id)| *id == expected_id)
            .unwrap()
            .0;
        for t in nodes.iter_mut() {
            let out = net.run(|| run(t, sluice_datapath::FROM_NETDEV, &syn));
            assert_eq!(
                parse(&out.packet).dst,
                (expected, 8080),
                "client port {sport}"
            );
        }
        seen.insert(expected);
    }
    assert_eq!(seen.len(), 3, "60 flows spread over all three backends");
}

#[test]
fn an_idle_udp_flow_is_balanced_afresh() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, false);
    let out = run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &packet(UDP, (CLIENT, 6000), (VIP, 53), 0, true),
    );
    let first = parse(&out.packet).dst;
    // The service now has only the other backend; the flow goes quiet for longer than UDP's
    // lifetime.
    let other = if first.0 == LOCAL_BACKEND { 4 } else { 3 };
    let lb = t.dp.lb();
    lb.set_slot(
        key(VIP, 53, UDP, 0),
        Lb4Service {
            count: 1,
            rev_nat_id: 11,
            ..Default::default()
        },
    )
    .unwrap();
    lb.set_slot(
        key(VIP, 53, UDP, 1),
        Lb4Service {
            backend_id: other,
            ..Default::default()
        },
    )
    .unwrap();
    let out = run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &packet(UDP, (CLIENT, 6000), (VIP, 53), 0, true),
    );
    assert_eq!(
        parse(&out.packet).dst,
        first,
        "a live flow keeps its backend"
    );
    for (k, mut e) in t.dp.lb_ref().conntrack().unwrap() {
        e.last_seen_ns = e.last_seen_ns.saturating_sub(61_000_000_000);
        t.dp.lb().set_conntrack(k, e).unwrap();
    }
    let out = run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &packet(UDP, (CLIENT, 6000), (VIP, 53), 0, true),
    );
    assert_ne!(
        parse(&out.packet).dst,
        first,
        "an idle flow is balanced again"
    );
}

/// A connection's entry touched by another CPU a moment "later" than this CPU's clock (its
/// last-seen time ahead of now) is fresh: the connection keeps its backend. (An unsigned
/// `now - last_seen` once made it look ancient, and a bulk transfer was moved to another
/// backend mid-stream and reset.)
#[test]
fn an_entry_stamped_ahead_of_this_cpus_clock_keeps_its_backend() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, false);
    let out = run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &packet(TCP, (CLIENT, 45000), (VIP, 80), 0x02, true),
    );
    let first = parse(&out.packet).dst;
    for (k, mut e) in t.dp.lb_ref().conntrack().unwrap() {
        e.last_seen_ns += 2_000_000_000;
        t.dp.lb().set_conntrack(k, e).unwrap();
    }
    for _ in 0..20 {
        let out = run(
            &mut t,
            sluice_datapath::FROM_CONTAINER,
            &packet(TCP, (CLIENT, 45000), (VIP, 80), 0x10, true),
        );
        assert_eq!(
            parse(&out.packet).dst,
            first,
            "the connection keeps its backend"
        );
    }
}

/// A client reusing a service connection's tuple to talk to the backend directly (as it does
/// after socket-LB translated its connect()) must get the backend's replies untouched, whether
/// the backend is on this node or another.
#[test]
fn a_direct_connection_on_a_reused_tuple_is_not_reverse_translated() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, false);
    let mut seen = std::collections::BTreeSet::new();
    for port in 45000..45064u16 {
        let out = run(
            &mut t,
            sluice_datapath::FROM_CONTAINER,
            &packet(TCP, (CLIENT, port), (VIP, 80), SYN, true),
        );
        let backend = parse(&out.packet).dst;
        seen.insert(backend.0);
        // Later, the same client port, straight to that backend.
        let direct = packet(TCP, (CLIENT, port), backend, SYN, true);
        let out = run(&mut t, sluice_datapath::FROM_CONTAINER, &direct);
        assert_eq!(parse(&out.packet).dst, backend, "not a service packet");
        let out = run(
            &mut t,
            sluice_datapath::TO_CONTAINER,
            &packet(TCP, backend, (CLIENT, port), SYN | ACK, true),
        );
        assert_eq!(
            parse(&out.packet).src,
            backend,
            "the reply keeps the backend's address"
        );
        if seen.len() == 2 {
            return;
        }
    }
    panic!("64 connections reached only {seen:?}");
}

/// A TCP connection between two pods of the node that no service step translated is
/// remembered as such by both endpoints' entries, and its later packets skip the reply
/// lookup: even a REPLY entry left on its tuple (from an older translated connection) does
/// not turn its replies into the frontend's. Without that knowledge the lookup is made.
#[test]
fn an_untranslated_connection_skips_the_reply_lookup() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, false);
    // The backend's packets are run on a real device too (a test run needs one).
    t.dp.upsert_endpoint(
        LOCAL_BACKEND,
        EndpointInfo {
            ifindex: LO,
            ..Default::default()
        },
    )
    .unwrap();
    let from_backend = |t: &mut TestDatapath, flags: u8| {
        let p = packet(TCP, (LOCAL_BACKEND, 8080), (CLIENT, 40000), flags, true);
        run(t, sluice_datapath::FROM_CONTAINER, &p)
    };
    let left_over = Ct4Key {
        saddr: be(LOCAL_BACKEND),
        daddr: be(CLIENT),
        sport: 8080u16.to_be(),
        dport: 40000u16.to_be(),
        proto: TCP,
        dir: CT_REPLY,
        pad: 0,
    };
    let plant = |t: &mut TestDatapath| {
        // Stamped now: the clock the datapath uses is read from a fresh entry.
        let stamp =
            t.dp.lb_ref()
                .conntrack()
                .unwrap()
                .iter()
                .map(|(_, e)| e.last_seen_ns)
                .max()
                .unwrap_or(0);
        t.dp.lb()
            .set_conntrack(
                left_over,
                Ct4Entry {
                    last_seen_ns: stamp,
                    nat_address: be(VIP),
                    nat_port: 80u16.to_be(),
                    rev_nat_id: 1,
                    ..Default::default()
                },
            )
            .unwrap();
    };

    // Not known: the reply lookup is made, and the left-over entry translates.
    run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &packet(TCP, (CLIENT, 39999), (VIP, 80), 0x02, true),
    );
    plant(&mut t);
    let out = from_backend(&mut t, 0x10);
    assert_eq!(parse(&out.packet).src, (VIP, 80), "the lookup was made");

    // The client opens a connection to the backend's own address: nothing translates it.
    let out = run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &packet(TCP, (CLIENT, 40000), (LOCAL_BACKEND, 8080), 0x02, true),
    );
    assert_eq!(out.retval, TC_ACT_REDIRECT);
    let ct = t.dp.lb_ref().conntrack().unwrap();
    let flags_of = |local, peer| endpoint_flags(&ct, local, peer);
    assert_eq!(
        flags_of((CLIENT, 40000), (LOCAL_BACKEND, 8080)),
        Some(CT_F_NOT_TRANSLATED | CT_F_PEER_ADMITTED)
    );
    assert_eq!(
        flags_of((LOCAL_BACKEND, 8080), (CLIENT, 40000)),
        Some(CT_F_ADMITTED_INGRESS | CT_F_NOT_TRANSLATED | CT_F_PEER_ADMITTED),
        "the backend's side, judged inline"
    );
    assert!(
        t.dp.lb_ref()
            .conntrack()
            .unwrap()
            .iter()
            .any(|(k, _)| *k == left_over),
        "a connection to a pod of this node leaves the left-over entry alone (and ignores it)"
    );
    for flags in [0x12, 0x10, 0x11] {
        let out = from_backend(&mut t, flags);
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        assert_eq!(
            parse(&out.packet).src,
            (LOCAL_BACKEND, 8080),
            "a reply of the untranslated connection keeps its source (flags {flags:#x})"
        );
    }

    // To a pod of another node, whose replies arrive without a tracked entry of ours to say
    // so: the new connection's SYN drops the left-over entry on its tuple.
    let remote_left_over = Ct4Key {
        saddr: be(REMOTE_BACKEND),
        dport: 40001u16.to_be(),
        ..left_over
    };
    t.dp.lb()
        .set_conntrack(remote_left_over, Ct4Entry::default())
        .unwrap();
    run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &packet(TCP, (CLIENT, 40001), (REMOTE_BACKEND, 8080), 0x02, true),
    );
    assert!(
        !t.dp
            .lb_ref()
            .conntrack()
            .unwrap()
            .iter()
            .any(|(k, _)| *k == remote_left_over),
        "the left-over entry of a connection to another node is forgotten"
    );
}

/// A tracked connection's last-seen time is rewritten when it is a second old, not on every
/// packet (a store per packet moves the entry's cache line between the CPUs handling the two
/// ends): a packet leaves a fresher time alone and refreshes an older one.
#[test]
fn a_live_entry_is_restamped_once_a_second_not_per_packet() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, false);
    let send = |t: &mut TestDatapath, flags: u8| {
        run(
            t,
            sluice_datapath::FROM_CONTAINER,
            &packet(TCP, (CLIENT, 46000), (VIP, 80), flags, true),
        )
    };
    send(&mut t, 0x02);
    let service_entry = |t: &TestDatapath| {
        t.dp.lb_ref()
            .conntrack()
            .unwrap()
            .into_iter()
            .find(|(k, _)| k.dir == CT_SERVICE && k.sport == 46000u16.to_be())
            .expect("the connection is tracked")
    };
    let (k, e) = service_entry(&t);
    let stamped = e.last_seen_ns;
    let set_age = |t: &mut TestDatapath, age_ns: u64| {
        let mut aged = e;
        aged.last_seen_ns = stamped - age_ns;
        t.dp.lb().set_conntrack(k, aged).unwrap();
    };
    set_age(&mut t, 500_000_000);
    send(&mut t, 0x10);
    assert_eq!(
        service_entry(&t).1.last_seen_ns,
        stamped - 500_000_000,
        "half a second old: left alone"
    );
    set_age(&mut t, 2_000_000_000);
    send(&mut t, 0x10);
    assert!(
        service_entry(&t).1.last_seen_ns >= stamped,
        "two seconds old: restamped"
    );
}

/// CLOCK_MONOTONIC_COARSE now, ns: the clock the datapath stamps entries with.
fn coarse_now_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut t) },
        0
    );
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Each packet's program reads the flow clock once when it starts and stamps what it tracks
/// with it: a packet run after a pause stamps the time of its own run, not the one a packet
/// before it read.
#[test]
fn a_packet_stamps_its_entries_with_the_time_it_was_handled() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, false);
    let stamps = |t: &TestDatapath, port: u16| -> Vec<u64> {
        t.dp.lb_ref()
            .conntrack()
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.sport == port.to_be() || k.dport == port.to_be())
            .map(|(_, e)| e.last_seen_ns)
            .collect()
    };
    run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &packet(TCP, (CLIENT, 47000), (VIP, 80), 0x02, true),
    );
    std::thread::sleep(std::time::Duration::from_millis(50));
    let before = coarse_now_ns();
    run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &packet(TCP, (CLIENT, 47001), (VIP, 80), 0x02, true),
    );
    let second = stamps(&t, 47001);
    assert!(
        second.len() >= 3,
        "service, reply and endpoint entries: {second:?}"
    );
    assert!(
        second.iter().all(|s| *s >= before),
        "stamped at {second:?}, the run began at {before}"
    );
    assert!(stamps(&t, 47000).iter().all(|s| *s < before));
}
