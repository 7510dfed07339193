// SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0)
/*
 * Socket-LB: cgroup v2 hooks that translate a service frontend to a backend when a socket
 * connects (TCP, connected UDP) or sends (unconnected UDP), so the packets themselves never
 * need NAT. getpeername() and recvmsg() show the frontend again, so the application never
 * notices. Services with ClientIP affinity are left to the per-packet path, which keys
 * affinity on the client address a socket does not have yet at connect().
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lib/maps.h"
#include "lib/trace.h"

#define ECONNREFUSED 111

/*
 * A socket-level flow event: the socket asked for frontend vip:vport and got `be` (NULL:
 * refused, no backend). Unconnected UDP sends are aggregated like packets; connects are
 * always reported.
 */
static __always_inline void sock_event(struct bpf_sock_addr *ctx, __u8 point, __u32 vip,
				       __u16 vport, const struct lb4_backend *be)
{
	struct flow_event ev = {};
	ev.ktime_ns = bpf_ktime_get_ns();
	ev.sock_cookie = bpf_get_socket_cookie(ctx);
	ev.netns_cookie = bpf_get_netns_cookie(ctx);
	ev.point = point;
	ev.proto = ctx->protocol;
	ev.svc_addr = vip;
	ev.svc_port = vport;
	ev.flags = SLUICE_EVF_SVC_DNAT | SLUICE_EVF_REPLY_KNOWN;
	if (be) {
		ev.type = SLUICE_EVENT_TRACE_SOCK;
		ev.daddr = be->address;
		ev.dport = be->port;
	} else {
		ev.type = SLUICE_EVENT_DROP;
		ev.reason = SLUICE_DROP_NO_SERVICE_BACKEND;
		ev.daddr = vip;
		ev.dport = vport;
	}
	if (point == SLUICE_POINT_SOCK_SENDMSG) {
		/* The socket stands in for the source, which it may not have yet. */
		ev.saddr = (__u32)ev.sock_cookie;
		if (!trace_due(&ev, ev.ktime_ns))
			return;
		ev.saddr = 0;
	}
	events_output(&ev);
}

/* Returns 1 and rewrites ctx when the destination is a frontend; 0 when it is not one. */
static __always_inline int sock_translate(struct bpf_sock_addr *ctx, __u8 point, int *no_backend)
{
	__u32 vip = ctx->user_ip4;
	__u16 vport = (__u16)ctx->user_port;
	__u8 proto = ctx->protocol;
	struct lb4_key key = { .address = vip, .port = vport, .proto = proto, .slot = 0 };
	struct lb4_service *svc = bpf_map_lookup_elem(&sluice_lb4_svc, &key);

	if (!svc || (svc->flags & SLUICE_SVC_AFFINITY))
		return 0;
	if (svc->count == 0) {
		*no_backend = 1;
		sock_event(ctx, point, vip, vport, 0);
		return 0;
	}
	key.slot = (bpf_get_prandom_u32() % svc->count) + 1;
	struct lb4_service *entry = bpf_map_lookup_elem(&sluice_lb4_svc, &key);
	if (!entry)
		return 0;
	struct lb4_backend *be = bpf_map_lookup_elem(&sluice_lb4_be, &entry->backend_id);
	if (!be)
		return 0;
	struct sock_revnat_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx), .address = be->address, .port = be->port,
	};
	struct lb4_revnat front = { .address = vip, .port = vport };
	bpf_map_update_elem(&sluice_sock_rnat, &rkey, &front, BPF_ANY);
	sock_event(ctx, point, vip, vport, be);
	ctx->user_ip4 = be->address;
	ctx->user_port = be->port;
	return 1;
}

static __always_inline int sock_forward(struct bpf_sock_addr *ctx, __u8 point)
{
	int no_backend = 0;

	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return 1;
	sock_translate(ctx, point, &no_backend);
	if (no_backend) {
		/* Like a closed port: the application gets ECONNREFUSED at once. */
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	return 1;
}

/* Shows the frontend instead of the backend a socket was translated to. */
static __always_inline int sock_reverse(struct bpf_sock_addr *ctx)
{
	struct sock_revnat_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
	};
	struct lb4_revnat *front = bpf_map_lookup_elem(&sluice_sock_rnat, &rkey);

	if (front) {
		ctx->user_ip4 = front->address;
		ctx->user_port = front->port;
	}
	return 1;
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx, SLUICE_POINT_SOCK_CONNECT);
}

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx, SLUICE_POINT_SOCK_SENDMSG);
}

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx);
}

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
