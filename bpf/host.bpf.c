// SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0)
/*
 * Program on the node's uplink (the device holding the node address), tc ingress:
 *   from_netdev: traffic entering the node from the network. Replies of translated
 *   connections are translated back; new connections to NodePort, ExternalIP and
 *   LoadBalancer frontends get a backend. A backend on another node gets this node's
 *   address as source (unless the service keeps traffic local), so its replies return here.
 */
#include "lib/forward.h"
#include "lib/service.h"

SEC("classifier")
int from_netdev(struct __sk_buff *skb)
{
	const __u8 point = SLUICE_POINT_FROM_NETDEV;
	struct iphdr *ip = 0;

	if (parse_ipv4(skb, &ip) != PARSE_IPV4)
		return TC_ACT_OK;  /* ARP, IPv6, garbage: the stack's business */
	__u32 saddr = ip->saddr, daddr = ip->daddr;
	__u8 ttl = ip->ttl;
	struct l4_tuple t = {};
	if (parse_l4(skb, ip, &t) != 0)
		return TC_ACT_OK;
	trace_begin(skb, point);
	trace_l4(skb, ip, &t, 0);

	struct datapath_config *cfg = datapath_config();
	if (!cfg)
		return TC_ACT_OK;
	__u8 outcome = 0;
	int verdict = lb4_service_step(skb, point, saddr, &daddr, &t, cfg->node_ip, 1, 1, &outcome);
	if (verdict != SERVICE_CONTINUE)
		return verdict;
	if (!outcome)
		return TC_ACT_OK;  /* not ours: uncounted, this sees all of the node's traffic */

	if (ttl <= 1)
		return to_stack(skb, point);
	/* A local pod, a backend on another node, or a client out in the world. */
	return forward_routed(skb, point, load_saddr(skb), daddr, ttl);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
