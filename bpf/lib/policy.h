/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * Network policy at the endpoint: who the peer is (ipcache), whether the endpoint's entries
 * allow it, and connection tracking so replies of an admitted connection always pass.
 * Userspace flattens every policy into entries; here we only look up.
 */
#ifndef SLUICE_POLICY_H
#define SLUICE_POLICY_H

#include "ct.h"
#include "forward.h"
#include "l4.h"

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

/* ICMP types (RFC 792); <linux/icmp.h> drags in libc headers a BPF build cannot use. */
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

struct icmp_echo_hdr {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u16 id;
	__u16 sequence;
};

/* The connection a packet belongs to, as policy sees it (ports in network order). */
struct flow4 {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 new_conn;    /* a bare TCP SYN: never a reply, always judged afresh */
	__u8 reply_only;  /* ICMP errors and echo replies: never start a connection */
	__u8 untranslated; /* no service step of this node translated it (TCP: remembered) */
};

/*
 * Fills the ports of a packet that parse_l4 did not handle: SCTP ports, ICMP echo ids
 * (request: id as source port; reply: as destination port, so it is the request reversed)
 * and ICMP errors, which stand for the connection quoted inside them, seen as a reply.
 */
static __always_inline void flow_other_l4(struct __sk_buff *skb, const struct iphdr *ip,
					  struct flow4 *f)
{
	__u32 off = ETH_HLEN + ip->ihl * 4;
	if (ip->frag_off & bpf_htons(0x1fff))
		return;  /* a later fragment: no header to read */
	if (ip->protocol == IPPROTO_SCTP) {
		__u16 ports[2];
		if (!bpf_skb_load_bytes(skb, off, ports, sizeof(ports))) {
			f->sport = ports[0];
			f->dport = ports[1];
		}
		return;
	}
	if (ip->protocol != IPPROTO_ICMP)
		return;
	struct icmp_echo_hdr icmp;
	if (bpf_skb_load_bytes(skb, off, &icmp, sizeof(icmp)))
		return;
	switch (icmp.type) {
	case ICMP_ECHO:
		f->sport = icmp.id;
		return;
	case ICMP_ECHOREPLY:
		f->dport = icmp.id;
		f->reply_only = 1;
		return;
	case ICMP_DEST_UNREACH:
	case ICMP_TIME_EXCEEDED:
	case ICMP_PARAMETERPROB:
		break;
	default:
		return;
	}
	struct iphdr inner;
	__u16 ports[2] = {};
	f->reply_only = 1;
	if (bpf_skb_load_bytes(skb, off + sizeof(icmp), &inner, sizeof(inner)))
		return;
	if (inner.protocol == IPPROTO_TCP || inner.protocol == IPPROTO_UDP ||
	    inner.protocol == IPPROTO_SCTP)
		bpf_skb_load_bytes(skb, off + sizeof(icmp) + (inner.ihl & 0xf) * 4, ports,
				   sizeof(ports));
	/* The quoted packet went the other way: the error is its connection's reply. */
	f->saddr = inner.daddr;
	f->daddr = inner.saddr;
	f->sport = ports[1];
	f->dport = ports[0];
	f->proto = inner.protocol;
}

/* The flow of a packet: from its TCP/UDP tuple when it has one, else from the headers. */
static __always_inline void flow_of(struct __sk_buff *skb, const struct iphdr *ip, __u32 saddr,
				    __u32 daddr, const struct l4_tuple *t, int has_l4,
				    struct flow4 *f)
{
	f->saddr = saddr;
	f->daddr = daddr;
	f->proto = ip->protocol;
	if (has_l4) {
		f->sport = t->sport;
		f->dport = t->dport;
		f->new_conn = t->proto == IPPROTO_TCP &&
			      (t->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
		return;
	}
	flow_other_l4(skb, ip, f);
}

/*
 * A reply whose source is already the service frontend again (a backend on this node
 * had it translated as it left) is judged as what it was: the backend's reply, since the
 * connection was admitted towards the backend.
 */
static __always_inline void flow_untranslate_reply(struct flow4 *f)
{
	struct ct4_key k = {
		.saddr = f->daddr, .daddr = f->saddr, .sport = f->dport, .dport = f->sport,
		.proto = f->proto, .dir = SLUICE_CT_SERVICE,
	};
	struct ct4_entry *e = bpf_map_lookup_elem(&sluice_ct4, &k);
	if (e) {
		f->saddr = e->nat_address;
		f->sport = e->nat_port;
	}
}

static __always_inline __u32 identity_of(__u32 ip)
{
	struct ipcache_key key = { .prefixlen = 32, .ip = ip };
	struct ipcache_info *info = bpf_map_lookup_elem(&sluice_ipcache, &key);
	return info ? info->identity : SLUICE_IDENTITY_WORLD;
}

/* What decided a connection, for its policy-verdict event. */
struct policy_match {
	__u32 identity;  /* the identity the entry was found under */
	__u32 cookie;
	__u8 judged;     /* the endpoint is isolated in this direction */
	__u8 l4;         /* the entry names a protocol or port */
};

/*
 * The endpoint's entry for a peer: by the peer's own identity, then by the identity of the
 * policy prefix holding its address (ipBlock), then for any peer; *found_as says which.
 */
static __always_inline struct policy_entry *policy_lookup(__u32 endpoint, __u8 dir, __u32 peer,
							  __u8 proto, __u16 dport, __u32 *found_as)
{
	struct policy_key key = {
		.prefixlen = SLUICE_POLICY_FULL_PREFIX, .endpoint = endpoint,
		.identity = identity_of(peer), .direction = dir, .proto = proto, .dport = dport,
	};
	*found_as = key.identity;
	struct policy_entry *e = bpf_map_lookup_elem(&sluice_policy, &key);
	if (e)
		return e;
	struct ipcache_key cidr = { .prefixlen = 32, .ip = peer };
	__u32 *cidr_identity = bpf_map_lookup_elem(&sluice_policy_cidrs, &cidr);
	if (cidr_identity) {
		key.identity = *cidr_identity;
		*found_as = key.identity;
		e = bpf_map_lookup_elem(&sluice_policy, &key);
		if (e)
			return e;
	}
	key.identity = SLUICE_IDENTITY_ANY;
	*found_as = key.identity;
	return bpf_map_lookup_elem(&sluice_policy, &key);
}

/* Whether the endpoint's policy admits a connection, keyed as it is tracked in `dir`. */
static __always_inline int policy_admits(const struct endpoint_info *ep, __u32 endpoint,
					 __u8 dir, __u32 saddr, __u32 daddr, __u16 dport,
					 __u8 proto, struct policy_match *m)
{
	__u32 isolated = dir == SLUICE_POLICY_INGRESS ? SLUICE_EP_INGRESS_ISOLATED
						       : SLUICE_EP_EGRESS_ISOLATED;
	if (!(ep->flags & isolated))
		return 1;
	__u32 peer = dir == SLUICE_POLICY_INGRESS ? saddr : daddr;
	__u32 found_as = 0;
	struct policy_entry *e = policy_lookup(endpoint, dir, peer, proto, dport, &found_as);
	m->judged = 1;
	if (!e)
		return 0;
	m->identity = found_as;
	m->cookie = e->cookie;
	m->l4 = e->flags & SLUICE_POLICY_ENTRY_L4;
	return e->verdict == SLUICE_VERDICT_ALLOW;
}

/*
 * Policy conntrack: one entry per connection and local endpoint, keyed from the endpoint's
 * side (its own address and port first), so a packet either way finds it with one lookup;
 * the entry says which way the connection was opened (admitted).
 */
static __always_inline void ct_endpoint_key(const struct flow4 *f, __u8 dir, struct ct4_key *k)
{
	int in = dir == SLUICE_POLICY_INGRESS;
	k->saddr = in ? f->daddr : f->saddr;
	k->daddr = in ? f->saddr : f->daddr;
	k->sport = in ? f->dport : f->sport;
	k->dport = in ? f->sport : f->dport;
	k->proto = f->proto;
	k->dir = SLUICE_CT_ENDPOINT;
}

enum ct_policy_state { CT_UNKNOWN, CT_ADMITTED, CT_REVOKED };

/*
 * The tracked connection `e` (stored under `stored`; `k` is its endpoint-side key) stays
 * admitted while the policy is unchanged; after a change its next packet re-judges it as it
 * was first judged, so a revoked connection stops at once (and its entry goes). What it
 * knew of the other pod's entry (SLUICE_CT_F_PEER_ADMITTED) held under the old policy only.
 * `admitted_dir` is the direction that admitted it.
 */
static __always_inline int ct_still_admitted(struct ct4_entry *e, const struct ct4_key *stored,
					     const struct ct4_key *k,
					     const struct endpoint_info *ep, __u32 endpoint,
					     __u8 admitted_dir, __u32 revision, __u64 now)
{
	if (e->policy_revision != revision) {
		/* The connection as it was opened: from the peer (the key's second half) when
		 * it was admitted on ingress, else to it. */
		int in = admitted_dir == SLUICE_POLICY_INGRESS;
		__u32 saddr = in ? k->daddr : k->saddr, daddr = in ? k->saddr : k->daddr;
		__u16 dport = in ? k->sport : k->dport;
		struct policy_match m = {};
		if (!policy_admits(ep, endpoint, admitted_dir, saddr, daddr, dport, k->proto, &m)) {
			bpf_map_delete_elem(&sluice_ct4, stored);
			return CT_REVOKED;
		}
		e->policy_revision = revision;
		e->flags &= ~SLUICE_CT_F_PEER_ADMITTED;
	}
	ct_touch(e, now);
	return CT_ADMITTED;
}

/* The endpoint's tracked connection for key `k`: whether it is admitted, and which way;
 * `*entry` is the admitting entry (left alone for one an older datapath kept). */
static __always_inline int ct_lookup_admitted(const struct ct4_key *k,
					      struct ct4_entry *found,
					      const struct endpoint_info *ep, __u32 endpoint,
					      __u32 revision, __u64 now, __u64 lifetime,
					      __u8 *admitted_dir, struct ct4_entry **entry)
{
	struct ct4_entry *e = found ? found : bpf_map_lookup_elem(&sluice_ct4, k);
	if (e && !older_than(now, e->last_seen_ns, lifetime)) {
		*admitted_dir = (e->flags & SLUICE_CT_F_ADMITTED_INGRESS) ? SLUICE_POLICY_INGRESS
									    : SLUICE_POLICY_EGRESS;
		int state = ct_still_admitted(e, k, k, ep, endpoint, *admitted_dir, revision, now);
		if (state == CT_ADMITTED)
			*entry = e;
		return state;
	}
	/* An older datapath kept connections opened towards the endpoint as received. Only
	 * looked for when the entry is missing, which a tracked connection's packets never are. */
	struct ct4_key legacy = {
		.saddr = k->daddr, .daddr = k->saddr, .sport = k->dport, .dport = k->sport,
		.proto = k->proto, .dir = SLUICE_CT_LEGACY_INGRESS,
	};
	e = bpf_map_lookup_elem(&sluice_ct4, &legacy);
	if (!e || older_than(now, e->last_seen_ns, lifetime))
		return CT_UNKNOWN;
	*admitted_dir = SLUICE_POLICY_INGRESS;
	return ct_still_admitted(e, &legacy, k, ep, endpoint, SLUICE_POLICY_INGRESS, revision, now);
}

/*
 * The sending endpoint's entry of a later packet of TCP connection `f` (to a pod's address,
 * so no service step can change the tuple first), if it is tracked and live: the
 * entry found here saves policy_enforce its lookup, and its flags say whether the service
 * step is needed at all.
 */
static __always_inline struct ct4_entry *ct_lookup_sent(const struct flow4 *f)
{
	if (f->proto != IPPROTO_TCP || f->new_conn)
		return 0;
	struct ct4_key k = {};
	ct_endpoint_key(f, SLUICE_POLICY_EGRESS, &k);
	struct ct4_entry *e = bpf_map_lookup_elem(&sluice_ct4, &k);
	if (!e || older_than(packet_clock_ns(), e->last_seen_ns, SLUICE_CT_LIFETIME_TCP_NS))
		return 0;
	return e;
}

/*
 * Enforces `endpoint`'s policy in `dir` on a packet of flow `f` (egress: the endpoint
 * sends it; ingress: it is about to enter the endpoint). Returns 0 to let it pass, else
 * the drop reason. Every new connection is tracked, isolated or not, so that its replies
 * pass even when the other direction becomes isolated later. `found`: the endpoint's
 * entry for `f`, when the caller looked it up already (else 0). `*admitting` becomes the
 * entry that admits the packet, when one does.
 */
static __always_inline __u16 policy_enforce(struct __sk_buff *skb, __u8 point,
					    const struct endpoint_info *ep, __u32 endpoint,
					    __u8 dir, const struct flow4 *f,
					    struct ct4_entry *found, struct ct4_entry **admitting)
{
	/* A pod reaching itself (through a service: hairpin) is never judged. */
	if (f->saddr == f->daddr || f->saddr == SLUICE_HAIRPIN_IP || f->daddr == SLUICE_HAIRPIN_IP)
		return 0;
	struct datapath_config *cfg = datapath_config();
	__u32 revision = cfg ? cfg->policy_revision : 0;
	__u64 now = packet_clock_ns();
	__u64 lifetime = f->proto == IPPROTO_TCP ? SLUICE_CT_LIFETIME_TCP_NS : SLUICE_CT_LIFETIME_UDP_NS;

	struct ct4_key key = {};
	ct_endpoint_key(f, dir, &key);
	if (!f->new_conn) {
		/* A reply of a connection admitted the other way, or a later packet of one
		 * admitted this way. */
		__u8 admitted_dir = dir;
		int known = ct_lookup_admitted(&key, found, ep, endpoint, revision, now,
					       lifetime, &admitted_dir, admitting);
		if (known != CT_UNKNOWN)
			trace_reply(admitted_dir != dir);
		if (known == CT_ADMITTED)
			return 0;
		if (known == CT_REVOKED)
			return SLUICE_DROP_POLICY_DENIED;
	}
	trace_reply(f->reply_only);
	struct policy_match m = {};
	int admitted = policy_admits(ep, endpoint, dir, f->saddr, f->daddr, f->dport, f->proto, &m);
	if (m.judged)
		trace_policy(skb, dir | (admitted ? TRACE_POLICY_ALLOWED : 0) |
				       (m.l4 ? TRACE_POLICY_L4 : 0),
			     m.identity, m.cookie);
	if (!admitted)
		return SLUICE_DROP_POLICY_DENIED;
	if (f->reply_only)
		return 0;
	__u32 isolated = dir == SLUICE_POLICY_INGRESS ? SLUICE_EP_INGRESS_ISOLATED
						       : SLUICE_EP_EGRESS_ISOLATED;
	if (ep->flags & isolated)
		count(skb, point, SLUICE_OUTCOME_POLICY_ALLOWED, 0);
	struct ct4_entry entry = {
		.last_seen_ns = now, .policy_revision = revision,
		.flags = (dir == SLUICE_POLICY_INGRESS ? SLUICE_CT_F_ADMITTED_INGRESS : 0) |
			 (f->untranslated && f->proto == IPPROTO_TCP ? SLUICE_CT_F_NOT_TRANSLATED
								      : 0),
	};
	if (ct4_store(&key, &entry, admitting))
		return SLUICE_DROP_CT_INSERT_FAILED;
	return 0;
}

#endif /* SLUICE_POLICY_H */
