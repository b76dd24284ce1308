//! Pinned links across restarts of the loading process, with real traffic:
//! while a peer streams a handed-off flow's segments into the main's
//! interface, the main's data plane is dropped and loaded again, several
//! times. Every segment must be forwarded by the old or the new program --
//! none may reach the kernel in between -- and after each load exactly one
//! program, the new one, is on the hook.
//!
//! ```text
//!  main ns (test thread)                          peer ns (ebt...-peer)
//!  ebtm0 02:..:b8:01 198.19.184.1/24 [main prog] <-> ebtp0 02:..:b8:02 198.19.184.2/24
//!  flow 198.19.185.7:41000 -> 203.0.113.10:80 forwarded to 198.19.184.2
//! ```
//!
//! Also: a pinned link whose interface was deleted and made again is
//! replaced by a fresh one, and a foreign object under a link's name is
//! refused.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aya::programs::{SchedClassifier, TcAttachType};
use baton_ebpf::{
    pinned_links, AttachMode, DataplaneError, Encap, FlowKey, LinkKind, MainCounter, MainDataplane,
    MainOptions,
};
use common::frames::{eth, Tcp};
use common::{ip, sysctl, NamedNs, NetNs, PinDir};

const MAIN_IFACE: &str = "ebtm0";
const PEER_IFACE: &str = "ebtp0";
const MAIN_MAC: [u8; 6] = [2, 0, 0, 0, 0xb8, 1];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0xb8, 2];
const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 19, 184, 1);
const PARTICIPANT: Ipv4Addr = Ipv4Addr::new(198, 19, 184, 2);
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 185, 7), 41_000);
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);
/// Times the data plane is dropped and loaded again under traffic.
const RELOADS: usize = 6;
/// Pause between two frames of the stream: far below what a veth carries,
/// so no frame is lost before the programs see it.
const FRAME_GAP: Duration = Duration::from_micros(100);

fn build(peer: &NamedNs) {
    ip(&[
        "link",
        "add",
        MAIN_IFACE,
        "address",
        "02:00:00:00:b8:01",
        "type",
        "veth",
        "peer",
        "name",
        PEER_IFACE,
        "address",
        "02:00:00:00:b8:02",
        "netns",
        &peer.name,
    ]);
    sysctl(&format!("net/ipv6/conf/{MAIN_IFACE}/disable_ipv6"), "1");
    ip(&["addr", "add", "198.19.184.1/24", "dev", MAIN_IFACE]);
    ip(&["link", "set", MAIN_IFACE, "up"]);
    ip(&[
        "neigh",
        "replace",
        "198.19.184.2",
        "lladdr",
        "02:00:00:00:b8:02",
        "dev",
        MAIN_IFACE,
        "nud",
        "permanent",
    ]);
    sysctl("net/ipv4/conf/all/forwarding", "1");
    sysctl(&format!("net/ipv4/conf/{MAIN_IFACE}/forwarding"), "1");
    peer.enter(|| sysctl(&format!("net/ipv6/conf/{PEER_IFACE}/disable_ipv6"), "1"));
    peer.ip(&["addr", "add", "198.19.184.2/24", "dev", PEER_IFACE]);
    peer.ip(&["link", "set", PEER_IFACE, "up"]);
}

fn options(pin: &PinDir, mode: AttachMode) -> MainOptions {
    MainOptions {
        iface: MAIN_IFACE.into(),
        mode,
        pin_dir: pin.path.clone(),
        local_addr: LOCAL,
        encap: Encap::Ipip,
    }
}

fn counter(dp: &MainDataplane, c: MainCounter) -> u64 {
    dp.counters()
        .unwrap()
        .into_iter()
        .find(|(k, _)| *k == c)
        .unwrap()
        .1
}

/// Ids of the programs on the hook `mode` uses, as the kernel reports them
/// (BPF_PROG_QUERY for tcx, netlink for XDP).
fn attached_ids(mode: AttachMode) -> Vec<u32> {
    match mode {
        AttachMode::Tc => {
            let (_, programs) =
                SchedClassifier::query_tcx(MAIN_IFACE, TcAttachType::Ingress).unwrap();
            programs.iter().map(|p| p.id()).collect()
        }
        AttachMode::Xdp => common::xdp_prog_id(MAIN_IFACE).into_iter().collect(),
    }
}

/// Streams the flow's segment out of PEER_IFACE (in the peer namespace) until
/// `stop`; returns how many frames the kernel took.
fn stream(peer: &NamedNs, stop: &AtomicBool) -> u64 {
    let mut frame = eth(MAIN_MAC, PEER_MAC, 0x0800);
    frame.extend(
        Tcp {
            src: CLIENT,
            dst: VIP,
            ..Tcp::default()
        }
        .ipv4_packet(),
    );
    peer.enter(|| {
        let ifindex = common::ifindex(PEER_IFACE);
        // SAFETY: plain socket(2); owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: the kernel just returned it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&MAIN_MAC);
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: valid buffer and address of the stated sizes.
            let n = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(
                n,
                frame.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
            sent += 1;
            std::thread::sleep(FRAME_GAP);
        }
        sent
    })
}

fn reload_under_traffic(mode: AttachMode) {
    let _ns = NetNs::new();
    let peer = NamedNs::new("peer");
    build(&peer);
    let pin = PinDir::new();
    let key = FlowKey::new(CLIENT, VIP);

    let mut dp = MainDataplane::load(&options(&pin, mode)).unwrap();
    dp.forward(&key, PARTICIPANT).unwrap();
    let forwarded_before = counter(&dp, MainCounter::ForwardOk);
    let passed_before = counter(&dp, MainCounter::PassNoFlow);
    let mut ids = vec![dp.program_id().unwrap()];
    assert_eq!(attached_ids(mode), ids);

    let stop = AtomicBool::new(false);
    /// Stops the sender however the scope ends: a failed assertion below must be reported,
    /// not leave the scope waiting forever for a sender nobody stops.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let (sent, dp) = std::thread::scope(|s| {
        let sender = s.spawn(|| stream(&peer, &stop));
        let _stop = StopOnDrop(&stop);
        for round in 0..RELOADS {
            std::thread::sleep(Duration::from_millis(30));
            // The process "exits": the program must keep forwarding meanwhile.
            drop(dp);
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(
                attached_ids(mode),
                vec![*ids.last().unwrap()],
                "[{mode:?}] round {round}: down"
            );
            dp = MainDataplane::load(&options(&pin, mode)).unwrap();
            let id = dp.program_id().unwrap();
            assert!(
                !ids.contains(&id),
                "[{mode:?}] round {round}: a new program"
            );
            ids.push(id);
            assert_eq!(
                attached_ids(mode),
                vec![id],
                "[{mode:?}] round {round}: exactly the new program on the hook"
            );
        }
        std::thread::sleep(Duration::from_millis(30));
        stop.store(true, Ordering::Relaxed);
        (sender.join().unwrap(), dp)
    });
    // Let the last frames through the stack.
    std::thread::sleep(Duration::from_millis(100));

    let forwarded = counter(&dp, MainCounter::ForwardOk) - forwarded_before;
    let flow = dp.get(&key).unwrap().unwrap();
    assert!(sent > 500, "[{mode:?}] only {sent} frames sent");
    assert_eq!(
        forwarded,
        sent,
        "[{mode:?}] every frame forwarded across {RELOADS} reloads (flow saw {})",
        flow.packets()
    );
    assert_eq!(flow.packets(), sent, "[{mode:?}] every frame observed");
    assert_eq!(
        counter(&dp, MainCounter::PassNoFlow),
        passed_before,
        "[{mode:?}] nothing passed up"
    );

    let links = pinned_links(&pin.path).unwrap();
    assert_eq!(links.len(), 1, "[{mode:?}] {links:?}");
    assert_eq!(links[0].program_id, *ids.last().unwrap());
    let kind = match mode {
        AttachMode::Tc => LinkKind::TcxIngress,
        AttachMode::Xdp => LinkKind::Xdp,
    };
    assert_eq!(links[0].kind, kind);
}

#[test]
fn reload_under_traffic_tc() {
    require_root!();
    reload_under_traffic(AttachMode::Tc);
}

#[test]
fn reload_under_traffic_xdp() {
    require_root!();
    reload_under_traffic(AttachMode::Xdp);
}

/// The interface under a pinned link was deleted and made again (a lab
/// rebuilt): the defunct link is replaced by a fresh one on the new interface.
#[test]
fn link_of_a_vanished_interface_is_replaced() {
    require_root!();
    let _ns = NetNs::new();
    let peer = NamedNs::new("peer");
    build(&peer);
    let pin = PinDir::new();
    for mode in [AttachMode::Tc, AttachMode::Xdp] {
        drop(MainDataplane::load(&options(&pin, mode)).unwrap());
        let old = pinned_links(&pin.path).unwrap();
        assert_eq!(old.len(), 1, "[{mode:?}]");
        assert_eq!(old[0].ifindex, common::ifindex(MAIN_IFACE));

        ip(&["link", "del", MAIN_IFACE]);
        let gone = pinned_links(&pin.path).unwrap();
        assert_eq!(gone[0].ifindex, 0, "[{mode:?}] the link is defunct");
        build(&peer);

        let dp = MainDataplane::load(&options(&pin, mode)).unwrap();
        let id = dp.program_id().unwrap();
        let new = pinned_links(&pin.path).unwrap();
        assert_eq!(new.len(), 1, "[{mode:?}]");
        assert_eq!(new[0].path, old[0].path, "[{mode:?}] same pin name");
        assert_ne!(new[0].link_id, old[0].link_id, "[{mode:?}] a new link");
        assert_eq!(new[0].ifindex, common::ifindex(MAIN_IFACE), "[{mode:?}]");
        assert_eq!(new[0].program_id, id);
        assert_eq!(attached_ids(mode), vec![id], "[{mode:?}]");
        dp.detach().unwrap();
    }
}

/// Something that is not a link under a link's pin name is refused, not removed.
#[test]
fn foreign_object_under_a_link_name_is_refused() {
    require_root!();
    let _ns = NetNs::new();
    let peer = NamedNs::new("peer");
    build(&peer);
    let pin = PinDir::new();
    // A map pinned where the tc link goes: a map, not a link.
    drop(MainDataplane::load(&options(&pin, AttachMode::Tc)).unwrap());
    let link_path = pin.path.join(format!("link_baton_main_tc_{MAIN_IFACE}"));
    baton_ebpf::detach_pinned(&pin.path).unwrap();
    std::fs::hard_link(pin.path.join("baton_main_stats"), &link_path)
        .or_else(|_| {
            // bpffs has no hard links; pin the map a second time instead.
            let map = aya::maps::MapData::from_pin(pin.path.join("baton_main_stats")).unwrap();
            map.pin(&link_path)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .unwrap();
    match MainDataplane::load(&options(&pin, AttachMode::Tc)) {
        Err(DataplaneError::PinnedLinkMismatch { path, detail }) => {
            assert_eq!(path, link_path);
            assert_eq!(detail, "it is not a bpf link but anon_inode:bpf-map");
        }
        other => panic!("expected PinnedLinkMismatch, got {other:?}"),
    }
    assert!(
        link_path.exists(),
        "a foreign pin is never removed by a load"
    );
    assert!(attached_ids(AttachMode::Tc).is_empty());
}
