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

#define ECONNREFUSED 111

/* Returns 1 and rewrites ctx when the destination is a frontend; 0 when it is not one. */
static __always_inline int sock_translate(struct bpf_sock_addr *ctx, int *no_backend)
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
	ctx->user_ip4 = be->address;
	ctx->user_port = be->port;
	return 1;
}

static __always_inline int sock_forward(struct bpf_sock_addr *ctx)
{
	int no_backend = 0;

	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return 1;
	sock_translate(ctx, &no_backend);
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
	return sock_forward(ctx);
}

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx);
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
