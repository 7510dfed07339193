//! Network policy in the endpoint programs, run with BPF_PROG_TEST_RUN: identities from the
//! ipcache, entries per endpoint (exact port, port ranges, any protocol, any peer, ipBlock
//! prefixes), connection tracking of replies, and re-judging after a policy change.

mod common;

use std::net::Ipv4Addr;

use common::{checksum, one_backend_service, packet, require_root, run, TestDatapath};
use sluice_datapath::abi::*;
use sluice_datapath::policy::PolicyMapKey;
use sluice_datapath::testrun::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};
use sluice_datapath::EndpointInfo;

/// The endpoint under test: its programs run "on" loopback.
const POD: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 5);
/// A pod on another node with identity PEER_ID.
const PEER: Ipv4Addr = Ipv4Addr::new(10, 20, 1, 7);
const PEER_ID: u32 = 300;
/// A pod with another identity.
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 20, 1, 8);
const OTHER_ID: u32 = 301;
const WORLD: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);
const FAR_WORLD: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const CIDR_ID: u32 = 1 << 24;
const TCP: u8 = 6;
const UDP: u8 = 17;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYN_ACK: u8 = 0x12;

fn setup(t: &mut TestDatapath, flags: u32) {
    t.dp.upsert_endpoint(
        POD,
        EndpointInfo {
            ifindex: 1,
            flags,
            identity: 299,
            ..Default::default()
        },
    )
    .unwrap();
    let maps = t.dp.policy();
    for (ip, identity) in [(PEER, PEER_ID), (OTHER, OTHER_ID), (POD, 299)] {
        maps.set_ipcache(
            ip,
            32,
            IpcacheInfo {
                identity,
                node_ip: 0,
            },
        )
        .unwrap();
    }
}

/// An entry for POD: `len` bits of the port significant (None: any protocol).
fn entry_key(direction: u8, identity: u32, l4: Option<(u8, u16, u32)>) -> PolicyMapKey {
    let (proto, port, port_bits) = l4.unwrap_or((0, 0, 0));
    let prefix_len = if l4.is_some() { 80 + port_bits } else { 72 };
    PolicyMapKey {
        prefix_len,
        data: PolicyKeyData {
            endpoint: ip_to_be(POD),
            identity,
            direction,
            proto,
            dport: port.to_be(),
        },
    }
}

fn allow(t: &mut TestDatapath, key: PolicyMapKey) {
    t.dp.policy()
        .set_entry(
            key,
            PolicyEntry {
                verdict: VERDICT_ALLOW,
                cookie: 7,
                ..Default::default()
            },
        )
        .unwrap();
}

fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    packet(TCP, src, dst, flags, true)
}

fn egress(t: &mut TestDatapath, p: &[u8]) -> u32 {
    run(t, sluice_datapath::FROM_CONTAINER, p).retval
}

fn ingress(t: &mut TestDatapath, p: &[u8]) -> u32 {
    run(t, sluice_datapath::TO_CONTAINER, p).retval
}

fn policy_drops(t: &TestDatapath) -> u64 {
    t.dp.metrics()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.outcome == OUTCOME_DROP && k.reason == DROP_POLICY_DENIED)
        .map(|(_, v)| v.packets)
        .sum()
}

/// Ethernet + IPv4 + ICMP with `body` after the 4-byte type/code/checksum.
fn icmp(src: Ipv4Addr, dst: Ipv4Addr, type_: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&((20 + 4 + body.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut l4 = vec![type_, 0, 0, 0];
    l4.extend_from_slice(body);
    let c = checksum(&l4);
    l4[2..4].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&ip);
    p.extend_from_slice(&l4);
    p
}

fn echo(src: Ipv4Addr, dst: Ipv4Addr, type_: u8, id: u16) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 1]);
    icmp(src, dst, type_, &body)
}

#[test]
fn an_endpoint_without_policy_passes_everything() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, 0);
    assert_eq!(
        egress(&mut t, &tcp((POD, 4000), (PEER, 80), SYN)),
        TC_ACT_OK
    );
    assert_eq!(
        ingress(&mut t, &tcp((WORLD, 5000), (POD, 81), SYN)),
        TC_ACT_OK
    );
    assert_eq!(policy_drops(&t), 0);
}

#[test]
fn egress_isolation_allows_exactly_the_entries() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, EP_EGRESS_ISOLATED);
    allow(
        &mut t,
        entry_key(POLICY_EGRESS, PEER_ID, Some((TCP, 80, 16))),
    );
    // 8080..=8087 as one 13-bit prefix.
    allow(
        &mut t,
        entry_key(POLICY_EGRESS, OTHER_ID, Some((TCP, 8080, 13))),
    );

    assert_eq!(
        egress(&mut t, &tcp((POD, 4000), (PEER, 80), SYN)),
        TC_ACT_OK
    );
    assert_eq!(
        egress(&mut t, &tcp((POD, 4001), (PEER, 81), SYN)),
        TC_ACT_SHOT
    );
    let udp = packet(UDP, (POD, 4002), (PEER, 80), 0, true);
    assert_eq!(
        egress(&mut t, &udp),
        TC_ACT_SHOT,
        "the entry is for TCP only"
    );
    assert_eq!(
        egress(&mut t, &tcp((POD, 4003), (OTHER, 8083), SYN)),
        TC_ACT_OK
    );
    assert_eq!(
        egress(&mut t, &tcp((POD, 4004), (OTHER, 8088), SYN)),
        TC_ACT_SHOT
    );
    assert_eq!(
        egress(&mut t, &tcp((POD, 4005), (OTHER, 80), SYN)),
        TC_ACT_SHOT
    );
    assert_eq!(
        egress(&mut t, &tcp((POD, 4006), (WORLD, 80), SYN)),
        TC_ACT_SHOT
    );
    assert_eq!(policy_drops(&t), 5);
    // Ingress is not isolated: anything may come in.
    assert_eq!(
        ingress(&mut t, &tcp((WORLD, 5000), (POD, 22), SYN)),
        TC_ACT_OK
    );
}

#[test]
fn any_protocol_any_peer_and_ipblock_prefixes() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, EP_INGRESS_ISOLATED);
    // From PEER: every protocol and port. From 192.0.2.0/24: TCP 443. From anyone: UDP 53.
    allow(&mut t, entry_key(POLICY_INGRESS, PEER_ID, None));
    t.dp.policy()
        .set_cidr(Ipv4Addr::new(192, 0, 2, 0), 24, CIDR_ID)
        .unwrap();
    allow(
        &mut t,
        entry_key(POLICY_INGRESS, CIDR_ID, Some((TCP, 443, 16))),
    );
    allow(
        &mut t,
        entry_key(POLICY_INGRESS, IDENTITY_ANY, Some((UDP, 53, 16))),
    );

    let from_peer_udp = packet(UDP, (PEER, 999), (POD, 9999), 0, true);
    assert_eq!(ingress(&mut t, &from_peer_udp), TC_ACT_OK);
    assert_eq!(
        ingress(&mut t, &tcp((PEER, 1000), (POD, 1), SYN)),
        TC_ACT_OK
    );
    assert_eq!(ingress(&mut t, &echo(PEER, POD, 8, 1)), TC_ACT_OK);
    assert_eq!(
        ingress(&mut t, &tcp((WORLD, 1001), (POD, 443), SYN)),
        TC_ACT_OK
    );
    assert_eq!(
        ingress(&mut t, &tcp((WORLD, 1002), (POD, 80), SYN)),
        TC_ACT_SHOT
    );
    assert_eq!(
        ingress(&mut t, &tcp((FAR_WORLD, 1003), (POD, 443), SYN)),
        TC_ACT_SHOT
    );
    let dns = packet(UDP, (FAR_WORLD, 1004), (POD, 53), 0, true);
    assert_eq!(ingress(&mut t, &dns), TC_ACT_OK);
    assert_eq!(
        ingress(&mut t, &tcp((OTHER, 1005), (POD, 53), SYN)),
        TC_ACT_SHOT
    );
    assert_eq!(ingress(&mut t, &echo(OTHER, POD, 8, 2)), TC_ACT_SHOT);
}

#[test]
fn replies_of_admitted_connections_pass_and_nothing_else_does() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    // Ingress isolated with no entries: nothing may start a connection towards POD.
    setup(&mut t, EP_INGRESS_ISOLATED);
    assert_eq!(
        ingress(&mut t, &tcp((PEER, 80), (POD, 4000), SYN)),
        TC_ACT_SHOT
    );

    // POD opens a connection (egress is open); its replies come in.
    assert_eq!(
        egress(&mut t, &tcp((POD, 4000), (PEER, 80), SYN)),
        TC_ACT_OK
    );
    assert_eq!(
        ingress(&mut t, &tcp((PEER, 80), (POD, 4000), SYN_ACK)),
        TC_ACT_OK
    );
    assert_eq!(
        egress(&mut t, &tcp((POD, 4000), (PEER, 80), ACK)),
        TC_ACT_OK
    );
    assert_eq!(
        ingress(&mut t, &tcp((PEER, 80), (POD, 4000), ACK)),
        TC_ACT_OK
    );
    // A bare SYN on the reversed tuple is a new connection, never a reply.
    assert_eq!(
        ingress(&mut t, &tcp((PEER, 80), (POD, 4000), SYN)),
        TC_ACT_SHOT
    );
    // Other ports or peers are not replies.
    assert_eq!(
        ingress(&mut t, &tcp((PEER, 80), (POD, 4001), ACK)),
        TC_ACT_SHOT
    );
    assert_eq!(
        ingress(&mut t, &tcp((OTHER, 80), (POD, 4000), ACK)),
        TC_ACT_SHOT
    );

    // UDP: the answer to a datagram POD sent.
    let query = packet(UDP, (POD, 5353), (WORLD, 53), 0, true);
    let answer = packet(UDP, (WORLD, 53), (POD, 5353), 0, true);
    assert_eq!(ingress(&mut t, &answer), TC_ACT_SHOT);
    assert_eq!(egress(&mut t, &query), TC_ACT_OK);
    assert_eq!(ingress(&mut t, &answer), TC_ACT_OK);

    // ICMP: echo replies to POD's own pings pass, unsolicited ones do not.
    assert_eq!(ingress(&mut t, &echo(WORLD, POD, 0, 42)), TC_ACT_SHOT);
    assert_eq!(egress(&mut t, &echo(POD, WORLD, 8, 42)), TC_ACT_OK);
    assert_eq!(ingress(&mut t, &echo(WORLD, POD, 0, 42)), TC_ACT_OK);
    assert_eq!(ingress(&mut t, &echo(WORLD, POD, 0, 43)), TC_ACT_SHOT);
}

/// A connection is tracked once per endpoint, keyed from the endpoint's side and marked with
/// the way it was opened, so its packets either way find it with one lookup; an entry an
/// older datapath wrote (opened towards the endpoint, keyed as received) still counts.
#[test]
fn a_connection_is_tracked_once_per_endpoint_and_older_entries_still_count() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    // Isolated both ways; only PEER may open connections to POD.
    setup(&mut t, EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED);
    allow(&mut t, entry_key(POLICY_INGRESS, PEER_ID, None));
    assert_eq!(
        ingress(&mut t, &tcp((PEER, 40000), (POD, 8080), SYN)),
        TC_ACT_OK
    );
    assert_eq!(
        egress(&mut t, &tcp((POD, 8080), (PEER, 40000), SYN_ACK)),
        TC_ACT_OK,
        "the reply of an admitted connection"
    );
    assert_eq!(
        ingress(&mut t, &tcp((PEER, 40000), (POD, 8080), ACK)),
        TC_ACT_OK
    );
    let ct = t.dp.lb_ref().conntrack().unwrap();
    let tracked: Vec<_> = ct.iter().filter(|(k, _)| k.dir == CT_ENDPOINT).collect();
    assert_eq!(tracked.len(), 1, "one entry for the connection: {ct:?}");
    let (key, entry) = *tracked[0];
    assert_eq!(
        (ip_from_be(key.saddr), u16::from_be(key.sport)),
        (POD, 8080),
        "keyed from the endpoint's side"
    );
    assert_eq!(
        (ip_from_be(key.daddr), u16::from_be(key.dport)),
        (PEER, 40000)
    );
    assert_eq!(entry.flags, CT_F_ADMITTED_INGRESS);

    // POD may not open connections to PEER, and an untracked reply is no reply.
    assert_eq!(
        egress(&mut t, &tcp((POD, 8080), (PEER, 40001), ACK)),
        TC_ACT_SHOT
    );
    // The same connection as an older datapath tracked it.
    let legacy = Ct4Key {
        saddr: ip_to_be(PEER),
        daddr: ip_to_be(POD),
        sport: 40001u16.to_be(),
        dport: 8080u16.to_be(),
        proto: TCP,
        dir: CT_LEGACY_INGRESS,
        pad: 0,
    };
    t.dp.lb()
        .set_conntrack(legacy, Ct4Entry { flags: 0, ..entry })
        .unwrap();
    assert_eq!(
        egress(&mut t, &tcp((POD, 8080), (PEER, 40001), ACK)),
        TC_ACT_OK,
        "an older datapath's entry admits the connection's replies"
    );
    assert_eq!(
        egress(&mut t, &tcp((POD, 8080), (PEER, 40002), ACK)),
        TC_ACT_SHOT
    );
}

/// An ICMP error quoting `inner` (IPv4 header + the first 8 bytes of its L4 header).
fn icmp_error(from: Ipv4Addr, to: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 0, 0, 0];
    body.extend_from_slice(&inner[14..14 + 28]);
    icmp(from, to, 3, &body)
}

#[test]
fn icmp_errors_pass_only_for_tracked_connections() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, EP_INGRESS_ISOLATED);
    let sent = packet(UDP, (POD, 6000), (PEER, 7000), 0, true);
    let router = Ipv4Addr::new(192, 0, 2, 1);
    assert_eq!(
        ingress(&mut t, &icmp_error(router, POD, &sent)),
        TC_ACT_SHOT,
        "no such connection yet"
    );
    assert_eq!(egress(&mut t, &sent), TC_ACT_OK);
    assert_eq!(ingress(&mut t, &icmp_error(router, POD, &sent)), TC_ACT_OK);
    let other = packet(UDP, (POD, 6001), (PEER, 7000), 0, true);
    assert_eq!(
        ingress(&mut t, &icmp_error(router, POD, &other)),
        TC_ACT_SHOT
    );
}

#[test]
fn a_policy_change_rejudges_established_connections() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, EP_INGRESS_ISOLATED);
    let key = entry_key(POLICY_INGRESS, PEER_ID, Some((TCP, 80, 16)));
    allow(&mut t, key);
    assert_eq!(
        ingress(&mut t, &tcp((PEER, 3000), (POD, 80), SYN)),
        TC_ACT_OK
    );
    assert_eq!(
        egress(&mut t, &tcp((POD, 80), (PEER, 3000), SYN_ACK)),
        TC_ACT_OK
    );
    assert_eq!(
        ingress(&mut t, &tcp((PEER, 3000), (POD, 80), ACK)),
        TC_ACT_OK
    );

    // The entry goes away: without a revision bump the connection still rides on conntrack.
    t.dp.policy().remove_entry(key).unwrap();
    assert_eq!(
        ingress(&mut t, &tcp((PEER, 3000), (POD, 80), ACK)),
        TC_ACT_OK
    );
    // With it, both directions of the revoked connection stop.
    t.dp.bump_policy_revision().unwrap();
    assert_eq!(
        egress(&mut t, &tcp((POD, 80), (PEER, 3000), ACK)),
        TC_ACT_SHOT
    );
    assert_eq!(
        ingress(&mut t, &tcp((PEER, 3000), (POD, 80), ACK)),
        TC_ACT_SHOT
    );

    // Allowed again: a new connection is admitted, and one that survives a change goes on.
    allow(&mut t, key);
    t.dp.bump_policy_revision().unwrap();
    assert_eq!(
        ingress(&mut t, &tcp((PEER, 3001), (POD, 80), SYN)),
        TC_ACT_OK
    );
    t.dp.bump_policy_revision().unwrap();
    assert_eq!(
        egress(&mut t, &tcp((POD, 80), (PEER, 3001), SYN_ACK)),
        TC_ACT_OK
    );
}

#[test]
fn a_pod_reaching_itself_is_never_judged() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED);
    assert_eq!(
        ingress(&mut t, &tcp((HAIRPIN_IP, 3000), (POD, 80), SYN)),
        TC_ACT_OK
    );
    assert_eq!(
        egress(&mut t, &tcp((POD, 80), (HAIRPIN_IP, 3000), SYN_ACK)),
        TC_ACT_OK
    );
    assert_eq!(
        egress(&mut t, &tcp((POD, 3000), (PEER, 80), SYN)),
        TC_ACT_SHOT
    );
}

#[test]
fn a_service_connection_is_judged_against_its_backend() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    setup(&mut t, EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED);
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    one_backend_service(&mut t, vip, PEER);
    // Port 80 of the frontend is not what the entry names; the backend's 8080 is.
    assert_eq!(
        egress(&mut t, &tcp((POD, 4000), (vip, 80), SYN)),
        TC_ACT_SHOT
    );
    allow(
        &mut t,
        entry_key(POLICY_EGRESS, PEER_ID, Some((TCP, 8080, 16))),
    );
    assert_eq!(egress(&mut t, &tcp((POD, 4001), (vip, 80), SYN)), TC_ACT_OK);
    // The reply, as the backend sends it and as a backend on this node would have it
    // translated back already: both are replies of the admitted connection.
    assert_eq!(
        ingress(&mut t, &tcp((PEER, 8080), (POD, 4001), SYN_ACK)),
        TC_ACT_OK
    );
    assert_eq!(
        ingress(&mut t, &tcp((vip, 80), (POD, 4001), ACK)),
        TC_ACT_OK
    );
    assert_eq!(
        ingress(&mut t, &tcp((vip, 80), (POD, 4002), ACK)),
        TC_ACT_SHOT
    );
}

/// A pod of this node beside POD, isolated for ingress (on another device than the tests run on).
const NEIGHBOR: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 6);

/// POD without policy, and NEIGHBOR with ingress isolation and no entry yet.
fn with_isolated_neighbor() -> TestDatapath {
    let mut t = TestDatapath::load();
    setup(&mut t, 0);
    t.dp.upsert_endpoint(
        NEIGHBOR,
        EndpointInfo {
            ifindex: 2,
            flags: EP_INGRESS_ISOLATED,
            identity: 302,
            ..Default::default()
        },
    )
    .unwrap();
    t
}

/// A pod of this node sending to another: the receiving pod's ingress policy is judged as
/// the packet leaves the sender (it is then handed straight into the receiver's namespace,
/// its host-side device's egress program never sees it), and the reply passes as one.
#[test]
fn a_pod_of_this_node_is_reached_through_its_ingress_policy() {
    if !require_root() {
        return;
    }
    let mut t = with_isolated_neighbor();
    let conn = ((POD, 41000), (NEIGHBOR, 80));
    assert_eq!(egress(&mut t, &tcp(conn.0, conn.1, SYN)), TC_ACT_SHOT);
    assert_eq!(
        policy_drops(&t),
        1,
        "denied by the neighbor's ingress policy"
    );

    let mut key = entry_key(POLICY_INGRESS, 299, Some((TCP, 80, 16)));
    key.data.endpoint = ip_to_be(NEIGHBOR);
    allow(&mut t, key);
    assert_eq!(
        egress(&mut t, &tcp(conn.0, conn.1, SYN)),
        TC_ACT_REDIRECT,
        "admitted, and handed over"
    );
    assert_eq!(egress(&mut t, &tcp(conn.0, conn.1, ACK)), TC_ACT_REDIRECT);
    // Another port of the neighbor stays closed.
    assert_eq!(
        egress(&mut t, &tcp((POD, 41001), (NEIGHBOR, 81), SYN)),
        TC_ACT_SHOT
    );
    assert_eq!(policy_drops(&t), 2);
}

/// Two pods of this node: once both ends' entries admitted a TCP connection under one policy
/// revision, both are marked, and the sender's entry alone admits its later packets (the
/// receiver's is not looked up); a policy change clears the mark, and the receiver is judged
/// again.
#[test]
fn a_local_connection_admitted_at_both_ends_skips_the_receivers_lookup() {
    if !require_root() {
        return;
    }
    let mut t = with_isolated_neighbor();
    let mut key = entry_key(POLICY_INGRESS, 299, Some((TCP, 80, 16)));
    key.data.endpoint = ip_to_be(NEIGHBOR);
    allow(&mut t, key);
    let conn = ((POD, 42000), (NEIGHBOR, 80));
    assert_eq!(egress(&mut t, &tcp(conn.0, conn.1, SYN)), TC_ACT_REDIRECT);
    let entry_of = |t: &TestDatapath, local: Ipv4Addr| {
        t.dp.lb_ref()
            .conntrack()
            .unwrap()
            .into_iter()
            .find(|(k, _)| k.dir == CT_ENDPOINT && k.saddr == ip_to_be(local))
            .expect("tracked")
    };
    for local in [POD, NEIGHBOR] {
        let (_, entry) = entry_of(&t, local);
        assert_ne!(entry.flags & CT_F_PEER_ADMITTED, 0, "{local}: {entry:?}");
    }

    // The neighbor's entry gone (as if evicted), and its policy without a revision bump: a
    // lookup would judge the packet afresh and deny it. Marked, it is not made.
    let (neighbor_key, _) = entry_of(&t, NEIGHBOR);
    assert!(t.dp.lb().remove_conntrack(&neighbor_key).unwrap());
    t.dp.policy().remove_entry(key).unwrap();
    assert_eq!(
        egress(&mut t, &tcp(conn.0, conn.1, ACK)),
        TC_ACT_REDIRECT,
        "admitted by the sender's entry alone"
    );

    // A policy change: the sender's entry is re-judged (and admits), its mark goes, and the
    // neighbor's ingress policy is asked again.
    t.dp.bump_policy_revision().unwrap();
    assert_eq!(egress(&mut t, &tcp(conn.0, conn.1, ACK)), TC_ACT_SHOT);
    let (_, entry) = entry_of(&t, POD);
    assert_eq!(entry.flags & CT_F_PEER_ADMITTED, 0, "{entry:?}");
}
