/* SPDX-License-Identifier: MIT OR GPL-2.0 */
/*
 * Constants shared by Baton's data-plane programs.
 *
 * Every value that the Rust loader also knows (map sizes, flow states,
 * encapsulation kinds, counter indexes) is mirrored in ebpf/src/types.rs and
 * the two must change together. Nothing in this file allocates or touches
 * packets.
 */
#ifndef BATON_CONSTS_H
#define BATON_CONSTS_H

/* Flow map capacity: one entry per handed-off connection. 64k concurrent
 * handed-off downloads per main is well beyond one host's egress, and the map
 * costs about 64k * (12 + 48 + overhead) bytes, a few MiB. */
#define FLOW_MAP_MAX_ENTRIES 65536

/* Flow states written by userspace into flow_value.state. */
#define FLOW_FROZEN 1  /* connection is being moved: drop client packets */
#define FLOW_FORWARD 2 /* connection lives on a participant: encapsulate */

/* Attempts of the compare-and-swap that moves a flow's forward-only
 * observations. A failed attempt means another CPU stored a newer value for
 * the same flow at that instant; the next attempt compares against it. Two
 * CPUs rarely see one flow at once (RSS keeps a flow on one queue), so a few
 * attempts always suffice in practice; when they run out the newer value
 * another CPU wrote stands, and the client's next segment repeats ours. */
#define OBSERVE_CAS_TRIES 4

/* Egress guard map capacity: one entry per connection restored on this
 * participant. A participant serves far fewer connections than a main hands
 * off, so the main's flow map size is an upper bound. */
#define GUARD_MAP_MAX_ENTRIES 65536

/* Guard states written by the participant into baton_guard. Any other value
 * is treated like GUARD_OWNED: the guard fails closed. */
#define GUARD_OWNED 1	/* the main decides this connection's fate: no FIN/RST, no orphan */
#define GUARD_CLOSING 2 /* the participant ends the connection itself: pass everything */
#define GUARD_FROZEN 3	/* as OWNED, and the client's segments are dropped on ingress: the
			 * socket is being dumped for a move and must not change under it */

/* Encapsulation kinds written by userspace into the config maps. */
#define ENCAP_IPIP 0 /* outer IPv4, protocol 4 */
#define ENCAP_GUE 1  /* outer IPv4 + UDP, payload is the inner IPv4 packet
		      * directly (GUE "variant 1", draft-ietf-intarea-gue:
		      * the first nibble 4 of the inner header marks it) */

/* TTL of the outer header: the participant may be several routed hops away. */
#define OUTER_TTL 64

/* Lengths of the outer headers the main prepends. */
#define OUTER_IPIP_LEN 20 /* struct iphdr without options */
#define OUTER_GUE_LEN 28  /* struct iphdr + struct udphdr */

/* GUE UDP source ports are drawn from the IANA dynamic range so that routers
 * spreading traffic by 5-tuple (ECMP) see per-flow entropy: the port is
 * GUE_SPORT_BASE | (hash(flow) & GUE_SPORT_MASK). */
#define GUE_SPORT_BASE 0xc000
#define GUE_SPORT_MASK 0x3fff

/* The TCP options area is at most 40 bytes (doff 15 * 4 - 20); the option
 * walk never looks further and never iterates more often than this. */
#define TCP_OPT_MAX_LEN 40

/* Longest Ethernet + IPv4 + TCP header run we need in the linear part of an
 * skb: 14 + 60 (IPv4 with options) + 60 (TCP with options). */
#define MAX_HEADERS_LEN (14 + 60 + 60)

#define IPV4_MIN_IHL 5 /* 20-byte header */
#define TCP_MIN_DOFF 5 /* 20-byte header */

/* IPv4 frag_off bits (host order). */
#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFSET_MASK 0x1fff

/* TCP flag bits within byte 13 of the TCP header. */
#define TCPF_BYTE_FIN 0x01
#define TCPF_BYTE_SYN 0x02
#define TCPF_BYTE_RST 0x04
#define TCPF_BYTE_ACK 0x10

/* TCP option kinds and the timestamp option's length (RFC 7323). */
#define TCPOPT_EOL 0
#define TCPOPT_NOP 1
#define TCPOPT_TIMESTAMP 8
#define TCPOLEN_TIMESTAMP 10

#ifndef AF_INET
#define AF_INET 2
#endif

/* struct bpf_sock.type of a TCP socket (SOCK_STREAM in linux/net.h, which
 * BPF programs cannot include). */
#define BATON_SOCK_STREAM 1

/* linux/bpf.h in Debian 12 (6.1 headers) predates this flag (kernel 6.3):
 * it tells bpf_skb_adjust_room that an outer IPv4 header is being removed,
 * so the kernel clears the skb's tunnel/GSO encapsulation marks. */
#define BATON_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)

/* Reasons counted by the main program (index into baton_main_stats).
 * Mirrored by MainCounter in ebpf/src/types.rs, same order. */
enum main_counter {
	MAIN_PASS_NOT_IPV4 = 0,	 /* not Ethernet + IPv4 */
	MAIN_PASS_NOT_TCP,	 /* IPv4 but not TCP */
	MAIN_PASS_FRAGMENT,	 /* IPv4 fragment (MF set or offset != 0) */
	MAIN_PASS_MALFORMED,	 /* truncated or inconsistent headers */
	MAIN_PASS_NO_FLOW,	 /* TCP, but not a handed-off flow */
	MAIN_DROP_FROZEN,	 /* flow is being moved */
	MAIN_FORWARD_OK,	 /* encapsulated and redirected (or XDP_TX) */
	MAIN_FORWARD_NEIGH,	 /* encapsulated, handed to bpf_redirect_neigh */
	MAIN_DROP_ENCAP_FAILED,	 /* no config or the kernel refused the room */
	MAIN_DROP_FIB_FAILED,	 /* no route to the participant */
	MAIN_DROP_FRAG_NEEDED,	 /* encapsulated packet exceeds the route MTU */
	MAIN_DROP_NO_NEIGH,	 /* XDP: next hop not resolved yet */
	MAIN_DROP_BAD_STATE,	 /* flow entry with an unknown state */
	MAIN_ICMP_TO_PARTICIPANT, /* ICMP unreachable about a forwarded flow,
				   * sent to its participant (counted in
				   * addition to the forwarding outcome) */
	MAIN_PASS_STALE_SYN,	 /* SYN on the entry of a connection that has ended:
				  * entry deleted, SYN passed to the kernel */
	MAIN_COUNTER_MAX,
};

/* Reasons counted by the participant program (index into baton_part_stats).
 * Mirrored by ParticipantCounter in ebpf/src/types.rs, same order. */
enum part_counter {
	PART_PASS_NOT_IPV4 = 0,	 /* not Ethernet + IPv4 */
	PART_PASS_MALFORMED,	 /* outer IPv4 header broken: the kernel decides */
	PART_PASS_NOT_ENCAP,	 /* not IPIP and not UDP to the GUE port */
	PART_DECAP_OK,		 /* decapsulated, inner packet goes up the stack */
	PART_DROP_BAD_SOURCE,	 /* encapsulated, but not from our main */
	PART_DROP_MALFORMED,	 /* encapsulated from our main, inner broken */
	PART_DROP_FRAGMENT,	 /* encapsulated from our main, outer fragmented */
	PART_DROP_DECAP_FAILED,	 /* the kernel refused to remove the header */
	PART_DROP_NO_SOCKET,	 /* TCP segment for a connection not (yet) restored here */
	/* Egress guard (baton_guard_tc). Packets of flows not in baton_guard
	 * are not counted: they are every other packet the host sends. */
	PART_GUARD_PASS_OWNED,	 /* owned flow, packet allowed */
	PART_GUARD_PASS_CLOSING, /* flow the participant is closing: passed as is */
	PART_GUARD_DROP_FIN,	 /* owned flow, FIN (without RST) dropped */
	PART_GUARD_DROP_RST,	 /* owned flow, RST dropped */
	PART_GUARD_DROP_ORPHAN,	 /* owned flow, sent by a TCP socket past ESTABLISHED/CLOSE_WAIT */
	PART_DROP_FROZEN,	 /* ingress: decapsulated segment of a flow frozen for a move */
	PART_COUNTER_MAX,
};

/* participant_config.flags: drop encapsulated TCP segments that have no local socket, instead
 * of letting the kernel answer them with a reset from the VIP. The main forwards a flow before
 * the participant has restored it, so its first segments may arrive early. */
#define PART_CFG_REQUIRE_SOCKET 0x0001

#endif /* BATON_CONSTS_H */
