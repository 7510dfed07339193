/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * The one definition of every structure the datapath shares with userspace.
 * crates/sluice-abi mirrors these in Rust; its tests read the compiled objects'
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

/* datapath_config.routing_mode */
#define SLUICE_ROUTING_NATIVE 0
#define SLUICE_ROUTING_VXLAN 1

/* Observation points (metrics_key.point), named like Hubble's. */
#define SLUICE_POINT_FROM_ENDPOINT 1
#define SLUICE_POINT_TO_ENDPOINT 2
#define SLUICE_POINT_FROM_OVERLAY 3
#define SLUICE_POINT_TO_OVERLAY 4

/* What a program did with a packet (metrics_key.outcome). */
#define SLUICE_OUTCOME_TO_STACK 1  /* handed to the kernel's stack */
#define SLUICE_OUTCOME_REDIRECT 2  /* delivered straight to a local endpoint */
#define SLUICE_OUTCOME_ENCAP 3     /* sent into the VXLAN tunnel */
#define SLUICE_OUTCOME_DROP 4

/* Drop reasons (metrics_key.reason), numbered as Hubble's flow.DropReason. */
#define SLUICE_DROP_INVALID_SOURCE_IP 132
#define SLUICE_DROP_INVALID_PACKET 134
#define SLUICE_DROP_NO_TUNNEL_ENDPOINT 160

/* A pod on this node, keyed by its IPv4 address. */
struct endpoint_key {
	__u32 ip;
};

struct endpoint_info {
	__u32 ifindex;     /* host side of the pod's veth */
	__u8 pod_mac[6];   /* MAC inside the pod */
	__u8 host_mac[6];  /* MAC of the host side */
	__u32 flags;       /* reserved, 0 */
	__u32 identity;    /* security identity; 0 until policy assigns one */
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

#endif /* SLUICE_ABI_H */
