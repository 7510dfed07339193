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
	struct lb4_revnat front = { .address = vip, .port = vport };
	if (point == SLUICE_POINT_SOCK_CONNECT) {
		/* A connected socket has one peer: kept on the socket, no shared entry. */
		struct sock_front *kept = bpf_sk_storage_get(&sluice_sock_front, ctx->sk, 0,
							     BPF_SK_STORAGE_GET_F_CREATE);
		if (kept) {
			kept->backend_address = be->address;
			kept->backend_port = be->port;
			kept->frontend = front;
		}
	} else {
		struct sock_revnat_key rkey = {
			.cookie = bpf_get_socket_cookie(ctx), .address = be->address,
			.port = be->port,
		};
		bpf_map_update_elem(&sluice_sock_rnat, &rkey, &front, BPF_ANY);
	}
	sock_event(ctx, point, vip, vport, be);
	ctx->user_ip4 = be->address;
	ctx->user_port = be->port;
	return 1;
}

/* A socket connected again (UDP; TCP after a failed attempt), now to no frontend: its
 * earlier peer's frontend is void. */
static __always_inline void sock_forget_front(struct bpf_sock_addr *ctx)
{
	if (bpf_sk_storage_get(&sluice_sock_front, ctx->sk, 0, 0))
		bpf_sk_storage_delete(&sluice_sock_front, ctx->sk);
}

static __always_inline int sock_forward(struct bpf_sock_addr *ctx, __u8 point)
{
	int no_backend = 0;

	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return 1;
	if (!sock_translate(ctx, point, &no_backend) && point == SLUICE_POINT_SOCK_CONNECT)
		sock_forget_front(ctx);
	if (no_backend) {
		/* Like a closed port: the application gets ECONNREFUSED at once. */
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	return 1;
}

/* The frontend a connected socket's peer `address`:`port` stands for, if it was translated. */
static __always_inline const struct lb4_revnat *sock_connected_front(struct bpf_sock_addr *ctx,
								     __u32 address, __u16 port)
{
	/* Without storage (most sockets: never connected to a frontend) this is a pointer
	 * check on the socket, not a map lookup. */
	struct sock_front *kept = bpf_sk_storage_get(&sluice_sock_front, ctx->sk, 0, 0);
	if (kept && kept->backend_address == address && kept->backend_port == port)
		return &kept->frontend;
	return 0;
}

/* Shows the frontend instead of the backend a socket was translated to. */
static __always_inline void show_front(struct bpf_sock_addr *ctx, const struct lb4_revnat *front)
{
	ctx->user_ip4 = front->address;
	ctx->user_port = front->port;
}

/* getpeername(): only a connected socket has a peer, and connect() kept its frontend. */
static __always_inline int sock_reverse_peer(struct bpf_sock_addr *ctx)
{
	const struct lb4_revnat *front =
		sock_connected_front(ctx, ctx->user_ip4, (__u16)ctx->user_port);
	if (front)
		show_front(ctx, front);
	return 1;
}

/* recvmsg() (UDP): a connected socket's peer, else a frontend an unconnected send used. */
static __always_inline int sock_reverse_datagram(struct bpf_sock_addr *ctx)
{
	__u32 address = ctx->user_ip4;
	__u16 port = (__u16)ctx->user_port;
	const struct lb4_revnat *front = sock_connected_front(ctx, address, port);
	if (!front) {
		struct sock_revnat_key rkey = {
			.cookie = bpf_get_socket_cookie(ctx), .address = address, .port = port,
		};
		front = bpf_map_lookup_elem(&sluice_sock_rnat, &rkey);
	}
	if (front)
		show_front(ctx, front);
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
	return sock_reverse_datagram(ctx);
}

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock_reverse_peer(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
