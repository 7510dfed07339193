/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* Writing connection-tracking entries. */
#ifndef SLUICE_CT_H
#define SLUICE_CT_H

#include "maps.h"
#include "packet.h"

/* How stale a live entry's last-seen time may get (lifetimes are a minute and up). */
#define SLUICE_CT_TOUCH_NS (1000ULL * 1000000ULL)

/*
 * A packet of the connection of entry `e` was seen at `now`. The time is rewritten once a
 * second, not per packet: a store takes the entry's cache line from the other CPU, and
 * the two ends of a connection on one node are mostly handled on different CPUs.
 */
static __always_inline void ct_touch(struct ct4_entry *e, __u64 now)
{
	if (older_than(now, e->last_seen_ns, SLUICE_CT_TOUCH_NS))
		e->last_seen_ns = now;
}

/*
 * Stores `entry` under `key`. A key still present (a reused tuple: a client's ports come
 * round again within seconds under a connection churn) is rewritten in place: an LRU
 * update of a present key takes a fresh element and frees the old one, each under the
 * LRU's locks. A new element is looked up once after its insert: that marks it used, and
 * the LRU map evicts elements never looked up first — without the mark, the next insert
 * into a full map (this packet's next entry, say) may take back the one just made.
 * Returns 0, or the error of the insert; `*stored` (when given) is the entry in the map (NULL
 * in the unlikely case another CPU's insert took it back at once).
 */
static __always_inline long ct4_store(const struct ct4_key *key, const struct ct4_entry *entry,
				      struct ct4_entry **stored)
{
	struct ct4_entry *present = bpf_map_lookup_elem(&sluice_ct4, key);
	if (present) {
		*present = *entry;
		if (stored)
			*stored = present;
		return 0;
	}
	long err = bpf_map_update_elem(&sluice_ct4, key, entry, BPF_ANY);
	if (err)
		return err;
	present = bpf_map_lookup_elem(&sluice_ct4, key);
	if (stored)
		*stored = present;
	return 0;
}

#endif /* SLUICE_CT_H */
