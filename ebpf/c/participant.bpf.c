/* SPDX-License-Identifier: MIT OR GPL-2.0 */
/*
 * Participant programs.
 *
 * Ingress (baton_participant_tc, baton_participant_xdp): removes the outer header the main added and
 * lets the client's original segment go up the stack, where its destination
 * (the VIP, held on lo) reaches the restored socket.
 *
 * Only encapsulated packets whose outer source is this participant's main are
 * accepted; other encapsulated packets are dropped and counted, so nobody
 * else can inject segments into handed-off connections. Segments of a flow the
 * participant froze in baton_guard (GUARD_FROZEN: its socket is being dumped
 * for a move) are dropped too; the client retransmits them to the next owner. IPIP is always
 * recognised; UDP to the GUE port only when GUE is configured. Everything
 * that is not encapsulated passes untouched.
 *
 * Entry points: baton_participant_tc (tc/tcx ingress) and
 * baton_participant_xdp (XDP), same logic.
 *
 * Egress (baton_guard_tc, tcx egress of the interface toward clients): the
 * "fail silent" guard. When baton-participant dies (kill -9, OOM, a crash)
 * the kernel closes its restored sockets: with unread data it sends a RST,
 * otherwise a FIN, and the orphaned socket (FIN_WAIT1, LAST_ACK, ...) keeps
 * retransmitting its queued data -- all from the VIP straight to the client.
 * Any of that ends or corrupts a connection the main is about to move to
 * another participant. So for a flow in baton_guard that is not CLOSING
 * (OWNED, FROZEN, or a value it does not know) the guard drops segments carrying RST or FIN, and segments sent by a TCP socket
 * in any state but ESTABLISHED or CLOSE_WAIT. Everything else passes
 * untouched. The guard stays attached (pinned link) and its map stays pinned
 * after the process is gone, which is the point.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "baton_consts.h"
#include "baton_structs.h"
#include "encap_helpers.h"
#include "participant_maps.h"
#include "pckt_parsing.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

enum part_action {
	PART_ACT_PASS,
	PART_ACT_DROP,
	PART_ACT_DECAP,
};

/* Whether the inner TCP segment of an encapsulated packet has a local socket (established,
 * time-wait or listening). Non-TCP packets, non-first fragments and segments whose TCP header
 * is not in the linear data are not judged here. */
static __always_inline int inner_has_socket(void *ctx, struct iphdr *inner, void *data_end)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *sk;
	struct tcphdr *tcp;
	__u32 ihl_len;

	if ((void *)(inner + 1) > data_end || inner->protocol != IPPROTO_TCP ||
	    ipv4_is_fragment(inner))
		return 1;
	ihl_len = (inner->ihl & 0x0f) * 4;
	tcp = (void *)inner + ihl_len;
	if ((void *)(tcp + 1) > data_end)
		return 1;
	tuple.ipv4.saddr = inner->saddr;
	tuple.ipv4.daddr = inner->daddr;
	tuple.ipv4.sport = tcp->source;
	tuple.ipv4.dport = tcp->dest;
	sk = bpf_skc_lookup_tcp(ctx, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/* Decide what to do with a frame. For DECAP, *outer_len is the number of
 * bytes after the Ethernet header to remove; otherwise *reason is set. */
/* Whether the inner TCP segment belongs to a connection frozen here for a
 * move (baton_guard: GUARD_FROZEN). Fragments and segments whose TCP header
 * is not in the linear data are not judged. */
static __always_inline int inner_is_frozen(struct iphdr *inner, void *data_end)
{
	struct flow_key key = {};
	struct tcphdr *tcp;
	__u32 *state;

	if ((void *)(inner + 1) > data_end || inner->protocol != IPPROTO_TCP ||
	    ipv4_is_fragment(inner))
		return 0;
	tcp = (void *)inner + (inner->ihl & 0x0f) * 4;
	if ((void *)(tcp + 1) > data_end)
		return 0;
	key.client_addr = inner->saddr;
	key.vip_addr = inner->daddr;
	key.client_port = tcp->source;
	key.vip_port = tcp->dest;
	state = bpf_map_lookup_elem(&baton_guard, &key);
	return state && *state == GUARD_FROZEN;
}

static __always_inline int part_classify(void *ctx, void *data, void *data_end, __u64 pkt_len,
					 __u32 *outer_len, __u32 *reason)
{
	__u32 key = 0, ihl_len, hdr_len;
	struct participant_config *cfg;
	struct iphdr *iph;
	struct udphdr *udp;
	int ret;

	ret = parse_eth_ipv4(data, data_end, pkt_len, &iph, &ihl_len);
	if (ret == PARSE_NOT_IPV4) {
		*reason = PART_PASS_NOT_IPV4;
		return PART_ACT_PASS;
	}
	if (ret != PARSE_OK) {
		*reason = PART_PASS_MALFORMED;
		return PART_ACT_PASS;
	}
	cfg = bpf_map_lookup_elem(&baton_part_cfg, &key);
	if (!cfg) {
		*reason = PART_PASS_NOT_ENCAP;
		return PART_ACT_PASS;
	}

	if (iph->protocol == IPPROTO_IPIP) {
		hdr_len = ihl_len;
	} else if (iph->protocol == IPPROTO_UDP && cfg->encap == ENCAP_GUE &&
		   !(iph->frag_off & bpf_htons(IP_OFFSET_MASK))) {
		udp = (void *)iph + ihl_len;
		/* The UDP header must be inside the packet (its total length), not only the
		 * frame: bytes after it are Ethernet padding and must not decide. */
		if ((void *)(udp + 1) > data_end ||
		    ihl_len + sizeof(*udp) > (__u32)bpf_ntohs(iph->tot_len)) {
			*reason = PART_PASS_MALFORMED;
			return PART_ACT_PASS;
		}
		if (udp->dest != cfg->gue_port) {
			*reason = PART_PASS_NOT_ENCAP;
			return PART_ACT_PASS;
		}
		hdr_len = ihl_len + sizeof(struct udphdr);
	} else {
		*reason = PART_PASS_NOT_ENCAP;
		return PART_ACT_PASS;
	}

	if (iph->saddr != cfg->main_addr) {
		*reason = PART_DROP_BAD_SOURCE;
		return PART_ACT_DROP;
	}
	if (ipv4_is_fragment(iph)) {
		*reason = PART_DROP_FRAGMENT;
		return PART_ACT_DROP;
	}
	if (inner_ipv4_valid(iph, hdr_len, data_end)) {
		*reason = PART_DROP_MALFORMED;
		return PART_ACT_DROP;
	}
	if (inner_is_frozen((void *)iph + hdr_len, data_end)) {
		*reason = PART_DROP_FROZEN;
		return PART_ACT_DROP;
	}
	if ((cfg->flags & PART_CFG_REQUIRE_SOCKET) &&
	    !inner_has_socket(ctx, (void *)iph + hdr_len, data_end)) {
		*reason = PART_DROP_NO_SOCKET;
		return PART_ACT_DROP;
	}
	*outer_len = hdr_len;
	return PART_ACT_DECAP;
}

/* "classifier", not "tc": aya 0.13 only knows the older section name. */
SEC("classifier")
int baton_participant_tc(struct __sk_buff *skb)
{
	__u32 reason = PART_PASS_MALFORMED, outer_len = 0;
	__s32 diff;
	int action;

	action = part_classify(skb, (void *)(long)skb->data, (void *)(long)skb->data_end, skb->len,
			       &outer_len, &reason);
	if (action != PART_ACT_DECAP) {
		part_count(reason);
		return action == PART_ACT_DROP ? TC_ACT_SHOT : TC_ACT_OK;
	}

	/* gso_size stays: removing the outer header does not change the
	 * payload carried per segment. Kernels before 6.3 lack the decap
	 * flag; retry without it. */
	diff = -(__s32)outer_len;
	if (bpf_skb_adjust_room(skb, diff, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BATON_ADJ_ROOM_DECAP_L3_IPV4) &&
	    bpf_skb_adjust_room(skb, diff, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO)) {
		part_count(PART_DROP_DECAP_FAILED);
		return TC_ACT_SHOT;
	}
	part_count(PART_DECAP_OK);
	return TC_ACT_OK;
}

SEC("xdp")
int baton_participant_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 reason = PART_PASS_MALFORMED, outer_len = 0;
	int action;

	action = part_classify(ctx, data, data_end, data_end - data, &outer_len, &reason);
	if (action != PART_ACT_DECAP) {
		part_count(reason);
		return action == PART_ACT_DROP ? XDP_DROP : XDP_PASS;
	}

	/* Move the Ethernet header forward over the outer headers, then cut
	 * the head. outer_len >= 20 > ETH_HLEN: no overlap. */
	if (outer_len > 60 + sizeof(struct udphdr) ||
	    data + outer_len + sizeof(struct ethhdr) > data_end) {
		part_count(PART_DROP_DECAP_FAILED);
		return XDP_DROP;
	}
	__builtin_memcpy(data + outer_len, data, sizeof(struct ethhdr));
	if (bpf_xdp_adjust_head(ctx, (int)outer_len)) {
		part_count(PART_DROP_DECAP_FAILED);
		return XDP_DROP;
	}
	part_count(PART_DECAP_OK);
	return XDP_PASS;
}

/* The flow key (main orientation: client = destination, VIP = source) and
 * the TCP flags byte of an outgoing Ethernet + IPv4 + TCP packet. Returns 0
 * for anything else, and for non-first fragments (no TCP header). Unlike the
 * ingress parser it does not insist on tot_len matching the skb: a locally
 * built GSO packet is trusted to be what the stack made, and the guard only
 * needs ports and flags. */
static __always_inline int parse_egress_segment(void *data, void *data_end, struct flow_key *key,
						__u8 *tcp_flags)
{
	struct ethhdr *eth = data;
	struct iphdr *iph;
	struct tcphdr *tcp;
	__u32 ihl_len;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end || iph->version != 4 || iph->ihl < IPV4_MIN_IHL ||
	    iph->protocol != IPPROTO_TCP || (iph->frag_off & bpf_htons(IP_OFFSET_MASK)))
		return 0;
	ihl_len = iph->ihl * 4;
	tcp = (void *)iph + ihl_len;
	if ((void *)(tcp + 1) > data_end)
		return 0;
	key->client_addr = iph->daddr;
	key->vip_addr = iph->saddr;
	key->client_port = tcp->dest;
	key->vip_port = tcp->source;
	*tcp_flags = *((__u8 *)tcp + 13);
	return 1;
}

/* Whether the packet was sent by a full TCP socket that is past ESTABLISHED
 * and CLOSE_WAIT: after its process died the socket is an orphan (FIN_WAIT1,
 * LAST_ACK, CLOSING, ...) that must not talk to the client any more. Packets
 * with no socket, with a request or time-wait socket, or with a socket that
 * is not TCP (the kernel's reply socket; the placeholder of
 * BPF_PROG_TEST_RUN) are not judged here. */
static __always_inline int sent_by_orphan(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;

	if (!sk)
		return 0;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->type != BATON_SOCK_STREAM || sk->protocol != IPPROTO_TCP)
		return 0;
	return sk->state != BPF_TCP_ESTABLISHED && sk->state != BPF_TCP_CLOSE_WAIT;
}

/* "classifier", not "tc": aya 0.13 only knows the older section name. */
SEC("classifier")
int baton_guard_tc(struct __sk_buff *skb)
{
	struct flow_key key = {};
	__u8 tcp_flags = 0;
	__u32 *state;

	tc_pull_headers(skb);
	if (!parse_egress_segment((void *)(long)skb->data, (void *)(long)skb->data_end, &key,
				  &tcp_flags))
		return TC_ACT_OK;
	state = bpf_map_lookup_elem(&baton_guard, &key);
	if (!state)
		return TC_ACT_OK;
	if (*state == GUARD_CLOSING) {
		part_count(PART_GUARD_PASS_CLOSING);
		return TC_ACT_OK;
	}
	if (tcp_flags & TCPF_BYTE_RST) {
		part_count(PART_GUARD_DROP_RST);
		return TC_ACT_SHOT;
	}
	if (tcp_flags & TCPF_BYTE_FIN) {
		part_count(PART_GUARD_DROP_FIN);
		return TC_ACT_SHOT;
	}
	if (sent_by_orphan(skb)) {
		part_count(PART_GUARD_DROP_ORPHAN);
		return TC_ACT_SHOT;
	}
	part_count(PART_GUARD_PASS_OWNED);
	return TC_ACT_OK;
}
