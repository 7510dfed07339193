//! The real programs run on crafted packets with BPF_PROG_TEST_RUN: a packet in, the verdict
//! and the rewritten packet out.

mod common;

use std::net::Ipv4Addr;

use common::{checksum, require_root, run, TestDatapath};
use sluice_datapath::abi::*;
use sluice_datapath::testrun::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};
use sluice_datapath::{DatapathConfig, EndpointInfo, TunnelInfo};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 5);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 6);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 7);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
const REMOTE_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 3);
const LO: u32 = 1; // test runs "on" loopback; the source endpoint claims ifindex 1
const B_IFINDEX: u32 = 4242;
const POD_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const HOST_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0xa];
const POD_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
const HOST_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0xb];
const VXLAN_MAC: [u8; 6] = [0x0a, 0x58, 192, 168, 50, 2];
const REMOTE_VXLAN_MAC: [u8; 6] = [0x0a, 0x58, 192, 168, 50, 3];

/// Ethernet + IPv4 + UDP with a valid IP header checksum.
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let payload = b"hello";
    let mut p = Vec::new();
    p.extend_from_slice(&HOST_A_MAC); // dst: what the pod addresses (its gateway)
    p.extend_from_slice(&POD_A_MAC);
    p.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, ttl, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let csum = checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    p.extend_from_slice(&ip);
    p.extend_from_slice(&4000u16.to_be_bytes());
    p.extend_from_slice(&80u16.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

fn ip_header(packet: &[u8]) -> &[u8] {
    &packet[14..34]
}

fn setup(t: &mut TestDatapath, routing: u32) {
    let endpoint = |ifindex, pod_mac, host_mac| EndpointInfo {
        ifindex,
        pod_mac,
        host_mac,
        ..Default::default()
    };
    t.dp.upsert_endpoint(POD_A, endpoint(LO, POD_A_MAC, HOST_A_MAC))
        .unwrap();
    t.dp.upsert_endpoint(POD_B, endpoint(B_IFINDEX, POD_B_MAC, HOST_B_MAC))
        .unwrap();
    t.dp.upsert_tunnel(
        Ipv4Addr::new(10, 10, 1, 0),
        24,
        TunnelInfo {
            node_ip: ip_to_be(REMOTE_NODE),
            node_mac: REMOTE_VXLAN_MAC,
            flags: 0,
        },
    )
    .unwrap();
    t.dp.set_config(DatapathConfig {
        routing_mode: routing,
        vxlan_ifindex: LO,
        vxlan_mac: VXLAN_MAC,
        node_ip: ip_to_be(NODE_IP),
        vni: 2,
        ..Default::default()
    })
    .unwrap();
}

fn counted(t: &TestDatapath, point: u8, outcome: u8, reason: u16) -> u64 {
    t.dp.metrics()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k.point == point && k.outcome == outcome && k.reason == reason)
        .map(|(_, v)| v.packets)
        .unwrap_or(0)
}

#[test]
fn local_pod_to_pod_is_redirected_with_router_rewrites() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, ROUTING_NATIVE);
    let input = udp_packet(POD_A, POD_B, 64);
    let out = run(&mut t, sluice_datapath::FROM_CONTAINER, &input);
    assert_eq!(out.retval, TC_ACT_REDIRECT);
    assert_eq!(&out.packet[0..6], &POD_B_MAC, "destination MAC is pod B's");
    assert_eq!(
        &out.packet[6..12],
        &HOST_B_MAC,
        "source MAC is B's host side"
    );
    assert_eq!(out.packet[22], 63, "TTL decremented");
    assert_eq!(
        checksum(ip_header(&out.packet)),
        0,
        "IP checksum still valid"
    );
    assert_eq!(&out.packet[34..], &input[34..], "L4 untouched");
    assert_eq!(counted(&t, POINT_FROM_ENDPOINT, OUTCOME_REDIRECT, 0), 1);
    // The checksum is adjusted incrementally: across TTLs its sum carries or not.
    for ttl in [2u8, 3, 17, 100, 128, 129, 200, 255] {
        let out = run(
            &mut t,
            sluice_datapath::FROM_CONTAINER,
            &udp_packet(POD_A, POD_B, ttl),
        );
        assert_eq!(out.packet[22], ttl - 1);
        assert_eq!(checksum(ip_header(&out.packet)), 0, "TTL {ttl}");
    }
}

#[test]
fn spoofed_source_is_dropped_with_a_reason() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, ROUTING_NATIVE);
    // Pod B's address, but arriving on pod A's device.
    let out = run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &udp_packet(POD_B, POD_A, 64),
    );
    assert_eq!(out.retval, TC_ACT_SHOT);
    // An address no endpoint owns.
    let out = run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &udp_packet(Ipv4Addr::new(10, 99, 0, 1), POD_B, 64),
    );
    assert_eq!(out.retval, TC_ACT_SHOT);
    assert_eq!(
        counted(
            &t,
            POINT_FROM_ENDPOINT,
            OUTCOME_DROP,
            DROP_INVALID_SOURCE_IP
        ),
        2
    );
}

#[test]
fn native_mode_leaves_remote_and_node_traffic_to_the_kernel() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, ROUTING_NATIVE);
    for dst in [REMOTE_POD, NODE_IP, REMOTE_NODE] {
        let input = udp_packet(POD_A, dst, 64);
        let out = run(&mut t, sluice_datapath::FROM_CONTAINER, &input);
        assert_eq!(out.retval, TC_ACT_OK, "to {dst}");
        assert_eq!(out.packet, input, "to {dst}: unchanged");
    }
}

#[test]
fn vxlan_mode_encapsulates_toward_the_remote_node() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, ROUTING_VXLAN);
    let out = run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &udp_packet(POD_A, REMOTE_POD, 64),
    );
    assert_eq!(out.retval, TC_ACT_REDIRECT);
    assert_eq!(
        &out.packet[0..6],
        &REMOTE_VXLAN_MAC,
        "inner dst MAC is the remote VXLAN device"
    );
    assert_eq!(&out.packet[6..12], &VXLAN_MAC);
    assert_eq!(out.packet[22], 63);
    assert_eq!(checksum(ip_header(&out.packet)), 0);
    assert_eq!(counted(&t, POINT_FROM_ENDPOINT, OUTCOME_ENCAP, 0), 1);

    // The node's own address is not in a pod CIDR: the kernel handles it.
    let out = run(
        &mut t,
        sluice_datapath::FROM_CONTAINER,
        &udp_packet(POD_A, REMOTE_NODE, 64),
    );
    assert_eq!(out.retval, TC_ACT_OK);
}

#[test]
fn expiring_and_non_ipv4_packets_go_to_the_stack() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, ROUTING_NATIVE);
    let expiring = udp_packet(POD_A, POD_B, 1);
    let out = run(&mut t, sluice_datapath::FROM_CONTAINER, &expiring);
    assert_eq!((out.retval, out.packet), (TC_ACT_OK, expiring));

    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&POD_A_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    let out = run(&mut t, sluice_datapath::FROM_CONTAINER, &arp);
    assert_eq!(out.retval, TC_ACT_OK);
}

#[test]
fn malformed_ipv4_is_dropped_as_invalid() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, ROUTING_NATIVE);
    // (The kernel's test runner itself refuses IPv4 frames shorter than an IP header, so the
    // malformations tested here are the ones that reach a program: bad IHL, bad version.)
    let mut short_ihl = udp_packet(POD_A, POD_B, 64);
    short_ihl[14] = 0x44;
    let mut not_v4 = udp_packet(POD_A, POD_B, 64);
    not_v4[14] = 0x65;
    for bad in [short_ihl, not_v4] {
        let out = run(&mut t, sluice_datapath::FROM_CONTAINER, &bad);
        assert_eq!(out.retval, TC_ACT_SHOT);
    }
    assert_eq!(
        counted(&t, POINT_FROM_ENDPOINT, OUTCOME_DROP, DROP_INVALID_PACKET),
        2
    );
}

#[test]
fn overlay_delivers_to_local_pods_and_tunnels_stack_traffic() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, ROUTING_VXLAN);
    // Decapsulated packet for a local pod: straight to its veth.
    let out = run(
        &mut t,
        sluice_datapath::FROM_OVERLAY,
        &udp_packet(REMOTE_POD, POD_B, 63),
    );
    assert_eq!(out.retval, TC_ACT_REDIRECT);
    assert_eq!(&out.packet[0..6], &POD_B_MAC);
    assert_eq!(out.packet[22], 62);

    // The node's stack routed a packet into the tunnel device: metadata set, MAC fixed.
    let out = run(
        &mut t,
        sluice_datapath::TO_OVERLAY,
        &udp_packet(NODE_IP, REMOTE_POD, 64),
    );
    assert_eq!(out.retval, TC_ACT_OK);
    assert_eq!(&out.packet[0..6], &REMOTE_VXLAN_MAC);

    // No node owns this prefix: dropped with a reason rather than blackholed silently.
    let out = run(
        &mut t,
        sluice_datapath::TO_OVERLAY,
        &udp_packet(NODE_IP, Ipv4Addr::new(10, 77, 0, 1), 64),
    );
    assert_eq!(out.retval, TC_ACT_SHOT);
    assert_eq!(
        counted(&t, POINT_TO_OVERLAY, OUTCOME_DROP, DROP_NO_TUNNEL_ENDPOINT),
        1
    );
}

#[test]
fn maps_survive_a_reload_from_their_pins() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, ROUTING_VXLAN);
    let reloaded = sluice_datapath::Datapath::load(&t.pin).unwrap();
    assert_eq!(reloaded.endpoints().unwrap().len(), 2);
    assert_eq!(reloaded.tunnels().unwrap().len(), 1);
    assert_eq!(reloaded.config().unwrap().routing_mode, ROUTING_VXLAN);
}
