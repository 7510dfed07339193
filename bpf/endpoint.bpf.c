// SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0)
/*
 * Programs on the host side of every pod's veth.
 *   from_container: tc ingress, packets the pod sends.
 *   to_container:   tc egress, packets about to enter the pod from the stack, another node
 *                   or the tunnel (a pod of this node hands its packets over directly).
 */
#include "lib/forward.h"
#include "lib/policy.h"
#include "lib/service.h"

/*
 * Ingress policy of a pod of this node on a packet another pod of this node sent, whose
 * egress the sender's entry `sender` admitted. A TCP connection whose two entries admitted
 * it under one policy revision is marked so in both (SLUICE_CT_F_PEER_ADMITTED): while
 * the policy stays (re-judging clears the mark), either pod's packets are admitted by the
 * sender's entry alone, and the receiver's is not looked up. The receiver's entry stays
 * live through the receiver's own packets (TCP always answers).
 */
static __always_inline __u16 inline_ingress_policy(struct __sk_buff *skb, __u8 point,
						   const struct endpoint_info *receiver,
						   __u32 daddr, const struct flow4 *sent,
						   struct ct4_entry *sender)
{
	int tcp = sent->proto == IPPROTO_TCP;
	if (tcp && sender && (sender->flags & SLUICE_CT_F_PEER_ADMITTED))
		return 0;
	struct ct4_entry *admitting = 0;
	__u16 denied = policy_enforce(skb, point, receiver, daddr, SLUICE_POLICY_INGRESS, sent, 0,
				      &admitting);
	if (!denied && tcp && sender && admitting &&
	    admitting->policy_revision == sender->policy_revision) {
		sender->flags |= SLUICE_CT_F_PEER_ADMITTED;
		admitting->flags |= SLUICE_CT_F_PEER_ADMITTED;
	}
	return denied;
}

/*
 * A packet entering the pod behind host-side device `ifindex`: ingress policy on the packet
 * as it arrives, then a service reply's source restored to its frontend. Returns the tc
 * verdict (TC_ACT_OK: on to the pod). to_container runs it on the device's egress; a pod of
 * this node sending to another runs it inline before handing the packet straight over,
 * passing `inline_peer`: the receiving endpoint it already found, and `sent`: the flow
 * the sender's egress policy judged. That packet has been through the sender's service
 * step (reverse translation included) already, and `sent` is the connection as ingress
 * policy judges it too (after DNAT, before the reply's source was restored).
 * `sender_entry`: the sender's entry that admitted it (or NULL).
 */
static __always_inline int to_endpoint(struct __sk_buff *skb, __u32 ifindex,
				       const struct endpoint_info *inline_peer,
				       const struct flow4 *sent, struct ct4_entry *sender_entry)
{
	const __u8 point = SLUICE_POINT_TO_ENDPOINT;
	struct iphdr *ip = 0;

	int entered;
	if (inline_peer) {
		/* The sender's event goes on: it holds the tuple as sent and any translation. */
		trace_hand_over(point, ifindex);
		entered = found_ipv4(skb, point, &ip);
	} else {
		entered = enter_ipv4(skb, point, &ip);
		trace_ifindex(ifindex);
	}
	if (entered != PROGRAM_CONTINUE)
		return entered;
	__u32 saddr = ip->saddr, daddr = ip->daddr;
	struct l4_tuple t = {};
	int l4 = parse_l4(skb, ip, &t);
	if (!inline_peer)
		trace_l4(skb, ip, &t, l4);
	if (l4 < 0)
		return drop(skb, point, SLUICE_DROP_INVALID_PACKET);

	/* Ingress policy, on the packet as it arrives (a reply still comes from the backend). */
	__u16 denied = 0;
	struct ct4_entry *admitting = 0;
	if (inline_peer) {
		denied = inline_ingress_policy(skb, point, inline_peer, daddr, sent, sender_entry);
	} else {
		const struct endpoint_info *self = lookup_endpoint(daddr);
		if (self && self->ifindex == ifindex) {
			struct flow4 flow = {};
			flow_of(skb, ip, saddr, daddr, &t, l4 == 0, &flow);
			if (l4 == 0 && !flow.new_conn)
				flow_untranslate_reply(&flow);
			denied = policy_enforce(skb, point, self, daddr, SLUICE_POLICY_INGRESS,
						&flow, 0, &admitting);
		}
	}
	if (denied)
		return drop(skb, point, denied);
	/* Replies from a service backend: restore the frontend as their source (not in a TCP
	 * connection the receiver's entry says no service step of this node translated). */
	if (l4 == 0 && !inline_peer &&
	    !(admitting && (admitting->flags & SLUICE_CT_F_NOT_TRANSLATED))) {
		__u16 reason = 0;
		switch (lb4_reverse(skb, saddr, daddr, &t, &daddr, &reason)) {
		case LB_DROP:
			return drop(skb, point, reason);
		case LB_DONE:
			count(skb, point, SLUICE_OUTCOME_REVNAT, 0);
			break;
		case LB_PASS:
			break;
		}
	}
	return to_stack(skb, point);
}

/*
 * Hands a packet from a pod to another pod of this node: the receiving pod's side (policy,
 * its event; the reverse translation was the sender's service step) runs here, and the
 * packet goes straight into the pod's namespace (bpf_redirect_peer), skipping the host-side
 * device's transmit and the backlog queue a veth transmit goes through. One event tells
 * the delivery (the receiver's), unless every packet is reported at every point.
 */
static __always_inline int deliver_to_pod(struct __sk_buff *skb, __u8 point,
					  const struct endpoint_info *peer, const struct flow4 *sent,
					  struct ct4_entry *sender_entry)
{
	__u32 ifindex = peer->ifindex;
	if (route_frame(skb, peer->host_mac, peer->pod_mac))
		return drop(skb, point, SLUICE_DROP_INVALID_PACKET);
	if (trace_hand_over_reported())
		trace_emit(skb, SLUICE_OUTCOME_REDIRECT, 0);
	count_packet(skb, point, SLUICE_OUTCOME_REDIRECT, 0);
	if (to_endpoint(skb, ifindex, peer, sent, sender_entry) != TC_ACT_OK)
		return TC_ACT_SHOT;
	return bpf_redirect_peer(ifindex, 0);
}

SEC("classifier")
int from_container(struct __sk_buff *skb)
{
	const __u8 point = SLUICE_POINT_FROM_ENDPOINT;
	struct iphdr *ip = 0;

	int entered = enter_ipv4(skb, point, &ip);
	if (entered != PROGRAM_CONTINUE)
		return entered;
	struct l4_tuple t = {};
	int l4 = parse_l4(skb, ip, &t);
	trace_l4(skb, ip, &t, l4);
	__u32 saddr = ip->saddr, daddr = ip->daddr, ip_daddr = daddr;
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
	if (l4 < 0)
		return drop(skb, point, SLUICE_DROP_INVALID_PACKET);
	/* Egress policy judges the connection as it leaves: to the backend a service packet
	 * is translated to, but a reply as the pod sent it (before the frontend is restored). */
	struct flow4 flow = {};
	flow_of(skb, ip, saddr, daddr, &t, l4 == 0, &flow);
	/* A pod's address is never a frontend: to one, only a reply may need translating —
	 * and not even that in a TCP connection no service step of this node translated,
	 * which its tracked entry says. */
	struct endpoint_info *peer = lookup_endpoint(daddr);
	struct ct4_entry *tracked = peer && l4 == 0 ? ct_lookup_sent(&flow) : 0;
	__u8 outcome = 0;
	if (l4 == 0 && !(tracked && (tracked->flags & SLUICE_CT_F_NOT_TRANSLATED))) {
		int verdict = lb4_service_step(skb, point, saddr, &daddr, &t, 0, 0, !peer,
					       &outcome);
		if (verdict != SERVICE_CONTINUE)
			return verdict;
		if (daddr != ip_daddr)
			peer = lookup_endpoint(daddr);
		/* A TCP connection to a pod of this node needs no forgetting: both its entries say
		 * no service step translated it, so its replies skip the reply lookup. */
		if (!outcome && lb4_starts_connection(&t) && !(peer && t.proto == IPPROTO_TCP))
			lb4_forget_stale_reply(saddr, daddr, &t);
		if (outcome == SLUICE_OUTCOME_DNAT) {
			flow.daddr = daddr;
			if (bpf_skb_load_bytes(skb, t.l4_off + 2, &flow.dport, sizeof(flow.dport)))
				return drop(skb, point, SLUICE_DROP_INVALID_PACKET);
		}
	}
	flow.untranslated = !outcome;
	struct ct4_entry *admitting = 0;
	__u16 denied = policy_enforce(skb, point, self, saddr, SLUICE_POLICY_EGRESS, &flow,
				      tracked, &admitting);
	if (denied)
		return drop(skb, point, denied);
	/* A reply translated back to a NodePort/ExternalIP frontend now comes from this node
	 * (or an address it answers for): route it ourselves, the stack would drop it. */
	if (outcome == SLUICE_OUTCOME_REVNAT && !peer)
		return forward_routed(skb, point, load_saddr(skb), daddr, ttl);

	if (peer)
		return deliver_to_pod(skb, point, peer, &flow, admitting);

	struct datapath_config *cfg = datapath_config();
	if (cfg && cfg->routing_mode == SLUICE_ROUTING_VXLAN) {
		struct tunnel_info *remote = lookup_tunnel(daddr);
		if (remote && remote->node_ip != cfg->node_ip)
			return encap_to_remote(skb, point, cfg, remote);
	}
	/* Native routing, node addresses and the world: the kernel's routes decide. */
	return to_stack(skb, point);
}

SEC("classifier")
int to_container(struct __sk_buff *skb)
{
	return to_endpoint(skb, skb->ifindex, 0, 0, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
