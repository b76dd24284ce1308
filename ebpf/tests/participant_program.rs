//! Packet fixtures for the participant program (BPF_PROG_TEST_RUN on the
//! loaded and attached program), for tc and XDP, with IPIP and GUE
//! configured; and a round trip main -> participant that must give back the
//! client's original packet.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use baton_ebpf::{
    AttachMode, Encap, FlowKey, MainDataplane, MainOptions, ParticipantCounter,
    ParticipantDataplane, ParticipantOptions, Verdict,
};
use common::frames::{self, eth, hex, Tcp, CLIENT, GUE_PORT, VIP};
use common::{ip, lab, NetNs, PinDir};

const MAIN: Ipv4Addr = lab::LOCAL;
const STRANGER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 66);
const ME: Ipv4Addr = lab::PARTICIPANT;
const IFACE: &str = "pt0";

#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Outer headers of this many bytes removed, Ethernet kept, passed up.
    Decap(usize),
    Pass(ParticipantCounter),
    Drop(ParticipantCounter),
}

struct Fixture {
    description: &'static str,
    frame: Vec<u8>,
    /// Outcome with IPIP configured, and with GUE configured.
    ipip: Expect,
    gue: Expect,
}

fn frame(ip_packet: Vec<u8>) -> Vec<u8> {
    let mut out = eth(lab::PARTICIPANT_MAC, lab::LOCAL_MAC, 0x0800);
    out.extend(ip_packet);
    out
}

fn mutate(mut bytes: Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    f(&mut bytes);
    bytes
}

/// Rewrites the IPv4 header checksum of the header starting at `off`.
fn fix_csum(bytes: &mut [u8], off: usize) {
    let ihl = usize::from(bytes[off] & 0x0f) * 4;
    bytes[off + 10] = 0;
    bytes[off + 11] = 0;
    let mut sum: u32 = bytes[off..off + ihl]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    bytes[off + 10..off + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

fn fixtures() -> Vec<Fixture> {
    use Expect::*;
    use ParticipantCounter as C;
    let inner = Tcp::default().ipv4_packet();
    let inner_big = Tcp {
        payload: vec![0x5a; 300],
        ip_options: vec![1, 1, 1, 0],
        ..Tcp::default()
    }
    .ipv4_packet();
    let sport = FlowKey::new(CLIENT, VIP).gue_source_port();
    let ipip_from_main = frame(frames::ipip(&inner, MAIN, ME));
    let gue_from_main = frame(frames::gue(&inner, MAIN, ME, sport, GUE_PORT));

    // Outer header with 4 bytes of options (NOP NOP NOP EOL): ihl 6.
    let with_outer_options = |f: &mut Vec<u8>| {
        f.splice(34..34, [1, 1, 1, 0]);
        f[14] = 0x46;
        let tot = u16::from_be_bytes([f[16], f[17]]) + 4;
        f[16..18].copy_from_slice(&tot.to_be_bytes());
        fix_csum(f, 14);
    };
    let outer_options = mutate(ipip_from_main.clone(), with_outer_options);
    let gue_outer_options = mutate(gue_from_main.clone(), with_outer_options);
    let outer_mf = mutate(ipip_from_main.clone(), |f| {
        f[20] |= 0x20;
        fix_csum(f, 14);
    });
    let stranger_fragment = mutate(frame(frames::ipip(&inner, STRANGER, ME)), |f| {
        f[20] |= 0x20;
        fix_csum(f, 14);
    });
    // Outer total length covers only 10 bytes of the inner header.
    let inner_cut = mutate(ipip_from_main.clone(), |f| {
        f.truncate(14 + 30);
        f[16..18].copy_from_slice(&30u16.to_be_bytes());
        fix_csum(f, 14);
    });
    let inner_v6 = mutate(ipip_from_main.clone(), |f| f[34] = 0x65);
    let inner_ihl4 = mutate(ipip_from_main.clone(), |f| f[34] = 0x44);
    let inner_too_long = mutate(ipip_from_main.clone(), |f| {
        let tot = u16::from_be_bytes([f[36], f[37]]) + 1;
        f[36..38].copy_from_slice(&tot.to_be_bytes());
    });
    let outer_too_long = mutate(ipip_from_main.clone(), |f| {
        f[16..18].copy_from_slice(&1000u16.to_be_bytes())
    });
    let gue_garbage = frame(frames::gue(&[0x60; 40], MAIN, ME, sport, GUE_PORT));
    // GUE whose UDP header is cut by the frame's end.
    let gue_udp_cut = mutate(gue_from_main.clone(), |f| {
        f.truncate(14 + 24);
        f[16..18].copy_from_slice(&24u16.to_be_bytes());
        fix_csum(f, 14);
    });
    // A non-first fragment: the bytes where a UDP header would be are payload.
    let udp_later_fragment = mutate(gue_from_main.clone(), |f| {
        f[20..22].copy_from_slice(&(0x2000u16 | 100).to_be_bytes());
        fix_csum(f, 14);
    });

    vec![
        Fixture {
            description: "IPIP from the main",
            frame: ipip_from_main.clone(),
            ipip: Decap(20),
            gue: Decap(20),
        },
        Fixture {
            description: "IPIP from the main, inner packet with options and payload",
            frame: frame(frames::ipip(&inner_big, MAIN, ME)),
            ipip: Decap(20),
            gue: Decap(20),
        },
        Fixture {
            description: "IPIP from the main, outer header with options",
            frame: outer_options,
            ipip: Decap(24),
            gue: Decap(24),
        },
        Fixture {
            description: "IPIP from the main, Ethernet padding after the packet",
            frame: mutate(ipip_from_main.clone(), |f| f.extend_from_slice(&[0; 6])),
            ipip: Decap(20),
            gue: Decap(20),
        },
        Fixture {
            description: "IPIP from a stranger",
            frame: frame(frames::ipip(&inner, STRANGER, ME)),
            ipip: Drop(C::DropBadSource),
            gue: Drop(C::DropBadSource),
        },
        Fixture {
            description: "IPIP fragment from a stranger",
            frame: stranger_fragment,
            ipip: Drop(C::DropBadSource),
            gue: Drop(C::DropBadSource),
        },
        Fixture {
            description: "IPIP from the main, outer MF set",
            frame: outer_mf,
            ipip: Drop(C::DropFragment),
            gue: Drop(C::DropFragment),
        },
        Fixture {
            description: "IPIP from the main, inner header cut",
            frame: inner_cut,
            ipip: Drop(C::DropMalformed),
            gue: Drop(C::DropMalformed),
        },
        Fixture {
            description: "IPIP from the main, inner version 6",
            frame: inner_v6,
            ipip: Drop(C::DropMalformed),
            gue: Drop(C::DropMalformed),
        },
        Fixture {
            description: "IPIP from the main, inner ihl 4",
            frame: inner_ihl4,
            ipip: Drop(C::DropMalformed),
            gue: Drop(C::DropMalformed),
        },
        Fixture {
            description: "IPIP from the main, inner total length beyond the outer",
            frame: inner_too_long,
            ipip: Drop(C::DropMalformed),
            gue: Drop(C::DropMalformed),
        },
        Fixture {
            description: "IPIP, outer total length beyond the frame",
            frame: outer_too_long,
            ipip: Pass(C::PassMalformed),
            gue: Pass(C::PassMalformed),
        },
        Fixture {
            description: "GUE from the main",
            frame: gue_from_main.clone(),
            ipip: Pass(C::PassNotEncap),
            gue: Decap(28),
        },
        Fixture {
            description: "GUE from the main, outer header with options",
            frame: gue_outer_options,
            ipip: Pass(C::PassNotEncap),
            gue: Decap(32),
        },
        Fixture {
            description: "GUE from a stranger",
            frame: frame(frames::gue(&inner, STRANGER, ME, sport, GUE_PORT)),
            ipip: Pass(C::PassNotEncap),
            gue: Drop(C::DropBadSource),
        },
        Fixture {
            description: "GUE from the main carrying no IPv4 packet",
            frame: gue_garbage,
            ipip: Pass(C::PassNotEncap),
            gue: Drop(C::DropMalformed),
        },
        Fixture {
            description: "GUE from the main, UDP header cut",
            frame: gue_udp_cut,
            ipip: Pass(C::PassNotEncap),
            gue: Pass(C::PassMalformed),
        },
        Fixture {
            description: "UDP non-first fragment from the main",
            frame: udp_later_fragment,
            ipip: Pass(C::PassNotEncap),
            gue: Pass(C::PassNotEncap),
        },
        Fixture {
            description: "UDP from the main to another port",
            frame: frame(frames::gue(&inner, MAIN, ME, sport, GUE_PORT + 1)),
            ipip: Pass(C::PassNotEncap),
            gue: Pass(C::PassNotEncap),
        },
        Fixture {
            description: "plain TCP from a client",
            frame: Tcp::default().frame(),
            ipip: Pass(C::PassNotEncap),
            gue: Pass(C::PassNotEncap),
        },
        Fixture {
            description: "ICMP from the main",
            frame: frames::icmp_echo_frame(MAIN, ME),
            ipip: Pass(C::PassNotEncap),
            gue: Pass(C::PassNotEncap),
        },
        Fixture {
            description: "TCP over IPv6",
            frame: frames::ipv6_tcp_frame(),
            ipip: Pass(C::PassNotIpv4),
            gue: Pass(C::PassNotIpv4),
        },
        Fixture {
            description: "ARP request",
            frame: frames::arp_frame(),
            ipip: Pass(C::PassNotIpv4),
            gue: Pass(C::PassNotIpv4),
        },
    ]
}

fn counter_map(dp: &ParticipantDataplane) -> std::collections::BTreeMap<ParticipantCounter, u64> {
    dp.counters().unwrap().into_iter().collect()
}

fn run_table(mode: AttachMode, encap: Encap) {
    let _ns = NetNs::new();
    ip(&["link", "add", IFACE, "type", "veth", "peer", "name", "pt1"]);
    ip(&["addr", "add", "198.18.0.2/24", "dev", IFACE]);
    ip(&["link", "set", IFACE, "up"]);
    ip(&["link", "set", "pt1", "up"]);
    let pin = PinDir::new();
    let dp = ParticipantDataplane::load(&ParticipantOptions {
        iface: IFACE.into(),
        mode,
        pin_dir: pin.path.clone(),
        main_addr: MAIN,
        encap,
        require_socket: false,
    })
    .unwrap();

    for fx in fixtures() {
        let ctx = format!("[{mode:?} {encap:?}] {}", fx.description);
        let expect = match encap {
            Encap::Ipip => fx.ipip,
            Encap::Gue { .. } => fx.gue,
        };
        let (verdict, bytes, counter) = match expect {
            Expect::Decap(outer) => {
                let mut b = fx.frame[..14].to_vec();
                b.extend_from_slice(&fx.frame[14 + outer..]);
                (Verdict::Pass, b, ParticipantCounter::DecapOk)
            }
            Expect::Pass(c) => (Verdict::Pass, fx.frame.clone(), c),
            Expect::Drop(c) => (Verdict::Drop, fx.frame.clone(), c),
        };
        let before = counter_map(&dp);
        let out = dp
            .test_run(&fx.frame)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let after = counter_map(&dp);
        assert_eq!(
            out.verdict, verdict,
            "{ctx}: verdict (retval {})",
            out.retval
        );
        assert_eq!(
            out.data,
            bytes,
            "{ctx}: output\n got      {}\n expected {}",
            hex(&out.data),
            hex(&bytes)
        );
        for c in ParticipantCounter::ALL {
            let want = u64::from(*c == counter);
            assert_eq!(after[c] - before[c], want, "{ctx}: counter {}", c.name());
        }
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

/// What the main sends, the participant turns back into the client's packet.
#[test]
fn round_trip_main_to_participant() {
    require_root!();
    let _ns = NetNs::new();
    lab::build();
    for mode in [AttachMode::Tc, AttachMode::Xdp] {
        for encap in [Encap::Ipip, Encap::Gue { port: GUE_PORT }] {
            let ctx = format!("[{mode:?} {encap:?}]");
            let main_pin = PinDir::new();
            let part_pin = PinDir::new();
            let main = MainDataplane::load(&MainOptions {
                iface: lab::MAIN_IFACE.into(),
                mode,
                pin_dir: main_pin.path.clone(),
                local_addr: lab::LOCAL,
                encap,
            })
            .unwrap();
            let part = ParticipantDataplane::load(&ParticipantOptions {
                iface: "bt1".into(),
                mode,
                pin_dir: part_pin.path.clone(),
                main_addr: lab::LOCAL,
                encap,
                require_socket: false,
            })
            .unwrap();
            for port in [40_000u16, 40_001, 55_555] {
                let client = SocketAddrV4::new(*CLIENT.ip(), port);
                let segment = Tcp {
                    src: client,
                    payload: vec![port as u8; 100],
                    ..Tcp::default()
                };
                main.forward(&FlowKey::new(client, VIP), lab::PARTICIPANT)
                    .unwrap();
                let sent = main.test_run(&segment.frame()).unwrap();
                assert!(
                    matches!(sent.verdict, Verdict::Redirect | Verdict::Tx),
                    "{ctx}: {:?}",
                    sent.verdict
                );
                let received = part.test_run(&sent.data).unwrap();
                assert_eq!(received.verdict, Verdict::Pass, "{ctx}");
                let mut want = eth(lab::PARTICIPANT_MAC, lab::LOCAL_MAC, 0x0800);
                want.extend(segment.ipv4_packet());
                assert_eq!(received.data, want, "{ctx}: port {port}");
            }
            let decapped = part
                .counters()
                .unwrap()
                .into_iter()
                .find(|(c, _)| *c == ParticipantCounter::DecapOk);
            assert_eq!(decapped, Some((ParticipantCounter::DecapOk, 3)), "{ctx}");
        }
    }
}

/// With `require_socket`, a forwarded TCP segment is decapsulated only when a local socket will
/// take it; before the connection is restored it is dropped and counted, so the kernel never
/// answers it with a reset from the VIP. Other inner protocols are not judged.
fn run_socket_guard(mode: AttachMode) {
    let _ns = NetNs::new();
    ip(&["link", "add", IFACE, "type", "veth", "peer", "name", "pt1"]);
    ip(&["addr", "add", "198.18.0.2/24", "dev", IFACE]);
    ip(&["addr", "add", "203.0.113.10/32", "dev", "lo"]);
    ip(&["link", "set", "lo", "up"]);
    ip(&["link", "set", IFACE, "up"]);
    ip(&["link", "set", "pt1", "up"]);
    let pin = PinDir::new();
    let dp = ParticipantDataplane::load(&ParticipantOptions {
        iface: IFACE.into(),
        mode,
        pin_dir: pin.path.clone(),
        main_addr: MAIN,
        encap: Encap::Ipip,
        require_socket: true,
    })
    .unwrap();
    let tcp = frame(frames::ipip(&Tcp::default().ipv4_packet(), MAIN, ME));
    let decapped = |f: &[u8]| {
        let mut b = f[..14].to_vec();
        b.extend_from_slice(&f[34..]);
        b
    };
    let run = |f: &[u8]| {
        let before = counter_map(&dp);
        let out = dp.test_run(f).unwrap();
        let after = counter_map(&dp);
        let moved: Vec<_> = ParticipantCounter::ALL.iter().filter(|c| after[c] != before[c]).copied().collect();
        (out, moved)
    };

    let (out, moved) = run(&tcp);
    assert_eq!(out.verdict, Verdict::Drop, "[{mode:?}] no socket yet");
    assert_eq!(out.data, tcp, "[{mode:?}] dropped frame unchanged");
    assert_eq!(moved, vec![ParticipantCounter::DropNoSocket], "[{mode:?}]");

    let udp = frame(frames::ipip(&frames::ipv4_packet(*CLIENT.ip(), *VIP.ip(), 17, &[0; 12]), MAIN, ME));
    let (out, moved) = run(&udp);
    assert_eq!(out.verdict, Verdict::Pass, "[{mode:?}] non-TCP inner packets are not judged");
    assert_eq!(out.data, decapped(&udp));
    assert_eq!(moved, vec![ParticipantCounter::DecapOk]);

    // Once a socket exists for the VIP's port, the same segment is decapsulated.
    let _listener = std::net::TcpListener::bind(VIP).unwrap();
    let (out, moved) = run(&tcp);
    assert_eq!(out.verdict, Verdict::Pass, "[{mode:?}] socket present");
    assert_eq!(out.data, decapped(&tcp));
    assert_eq!(moved, vec![ParticipantCounter::DecapOk]);
}

#[test]
fn socket_guard_tc() {
    require_root!();
    run_socket_guard(AttachMode::Tc);
}

#[test]
fn socket_guard_xdp() {
    require_root!();
    run_socket_guard(AttachMode::Xdp);
}
