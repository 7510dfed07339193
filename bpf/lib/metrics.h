/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
#ifndef SLUICE_METRICS_H
#define SLUICE_METRICS_H

#include "maps.h"

static __always_inline void count(struct __sk_buff *skb, __u8 point, __u8 outcome,
				  __u16 reason)
{
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

#endif /* SLUICE_METRICS_H */
