//! Flow events from the tc programs, run with BPF_PROG_TEST_RUN and read back from the ring
//! buffer: traces with their tuple, drops with their reason, policy verdicts with the rule,
//! service translation, medium aggregation, and loss counted when the buffer is full.

mod common;

use std::net::Ipv4Addr;

use aya::maps::{MapData, RingBuf};
use common::{one_backend_service, packet, require_root, run, TestDatapath};
use sluice_datapath::abi::*;
use sluice_datapath::policy::PolicyMapKey;
use sluice_datapath::testrun::{self, SkbContext, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};
use sluice_datapath::EndpointInfo;

const POD: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 5);
const POD_ID: u32 = 299;
const PEER: Ipv4Addr = Ipv4Addr::new(10, 20, 1, 7);
const PEER_ID: u32 = 300;
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 20, 1, 8);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const TCP: u8 = 6;
const UDP: u8 = 17;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN_ACK: u8 = 0x11;

fn setup(t: &mut TestDatapath, flags: u32, aggregation: u8) -> RingBuf<MapData> {
    t.dp.upsert_endpoint(
        POD,
        EndpointInfo {
            ifindex: 1,
            flags,
            identity: POD_ID,
            ..Default::default()
        },
    )
    .unwrap();
    t.dp.policy()
        .set_ipcache(
            PEER,
            32,
            IpcacheInfo {
                identity: PEER_ID,
                node_ip: 0,
            },
        )
        .unwrap();
    t.dp.set_monitor_aggregation(aggregation).unwrap();
    t.dp.take_events().unwrap()
}

fn drain(ring: &mut RingBuf<MapData>) -> Vec<FlowEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(FlowEvent::from_bytes(&item).expect("a whole event"));
    }
    out
}

fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    packet(TCP, src, dst, flags, true)
}

fn egress(t: &mut TestDatapath, p: &[u8]) -> u32 {
    run(t, sluice_datapath::FROM_CONTAINER, p).retval
}

#[test]
fn a_forwarded_packet_yields_a_trace_with_its_tuple() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    let mut ring = setup(&mut t, 0, AGGREGATION_NONE);
    assert_eq!(
        egress(&mut t, &tcp((POD, 4000), (PEER, 80), SYN)),
        TC_ACT_OK
    );
    let events = drain(&mut ring);
    assert_eq!(events.len(), 1, "{events:?}");
    let e = events[0];
    assert_eq!(e.r#type, EVENT_TRACE);
    assert_eq!(e.point, POINT_FROM_ENDPOINT);
    assert_eq!(e.outcome, OUTCOME_TO_STACK);
    assert_eq!((e.saddr, e.daddr), (ip_to_be(POD), ip_to_be(PEER)));
    assert_eq!((u16::from_be(e.sport), u16::from_be(e.dport)), (4000, 80));
    assert_eq!((e.proto, e.tcp_flags), (TCP, SYN));
    assert_eq!(
        e.flags & (EVF_REPLY | EVF_REPLY_KNOWN),
        EVF_REPLY_KNOWN,
        "a SYN is known not to be a reply"
    );
    assert_eq!(e.ifindex, 1);
    assert!(e.ktime_ns > 0 && e.len > 0);
}

#[test]
fn a_drop_yields_an_event_with_its_reason() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    let mut ring = setup(&mut t, 0, AGGREGATION_MEDIUM);
    // Not the pod's address: anti-spoofing drops it.
    let spoofed = tcp((Ipv4Addr::new(10, 20, 0, 99), 4000), (PEER, 80), SYN);
    for _ in 0..3 {
        assert_eq!(egress(&mut t, &spoofed), TC_ACT_SHOT);
    }
    let events = drain(&mut ring);
    assert_eq!(
        events.len(),
        3,
        "every drop is reported, aggregation or not"
    );
    for e in events {
        assert_eq!(e.r#type, EVENT_DROP);
        assert_eq!(e.reason, DROP_INVALID_SOURCE_IP);
        assert_eq!(e.point, POINT_FROM_ENDPOINT);
    }
}

#[test]
fn policy_verdicts_name_the_rule_and_the_peer() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    let mut ring = setup(&mut t, EP_EGRESS_ISOLATED, AGGREGATION_MEDIUM);
    t.dp.policy()
        .set_entry(
            PolicyMapKey {
                prefix_len: 96,
                data: PolicyKeyData {
                    endpoint: ip_to_be(POD),
                    identity: PEER_ID,
                    direction: POLICY_EGRESS,
                    proto: TCP,
                    dport: 80u16.to_be(),
                },
            },
            PolicyEntry {
                verdict: VERDICT_ALLOW,
                flags: POLICY_ENTRY_L4,
                cookie: 42,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        egress(&mut t, &tcp((POD, 4000), (PEER, 80), SYN)),
        TC_ACT_OK
    );
    assert_eq!(
        egress(&mut t, &tcp((POD, 4001), (PEER, 81), SYN)),
        TC_ACT_SHOT
    );
    let events = drain(&mut ring);
    let kinds: Vec<(u8, u16)> = events.iter().map(|e| (e.r#type, e.reason)).collect();
    assert_eq!(
        kinds,
        vec![
            (EVENT_POLICY_VERDICT, 0),
            (EVENT_TRACE, 0),
            (EVENT_POLICY_VERDICT, DROP_POLICY_DENIED),
            (EVENT_DROP, DROP_POLICY_DENIED),
        ]
    );
    let allowed = events[0];
    assert_eq!(allowed.policy_dir, POLICY_EGRESS);
    assert_eq!(allowed.policy_identity, PEER_ID);
    assert_eq!(allowed.policy_cookie, 42);
    assert_ne!(allowed.flags & EVF_POLICY_ALLOWED, 0);
    assert_ne!(allowed.flags & EVF_POLICY_L4, 0);
    let denied = events[2];
    assert_eq!(denied.flags & EVF_POLICY_ALLOWED, 0);
    assert_eq!(u16::from_be(denied.dport), 81);
}

#[test]
fn a_service_packet_records_frontend_and_backend() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    let mut ring = setup(&mut t, 0, AGGREGATION_MEDIUM);
    one_backend_service(&mut t, VIP, BACKEND);
    assert_eq!(egress(&mut t, &tcp((POD, 4000), (VIP, 80), SYN)), TC_ACT_OK);
    let events = drain(&mut ring);
    assert_eq!(events.len(), 1, "{events:?}");
    let e = events[0];
    assert_ne!(e.flags & EVF_SVC_DNAT, 0);
    assert_eq!((e.svc_addr, u16::from_be(e.svc_port)), (ip_to_be(VIP), 80));
    assert_eq!((e.daddr, u16::from_be(e.dport)), (ip_to_be(BACKEND), 8080));
}

/// A packet handed from one pod of the node straight to another: aggregated, one event tells
/// it — the receiver's to-endpoint trace, carrying the tuple as sent and the service
/// translation the sender made (both ways); without aggregation the sender's trace comes too.
#[test]
fn a_packet_handed_to_a_local_pod_is_reported_where_it_arrives() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    let mut ring = setup(&mut t, 0, AGGREGATION_MEDIUM);
    t.dp.upsert_endpoint(
        BACKEND,
        EndpointInfo {
            ifindex: 2,
            identity: PEER_ID,
            ..Default::default()
        },
    )
    .unwrap();
    one_backend_service(&mut t, VIP, BACKEND);
    let from_backend = |t: &mut TestDatapath, p: &[u8]| {
        let ctx = SkbContext {
            ifindex: 2,
            ..Default::default()
        };
        let program = t.dp.program(sluice_datapath::FROM_CONTAINER).unwrap();
        testrun::run("from_container", program, p, Some(ctx), 1)
            .unwrap()
            .retval
    };
    assert_eq!(
        egress(&mut t, &tcp((POD, 4000), (VIP, 80), SYN)),
        TC_ACT_REDIRECT
    );
    assert_eq!(
        from_backend(&mut t, &tcp((BACKEND, 8080), (POD, 4000), SYN | ACK)),
        TC_ACT_REDIRECT
    );
    let events = drain(&mut ring);
    assert_eq!(events.len(), 2, "one per packet: {events:?}");
    let (sent, reply) = (events[0], events[1]);
    for e in [sent, reply] {
        assert_eq!((e.r#type, e.point), (EVENT_TRACE, POINT_TO_ENDPOINT));
        assert_eq!((e.svc_addr, u16::from_be(e.svc_port)), (ip_to_be(VIP), 80));
    }
    assert_eq!(sent.ifindex, 2, "told for the receiving pod's device");
    assert_ne!(sent.flags & EVF_SVC_DNAT, 0);
    assert_eq!((sent.saddr, sent.daddr), (ip_to_be(POD), ip_to_be(BACKEND)));
    assert_eq!((u16::from_be(sent.dport), sent.tcp_flags), (8080, SYN));
    assert_eq!(reply.ifindex, 1);
    assert_ne!(reply.flags & EVF_SVC_REVNAT, 0);
    assert_ne!(reply.flags & EVF_REPLY, 0, "the reply is known as one");
    assert_eq!(
        (reply.saddr, u16::from_be(reply.sport)),
        (ip_to_be(BACKEND), 8080),
        "the backend as it sent, the frontend beside it"
    );

    // Every packet at every point: the sender's trace as well, then the receiver's.
    t.dp.set_monitor_aggregation(AGGREGATION_NONE).unwrap();
    egress(&mut t, &tcp((POD, 4000), (VIP, 80), ACK));
    let seen: Vec<(u8, u8, u32)> = drain(&mut ring)
        .iter()
        .map(|e| (e.point, e.outcome, e.ifindex))
        .collect();
    assert_eq!(
        seen,
        vec![
            (POINT_FROM_ENDPOINT, OUTCOME_REDIRECT, 1),
            (POINT_TO_ENDPOINT, OUTCOME_TO_STACK, 2)
        ]
    );
}

#[test]
fn medium_aggregation_reports_new_flows_and_tcp_flag_changes() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    let mut ring = setup(&mut t, 0, AGGREGATION_MEDIUM);
    let conn = ((POD, 4000), (PEER, 80));
    egress(&mut t, &tcp(conn.0, conn.1, SYN));
    for _ in 0..5 {
        egress(&mut t, &tcp(conn.0, conn.1, ACK));
    }
    egress(&mut t, &tcp(conn.0, conn.1, FIN_ACK));
    // The connection's last ACK after another flow's packet: still covered by the report
    // its opening left.
    let other = ((POD, 4001), (PEER, 80));
    egress(&mut t, &tcp(other.0, other.1, SYN));
    egress(&mut t, &tcp(conn.0, conn.1, ACK));
    let udp = packet(UDP, (POD, 5000), (PEER, 53), 0, true);
    for _ in 0..5 {
        egress(&mut t, &udp);
    }
    let flags: Vec<(u16, u8)> = drain(&mut ring)
        .iter()
        .map(|e| (u16::from_be(e.sport), e.tcp_flags))
        .collect();
    assert_eq!(
        flags,
        vec![(4000, SYN), (4000, FIN_ACK), (4001, SYN), (5000, 0)]
    );

    // Without aggregation every packet is an event.
    t.dp.set_monitor_aggregation(AGGREGATION_NONE).unwrap();
    for _ in 0..4 {
        egress(&mut t, &tcp(conn.0, conn.1, ACK));
    }
    assert_eq!(drain(&mut ring).len(), 4);
}

/// One aggregation entry holds a connection at every point and in both directions: each of
/// them reports its own first packet, and a busy direction does not silence the other.
#[test]
fn medium_aggregation_reports_each_point_and_direction_once() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    let mut ring = setup(&mut t, 0, AGGREGATION_MEDIUM);
    let (pod, peer) = ((POD, 4100), (PEER, 80));
    let ingress = |t: &mut TestDatapath, p: &[u8]| run(t, sluice_datapath::TO_CONTAINER, p);
    egress(&mut t, &tcp(pod, peer, ACK)); // the pod sends: from-endpoint, pod -> peer
    ingress(&mut t, &tcp(peer, pod, ACK)); // the reply arrives: to-endpoint, peer -> pod
    for _ in 0..3 {
        egress(&mut t, &tcp(pod, peer, ACK));
        ingress(&mut t, &tcp(peer, pod, ACK));
    }
    // The other direction at the to-endpoint point (a packet for the peer passing this
    // device): a slot of its own, reported once.
    ingress(&mut t, &tcp(pod, peer, ACK));
    ingress(&mut t, &tcp(pod, peer, ACK));
    let seen: Vec<(u8, u32)> = drain(&mut ring)
        .iter()
        .map(|e| (e.point, e.saddr))
        .collect();
    assert_eq!(
        seen,
        vec![
            (POINT_FROM_ENDPOINT, ip_to_be(POD)),
            (POINT_TO_ENDPOINT, ip_to_be(PEER)),
            (POINT_TO_ENDPOINT, ip_to_be(POD)),
        ],
        "each point and direction reported once"
    );
}

#[test]
fn a_full_ring_buffer_counts_what_it_lost() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    let mut ring = setup(&mut t, 0, AGGREGATION_NONE);
    const RUNS: u32 = 100_000; // ~10 MB of events for a 4 MiB buffer
    let p = tcp((POD, 4000), (PEER, 80), ACK);
    let ctx = SkbContext {
        ifindex: 1,
        ..Default::default()
    };
    let program = t.dp.program(sluice_datapath::FROM_CONTAINER).unwrap();
    testrun::run("from_container", program, &p, Some(ctx), RUNS).unwrap();
    let read = drain(&mut ring).len() as u64;
    let lost = t.dp.events_lost().unwrap();
    assert!(lost > 0, "the buffer overflowed, so some were lost");
    assert_eq!(read + lost, RUNS as u64, "read {read} + lost {lost}");
}

/// How long a reader that starts waiting on the empty ring sleeps while `produce` runs, up to
/// `timeout`.
fn wait_while(
    ring: &RingBuf<MapData>,
    produce: impl FnOnce(),
    timeout: std::time::Duration,
) -> std::time::Duration {
    use std::os::fd::AsRawFd;
    let fd = ring.as_raw_fd();
    let start = std::time::Instant::now();
    let waiter = std::thread::spawn(move || {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the ring (and its descriptor) outlives the join below.
        unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        start.elapsed()
    });
    // Let the waiter fall asleep on the ring's wait queue first.
    std::thread::sleep(std::time::Duration::from_millis(200));
    produce();
    waiter.join().unwrap()
}

/// Events do not wake a waiting reader one by one (a context switch per flow on a busy
/// node); once an eighth of the ring is unread, the reader is woken.
#[test]
fn a_reader_is_woken_only_when_events_pile_up() {
    if !require_root() {
        return;
    }
    let mut t = TestDatapath::load();
    let mut ring = setup(&mut t, 0, AGGREGATION_NONE);
    drain(&mut ring);
    let p = tcp((POD, 4000), (PEER, 80), ACK);
    let ctx = SkbContext {
        ifindex: 1,
        ..Default::default()
    };
    let timeout = std::time::Duration::from_millis(1500);
    let program = t.dp.program(sluice_datapath::FROM_CONTAINER).unwrap();
    let slept = wait_while(
        &ring,
        || {
            testrun::run("from_container", program, &p, Some(ctx), 10).unwrap();
        },
        timeout,
    );
    assert!(
        slept >= timeout,
        "ten events woke the reader after {slept:?}"
    );
    assert_eq!(drain(&mut ring).len(), 10);

    // Half the ring's worth of events (a record is the event plus an 8-byte header), in one
    // burst: the reader wakes as soon as an eighth is unread, long before its timeout.
    let record = std::mem::size_of::<FlowEvent>() + 8;
    let ring_bytes = sluice_datapath::MapSizes::default().events as usize;
    let burst = (ring_bytes / 2 / record) as u32;
    let program = t.dp.program(sluice_datapath::FROM_CONTAINER).unwrap();
    let slept = wait_while(
        &ring,
        || {
            testrun::run("from_container", program, &p, Some(ctx), burst).unwrap();
        },
        timeout,
    );
    assert!(slept < timeout, "a burst of {burst} events woke nobody");
    assert_eq!(drain(&mut ring).len() as u32, burst);
}
