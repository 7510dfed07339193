/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Parsing and in-place rewriting of Ethernet + IPv4 headers. */
#ifndef SLUICE_PACKET_H
#define SLUICE_PACKET_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* The TCP flag bits of the header byte at offset 13 (after <linux/tcp.h>, whose enum has the
 * same names). */
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

#define IP_CSUM_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, check))
#define IP_TTL_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, ttl))

enum parse_result {
	PARSE_NOT_IPV4,  /* ARP, IPv6, ...: not ours to judge */
	PARSE_IPV4,
	PARSE_INVALID,   /* claims IPv4 but the header is cut short or malformed */
};

/* Points *ip at a bounds-checked IPv4 header when the frame carries one. */
static __always_inline enum parse_result parse_ipv4(struct __sk_buff *skb, struct iphdr **ip)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return PARSE_INVALID;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4;
	struct iphdr *iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end)
		return PARSE_INVALID;
	if (iph->version != 4 || iph->ihl < 5)
		return PARSE_INVALID;
	*ip = iph;
	return PARSE_IPV4;
}

/*
 * The clock of connection tracking and event aggregation: CLOCK_MONOTONIC at tick
 * resolution. Their lifetimes are seconds, and the precise clock (a TSC read, several per
 * packet) showed up in the stream benchmark's profile. Events carry the precise time.
 */
static __always_inline __u64 flow_clock_ns(void)
{
	return bpf_ktime_get_coarse_ns();
}

/*
 * Whether a timestamp `last` (flow_clock_ns) is at least `age` before `now`. Another CPU
 * may have stored a `last` a little later than this CPU's `now`: that is fresh, not an
 * unsigned wrap-around to "ages ago".
 */
static __always_inline int older_than(__u64 now, __u64 last, __u64 age)
{
	return now > last && now - last >= age;
}

/* Sets both MACs; returns 0 or a negative error. */
static __always_inline int rewrite_macs(struct __sk_buff *skb, const __u8 *src, const __u8 *dst)
{
	__u8 macs[2 * ETH_ALEN];

	__builtin_memcpy(macs, dst, ETH_ALEN);
	__builtin_memcpy(macs + ETH_ALEN, src, ETH_ALEN);
	/* h_dest and h_source are adjacent: one store instead of two helper calls. */
	if (bpf_skb_store_bytes(skb, __builtin_offsetof(struct ethhdr, h_dest), macs,
				sizeof(macs), 0))
		return -1;
	return 0;
}

/*
 * We route, so we decrement the TTL like a router and fix the header checksum
 * incrementally. The caller has checked ttl > 1.
 */
static __always_inline int dec_ttl(struct __sk_buff *skb, __u8 ttl)
{
	__u8 new_ttl = ttl - 1;
	/* TTL is the high byte of the 16-bit word it shares with the protocol. */
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, bpf_htons((__u16)ttl << 8),
				bpf_htons((__u16)new_ttl << 8), 2))
		return -1;
	if (bpf_skb_store_bytes(skb, IP_TTL_OFF, &new_ttl, 1, 0))
		return -1;
	return 0;
}

/* The frame through its IPv4 header checksum: what forwarding rewrites. */
#define ROUTED_HEAD_LEN (IP_CSUM_OFF + 2)

/*
 * What a router does to a frame it hands on, in one store: MACs `src` and `dst`, the TTL
 * one less and the header checksum adjusted for it (the bytes between are written back as
 * they were). Every writing helper call may first have to unclone the packet's head;
 * dec_ttl and rewrite_macs made three. The caller has checked ttl > 1. Returns 0 or a
 * negative error.
 */
static __always_inline int route_frame(struct __sk_buff *skb, const __u8 *src, const __u8 *dst)
{
	__u8 head[ROUTED_HEAD_LEN] __attribute__((aligned(8)));
	void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;

	if (data + sizeof(head) <= data_end)
		__builtin_memcpy(head, data, sizeof(head));
	else if (bpf_skb_load_bytes(skb, 0, head, sizeof(head)))
		return -1;
	__builtin_memcpy(head, dst, ETH_ALEN);
	__builtin_memcpy(head + ETH_ALEN, src, ETH_ALEN);
	head[IP_TTL_OFF] -= 1;
	/* The TTL is the high byte of its 16-bit word, so the word fell by 0x0100 (network
	 * order) and the one's-complement checksum rises by as much, carry folded back. */
	__u16 check;
	__builtin_memcpy(&check, head + IP_CSUM_OFF, sizeof(check));
	__u32 sum = (__u32)check + bpf_htons(0x0100);
	check = (__u16)(sum + (sum >> 16));
	__builtin_memcpy(head + IP_CSUM_OFF, &check, sizeof(check));
	if (bpf_skb_store_bytes(skb, 0, head, sizeof(head), 0))
		return -1;
	return 0;
}

#endif /* SLUICE_PACKET_H */
