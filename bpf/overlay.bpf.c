// SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0)
/*
 * Programs on the node's VXLAN device (external / collect_md mode).
 *   from_overlay: tc ingress, decapsulated packets from other nodes.
 *   to_overlay:   tc egress, packets the node's own stack routes into the
 *                 tunnel (node -> remote pod, replies to remote pods); sets the
 *                 tunnel metadata the device needs to encapsulate.
 */
#include "lib/forward.h"
#include "lib/l4.h"

SEC("classifier")
int from_overlay(struct __sk_buff *skb)
{
	const __u8 point = SLUICE_POINT_FROM_OVERLAY;
	struct iphdr *ip = 0;

	int entered = enter_ipv4(skb, point, &ip);
	if (entered != PROGRAM_CONTINUE)
		return entered;
	trace_ipv4(skb, ip);
	__u8 ttl = ip->ttl;
	if (ttl <= 1)
		return to_stack(skb, point);

	struct endpoint_info *ep = lookup_endpoint(ip->daddr);
	if (ep)
		return deliver_local(skb, point, ep);
	return to_stack(skb, point);
}

SEC("classifier")
int to_overlay(struct __sk_buff *skb)
{
	const __u8 point = SLUICE_POINT_TO_OVERLAY;
	struct iphdr *ip = 0;

	trace_begin(skb, point);
	switch (parse_ipv4(skb, &ip)) {
	case PARSE_NOT_IPV4:
		/* Nothing but IPv4 may cross the tunnel: without metadata the device drops it anyway. */
		return drop(skb, point, SLUICE_DROP_NO_TUNNEL_ENDPOINT);
	case PARSE_INVALID:
		return drop(skb, point, SLUICE_DROP_INVALID_PACKET);
	case PARSE_IPV4:
		break;
	}
	trace_ipv4(skb, ip);
	struct datapath_config *cfg = datapath_config();
	struct tunnel_info *remote = lookup_tunnel(ip->daddr);
	if (!cfg || !remote || remote->node_ip == cfg->node_ip)
		return drop(skb, point, SLUICE_DROP_NO_TUNNEL_ENDPOINT);
	if (set_tunnel(skb, cfg, remote))
		return drop(skb, point, SLUICE_DROP_INVALID_PACKET);
	count(skb, point, SLUICE_OUTCOME_ENCAP, 0);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
