//! Packet fixtures for the main program, run through BPF_PROG_TEST_RUN on the
//! really loaded and attached program (Katran `lib/testing` style): each
//! fixture is a description, an input frame, the flow-map setup, the expected
//! verdict, the expected output bytes, the one counter that must move, and
//! (for flows in the map) the observations the program must record.
//!
//! The table runs for tc and XDP, each with IPIP and GUE, in a fresh network
//! namespace with a small routed lab (see `common::lab`), so the FIB lookup
//! really succeeds, misses a neighbour, or finds no route. The same table runs
//! through the userspace data plane's rules (`baton_ebpf::userspace::packet`),
//! which must decide, count, encapsulate and observe exactly as the program
//! does; routing is the kernel's there, so every forwarded fixture must come
//! out as the packet to send.
//!
//! Truncation sweeps (`sweeps()`, cuts from `common::truncate`) turn every cut of a few frames
//! into fixtures of their own and run them the same three ways.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use aya::maps::{HashMap, MapData};
use baton_ebpf::{
    monotonic_now_ns, AttachMode, Encap, FlowKey, MainCounter, MainDataplane, MainOptions, Verdict,
};
use common::frames::{self, eth, hex, ipv4_checksum_ok, Tcp, CLIENT, GUE_PORT, VIP};
use common::truncate::{self, sweep, Cut};
use common::{lab, NetNs, PinDir};

/// How a fixture prepares the flow map (the map is emptied first).
#[derive(Clone, Copy, Debug)]
enum Setup {
    Frozen,
    Forward(Ipv4Addr),
    /// An entry with this raw state value (not one userspace writes).
    RawState(u32),
}

/// What must come out.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Passed up, bytes unchanged, this counter +1.
    Pass(MainCounter),
    /// Dropped, bytes unchanged, this counter +1.
    Drop(MainCounter),
    /// Encapsulated and sent: Ethernet rewritten from the FIB result.
    Forward {
        participant: Ipv4Addr,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        same_iface: bool,
    },
    /// Encapsulated; next hop not resolved: tc hands the packet to
    /// bpf_redirect_neigh (Ethernet untouched), XDP drops it.
    NoNeigh { participant: Ipv4Addr },
    /// Encapsulated, then dropped for want of a route.
    NoRoute { participant: Ipv4Addr },
    /// Encapsulated, then dropped: larger than the egress MTU.
    TooBig { participant: Ipv4Addr },
    /// An ICMP unreachable sent on to the participant on the ingress
    /// interface: as `Forward`, and the ICMP counter moves too.
    IcmpToParticipant,
}

/// The observations the flow entry must hold after the run.
#[derive(Clone, Copy, Debug, Default)]
struct Observed {
    /// 0: no valid ACK (`has_ack` false).
    last_ack: u32,
    next_seq: Option<u32>,
    last_window: u16,
    last_tsecr: Option<u32>,
    fin: bool,
    rst: bool,
    bytes: u64,
}

struct Fixture {
    description: String,
    frame: Vec<u8>,
    setup: Vec<(FlowKey, Setup)>,
    expect: Expect,
    observed: Option<Observed>,
}

fn key() -> FlowKey {
    FlowKey::new(CLIENT, VIP)
}

fn forward_to(p: Ipv4Addr) -> Vec<(FlowKey, Setup)> {
    vec![(key(), Setup::Forward(p))]
}

fn frozen() -> Vec<(FlowKey, Setup)> {
    vec![(key(), Setup::Frozen)]
}

fn same_iface() -> Expect {
    Expect::Forward {
        participant: lab::PARTICIPANT,
        src_mac: lab::LOCAL_MAC,
        dst_mac: lab::PARTICIPANT_MAC,
        same_iface: true,
    }
}

/// The default segment's observations.
fn default_observed(t: &Tcp) -> Observed {
    Observed {
        last_ack: 2_000_000,
        next_seq: Some(t.seq + t.payload.len() as u32 + u32::from(t.fin) + u32::from(t.syn)),
        last_window: 501,
        last_tsecr: Some(222_222),
        bytes: (t.frame().len() - 14) as u64,
        ..Observed::default()
    }
}

/// Returns `frame` with `f` applied.
fn mutate(mut frame: Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    f(&mut frame);
    frame
}

fn fixtures() -> Vec<Fixture> {
    let plain = Tcp::default();
    // Fits bt2's MTU by itself, not with the outer header.
    let just_fits = Tcp {
        payload: vec![1; usize::from(lab::BT2_MTU) - 52 - 28],
        ..Tcp::default()
    };
    let too_big = Tcp {
        payload: vec![1; usize::from(lab::BT2_MTU) - 52],
        ..Tcp::default()
    };
    let with_payload = Tcp {
        payload: b"GET /next HTTP/1.1\r\n\r\n".to_vec(),
        ..Tcp::default()
    };
    let ip_options = Tcp {
        ip_options: vec![1, 1, 1, 0],
        payload: b"data".to_vec(),
        ..Tcp::default()
    };
    let tos_no_df = Tcp {
        dscp: 10,
        ecn: 1,
        df: false,
        ip_id: 0xbeef,
        ..Tcp::default()
    };
    let fin = Tcp {
        fin: true,
        ack: Some(7_000),
        window: 0,
        timestamps: Some((5, 6)),
        ..Tcp::default()
    };
    let rst_no_ack = Tcp {
        rst: true,
        ack: None,
        timestamps: None,
        ..Tcp::default()
    };
    // NOP NOP SACK(2 blocks) NOP NOP TS(1, 0xdeadbeef)
    let mut sack_then_ts = vec![1, 1, 5, 18];
    sack_then_ts.extend_from_slice(&[0; 16]);
    sack_then_ts.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef]);
    let sack_then_ts = Tcp {
        raw_options: Some(sack_then_ts),
        ..Tcp::default()
    };
    let no_ts = Tcp {
        timestamps: None,
        ..Tcp::default()
    };
    // An option of length 0 or 1 stops the walk before the timestamps (with
    // length 1, stepping one byte would land on a NOP and then a valid TS).
    let zero_len_option = Tcp {
        raw_options: Some(vec![30, 0, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]),
        ..Tcp::default()
    };
    let one_len_option = Tcp {
        raw_options: Some(vec![30, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]),
        ..Tcp::default()
    };
    // EOL ends the options; the timestamp after it is not an option.
    let after_eol = Tcp {
        raw_options: Some(vec![0, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]),
        ..Tcp::default()
    };
    // A timestamp option that runs past the TCP header into the payload.
    let ts_past_header = Tcp {
        raw_options: Some(vec![1, 1, 1, 1, 1, 1, 1, 1, 8, 10, 0, 0]),
        payload: vec![0, 1, 0xaa, 0xbb, 0xcc, 0xdd],
        ..Tcp::default()
    };
    // A timestamp option with a wrong length is not a timestamp.
    let bad_ts_len = Tcp {
        raw_options: Some(vec![8, 8, 0, 0, 0, 1, 0, 0]),
        ..Tcp::default()
    };
    let other_port = Tcp {
        src: SocketAddrV4::new(*CLIENT.ip(), 40_001),
        ..Tcp::default()
    };
    let reverse = Tcp {
        src: VIP,
        dst: CLIENT,
        ..Tcp::default()
    };
    let more_fragments = Tcp {
        mf: true,
        ..Tcp::default()
    };
    // What a participant sends from the VIP, and ICMP errors about it.
    let router = Ipv4Addr::new(198, 18, 5, 1);
    let from_vip = Tcp {
        src: VIP,
        dst: CLIENT,
        payload: vec![7; 1400],
        ..Tcp::default()
    }
    .ipv4_packet();
    let from_vip_other = Tcp {
        src: VIP,
        dst: SocketAddrV4::new(*CLIENT.ip(), 40_001),
        ..Tcp::default()
    }
    .ipv4_packet();
    let from_vip_options = Tcp {
        src: VIP,
        dst: CLIENT,
        ip_options: vec![1, 1, 1, 0],
        ..Tcp::default()
    }
    .ipv4_packet();
    let frag_needed = frames::frag_needed_frame(router, &from_vip, 1280);
    let udp_from_vip = mutate(from_vip.clone(), |p| p[9] = 17);
    let time_exceeded = frames::icmp_frame(router, *VIP.ip(), 11, 0, [0; 4], &from_vip[..28]);
    // Ethernet padding keeps the missing port bytes inside the frame: only
    // the IPv4 total length tells they are not part of the message.
    let ports_cut = mutate(
        frames::icmp_frame(router, *VIP.ip(), 3, 4, [0, 0, 5, 0], &from_vip[..22]),
        |f| {
            f.extend_from_slice(&[0x9c, 0x40, 0x00, 0x50, 0, 0]);
        },
    );
    let offset_fragment = Tcp {
        frag_offset: 8,
        df: false,
        ..Tcp::default()
    };

    vec![
        Fixture {
            description: "forward flow, participant on the ingress interface".into(),
            frame: plain.frame(),
            setup: forward_to(lab::PARTICIPANT),
            expect: same_iface(),
            observed: Some(default_observed(&plain)),
        },
        Fixture {
            description: "forward flow, participant behind another interface".into(),
            frame: plain.frame(),
            setup: forward_to(lab::OTHER_PARTICIPANT),
            expect: Expect::Forward {
                participant: lab::OTHER_PARTICIPANT,
                src_mac: lab::OTHER_LOCAL_MAC,
                dst_mac: lab::OTHER_PARTICIPANT_MAC,
                same_iface: false,
            },
            observed: Some(default_observed(&plain)),
        },
        Fixture {
            description: "forward flow, segment with payload".into(),
            frame: with_payload.frame(),
            setup: forward_to(lab::PARTICIPANT),
            expect: same_iface(),
            observed: Some(default_observed(&with_payload)),
        },
        Fixture {
            description: "forward flow, inner IPv4 header with options".into(),
            frame: ip_options.frame(),
            setup: forward_to(lab::PARTICIPANT),
            expect: same_iface(),
            observed: Some(default_observed(&ip_options)),
        },
        Fixture {
            description: "forward flow, TOS/ECN and IP id copied, DF clear".into(),
            frame: tos_no_df.frame(),
            setup: forward_to(lab::PARTICIPANT),
            expect: same_iface(),
            observed: Some(default_observed(&tos_no_df)),
        },
        Fixture {
            description: "forward flow, Ethernet padding after the IPv4 packet".into(),
            frame: mutate(plain.frame(), |f| f.extend_from_slice(&[0; 6])),
            setup: forward_to(lab::PARTICIPANT),
            expect: same_iface(),
            observed: Some(default_observed(&plain)),
        },
        Fixture {
            description: "forward flow, largest segment that fits the egress MTU encapsulated".into(),
            frame: just_fits.frame(),
            setup: forward_to(lab::OTHER_PARTICIPANT),
            expect: Expect::Forward {
                participant: lab::OTHER_PARTICIPANT,
                src_mac: lab::OTHER_LOCAL_MAC,
                dst_mac: lab::OTHER_PARTICIPANT_MAC,
                same_iface: false,
            },
            observed: Some(default_observed(&just_fits)),
        },
        Fixture {
            description: "forward flow, segment too big for the egress MTU once encapsulated".into(),
            frame: too_big.frame(),
            setup: forward_to(lab::OTHER_PARTICIPANT),
            expect: Expect::TooBig {
                participant: lab::OTHER_PARTICIPANT,
            },
            observed: Some(default_observed(&too_big)),
        },
        Fixture {
            description: "forward flow, participant without a neighbour entry".into(),
            frame: plain.frame(),
            setup: forward_to(lab::NO_NEIGH_PARTICIPANT),
            expect: Expect::NoNeigh {
                participant: lab::NO_NEIGH_PARTICIPANT,
            },
            observed: Some(default_observed(&plain)),
        },
        Fixture {
            description: "forward flow, participant without a route".into(),
            frame: plain.frame(),
            setup: forward_to(lab::UNROUTABLE_PARTICIPANT),
            expect: Expect::NoRoute {
                participant: lab::UNROUTABLE_PARTICIPANT,
            },
            observed: Some(default_observed(&plain)),
        },
        Fixture {
            description: "frozen flow: dropped, ACK/window/TSecr recorded".into(),
            frame: plain.frame(),
            setup: frozen(),
            expect: Expect::Drop(MainCounter::DropFrozen),
            observed: Some(default_observed(&plain)),
        },
        Fixture {
            description: "frozen flow, FIN with zero window".into(),
            frame: fin.frame(),
            setup: frozen(),
            expect: Expect::Drop(MainCounter::DropFrozen),
            observed: Some(Observed {
                last_ack: 7_000,
                next_seq: Some(1_000_001),
                last_window: 0,
                last_tsecr: Some(6),
                fin: true,
                bytes: (fin.frame().len() - 14) as u64,
                ..Observed::default()
            }),
        },
        Fixture {
            description: "frozen flow, RST without ACK: ACK, window and next sequence not recorded".into(),
            frame: rst_no_ack.frame(),
            setup: frozen(),
            expect: Expect::Drop(MainCounter::DropFrozen),
            observed: Some(Observed {
                rst: true,
                bytes: 40,
                ..Observed::default()
            }),
        },
        Fixture {
            description: "frozen flow, timestamps after SACK blocks".into(),
            frame: sack_then_ts.frame(),
            setup: frozen(),
            expect: Expect::Drop(MainCounter::DropFrozen),
            observed: Some(Observed {
                last_tsecr: Some(0xdead_beef),
                ..default_observed(&sack_then_ts)
            }),
        },
        Fixture {
            description: "frozen flow, no timestamps".into(),
            frame: no_ts.frame(),
            setup: frozen(),
            expect: Expect::Drop(MainCounter::DropFrozen),
            observed: Some(Observed {
                last_tsecr: None,
                ..default_observed(&no_ts)
            }),
        },
        Fixture {
            description: "frozen flow, option of length 0 stops the option walk".into(),
            frame: zero_len_option.frame(),
            setup: frozen(),
            expect: Expect::Drop(MainCounter::DropFrozen),
            observed: Some(Observed {
                last_tsecr: None,
                ..default_observed(&zero_len_option)
            }),
        },
        Fixture {
            description: "frozen flow, option of length 1 stops the option walk".into(),
            frame: one_len_option.frame(),
            setup: frozen(),
            expect: Expect::Drop(MainCounter::DropFrozen),
            observed: Some(Observed {
                last_tsecr: None,
                ..default_observed(&one_len_option)
            }),
        },
        Fixture {
            description: "frozen flow, timestamps after EOL are ignored".into(),
            frame: after_eol.frame(),
            setup: frozen(),
            expect: Expect::Drop(MainCounter::DropFrozen),
            observed: Some(Observed {
                last_tsecr: None,
                ..default_observed(&after_eol)
            }),
        },
        Fixture {
            description: "frozen flow, timestamp option running past the header is ignored".into(),
            frame: ts_past_header.frame(),
            setup: frozen(),
            expect: Expect::Drop(MainCounter::DropFrozen),
            observed: Some(Observed {
                last_tsecr: None,
                ..default_observed(&ts_past_header)
            }),
        },
        Fixture {
            description: "frozen flow, timestamp option with a wrong length is ignored".into(),
            frame: bad_ts_len.frame(),
            setup: frozen(),
            expect: Expect::Drop(MainCounter::DropFrozen),
            observed: Some(Observed {
                last_tsecr: None,
                ..default_observed(&bad_ts_len)
            }),
        },
        Fixture {
            description: "flow entry with an unknown state: dropped, never passed".into(),
            frame: plain.frame(),
            setup: vec![(key(), Setup::RawState(7))],
            expect: Expect::Drop(MainCounter::DropBadState),
            observed: None,
        },
        Fixture {
            description: "unknown flow (other client port) next to a forwarded one".into(),
            frame: other_port.frame(),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassNoFlow),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "reverse direction (VIP -> client) is a different flow".into(),
            frame: reverse.frame(),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassNoFlow),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "empty map, TCP to the VIP".into(),
            frame: plain.frame(),
            setup: vec![],
            expect: Expect::Pass(MainCounter::PassNoFlow),
            observed: None,
        },
        Fixture {
            description: "UDP between the flow's addresses and ports".into(),
            frame: frames::udp_frame(CLIENT, VIP, b"not tcp"),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassNotTcp),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "ICMP echo to the VIP".into(),
            frame: frames::icmp_echo_frame(*CLIENT.ip(), *VIP.ip()),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassNotTcp),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "ICMP fragmentation needed about a forwarded flow goes to its participant".into(),
            frame: frag_needed.clone(),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::IcmpToParticipant,
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "ICMP fragmentation needed about a frozen flow".into(),
            frame: frag_needed.clone(),
            setup: frozen(),
            expect: Expect::Pass(MainCounter::PassNotTcp),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "ICMP fragmentation needed about a frozen flow that names a participant".into(),
            frame: frag_needed.clone(),
            setup: vec![(key(), Setup::RawState(1))],
            expect: Expect::Pass(MainCounter::PassNotTcp),
            observed: None,
        },
        Fixture {
            description: "ICMP fragmentation needed about another connection".into(),
            frame: frames::frag_needed_frame(router, &from_vip_other, 1280),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassNotTcp),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "ICMP fragmentation needed quoting UDP with the flow's ports".into(),
            frame: frames::frag_needed_frame(router, &udp_from_vip, 1280),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassNotTcp),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "ICMP fragmentation needed quoting too little to hold the ports".into(),
            frame: ports_cut,
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassNotTcp),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "ICMP time exceeded about a forwarded flow".into(),
            frame: time_exceeded,
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassNotTcp),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "TCP over IPv6".into(),
            frame: frames::ipv6_tcp_frame(),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassNotIpv4),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "ARP request".into(),
            frame: frames::arp_frame(),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassNotIpv4),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "first fragment (MF) of a forwarded flow's segment".into(),
            frame: more_fragments.frame(),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassFragment),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "non-first fragment (offset 64) of a forwarded flow's segment".into(),
            frame: offset_fragment.frame(),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassFragment),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "IPv4 ihl 4".into(),
            frame: mutate(plain.frame(), |f| f[14] = 0x44),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassMalformed),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "IPv4 EtherType carrying version 6".into(),
            frame: mutate(plain.frame(), |f| f[14] = 0x65),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassMalformed),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "IPv4 ihl 15 (options longer than the frame's headers)".into(),
            frame: mutate(plain.frame(), |f| f[14] = 0x4f),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassMalformed),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "IPv4 total length beyond the frame".into(),
            frame: mutate(plain.frame(), |f| {
                f[16..18].copy_from_slice(&200u16.to_be_bytes())
            }),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassMalformed),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "IPv4 total length shorter than the IPv4 header".into(),
            frame: mutate(plain.frame(), |f| {
                f[16..18].copy_from_slice(&19u16.to_be_bytes())
            }),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassMalformed),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "IPv4 total length cuts into the TCP header".into(),
            frame: mutate(plain.frame(), |f| {
                f[16..18].copy_from_slice(&30u16.to_be_bytes())
            }),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassMalformed),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "TCP data offset 4".into(),
            frame: mutate(plain.frame(), |f| f[46] = 0x40),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassMalformed),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "TCP data offset 15 past the IPv4 total length and the frame's end".into(),
            frame: mutate(plain.frame(), |f| f[46] = 0xf0),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassMalformed),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "TCP data offset 0".into(),
            frame: mutate(plain.frame(), |f| f[46] = 0x00),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassMalformed),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "TCP data offset 15 past the IPv4 total length, inside Ethernet padding".into(),
            frame: mutate(plain.frame(), |f| {
                f[46] = 0xf0;
                f.extend_from_slice(&[0; 40]);
            }),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassMalformed),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "TCP data offset 14, two bytes past the end of a frame with payload".into(),
            frame: mutate(with_payload.frame(), |f| f[46] = 0xe0 | (f[46] & 0x0f)),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassMalformed),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "TCP data offset 13 reaching into the payload: a segment with 2 bytes of payload".into(),
            frame: mutate(with_payload.frame(), |f| f[46] = 0xd0 | (f[46] & 0x0f)),
            setup: forward_to(lab::PARTICIPANT),
            expect: same_iface(),
            observed: Some(Observed {
                next_seq: Some(with_payload.seq + 2),
                ..default_observed(&with_payload)
            }),
        },
        Fixture {
            description: "IPv4 total length one byte beyond the frame".into(),
            frame: mutate(plain.frame(), |f| {
                let tot = u16::from_be_bytes([f[16], f[17]]) + 1;
                f[16..18].copy_from_slice(&tot.to_be_bytes());
                frames::fix_ipv4_checksum(f, 14);
            }),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassMalformed),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "IPv4 total length 0".into(),
            frame: mutate(plain.frame(), |f| {
                f[16..18].copy_from_slice(&0u16.to_be_bytes());
                frames::fix_ipv4_checksum(f, 14);
            }),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassMalformed),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "IPv4 total length 20, below ihl 6's 24-byte header".into(),
            frame: mutate(ip_options.frame(), |f| {
                f[16..18].copy_from_slice(&20u16.to_be_bytes());
                frames::fix_ipv4_checksum(f, 14);
            }),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassMalformed),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "middle fragment (MF and offset 64) of a forwarded flow's segment".into(),
            frame: Tcp { mf: true, frag_offset: 8, df: false, ..Tcp::default() }.frame(),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassFragment),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "ICMP fragmentation needed about a forwarded flow, itself a first fragment (MF)".into(),
            frame: mutate(frag_needed.clone(), |f| {
                f[20] |= 0x20;
                frames::fix_ipv4_checksum(f, 14);
            }),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassFragment),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "ICMP fragmentation needed about a forwarded flow, quoted header with options".into(),
            frame: frames::frag_needed_frame(router, &from_vip_options, 1280),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::IcmpToParticipant,
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "ICMP fragmentation needed quoting a header with ihl 4".into(),
            frame: frames::frag_needed_frame(router, &mutate(from_vip.clone(), |p| p[0] = 0x44), 1280),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassNotTcp),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "ICMP fragmentation needed quoting a version 6 header".into(),
            frame: frames::frag_needed_frame(router, &mutate(from_vip.clone(), |p| p[0] = 0x65), 1280),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassNotTcp),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "ICMP with only 4 bytes of header, the rest in Ethernet padding".into(),
            frame: mutate(frag_needed.clone(), |f| {
                f[16..18].copy_from_slice(&24u16.to_be_bytes());
                frames::fix_ipv4_checksum(f, 14);
            }),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassNotTcp),
            observed: Some(Observed::default()),
        },
        Fixture {
            description: "IPv4 segment of the flow under the IPv6 EtherType".into(),
            frame: mutate(plain.frame(), |f| f[12..14].copy_from_slice(&[0x86, 0xdd])),
            setup: forward_to(lab::PARTICIPANT),
            expect: Expect::Pass(MainCounter::PassNotIpv4),
            observed: Some(Observed::default()),
        },
    ]
}

/// Direct access to the pinned flow map, for entries the API refuses to write.
fn raw_flows(pin_dir: &Path) -> HashMap<MapData, [u8; 12], [u8; 56]> {
    HashMap::try_from(aya::maps::Map::HashMap(
        MapData::from_pin(pin_dir.join("baton_flows")).unwrap(),
    ))
    .unwrap()
}

fn key_bytes(key: &FlowKey) -> [u8; 12] {
    let (c, v) = (key.client(), key.vip());
    let mut out = [0u8; 12];
    out[0..4].copy_from_slice(&c.ip().octets());
    out[4..8].copy_from_slice(&v.ip().octets());
    out[8..10].copy_from_slice(&c.port().to_be_bytes());
    out[10..12].copy_from_slice(&v.port().to_be_bytes());
    out
}

/// The inner packet with the outer headers expected for `encap`.
fn encapsulated(inner: &[u8], encap: Encap, participant: Ipv4Addr) -> Vec<u8> {
    match encap {
        Encap::Ipip => frames::ipip(inner, lab::LOCAL, participant),
        Encap::Gue { port } => frames::gue(
            inner,
            lab::LOCAL,
            participant,
            key().gue_source_port(),
            port,
        ),
    }
}

/// (verdict, output, counters that move by one) the fixture must produce in `mode`.
fn expected(fx: &Fixture, mode: AttachMode, encap: Encap) -> (Verdict, Vec<u8>, Vec<MainCounter>) {
    let input = &fx.frame;
    let with_eth = |eth_hdr: &[u8], participant| {
        let mut out = eth_hdr.to_vec();
        // The inner packet is the IPv4 packet by its total length; trailing
        // Ethernet padding stays behind it.
        let tot_len = usize::from(u16::from_be_bytes([input[16], input[17]]));
        out.extend(encapsulated(&input[14..14 + tot_len], encap, participant));
        out.extend_from_slice(&input[14 + tot_len..]);
        out
    };
    let forward = |participant, src_mac, dst_mac, same_iface| {
        let verdict = match (mode, same_iface) {
            (AttachMode::Tc, _) => Verdict::Redirect,
            (AttachMode::Xdp, true) => Verdict::Tx,
            (AttachMode::Xdp, false) => Verdict::Redirect,
        };
        (
            verdict,
            with_eth(&eth(dst_mac, src_mac, 0x0800), participant),
            vec![MainCounter::ForwardOk],
        )
    };
    match fx.expect {
        Expect::Pass(c) => (Verdict::Pass, input.clone(), vec![c]),
        Expect::Drop(c) => (Verdict::Drop, input.clone(), vec![c]),
        Expect::Forward {
            participant,
            src_mac,
            dst_mac,
            same_iface,
        } => forward(participant, src_mac, dst_mac, same_iface),
        Expect::IcmpToParticipant => {
            let (verdict, bytes, mut counters) =
                forward(lab::PARTICIPANT, lab::LOCAL_MAC, lab::PARTICIPANT_MAC, true);
            counters.push(MainCounter::IcmpToParticipant);
            (verdict, bytes, counters)
        }
        Expect::NoNeigh { participant } => {
            let (verdict, counter) = match mode {
                AttachMode::Tc => (Verdict::Redirect, MainCounter::ForwardNeigh),
                AttachMode::Xdp => (Verdict::Drop, MainCounter::DropNoNeigh),
            };
            (verdict, with_eth(&input[..14], participant), vec![counter])
        }
        Expect::NoRoute { participant } => (
            Verdict::Drop,
            with_eth(&input[..14], participant),
            vec![MainCounter::DropFibFailed],
        ),
        Expect::TooBig { participant } => (
            Verdict::Drop,
            with_eth(&input[..14], participant),
            vec![MainCounter::DropFragNeeded],
        ),
    }
}

fn counter_map(dp: &MainDataplane) -> std::collections::BTreeMap<MainCounter, u64> {
    dp.counters().unwrap().into_iter().collect()
}

fn clear_flows(dp: &MainDataplane) {
    for (k, _) in dp.flows().unwrap() {
        dp.remove(&k).unwrap();
    }
    assert!(dp.flows().unwrap().is_empty());
}

/// Loads the main program in `mode` with `encap` (inside the calling thread's namespace, where
/// `lab::build` has run) and gives it with direct access to its flow map.
fn load(mode: AttachMode, encap: Encap, pin: &PinDir) -> (MainDataplane, HashMap<MapData, [u8; 12], [u8; 56]>) {
    let dp = MainDataplane::load(&MainOptions {
        iface: lab::MAIN_IFACE.into(),
        mode,
        pin_dir: pin.path.clone(),
        local_addr: lab::LOCAL,
        encap,
    })
    .unwrap();
    let raw = raw_flows(&pin.path);
    (dp, raw)
}

fn run_table(mode: AttachMode, encap: Encap) {
    let _ns = NetNs::new();
    lab::build();
    let pin = PinDir::new();
    let (dp, mut raw) = load(mode, encap, &pin);
    for fx in &fixtures() {
        check_fixture(&dp, &mut raw, fx, mode, encap);
    }
}

/// Runs one fixture through the loaded program: the flow map is set up as the fixture says,
/// then verdict, output bytes, counter deltas and observations must be exactly the expected
/// ones. A frame shorter than the kernel's minimum must be refused, and then nothing moves.
fn check_fixture(
    dp: &MainDataplane,
    raw: &mut HashMap<MapData, [u8; 12], [u8; 56]>,
    fx: &Fixture,
    mode: AttachMode,
    encap: Encap,
) {
    let ctx = format!("[{mode:?} {encap:?}] {}", fx.description);
    clear_flows(dp);
    for (k, setup) in &fx.setup {
        match setup {
            Setup::Frozen => dp.freeze(k).unwrap(),
            Setup::Forward(p) => dp.forward(k, *p).unwrap(),
            Setup::RawState(state) => {
                let mut value = [0u8; 56];
                value[0..4].copy_from_slice(&state.to_ne_bytes());
                value[4..8].copy_from_slice(&lab::PARTICIPANT.octets());
                raw.insert(key_bytes(k), value, 0).unwrap();
            }
        }
    }

    let before = counter_map(dp);
    let t0 = monotonic_now_ns();
    let out = truncate::run_or_refused(&ctx, mode, &fx.frame, |f| dp.test_run(f));
    let t1 = monotonic_now_ns();
    let after = counter_map(dp);
    let Some(out) = out else {
        assert_eq!(after, before, "{ctx}: counters moved for a refused frame");
        return;
    };

    let (verdict, bytes, counters) = expected(fx, mode, encap);
    assert_eq!(
        out.verdict, verdict,
        "{ctx}: verdict (retval {})",
        out.retval
    );
    assert_eq!(
        out.data,
        bytes,
        "{ctx}: output bytes\n got      {}\n expected {}\n input    {}",
        hex(&out.data),
        hex(&bytes),
        hex(&fx.frame)
    );
    if bytes.len() != fx.frame.len() {
        assert!(
            ipv4_checksum_ok(&out.data[14..34]),
            "{ctx}: outer IPv4 checksum"
        );
    }
    for c in MainCounter::ALL {
        let delta = after[c] - before[c];
        let want = u64::from(counters.contains(c));
        assert_eq!(
            delta,
            want,
            "{ctx}: counter {} moved by {delta}, expected {want}",
            c.name()
        );
    }

    if let Some(obs) = fx.observed {
        let value = dp
            .get(&key())
            .unwrap()
            .unwrap_or_else(|| panic!("{ctx}: flow entry vanished"));
        check_observed(&ctx, &obs, &value, t0, t1);
    }
}

/// The table through the userspace rules. Fixtures with a raw state value are left out: the
/// userspace table only ever holds the states its API writes.
fn run_table_userspace(encap: Encap) {
    let mut checked = 0;
    for fx in fixtures() {
        checked += usize::from(check_fixture_userspace(&fx, encap));
    }
    assert!(checked > 20, "only {checked} fixtures ran");
}

/// Runs one fixture through the userspace rules, which must count, send and observe exactly
/// as the program does. Returns false for a fixture it cannot express (a raw state value).
fn check_fixture_userspace(fx: &Fixture, encap: Encap) -> bool {
    if fx.setup.iter().any(|(_, s)| matches!(s, Setup::RawState(_))) {
        return false;
    }
    let ctx = format!("[userspace {encap:?}] {}", fx.description);
    let mut flows = std::collections::HashMap::new();
    for (k, setup) in &fx.setup {
        let value = match setup {
            Setup::Frozen => baton_ebpf::FlowValue::frozen(),
            Setup::Forward(p) => baton_ebpf::FlowValue::forward(*p),
            Setup::RawState(_) => unreachable!("skipped above"),
        };
        flows.insert(*k, value);
    }
    let (mut out, mut scratch) = (Vec::new(), Vec::new());
    let t0 = monotonic_now_ns();
    let outcome = baton_ebpf::userspace::packet::process(&mut flows, &fx.frame, false, lab::LOCAL, encap, t0, &mut out, &mut scratch);
    let (send, counters): (Option<Ipv4Addr>, Vec<MainCounter>) = match fx.expect {
        Expect::Pass(c) | Expect::Drop(c) => (None, vec![c]),
        Expect::Forward { participant, .. }
        | Expect::NoNeigh { participant }
        | Expect::NoRoute { participant }
        | Expect::TooBig { participant } => (Some(participant), vec![]),
        Expect::IcmpToParticipant => (Some(lab::PARTICIPANT), vec![MainCounter::IcmpToParticipant]),
    };
    assert_eq!(outcome.counters, counters, "{ctx}: counters");
    assert_eq!(outcome.send, send, "{ctx}: send");
    if let Some(p) = send {
        // Only a frame that holds its whole IPv4 packet is ever sent.
        let tot_len = usize::from(u16::from_be_bytes([fx.frame[16], fx.frame[17]]));
        let want = encapsulated(&fx.frame[14..14 + tot_len], encap, p);
        assert_eq!(out, want, "{ctx}: packet to send\n got      {}\n expected {}", hex(&out), hex(&want));
    }
    if let Some(obs) = fx.observed {
        let value = *flows.get(&key()).unwrap_or_else(|| panic!("{ctx}: flow entry vanished"));
        check_observed(&ctx, &obs, &value, t0, t0);
    }
    true
}

#[test]
fn fixtures_userspace_ipip() {
    run_table_userspace(Encap::Ipip);
}

#[test]
fn fixtures_userspace_gue() {
    run_table_userspace(Encap::Gue { port: GUE_PORT });
}

/// The observations of a flow entry after a fixture (`t0..=t1`: when it ran).
fn check_observed(ctx: &str, obs: &Observed, value: &baton_ebpf::FlowValue, t0: u64, t1: u64) {
    let seen = obs.bytes != 0;
    assert_eq!(value.packets(), u64::from(seen), "{ctx}: packets");
    assert_eq!(value.bytes(), obs.bytes, "{ctx}: bytes");
    assert_eq!(value.last_ack(), obs.last_ack, "{ctx}: last_ack");
    assert_eq!(value.has_ack(), obs.last_ack != 0, "{ctx}: has_ack");
    assert_eq!(value.ack_wraps(), 0, "{ctx}: ack_wraps");
    assert_eq!(value.client_next_seq(), obs.next_seq, "{ctx}: client_next_seq");
    assert_eq!(value.last_window(), obs.last_window, "{ctx}: last_window");
    assert_eq!(value.last_tsecr(), obs.last_tsecr, "{ctx}: last_tsecr");
    assert_eq!(value.fin_seen(), obs.fin, "{ctx}: fin");
    assert_eq!(value.rst_seen(), obs.rst, "{ctx}: rst");
    if seen {
        assert!((t0..=t1).contains(&value.last_seen_ns()), "{ctx}: last_seen_ns {} not in [{t0}, {t1}]", value.last_seen_ns());
    } else {
        assert_eq!(value.last_seen_ns(), 0, "{ctx}: last_seen_ns of an untouched flow");
    }
}

#[test]
fn fixtures_tc_ipip() {
    require_root!();
    run_table(AttachMode::Tc, Encap::Ipip);
}

#[test]
fn fixtures_tc_gue() {
    require_root!();
    run_table(AttachMode::Tc, Encap::Gue { port: GUE_PORT });
}

#[test]
fn fixtures_xdp_ipip() {
    require_root!();
    run_table(AttachMode::Xdp, Encap::Ipip);
}

#[test]
fn fixtures_xdp_gue() {
    require_root!();
    run_table(AttachMode::Xdp, Encap::Gue { port: GUE_PORT });
}

/// A truncation sweep: a frame, its flow setup, and what the whole frame and every cut of it
/// (`common::truncate`) must do. Each cut runs as a fixture of its own, checked like the
/// table's: verdict, exact output bytes, counters, observations.
struct Sweep {
    description: String,
    frame: Vec<u8>,
    setup: Vec<(FlowKey, Setup)>,
    cut: Cut,
    whole: (Expect, Option<Observed>),
    /// The outcome of the cut to `len` bytes (`Truncated::len`).
    cut_to: Box<dyn Fn(usize) -> (Expect, Option<Observed>)>,
}

impl Sweep {
    /// Every cut, shortest first, then the whole frame.
    fn fixtures(&self) -> Vec<Fixture> {
        sweep(&self.description, &self.frame, self.cut, self.whole, &*self.cut_to, |description, frame, (expect, observed)| Fixture {
            description,
            frame,
            setup: self.setup.clone(),
            expect,
            observed,
        })
    }
}

/// What a cut that the program must refuse to parse does: passed untouched, counted as
/// malformed, the flow untouched.
fn malformed() -> (Expect, Option<Observed>) {
    (Expect::Pass(MainCounter::PassMalformed), Some(Observed::default()))
}

/// A segment of length `tot_len` cut from `t` by its IPv4 total length: what the flow records.
fn observed_cut(t: &Tcp, tot_len: usize) -> Observed {
    let headers = t.headers_len() - 14;
    Observed {
        next_seq: Some(t.seq + (tot_len - headers) as u32),
        bytes: tot_len as u64,
        ..default_observed(t)
    }
}

/// Sweeps of a TCP segment of a flow in `setup`, whose whole frame gives `whole`: every
/// prefix of the frame is malformed; every IPv4 total length that cuts into the headers is
/// malformed, and one that only cuts the payload leaves a shorter, valid segment that is
/// handled (and observed) like the whole one.
fn segment_sweeps(description: &str, t: &Tcp, setup: Vec<(FlowKey, Setup)>, whole: Expect) -> [Sweep; 2] {
    let by_frame = Sweep {
        description: description.to_string(),
        frame: t.frame(),
        setup: setup.clone(),
        cut: Cut::Frame,
        whole: (whole, Some(default_observed(t))),
        cut_to: Box::new(|_| malformed()),
    };
    let t = t.clone();
    let headers = t.headers_len() - 14;
    let by_packet = Sweep {
        description: by_frame.description.clone(),
        frame: by_frame.frame.clone(),
        setup,
        cut: Cut::Packet,
        whole: by_frame.whole,
        cut_to: Box::new(move |len| {
            if len < headers {
                malformed()
            } else {
                (whole, Some(observed_cut(&t, len)))
            }
        }),
    };
    [by_frame, by_packet]
}

/// Sweeps of an ICMP "fragmentation needed" about the handed-off flow whose quote is
/// `quoted_ihl_len` bytes of IPv4 header and 8 of TCP. Every prefix of the frame is
/// malformed. Cut by its total length, it is sent to the participant only while the quoted
/// ports are whole inside the message (even when the cut-off bytes, padding now, still hold
/// them); with less it is the kernel's.
fn icmp_sweeps(description: &str, frame: Vec<u8>, quoted_ihl_len: usize) -> [Sweep; 2] {
    let by_frame = Sweep {
        description: description.to_string(),
        frame,
        setup: forward_to(lab::PARTICIPANT),
        cut: Cut::Frame,
        whole: (Expect::IcmpToParticipant, Some(Observed::default())),
        cut_to: Box::new(|_| malformed()),
    };
    let ports_end = 20 + 8 + quoted_ihl_len + 4;
    let by_packet = Sweep {
        description: by_frame.description.clone(),
        frame: by_frame.frame.clone(),
        setup: by_frame.setup.clone(),
        cut: Cut::Packet,
        whole: by_frame.whole,
        cut_to: Box::new(move |len| {
            let expect = if len < ports_end {
                Expect::Pass(MainCounter::PassNotTcp)
            } else {
                Expect::IcmpToParticipant
            };
            (expect, Some(Observed::default()))
        }),
    };
    [by_frame, by_packet]
}

/// Every sweep: forwarded segments (IPv4 header without and with options, ihl 5..15), a
/// frozen flow's segment, and ICMP "fragmentation needed" about a handed-off flow (quoted
/// header without and with options).
fn sweeps() -> Vec<Sweep> {
    let mut out = Vec::new();
    let segment = Tcp {
        payload: b"0123456789".to_vec(),
        ..Tcp::default()
    };
    assert_eq!(segment.headers_len(), 14 + 20 + 32);
    out.extend(segment_sweeps("forwarded segment", &segment, forward_to(lab::PARTICIPANT), same_iface()));
    for ihl in 6..=15u8 {
        // NOP ... NOP EOL: (ihl - 5) * 4 bytes of options.
        let mut options = vec![1; (usize::from(ihl) - 5) * 4];
        *options.last_mut().unwrap() = 0;
        let t = Tcp {
            ip_options: options,
            ..segment.clone()
        };
        assert_eq!(t.headers_len(), 14 + usize::from(ihl) * 4 + 32);
        let description = format!("forwarded segment, IPv4 ihl {ihl}");
        out.extend(segment_sweeps(&description, &t, forward_to(lab::PARTICIPANT), same_iface()));
    }
    let frozen_segment = Tcp {
        payload: b"held while moving".to_vec(),
        ..Tcp::default()
    };
    out.extend(segment_sweeps("frozen flow's segment", &frozen_segment, frozen(), Expect::Drop(MainCounter::DropFrozen)));

    let router = Ipv4Addr::new(198, 18, 5, 1);
    for (description, ip_options) in [
        ("ICMP fragmentation needed about a handed-off flow", vec![]),
        ("ICMP fragmentation needed about a handed-off flow, quoted header with options", vec![1, 1, 1, 0]),
    ] {
        let from_vip = Tcp {
            src: VIP,
            dst: CLIENT,
            payload: vec![7; 1400],
            ip_options,
            ..Tcp::default()
        }
        .ipv4_packet();
        let quoted_ihl_len = usize::from(from_vip[0] & 0x0f) * 4;
        out.extend(icmp_sweeps(description, frames::frag_needed_frame(router, &from_vip, 1280), quoted_ihl_len));
    }
    out
}

/// Every sweep through the program, for IPIP and GUE. Prefixes the kernel refuses to
/// test-run (shorter than an Ethernet header; for tc, shorter than Ethernet + IPv4 header)
/// must be refused with EINVAL, never run.
fn truncation(mode: AttachMode) {
    let _ns = NetNs::new();
    lab::build();
    for encap in [Encap::Ipip, Encap::Gue { port: GUE_PORT }] {
        let pin = PinDir::new();
        let (dp, mut raw) = load(mode, encap, &pin);
        for sweep in sweeps() {
            for fx in sweep.fixtures() {
                check_fixture(&dp, &mut raw, &fx, mode, encap);
            }
        }
    }
}

/// Every sweep through the userspace rules, which must agree with the program on every cut.
#[test]
fn truncated_frames_userspace() {
    for encap in [Encap::Ipip, Encap::Gue { port: GUE_PORT }] {
        for sweep in sweeps() {
            for fx in sweep.fixtures() {
                assert!(check_fixture_userspace(&fx, encap), "{}", fx.description);
            }
        }
    }
}

#[test]
fn truncated_frames_tc() {
    require_root!();
    truncation(AttachMode::Tc);
}

#[test]
fn truncated_frames_xdp() {
    require_root!();
    truncation(AttachMode::Xdp);
}

/// GUE source ports: the same flow always gets the same port, and it is the
/// one FlowKey::gue_source_port() predicts (the C and Rust hashes agree for
/// many flows, not just the fixture's).
#[test]
fn gue_source_port_matches_rust_mirror() {
    require_root!();
    let _ns = NetNs::new();
    lab::build();
    let pin = PinDir::new();
    let dp = MainDataplane::load(&MainOptions {
        iface: lab::MAIN_IFACE.into(),
        mode: AttachMode::Xdp,
        pin_dir: pin.path.clone(),
        local_addr: lab::LOCAL,
        encap: Encap::Gue { port: GUE_PORT },
    })
    .unwrap();
    let mut ports = std::collections::HashSet::new();
    for i in 0..64u16 {
        let client = SocketAddrV4::new(
            Ipv4Addr::new(198, 18, 100 + (i % 3) as u8, 7 + i as u8),
            30_000 + i * 7,
        );
        let k = FlowKey::new(client, VIP);
        dp.forward(&k, lab::PARTICIPANT).unwrap();
        let frame = Tcp {
            src: client,
            ..Tcp::default()
        }
        .frame();
        for _ in 0..2 {
            let out = dp.test_run(&frame).unwrap();
            assert_eq!(out.verdict, Verdict::Tx);
            let sport = u16::from_be_bytes([out.data[34], out.data[35]]);
            assert_eq!(sport, k.gue_source_port(), "flow {k}");
            assert!(sport >= 0xc000, "flow {k}: port {sport}");
            assert_eq!(u16::from_be_bytes([out.data[36], out.data[37]]), GUE_PORT);
        }
        ports.insert(k.gue_source_port());
        dp.remove(&k).unwrap();
    }
    assert!(
        ports.len() > 48,
        "only {} distinct ports for 64 flows",
        ports.len()
    );
}

/// A client that reuses the port of a connection that has ended: its SYN must reach the main's
/// kernel (and the stale entry go), while a SYN on a live flow is still the participant's.
fn stale_syn(mode: AttachMode) {
    let _ns = NetNs::new();
    lab::build();
    let pin = PinDir::new();
    let dp = MainDataplane::load(&MainOptions {
        iface: lab::MAIN_IFACE.into(),
        mode,
        pin_dir: pin.path.clone(),
        local_addr: lab::LOCAL,
        encap: Encap::Ipip,
    })
    .unwrap();
    let syn = Tcp { syn: true, ack: None, timestamps: None, ..Tcp::default() }.frame();
    let fin = Tcp { fin: true, ..Tcp::default() }.frame();

    dp.forward(&key(), lab::PARTICIPANT).unwrap();
    let before = counter_map(&dp);
    let out = dp.test_run(&syn).unwrap();
    assert_ne!(out.verdict, Verdict::Pass, "[{mode:?}] a SYN on a live flow stays with the participant");
    assert_eq!(counter_map(&dp)[&MainCounter::PassStaleSyn], before[&MainCounter::PassStaleSyn]);
    assert!(dp.get(&key()).unwrap().is_some());

    dp.test_run(&fin).unwrap();
    assert!(dp.get(&key()).unwrap().unwrap().fin_seen(), "[{mode:?}] the client's FIN is recorded");
    let before = counter_map(&dp);
    let out = dp.test_run(&syn).unwrap();
    assert_eq!(out.verdict, Verdict::Pass, "[{mode:?}] a new connection goes to the kernel");
    assert_eq!(out.data, syn, "[{mode:?}] passed unchanged");
    assert_eq!(counter_map(&dp)[&MainCounter::PassStaleSyn], before[&MainCounter::PassStaleSyn] + 1);
    assert!(dp.get(&key()).unwrap().is_none(), "[{mode:?}] the stale entry is gone");
}

#[test]
fn stale_syn_tc() {
    require_root!();
    stale_syn(AttachMode::Tc);
}

#[test]
fn stale_syn_xdp() {
    require_root!();
    stale_syn(AttachMode::Xdp);
}
