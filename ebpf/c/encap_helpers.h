/* SPDX-License-Identifier: MIT OR GPL-2.0 */
/*
 * Building and adding the outer headers the main puts in front of a client
 * segment, and removing them again on the participant.
 *
 * Encapsulations (chosen by the loader, one per deployment):
 *   IPIP: outer IPv4 (protocol 4) + inner IPv4 packet.
 *   GUE:  outer IPv4 + UDP (destination gue_port, checksum 0) + inner IPv4
 *         packet directly, with no GUE header: GUE "variant 1"
 *         (draft-ietf-intarea-gue), where the inner header's version nibble
 *         4 identifies the payload. This is the same framing as Linux
 *         "fou ... ipproto 4" and Katran's GUE.
 *
 * The outer header: version 4, ihl 5, TOS and IP id copied from the inner
 * header, DF copied from the inner header, TTL OUTER_TTL, valid checksum.
 * The inner packet is never modified.
 */
#ifndef BATON_ENCAP_HELPERS_H
#define BATON_ENCAP_HELPERS_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "baton_consts.h"
#include "baton_structs.h"
#include "csum_helpers.h"
#include "pckt_parsing.h"

/* The headers inserted between the Ethernet header and the inner packet. */
struct outer_headers {
	struct iphdr ip;
	struct udphdr udp; /* only with ENCAP_GUE */
};

_Static_assert(sizeof(struct outer_headers) == OUTER_GUE_LEN, "outer_headers layout");

/*
 * A 32-bit mix of the flow key, used for the GUE source port. It works on the
 * key's raw (network order) words as loaded on the host, so the same flow
 * always maps to the same port. Mirrored by FlowKey::gue_source_port().
 */
static __always_inline __u32 flow_hash(const struct flow_key *key)
{
	__u32 h = key->client_addr;

	h ^= (key->vip_addr << 13) | (key->vip_addr >> 19);
	h ^= ((__u32)key->client_port << 16) | (__u32)key->vip_port;
	h ^= h >> 16;
	h *= 0x7feb352d;
	h ^= h >> 15;
	h *= 0x846ca68b;
	h ^= h >> 16;
	return h;
}

/*
 * Fill *out for a segment described by *pi going to dst.
 * Returns the number of bytes to insert (OUTER_IPIP_LEN or OUTER_GUE_LEN),
 * or 0 when the result would not fit in an IPv4 total length.
 */
static __always_inline __u32 build_outer_headers(__be32 local_addr, __u32 encap, __be16 gue_port,
						 const struct packet_info *pi, __be32 dst,
						 struct outer_headers *out)
{
	__u32 hdr_len = encap == ENCAP_GUE ? OUTER_GUE_LEN : OUTER_IPIP_LEN;

	if (pi->l3_len > 0xffff - hdr_len)
		return 0;

	out->ip.version = 4;
	out->ip.ihl = IPV4_MIN_IHL;
	out->ip.tos = pi->tos;
	out->ip.tot_len = bpf_htons(pi->l3_len + hdr_len);
	out->ip.id = pi->ip_id;
	out->ip.frag_off = pi->frag_off & bpf_htons(IP_DF);
	out->ip.ttl = OUTER_TTL;
	out->ip.protocol = encap == ENCAP_GUE ? IPPROTO_UDP : IPPROTO_IPIP;
	out->ip.saddr = local_addr;
	out->ip.daddr = dst;
	ipv4_set_csum(&out->ip);

	if (encap == ENCAP_GUE) {
		out->udp.source =
			bpf_htons(GUE_SPORT_BASE | (flow_hash(&pi->key) & GUE_SPORT_MASK));
		out->udp.dest = gue_port;
		out->udp.len = bpf_htons(pi->l3_len + sizeof(struct udphdr));
		out->udp.check = 0; /* allowed for UDP over IPv4 */
	}
	return hdr_len;
}

/* tc: make room after the Ethernet header and write the outer headers. */
static __always_inline int tc_push_outer(struct __sk_buff *skb, const struct outer_headers *outer,
					 __u32 encap)
{
	if (encap == ENCAP_GUE) {
		if (bpf_skb_adjust_room(skb, OUTER_GUE_LEN, BPF_ADJ_ROOM_MAC,
					BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP))
			return -1;
		return bpf_skb_store_bytes(skb, sizeof(struct ethhdr), outer, OUTER_GUE_LEN, 0) ? -1 : 0;
	}
	if (bpf_skb_adjust_room(skb, OUTER_IPIP_LEN, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4))
		return -1;
	return bpf_skb_store_bytes(skb, sizeof(struct ethhdr), outer, OUTER_IPIP_LEN, 0) ? -1 : 0;
}

/* XDP: grow the head by len, move the Ethernet header to the new start and
 * write the outer headers behind it. len must be a compile-time constant. */
static __always_inline int xdp_push_outer_len(struct xdp_md *ctx, const struct outer_headers *outer,
					      const __u32 len)
{
	void *data, *data_end;

	if (bpf_xdp_adjust_head(ctx, -(int)len))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + len + sizeof(struct ethhdr) > data_end)
		return -1;
	/* len >= 20 > ETH_HLEN: source and destination do not overlap. */
	__builtin_memcpy(data, data + len, sizeof(struct ethhdr));
	__builtin_memcpy(data + sizeof(struct ethhdr), outer, len);
	return 0;
}

static __always_inline int xdp_push_outer(struct xdp_md *ctx, const struct outer_headers *outer,
					  __u32 encap)
{
	if (encap == ENCAP_GUE)
		return xdp_push_outer_len(ctx, outer, OUTER_GUE_LEN);
	return xdp_push_outer_len(ctx, outer, OUTER_IPIP_LEN);
}

/* Fill the Ethernet addresses from a successful FIB lookup. */
static __always_inline void eth_set_macs(struct ethhdr *eth, const struct bpf_fib_lookup *fib)
{
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
}

/*
 * Validate the encapsulated packet behind an outer header of outer_len bytes
 * (outer IPv4 [+ UDP]). outer_iph is the complete outer IPv4 header and the
 * packet holds its whole total length. Returns 0 when a complete inner IPv4
 * header is present and its total length fits in what the outer one carries.
 */
static __always_inline int inner_ipv4_valid(struct iphdr *outer_iph, __u32 outer_len,
					    void *data_end)
{
	struct iphdr *inner = (void *)outer_iph + outer_len;
	__u32 inner_ihl_len, inner_tot_len;

	if ((void *)(inner + 1) > data_end)
		return -1;
	if (inner->version != 4 || inner->ihl < IPV4_MIN_IHL)
		return -1;
	inner_ihl_len = inner->ihl * 4;
	if ((void *)inner + inner_ihl_len > data_end)
		return -1;
	inner_tot_len = bpf_ntohs(inner->tot_len);
	if (inner_tot_len < inner_ihl_len ||
	    inner_tot_len + outer_len > (__u32)bpf_ntohs(outer_iph->tot_len))
		return -1;
	return 0;
}

#endif /* BATON_ENCAP_HELPERS_H */
