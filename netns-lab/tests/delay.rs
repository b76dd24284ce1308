//! End-to-end tests of link impairments: delay, jitter and loss applied by delay lines.
//!
//! They build real labs (root needed; skipped with a loud message without it, a failure under
//! `CI=true`) on /22s of 198.19.192.0/21 and 198.19.184.0/21, with lab names `labdl1` to
//! `labdl4`, so they run in parallel with each other and with every other lab test. Bounds are
//! wide enough that a loaded machine cannot make them flake, and narrow enough that a delay
//! line that skips a direction, reorders, or loses the wrong share fails them. Measured figures
//! are written to stderr.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use baton_lab::offload::{self, End};
use baton_lab::{Lab, Topology};
use common::{have_root, icmp_checksum, in_netns, namespaces_of, Cleanup};
use nix::sys::socket::{
    recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol,
    SockType, SockaddrIn,
};
use nix::sys::time::TimeVal;
use sha2::{Digest, Sha256};

/// How long one echo request waits for its reply.
const ECHO_TIMEOUT: Duration = Duration::from_secs(1);

/// Writes a measured figure where the test log shows it even when the test passes.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn topology(yaml: &str) -> Topology {
    Topology::from_yaml(yaml).expect("test topology parses")
}

/// A raw ICMP socket in one namespace that sends echo requests and times their replies.
struct Pinger {
    socket: OwnedFd,
    id: u16,
    seq: u16,
}

impl Pinger {
    fn new(ns: &str) -> Pinger {
        static NEXT_ID: AtomicU16 = AtomicU16::new(0x6c00);
        let socket = in_netns(ns, || {
            socket(
                AddressFamily::Inet,
                SockType::Raw,
                SockFlag::empty(),
                SockProtocol::Icmp,
            )
        })
        .expect("raw ICMP socket");
        setsockopt(&socket, sockopt::ReceiveTimeout, &TimeVal::new(0, 20_000))
            .expect("SO_RCVTIMEO");
        Pinger {
            socket,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            seq: 0,
        }
    }

    /// One echo to `dst`: its round-trip time, or `None` if no reply came in [`ECHO_TIMEOUT`].
    fn ping(&mut self, dst: Ipv4Addr) -> Option<Duration> {
        self.seq = self.seq.wrapping_add(1);
        let mut request = vec![8, 0, 0, 0];
        request.extend_from_slice(&self.id.to_be_bytes());
        request.extend_from_slice(&self.seq.to_be_bytes());
        request.extend_from_slice(&[0x5a; 56]);
        let checksum = icmp_checksum(&request);
        request[2..4].copy_from_slice(&checksum.to_be_bytes());
        let to = SockaddrIn::from(SocketAddrV4::new(dst, 0));
        let sent = Instant::now();
        sendto(self.socket.as_raw_fd(), &request, &to, MsgFlags::empty()).expect("sendto");
        let mut buf = [0u8; 1500];
        while sent.elapsed() < ECHO_TIMEOUT {
            // Raw sockets see every ICMP packet of the namespace; wait for this reply.
            let Ok((len, _)) = recvfrom::<SockaddrIn>(self.socket.as_raw_fd(), &mut buf) else {
                continue;
            };
            let header_len = usize::from(buf[0] & 0x0f) * 4;
            let Some(icmp) = buf.get(header_len..len) else {
                continue;
            };
            if icmp.len() >= 8
                && icmp[0] == 0
                && icmp[4..6] == self.id.to_be_bytes()
                && icmp[6..8] == self.seq.to_be_bytes()
            {
                return Some(sent.elapsed());
            }
        }
        None
    }

    /// Pings until a reply comes (ARP resolved on the way), for at most 10 s.
    fn warm_up(&mut self, dst: Ipv4Addr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping(dst).is_some() {
                return;
            }
        }
        panic!("no echo reply from {dst} within 10 s");
    }

    /// `count` echoes `gap` apart; every one must be answered.
    fn rtts(&mut self, dst: Ipv4Addr, count: usize, gap: Duration) -> Vec<Duration> {
        (0..count)
            .map(|i| {
                thread::sleep(gap);
                self.ping(dst)
                    .unwrap_or_else(|| panic!("echo {i} to {dst} got no reply"))
            })
            .collect()
    }
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// A bulk TCP transfer between two nodes: what was sent and received, and how fast.
struct Transfer {
    sent: Vec<u8>,
    received: Vec<u8>,
    bytes_received: u64,
    elapsed: Duration,
}

impl Transfer {
    fn mbit_per_second(&self) -> f64 {
        self.bytes_received as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// Sends `bytes` pseudo-random bytes over TCP from node `from` to node `to` and hashes both
/// ends with SHA-256.
fn transfer(lab: &Lab, from: &str, to: &str, bytes: usize) -> Transfer {
    const CHUNK: usize = 64 * 1024;
    let from_ns = lab.node(from).expect("from").ns.clone();
    let to_node = lab.node(to).expect("to").clone();
    let listener =
        in_netns(&to_node.ns, move || TcpListener::bind((to_node.addr, 0))).expect("listener");
    let target = listener.local_addr().expect("listener address");
    let receiver = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let mut hash = Sha256::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let len = stream.read(&mut buf).expect("read");
            if len == 0 {
                break;
            }
            hash.update(&buf[..len]);
            total += len as u64;
        }
        (hash.finalize().to_vec(), total, Instant::now())
    });
    let mut stream = in_netns(&from_ns, move || {
        TcpStream::connect_timeout(&target, Duration::from_secs(5))
    })
    .expect("connect");
    let start = Instant::now();
    let mut hash = Sha256::new();
    let mut state: u64 = 0x0123_4567_89ab_cdef ^ bytes as u64;
    let mut chunk = vec![0u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let len = left.min(CHUNK);
        stream.write_all(&chunk[..len]).expect("write");
        hash.update(&chunk[..len]);
        left -= len;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let (received, bytes_received, end) = receiver.join().expect("receiver");
    Transfer {
        sent: hash.finalize().to_vec(),
        received,
        bytes_received,
        elapsed: end - start,
    }
}

/// Sends `count` numbered UDP datagrams from node `from` to node `to`, `burst` at a time with
/// `pause` between bursts, and returns the numbers in the order they arrived.
fn udp_stream(
    lab: &Lab,
    from: &str,
    to: &str,
    count: u32,
    burst: u32,
    pause: Duration,
) -> Vec<u32> {
    let from_node = lab.node(from).expect("from").clone();
    let to_node = lab.node(to).expect("to").clone();
    let receiver =
        in_netns(&to_node.ns, move || UdpSocket::bind((to_node.addr, 0))).expect("bind receiver");
    // Room for the whole stream, so that the receiving socket never drops a datagram.
    setsockopt(&receiver, sockopt::RcvBufForce, &(8 << 20)).expect("SO_RCVBUFFORCE");
    receiver
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("read timeout");
    let target = receiver.local_addr().expect("receiver address");
    let collector = thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        // The stream ends when nothing arrived for a second.
        while let Ok(len) = receiver.recv(&mut buf) {
            if len == 100 {
                seen.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
            }
        }
        seen
    });
    let sender =
        in_netns(&from_node.ns, move || UdpSocket::bind((from_node.addr, 0))).expect("bind sender");
    let mut datagram = [0u8; 100];
    for seq in 0..count {
        datagram[..4].copy_from_slice(&seq.to_be_bytes());
        sender.send_to(&datagram, target).expect("send");
        if seq % burst == burst - 1 {
            thread::sleep(pause);
        }
    }
    collector.join().expect("collector")
}

/// The delay-line daemons of lab `name` that are alive (not zombies), found by their command
/// line, which names the lab's state directory.
fn delay_line_processes(name: &str) -> BTreeSet<i32> {
    let marker = format!("/run/baton-lab/{name}/delay-line-");
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let (Ok(cmdline), Ok(stat)) = (
            std::fs::read(entry.path().join("cmdline")),
            std::fs::read_to_string(entry.path().join("stat")),
        ) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if cmdline.contains(" delay-line ") && cmdline.contains(&marker) && !zombie {
            found.insert(pid);
        }
    }
    found
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}/ns/net")).exists()
}

fn ipv4_of(lab: &Lab, node: &str, dev: &str) -> String {
    let output = lab
        .run(node, &["ip", "-o", "-4", "addr", "show", "dev", dev])
        .expect("ip addr");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn delay_adds_up_per_link_keeps_the_rate_and_the_data() {
    const NAME: &str = "labdl1";
    if !have_root("delay_adds_up_per_link_keeps_the_rate_and_the_data") {
        return;
    }
    let _cleanup = Cleanup(NAME);
    let lab = Lab::up(&topology(
        "name: labdl1\nblock: 198.19.192.0/22\nvip: 203.0.113.10\nnodes:\n\
         - { name: main, role: main }\n\
         - { name: c1, role: client, delay: 10ms, rate: 400mbit }\n\
         - { name: p1, role: participant, delay: 10ms, rate: 400mbit }\n",
    ))
    .expect("lab comes up");
    assert_eq!(
        namespaces_of(NAME),
        ["router", "main", "c1", "p1", "c1_dl", "p1_dl"]
            .iter()
            .map(|node| format!("{NAME}-{node}"))
            .collect()
    );

    // One delay line per impaired link, running in its own namespace.
    let lines = lab.delay_lines();
    let nodes: Vec<&str> = lines.iter().map(|line| line.node.as_str()).collect();
    assert_eq!(nodes, ["c1", "p1"]);
    let mut pids = BTreeSet::new();
    for line in &lines {
        assert_eq!(line.ns, format!("{NAME}-{}_dl", line.node));
        assert_eq!(line.impairment.delay, Duration::from_millis(10));
        let pid = line.pid().expect("pid file");
        let in_namespace =
            baton_lab::netns::processes_in(std::slice::from_ref(&line.ns)).expect("processes");
        assert_eq!(in_namespace, [(pid, line.ns.clone())], "{}", line.node);
        pids.insert(pid);
    }
    assert_eq!(delay_line_processes(NAME), pids);

    // Addressing is that of a plain link: router .1, node .2; the rate applies on both ends;
    // the offloads next to the delay line are off.
    assert!(ipv4_of(&lab, "c1", "eth0").contains("inet 198.19.193.2/24"));
    assert!(ipv4_of(&lab, "router", "veth1").contains("inet 198.19.193.1/24"));
    assert!(ipv4_of(&lab, "p1", "eth0").contains("inet 198.19.194.2/24"));
    for (node, dev) in [
        ("c1", "eth0"),
        ("router", "veth1"),
        ("p1", "eth0"),
        ("router", "veth2"),
    ] {
        let qdisc = lab
            .run(node, &["tc", "qdisc", "show", "dev", dev])
            .expect("tc");
        let text = String::from_utf8_lossy(&qdisc.stdout);
        assert!(
            text.contains("tbf") && text.contains("rate 400Mbit"),
            "{node} {dev}: {text}"
        );
    }
    let c1 = lab.node("c1").expect("c1").clone();
    let p1 = lab.node("p1").expect("p1").clone();
    let main = lab.node("main").expect("main").clone();
    let router_ns = lab.node("router").expect("router").ns.clone();
    let none: Vec<String> = Vec::new();
    assert_eq!(
        offload::offenders(&c1.ns, "eth0", End::Sender).expect("c1"),
        none
    );
    assert_eq!(
        offload::offenders(&router_ns, "veth1", End::Sender).expect("router"),
        none
    );
    for iface in ["to-node", "to-router"] {
        assert_eq!(
            offload::offenders(&lines[0].ns, iface, End::DelayLine).expect("delay line"),
            none
        );
    }

    // 10 ms on each of four link crossings between c1 and p1; 20 ms to the router; the main's
    // unimpaired link stays fast.
    let mut from_c1 = Pinger::new(&c1.ns);
    from_c1.warm_up(p1.addr);
    let c1_p1 = median(&from_c1.rtts(p1.addr, 11, Duration::from_millis(20)));
    let c1_router = median(&from_c1.rtts(c1.gateway, 11, Duration::from_millis(20)));
    let mut from_main = Pinger::new(&main.ns);
    from_main.warm_up(p1.addr);
    let main_p1 = median(&from_main.rtts(p1.addr, 11, Duration::from_millis(20)));
    let main_router = median(&from_main.rtts(main.gateway, 11, Duration::from_millis(20)));
    report(&format!(
        "{NAME}: median RTT c1-p1 {:.2} ms, c1-router {:.2} ms, main-p1 {:.2} ms, main-router {:.3} ms",
        millis(c1_p1),
        millis(c1_router),
        millis(main_p1),
        millis(main_router)
    ));
    let ms = Duration::from_millis;
    assert!((ms(38)..=ms(60)).contains(&c1_p1), "c1-p1 {c1_p1:?}");
    assert!(
        (ms(19)..=ms(30)).contains(&c1_router),
        "c1-router {c1_router:?}"
    );
    assert!((ms(19)..=ms(30)).contains(&main_p1), "main-p1 {main_p1:?}");
    assert!(main_router < ms(5), "main-router {main_router:?}");

    // Bulk TCP across both delayed links arrives intact, within the rate limit.
    let bulk = transfer(&lab, "p1", "c1", 48 << 20);
    report(&format!(
        "{NAME}: TCP p1->c1 {} MiB in {:.2} s = {:.0} Mbit/s over two 400mbit links with 10ms each",
        bulk.bytes_received >> 20,
        bulk.elapsed.as_secs_f64(),
        bulk.mbit_per_second()
    ));
    assert_eq!(bulk.bytes_received, 48 << 20);
    assert_eq!(
        bulk.received, bulk.sent,
        "SHA-256 of what p1 sent and c1 got"
    );
    let rate = bulk.mbit_per_second();
    // The payload can never beat the 400 Mbit/s tbf; a delay line that cannot keep up (or a
    // stalled flow) falls far below 50.
    assert!((50.0..=400.0).contains(&rate), "{rate:.1} Mbit/s");
    let back = transfer(&lab, "c1", "p1", 4 << 20);
    assert_eq!(
        back.received, back.sent,
        "SHA-256 of what c1 sent and p1 got"
    );

    lab.down().expect("down");
    assert_eq!(namespaces_of(NAME), BTreeSet::new());
    assert_eq!(delay_line_processes(NAME), BTreeSet::new());
    for pid in pids {
        assert!(!alive(pid), "delay line {pid} survived down");
    }
}

#[test]
fn jitter_spreads_the_rtt_but_never_reorders() {
    const NAME: &str = "labdl2";
    if !have_root("jitter_spreads_the_rtt_but_never_reorders") {
        return;
    }
    let _cleanup = Cleanup(NAME);
    let lab = Lab::up(&topology(
        "name: labdl2\nblock: 198.19.196.0/22\nvip: 203.0.113.10\nnodes:\n\
         - { name: main, role: main }\n\
         - { name: c1, role: client, delay: 5ms, jitter: 10ms }\n\
         - { name: p1, role: participant }\n",
    ))
    .expect("lab comes up");
    let pids = delay_line_processes(NAME);
    assert_eq!(pids.len(), 1);
    let p1 = lab.node("p1").expect("p1").clone();
    let mut pinger = Pinger::new(&lab.node("c1").expect("c1").ns);
    pinger.warm_up(p1.addr);
    // Echoes 40 ms apart never wait behind each other: each RTT is 2 * 5 ms plus two
    // independent draws from U[0, 10 ms].
    let mut rtts = pinger.rtts(p1.addr, 40, Duration::from_millis(40));
    rtts.sort();
    let (lowest, p10, p90, highest) = (rtts[0], rtts[4], rtts[35], rtts[39]);
    report(&format!(
        "{NAME}: RTT c1-p1 with 5ms + 10ms jitter: min {:.2} ms, median {:.2} ms, max {:.2} ms",
        millis(lowest),
        millis(median(&rtts)),
        millis(highest)
    ));
    let ms = Duration::from_millis;
    // A delay line never sends early, so 10 ms is a hard floor; the ceiling of 30 ms gets some
    // slack for a busy machine, and one outlier in ten is forgiven.
    assert!(lowest >= ms(10), "{rtts:?}");
    assert!(p90 <= ms(33), "{rtts:?}");
    assert!(p90 - p10 >= ms(5), "jitter does not spread: {rtts:?}");

    // Datagrams tens of microseconds apart with up to 10 ms of jitter each: any reordering
    // would show at once. Both directions of the link.
    for (from, to) in [("c1", "p1"), ("p1", "c1")] {
        let seen = udp_stream(&lab, from, to, 3000, 20, Duration::from_millis(1));
        let in_order = seen.windows(2).all(|pair| pair[0] < pair[1]);
        report(&format!(
            "{NAME}: UDP {from}->{to}: {} of 3000 arrived, in order: {in_order}",
            seen.len()
        ));
        assert!(in_order, "{from}->{to} reordered");
        assert!(
            seen.len() >= 2970,
            "{from}->{to}: only {} arrived",
            seen.len()
        );
    }
    let bulk = transfer(&lab, "c1", "p1", 4 << 20);
    assert_eq!(bulk.received, bulk.sent, "SHA-256 through a jittery link");

    // Dropping the lab tears it down, delay line included.
    drop(lab);
    assert_eq!(namespaces_of(NAME), BTreeSet::new());
    assert_eq!(delay_line_processes(NAME), BTreeSet::new());
    assert!(pids.iter().all(|&pid| !alive(pid)));
}

#[test]
fn loss_drops_its_share_in_each_direction() {
    const NAME: &str = "labdl3";
    if !have_root("loss_drops_its_share_in_each_direction") {
        return;
    }
    let _cleanup = Cleanup(NAME);
    let lab = Lab::up(&topology(
        "name: labdl3\nblock: 198.19.184.0/22\nvip: 203.0.113.10\nnodes:\n\
         - { name: main, role: main }\n\
         - { name: c1, role: client, loss: 20% }\n\
         - { name: p1, role: participant }\n",
    ))
    .expect("lab comes up");
    let p1 = lab.node("p1").expect("p1").clone();
    // Resolve ARP both ways first, so that no datagram waits for (or is lost with) ARP.
    Pinger::new(&lab.node("c1").expect("c1").ns).warm_up(p1.addr);
    for (from, to) in [("c1", "p1"), ("p1", "c1")] {
        const SENT: u32 = 1000;
        let seen = udp_stream(&lab, from, to, SENT, 1, Duration::from_micros(300));
        let lost = f64::from(SENT - u32::try_from(seen.len()).expect("count")) / f64::from(SENT);
        report(&format!(
            "{NAME}: UDP {from}->{to} over a 20% loss link: {:.1}% of {SENT} lost",
            lost * 100.0
        ));
        // Binomial(1000, 0.2) has a standard deviation of 1.3%: the band is 7.5 of them.
        assert!((0.10..=0.30).contains(&lost), "{from}->{to} lost {lost}");
        assert!(seen.windows(2).all(|pair| pair[0] < pair[1]));
    }
    lab.down().expect("down");
    assert_eq!(namespaces_of(NAME), BTreeSet::new());
    assert_eq!(delay_line_processes(NAME), BTreeSet::new());
}

#[test]
fn cli_lab_keeps_its_delay_lines_and_every_way_down_ends_them() {
    const NAME: &str = "labdl4";
    if !have_root("cli_lab_keeps_its_delay_lines_and_every_way_down_ends_them") {
        return;
    }
    let _cleanup = Cleanup(NAME);
    let file = std::env::temp_dir().join("baton-lab-labdl4.yaml");
    std::fs::write(
        &file,
        "name: labdl4\nblock: 198.19.188.0/22\nvip: 203.0.113.10\nnodes:\n\
         - { name: main, role: main }\n\
         - { name: c1, role: client, delay: 10ms }\n\
         - { name: p1, role: participant, delay: 10ms, jitter: 1ms }\n",
    )
    .expect("write topology");
    // Runs baton-lab, which must succeed; returns stdout and stderr (its log).
    let cli_output = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_baton-lab"))
            .args(args)
            .env("RUST_LOG", "baton_lab=info")
            .output()
            .expect("baton-lab runs");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "baton-lab {args:?}: {stderr}");
        (String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
    };
    let cli = |args: &[&str]| cli_output(args).0;
    let path = file.to_str().expect("utf-8 path");

    // `up` exits; the delay lines stay.
    let up = cli(&["up", path]);
    assert!(
        up.contains("delay line on c1: delay 10ms, jitter 0, loss 0%"),
        "{up}"
    );
    let lab = Lab::open(NAME).expect("open");
    let first: BTreeSet<i32> = lab
        .delay_lines()
        .iter()
        .map(|line| line.pid().expect("pid"))
        .collect();
    assert_eq!(first.len(), 2);
    assert_eq!(delay_line_processes(NAME), first);
    let p1 = lab.node("p1").expect("p1").clone();
    let mut pinger = Pinger::new(&lab.node("c1").expect("c1").ns);
    pinger.warm_up(p1.addr);
    let rtt = median(&pinger.rtts(p1.addr, 11, Duration::from_millis(20)));
    let ms = Duration::from_millis;
    assert!((ms(38)..=ms(60)).contains(&rtt), "{rtt:?}");
    drop(pinger);
    let status = cli(&["status", "--name", NAME]);
    assert!(
        status.contains("delay line on p1: delay 10ms, jitter 1ms"),
        "{status}"
    );

    // A crashed run (state gone, delay lines still running) is cleaned up by the next `up`.
    std::fs::remove_dir_all(Path::new("/run/baton-lab").join(NAME)).expect("drop state");
    cli(&["up", path]);
    let second = delay_line_processes(NAME);
    assert_eq!(second.len(), 2);
    assert!(
        first.iter().all(|&pid| !alive(pid)),
        "old delay lines survived"
    );

    // A delay line whose link disappears (the node's namespace was deleted) exits by itself.
    let lab = Lab::open(NAME).expect("open");
    let c1_line = lab.delay_lines()[0].clone();
    assert_eq!(c1_line.node, "c1");
    let c1_pid = c1_line.pid().expect("pid");
    baton_lab::netns::tool("ip", &["netns", "delete", "labdl4-c1"]).expect("delete c1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(c1_pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(c1_pid), "c1's delay line outlived its link");
    assert_eq!(
        delay_line_processes(NAME).len(),
        1,
        "p1's delay line still runs"
    );

    // A delay line whose namespace lost its name runs on in it; `down` finds it through its
    // pid file.
    baton_lab::netns::tool("ip", &["netns", "delete", "labdl4-p1_dl"]).expect("unname p1_dl");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        delay_line_processes(NAME).len(),
        1,
        "p1's delay line runs on"
    );

    let (_, log) = cli_output(&["down", "--name", NAME]);
    // The only process left in the lab is p1's delay line, in a namespace without a name:
    // only its pid file leads to it.
    assert!(log.contains("stopping lab processes count=1"), "{log}");
    assert_eq!(namespaces_of(NAME), BTreeSet::new());
    assert_eq!(delay_line_processes(NAME), BTreeSet::new());
    assert!(second.iter().all(|&pid| !alive(pid)));
    let _ = std::fs::remove_file(&file);
}
