//! The loader and the control API: flow-map semantics, pinning across
//! restarts, stale or foreign pins, attachment lifetime (pinned links),
//! errors, sharing between threads.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use aya::programs::{SchedClassifier, TcAttachType};
use baton_ebpf::{
    check_capabilities, AttachMode, DataplaneError, Encap, FlowKey, FlowState, LinkKind,
    MainCounter, MainDataplane, MainOptions, ParticipantDataplane, ParticipantOptions, Verdict,
};
use common::frames::{Tcp, CLIENT, VIP};
use common::{lab, NetNs, PinDir};

fn options(pin: &PinDir, mode: AttachMode) -> MainOptions {
    MainOptions {
        iface: lab::MAIN_IFACE.into(),
        mode,
        pin_dir: pin.path.clone(),
        local_addr: lab::LOCAL,
        encap: Encap::Ipip,
    }
}

fn key() -> FlowKey {
    FlowKey::new(CLIENT, VIP)
}

fn counter(dp: &MainDataplane, c: MainCounter) -> u64 {
    dp.counters()
        .unwrap()
        .into_iter()
        .find(|(k, _)| *k == c)
        .unwrap()
        .1
}

#[test]
fn capabilities_present_as_root() {
    require_root!();
    check_capabilities().unwrap();
}

#[test]
fn flow_api_semantics() {
    require_root!();
    let _ns = NetNs::new();
    lab::build();
    let pin = PinDir::new();
    let dp = MainDataplane::load(&options(&pin, AttachMode::Tc)).unwrap();

    assert_eq!(dp.get(&key()).unwrap(), None);
    dp.remove(&key()).unwrap(); // absent is fine

    dp.freeze(&key()).unwrap();
    let v = dp.get(&key()).unwrap().unwrap();
    assert_eq!(v.state(), Some(FlowState::Frozen));
    assert_eq!((v.packets(), v.last_ack(), v.last_tsecr()), (0, 0, None));

    // A client segment while frozen: dropped and observed.
    let out = dp.test_run(&Tcp::default().frame()).unwrap();
    assert_eq!(out.verdict, Verdict::Drop);
    let v = dp.get(&key()).unwrap().unwrap();
    assert_eq!(
        (v.packets(), v.last_ack(), v.last_window(), v.last_tsecr()),
        (1, 2_000_000, 501, Some(222_222))
    );

    // forward keeps what was observed.
    dp.forward(&key(), lab::PARTICIPANT).unwrap();
    let v = dp.get(&key()).unwrap().unwrap();
    assert_eq!(v.state(), Some(FlowState::Forward));
    assert_eq!(v.participant(), lab::PARTICIPANT);
    assert_eq!(
        (v.packets(), v.last_ack(), v.last_window(), v.last_tsecr()),
        (1, 2_000_000, 501, Some(222_222))
    );

    // Later segments keep updating while forwarded.
    let next = Tcp {
        ack: Some(2_000_500),
        window: 700,
        timestamps: Some((9, 333_333)),
        ..Tcp::default()
    };
    assert_eq!(
        dp.test_run(&next.frame()).unwrap().verdict,
        Verdict::Redirect
    );
    let v = dp.get(&key()).unwrap().unwrap();
    assert_eq!(
        (v.packets(), v.last_ack(), v.last_window(), v.last_tsecr()),
        (2, 2_000_500, 700, Some(333_333))
    );

    // Re-pointing to another participant keeps them too.
    dp.forward(&key(), lab::OTHER_PARTICIPANT).unwrap();
    let v = dp.get(&key()).unwrap().unwrap();
    assert_eq!(
        (v.participant(), v.packets(), v.last_ack()),
        (lab::OTHER_PARTICIPANT, 2, 2_000_500)
    );

    // freeze starts over.
    dp.freeze(&key()).unwrap();
    let v = dp.get(&key()).unwrap().unwrap();
    assert_eq!(
        (v.state(), v.packets(), v.last_ack(), v.last_tsecr()),
        (Some(FlowState::Frozen), 0, 0, None)
    );

    // forward on an absent flow creates it.
    let other = FlowKey::new(SocketAddrV4::new(Ipv4Addr::new(198, 18, 100, 8), 1234), VIP);
    dp.forward(&other, lab::PARTICIPANT).unwrap();
    assert_eq!(
        dp.get(&other).unwrap().unwrap().state(),
        Some(FlowState::Forward)
    );

    dp.remove(&key()).unwrap();
    assert_eq!(dp.get(&key()).unwrap(), None);
    assert_eq!(
        dp.test_run(&Tcp::default().frame()).unwrap().verdict,
        Verdict::Pass
    );

    // flows() lists exactly what is there.
    let mut want = BTreeSet::new();
    want.insert(other);
    for i in 0..300u16 {
        let k = FlowKey::new(
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 101, (i % 250) as u8), 10_000 + i),
            VIP,
        );
        if i % 2 == 0 {
            dp.freeze(&k).unwrap();
        } else {
            dp.forward(&k, lab::PARTICIPANT).unwrap();
        }
        want.insert(k);
    }
    let got: BTreeSet<FlowKey> = dp.flows().unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(got, want);
}

#[test]
fn pinned_flows_survive_a_restart_and_a_mode_change() {
    require_root!();
    let _ns = NetNs::new();
    lab::build();
    let pin = PinDir::new();
    {
        let dp = MainDataplane::load(&options(&pin, AttachMode::Tc)).unwrap();
        dp.forward(&key(), lab::PARTICIPANT).unwrap();
        assert_eq!(
            dp.test_run(&Tcp::default().frame()).unwrap().verdict,
            Verdict::Redirect
        );
        assert_eq!(counter(&dp, MainCounter::ForwardOk), 1);
    }
    assert!(pin.path.join("baton_flows").exists());
    assert!(pin.path.join("baton_main_stats").exists());
    let dp = MainDataplane::load(&options(&pin, AttachMode::Xdp)).unwrap();
    let v = dp.get(&key()).unwrap().unwrap();
    assert_eq!(
        (v.state(), v.participant(), v.packets()),
        (Some(FlowState::Forward), lab::PARTICIPANT, 1)
    );
    assert_eq!(
        counter(&dp, MainCounter::ForwardOk),
        1,
        "counters are pinned too"
    );
    assert_eq!(
        dp.test_run(&Tcp::default().frame()).unwrap().verdict,
        Verdict::Tx
    );
    assert_eq!(dp.get(&key()).unwrap().unwrap().packets(), 2);
}

#[test]
fn foreign_flow_map_pin_is_refused_and_kept() {
    require_root!();
    let _ns = NetNs::new();
    lab::build();
    let pin = PinDir::new();
    // A hash map with the previous build's 48-byte value (before the ACK
    // wrap count and the client's next sequence number).
    common::pin_raw_map(&pin.path.join("baton_flows"), 1, 12, 48, 65_536);
    match MainDataplane::load(&options(&pin, AttachMode::Tc)) {
        Err(err @ DataplaneError::PinnedMapMismatch { .. }) => {
            let DataplaneError::PinnedMapMismatch { path, detail } = &err else {
                unreachable!()
            };
            assert_eq!(*path, pin.path.join("baton_flows"));
            assert_eq!(detail, "value size 48, expected 56");
            assert_eq!(
                err.to_string(),
                format!(
                    "pinned map {} does not match this build (value size 48, expected 56); \
                     remove it to start with an empty map",
                    pin.path.join("baton_flows").display()
                )
            );
        }
        other => panic!("expected PinnedMapMismatch, got {other:?}"),
    }
    assert!(
        baton_ebpf::pinned_links(&pin.path).unwrap().is_empty(),
        "nothing attached after a refused load"
    );
    assert!(
        pin.path.join("baton_flows").exists(),
        "the flow map pin must never be removed"
    );
}

#[test]
fn stale_counter_pin_is_replaced() {
    require_root!();
    let _ns = NetNs::new();
    lab::build();
    let pin = PinDir::new();
    // A per-CPU array (type 6) with fewer counters than this build has.
    common::pin_raw_map(&pin.path.join("baton_main_stats"), 6, 4, 8, 3);
    let dp = MainDataplane::load(&options(&pin, AttachMode::Tc)).unwrap();
    assert_eq!(dp.counters().unwrap().len(), MainCounter::ALL.len());
    let info = aya::maps::MapInfo::from_pin(pin.path.join("baton_main_stats")).unwrap();
    assert_eq!(info.max_entries() as usize, MainCounter::ALL.len());
}

/// Programs stay attached when the Rust objects drop (pinned links); a mode
/// change swaps the hook; detach_pinned, detach() and removing the pin
/// directory detach.
#[test]
fn attachments_outlive_the_loader_until_unpinned() {
    require_root!();
    let _ns = NetNs::new();
    lab::build();
    let pin = PinDir::new();
    let tc_ids = |iface: &str, attach: TcAttachType| {
        let (_, programs) = SchedClassifier::query_tcx(iface, attach).unwrap();
        programs.iter().map(|p| p.id()).collect::<Vec<_>>()
    };
    let xdp_id = || common::xdp_prog_id(lab::MAIN_IFACE);

    let dp = MainDataplane::load(&options(&pin, AttachMode::Tc)).unwrap();
    let id = dp.program_id().unwrap();
    assert_eq!(tc_ids(lab::MAIN_IFACE, TcAttachType::Ingress), vec![id]);
    drop(dp);
    assert_eq!(
        tc_ids(lab::MAIN_IFACE, TcAttachType::Ingress),
        vec![id],
        "dropping the data plane must not detach"
    );
    let links = baton_ebpf::pinned_links(&pin.path).unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].path, pin.path.join("link_baton_main_tc_bt0"));
    assert_eq!(links[0].kind, LinkKind::TcxIngress);
    assert_eq!(links[0].program_id, id);
    assert_eq!(links[0].ifindex, common::ifindex(lab::MAIN_IFACE));

    // Mode change: XDP attached, then the tc link unpinned.
    let dp = MainDataplane::load(&options(&pin, AttachMode::Xdp)).unwrap();
    let xdp = dp.program_id().unwrap();
    assert_eq!(xdp_id(), Some(xdp));
    assert!(eventually(|| tc_ids(lab::MAIN_IFACE, TcAttachType::Ingress).is_empty()), "tc link left behind");
    drop(dp);
    assert_eq!(xdp_id(), Some(xdp), "dropping must not detach XDP");
    let removed = baton_ebpf::detach_pinned(&pin.path).unwrap();
    assert_eq!(removed, vec![pin.path.join("link_baton_main_xdp_bt0")]);
    assert!(eventually(|| xdp_id().is_none()), "xdp program still attached after detach_pinned");
    assert!(pin.path.join("baton_flows").exists(), "maps stay pinned");

    // The participant: decapsulation on ingress, guard on egress, both pinned.
    let part_opts = ParticipantOptions {
        iface: "bt1".into(),
        mode: AttachMode::Tc,
        pin_dir: pin.path.clone(),
        main_addr: lab::LOCAL,
        encap: Encap::Ipip,
        require_socket: false,
    };
    let part = ParticipantDataplane::load(&part_opts).unwrap();
    let (ingress, guard) = (part.program_id().unwrap(), part.guard_program_id().unwrap());
    drop(part);
    assert_eq!(tc_ids("bt1", TcAttachType::Ingress), vec![ingress]);
    assert_eq!(tc_ids("bt1", TcAttachType::Egress), vec![guard]);
    let (_, programs) = SchedClassifier::query_tcx("bt1", TcAttachType::Ingress).unwrap();
    // Kernel program names hold 15 bytes.
    assert_eq!(programs[0].name_as_str(), Some("baton_participa"));
    let part = ParticipantDataplane::load(&part_opts).unwrap();
    let removed = part.detach().unwrap();
    assert_eq!(
        removed,
        vec![
            pin.path.join("link_baton_guard_tc_bt1"),
            pin.path.join("link_baton_participant_tc_bt1"),
        ]
    );
    assert!(
        eventually(|| tc_ids("bt1", TcAttachType::Ingress).is_empty()
            && tc_ids("bt1", TcAttachType::Egress).is_empty()),
        "participant programs still attached after detach"
    );

    // Removing the pin directory (what `baton-lab down` does) detaches too.
    let dp = MainDataplane::load(&options(&pin, AttachMode::Tc)).unwrap();
    let part = ParticipantDataplane::load(&part_opts).unwrap();
    drop((dp, part));
    std::fs::remove_dir_all(&pin.path).unwrap();
    assert!(
        eventually(|| tc_ids(lab::MAIN_IFACE, TcAttachType::Ingress).is_empty()
            && tc_ids("bt1", TcAttachType::Ingress).is_empty()
            && tc_ids("bt1", TcAttachType::Egress).is_empty()),
        "programs still attached after the pin directory was removed"
    );
}

/// Detaching releases the link through RCU, so a query right after the drop may still list
/// the program for a moment: poll for up to a second.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

#[test]
fn load_errors_name_the_problem() {
    require_root!();
    let _ns = NetNs::new();
    lab::build();
    let pin = PinDir::new();
    let mut opts = options(&pin, AttachMode::Tc);
    opts.iface = "nope0".into();
    let err = MainDataplane::load(&opts).unwrap_err();
    assert!(
        matches!(&err, DataplaneError::NoSuchInterface { iface } if iface == "nope0"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "interface nope0 not found");

    let tmp = std::env::temp_dir().join(format!("baton-ebpf-not-bpffs-{}", std::process::id()));
    let mut opts = options(&pin, AttachMode::Tc);
    opts.pin_dir = tmp.clone();
    let err = MainDataplane::load(&opts).unwrap_err();
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        matches!(&err, DataplaneError::NotBpffs { path } if *path == tmp),
        "{err:?}"
    );
}

#[test]
fn shared_between_threads() {
    require_root!();
    let _ns = NetNs::new();
    lab::build();
    let pin = PinDir::new();
    let dp = Arc::new(MainDataplane::load(&options(&pin, AttachMode::Tc)).unwrap());
    let workers: Vec<_> = (0..4u16)
        .map(|t| {
            let dp = Arc::clone(&dp);
            std::thread::spawn(move || {
                for i in 0..200u16 {
                    let k = FlowKey::new(
                        SocketAddrV4::new(Ipv4Addr::new(198, 18, 102, t as u8), 20_000 + i),
                        VIP,
                    );
                    dp.freeze(&k).unwrap();
                    dp.forward(&k, lab::PARTICIPANT).unwrap();
                    if i % 2 == 1 {
                        dp.remove(&k).unwrap();
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let flows = dp.flows().unwrap();
    assert_eq!(flows.len(), 4 * 100);
    assert!(flows
        .iter()
        .all(|(k, v)| v.state() == Some(FlowState::Forward) && k.client().port() % 2 == 0));
}
