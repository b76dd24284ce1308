/* SPDX-License-Identifier: MIT OR GPL-2.0 */
/*
 * Maps of the participant programs (participant.bpf.c): the ingress
 * decapsulation and the egress guard.
 */
#ifndef BATON_PARTICIPANT_MAPS_H
#define BATON_PARTICIPANT_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "baton_consts.h"
#include "baton_structs.h"

/* Single-entry configuration (the main's address, encapsulation kind).
 * Not pinned: the loader writes it each time it loads the program. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct participant_config);
	__uint(max_entries, 1);
} baton_part_cfg SEC(".maps");

/* Per-CPU packet counters indexed by enum part_counter; userspace sums the
 * CPUs. Pinned by name so counters survive a restart. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, PART_COUNTER_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} baton_part_stats SEC(".maps");

/* Egress guard: connections restored here whose end only the main may decide.
 * Keyed like the main's flow map (client, VIP, client port, VIP port: the
 * egress packet's destination, source, destination port, source port), value
 * GUARD_OWNED, GUARD_CLOSING or GUARD_FROZEN. Written by baton-participant,
 * read by baton_guard_tc (egress) and by the ingress programs (FROZEN). Pinned by name so the guard keeps protecting the
 * connections after the participant process dies: that is when it matters. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct flow_key);
	__type(value, __u32);
	__uint(max_entries, GUARD_MAP_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} baton_guard SEC(".maps");

static __always_inline void part_count(__u32 reason)
{
	__u64 *value = bpf_map_lookup_elem(&baton_part_stats, &reason);

	if (value)
		*value += 1;
}

#endif /* BATON_PARTICIPANT_MAPS_H */
