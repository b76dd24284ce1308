/* SPDX-License-Identifier: MIT OR GPL-2.0 */
/*
 * Header parsing shared by the main and participant programs.
 *
 * Every read is preceded by a bounds check against data_end; lengths taken
 * from the packet (ihl, tot_len, doff, option lengths) are validated before
 * they are used as offsets. These helpers never write to the packet.
 */
#ifndef BATON_PCKT_PARSING_H
#define BATON_PCKT_PARSING_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "baton_consts.h"

/* The ICMP header (RFC 792), declared here rather than taken from <linux/icmp.h>: that header
 * pulls in glibc's <sys/socket.h>, whose stubs need a 32-bit libc when compiled for the BPF
 * target. */
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 rest; /* id+sequence, gateway, or unused+next-hop MTU */
};
#define ICMP_DEST_UNREACH 3
#include "baton_structs.h"

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_IPV4,	  /* EtherType is not IPv4 */
	PARSE_MALFORMED,  /* truncated or inconsistent header */
	PARSE_FRAGMENT,	  /* IPv4 fragment */
	PARSE_NOT_TCP,	  /* IPv4, protocol is not TCP */
	PARSE_ICMP,	  /* ICMP unreachable about a TCP segment the VIP sent */
};

/* What the main program needs from a client's TCP segment. */
struct packet_info {
	struct flow_key key;
	__u32 l3_len;	  /* IPv4 total length, host order */
	__u32 seq;	  /* host order */
	__u32 ack_seq;	  /* host order */
	__u32 payload_len; /* TCP payload bytes (tot_len - IPv4 and TCP headers) */
	__u32 tsecr;	  /* host order, valid when has_tsecr */
	__u16 window;	  /* host order, raw window field */
	__be16 ip_id;	  /* copied into the outer header */
	__be16 frag_off;  /* inner frag_off, for the DF bit */
	__u8 tos;	  /* copied into the outer header */
	__u8 tcp_flags;	  /* byte 13 of the TCP header */
	__u8 has_tsecr;
};

/*
 * Parse Ethernet + IPv4. pkt_len is the length of the whole frame (it may be
 * longer than data_end - data when an skb is not linear). On PARSE_OK,
 * *iph_out points at a complete IPv4 header (options included) and the
 * packet holds at least tot_len bytes of IPv4.
 */
static __always_inline int parse_eth_ipv4(void *data, void *data_end, __u64 pkt_len,
					  struct iphdr **iph_out, __u32 *ihl_len_out)
{
	struct ethhdr *eth = data;
	struct iphdr *iph;
	__u32 ihl_len, tot_len;

	if ((void *)(eth + 1) > data_end)
		return PARSE_MALFORMED;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4;

	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end)
		return PARSE_MALFORMED;
	if (iph->version != 4 || iph->ihl < IPV4_MIN_IHL)
		return PARSE_MALFORMED;
	ihl_len = iph->ihl * 4;
	if ((void *)iph + ihl_len > data_end)
		return PARSE_MALFORMED;

	tot_len = bpf_ntohs(iph->tot_len);
	if (tot_len < ihl_len || tot_len > pkt_len - sizeof(struct ethhdr))
		return PARSE_MALFORMED;

	*iph_out = iph;
	*ihl_len_out = ihl_len;
	return PARSE_OK;
}

/* Linearise the headers of a non-linear skb so direct packet access can see
 * them (a no-op for the usual, already linear, frame). Only the layout of the
 * skb changes, never its bytes. tc programs only. */
static __always_inline void tc_pull_headers(struct __sk_buff *skb)
{
	__u32 linear = skb->data_end - skb->data;
	__u32 want = skb->len < MAX_HEADERS_LEN ? skb->len : MAX_HEADERS_LEN;

	if (linear < want)
		bpf_skb_pull_data(skb, want);
}

static __always_inline int ipv4_is_fragment(const struct iphdr *iph)
{
	return (iph->frag_off & bpf_htons(IP_MF | IP_OFFSET_MASK)) != 0;
}

/*
 * Find the TSecr of a TCP timestamp option. opts points just after the
 * 20-byte TCP header and opt_len (<= TCP_OPT_MAX_LEN) bytes of options are
 * known to be inside the packet. Walks at most TCP_OPT_MAX_LEN bytes; stops at
 * EOL or at any malformed option, like the kernel's own parser.
 * Returns 1 and sets *tsecr (host order) when found.
 */
static __always_inline int parse_tcp_tsecr(void *opts, __u32 opt_len, void *data_end, __u32 *tsecr)
{
	__u32 off = 0;
	int i;

	for (i = 0; i < TCP_OPT_MAX_LEN; i++) {
		__u8 *p;
		__u8 kind, len;

		if (off >= opt_len || off >= TCP_OPT_MAX_LEN)
			break;
		p = opts + off;
		if ((void *)(p + 1) > data_end)
			break;
		kind = p[0];
		if (kind == TCPOPT_EOL)
			break;
		if (kind == TCPOPT_NOP) {
			off++;
			continue;
		}
		if (off + 2 > opt_len || (void *)(p + 2) > data_end)
			break;
		len = p[1];
		if (len < 2 || off + len > opt_len)
			break;
		if (kind == TCPOPT_TIMESTAMP) {
			if (len != TCPOLEN_TIMESTAMP || (void *)(p + TCPOLEN_TIMESTAMP) > data_end)
				break;
			*tsecr = ((__u32)p[6] << 24) | ((__u32)p[7] << 16) | ((__u32)p[8] << 8) |
				 (__u32)p[9];
			return 1;
		}
		off += len;
	}
	return 0;
}

/*
 * An ICMP destination-unreachable (e.g. "fragmentation needed") about a TCP
 * segment sent from the VIP (by a participant, with the VIP as source) to a
 * client. Fills pi->key with that connection's flow key (client -> VIP) and
 * the fields needed to encapsulate the ICMP packet itself. iph is a complete
 * IPv4 header of tot_len bytes, all inside the packet.
 * Returns PARSE_ICMP, or PARSE_NOT_TCP for any other or truncated ICMP.
 */
static __always_inline int parse_icmp_about_flow(struct iphdr *iph, __u32 ihl_len, __u32 tot_len,
						 void *data_end, struct packet_info *pi)
{
	struct icmphdr *icmp = (void *)iph + ihl_len;
	struct iphdr *orig;
	__u32 orig_ihl_len;
	__be16 *ports;

	if ((void *)(icmp + 1) > data_end || icmp->type != ICMP_DEST_UNREACH)
		return PARSE_NOT_TCP;
	orig = (void *)(icmp + 1);
	if ((void *)(orig + 1) > data_end)
		return PARSE_NOT_TCP;
	if (orig->version != 4 || orig->ihl < IPV4_MIN_IHL || orig->protocol != IPPROTO_TCP)
		return PARSE_NOT_TCP;
	orig_ihl_len = orig->ihl * 4;
	/* The quoted segment's ports: the first 4 bytes after its IPv4 header. */
	if (ihl_len + sizeof(*icmp) + orig_ihl_len + 4 > tot_len)
		return PARSE_NOT_TCP;
	ports = (void *)orig + orig_ihl_len;
	if ((void *)(ports + 2) > data_end)
		return PARSE_NOT_TCP;

	pi->key.client_addr = orig->daddr;
	pi->key.vip_addr = orig->saddr;
	pi->key.client_port = ports[1];
	pi->key.vip_port = ports[0];
	pi->l3_len = tot_len;
	pi->ip_id = iph->id;
	pi->frag_off = iph->frag_off;
	pi->tos = iph->tos;
	return PARSE_ICMP;
}

/*
 * Parse a client's TCP segment (Ethernet + IPv4 + TCP) into *pi, or an ICMP
 * unreachable about one of the VIP's segments (PARSE_ICMP).
 * Returns PARSE_OK, PARSE_ICMP or the reason the packet is neither.
 */
static __always_inline int parse_client_segment(void *data, void *data_end, __u64 pkt_len,
						struct packet_info *pi)
{
	struct iphdr *iph;
	struct tcphdr *tcp;
	__u32 ihl_len, tot_len, doff_len;
	__u8 *flags_byte;
	int ret;

	ret = parse_eth_ipv4(data, data_end, pkt_len, &iph, &ihl_len);
	if (ret != PARSE_OK)
		return ret;
	if (ipv4_is_fragment(iph))
		return PARSE_FRAGMENT;
	tot_len = bpf_ntohs(iph->tot_len);
	if (iph->protocol == IPPROTO_ICMP)
		return parse_icmp_about_flow(iph, ihl_len, tot_len, data_end, pi);
	if (iph->protocol != IPPROTO_TCP)
		return PARSE_NOT_TCP;

	tcp = (void *)iph + ihl_len;
	if ((void *)(tcp + 1) > data_end)
		return PARSE_MALFORMED;
	if (tcp->doff < TCP_MIN_DOFF)
		return PARSE_MALFORMED;
	doff_len = tcp->doff * 4;
	if (ihl_len + doff_len > tot_len)
		return PARSE_MALFORMED;
	if ((void *)tcp + doff_len > data_end)
		return PARSE_MALFORMED;

	pi->key.client_addr = iph->saddr;
	pi->key.vip_addr = iph->daddr;
	pi->key.client_port = tcp->source;
	pi->key.vip_port = tcp->dest;
	pi->l3_len = tot_len;
	pi->seq = bpf_ntohl(tcp->seq);
	pi->ack_seq = bpf_ntohl(tcp->ack_seq);
	pi->payload_len = tot_len - ihl_len - doff_len;
	pi->window = bpf_ntohs(tcp->window);
	pi->ip_id = iph->id;
	pi->frag_off = iph->frag_off;
	pi->tos = iph->tos;
	flags_byte = (__u8 *)tcp + 13;
	pi->tcp_flags = *flags_byte;
	pi->has_tsecr = parse_tcp_tsecr((void *)(tcp + 1), doff_len - sizeof(*tcp), data_end,
					&pi->tsecr);
	return PARSE_OK;
}

#endif /* BATON_PCKT_PARSING_H */
