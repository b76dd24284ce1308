/* SPDX-License-Identifier: MIT OR GPL-2.0 */
/*
 * Structures shared between the BPF programs and userspace.
 *
 * Map keys and values here are mirrored byte for byte by #[repr(C)] types in
 * ebpf/src/types.rs, which asserts their sizes at compile time. Every padding
 * byte is an explicit field, so userspace never writes uninitialised bytes.
 */
#ifndef BATON_STRUCTS_H
#define BATON_STRUCTS_H

#include <linux/types.h>

/* A client connection to the VIP, as seen in the client's packets
 * (source = client, destination = VIP). All fields in network byte order. */
struct flow_key {
	__be32 client_addr;
	__be32 vip_addr;
	__be16 client_port;
	__be16 vip_port;
};

/* Per-flow state. Userspace sets state/participant_addr (and may seed the
 * observations, see MainDataplane::freeze_seeded); the main program keeps the
 * observation fields current for every client packet it sees.
 *
 * The observations are what a new owner needs to rebuild the connection when
 * a participant dies, so the sequence-space ones only ever move forward (TCP
 * modular comparison, RFC 793 / RFC 1982): a reordered or duplicated old
 * segment never takes them back.
 *
 * last_ack and ack_wraps are adjacent and 8-byte aligned: the program moves
 * them together with one 64-bit compare-and-swap, so nobody ever reads a new
 * ACK with an old wrap count. */
struct flow_value {
	__u32 state;		 /* FLOW_FROZEN or FLOW_FORWARD */
	__be32 participant_addr; /* outer destination when FORWARD */
	__u32 last_ack;		 /* host order: highest ACK seen (valid when has_ack) */
	__u32 ack_wraps;	 /* times the accepted ACK wrapped past 2^32 */
	__u32 last_tsecr;	 /* host order: highest TSecr of an ACK segment not behind last_ack */
	__u32 client_next_seq;	 /* host order: highest seq + payload (+1 SYN, +1 FIN) seen */
	__u16 last_window;	 /* host order: raw (unscaled) window of the latest ACK segment
				  * whose ACK was not behind last_ack */
	__u8 tcp_flags_seen;	 /* OR of FIN (0x01) and RST (0x04) seen from the client */
	__u8 has_tsecr;		 /* 1 once last_tsecr is valid */
	__u8 has_ack;		 /* 1 once last_ack/last_window are valid (seeded or seen) */
	__u8 has_next_seq;	 /* 1 once client_next_seq is valid (seeded or seen) */
	__u16 pad;		 /* explicit padding, always 0 */
	__u64 last_seen_ns;	 /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the latest packet */
	__u64 packets;		 /* packets seen for this flow */
	__u64 bytes;		 /* bytes seen (IPv4 total length) */
};

/* Configuration of the main program, written by userspace on each load. */
struct main_config {
	__be32 local_addr; /* outer source address; 0 = not configured */
	__u32 encap;	   /* ENCAP_IPIP or ENCAP_GUE */
	__be16 gue_port;   /* GUE destination port (network order) */
	__u16 pad;
};

/* Configuration of the participant program, written by userspace on each load. */
struct participant_config {
	__be32 main_addr; /* only encapsulated packets from this source are accepted */
	__u32 encap;	  /* ENCAP_IPIP or ENCAP_GUE */
	__be16 gue_port;  /* GUE destination port (network order) */
	__u16 flags;	  /* PART_CFG_* */
};

_Static_assert(sizeof(struct flow_key) == 12, "flow_key layout");
_Static_assert(sizeof(struct flow_value) == 56, "flow_value layout");
_Static_assert(__builtin_offsetof(struct flow_value, last_ack) == 8, "ack pair 8-byte aligned");
_Static_assert(__builtin_offsetof(struct flow_value, ack_wraps) == 12, "ack pair adjacent");
_Static_assert(__builtin_offsetof(struct flow_value, last_seen_ns) == 32, "flow_value layout");
_Static_assert(sizeof(struct main_config) == 12, "main_config layout");
_Static_assert(sizeof(struct participant_config) == 12, "participant_config layout");

#endif /* BATON_STRUCTS_H */
