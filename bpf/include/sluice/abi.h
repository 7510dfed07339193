/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * The one definition of every structure the datapath shares with userspace.
 * crates/sluice-datapath/src/abi.rs mirrors these in Rust; its tests read the compiled objects'
 * BTF and fail when a size or an offset drifts. Addresses and ports are in
 * network byte order everywhere.
 */
#ifndef SLUICE_ABI_H
#define SLUICE_ABI_H

#include <linux/types.h>

/* Capacities; userspace may size maps differently at load time. */
#define SLUICE_MAX_ENDPOINTS 65536
#define SLUICE_MAX_TUNNELS 16384
#define SLUICE_MAX_METRICS 1024
/* Counters without a reason live in an array indexed point * SLUICE_OUTCOMES + outcome. */
#define SLUICE_OUTCOMES 16
#define SLUICE_MAX_LB_SLOTS 262144
#define SLUICE_MAX_BACKENDS 65536
#define SLUICE_MAX_REVNAT 65536
#define SLUICE_MAX_CT 65536        /* default; the agent sizes it at load time */
#define SLUICE_MAX_AFFINITY 65536
#define SLUICE_MAX_SOCK_REVNAT 65536
#define SLUICE_MAX_IPCACHE 65536
#define SLUICE_MAX_POLICY_CIDRS 16384
#define SLUICE_MAX_POLICY 65536    /* default; the agent sizes it at load time */
#define SLUICE_EVENTS_BYTES (4U << 20)  /* ring buffer; a power of two */
/* The datapath wakes the agent once this share (1/N) of the ring is unread; below it the
 * agent reads on its own timer (a wakeup per event would cost a context switch per flow on a
 * busy node). A share, not bytes: the agent sizes the ring at load time. */
#define SLUICE_EVENTS_WAKEUP_SHARE 8
#define SLUICE_MAX_FLOW_SEEN 65536

/* datapath_config.routing_mode */
#define SLUICE_ROUTING_NATIVE 0
#define SLUICE_ROUTING_VXLAN 1

/* Observation points (metrics_key.point), named like Hubble's. */
#define SLUICE_POINT_FROM_ENDPOINT 1
#define SLUICE_POINT_TO_ENDPOINT 2
#define SLUICE_POINT_FROM_OVERLAY 3
#define SLUICE_POINT_TO_OVERLAY 4
#define SLUICE_POINT_FROM_NETDEV 5

/* What a program did with a packet (metrics_key.outcome). */
#define SLUICE_OUTCOME_TO_STACK 1  /* handed to the kernel's stack */
#define SLUICE_OUTCOME_REDIRECT 2  /* delivered straight to a local endpoint */
#define SLUICE_OUTCOME_ENCAP 3     /* sent into the VXLAN tunnel */
#define SLUICE_OUTCOME_DROP 4

/* Drop reasons (metrics_key.reason), numbered as Hubble's flow.DropReason. */
#define SLUICE_DROP_INVALID_SOURCE_IP 132
#define SLUICE_DROP_POLICY_DENIED 133
#define SLUICE_DROP_INVALID_PACKET 134
#define SLUICE_DROP_CT_INSERT_FAILED 155
#define SLUICE_DROP_NO_SERVICE_BACKEND 158
#define SLUICE_DROP_NO_TUNNEL_ENDPOINT 160
#define SLUICE_DROP_FIB_LOOKUP_FAILED 169

/* What a program did to a packet besides forwarding it (metrics_key.outcome). */
#define SLUICE_OUTCOME_DNAT 5      /* service frontend translated to a backend */
#define SLUICE_OUTCOME_REVNAT 6    /* reply source translated back to the frontend */
#define SLUICE_OUTCOME_ROUTED 7    /* sent out by our own FIB lookup (source may be this node) */
#define SLUICE_OUTCOME_REJECT 8    /* answered with a TCP RST (reason: why) */
#define SLUICE_OUTCOME_POLICY_ALLOWED 9  /* a new connection an isolated endpoint's policy admitted */

/* lb4_service.flags */
#define SLUICE_SVC_AFFINITY 0x1    /* sessionAffinity: ClientIP */
#define SLUICE_SVC_EXTERNAL 0x2    /* NodePort/ExternalIP/LoadBalancer: also translated at the uplink */
#define SLUICE_SVC_MAGLEV 0x4      /* new connections pick from the service's Maglev table */

/* Maglev tables: one array per service (sluice_maglev, keyed by rev_nat_id) of this many
 * backend ids (a prime); the agent may create them with another size, given here. */
#define SLUICE_MAGLEV_DEFAULT_SIZE 16381
#define SLUICE_MAX_MAGLEV_SERVICES 8192

/*
 * Hairpin: a pod reaching itself through a service. Its packets get this source so they
 * leave and re-enter the pod like any other (a packet from its own address would be
 * dropped as martian, and the reply would never leave through the veth).
 * 169.254.42.1 in network byte order.
 */
#define SLUICE_HAIRPIN_IP 0x012afea9U


/* How long a tracked connection stays without packets before a new one may replace it:
 * UDP has no close, so a client reusing its port must not stick to a backend forever. */
#define SLUICE_CT_LIFETIME_UDP_NS (60ULL * 1000000000ULL)
#define SLUICE_CT_LIFETIME_TCP_NS (6ULL * 3600ULL * 1000000000ULL)

/* ct4_key.dir */
#define SLUICE_CT_SERVICE 0        /* client -> frontend, as the client sent it */
#define SLUICE_CT_REPLY 1          /* backend -> client, the reply to reverse-translate */
#define SLUICE_CT_ENDPOINT 2       /* policy: a local endpoint's connection, keyed from its side
				    * (its address and port first, whichever way it was opened) */
#define SLUICE_CT_LEGACY_INGRESS 3 /* older datapaths: a connection to a local endpoint, keyed
				    * as received; still honoured until it expires */

/* ct4_entry.flags of SLUICE_CT_ENDPOINT entries */
#define SLUICE_CT_F_ADMITTED_INGRESS 0x1  /* opened towards the endpoint (else by it) */
#define SLUICE_CT_F_NOT_TRANSLATED 0x2    /* a TCP connection no service step of this node
					   * translated: its packets need no reply lookup */
#define SLUICE_CT_F_PEER_ADMITTED 0x4     /* a TCP connection between two pods of this node,
					   * admitted by the other pod's entry under this entry's
					   * policy revision: packets this endpoint sends need no
					   * lookup of the other's entry (cleared on re-judging) */

/* Security identities reserved for what is not a pod (numbered as Cilium's). Pods get
 * cluster identities from 256; ipBlock prefixes node-local ones from 1 << 24. */
#define SLUICE_IDENTITY_ANY 0      /* policy entries only: every peer */
#define SLUICE_IDENTITY_HOST 1     /* this node */
#define SLUICE_IDENTITY_WORLD 2    /* anything the ipcache does not know */
#define SLUICE_IDENTITY_REMOTE_NODE 6

/* endpoint_info.flags: some policy selects the endpoint in that direction, so only what
 * its policy entries allow may pass. */
#define SLUICE_EP_INGRESS_ISOLATED 0x1
#define SLUICE_EP_EGRESS_ISOLATED 0x2

/* policy_key.direction */
#define SLUICE_POLICY_INGRESS 0
#define SLUICE_POLICY_EGRESS 1

/* policy_entry.verdict; room for deny/audit/redirect-to-proxy later. */
#define SLUICE_VERDICT_ALLOW 1

/* policy_entry.flags: what the rule behind the entry names, for flows' match type. */
#define SLUICE_POLICY_ENTRY_L4 0x1  /* a protocol or port, not just peers */

/* Flow events (flow_event.type), numbered as Cilium's monitor message types. */
#define SLUICE_EVENT_DROP 1
#define SLUICE_EVENT_TRACE 4
#define SLUICE_EVENT_POLICY_VERDICT 5
#define SLUICE_EVENT_TRACE_SOCK 7

/* Observation points of socket-LB (flow_event.point for SLUICE_EVENT_TRACE_SOCK and its drops). */
#define SLUICE_POINT_SOCK_CONNECT 6
#define SLUICE_POINT_SOCK_SENDMSG 7
#define SLUICE_POINTS 8  /* one more than the largest SLUICE_POINT_* */

/* datapath_config.monitor_aggregation: which trace events reach the ring buffer. Drops and
 * policy verdicts are always sent. */
#define SLUICE_AGGREGATION_NONE 0    /* every packet */
#define SLUICE_AGGREGATION_MEDIUM 1  /* a flow's first packet, TCP SYN/FIN/RST, and again after
				      * SLUICE_AGGREGATION_INTERVAL_NS */
#define SLUICE_AGGREGATION_INTERVAL_NS (5ULL * 1000000000ULL)

/* flow_event.flags */
#define SLUICE_EVF_REPLY 0x1         /* the packet is a reply of a tracked connection */
#define SLUICE_EVF_REPLY_KNOWN 0x2   /* SLUICE_EVF_REPLY is meaningful */
#define SLUICE_EVF_SVC_DNAT 0x4      /* svc_* is the frontend the destination was translated from */
#define SLUICE_EVF_SVC_REVNAT 0x8    /* svc_* is the frontend the source was translated back to */
#define SLUICE_EVF_POLICY_ALLOWED 0x10  /* policy verdict: allowed (else denied) */
#define SLUICE_EVF_POLICY_L4 0x20    /* policy verdict: the entry names a protocol/port */

/*
 * One event in the sluice_events ring buffer. The tuple is the connection as its two ends
 * see it: for a service packet the backend, with the frontend in svc_*. Parsed here rather
 * than copied as raw bytes, so the agent needs no packet decoder.
 */
struct flow_event {
	__u64 ktime_ns;      /* bpf_ktime_get_ns() */
	__u64 sock_cookie;   /* socket events: the socket */
	__u64 netns_cookie;  /* socket events: the network namespace of the socket */
	__u32 ifindex;
	__u32 len;           /* bytes on the wire */
	__u8 type;           /* SLUICE_EVENT_* */
	__u8 point;          /* SLUICE_POINT_* */
	__u8 outcome;        /* SLUICE_OUTCOME_* (traces) */
	__u8 proto;
	__u16 reason;        /* drops: SLUICE_DROP_* */
	__u8 tcp_flags;
	__u8 flags;          /* SLUICE_EVF_* */
	__u32 saddr;
	__u32 daddr;
	__u16 sport;         /* ICMP: type << 8 | code in sport, echo id in dport */
	__u16 dport;
	__u32 svc_addr;
	__u16 svc_port;
	__u8 policy_dir;     /* SLUICE_POLICY_* (policy verdicts) */
	__u8 pad;
	__u32 policy_identity;  /* the peer identity the deciding entry was found under */
	__u32 policy_cookie;    /* the rule that decided */
};

/* Per-CPU count of events the ring buffer had no room for. */
struct events_lost {
	__u64 events;
};

/* A pod on this node, keyed by its IPv4 address. */
struct endpoint_key {
	__u32 ip;
};

struct endpoint_info {
	__u32 ifindex;     /* host side of the pod's veth */
	__u8 pod_mac[6];   /* MAC inside the pod */
	__u8 host_mac[6];  /* MAC of the host side */
	__u32 flags;       /* SLUICE_EP_* */
	__u32 identity;    /* security identity; 0 until the agent knows the pod */
};

/* LPM key: a remote pod CIDR (or single IP) and its prefix length. */
struct tunnel_key {
	__u32 prefixlen;
	__u32 ip;
};

/* The node that hosts a remote prefix. */
struct tunnel_info {
	__u32 node_ip;     /* underlay address of the remote node */
	__u8 node_mac[6];  /* the remote VXLAN device's MAC: inner destination MAC */
	__u16 flags;       /* reserved, 0 */
};

/* Node-wide settings: the single entry of the dp_config array. */
struct datapath_config {
	__u32 routing_mode;
	__u32 vxlan_ifindex;
	__u8 vxlan_mac[6];
	__u16 reserved;
	__u32 node_ip;
	__u32 vni;
	__u32 maglev_size;  /* entries of every Maglev table */
	__u32 policy_revision;  /* bumped on every policy change: tracked connections are re-judged */
	__u8 monitor_aggregation;  /* SLUICE_AGGREGATION_* */
	__u8 pad[3];
};

/* Per-CPU counters by where and what happened. */
struct metrics_key {
	__u8 point;
	__u8 outcome;
	__u16 reason;
};

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

/*
 * Service frontends. Slot 0 describes the service; slots 1..count each name one backend,
 * so picking a backend is one random number and one lookup, and adding or removing a
 * backend touches only its own slot and slot 0.
 */
struct lb4_key {
	__u32 address;   /* frontend address (ClusterIP, ...) */
	__u16 port;      /* frontend port */
	__u8 proto;      /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 scope;      /* reserved, 0 */
	__u16 slot;
	__u16 pad;
};

struct lb4_service {
	__u32 backend_id;        /* slot > 0: the backend in this slot */
	__u16 count;             /* slot 0: number of backend slots */
	__u16 flags;             /* slot 0: SLUICE_SVC_* */
	__u32 rev_nat_id;        /* slot 0: reverse translation of this frontend */
	__u32 affinity_timeout;  /* slot 0: seconds, with SLUICE_SVC_AFFINITY */
};

struct lb4_backend {
	__u32 address;
	__u16 port;
	__u8 proto;
	__u8 flags;      /* reserved, 0 */
};

/* The frontend a reply's source is translated back to. */
struct lb4_revnat {
	__u32 address;
	__u16 port;
	__u16 pad;
};

struct ct4_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 dir;        /* SLUICE_CT_* */
	__u16 pad;
};

/*
 * The rewrites a tracked packet gets. SERVICE entries: destination -> nat (the backend),
 * and source address -> alt when set (node address for SNAT, or the hairpin address).
 * REPLY entries: source -> nat (the frontend), and destination address -> alt when set
 * (the original client, undoing SNAT/hairpin).
 */
struct ct4_entry {
	__u64 last_seen_ns;  /* flow_clock_ns() of the last packet (CLOCK_MONOTONIC) */
	__u32 nat_address;
	__u16 nat_port;
	__u16 flags;         /* SLUICE_CT_F_* (ENDPOINT entries), else 0 */
	__u32 rev_nat_id;
	__u32 backend_id;
	__u32 alt_address;   /* 0: leave the other address alone */
	__u32 policy_revision;  /* ENDPOINT entries: the policy they were admitted under */
};

/* sessionAffinity: ClientIP memory, per client and frontend. */
struct lb4_affinity_key {
	__u32 client;
	__u32 rev_nat_id;
};

struct lb4_affinity {
	__u64 last_used_ns;
	__u32 backend_id;
	__u32 pad;
};

/*
 * Socket-LB: a socket connected to a frontend was given a backend at connect(); the socket
 * keeps the pair in its own storage (freed with it), so getpeername() and recvmsg() can
 * show the frontend to the application.
 */
struct sock_front {
	__u32 backend_address;
	__u16 backend_port;
	__u16 pad;
	struct lb4_revnat frontend;
};

/*
 * Socket-LB for unconnected UDP: a socket sending to a frontend was given a backend at
 * sendmsg(), and may send to several; recvmsg() finds the frontend of a datagram's source
 * here. Keyed by socket cookie and the backend.
 */
struct sock_revnat_key {
	__u64 cookie;
	__u32 address;   /* backend */
	__u16 port;      /* backend */
	__u16 pad;
};

/*
 * ipcache: who an address is. Pod /32s (every node's), node addresses; a miss is world.
 * The same key shape serves the policy CIDR map (ipBlock prefix -> CIDR identity).
 */
struct ipcache_key {
	__u32 prefixlen;
	__u32 ip;
};

struct ipcache_info {
	__u32 identity;
	__u32 node_ip;     /* underlay address of the node hosting it; 0 for this node */
};

/*
 * Policy entries of every local endpoint, in one LPM trie. The key is compared from the
 * endpoint down to the port: an entry for any protocol stops after the direction, one for
 * a port range covers the range's high bits. The identity is always exact (ANY is a value
 * looked up separately).
 */
struct policy_key {
	__u32 prefixlen;
	__u32 endpoint;    /* the local endpoint's address */
	__u32 identity;    /* the peer's identity */
	__u8 direction;    /* SLUICE_POLICY_* */
	__u8 proto;
	__u16 dport;       /* network order, so its high bits come first */
};

#define SLUICE_POLICY_FULL_PREFIX 96

struct policy_entry {
	__u8 verdict;      /* SLUICE_VERDICT_* */
	__u8 flags;        /* reserved, 0 */
	__u16 proxy_port;  /* reserved for L7 redirects, 0 */
	__u32 cookie;      /* names the rule that decided, for flows and counters */
};

#endif /* SLUICE_ABI_H */
