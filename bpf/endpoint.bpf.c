// SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0)
/*
 * Programs on the host side of every pod's veth.
 *   from_container: tc ingress, packets the pod sends.
 *   to_container:   tc egress, packets about to enter the pod.
 */
#include "lib/forward.h"

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
	/* Ingress policy lands here; for now every packet is delivered and counted. */
	return to_stack(skb, SLUICE_POINT_TO_ENDPOINT);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
