//! The participant's egress guard ("fail silent").
//!
//! - A fixture table through BPF_PROG_TEST_RUN: which egress segments of
//!   guarded flows are dropped, which pass, which counter moves. The kernel
//!   gives a test run a placeholder socket that is not a TCP socket, so only
//!   the FIN/RST rule is exercised there (a plain segment of an owned flow
//!   must pass, which also shows the placeholder is not mistaken for an
//!   orphan).
//! - Flows frozen for a move: their forwarded segments are dropped on ingress.
//! - The guard map API, and its pin surviving a restart.
//! - Real sockets killed with SIGKILL: a client namespace and the
//!   participant's (the test thread's) namespace joined by a veth pair. Each
//!   server socket lives in its own child process; the participant's data
//!   plane is dropped (its process "died"), then the children are killed.
//!   A packet capture on the client's side must show no FIN or RST of the
//!   guarded connections, and the client must see neither end of file nor a
//!   reset, while the unguarded and closing controls do see them.
//!
//! ```text
//!  participant ns (test thread)                 client ns (ebt...-client)
//!  ebts0 198.19.187.1/24 [guard on egress] <--> ebtc0 198.19.187.2/24
//!  server 198.19.187.1:8080
//! ```

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_ebpf::{
    AttachMode, DataplaneError, Encap, FlowKey, GuardState, ParticipantCounter,
    ParticipantDataplane, ParticipantOptions, Verdict,
};
use common::frames::{self, eth, Tcp};
use common::{ip, sysctl, NamedNs, NetNs, PinDir};

const IFACE: &str = "ebts0";
const CLIENT_IFACE: &str = "ebtc0";
const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 187, 1), 8080);
const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 187, 2);
/// The main's address in the options (no encapsulated traffic here).
const MAIN: Ipv4Addr = Ipv4Addr::new(198, 19, 186, 1);
/// Fixture flow: a client behind a router, the VIP.
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 185, 7), 41_234);
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);
/// How long a client waits for something the guard must prevent.
const QUIET: Duration = Duration::from_millis(1200);

fn options(pin: &PinDir) -> ParticipantOptions {
    ParticipantOptions {
        iface: IFACE.into(),
        mode: AttachMode::Tc,
        pin_dir: pin.path.clone(),
        main_addr: MAIN,
        encap: Encap::Ipip,
        require_socket: false,
    }
}

fn counters(dp: &ParticipantDataplane) -> std::collections::BTreeMap<ParticipantCounter, u64> {
    dp.counters().unwrap().into_iter().collect()
}

fn key() -> FlowKey {
    FlowKey::new(CLIENT, VIP)
}

/// A segment the participant sends from the VIP to the client.
fn egress(f: impl FnOnce(&mut Tcp)) -> Vec<u8> {
    let mut t = Tcp {
        src: VIP,
        dst: CLIENT,
        payload: b"response bytes".to_vec(),
        ..Tcp::default()
    };
    f(&mut t);
    let mut out = eth([2, 0, 0, 0, 0xbb, 1], [2, 0, 0, 0, 0xbb, 2], 0x0800);
    out.extend(t.ipv4_packet());
    out
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Passed unchanged; this counter moved (None: no counter moved).
    Pass(Option<ParticipantCounter>),
    /// Dropped; this counter moved.
    Drop(ParticipantCounter),
}

struct Fixture {
    description: &'static str,
    frame: Vec<u8>,
    guard: Option<GuardState>,
    expect: Expect,
}

#[rustfmt::skip]
fn fixtures() -> Vec<Fixture> {
    use ParticipantCounter as C;
    let owned = Some(GuardState::Owned);
    let closing = Some(GuardState::Closing);
    let data = egress(|_| {});
    let fin = egress(|t| t.fin = true);
    let rst = egress(|t| {
        t.rst = true;
        t.payload.clear();
    });
    let rst_fin = egress(|t| {
        t.rst = true;
        t.fin = true;
    });
    let bare_fin = egress(|t| {
        t.fin = true;
        t.payload.clear();
        t.timestamps = None;
    });
    // A non-first fragment carries no TCP header: what looks like one (with
    // FIN) is payload, and the guard must not judge it.
    let later_fragment = egress(|t| {
        t.fin = true;
        t.frag_offset = 100;
        t.df = false;
    });
    let inbound_fin = {
        let mut out = eth([2, 0, 0, 0, 0xbb, 2], [2, 0, 0, 0, 0xbb, 1], 0x0800);
        out.extend(
            Tcp {
                src: CLIENT,
                dst: VIP,
                fin: true,
                ..Tcp::default()
            }
            .ipv4_packet(),
        );
        out
    };
    let other_port = egress(|t| {
        t.fin = true;
        t.dst = SocketAddrV4::new(*CLIENT.ip(), CLIENT.port() + 1);
    });
    let udp = {
        let mut f = frames::udp_frame(VIP, CLIENT, b"not tcp");
        f[..12].copy_from_slice(&data[..12]);
        f
    };
    let mut tcp_cut = egress(|t| t.fin = true);
    // Ethernet + IPv4 + 12 bytes of TCP: the flags byte is not in the packet.
    tcp_cut.truncate(14 + 20 + 12);
    tcp_cut[16..18].copy_from_slice(&32u16.to_be_bytes());

    vec![
        Fixture { description: "owned: data passes", frame: data.clone(), guard: owned, expect: Expect::Pass(Some(C::GuardPassOwned)) },
        Fixture { description: "owned: pure ACK passes", frame: egress(|t| t.payload.clear()), guard: owned, expect: Expect::Pass(Some(C::GuardPassOwned)) },
        Fixture { description: "owned: FIN with data dropped", frame: fin.clone(), guard: owned, expect: Expect::Drop(C::GuardDropFin) },
        Fixture { description: "owned: bare FIN dropped", frame: bare_fin.clone(), guard: owned, expect: Expect::Drop(C::GuardDropFin) },
        Fixture { description: "owned: RST dropped", frame: rst.clone(), guard: owned, expect: Expect::Drop(C::GuardDropRst) },
        Fixture { description: "owned: RST+FIN counted as RST", frame: rst_fin.clone(), guard: owned, expect: Expect::Drop(C::GuardDropRst) },
        Fixture { description: "owned: SYN-ACK passes", frame: egress(|t| { t.syn = true; t.payload.clear(); }), guard: owned, expect: Expect::Pass(Some(C::GuardPassOwned)) },
        Fixture { description: "closing: FIN passes", frame: fin.clone(), guard: closing, expect: Expect::Pass(Some(C::GuardPassClosing)) },
        Fixture { description: "closing: RST passes", frame: rst.clone(), guard: closing, expect: Expect::Pass(Some(C::GuardPassClosing)) },
        Fixture { description: "closing: data passes", frame: data.clone(), guard: closing, expect: Expect::Pass(Some(C::GuardPassClosing)) },
        Fixture { description: "frozen: FIN dropped", frame: fin.clone(), guard: Some(GuardState::Frozen), expect: Expect::Drop(C::GuardDropFin) },
        Fixture { description: "frozen: RST dropped", frame: rst.clone(), guard: Some(GuardState::Frozen), expect: Expect::Drop(C::GuardDropRst) },
        Fixture { description: "frozen: data passes as owned", frame: data.clone(), guard: Some(GuardState::Frozen), expect: Expect::Pass(Some(C::GuardPassOwned)) },
        Fixture { description: "unknown state fails closed: FIN dropped", frame: fin.clone(), guard: Some(GuardState::Unknown(7)), expect: Expect::Drop(C::GuardDropFin) },
        Fixture { description: "unknown state: data passes as owned", frame: data.clone(), guard: Some(GuardState::Unknown(7)), expect: Expect::Pass(Some(C::GuardPassOwned)) },
        Fixture { description: "unguarded flow: FIN passes uncounted", frame: fin.clone(), guard: None, expect: Expect::Pass(None) },
        Fixture { description: "unguarded flow: RST passes uncounted", frame: rst.clone(), guard: None, expect: Expect::Pass(None) },
        Fixture { description: "owned flow, another client port: FIN passes", frame: other_port, guard: owned, expect: Expect::Pass(None) },
        Fixture { description: "owned flow, the client's own FIN (other direction) is not this key", frame: inbound_fin, guard: owned, expect: Expect::Pass(None) },
        Fixture { description: "owned flow, non-first fragment passes", frame: later_fragment, guard: owned, expect: Expect::Pass(None) },
        Fixture { description: "owned flow, UDP with the flow's ports passes", frame: udp, guard: owned, expect: Expect::Pass(None) },
        Fixture { description: "owned flow, TCP header cut before the flags passes", frame: tcp_cut, guard: owned, expect: Expect::Pass(None) },
        Fixture { description: "IPv6 passes", frame: frames::ipv6_tcp_frame(), guard: owned, expect: Expect::Pass(None) },
        Fixture { description: "ARP passes", frame: frames::arp_frame(), guard: owned, expect: Expect::Pass(None) },
    ]
}

fn build_single() {
    ip(&[
        "link", "add", IFACE, "type", "veth", "peer", "name", "ebts1",
    ]);
    ip(&["addr", "add", "198.19.187.1/24", "dev", IFACE]);
    ip(&["link", "set", IFACE, "up"]);
    ip(&["link", "set", "ebts1", "up"]);
}

#[test]
fn guard_fixtures() {
    require_root!();
    let _ns = NetNs::new();
    build_single();
    let pin = PinDir::new();
    let dp = ParticipantDataplane::load(&options(&pin)).unwrap();
    for fx in fixtures() {
        let ctx = fx.description;
        dp.guard_remove(&key()).unwrap();
        if let Some(state) = fx.guard {
            match state {
                GuardState::Owned => dp.guard_own(&key()).unwrap(),
                GuardState::Closing => dp.guard_closing(&key()).unwrap(),
                GuardState::Frozen => dp.guard_freeze(&key()).unwrap(),
                GuardState::Unknown(raw) => common::guard_raw_insert(&pin.path, &key(), raw),
            }
        }
        assert_eq!(dp.guard_get(&key()).unwrap(), fx.guard, "{ctx}: setup");
        let before = counters(&dp);
        let out = dp
            .guard_test_run(&fx.frame)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let after = counters(&dp);
        let (verdict, counter) = match fx.expect {
            Expect::Pass(c) => (Verdict::Pass, c),
            Expect::Drop(c) => (Verdict::Drop, Some(c)),
        };
        assert_eq!(
            out.verdict, verdict,
            "{ctx}: verdict (retval {})",
            out.retval
        );
        assert_eq!(
            out.data, fx.frame,
            "{ctx}: the guard never changes a packet"
        );
        for c in ParticipantCounter::ALL {
            let want = u64::from(Some(*c) == counter);
            assert_eq!(after[c] - before[c], want, "{ctx}: counter {}", c.name());
        }
    }
}

/// A flow frozen for a move: the client's segments the main forwards are
/// dropped on ingress (counted), other flows and other protocols are not.
fn frozen_on_ingress(mode: AttachMode) {
    let _ns = NetNs::new();
    build_single();
    let pin = PinDir::new();
    let dp = ParticipantDataplane::load(&ParticipantOptions {
        mode,
        ..options(&pin)
    })
    .unwrap();
    let me = *SERVER.ip();
    let encapsulated = |inner: Vec<u8>| {
        let mut f = eth([2, 0, 0, 0, 0xbb, 1], [2, 0, 0, 0, 0xbb, 2], 0x0800);
        f.extend(frames::ipip(&inner, MAIN, me));
        f
    };
    let segment = |port: u16| Tcp {
        src: SocketAddrV4::new(*CLIENT.ip(), port),
        dst: VIP,
        payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ..Tcp::default()
    };
    let ours = encapsulated(segment(CLIENT.port()).ipv4_packet());
    let neighbour = encapsulated(segment(CLIENT.port() + 1).ipv4_packet());
    let udp = encapsulated(frames::ipv4_packet(*CLIENT.ip(), *VIP.ip(), 17, &[0; 12]));
    let run = |frame: &[u8]| {
        let before = counters(&dp);
        let out = dp.test_run(frame).unwrap();
        let after = counters(&dp);
        let moved: Vec<_> = ParticipantCounter::ALL
            .iter()
            .filter(|c| after[c] != before[c])
            .copied()
            .collect();
        (out.verdict, moved)
    };
    let decap = (Verdict::Pass, vec![ParticipantCounter::DecapOk]);
    let ctx = format!("[{mode:?}]");

    assert_eq!(run(&ours), decap, "{ctx} unguarded");
    dp.guard_own(&key()).unwrap();
    assert_eq!(run(&ours), decap, "{ctx} owned");
    dp.guard_freeze(&key()).unwrap();
    assert_eq!(
        run(&ours),
        (Verdict::Drop, vec![ParticipantCounter::DropFrozen]),
        "{ctx} frozen"
    );
    assert_eq!(run(&neighbour), decap, "{ctx} another flow");
    assert_eq!(run(&udp), decap, "{ctx} not TCP");
    dp.guard_closing(&key()).unwrap();
    assert_eq!(run(&ours), decap, "{ctx} closing");
    dp.guard_remove(&key()).unwrap();
    assert_eq!(run(&ours), decap, "{ctx} removed");
}

#[test]
fn frozen_on_ingress_tc() {
    require_root!();
    frozen_on_ingress(AttachMode::Tc);
}

#[test]
fn frozen_on_ingress_xdp() {
    require_root!();
    frozen_on_ingress(AttachMode::Xdp);
}

#[test]
fn guard_map_api_and_pin() {
    require_root!();
    let _ns = NetNs::new();
    build_single();
    let pin = PinDir::new();
    let other = FlowKey::new(SocketAddrV4::new(*CLIENT.ip(), 9), VIP);
    {
        let dp = ParticipantDataplane::load(&options(&pin)).unwrap();
        assert!(dp.guard_entries().unwrap().is_empty());
        assert_eq!(dp.guard_get(&key()).unwrap(), None);
        dp.guard_remove(&key()).unwrap(); // absent is fine
        dp.guard_own(&key()).unwrap();
        dp.guard_own(&other).unwrap();
        dp.guard_freeze(&other).unwrap();
        assert_eq!(dp.guard_get(&other).unwrap(), Some(GuardState::Frozen));
        dp.guard_closing(&other).unwrap();
        let mut entries = dp.guard_entries().unwrap();
        entries.sort_by_key(|(k, _)| *k);
        let mut want = vec![(key(), GuardState::Owned), (other, GuardState::Closing)];
        want.sort_by_key(|(k, _)| *k);
        assert_eq!(entries, want);
    }
    assert!(pin.path.join("baton_guard").exists());
    // A restarted participant finds what the previous one guarded.
    let dp = ParticipantDataplane::load(&options(&pin)).unwrap();
    assert_eq!(dp.guard_get(&key()).unwrap(), Some(GuardState::Owned));
    assert_eq!(dp.guard_get(&other).unwrap(), Some(GuardState::Closing));
    dp.guard_remove(&key()).unwrap();
    assert_eq!(
        dp.guard_entries().unwrap(),
        vec![(other, GuardState::Closing)]
    );
    drop(dp);

    // A guard map of another shape is refused and kept, like the flow map.
    let pin2 = PinDir::new();
    common::pin_raw_map(&pin2.path.join("baton_guard"), 1, 12, 8, 65_536);
    match ParticipantDataplane::load(&options(&pin2)) {
        Err(DataplaneError::PinnedMapMismatch { path, detail }) => {
            assert_eq!(path, pin2.path.join("baton_guard"));
            assert_eq!(detail, "value size 8, expected 4");
        }
        other => panic!("expected PinnedMapMismatch, got {other:?}"),
    }
    assert!(pin2.path.join("baton_guard").exists());
}

/// A TCP socket bound to CLIENT_ADDR:port and connected to SERVER, created
/// in the current namespace, with an optional small receive buffer.
fn connect_from(port: u16, rcvbuf: Option<libc::c_int>) -> TcpStream {
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
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: valid fd, option buffers and addresses of the stated sizes.
    unsafe {
        if let Some(size) = rcvbuf {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &size as *const _ as *const _,
                4,
            );
        }
        let local = sockaddr(SocketAddrV4::new(CLIENT_ADDR, port));
        assert_eq!(
            libc::bind(fd, &local as *const _ as *const libc::sockaddr, len),
            0
        );
        let remote = sockaddr(SERVER);
        assert_eq!(
            libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len),
            0,
            "connect: {}",
            std::io::Error::last_os_error()
        );
    }
    stream
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing
/// test leaves no process behind.
struct Child(std::process::Child);

impl Child {
    fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Moves `conn` into a fresh `sleep` process (the only holder of the socket
/// from then on), so that killing the process is what closes it.
fn hand_to_child(conn: TcpStream) -> Child {
    // dup() clears FD_CLOEXEC, so the child inherits the duplicate.
    // SAFETY: dup of a valid fd; the result is owned below.
    let dup = unsafe { libc::dup(conn.as_raw_fd()) };
    assert!(dup >= 0);
    // SAFETY: the kernel just returned it.
    let dup = unsafe { OwnedFd::from_raw_fd(dup) };
    let child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    drop(dup);
    drop(conn);
    Child(child)
}

/// Bytes in `stream`'s receive queue once it stops growing.
fn settled_unread(stream: &TcpStream) -> usize {
    let unread = || {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes an int.
        unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut n) };
        usize::try_from(n).unwrap_or(0)
    };
    let mut last = unread();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = unread();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// TCP segments from SERVER seen on the client's interface: (client port, flags byte).
struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(u16, u8)>>>,
}

impl Capture {
    /// Starts capturing on CLIENT_IFACE; call inside the client namespace.
    fn start() -> Self {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, libc::c_int::from(proto)) };
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        // SAFETY: the kernel just returned it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = common::ifindex(CLIENT_IFACE) as i32;
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: valid fd, address and option of the stated sizes.
        unsafe {
            assert_eq!(
                libc::bind(
                    fd.as_raw_fd(),
                    &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                ),
                0
            );
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &timeout as *const _ as *const _,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 70_000];
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: valid buffer of the stated size.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let Ok(n) = usize::try_from(n) else { continue };
                let f = &buf[..n];
                if n < 14 + 20 + 14 || f[12..14] != [8, 0] || f[23] != 6 {
                    continue;
                }
                let ihl = usize::from(f[14] & 0x0f) * 4;
                if f[26..30] != SERVER.ip().octets() || n < 14 + ihl + 14 {
                    continue;
                }
                let tcp = &f[14 + ihl..];
                if u16::from_be_bytes([tcp[0], tcp[1]]) != SERVER.port() {
                    continue;
                }
                seen.push((u16::from_be_bytes([tcp[2], tcp[3]]), tcp[13]));
            }
            seen
        });
        Capture {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(u16, u8)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the client saw after the server's process was killed.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Nothing: no end of file, no reset (bytes read before it went quiet).
    Quiet(usize),
    Eof,
    Reset,
}

/// Reads until the connection ends or stays quiet for QUIET.
fn watch(mut stream: TcpStream) -> Seen {
    stream.set_read_timeout(Some(QUIET)).unwrap();
    let mut total = 0;
    let mut buf = vec![0u8; 65_536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Seen::Eof,
            Ok(n) => total += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Seen::Quiet(total)
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Seen::Reset,
            Err(e) => panic!("client read: {e}"),
        }
    }
}

const FIN: u8 = 0x01;
const RST: u8 = 0x04;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// Idle connection: the kernel sends a FIN when the process dies.
    Idle,
    /// The server has unread data: the kernel sends a RST.
    Unread,
    /// The server has queued data the client has no room for: the orphan
    /// (FIN_WAIT1) sends it when the client reads.
    Queued,
}

#[test]
fn killed_process_sends_nothing_on_guarded_flows() {
    require_root!();
    let _ns = NetNs::new();
    let client = NamedNs::new("client");
    ip(&[
        "link",
        "add",
        IFACE,
        "type",
        "veth",
        "peer",
        "name",
        CLIENT_IFACE,
        "netns",
        &client.name,
    ]);
    sysctl(&format!("net/ipv6/conf/{IFACE}/disable_ipv6"), "1");
    ip(&["addr", "add", "198.19.187.1/24", "dev", IFACE]);
    ip(&["link", "set", IFACE, "up"]);
    client.enter(|| sysctl(&format!("net/ipv6/conf/{CLIENT_IFACE}/disable_ipv6"), "1"));
    client.ip(&["addr", "add", "198.19.187.2/24", "dev", CLIENT_IFACE]);
    client.ip(&["link", "set", CLIENT_IFACE, "up"]);
    let pin = PinDir::new();
    let dp = ParticipantDataplane::load(&options(&pin)).unwrap();
    let listener = TcpListener::bind(SERVER).unwrap();
    let capture = client.enter(Capture::start);

    // (case, guard, client port)
    let cases = [
        (Case::Idle, Some(GuardState::Owned), 42_001u16),
        (Case::Unread, Some(GuardState::Owned), 42_002),
        (Case::Queued, Some(GuardState::Owned), 42_003),
        (Case::Idle, None, 42_011),
        (Case::Unread, None, 42_012),
        (Case::Idle, Some(GuardState::Closing), 42_021),
    ];
    let mut live = Vec::new();
    for (case, guard, port) in cases {
        let rcvbuf = (case == Case::Queued).then_some(4096);
        let stream = client.enter(|| connect_from(port, rcvbuf));
        let (mut conn, peer) = listener.accept().unwrap();
        assert_eq!(
            peer,
            std::net::SocketAddr::V4(SocketAddrV4::new(CLIENT_ADDR, port))
        );
        let key = FlowKey::new(SocketAddrV4::new(CLIENT_ADDR, port), SERVER);
        match guard {
            Some(GuardState::Owned) => dp.guard_own(&key).unwrap(),
            Some(GuardState::Closing) => dp.guard_closing(&key).unwrap(),
            _ => {}
        }
        // Live traffic of a guarded flow passes.
        conn.write_all(b"hello").unwrap();
        let mut hello = [0u8; 5];
        (&stream).read_exact(&mut hello).unwrap();
        assert_eq!(&hello, b"hello", "port {port}");
        let mut written = 0;
        match case {
            Case::Idle => {}
            Case::Unread => {
                (&stream).write_all(&[0x75; 100]).unwrap();
                let start = Instant::now();
                loop {
                    let mut queued: libc::c_int = 0;
                    // SAFETY: FIONREAD writes an int.
                    unsafe { libc::ioctl(conn.as_raw_fd(), libc::FIONREAD, &mut queued) };
                    if queued == 100 {
                        break;
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(5),
                        "data never arrived"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Case::Queued => {
                conn.set_nonblocking(true).unwrap();
                let chunk = vec![0x71u8; 65_536];
                let start = Instant::now();
                loop {
                    match conn.write(&chunk) {
                        Ok(n) => written += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            // The window is shut: what is queued now stays queued.
                            if start.elapsed() > Duration::from_millis(300) {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => panic!("server write: {e}"),
                    }
                }
                assert!(written > 8_192, "only {written} bytes queued");
            }
        }
        // What the client holds unread when the process dies: with the
        // window shut, nothing more arrives unless the orphan sends it.
        let held = if case == Case::Queued {
            settled_unread(&stream)
        } else {
            0
        };
        assert!(held <= written, "port {port}");
        let child = hand_to_child(conn);
        live.push((case, guard, port, stream, child, held));
    }

    // The participant process is gone: its Rust objects drop, the pinned
    // guard stays. Then the kernel closes each socket as its process dies.
    drop(dp);
    for (_, _, _, _, child, _) in &mut live {
        child.kill();
    }

    let watchers: Vec<_> = live
        .into_iter()
        .map(|(case, guard, port, stream, _, held)| {
            std::thread::spawn(move || {
                if case == Case::Unread && guard.is_some() {
                    // The socket is gone: a new segment from the client is
                    // answered with a reset from the kernel's reply socket.
                    (&stream).write_all(b"more").unwrap();
                }
                (case, guard, port, held, watch(stream))
            })
        })
        .collect();
    let outcomes: Vec<_> = watchers.into_iter().map(|w| w.join().unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let captured = capture.finish();

    for (case, guard, port, held, seen) in outcomes {
        let ctx = format!("{case:?} {guard:?} port {port}");
        let flags: u8 = captured
            .iter()
            .filter(|(p, _)| *p == port)
            .fold(0, |acc, (_, f)| acc | f);
        assert!(
            captured.iter().any(|(p, _)| *p == port),
            "{ctx}: the capture saw the connection"
        );
        match (guard, case) {
            (Some(GuardState::Owned), _) => {
                assert_eq!(flags & (FIN | RST), 0, "{ctx}: FIN/RST reached the client");
                let Seen::Quiet(read) = seen else {
                    panic!("{ctx}: the client saw {seen:?}")
                };
                if case == Case::Queued {
                    assert_eq!(
                        read, held,
                        "{ctx}: the client got data beyond what it held when the process died: \
                         the orphan's data got out"
                    );
                }
            }
            (None, Case::Idle) | (Some(GuardState::Closing), Case::Idle) => {
                assert_eq!(seen, Seen::Eof, "{ctx}");
                assert_ne!(flags & FIN, 0, "{ctx}: the FIN got out");
            }
            (None, Case::Unread) => {
                assert_eq!(seen, Seen::Reset, "{ctx}");
                assert_ne!(flags & RST, 0, "{ctx}: the RST got out");
            }
            other => unreachable!("{other:?}"),
        }
    }

    // A restarted participant: the guard entries and counters survived.
    let dp = ParticipantDataplane::load(&options(&pin)).unwrap();
    let c = counters(&dp);
    assert!(c[&ParticipantCounter::GuardDropFin] >= 1, "{c:?}");
    assert!(
        c[&ParticipantCounter::GuardDropRst] >= 2,
        "active reset and reply reset: {c:?}"
    );
    assert!(c[&ParticipantCounter::GuardDropOrphan] >= 1, "{c:?}");
    assert!(c[&ParticipantCounter::GuardPassClosing] >= 1, "{c:?}");
    assert!(c[&ParticipantCounter::GuardPassOwned] >= 3, "{c:?}");
    assert_eq!(dp.guard_entries().unwrap().len(), 4);
}
