//! Real traffic through attached programs: a client connects to the VIP,
//! the main's program encapsulates its segments to a participant, the
//! participant's program decapsulates them into a kernel socket listening on
//! the VIP, and the participant answers the client directly.
//!
//! ```text
//!  client ns                 main ns (test thread)          participant ns
//!  c0 198.18.10.2 <--------> m0 198.18.10.1 [main prog]
//!                            m1 198.18.20.1 <-------------> p0 198.18.20.2 [participant prog]
//!  c1 198.18.30.2 <----------------------------------------> p1 198.18.30.1
//!  VIP 203.0.113.10 via m0   VIP on lo, no listener          VIP on lo, listener :8080
//! ```
//!
//! The main holds the VIP but has no socket on the port: any client segment
//! its kernel saw would be answered with a reset, so a working connection
//! proves every segment went through the programs. A router's "fragmentation
//! needed" about the participant's segments reaches the VIP on the main and
//! must end up lowering the participant's path MTU.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use baton_ebpf::{
    AttachMode, Encap, FlowKey, FlowState, MainCounter, MainDataplane, MainOptions,
    ParticipantCounter, ParticipantDataplane, ParticipantOptions,
};
use common::{frames, ip, sysctl, NamedNs, NetNs, PinDir};

const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 8080);
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 10, 2), 41_000);
const MAIN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 20, 1);
const PARTICIPANT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 20, 2);
/// Longest wait for anything that should happen.
const PATIENCE: Duration = Duration::from_secs(10);
const M0_MAC: [u8; 6] = [2, 0, 0, 0, 0x10, 1];
const C0_MAC: [u8; 6] = [2, 0, 0, 0, 0x10, 2];

fn build(client: &NamedNs, part: &NamedNs) {
    ip(&[
        "link",
        "add",
        "m0",
        "address",
        "02:00:00:00:10:01",
        "type",
        "veth",
        "peer",
        "name",
        "c0",
        "address",
        "02:00:00:00:10:02",
        "netns",
        &client.name,
    ]);
    ip(&[
        "link", "add", "m1", "type", "veth", "peer", "name", "p0", "netns", &part.name,
    ]);
    client.ip(&[
        "link", "add", "c1", "type", "veth", "peer", "name", "p1", "netns", &part.name,
    ]);

    ip(&["addr", "add", "198.18.10.1/24", "dev", "m0"]);
    ip(&["addr", "add", "198.18.20.1/24", "dev", "m1"]);
    ip(&["addr", "add", "203.0.113.10/32", "dev", "lo"]);
    for dev in ["m0", "m1"] {
        ip(&["link", "set", dev, "up"]);
    }
    sysctl("net/ipv4/conf/all/forwarding", "1");
    sysctl("net/ipv4/conf/m0/forwarding", "1");

    client.ip(&["addr", "add", "198.18.10.2/24", "dev", "c0"]);
    client.ip(&["addr", "add", "198.18.30.2/24", "dev", "c1"]);
    client.ip(&["link", "set", "c0", "up"]);
    client.ip(&["link", "set", "c1", "up"]);
    client.ip(&[
        "route",
        "add",
        "203.0.113.10/32",
        "via",
        "198.18.10.1",
        "dev",
        "c0",
    ]);
    client.enter(|| {
        sysctl("net/ipv4/conf/all/rp_filter", "0");
        sysctl("net/ipv4/conf/c1/rp_filter", "0");
    });

    part.ip(&["addr", "add", "198.18.20.2/24", "dev", "p0"]);
    part.ip(&["addr", "add", "198.18.30.1/24", "dev", "p1"]);
    part.ip(&["addr", "add", "203.0.113.10/32", "dev", "lo"]);
    part.ip(&["link", "set", "p0", "up"]);
    part.ip(&["link", "set", "p1", "up"]);
    part.ip(&[
        "route",
        "add",
        "198.18.10.0/24",
        "via",
        "198.18.30.2",
        "dev",
        "p1",
    ]);
    part.enter(|| {
        sysctl("net/ipv4/conf/all/rp_filter", "0");
        sysctl("net/ipv4/conf/p0/rp_filter", "0");
    });
}

/// A TCP socket bound to CLIENT, connected to the VIP (created in the
/// current namespace).
fn connect_from_client() -> std::io::Result<TcpStream> {
    // SAFETY: plain socket(2); the fd is owned by the TcpStream below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0);
    // SAFETY: we own fd; the TcpStream closes it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let one: libc::c_int = 1;
    let timeout = libc::timeval {
        tv_sec: PATIENCE.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: valid fd and option buffers of the stated sizes.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const _,
            4,
        );
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &timeout as *const _ as *const _,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let local = sockaddr(CLIENT);
        assert_eq!(
            libc::bind(fd, &local as *const _ as *const libc::sockaddr, len),
            0
        );
        let remote = sockaddr(VIP);
        if libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    stream.set_read_timeout(Some(PATIENCE))?;
    Ok(stream)
}

/// Makes the kernel resolve `addr`'s MAC (a UDP datagram to the discard
/// port) and waits until the neighbour entry is valid.
fn resolve_neighbour(addr: Ipv4Addr) {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let start = Instant::now();
    loop {
        let _ = socket.send_to(b"arp", SocketAddrV4::new(addr, 9));
        let out = std::process::Command::new("ip")
            .args(["neigh", "show", &addr.to_string()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("REACHABLE") || text.contains("STALE") {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "neighbour {addr} not resolved: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main_counter(dp: &MainDataplane, c: MainCounter) -> u64 {
    dp.counters()
        .unwrap()
        .into_iter()
        .find(|(k, _)| *k == c)
        .unwrap()
        .1
}

fn part_counter(dp: &ParticipantDataplane, c: ParticipantCounter) -> u64 {
    dp.counters()
        .unwrap()
        .into_iter()
        .find(|(k, _)| *k == c)
        .unwrap()
        .1
}

fn exchange(stream: &mut TcpStream, msg: &str) -> String {
    stream.write_all(msg.as_bytes()).unwrap();
    let mut buf = vec![0u8; msg.len()];
    stream
        .read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("no answer to {msg:?}: {e}"));
    String::from_utf8(buf).unwrap()
}

fn handoff(mode: AttachMode, encap: Encap) {
    let _ns = NetNs::new();
    let client = NamedNs::new("client");
    let part = NamedNs::new("part");
    build(&client, &part);
    let main_pin = PinDir::new();
    let part_pin = PinDir::new();

    let main = MainDataplane::load(&MainOptions {
        iface: "m0".into(),
        mode,
        pin_dir: main_pin.path.clone(),
        local_addr: MAIN_ADDR,
        encap,
    })
    .unwrap();
    let participant = part.enter(|| {
        ParticipantDataplane::load(&ParticipantOptions {
            iface: "p0".into(),
            mode,
            pin_dir: part_pin.path.clone(),
            main_addr: MAIN_ADDR,
            encap,
            require_socket: false,
        })
        .unwrap()
    });
    if mode == AttachMode::Xdp {
        // XDP cannot resolve neighbours; make sure the main knows the
        // participant's MAC, as it would from its control connection.
        resolve_neighbour(PARTICIPANT_ADDR);
        // The client is a local veth peer: have it send complete checksums
        // as a NIC would (see disable_tx_checksum).
        client.enter(|| common::disable_tx_checksum("c0"));
    }

    // The participant's server: echo in upper case.
    let listener = part.enter(|| TcpListener::bind(VIP).unwrap());
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        assert_eq!(peer, std::net::SocketAddr::V4(CLIENT));
        let mut buf = [0u8; 256];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => conn.write_all(&buf[..n].to_ascii_uppercase()).unwrap(),
            }
        }
    });

    let key = FlowKey::new(CLIENT, VIP);
    main.forward(&key, PARTICIPANT_ADDR).unwrap();

    let mut stream = client.enter(connect_from_client).unwrap_or_else(|e| {
        panic!(
            "connect: {e}\nmain: {:?}\nparticipant: {:?}\nflow: {:?}",
            main.counters().unwrap(),
            participant.counters().unwrap(),
            main.get(&key).unwrap()
        )
    });
    assert_eq!(exchange(&mut stream, "hello baton"), "HELLO BATON");

    let v = main.get(&key).unwrap().unwrap();
    assert!(
        v.packets() >= 3,
        "SYN, ACK and data went through the main: {v:?}"
    );
    assert_ne!(v.last_ack(), 0, "{v:?}");
    assert!(
        v.last_tsecr().is_some(),
        "Linux clients send timestamps: {v:?}"
    );
    assert!(part_counter(&participant, ParticipantCounter::DecapOk) >= 3);
    assert_eq!(
        part_counter(&participant, ParticipantCounter::DropBadSource),
        0
    );

    // Freeze: the client's data is dropped (and observed), never answered.
    main.freeze(&key).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    stream.write_all(b"moving").unwrap();
    let mut buf = [0u8; 6];
    let err = stream.read_exact(&mut buf).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err:?}"
    );
    assert!(main_counter(&main, MainCounter::DropFrozen) >= 1);
    let frozen = main.get(&key).unwrap().unwrap();
    assert_eq!(frozen.state(), Some(FlowState::Frozen));
    assert!(
        frozen.packets() >= 1,
        "the frozen flow's segments are observed"
    );

    // Forward again: the client's retransmission gets through.
    main.forward(&key, PARTICIPANT_ADDR).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let start = Instant::now();
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"MOVING");
    assert!(start.elapsed() < PATIENCE);
    assert_eq!(exchange(&mut stream, "still here"), "STILL HERE");

    // A router between the participant and the client says 1280 bytes fit.
    // It quotes the participant's next segment: sequence = the client's
    // latest ACK, which the main's program recorded.
    let next_seq = main.get(&key).unwrap().unwrap().last_ack();
    let quoted = frames::Tcp {
        src: VIP,
        dst: CLIENT,
        seq: next_seq,
        payload: vec![0; 1448],
        ..frames::Tcp::default()
    };
    let icmp =
        frames::frag_needed_frame(Ipv4Addr::new(198, 18, 10, 254), &quoted.ipv4_packet(), 1280);
    let mut frame = frames::eth(M0_MAC, C0_MAC, 0x0800);
    frame.extend_from_slice(&icmp[14..]);
    client.enter(|| common::send_frame("c0", &frame));
    let start = Instant::now();
    loop {
        let out = std::process::Command::new("ip")
            .args(["-n", &part.name, "route", "get", "198.18.10.2"])
            .output()
            .unwrap();
        let route = String::from_utf8_lossy(&out.stdout).to_string();
        if route.contains("mtu 1280") {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "participant path MTU not lowered: {route}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(main_counter(&main, MainCounter::IcmpToParticipant), 1);

    drop(stream);
    server.join().unwrap();
    let forwarded = main_counter(&main, MainCounter::ForwardOk)
        + main_counter(&main, MainCounter::ForwardNeigh);
    assert!(forwarded >= 6, "forwarded {forwarded}");
}

#[test]
fn handoff_tc_ipip() {
    require_root!();
    handoff(AttachMode::Tc, Encap::Ipip);
}

#[test]
fn handoff_tc_gue() {
    require_root!();
    handoff(AttachMode::Tc, Encap::Gue { port: 6080 });
}

#[test]
fn handoff_xdp_ipip() {
    require_root!();
    handoff(AttachMode::Xdp, Encap::Ipip);
}

#[test]
fn handoff_xdp_gue() {
    require_root!();
    handoff(AttachMode::Xdp, Encap::Gue { port: 6080 });
}
