/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * Per-packet service load balancing: frontend -> backend translation with connection
 * tracking, and the reverse translation of replies. Userspace writes every entry; here we
 * only look up, pick and rewrite.
 */
#ifndef SLUICE_LB_H
#define SLUICE_LB_H

#include "ct.h"
#include "forward.h"
#include "l4.h"

enum lb_verdict {
	LB_PASS,     /* not a service packet, or nothing to translate */
	LB_DONE,     /* translated; *new_daddr holds the destination now in the packet */
	LB_DROP,     /* *reason says why */
};

static __always_inline struct lb4_service *lb4_lookup_slot(__u32 addr, __u16 port, __u8 proto,
							   __u16 slot)
{
	struct lb4_key key = { .address = addr, .port = port, .proto = proto, .slot = slot };
	return bpf_map_lookup_elem(&sluice_lb4_svc, &key);
}

/* A 32-bit mix of the flow's 5-tuple; the same on every node, so every node's Maglev
 * table lookup picks the same backend for the same flow. */
static __always_inline __u32 flow_hash(__u32 saddr, __u32 daddr, const struct l4_tuple *t)
{
	__u32 h = saddr * 0x9e3779b1u;
	h ^= daddr + 0x7f4a7c15u + (h << 6) + (h >> 2);
	h ^= (((__u32)t->sport << 16) | t->dport) + 0x7f4a7c15u + (h << 6) + (h >> 2);
	h ^= t->proto + 0x7f4a7c15u + (h << 6) + (h >> 2);
	/* murmur3 finaliser */
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

/* The backend the service's Maglev table holds for this flow, if it has a table. */
static __always_inline int lb4_maglev(__u32 saddr, __u32 daddr, const struct l4_tuple *t,
				      const struct lb4_service *svc, __u32 *backend_id)
{
	struct datapath_config *cfg = datapath_config();
	void *table = bpf_map_lookup_elem(&sluice_maglev, &svc->rev_nat_id);
	if (!cfg || !table || cfg->maglev_size == 0)
		return -1;
	__u32 index = flow_hash(saddr, daddr, t) % cfg->maglev_size;
	__u32 *id = bpf_map_lookup_elem(table, &index);
	if (!id)
		return -1;
	*backend_id = *id;
	return 0;
}

/* A backend for a new connection: the remembered one under ClientIP affinity, the Maglev
 * choice for external services, else random. */
static __always_inline struct lb4_backend *lb4_select(__u32 client, __u32 vip, const struct l4_tuple *t,
						       const struct lb4_service *svc, __u32 *backend_id)
{
	__u64 now = packet_clock_ns();
	struct lb4_affinity_key akey = { .client = client, .rev_nat_id = svc->rev_nat_id };

	if (svc->flags & SLUICE_SVC_AFFINITY) {
		struct lb4_affinity *a = bpf_map_lookup_elem(&sluice_lb4_aff, &akey);
		if (a && !older_than(now, a->last_used_ns,
				     (__u64)svc->affinity_timeout * 1000000000ULL + 1)) {
			struct lb4_backend *be = bpf_map_lookup_elem(&sluice_lb4_be, &a->backend_id);
			if (be) {
				a->last_used_ns = now;
				*backend_id = a->backend_id;
				return be;
			}
		}
	}
	__u32 chosen = 0;
	if (!(svc->flags & SLUICE_SVC_MAGLEV) || lb4_maglev(client, vip, t, svc, &chosen)) {
		__u16 slot = (bpf_get_prandom_u32() % svc->count) + 1;
		struct lb4_service *entry = lb4_lookup_slot(vip, t->dport, t->proto, slot);
		if (!entry)
			return 0;
		chosen = entry->backend_id;
	}
	struct lb4_backend *be = bpf_map_lookup_elem(&sluice_lb4_be, &chosen);
	if (!be)
		return 0;
	*backend_id = chosen;
	if (svc->flags & SLUICE_SVC_AFFINITY) {
		struct lb4_affinity a = { .last_used_ns = now, .backend_id = chosen };
		bpf_map_update_elem(&sluice_lb4_aff, &akey, &a, BPF_ANY);
	}
	return be;
}

/* Applies a SERVICE entry: destination -> backend, source address -> alt when set. */
static __always_inline int lb4_apply_forward(struct __sk_buff *skb, const struct l4_tuple *t,
					     __u32 saddr, __u32 daddr, const struct ct4_entry *e)
{
	if (rewrite_endpoint(skb, t, 1, daddr, e->nat_address, t->dport, e->nat_port))
		return -1;
	if (e->alt_address && rewrite_endpoint(skb, t, 0, saddr, e->alt_address, t->sport, t->sport))
		return -1;
	return 0;
}

/*
 * Translates a packet addressed to a service frontend. An existing connection keeps its
 * backend (even one that has since left the service); a new one gets a backend and two
 * CT entries: the forward one keyed as the client sent it, and the reply one keyed as the
 * backend will answer, which holds the reverse translation.
 *
 * snat_ip: at the node's uplink, the node address that connections to backends on other
 * nodes are given as source, so replies come back here to be translated (0 elsewhere).
 * external_only: only frontends reachable from outside the cluster (at the uplink).
 */
static __always_inline enum lb_verdict lb4_translate(struct __sk_buff *skb, __u32 saddr, __u32 daddr,
						     const struct l4_tuple *t, __u32 snat_ip,
						     int external_only, __u32 *new_daddr, __u16 *reason)
{
	struct ct4_key fwd = {
		.saddr = saddr, .daddr = daddr, .sport = t->sport, .dport = t->dport,
		.proto = t->proto, .dir = SLUICE_CT_SERVICE,
	};
	__u64 now = packet_clock_ns();
	/* A bare SYN starts a new connection even if the tuple is reused: no need to look. */
	int new_tcp = tcp_bare_syn(t);
	struct ct4_entry *ct = new_tcp ? 0 : bpf_map_lookup_elem(&sluice_ct4, &fwd);

	__u64 lifetime = t->proto == IPPROTO_TCP ? SLUICE_CT_LIFETIME_TCP_NS : SLUICE_CT_LIFETIME_UDP_NS;
	if (ct && !older_than(now, ct->last_seen_ns, lifetime)) {
		ct_touch(ct, now);
		*new_daddr = ct->nat_address;
		trace_dnat(daddr, t->dport, ct->nat_address, ct->nat_port);
		if (lb4_apply_forward(skb, t, saddr, daddr, ct)) {
			*reason = SLUICE_DROP_INVALID_PACKET;
			return LB_DROP;
		}
		return LB_DONE;
	}

	struct lb4_service *svc = lb4_lookup_slot(daddr, t->dport, t->proto, 0);
	if (!svc || (external_only && !(svc->flags & SLUICE_SVC_EXTERNAL)))
		return LB_PASS;
	if (svc->count == 0) {
		*reason = SLUICE_DROP_NO_SERVICE_BACKEND;
		return LB_DROP;
	}
	__u32 backend_id = 0;
	struct lb4_backend *be = lb4_select(saddr, daddr, t, svc, &backend_id);
	if (!be) {
		*reason = SLUICE_DROP_NO_SERVICE_BACKEND;
		return LB_DROP;
	}
	/* A pod reaching itself: move the source off its own address (see abi.h). A backend on
	 * another node, reached through this node's uplink: source becomes this node. */
	__u32 alt = 0;
	if (be->address == saddr)
		alt = SLUICE_HAIRPIN_IP;
	else if (snat_ip && !lookup_endpoint(be->address))
		alt = snat_ip;
	struct ct4_entry entry = {
		.last_seen_ns = now, .nat_address = be->address, .nat_port = be->port,
		.rev_nat_id = svc->rev_nat_id, .backend_id = backend_id, .alt_address = alt,
	};
	struct ct4_key rev = {
		.saddr = be->address, .daddr = alt ? alt : saddr, .sport = be->port,
		.dport = t->sport, .proto = t->proto, .dir = SLUICE_CT_REPLY,
	};
	struct ct4_entry reply = {
		.last_seen_ns = now, .nat_address = daddr, .nat_port = t->dport,
		.rev_nat_id = svc->rev_nat_id, .backend_id = backend_id,
		.alt_address = alt ? saddr : 0,
	};
	if (ct4_store(&fwd, &entry, 0) || ct4_store(&rev, &reply, 0)) {
		*reason = SLUICE_DROP_CT_INSERT_FAILED;
		return LB_DROP;
	}
	*new_daddr = be->address;
	trace_dnat(daddr, t->dport, be->address, be->port);
	if (lb4_apply_forward(skb, t, saddr, daddr, &entry)) {
		*reason = SLUICE_DROP_INVALID_PACKET;
		return LB_DROP;
	}
	return LB_DONE;
}

/*
 * A reply from a backend: the frontend becomes its source again, and where the forward
 * direction moved the client's address (SNAT, hairpin) the client becomes its destination.
 */
static __always_inline enum lb_verdict lb4_reverse(struct __sk_buff *skb, __u32 saddr, __u32 daddr,
						   const struct l4_tuple *t, __u32 *new_daddr,
						   __u16 *reason)
{
	if (tcp_bare_syn(t))
		return LB_PASS;  /* a connection's first packet is no reply */
	struct ct4_key rev = {
		.saddr = saddr, .daddr = daddr, .sport = t->sport, .dport = t->dport,
		.proto = t->proto, .dir = SLUICE_CT_REPLY,
	};
	struct ct4_entry *ct = bpf_map_lookup_elem(&sluice_ct4, &rev);
	if (!ct)
		return LB_PASS;
	__u64 now = packet_clock_ns();
	__u64 lifetime = t->proto == IPPROTO_TCP ? SLUICE_CT_LIFETIME_TCP_NS : SLUICE_CT_LIFETIME_UDP_NS;
	if (older_than(now, ct->last_seen_ns, lifetime))
		return LB_PASS;  /* an expired connection's entry translates nothing */
	ct_touch(ct, now);
	*new_daddr = ct->alt_address ? ct->alt_address : daddr;
	trace_revnat(ct->nat_address, ct->nat_port);
	trace_reply(1);
	if (rewrite_endpoint(skb, t, 0, saddr, ct->nat_address, t->sport, ct->nat_port) ||
	    (ct->alt_address &&
	     rewrite_endpoint(skb, t, 1, daddr, ct->alt_address, t->dport, t->dport))) {
		*reason = SLUICE_DROP_INVALID_PACKET;
		return LB_DROP;
	}
	return LB_DONE;
}

/* Whether a packet may start a connection: a bare TCP SYN; any UDP datagram. */
static __always_inline int lb4_starts_connection(const struct l4_tuple *t)
{
	return t->proto != IPPROTO_TCP || tcp_bare_syn(t);
}

/*
 * A client talking to a backend directly (socket-LB already translated it, or it simply
 * knows the address) on a tuple an earlier service connection used: that connection is
 * over, and its REPLY entry must not turn this connection's replies into the frontend's.
 */
static __always_inline void lb4_forget_stale_reply(__u32 saddr, __u32 daddr, const struct l4_tuple *t)
{
	struct ct4_key rev = {
		.saddr = daddr, .daddr = saddr, .sport = t->dport, .dport = t->sport,
		.proto = t->proto, .dir = SLUICE_CT_REPLY,
	};
	if (bpf_map_lookup_elem(&sluice_ct4, &rev))
		bpf_map_delete_elem(&sluice_ct4, &rev);
}

#endif /* SLUICE_LB_H */
