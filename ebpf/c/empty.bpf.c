/* SPDX-License-Identifier: MIT OR GPL-2.0 */
/*
 * Programs that do nothing, for the benchmarks only (`cargo xtask bench bpf`):
 *
 * - baton_empty_tc and baton_empty_xdp pass every packet untouched. Run with
 *   BPF_PROG_TEST_RUN next to the main program, they are the floor: what the
 *   hook itself costs, so the main program's own cost is the difference.
 * - baton_sink_xdp drops every packet. The forwarding benchmark's sink
 *   namespace runs it on its interface, so forwarded frames are counted by
 *   the interface (rx_packets) without a network stack spending CPU on them.
 *
 * Nothing here is ever attached by baton-main or baton-participant.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* "classifier", not "tc": aya 0.13 only knows the older section name. */
SEC("classifier")
int baton_empty_tc(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

SEC("xdp")
int baton_empty_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp")
int baton_sink_xdp(struct xdp_md *ctx)
{
	return XDP_DROP;
}
