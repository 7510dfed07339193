/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * Flow events. Each tc program starts an event for its packet (trace_begin), fills in the
 * tuple and what happened on the way (service translation, reply or not), and the exit it
 * takes sends it: every drop, and traces as aggregation allows. Policy verdicts are sent
 * where policy decides.
 */
#ifndef SLUICE_TRACE_H
#define SLUICE_TRACE_H

#include <linux/in.h>
#include "maps.h"
#include "packet.h"

/* Sends one event; a full ring buffer is counted, never silent. The agent is woken only
 * when unread events pile up (it also reads every few milliseconds). */
static __always_inline void events_output(struct flow_event *ev)
{
	__u64 size = bpf_ringbuf_query(&sluice_events, BPF_RB_RING_SIZE);
	__u64 unread = bpf_ringbuf_query(&sluice_events, BPF_RB_AVAIL_DATA);
	__u64 wakeup = unread >= size / SLUICE_EVENTS_WAKEUP_SHARE ? BPF_RB_FORCE_WAKEUP
								   : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&sluice_events, ev, sizeof(*ev), wakeup)) {
		__u32 zero = 0;
		struct events_lost *lost = bpf_map_lookup_elem(&sluice_events_lost, &zero);
		if (lost)
			lost->events += 1;
	}
}

static __always_inline struct trace_scratch *trace_scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&sluice_trace_scratch, &zero);
}

static __always_inline struct flow_event *trace_state(void)
{
	struct trace_scratch *s = trace_scratch();
	return s ? &s->ev : 0;
}

/* Every tc program starts here for a packet it handles: its event, and its clock. */
static __always_inline void trace_begin(struct __sk_buff *skb, __u8 point)
{
	struct trace_scratch *s = trace_scratch();
	if (!s)
		return;
	__builtin_memset(&s->ev, 0, sizeof(s->ev));
	s->ev.point = point;
	s->ev.ifindex = skb->ifindex;
	s->clock_ns = flow_clock_ns();
}

/*
 * flow_clock_ns as the packet's program read it in trace_begin: one helper call per packet
 * instead of one per use (the sender's entry, policy, the event's aggregation), a few
 * percent of a stream's per-packet cost. Tick resolution either way.
 */
static __always_inline __u64 packet_clock_ns(void)
{
	struct trace_scratch *s = trace_scratch();
	return s && s->clock_ns ? s->clock_ns : flow_clock_ns();
}

/*
 * A packet handed from one endpoint's program straight to another's (a pod of this node
 * sending to another): the receiver goes on with the sender's event at its own `point` and
 * device, so the tuple as sent and the service translation the sender made stay in it.
 */
static __always_inline void trace_hand_over(__u8 point, __u32 ifindex)
{
	struct flow_event *ev = trace_state();
	if (!ev)
		return;
	ev->point = point;
	ev->ifindex = ifindex;
}

/* Whether the sender's own trace of a handed-over packet is sent: only without
 * aggregation. Aggregated, the receiver's to-endpoint trace tells it (as Hubble's
 * default monitor aggregation reports a delivery once, where it arrives). */
static __always_inline int trace_hand_over_reported(void)
{
	__u32 zero = 0;
	struct datapath_config *cfg = bpf_map_lookup_elem(&sluice_config, &zero);
	return !cfg || cfg->monitor_aggregation == SLUICE_AGGREGATION_NONE;
}

/* The device the event is told for (a program may act for another device's pod). */
static __always_inline void trace_ifindex(__u32 ifindex)
{
	struct flow_event *ev = trace_state();
	if (ev)
		ev->ifindex = ifindex;
}

/* The connection as the packet arrived. ICMP carries type and code where ports would be. */
static __always_inline void trace_tuple(__u32 saddr, __u32 daddr, __u8 proto, __u16 sport,
					__u16 dport, __u8 tcp_flags)
{
	struct flow_event *ev = trace_state();
	if (!ev)
		return;
	ev->saddr = saddr;
	ev->daddr = daddr;
	ev->proto = proto;
	ev->sport = sport;
	ev->dport = dport;
	ev->tcp_flags = tcp_flags;
}

static __always_inline void trace_reply(int is_reply)
{
	struct flow_event *ev = trace_state();
	if (ev)
		ev->flags |= SLUICE_EVF_REPLY_KNOWN | (is_reply ? SLUICE_EVF_REPLY : 0);
}

/* The destination frontend became backend `addr`:`port`. */
static __always_inline void trace_dnat(__u32 front_addr, __u16 front_port, __u32 addr, __u16 port)
{
	struct flow_event *ev = trace_state();
	if (!ev)
		return;
	ev->flags |= SLUICE_EVF_SVC_DNAT;
	ev->svc_addr = front_addr;
	ev->svc_port = front_port;
	ev->daddr = addr;
	ev->dport = port;
}

/* A reply's source (the backend, kept in the tuple) became frontend `addr`:`port`. */
static __always_inline void trace_revnat(__u32 front_addr, __u16 front_port)
{
	struct flow_event *ev = trace_state();
	if (!ev)
		return;
	ev->flags |= SLUICE_EVF_SVC_REVNAT;
	ev->svc_addr = front_addr;
	ev->svc_port = front_port;
}

/* A flow-seen time: flow_clock_ns in units of 2^20 ns, never 0 (0 is "never reported"). */
static __always_inline __u32 seen_stamp(__u64 now)
{
	return (__u32)(now >> 20) | 1;
}

/* Whether the report at `last` is an aggregation interval before `at`; a `last` a little
 * ahead (another CPU's clock) is fresh, and the 32-bit stamps may wrap. */
static __always_inline int seen_stamp_expired(__u32 at, __u32 last)
{
	return (__s32)(at - last) >= (__s32)(SLUICE_AGGREGATION_INTERVAL_NS >> 20);
}

/*
 * Medium aggregation: report a flow at a point when it is new (or was last reported long
 * ago) and on every TCP SYN, FIN and RST. One entry per connection (its tuple in a fixed
 * order) holds the time of the last report for each point and direction, so a short
 * connection inserts one LRU element per node instead of one per point and direction
 * (an LRU insert takes a fresh element and, when the map is full, evicts one).
 */
static __always_inline int trace_due(const struct flow_event *ev, __u64 now)
{
	__u32 zero = 0;
	struct datapath_config *cfg = bpf_map_lookup_elem(&sluice_config, &zero);
	if (!cfg || cfg->monitor_aggregation == SLUICE_AGGREGATION_NONE)
		return 1;
	int reversed = ev->saddr > ev->daddr || (ev->saddr == ev->daddr && ev->sport > ev->dport);
	__u32 slot = ((__u32)ev->point - 1) * 2 + reversed;
	if (slot >= SLUICE_FLOW_SEEN_SLOTS)
		return 1;
	struct flow_seen_key key = {
		.addr_a = reversed ? ev->daddr : ev->saddr,
		.addr_b = reversed ? ev->saddr : ev->daddr,
		.port_a = reversed ? ev->dport : ev->sport,
		.port_b = reversed ? ev->sport : ev->dport,
		.proto = ev->proto,
	};
	int flags_change = ev->proto == IPPROTO_TCP &&
			   (ev->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST));
	struct flow_seen_recent *recent = bpf_map_lookup_elem(&sluice_flow_seen_recent, &slot);
	int same = recent && recent->key.addr_a == key.addr_a && recent->key.addr_b == key.addr_b &&
		   recent->key.port_a == key.port_a && recent->key.port_b == key.port_b &&
		   recent->key.proto == key.proto;
	if (same && !flags_change &&
	    !older_than(now, recent->reported_ns, SLUICE_AGGREGATION_INTERVAL_NS))
		return 0;
	if (flags_change && !(ev->tcp_flags & TCP_FLAG_SYN)) {
		/* A FIN or RST is always told and need not be remembered in the shared map: the
		 * report its connection's opening left there still covers what follows. */
		if (recent) {
			recent->key = key;
			recent->reported_ns = now;
		}
		return 1;
	}
	struct flow_seen *seen = bpf_map_lookup_elem(&sluice_flow_seen, &key);
	__u32 at = seen_stamp(now), i = slot & (SLUICE_FLOW_SEEN_SLOTS - 1);
	int due = 1;
	__u64 reported = now;
	if (seen) {
		/* Rewritten in place: no LRU element taken. */
		__u32 last = seen->reported[i];
		__s32 age = (__s32)(at - last);
		due = !last || flags_change || seen_stamp_expired(at, last);
		if (due)
			seen->reported[i] = at;
		else if (age > 0)
			reported = now - ((__u64)age << 20);
	} else {
		struct flow_seen fresh = {};
		fresh.reported[i] = at;
		bpf_map_update_elem(&sluice_flow_seen, &key, &fresh, BPF_ANY);
	}
	if (recent) {
		recent->key = key;
		recent->reported_ns = reported;
	}
	return due;
}

/* Sends the packet's event as it leaves with `outcome` (a drop or reject: `reason`). A
 * subprogram, so the many exits of a program share one copy. */
static __attribute__((noinline, unused)) int trace_emit(struct __sk_buff *skb, __u32 outcome,
						 __u32 reason)
{
	struct flow_event *ev = trace_state();
	if (!ev)
		return 0;
	int dropped = outcome == SLUICE_OUTCOME_DROP || outcome == SLUICE_OUTCOME_REJECT;
	if (!dropped) {
		if (!ev->saddr && !ev->daddr)
			return 0;  /* not IPv4: nothing to say */
		if (!trace_due(ev, packet_clock_ns()))
			return 0;
	}
	ev->type = dropped ? SLUICE_EVENT_DROP : SLUICE_EVENT_TRACE;
	ev->outcome = outcome;
	ev->reason = reason;
	ev->len = skb->len;
	ev->ktime_ns = bpf_ktime_get_ns();
	events_output(ev);
	return 0;
}

#define TRACE_POLICY_ALLOWED 0x100
#define TRACE_POLICY_L4 0x200

/* Policy decided on a new connection in direction `what & 0xff` (with TRACE_POLICY_*), by
 * the entry found under `identity` (0 and cookie 0: no entry matched). */
static __attribute__((noinline, unused)) int trace_policy(struct __sk_buff *skb, __u32 what,
						   __u32 identity, __u32 cookie)
{
	struct flow_event *ev = trace_state();
	if (!ev)
		return 0;
	struct flow_event copy = *ev;
	int allowed = what & TRACE_POLICY_ALLOWED;
	copy.type = SLUICE_EVENT_POLICY_VERDICT;
	copy.policy_dir = what & 0xff;
	copy.policy_identity = identity;
	copy.policy_cookie = cookie;
	copy.flags |= (allowed ? SLUICE_EVF_POLICY_ALLOWED : 0) |
		      ((what & TRACE_POLICY_L4) ? SLUICE_EVF_POLICY_L4 : 0);
	copy.reason = allowed ? 0 : SLUICE_DROP_POLICY_DENIED;
	copy.len = skb->len;
	copy.ktime_ns = bpf_ktime_get_ns();
	events_output(&copy);
	return 0;
}

#endif /* SLUICE_TRACE_H */
