/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * Map definitions shared by every object. All maps are pinned by name under the
 * node's pin path, so separately loaded objects (and agent restarts) share them.
 */
#ifndef SLUICE_MAPS_H
#define SLUICE_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <sluice/abi.h>

#ifndef LIBBPF_PIN_BY_NAME
#define LIBBPF_PIN_BY_NAME 1
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, SLUICE_MAX_ENDPOINTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct tunnel_key);
	__type(value, struct tunnel_info);
	__uint(max_entries, SLUICE_MAX_TUNNELS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_tunnels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct datapath_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct metrics_key);
	__type(value, struct metrics_value);
	__uint(max_entries, SLUICE_MAX_METRICS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_metrics SEC(".maps");

/* The counters every forwarded packet bumps (no reason): an array slot, which the verifier
 * inlines, instead of a hash lookup per packet. sluice_metrics keeps drops and rejects. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct metrics_value);
	__uint(max_entries, SLUICE_POINTS * SLUICE_OUTCOMES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_metrics_plain SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, SLUICE_MAX_LB_SLOTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_lb4_svc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, SLUICE_MAX_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_lb4_be SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_revnat);
	__uint(max_entries, SLUICE_MAX_REVNAT);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_lb4_rnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct4_key);
	__type(value, struct ct4_entry);
	__uint(max_entries, SLUICE_MAX_CT);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_ct4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_affinity_key);
	__type(value, struct lb4_affinity);
	__uint(max_entries, SLUICE_MAX_AFFINITY);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_lb4_aff SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sock_revnat_key);
	__type(value, struct lb4_revnat);
	__uint(max_entries, SLUICE_MAX_SOCK_REVNAT);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sock_rnat SEC(".maps");

/* Pinned like the rest: sockets connected before an agent restart keep their frontend. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_front);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sock_front SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_info);
	__uint(max_entries, SLUICE_MAX_IPCACHE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_ipcache SEC(".maps");

/* ipBlock prefixes of every policy -> their node-local CIDR identity. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, __u32);
	__uint(max_entries, SLUICE_MAX_POLICY_CIDRS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_policy_cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
	__uint(max_entries, SLUICE_MAX_POLICY);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_policy SEC(".maps");

/* Flow events for the agent (struct flow_event), shared by every program. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SLUICE_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct events_lost);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_events_lost SEC(".maps");

/* Aggregation: per connection (endpoints in address order), when it was last reported at
 * each observation point, in each direction (the tc points, and socket-LB's sendmsg with the
 * socket cookie standing in for the source). */
struct flow_seen_key {
	__u32 addr_a;
	__u32 addr_b;
	__u16 port_a;
	__u16 port_b;
	__u8 proto;
	__u8 pad[3];
};

/* Slot (point - 1) * 2 + direction (1: from addr_b to addr_a), for points 1..7; a power of
 * two, so an index masked with SLUICE_FLOW_SEEN_SLOTS - 1 is in bounds for the verifier. */
#define SLUICE_FLOW_SEEN_SLOTS 16

/* Times in units of 2^20 ns (about 1 ms; 0: never), small enough for a stack copy. */
struct flow_seen {
	__u32 reported[SLUICE_FLOW_SEEN_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_seen_key);
	__type(value, struct flow_seen);
	__uint(max_entries, SLUICE_MAX_FLOW_SEEN);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_flow_seen SEC(".maps");

/* Per CPU and flow-seen slot, the flow whose report was last decided and when it was
 * last reported there: a stream's packets mostly follow each other on one CPU, and this answers
 * them without a shared-map lookup (not pinned: a cache, rebuilt after a reload). */
struct flow_seen_recent {
	struct flow_seen_key key;
	__u64 reported_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct flow_seen_recent);
	__uint(max_entries, SLUICE_FLOW_SEEN_SLOTS);
} sluice_flow_seen_recent SEC(".maps");

/* The event being assembled for the packet a program is handling, and the flow clock as the
 * program read it when it started (not pinned: it lives only while one program runs on this
 * CPU). */
struct trace_scratch {
	struct flow_event ev;
	__u64 clock_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct trace_scratch);
	__uint(max_entries, 1);
} sluice_trace_scratch SEC(".maps");

/* The template of a Maglev table; BPF_F_INNER_MAP lets tables of another size be stored. */
struct maglev_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
	__uint(max_entries, SLUICE_MAGLEV_DEFAULT_SIZE);
	__uint(map_flags, BPF_F_INNER_MAP);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32);  /* rev_nat_id of the frontend */
	__uint(max_entries, SLUICE_MAX_MAGLEV_SERVICES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct maglev_table);
} sluice_maglev SEC(".maps");

#endif /* SLUICE_MAPS_H */
