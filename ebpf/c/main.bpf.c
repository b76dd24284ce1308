/* SPDX-License-Identifier: MIT OR GPL-2.0 */
/*
 * Main ingress program: runs on the main server's interface before the
 * kernel stack sees a packet.
 *
 * For a TCP segment of a flow in baton_flows it records what the client has
 * acknowledged and sent (forward-only, see flow_observe), then either drops it (FROZEN: the connection is being moved,
 * the client will retransmit) or encapsulates it toward the participant that
 * now owns the connection (FORWARD) and sends it out. Everything else passes
 * untouched. A packet of a flow in the map is never passed up: the kernel
 * has no socket for it any more and would answer with a reset.
 *
 * An ICMP destination-unreachable about a segment a participant sent from
 * the VIP (a router's "fragmentation needed") arrives here, at the VIP; for a
 * forwarded flow it is encapsulated to that participant like the client's
 * segments, so path MTU discovery works for handed-off connections.
 *
 * Two entry points with the same logic: baton_main_tc (tc/tcx ingress) and
 * baton_main_xdp (XDP).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "baton_consts.h"
#include "baton_structs.h"
#include "encap_helpers.h"
#include "main_maps.h"
#include "pckt_parsing.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

enum main_action {
	MAIN_ACT_PASS,
	MAIN_ACT_DROP,
	MAIN_ACT_FORWARD,
};

/* The (last_ack, ack_wraps) pair as one 64-bit word, whatever the byte order. */
union ack_pos {
	struct {
		__u32 ack;
		__u32 wraps;
	} p;
	__u64 raw;
};

/*
 * Move the flow's highest ACK forward to `ack` if it is ahead in TCP sequence
 * space ((s32)(ack - last_ack) > 0), counting a wrap when the accepted ACK is
 * numerically smaller than the one it replaces. Returns 1 when `ack` is not
 * behind the highest ACK (ahead or equal) once this returns, 0 when it is an
 * old ACK (reordered or duplicated) that must not touch the observations.
 *
 * An entry without a valid ACK (created by a plain freeze) takes the first one
 * as it is. Seeded entries start from the main's snd_nxt at handoff, so even
 * the first segment is compared against a correct base.
 */
static __always_inline int observe_ack(struct flow_value *fv, __u32 ack)
{
	__u64 *slot = (__u64 *)&fv->last_ack;
	union ack_pos old, new;
	__s32 ahead;
	int i;

	if (!fv->has_ack) {
		new.p.ack = ack;
		new.p.wraps = 0;
		*slot = new.raw;
		fv->has_ack = 1;
		return 1;
	}
	for (i = 0; i < OBSERVE_CAS_TRIES; i++) {
		old.raw = *(volatile __u64 *)slot;
		ahead = (__s32)(ack - old.p.ack);
		if (ahead < 0)
			return 0;
		if (ahead == 0)
			return 1;
		new.p.ack = ack;
		new.p.wraps = old.p.wraps + (ack < old.p.ack ? 1 : 0);
		if (__sync_val_compare_and_swap(slot, old.raw, new.raw) == old.raw)
			return 1;
	}
	/* Another CPU kept storing newer ACKs; ours is at best equal to theirs. */
	return 1;
}

/* Move client_next_seq forward to `end` (sequence space), like observe_ack. */
static __always_inline void observe_next_seq(struct flow_value *fv, __u32 end)
{
	__u32 old;
	int i;

	if (!fv->has_next_seq) {
		fv->client_next_seq = end;
		fv->has_next_seq = 1;
		return;
	}
	for (i = 0; i < OBSERVE_CAS_TRIES; i++) {
		old = *(volatile __u32 *)&fv->client_next_seq;
		if ((__s32)(end - old) <= 0)
			return;
		if (__sync_val_compare_and_swap(&fv->client_next_seq, old, end) == old)
			return;
	}
}

/*
 * Record what this client segment tells about the connection. The program may
 * run on several CPUs for one flow at once: counters are atomic; the ACK (with
 * its wrap count) and client_next_seq move by compare-and-swap and only
 * forward; window and TSecr are plain stores taken only from segments whose
 * ACK is not behind the highest one, so an old reordered segment never
 * overwrites them.
 *
 * - window: from the latest ACK segment not behind the highest ACK (a pure
 *   window update repeats the ACK, so "equal" counts).
 * - TSecr: from those same segments, and only forward in its own (modular)
 *   space: it echoes the sender's clock, which a new owner must continue above.
 * - client_next_seq: seq + payload length (+1 for SYN, +1 for FIN), the next
 *   byte the client will send; RST segments occupy no sequence space and are
 *   not used.
 */
static __always_inline void flow_observe(struct flow_value *fv, const struct packet_info *pi)
{
	__u8 flags = pi->tcp_flags & (TCPF_BYTE_FIN | TCPF_BYTE_RST);
	__u32 end;

	if ((pi->tcp_flags & TCPF_BYTE_ACK) && observe_ack(fv, pi->ack_seq)) {
		fv->last_window = pi->window;
		if (pi->has_tsecr && (!fv->has_tsecr || (__s32)(pi->tsecr - fv->last_tsecr) > 0)) {
			fv->last_tsecr = pi->tsecr;
			fv->has_tsecr = 1;
		}
	}
	if (!(pi->tcp_flags & TCPF_BYTE_RST)) {
		end = pi->seq + pi->payload_len;
		if (pi->tcp_flags & TCPF_BYTE_SYN)
			end += 1;
		if (pi->tcp_flags & TCPF_BYTE_FIN)
			end += 1;
		observe_next_seq(fv, end);
	}
	if ((fv->tcp_flags_seen & flags) != flags)
		fv->tcp_flags_seen |= flags;
	fv->last_seen_ns = bpf_ktime_get_ns();
	__sync_fetch_and_add(&fv->packets, 1);
	__sync_fetch_and_add(&fv->bytes, pi->l3_len);
}

/* Decide what to do with a frame; fills *reason for PASS/DROP and
 * *participant for FORWARD. */
static __always_inline int main_classify(void *data, void *data_end, __u64 pkt_len,
					 struct packet_info *pi, __be32 *participant,
					 __u32 *reason)
{
	struct flow_value *fv;

	switch (parse_client_segment(data, data_end, pkt_len, pi)) {
	case PARSE_OK:
		break;
	case PARSE_ICMP:
		/* Not a client segment: nothing to observe. Only a forwarded
		 * flow's participant can use it; otherwise the kernel may. */
		fv = bpf_map_lookup_elem(&baton_flows, &pi->key);
		if (fv && fv->state == FLOW_FORWARD && fv->participant_addr != 0) {
			main_count(MAIN_ICMP_TO_PARTICIPANT);
			*participant = fv->participant_addr;
			return MAIN_ACT_FORWARD;
		}
		*reason = MAIN_PASS_NOT_TCP;
		return MAIN_ACT_PASS;
	case PARSE_NOT_IPV4:
		*reason = MAIN_PASS_NOT_IPV4;
		return MAIN_ACT_PASS;
	case PARSE_FRAGMENT:
		*reason = MAIN_PASS_FRAGMENT;
		return MAIN_ACT_PASS;
	case PARSE_NOT_TCP:
		*reason = MAIN_PASS_NOT_TCP;
		return MAIN_ACT_PASS;
	default:
		*reason = MAIN_PASS_MALFORMED;
		return MAIN_ACT_PASS;
	}

	fv = bpf_map_lookup_elem(&baton_flows, &pi->key);
	if (!fv) {
		*reason = MAIN_PASS_NO_FLOW;
		return MAIN_ACT_PASS;
	}
	/* A new connection from the port of a connection that has ended here (the client sent
	 * FIN or RST): the entry is stale. Forwarding the SYN would have the participant refuse
	 * a connection it never had, so the entry goes and the kernel accepts the SYN. A SYN on
	 * a live flow is still forwarded: the participant's stack answers it as TCP requires. */
	if ((pi->tcp_flags & (TCPF_BYTE_SYN | TCPF_BYTE_ACK)) == TCPF_BYTE_SYN &&
	    (fv->tcp_flags_seen & (TCPF_BYTE_FIN | TCPF_BYTE_RST))) {
		bpf_map_delete_elem(&baton_flows, &pi->key);
		*reason = MAIN_PASS_STALE_SYN;
		return MAIN_ACT_PASS;
	}
	flow_observe(fv, pi);

	if (fv->state == FLOW_FROZEN) {
		*reason = MAIN_DROP_FROZEN;
		return MAIN_ACT_DROP;
	}
	if (fv->state == FLOW_FORWARD && fv->participant_addr != 0) {
		*participant = fv->participant_addr;
		return MAIN_ACT_FORWARD;
	}
	*reason = MAIN_DROP_BAD_STATE;
	return MAIN_ACT_DROP;
}

static __always_inline struct main_config *main_config(void)
{
	__u32 key = 0;
	struct main_config *cfg = bpf_map_lookup_elem(&baton_main_cfg, &key);

	if (!cfg || cfg->local_addr == 0)
		return NULL;
	return cfg;
}

static __always_inline void fib_prepare(struct bpf_fib_lookup *fib, __be32 src, __be32 dst,
					__u8 tos, __u8 proto, __u16 tot_len, __u32 ifindex)
{
	fib->family = AF_INET;
	fib->tos = tos;
	fib->l4_protocol = proto;
	fib->tot_len = tot_len;
	fib->ipv4_src = src;
	fib->ipv4_dst = dst;
	fib->ifindex = ifindex;
}

/* Encapsulate first, then route: when routing fails the packet has already
 * been rewritten, which is what BPF_PROG_TEST_RUN shows. */
static __always_inline int main_forward_tc(struct __sk_buff *skb, const struct packet_info *pi,
					   __be32 participant)
{
	struct main_config *cfg = main_config();
	struct outer_headers outer = {};
	struct bpf_fib_lookup fib = {};
	__u8 macs[2 * ETH_ALEN];
	__u32 encap;
	int rc;

	if (!cfg) {
		main_count(MAIN_DROP_ENCAP_FAILED);
		return TC_ACT_SHOT;
	}
	encap = cfg->encap;
	if (!build_outer_headers(cfg->local_addr, encap, cfg->gue_port, pi, participant, &outer) ||
	    tc_push_outer(skb, &outer, encap)) {
		main_count(MAIN_DROP_ENCAP_FAILED);
		return TC_ACT_SHOT;
	}

	/* tot_len 0: the kernel checks the MTU against the skb itself, which
	 * is right for GSO packets too. */
	/* A forwarding lookup: the kernel refuses it (FWD_DISABLED) unless IPv4 forwarding is
	 * on for the ingress interface, whatever the lookup flags, so baton-main requires it. */
	fib_prepare(&fib, outer.ip.saddr, participant, outer.ip.tos, outer.ip.protocol, 0,
		    skb->ifindex);
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		__builtin_memcpy(macs, fib.dmac, ETH_ALEN);
		__builtin_memcpy(macs + ETH_ALEN, fib.smac, ETH_ALEN);
		if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0)) {
			main_count(MAIN_DROP_ENCAP_FAILED);
			return TC_ACT_SHOT;
		}
		main_count(MAIN_FORWARD_OK);
		return bpf_redirect(fib.ifindex, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		main_count(MAIN_FORWARD_NEIGH);
		return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
	}
	main_count(rc == BPF_FIB_LKUP_RET_FRAG_NEEDED ? MAIN_DROP_FRAG_NEEDED : MAIN_DROP_FIB_FAILED);
	return TC_ACT_SHOT;
}

static __always_inline int main_forward_xdp(struct xdp_md *ctx, const struct packet_info *pi,
					    __be32 participant)
{
	struct main_config *cfg = main_config();
	struct outer_headers outer = {};
	struct bpf_fib_lookup fib = {};
	struct ethhdr *eth;
	void *data_end;
	__u32 encap, hdr_len;
	int rc;

	if (!cfg) {
		main_count(MAIN_DROP_ENCAP_FAILED);
		return XDP_DROP;
	}
	encap = cfg->encap;
	hdr_len = build_outer_headers(cfg->local_addr, encap, cfg->gue_port, pi, participant, &outer);
	if (!hdr_len || xdp_push_outer(ctx, &outer, encap)) {
		main_count(MAIN_DROP_ENCAP_FAILED);
		return XDP_DROP;
	}

	fib_prepare(&fib, outer.ip.saddr, participant, outer.ip.tos, outer.ip.protocol,
		    pi->l3_len + hdr_len, ctx->ingress_ifindex);
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
			main_count(MAIN_DROP_NO_NEIGH);
		else if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
			main_count(MAIN_DROP_FRAG_NEEDED);
		else
			main_count(MAIN_DROP_FIB_FAILED);
		return XDP_DROP;
	}

	eth = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if ((void *)(eth + 1) > data_end) {
		main_count(MAIN_DROP_ENCAP_FAILED);
		return XDP_DROP;
	}
	eth_set_macs(eth, &fib);
	main_count(MAIN_FORWARD_OK);
	if (fib.ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(fib.ifindex, 0);
}

/* "classifier", not "tc": aya 0.13 only knows the older section name. */
SEC("classifier")
int baton_main_tc(struct __sk_buff *skb)
{
	struct packet_info pi = {};
	__be32 participant = 0;
	__u32 reason = MAIN_PASS_MALFORMED;
	int action;

	tc_pull_headers(skb);
	action = main_classify((void *)(long)skb->data, (void *)(long)skb->data_end, skb->len, &pi,
			       &participant, &reason);
	if (action == MAIN_ACT_FORWARD)
		return main_forward_tc(skb, &pi, participant);
	main_count(reason);
	return action == MAIN_ACT_DROP ? TC_ACT_SHOT : TC_ACT_OK;
}

SEC("xdp")
int baton_main_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct packet_info pi = {};
	__be32 participant = 0;
	__u32 reason = MAIN_PASS_MALFORMED;
	int action;

	action = main_classify(data, data_end, data_end - data, &pi, &participant, &reason);
	if (action == MAIN_ACT_FORWARD)
		return main_forward_xdp(ctx, &pi, participant);
	main_count(reason);
	return action == MAIN_ACT_DROP ? XDP_DROP : XDP_PASS;
}
