/* SPDX-License-Identifier: MIT OR GPL-2.0 */
/*
 * Maps of the main ingress program (main.bpf.c).
 */
#ifndef BATON_MAIN_MAPS_H
#define BATON_MAIN_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "baton_consts.h"
#include "baton_structs.h"

/* Handed-off flows: client 4-tuple -> state, participant and what the program
 * last saw from the client. Written by baton-main (freeze/forward/remove),
 * updated in place by the program. Pinned by name so established flows
 * survive a restart of baton-main. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
	__uint(max_entries, FLOW_MAP_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} baton_flows SEC(".maps");

/* Single-entry configuration (outer source address, encapsulation kind).
 * Not pinned: the loader writes it each time it loads the program. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct main_config);
	__uint(max_entries, 1);
} baton_main_cfg SEC(".maps");

/* Per-CPU packet counters indexed by enum main_counter; userspace sums the
 * CPUs. Pinned by name so counters survive a restart. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, MAIN_COUNTER_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} baton_main_stats SEC(".maps");

static __always_inline void main_count(__u32 reason)
{
	__u64 *value = bpf_map_lookup_elem(&baton_main_stats, &reason);

	if (value)
		*value += 1;
}

#endif /* BATON_MAIN_MAPS_H */
