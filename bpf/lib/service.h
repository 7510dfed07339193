/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* The service step every entry program runs on a TCP/UDP packet. */
#ifndef SLUICE_SERVICE_H
#define SLUICE_SERVICE_H

#include "lb.h"
#include "reject.h"

#define SERVICE_CONTINUE (-1)

/*
 * A reply is translated back; else a packet to a frontend becomes one to a backend; a SYN
 * to a frontend without backends is refused with a RST, a UDP datagram with ICMP port
 * unreachable. Returns SERVICE_CONTINUE with
 * *daddr updated and *outcome saying what happened (0: nothing, not a service packet), or
 * the tc verdict the program must return. `frontend_possible` 0 says the destination is a
 * pod's own address, never a frontend: only the reply lookup is made.
 */
static __always_inline int lb4_service_step(struct __sk_buff *skb, __u8 point, __u32 saddr,
					    __u32 *daddr, const struct l4_tuple *t, __u32 snat_ip,
					    int external_only, int frontend_possible,
					    __u8 *outcome)
{
	__u16 reason = 0;
	*outcome = SLUICE_OUTCOME_REVNAT;
	enum lb_verdict v = lb4_reverse(skb, saddr, *daddr, t, daddr, &reason);
	if (v == LB_PASS && !frontend_possible) {
		*outcome = 0;
		return SERVICE_CONTINUE;
	}
	if (v == LB_PASS) {
		*outcome = SLUICE_OUTCOME_DNAT;
		v = lb4_translate(skb, saddr, *daddr, t, snat_ip, external_only, daddr, &reason);
	}
	if (v == LB_DROP) {
		if (reason == SLUICE_DROP_NO_SERVICE_BACKEND) {
			int verdict = reject_tcp_syn(skb, point, t);
			if (verdict < 0)
				verdict = reject_udp(skb, point, t);
			if (verdict >= 0)
				return verdict;
		}
		return drop(skb, point, reason);
	}
	if (v == LB_PASS) {
		*outcome = 0;
		return SERVICE_CONTINUE;
	}
	count(skb, point, *outcome, 0);
	return SERVICE_CONTINUE;
}

#endif /* SLUICE_SERVICE_H */
