/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * Rejecting a connection to a frontend without backends the way a closed port does: a TCP
 * SYN is turned into the RST that answers it, a UDP datagram into ICMP port unreachable, and
 * sent back where it came from, so the client fails at once instead of retrying into a black
 * hole.
 *
 * The packet keeps its length and TCP options (a RST may carry them), so every checksum
 * change is incremental: swapping addresses or ports does not change a ones'-complement
 * sum, and the helpers handle packets whose checksum the NIC/veth has yet to finish.
 */
#ifndef SLUICE_REJECT_H
#define SLUICE_REJECT_H

#include "forward.h"
#include "l4.h"

#define TCP_SEQ_OFF 4
#define TCP_ACK_OFF 8
#define TCP_FLAGS_OFF 12
#define TCP_WINDOW_OFF 14
#define TCP_URG_OFF 18

/* Replaces 4 bytes at `off` (inside the TCP header) and fixes the TCP checksum. */
static __always_inline int tcp_set32(struct __sk_buff *skb, __u32 csum_off, __u32 off,
				     __u32 old, __u32 new)
{
	if (bpf_l4_csum_replace(skb, csum_off, old, new, sizeof(new)))
		return -1;
	return bpf_skb_store_bytes(skb, off, &new, sizeof(new), 0);
}

static __always_inline int tcp_set16(struct __sk_buff *skb, __u32 csum_off, __u32 off,
				     __u16 old, __u16 new)
{
	if (bpf_l4_csum_replace(skb, csum_off, old, new, sizeof(new)))
		return -1;
	return bpf_skb_store_bytes(skb, off, &new, sizeof(new), 0);
}

/*
 * Answers a TCP SYN with RST|ACK and returns the verdict that sends it back out of the
 * device it arrived on; returns -1 for anything else (the caller drops it).
 */
static __always_inline int reject_tcp_syn(struct __sk_buff *skb, __u8 point,
					  const struct l4_tuple *t)
{
	if (t->proto != IPPROTO_TCP || (t->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)
		return -1;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return -1;
	struct tcphdr *tcp = data + t->l4_off;
	if ((void *)(tcp + 1) > data_end)
		return -1;

	__u8 dmac[ETH_ALEN], smac[ETH_ALEN];
	__builtin_memcpy(dmac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(smac, eth->h_source, ETH_ALEN);
	__u32 saddr = ip->saddr, daddr = ip->daddr;
	__u16 tot_len = bpf_ntohs(ip->tot_len);
	__u8 ttl = ip->ttl;
	__u16 sport = tcp->source, dport = tcp->dest;
	__u32 seq = tcp->seq, ack = tcp->ack_seq;
	__u16 flags_word = *(__u16 *)((__u8 *)tcp + TCP_FLAGS_OFF);
	__u16 window = tcp->window, urg = tcp->urg_ptr;
	__u32 hdr_len = (__u32)tcp->doff * 4;
	__u32 ip_len = (__u32)ip->ihl * 4;
	if (tot_len < ip_len + hdr_len)
		return -1;
	/* The SYN and any data it carries are acknowledged, as a closed port's RST does. */
	__u32 new_ack = bpf_htonl(bpf_ntohl(seq) + 1 + (tot_len - ip_len - hdr_len));
	/* Same header length, flags RST|ACK. */
	__u16 new_flags = bpf_htons((__u16)(tcp->doff << 12) | TCP_FLAG_RST | TCP_FLAG_ACK);
	__u32 csum_off = l4_csum_off(t);
	__u32 tcp_off = t->l4_off;

	if (rewrite_macs(skb, dmac, smac) ||
	    bpf_skb_store_bytes(skb, IP_SADDR_OFF, &daddr, sizeof(daddr), 0) ||
	    bpf_skb_store_bytes(skb, IP_DADDR_OFF, &saddr, sizeof(saddr), 0) ||
	    bpf_skb_store_bytes(skb, tcp_off, &dport, sizeof(dport), 0) ||
	    bpf_skb_store_bytes(skb, tcp_off + 2, &sport, sizeof(sport), 0) ||
	    tcp_set32(skb, csum_off, tcp_off + TCP_SEQ_OFF, seq, 0) ||
	    tcp_set32(skb, csum_off, tcp_off + TCP_ACK_OFF, ack, new_ack) ||
	    tcp_set16(skb, csum_off, tcp_off + TCP_FLAGS_OFF, flags_word, new_flags) ||
	    tcp_set16(skb, csum_off, tcp_off + TCP_WINDOW_OFF, window, 0) ||
	    tcp_set16(skb, csum_off, tcp_off + TCP_URG_OFF, urg, 0))
		return -1;
	/* A fresh TTL, as if this host sent it. */
	__u8 new_ttl = 64;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, bpf_htons((__u16)ttl << 8),
				bpf_htons((__u16)new_ttl << 8), 2) ||
	    bpf_skb_store_bytes(skb, IP_TTL_OFF, &new_ttl, 1, 0))
		return -1;
	count(skb, point, SLUICE_OUTCOME_REJECT, SLUICE_DROP_NO_SERVICE_BACKEND);
	return bpf_redirect(skb->ifindex, 0);
}

/* Folds a 32-bit ones'-complement sum (as bpf_csum_diff returns) into a checksum. */
static __always_inline __u16 csum_fold32(__s64 sum)
{
	__u32 s = (__u32)sum;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* What an ICMP port-unreachable carries: the error's headers, then the offending packet's
 * IPv4 header and the first 8 bytes of its payload (RFC 792). */
struct icmp_unreach {
	struct iphdr ip;
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u32 unused;
	struct iphdr quoted_ip;
	struct udphdr quoted_udp;
};

#define SLUICE_ICMP_DEST_UNREACH 3
#define SLUICE_ICMP_PORT_UNREACH 3

/*
 * Answers a UDP datagram to a frontend without backends with ICMP port unreachable from the
 * frontend, as a closed port does, so a connected socket gets ECONNREFUSED at once. Returns
 * the verdict that sends it back out of the device it arrived on; -1 when it does not apply
 * (the caller drops the packet).
 */
static __always_inline int reject_udp(struct __sk_buff *skb, __u8 point, const struct l4_tuple *t)
{
	if (t->proto != IPPROTO_UDP)
		return -1;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl != 5)
		return -1;
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end)
		return -1;

	struct icmp_unreach m = {};
	__u8 dmac[ETH_ALEN], smac[ETH_ALEN];
	__builtin_memcpy(dmac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(smac, eth->h_source, ETH_ALEN);
	m.quoted_ip = *ip;
	m.quoted_udp = *udp;
	m.ip.version = 4;
	m.ip.ihl = 5;
	m.ip.tot_len = bpf_htons(sizeof(m));
	m.ip.ttl = 64;
	m.ip.protocol = IPPROTO_ICMP;
	m.ip.saddr = ip->daddr;  /* the frontend the client addressed */
	m.ip.daddr = ip->saddr;
	m.type = SLUICE_ICMP_DEST_UNREACH;
	m.code = SLUICE_ICMP_PORT_UNREACH;
	m.ip.check = csum_fold32(bpf_csum_diff(0, 0, (__be32 *)&m.ip, sizeof(m.ip), 0));
	m.checksum = csum_fold32(bpf_csum_diff(0, 0, (__be32 *)&m.type,
					       sizeof(m) - sizeof(m.ip), 0));

	/* Keep exactly Ethernet + the ICMP message: cut the datagram to its headers, then open
	 * room for the error's own headers in front of them. */
	__u32 quoted = sizeof(m.quoted_ip) + sizeof(m.quoted_udp);
	if (bpf_skb_change_tail(skb, ETH_HLEN + quoted, 0) ||
	    bpf_skb_adjust_room(skb, sizeof(m) - quoted, BPF_ADJ_ROOM_MAC, 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &m, sizeof(m), BPF_F_INVALIDATE_HASH) ||
	    rewrite_macs(skb, dmac, smac))
		return -1;
	count(skb, point, SLUICE_OUTCOME_REJECT, SLUICE_DROP_NO_SERVICE_BACKEND);
	return bpf_redirect(skb->ifindex, 0);
}

#endif /* SLUICE_REJECT_H */
