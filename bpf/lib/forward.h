/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * How a packet leaves a program: straight to a local endpoint, into the
 * tunnel, or to the kernel's stack. Kept in one place so later hops
 * (encryption, an XDP fast path) slot in here.
 */
#ifndef SLUICE_FORWARD_H
#define SLUICE_FORWARD_H

#include "maps.h"
#include "metrics.h"
#include "packet.h"

static __always_inline struct datapath_config *datapath_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&sluice_config, &zero);
}

static __always_inline struct endpoint_info *lookup_endpoint(__u32 ip)
{
	struct endpoint_key key = { .ip = ip };
	return bpf_map_lookup_elem(&sluice_endpoints, &key);
}

static __always_inline struct tunnel_info *lookup_tunnel(__u32 ip)
{
	struct tunnel_key key = { .prefixlen = 32, .ip = ip };
	return bpf_map_lookup_elem(&sluice_tunnels, &key);
}

static __always_inline int drop(struct __sk_buff *skb, __u8 point, __u16 reason)
{
	count(skb, point, SLUICE_OUTCOME_DROP, reason);
	return TC_ACT_SHOT;
}

static __always_inline int to_stack(struct __sk_buff *skb, __u8 point)
{
	count(skb, point, SLUICE_OUTCOME_TO_STACK, 0);
	return TC_ACT_OK;
}

#define PROGRAM_CONTINUE (-1)

/* Finds the packet's IPv4 header: PROGRAM_CONTINUE with *ip set, or the verdict to return:
 * what is not IPv4 goes to the stack, a malformed header is dropped. */
static __always_inline int found_ipv4(struct __sk_buff *skb, __u8 point, struct iphdr **ip)
{
	switch (parse_ipv4(skb, ip)) {
	case PARSE_NOT_IPV4:
		return to_stack(skb, point);
	case PARSE_INVALID:
		return drop(skb, point, SLUICE_DROP_INVALID_PACKET);
	default:
		return PROGRAM_CONTINUE;
	}
}

/* A tc program's first step: starts the packet's event at `point` and finds its IPv4
 * header (as found_ipv4). */
static __always_inline int enter_ipv4(struct __sk_buff *skb, __u8 point, struct iphdr **ip)
{
	trace_begin(skb, point);
	return found_ipv4(skb, point, ip);
}

/*
 * Hand the packet to a pod on this node: redirect to the egress of its host-side
 * veth, so the to-endpoint program on that device still sees it.
 */
static __always_inline int deliver_local(struct __sk_buff *skb, __u8 point,
					 const struct endpoint_info *ep)
{
	if (route_frame(skb, ep->host_mac, ep->pod_mac))
		return drop(skb, point, SLUICE_DROP_INVALID_PACKET);
	count(skb, point, SLUICE_OUTCOME_REDIRECT, 0);
	return bpf_redirect(ep->ifindex, 0);
}

/* Sets the tunnel metadata the collect_md VXLAN device encapsulates with. */
static __always_inline int set_tunnel_key(struct __sk_buff *skb,
					  const struct datapath_config *cfg,
					  const struct tunnel_info *remote)
{
	struct bpf_tunnel_key key = {};

	key.remote_ipv4 = bpf_ntohl(remote->node_ip);
	key.tunnel_id = cfg->vni;
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX))
		return -1;
	return 0;
}

/* The tunnel metadata, and the inner MACs: the remote VXLAN device only accepts frames
 * addressed to its own MAC. */
static __always_inline int set_tunnel(struct __sk_buff *skb, const struct datapath_config *cfg,
				      const struct tunnel_info *remote)
{
	if (set_tunnel_key(skb, cfg, remote))
		return -1;
	return rewrite_macs(skb, cfg->vxlan_mac, remote->node_mac);
}

/* Send a packet from a local pod to a pod on another node through the tunnel: routed (TTL
 * and inner MACs in one store), then encapsulated. The caller has checked ttl > 1. */
static __always_inline int encap_to_remote(struct __sk_buff *skb, __u8 point,
					   const struct datapath_config *cfg,
					   const struct tunnel_info *remote)
{
	if (set_tunnel_key(skb, cfg, remote) ||
	    route_frame(skb, cfg->vxlan_mac, remote->node_mac))
		return drop(skb, point, SLUICE_DROP_INVALID_PACKET);
	count(skb, point, SLUICE_OUTCOME_ENCAP, 0);
	return bpf_redirect(cfg->vxlan_ifindex, 0);
}

/*
 * Routes a packet ourselves instead of handing it to the stack's input path: after NAT its
 * source may be this node's own address, which the stack would drop as martian. A local pod
 * or a tunnelled remote pod is reached as usual; anything else leaves through the device
 * and next hop the FIB picks, with the kernel resolving the neighbour.
 */
static __always_inline int forward_routed(struct __sk_buff *skb, __u8 point, __u32 saddr,
					  __u32 daddr, __u8 ttl)
{
	struct endpoint_info *ep = lookup_endpoint(daddr);
	if (ep)
		return deliver_local(skb, point, ep);
	struct datapath_config *cfg = datapath_config();
	if (cfg && cfg->routing_mode == SLUICE_ROUTING_VXLAN) {
		struct tunnel_info *remote = lookup_tunnel(daddr);
		if (remote && remote->node_ip != cfg->node_ip)
			return encap_to_remote(skb, point, cfg, remote);
	}
	struct bpf_fib_lookup fib = {};
	fib.family = 2; /* AF_INET */
	fib.ipv4_src = saddr;
	fib.ipv4_dst = daddr;
	fib.ifindex = skb->ifindex;
	/* An input lookup on the receiving device (forwarding is on: we route for pods). */
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return drop(skb, point, SLUICE_DROP_FIB_LOOKUP_FAILED);
	if (dec_ttl(skb, ttl))
		return drop(skb, point, SLUICE_DROP_INVALID_PACKET);
	count(skb, point, SLUICE_OUTCOME_ROUTED, 0);
	return bpf_redirect_neigh(fib.ifindex, 0, 0, 0);
}

#endif /* SLUICE_FORWARD_H */
