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

#endif /* SLUICE_PACKET_H */
