/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* TCP/UDP ports: reading them and rewriting address + port with checksum fixes. */
#ifndef SLUICE_L4_H
#define SLUICE_L4_H

#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include "packet.h"
#include "trace.h"

#define IP_SADDR_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, saddr))
#define IP_DADDR_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, daddr))

/* The source address as the packet carries it now (after any rewrite). */
static __always_inline __u32 load_saddr(struct __sk_buff *skb)
{
	__u32 saddr = 0;
	bpf_skb_load_bytes(skb, IP_SADDR_OFF, &saddr, sizeof(saddr));
	return saddr;
}

/* A packet's transport tuple; ports in network order. */
struct l4_tuple {
	__u32 l4_off;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags;  /* the byte with FIN/SYN/RST/PSH/ACK/URG, TCP only */
};


/*
 * Reads ports of an unfragmented TCP/UDP packet. Returns 0 on success, 1 when the packet
 * has no ports we can use (other protocols, fragments), -1 when it is truncated.
 */
static __always_inline int parse_l4(struct __sk_buff *skb, struct iphdr *ip, struct l4_tuple *t)
{
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return 1;
	/* MF or a fragment offset: later fragments carry no ports. */
	if (ip->frag_off & bpf_htons(0x3fff))
		return 1;
	t->proto = ip->protocol;
	t->l4_off = ETH_HLEN + ip->ihl * 4;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	if (t->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = data + t->l4_off;
		if ((void *)(tcp + 1) > data_end)
			return -1;
		t->sport = tcp->source;
		t->dport = tcp->dest;
		t->tcp_flags = ((__u8 *)tcp)[13];
	} else {
		struct udphdr *udp = data + t->l4_off;
		if ((void *)(udp + 1) > data_end)
			return -1;
		t->sport = udp->source;
		t->dport = udp->dest;
		t->tcp_flags = 0;
	}
	return 0;
}

/* A bare TCP SYN: the first packet of a connection, never a reply (ports' flags byte). */
static __always_inline int tcp_bare_syn(const struct l4_tuple *t)
{
	return t->proto == IPPROTO_TCP &&
	       (t->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* Starts the packet's flow event with its tuple, given parse_l4's result for it (ICMP: type
 * << 8 | code as source port). */
static __always_inline void trace_l4(struct __sk_buff *skb, struct iphdr *ip,
				     const struct l4_tuple *t, int l4)
{
	if (l4 == 0) {
		trace_tuple(ip->saddr, ip->daddr, t->proto, t->sport, t->dport, t->tcp_flags);
		return;
	}
	__u16 type_code = 0;
	if (ip->protocol == IPPROTO_ICMP && !(ip->frag_off & bpf_htons(0x1fff))) {
		__u8 hdr[2] = {};
		if (!bpf_skb_load_bytes(skb, ETH_HLEN + ip->ihl * 4, hdr, sizeof(hdr)))
			type_code = bpf_htons(((__u16)hdr[0] << 8) | hdr[1]);
	}
	trace_tuple(ip->saddr, ip->daddr, ip->protocol, type_code, 0, 0);
}

/* Like trace_l4, for programs that do not parse ports themselves. */
static __always_inline void trace_ipv4(struct __sk_buff *skb, struct iphdr *ip)
{
	struct l4_tuple t = {};
	int l4 = parse_l4(skb, ip, &t);
	trace_l4(skb, ip, &t, l4);
}

static __always_inline __u32 l4_csum_off(const struct l4_tuple *t)
{
	return t->l4_off + (t->proto == IPPROTO_TCP ? __builtin_offsetof(struct tcphdr, check)
						   : __builtin_offsetof(struct udphdr, check));
}

/*
 * Rewrites one endpoint (source or destination) of the packet: address in the IP header,
 * port in the L4 header, and every checksum that covers them (IP header; L4 over the
 * pseudo-header and the port). A UDP checksum of zero means "none" and stays zero.
 */
static __always_inline int rewrite_endpoint(struct __sk_buff *skb, const struct l4_tuple *t,
					    int is_dst, __u32 old_addr, __u32 new_addr,
					    __u16 old_port, __u16 new_port)
{
	__u32 csum_off = l4_csum_off(t);
	__u64 mangled = t->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 addr_off = is_dst ? IP_DADDR_OFF : IP_SADDR_OFF;
	__u32 port_off = t->l4_off + (is_dst ? 2 : 0);

	if (old_addr != new_addr) {
		if (bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr,
					BPF_F_PSEUDO_HDR | mangled | sizeof(new_addr)))
			return -1;
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, sizeof(new_addr)))
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0))
			return -1;
	}
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, mangled | sizeof(new_port)))
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0))
			return -1;
	}
	return 0;
}

#endif /* SLUICE_L4_H */
