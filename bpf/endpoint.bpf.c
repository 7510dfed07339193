// SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0)
/*
 * Programs on the host side of every pod's veth.
 *   from_container: tc ingress, packets the pod sends.
 *   to_container:   tc egress, packets about to enter the pod.
 */
#include "lib/forward.h"
#include "lib/service.h"

SEC("classifier")
int from_container(struct __sk_buff *skb)
{
	const __u8 point = SLUICE_POINT_FROM_ENDPOINT;
	struct iphdr *ip = 0;

	switch (parse_ipv4(skb, &ip)) {
	case PARSE_NOT_IPV4:
		return to_stack(skb, point);
	case PARSE_INVALID:
		return drop(skb, point, SLUICE_DROP_INVALID_PACKET);
	case PARSE_IPV4:
		break;
	}
	__u32 saddr = ip->saddr, daddr = ip->daddr;
	__u8 ttl = ip->ttl;

	/* A pod may only send from its own address, and only on its own veth. */
	struct endpoint_info *self = lookup_endpoint(saddr);
	if (!self || self->ifindex != skb->ifindex)
		return drop(skb, point, SLUICE_DROP_INVALID_SOURCE_IP);

	/* Expiring packets go to the stack so the kernel answers with ICMP. */
	if (ttl <= 1)
		return to_stack(skb, point);

	/* Services: a reply leaving a backend (hairpin, or a NodePort client reached directly)
	 * is translated back; a packet to a frontend becomes one to a backend. Either way the
	 * destination may change before we decide where the packet goes. */
	struct l4_tuple t = {};
	int l4 = parse_l4(skb, ip, &t);
	if (l4 < 0)
		return drop(skb, point, SLUICE_DROP_INVALID_PACKET);
	if (l4 == 0) {
		__u8 outcome = 0;
		int verdict = lb4_service_step(skb, point, saddr, &daddr, &t, 0, 0, &outcome);
		if (verdict != SERVICE_CONTINUE)
			return verdict;
		if (!outcome)
			lb4_forget_stale_reply(saddr, daddr, &t);
		/* A reply translated back to a NodePort/ExternalIP frontend now comes from this
		 * node (or an address it answers for): route it ourselves, the stack would drop it. */
		if (outcome == SLUICE_OUTCOME_REVNAT && !lookup_endpoint(daddr))
			return forward_routed(skb, point, load_saddr(skb), daddr, ttl);
	}

	struct endpoint_info *peer = lookup_endpoint(daddr);
	if (peer)
		return deliver_local(skb, point, peer, ttl);

	struct datapath_config *cfg = datapath_config();
	if (cfg && cfg->routing_mode == SLUICE_ROUTING_VXLAN) {
		struct tunnel_info *remote = lookup_tunnel(daddr);
		if (remote && remote->node_ip != cfg->node_ip)
			return encap_to_remote(skb, point, cfg, remote, ttl);
	}
	/* Native routing, node addresses and the world: the kernel's routes decide. */
	return to_stack(skb, point);
}

SEC("classifier")
int to_container(struct __sk_buff *skb)
{
	const __u8 point = SLUICE_POINT_TO_ENDPOINT;
	struct iphdr *ip = 0;

	if (parse_ipv4(skb, &ip) != PARSE_IPV4)
		return to_stack(skb, point);
	/* Replies from a service backend: restore the frontend as their source. */
	struct l4_tuple t = {};
	if (parse_l4(skb, ip, &t) == 0) {
		__u16 reason = 0;
		__u32 daddr = ip->daddr;
		switch (lb4_reverse(skb, ip->saddr, daddr, &t, &daddr, &reason)) {
		case LB_DROP:
			return drop(skb, point, reason);
		case LB_DONE:
			count(skb, point, SLUICE_OUTCOME_REVNAT, 0);
			break;
		case LB_PASS:
			break;
		}
	}
	/* Ingress policy lands here; for now every packet is delivered. */
	return to_stack(skb, point);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
