/* SPDX-License-Identifier: MIT OR GPL-2.0 */
/*
 * Internet checksum helpers (RFC 1071) for headers the programs build.
 * They only ever checksum memory the caller owns (a stack copy of a header);
 * they never read packet memory.
 */
#ifndef BATON_CSUM_HELPERS_H
#define BATON_CSUM_HELPERS_H

#include <linux/ip.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

/* Fold a 32+ bit one's-complement sum into 16 bits and complement it. */
static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Set iph->check for a 20-byte IPv4 header (no options). */
static __always_inline void ipv4_set_csum(struct iphdr *iph)
{
	__u16 *words = (__u16 *)iph;
	__u64 sum = 0;
	int i;

	iph->check = 0;
#pragma unroll
	for (i = 0; i < (int)(sizeof(*iph) / 2); i++)
		sum += words[i];
	iph->check = csum_fold(sum);
}

#endif /* BATON_CSUM_HELPERS_H */
