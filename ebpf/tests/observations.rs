//! What the main program records per flow, segment by segment
//! (BPF_PROG_TEST_RUN on the loaded and attached program): the highest ACK
//! with its wrap count, the client's next sequence number, window and TSecr,
//! all forward-only under reordering; seeding from the handoff; and state
//! changes that keep the observations.
//!
//! Each test runs in a fresh network namespace with one veth pair
//! (`ebto0`/`ebto1`, 198.19.184.1/24); the flows are frozen, so no packet is
//! forwarded anywhere.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use baton_ebpf::{
    AttachMode, DataplaneError, Encap, FlowKey, FlowSeed, FlowState, FlowTarget, FlowValue,
    MainDataplane, MainOptions, Verdict,
};
use common::frames::Tcp;
use common::{ip, NetNs, PinDir};

const IFACE: &str = "ebto0";
const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 19, 184, 1);
const PARTICIPANT: Ipv4Addr = Ipv4Addr::new(198, 19, 184, 2);
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 185, 7), 41_234);
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);

fn key() -> FlowKey {
    FlowKey::new(CLIENT, VIP)
}

fn setup(mode: AttachMode) -> (NetNs, PinDir, MainDataplane) {
    let ns = NetNs::new();
    ip(&[
        "link", "add", IFACE, "type", "veth", "peer", "name", "ebto1",
    ]);
    ip(&["addr", "add", "198.19.184.1/24", "dev", IFACE]);
    ip(&["link", "set", IFACE, "up"]);
    ip(&["link", "set", "ebto1", "up"]);
    let pin = PinDir::new();
    let dp = MainDataplane::load(&MainOptions {
        iface: IFACE.into(),
        mode,
        pin_dir: pin.path.clone(),
        local_addr: LOCAL,
        encap: Encap::Ipip,
    })
    .unwrap();
    (ns, pin, dp)
}

/// A client segment of the flow.
fn segment(seq: u32, ack: Option<u32>, window: u16, tsecr: Option<u32>) -> Tcp {
    Tcp {
        src: CLIENT,
        dst: VIP,
        seq,
        ack,
        window,
        timestamps: tsecr.map(|ecr| (7, ecr)),
        ..Tcp::default()
    }
}

/// Runs `t` through the program (the flow is frozen: dropped) and returns the entry after it.
fn run(dp: &MainDataplane, t: &Tcp) -> FlowValue {
    let out = dp.test_run(&t.frame()).unwrap();
    assert_eq!(out.verdict, Verdict::Drop, "frozen flows drop");
    dp.get(&key()).unwrap().unwrap()
}

/// (last_ack, ack_wraps, last_window, last_tsecr) of an entry.
fn ack_view(v: &FlowValue) -> (u32, u32, u16, Option<u32>) {
    (v.last_ack(), v.ack_wraps(), v.last_window(), v.last_tsecr())
}

fn forward_only_ack(mode: AttachMode) {
    let (_ns, _pin, dp) = setup(mode);
    dp.freeze(&key()).unwrap();
    let seq = 500;

    // First ACK of an unseeded entry is taken as it is.
    let v = run(&dp, &segment(seq, Some(1_000), 100, Some(10)));
    assert!(v.has_ack());
    assert_eq!(
        ack_view(&v),
        (1_000, 0, 100, Some(10)),
        "[{mode:?}] first ACK"
    );

    let v = run(&dp, &segment(seq, Some(3_000), 300, Some(30)));
    assert_eq!(
        ack_view(&v),
        (3_000, 0, 300, Some(30)),
        "[{mode:?}] newer ACK"
    );

    // A reordered older segment changes none of ACK, window, TSecr.
    let v = run(&dp, &segment(seq, Some(2_000), 200, Some(20)));
    assert_eq!(
        ack_view(&v),
        (3_000, 0, 300, Some(30)),
        "[{mode:?}] reordered ACK"
    );
    assert_eq!(
        v.packets(),
        3,
        "[{mode:?}] the old segment is still counted"
    );

    // Same ACK, new window (a window update) and newer TSecr: taken.
    let v = run(&dp, &segment(seq, Some(3_000), 350, Some(35)));
    assert_eq!(
        ack_view(&v),
        (3_000, 0, 350, Some(35)),
        "[{mode:?}] window update"
    );

    // Same ACK, older TSecr: the window is from the latest segment, the TSecr never goes back.
    let v = run(&dp, &segment(seq, Some(3_000), 360, Some(25)));
    assert_eq!(
        ack_view(&v),
        (3_000, 0, 360, Some(35)),
        "[{mode:?}] old TSecr"
    );

    // No ACK flag: no ACK observation at all.
    let v = run(&dp, &segment(seq, None, 9, None));
    assert_eq!(
        ack_view(&v),
        (3_000, 0, 360, Some(35)),
        "[{mode:?}] no ACK flag"
    );

    // A jump of exactly 2^31 is "behind" in TCP arithmetic: ignored.
    let v = run(
        &dp,
        &segment(seq, Some(3_000u32.wrapping_add(0x8000_0000)), 1, Some(99)),
    );
    assert_eq!(
        ack_view(&v),
        (3_000, 0, 360, Some(35)),
        "[{mode:?}] 2^31 ahead"
    );
    // 2^31 - 1 ahead is ahead.
    let v = run(&dp, &segment(seq, Some(3_000 + 0x7fff_ffff), 2, Some(100)));
    assert_eq!(
        ack_view(&v),
        (3_000 + 0x7fff_ffff, 0, 2, Some(100)),
        "[{mode:?}] 2^31 - 1 ahead"
    );
}

#[test]
fn forward_only_ack_tc() {
    require_root!();
    forward_only_ack(AttachMode::Tc);
}

#[test]
fn forward_only_ack_xdp() {
    require_root!();
    forward_only_ack(AttachMode::Xdp);
}

/// The ACK wraps past 2^32 twice; reordered segments around each wrap must
/// neither undo nor double-count it, and the 64-bit position follows.
fn ack_wraps(mode: AttachMode) {
    let (_ns, _pin, dp) = setup(mode);
    let base: u64 = 0x1_ffff_ff00;
    dp.freeze_seeded(
        &key(),
        FlowSeed {
            snd_nxt: base as u32,
            rcv_nxt: 1,
        },
    )
    .unwrap();
    let v = dp.get(&key()).unwrap().unwrap();
    assert_eq!(v.acked_position(base), Some(base), "[{mode:?}] seeded");

    let steps: &[(u32, u32, u32, u64)] = &[
        // (ack sent, expected last_ack, expected wraps, expected 64-bit position)
        (0xffff_fff0, 0xffff_fff0, 0, 0x1_ffff_fff0),
        (0x0000_0010, 0x0000_0010, 1, 0x2_0000_0010),
        // Reordered: from before the wrap.
        (0xffff_fff8, 0x0000_0010, 1, 0x2_0000_0010),
        (0x0000_0008, 0x0000_0010, 1, 0x2_0000_0010),
        (0x8000_0000, 0x8000_0000, 1, 0x2_8000_0000),
        (0xffff_0000, 0xffff_0000, 1, 0x2_ffff_0000),
        // Reordered: from the first half of this epoch.
        (0x8000_0010, 0xffff_0000, 1, 0x2_ffff_0000),
        (0x0000_0100, 0x0000_0100, 2, 0x3_0000_0100),
        // The same ACK again counts no wrap.
        (0x0000_0100, 0x0000_0100, 2, 0x3_0000_0100),
    ];
    for &(ack, want_ack, want_wraps, want_pos) in steps {
        let v = run(&dp, &segment(1, Some(ack), 10, None));
        assert_eq!(
            (v.last_ack(), v.ack_wraps(), v.acked_position(base)),
            (want_ack, want_wraps, Some(want_pos)),
            "[{mode:?}] after ACK {ack:#x}"
        );
    }
}

#[test]
fn ack_wraps_tc() {
    require_root!();
    ack_wraps(AttachMode::Tc);
}

#[test]
fn ack_wraps_xdp() {
    require_root!();
    ack_wraps(AttachMode::Xdp);
}

/// client_next_seq: seq + payload (+1 for FIN, +1 for SYN), forward-only,
/// across the 2^32 wrap; RST and retransmissions leave it alone.
fn next_seq(mode: AttachMode) {
    let (_ns, _pin, dp) = setup(mode);
    let start = 0xffff_ff00u32;
    dp.freeze_seeded(
        &key(),
        FlowSeed {
            snd_nxt: 9,
            rcv_nxt: start,
        },
    )
    .unwrap();
    assert_eq!(
        dp.get(&key()).unwrap().unwrap().client_next_seq(),
        Some(start)
    );

    let data = |seq: u32, len: usize, fin: bool, rst: bool| Tcp {
        payload: vec![0x61; len],
        fin,
        rst,
        ..segment(seq, Some(9), 10, None)
    };
    let steps: Vec<(&str, Tcp, u32)> = vec![
        ("100 bytes", data(start, 100, false, false), start + 100),
        (
            "retransmission of the first 50",
            data(start, 50, false, false),
            start + 100,
        ),
        (
            "a pure ACK at the next byte",
            data(start + 100, 0, false, false),
            start + 100,
        ),
        (
            "across 2^32",
            data(start + 100, 200, false, false),
            start.wrapping_add(300),
        ),
        (
            "reordered: the 100 bytes again",
            data(start, 100, false, false),
            start.wrapping_add(300),
        ),
        (
            "RST far ahead",
            data(start.wrapping_add(5_000), 0, false, true),
            start.wrapping_add(300),
        ),
        (
            "10 bytes and FIN",
            data(start.wrapping_add(300), 10, true, false),
            start.wrapping_add(311),
        ),
        (
            "FIN retransmitted",
            data(start.wrapping_add(300), 10, true, false),
            start.wrapping_add(311),
        ),
    ];
    for (what, t, want) in steps {
        let v = run(&dp, &t);
        assert_eq!(v.client_next_seq(), Some(want), "[{mode:?}] {what}");
    }
    let v = dp.get(&key()).unwrap().unwrap();
    assert!(
        v.fin_seen() && v.rst_seen(),
        "[{mode:?}] FIN and RST recorded"
    );

    // Unseeded: the first segment sets it; SYN counts one.
    dp.freeze(&key()).unwrap();
    let syn = Tcp {
        syn: true,
        ..segment(77, None, 10, None)
    };
    assert_eq!(run(&dp, &syn).client_next_seq(), Some(78), "[{mode:?}] SYN");
}

#[test]
fn client_next_seq_tc() {
    require_root!();
    next_seq(AttachMode::Tc);
}

#[test]
fn client_next_seq_xdp() {
    require_root!();
    next_seq(AttachMode::Xdp);
}

/// A seeded entry ignores segments from before the handoff that arrive late;
/// an unseeded one would have taken them.
#[test]
fn seed_is_respected() {
    require_root!();
    let (_ns, _pin, dp) = setup(AttachMode::Tc);
    let seed = FlowSeed {
        snd_nxt: 10_000,
        rcv_nxt: 20_000,
    };
    let late = Tcp {
        payload: vec![1; 500],
        ..segment(19_000, Some(9_000), 111, Some(5))
    };

    dp.freeze_seeded(&key(), seed).unwrap();
    let v = run(&dp, &late);
    assert_eq!(ack_view(&v), (10_000, 0, 0, None), "old ACK ignored");
    assert_eq!(v.client_next_seq(), Some(20_000), "old data ignored");
    assert_eq!(v.state(), Some(FlowState::Frozen));

    // The ACK at the seed itself is not behind: its window and TSecr count.
    let v = run(&dp, &segment(20_000, Some(10_000), 222, Some(6)));
    assert_eq!(ack_view(&v), (10_000, 0, 222, Some(6)));
    assert_eq!(v.client_next_seq(), Some(20_000));
    assert_eq!(v.packets(), 2);

    // Without the seed the late segment sets everything.
    dp.freeze(&key()).unwrap();
    let v = run(&dp, &late);
    assert_eq!(ack_view(&v), (9_000, 0, 111, Some(5)));
    assert_eq!(v.client_next_seq(), Some(19_500));
}

/// set_state changes only state and participant: a move keeps what was observed.
#[test]
fn set_state_keeps_observations() {
    require_root!();
    let (_ns, _pin, dp) = setup(AttachMode::Tc);
    dp.freeze_seeded(
        &key(),
        FlowSeed {
            snd_nxt: 0xffff_fff0,
            rcv_nxt: 700,
        },
    )
    .unwrap();
    let observed = run(&dp, &segment(700, Some(0x10), 40, Some(123)));
    assert_eq!(observed.ack_wraps(), 1);

    dp.set_state(&key(), FlowTarget::Forward(PARTICIPANT))
        .unwrap();
    let v = dp.get(&key()).unwrap().unwrap();
    assert_eq!(v.target(), Some(FlowTarget::Forward(PARTICIPANT)));
    assert_eq!(v.state(), Some(FlowState::Forward));
    assert_eq!(
        v,
        observed.with_forward(PARTICIPANT),
        "only state and participant changed"
    );

    dp.set_state(&key(), FlowTarget::Frozen).unwrap();
    let v = dp.get(&key()).unwrap().unwrap();
    assert_eq!(v.target(), Some(FlowTarget::Frozen));
    assert_eq!(
        (
            v.last_ack(),
            v.ack_wraps(),
            v.client_next_seq(),
            v.last_window(),
            v.last_tsecr()
        ),
        (0x10, 1, Some(700), 40, Some(123))
    );
    assert_eq!(
        (v.packets(), v.bytes()),
        (observed.packets(), observed.bytes())
    );

    let absent = FlowKey::new(SocketAddrV4::new(*CLIENT.ip(), 1), VIP);
    match dp.set_state(&absent, FlowTarget::Frozen) {
        Err(DataplaneError::NoSuchFlow { key }) => assert_eq!(key, absent),
        other => panic!("expected NoSuchFlow, got {other:?}"),
    }
    assert_eq!(
        dp.get(&absent).unwrap(),
        None,
        "set_state never creates a flow"
    );
    let err = dp.set_state(&absent, FlowTarget::Frozen).unwrap_err();
    assert_eq!(
        err.to_string(),
        "flow 198.19.185.7:1->203.0.113.10:80 is not in the flow map"
    );
}
