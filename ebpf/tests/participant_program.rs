//! Packet fixtures for the participant program (BPF_PROG_TEST_RUN on the
//! loaded and attached program), for tc and XDP, with IPIP and GUE
//! configured; truncation sweeps of encapsulated frames from the main; and a
//! round trip main -> participant that must give back the
//! client's original packet.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use baton_ebpf::{
    AttachMode, Encap, FlowKey, MainDataplane, MainOptions, ParticipantCounter,
    ParticipantDataplane, ParticipantOptions, Verdict,
};
use common::frames::{self, eth, fix_ipv4_checksum, hex, Tcp, CLIENT, GUE_PORT, VIP};
use common::truncate::{self, sweep, Cut};
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
    description: String,
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
        fix_ipv4_checksum(f, 14);
    };
    let outer_options = mutate(ipip_from_main.clone(), with_outer_options);
    let gue_outer_options = mutate(gue_from_main.clone(), with_outer_options);
    let outer_mf = mutate(ipip_from_main.clone(), |f| {
        f[20] |= 0x20;
        fix_ipv4_checksum(f, 14);
    });
    let stranger_fragment = mutate(frame(frames::ipip(&inner, STRANGER, ME)), |f| {
        f[20] |= 0x20;
        fix_ipv4_checksum(f, 14);
    });
    // Outer total length covers only 10 bytes of the inner header.
    let inner_cut = mutate(ipip_from_main.clone(), |f| {
        f.truncate(14 + 30);
        f[16..18].copy_from_slice(&30u16.to_be_bytes());
        fix_ipv4_checksum(f, 14);
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
        fix_ipv4_checksum(f, 14);
    });
    // A non-first fragment: the bytes where a UDP header would be are payload.
    let udp_later_fragment = mutate(gue_from_main.clone(), |f| {
        f[20..22].copy_from_slice(&(0x2000u16 | 100).to_be_bytes());
        fix_ipv4_checksum(f, 14);
    });

    let outer_ihl4 = |f: &mut Vec<u8>| {
        f[14] = 0x44;
        fix_ipv4_checksum(f, 14);
    };
    // Offset 100 (800 bytes), MF clear: the last fragment of a packet the main never sends.
    let outer_last_fragment = mutate(ipip_from_main.clone(), |f| {
        f[20..22].copy_from_slice(&100u16.to_be_bytes());
        fix_ipv4_checksum(f, 14);
    });
    let outer_middle_fragment = mutate(ipip_from_main.clone(), |f| {
        f[20..22].copy_from_slice(&(0x2000u16 | 100).to_be_bytes());
        fix_ipv4_checksum(f, 14);
    });
    // The inner TCP header is not judged here: the main never forwards such a segment, and
    // the participant's TCP drops it (bad header) without answering.
    let inner_doff = |doff: u8| mutate(inner.clone(), |p| p[32] = (doff << 4) | (p[32] & 0x0f));
    let ipip_inner_doff4 = frame(frames::ipip(&inner_doff(4), MAIN, ME));
    let ipip_inner_doff15 = frame(frames::ipip(&inner_doff(15), MAIN, ME));
    let gue_inner_doff4 = frame(frames::gue(&inner_doff(4), MAIN, ME, sport, GUE_PORT));
    let gue_inner_doff15 = frame(frames::gue(&inner_doff(15), MAIN, ME, sport, GUE_PORT));
    // The outer total length ends inside the UDP header; the rest of the frame (the UDP
    // header to the GUE port, the inner packet) is Ethernet padding, not part of the packet.
    let gue_udp_cut_padded = mutate(gue_from_main.clone(), |f| {
        f[16..18].copy_from_slice(&24u16.to_be_bytes());
        fix_ipv4_checksum(f, 14);
    });

    vec![
        Fixture {
            description: "IPIP from the main".into(),
            frame: ipip_from_main.clone(),
            ipip: Decap(20),
            gue: Decap(20),
        },
        Fixture {
            description: "IPIP from the main, inner packet with options and payload".into(),
            frame: frame(frames::ipip(&inner_big, MAIN, ME)),
            ipip: Decap(20),
            gue: Decap(20),
        },
        Fixture {
            description: "IPIP from the main, outer header with options".into(),
            frame: outer_options,
            ipip: Decap(24),
            gue: Decap(24),
        },
        Fixture {
            description: "IPIP from the main, Ethernet padding after the packet".into(),
            frame: mutate(ipip_from_main.clone(), |f| f.extend_from_slice(&[0; 6])),
            ipip: Decap(20),
            gue: Decap(20),
        },
        Fixture {
            description: "IPIP from a stranger".into(),
            frame: frame(frames::ipip(&inner, STRANGER, ME)),
            ipip: Drop(C::DropBadSource),
            gue: Drop(C::DropBadSource),
        },
        Fixture {
            description: "IPIP fragment from a stranger".into(),
            frame: stranger_fragment,
            ipip: Drop(C::DropBadSource),
            gue: Drop(C::DropBadSource),
        },
        Fixture {
            description: "IPIP from the main, outer MF set".into(),
            frame: outer_mf,
            ipip: Drop(C::DropFragment),
            gue: Drop(C::DropFragment),
        },
        Fixture {
            description: "IPIP from the main, inner header cut".into(),
            frame: inner_cut,
            ipip: Drop(C::DropMalformed),
            gue: Drop(C::DropMalformed),
        },
        Fixture {
            description: "IPIP from the main, inner version 6".into(),
            frame: inner_v6,
            ipip: Drop(C::DropMalformed),
            gue: Drop(C::DropMalformed),
        },
        Fixture {
            description: "IPIP from the main, inner ihl 4".into(),
            frame: inner_ihl4,
            ipip: Drop(C::DropMalformed),
            gue: Drop(C::DropMalformed),
        },
        Fixture {
            description: "IPIP from the main, inner total length beyond the outer".into(),
            frame: inner_too_long,
            ipip: Drop(C::DropMalformed),
            gue: Drop(C::DropMalformed),
        },
        Fixture {
            description: "IPIP, outer total length beyond the frame".into(),
            frame: outer_too_long,
            ipip: Pass(C::PassMalformed),
            gue: Pass(C::PassMalformed),
        },
        Fixture {
            description: "GUE from the main".into(),
            frame: gue_from_main.clone(),
            ipip: Pass(C::PassNotEncap),
            gue: Decap(28),
        },
        Fixture {
            description: "GUE from the main, outer header with options".into(),
            frame: gue_outer_options,
            ipip: Pass(C::PassNotEncap),
            gue: Decap(32),
        },
        Fixture {
            description: "GUE from a stranger".into(),
            frame: frame(frames::gue(&inner, STRANGER, ME, sport, GUE_PORT)),
            ipip: Pass(C::PassNotEncap),
            gue: Drop(C::DropBadSource),
        },
        Fixture {
            description: "GUE from the main carrying no IPv4 packet".into(),
            frame: gue_garbage,
            ipip: Pass(C::PassNotEncap),
            gue: Drop(C::DropMalformed),
        },
        Fixture {
            description: "GUE from the main, UDP header cut".into(),
            frame: gue_udp_cut,
            ipip: Pass(C::PassNotEncap),
            gue: Pass(C::PassMalformed),
        },
        Fixture {
            description: "UDP non-first fragment from the main".into(),
            frame: udp_later_fragment,
            ipip: Pass(C::PassNotEncap),
            gue: Pass(C::PassNotEncap),
        },
        Fixture {
            description: "UDP from the main to another port".into(),
            frame: frame(frames::gue(&inner, MAIN, ME, sport, GUE_PORT + 1)),
            ipip: Pass(C::PassNotEncap),
            gue: Pass(C::PassNotEncap),
        },
        Fixture {
            description: "plain TCP from a client".into(),
            frame: Tcp::default().frame(),
            ipip: Pass(C::PassNotEncap),
            gue: Pass(C::PassNotEncap),
        },
        Fixture {
            description: "ICMP from the main".into(),
            frame: frames::icmp_echo_frame(MAIN, ME),
            ipip: Pass(C::PassNotEncap),
            gue: Pass(C::PassNotEncap),
        },
        Fixture {
            description: "IPIP, outer ihl 4".into(),
            frame: mutate(ipip_from_main.clone(), outer_ihl4),
            ipip: Pass(C::PassMalformed),
            gue: Pass(C::PassMalformed),
        },
        Fixture {
            description: "GUE, outer ihl 4".into(),
            frame: mutate(gue_from_main.clone(), outer_ihl4),
            ipip: Pass(C::PassMalformed),
            gue: Pass(C::PassMalformed),
        },
        Fixture {
            description: "IPIP from the main, outer last fragment (offset 800, MF clear)".into(),
            frame: outer_last_fragment,
            ipip: Drop(C::DropFragment),
            gue: Drop(C::DropFragment),
        },
        Fixture {
            description: "IPIP from the main, outer middle fragment (MF, offset 800)".into(),
            frame: outer_middle_fragment,
            ipip: Drop(C::DropFragment),
            gue: Drop(C::DropFragment),
        },
        Fixture {
            description: "IPIP from the main, inner TCP data offset 4".into(),
            frame: ipip_inner_doff4,
            ipip: Decap(20),
            gue: Decap(20),
        },
        Fixture {
            description: "IPIP from the main, inner TCP data offset 15 past the inner packet's end".into(),
            frame: ipip_inner_doff15,
            ipip: Decap(20),
            gue: Decap(20),
        },
        Fixture {
            description: "GUE from the main, inner TCP data offset 4".into(),
            frame: gue_inner_doff4,
            ipip: Pass(C::PassNotEncap),
            gue: Decap(28),
        },
        Fixture {
            description: "GUE from the main, inner TCP data offset 15 past the inner packet's end".into(),
            frame: gue_inner_doff15,
            ipip: Pass(C::PassNotEncap),
            gue: Decap(28),
        },
        Fixture {
            description: "GUE from the main, UDP header cut by the outer total length, rest in padding".into(),
            frame: gue_udp_cut_padded,
            ipip: Pass(C::PassNotEncap),
            gue: Pass(C::PassMalformed),
        },
        Fixture {
            description: "TCP over IPv6".into(),
            frame: frames::ipv6_tcp_frame(),
            ipip: Pass(C::PassNotIpv4),
            gue: Pass(C::PassNotIpv4),
        },
        Fixture {
            description: "ARP request".into(),
            frame: frames::arp_frame(),
            ipip: Pass(C::PassNotIpv4),
            gue: Pass(C::PassNotIpv4),
        },
    ]
}

fn counter_map(dp: &ParticipantDataplane) -> std::collections::BTreeMap<ParticipantCounter, u64> {
    dp.counters().unwrap().into_iter().collect()
}

/// A veth pair in the calling thread's namespace with the participant program loaded on
/// `IFACE` in `mode`, with `encap` configured.
fn load(mode: AttachMode, encap: Encap, pin: &PinDir) -> ParticipantDataplane {
    ip(&["link", "add", IFACE, "type", "veth", "peer", "name", "pt1"]);
    ip(&["addr", "add", "198.18.0.2/24", "dev", IFACE]);
    ip(&["link", "set", IFACE, "up"]);
    ip(&["link", "set", "pt1", "up"]);
    ParticipantDataplane::load(&ParticipantOptions {
        iface: IFACE.into(),
        mode,
        pin_dir: pin.path.clone(),
        main_addr: MAIN,
        encap,
        require_socket: false,
    })
    .unwrap()
}

fn run_table(mode: AttachMode, encap: Encap) {
    let _ns = NetNs::new();
    let pin = PinDir::new();
    let dp = load(mode, encap, &pin);
    for fx in fixtures() {
        check_fixture(&dp, &fx, mode, encap);
    }
}

/// Runs one fixture: verdict, output bytes and the one counter that moves must be exactly the
/// expected ones. A frame shorter than the kernel's minimum must be refused, and then nothing
/// moves.
fn check_fixture(dp: &ParticipantDataplane, fx: &Fixture, mode: AttachMode, encap: Encap) {
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
    let before = counter_map(dp);
    let out = truncate::run_or_refused(&ctx, mode, &fx.frame, |f| dp.test_run(f));
    let after = counter_map(dp);
    let Some(out) = out else {
        assert_eq!(after, before, "{ctx}: counters moved for a refused frame");
        return;
    };
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

/// A truncation sweep: a frame and what the whole frame and every cut of it
/// (`common::truncate`) must do, with IPIP and with GUE configured. Each cut runs as a fixture
/// of its own.
struct Sweep {
    description: &'static str,
    frame: Vec<u8>,
    cut: Cut,
    /// (IPIP configured, GUE configured) for the whole frame.
    whole: (Expect, Expect),
    /// The same for the cut to `len` bytes (`Truncated::len`).
    cut_to: Box<dyn Fn(usize) -> (Expect, Expect)>,
}

impl Sweep {
    /// Every cut, shortest first, then the whole frame.
    fn fixtures(&self) -> Vec<Fixture> {
        sweep(self.description, &self.frame, self.cut, self.whole, &*self.cut_to, |description, frame, (ipip, gue)| Fixture { description, frame, ipip, gue })
    }
}

/// Every prefix of an encapsulated frame from the main is malformed (the outer total length
/// is beyond it) and passed to the kernel, which drops it; only the whole frame is
/// decapsulated. Cut by the outer total length, the inner packet no longer fits: dropped as
/// malformed, or passed when the cut leaves no whole UDP header to say it is GUE.
fn sweeps() -> Vec<Sweep> {
    use Expect::*;
    use ParticipantCounter as C;
    let inner = Tcp {
        payload: b"0123456789".to_vec(),
        ..Tcp::default()
    }
    .ipv4_packet();
    let sport = FlowKey::new(CLIENT, VIP).gue_source_port();
    let ipip = frame(frames::ipip(&inner, MAIN, ME));
    let gue = frame(frames::gue(&inner, MAIN, ME, sport, GUE_PORT));
    let malformed = Pass(C::PassMalformed);
    vec![
        Sweep {
            description: "IPIP from the main",
            frame: ipip.clone(),
            cut: Cut::Frame,
            whole: (Decap(20), Decap(20)),
            cut_to: Box::new(move |_| (malformed, malformed)),
        },
        Sweep {
            description: "IPIP from the main",
            frame: ipip,
            cut: Cut::Packet,
            whole: (Decap(20), Decap(20)),
            cut_to: Box::new(|_| (Drop(C::DropMalformed), Drop(C::DropMalformed))),
        },
        Sweep {
            description: "GUE from the main",
            frame: gue.clone(),
            cut: Cut::Frame,
            whole: (Pass(C::PassNotEncap), Decap(28)),
            cut_to: Box::new(move |_| (malformed, malformed)),
        },
        Sweep {
            description: "GUE from the main",
            frame: gue,
            cut: Cut::Packet,
            whole: (Pass(C::PassNotEncap), Decap(28)),
            cut_to: Box::new(move |len| {
                let gue = if len < 20 + 8 { malformed } else { Drop(C::DropMalformed) };
                (Pass(C::PassNotEncap), gue)
            }),
        },
    ]
}

/// Every sweep, for tc and XDP with IPIP and GUE configured.
#[test]
fn truncated_frames() {
    require_root!();
    for mode in [AttachMode::Tc, AttachMode::Xdp] {
        for encap in [Encap::Ipip, Encap::Gue { port: GUE_PORT }] {
            let _ns = NetNs::new();
            let pin = PinDir::new();
            let dp = load(mode, encap, &pin);
            for sweep in sweeps() {
                for fx in sweep.fixtures() {
                    check_fixture(&dp, &fx, mode, encap);
                }
            }
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
