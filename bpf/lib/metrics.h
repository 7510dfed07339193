/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
#ifndef SLUICE_METRICS_H
#define SLUICE_METRICS_H

#include "maps.h"
#include "trace.h"

/* Counts a packet under `point`, `outcome` and `reason`; sends no event. */
static __always_inline void count_packet(struct __sk_buff *skb, __u8 point, __u8 outcome,
					 __u16 reason)
{
	if (!reason) {
		__u32 slot = (__u32)point * SLUICE_OUTCOMES + outcome;
		struct metrics_value *plain = bpf_map_lookup_elem(&sluice_metrics_plain, &slot);
		if (plain) {
			plain->packets += 1;
			plain->bytes += skb->len;
		}
		return;
	}
	struct metrics_key key = { .point = point, .outcome = outcome, .reason = reason };
	struct metrics_value *v = bpf_map_lookup_elem(&sluice_metrics, &key);

	if (v) {
		/* Per-CPU value: no other CPU writes this slot. */
		v->packets += 1;
		v->bytes += skb->len;
		return;
	}
	struct metrics_value init = { .packets = 1, .bytes = skb->len };
	bpf_map_update_elem(&sluice_metrics, &key, &init, BPF_NOEXIST);
}

/* Counts what a program did; the outcomes that end a program's handling also send the
 * packet's flow event (the branch folds away: outcome is a constant at every call). */
static __always_inline void count(struct __sk_buff *skb, __u8 point, __u8 outcome,
				  __u16 reason)
{
	switch (outcome) {
	case SLUICE_OUTCOME_TO_STACK:
	case SLUICE_OUTCOME_REDIRECT:
	case SLUICE_OUTCOME_ENCAP:
	case SLUICE_OUTCOME_DROP:
	case SLUICE_OUTCOME_ROUTED:
	case SLUICE_OUTCOME_REJECT:
		trace_emit(skb, outcome, reason);
		break;
	default:
		break;
	}
	count_packet(skb, point, outcome, reason);
}

#endif /* SLUICE_METRICS_H */
