//! The peer cache on a LAN: six `baton-fetch --peer` processes on one Ethernet segment (a lab
//! `lan:`), the origin (the main's origin store) behind the router. Every file a peer writes is
//! hashed here, independently of baton-fetch's own check, and the origin's egress is counted
//! from its interface's transmit counter, not from what the peers say.
//!
//! Three labs with their own names and /21s, so they run in parallel with the rest of the suite:
//! `tpeera` (six peers at once; one upload slot), `tpeerb` (a lying peer; multicast blocked),
//! `tpeerc` (the main's package list; the group secret).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_lab::Rate;
use baton_shared::peer::limit::{DEFAULT_DISCOVERY_PORT, DEFAULT_GROUP, DEFAULT_HTTP_PORT};
use baton_shared::peer::wire::{HaveState, Kind, Message, WireError, MAC_BYTES};
use baton_tests::{fetch_json, lan_topology, pseudo_random, wait_fetch, require_root, sha256_file, spawn_fetch, Cluster, ClusterOptions};
use serde_json::Value;

const PEERS: [&str; 6] = ["peer1", "peer2", "peer3", "peer4", "peer5", "peer6"];
/// Bound on any one peer's run in these tests (they take seconds).
const RUN_LIMIT: Duration = Duration::from_secs(150);
/// The package of the six-peer test (the size).
const SWARM_BYTES: usize = 64 << 20;
/// The package of the other tests.
const PACKAGE_BYTES: usize = 32 << 20;

fn cluster(name: &str, block: &str) -> Cluster {
    let mut opts = ClusterOptions::new(name, block);
    opts.topology_yaml = Some(lan_topology(&PEERS, None, None));
    opts.participants = false;
    Cluster::start(&opts).expect("cluster starts")
}

/// Writes a package into the origin; its URL on the main's origin store and its SHA-256.
fn origin_package(c: &Cluster, name: &str, size: usize, seed: u64) -> (String, String) {
    let sha = c.write_object(name, size, seed).expect("origin object");
    let main = c.addr("main").expect("main address");
    (format!("http://{main}:{}/{name}", baton_shared::config::DEFAULT_ORIGIN_PORT), sha)
}

/// Bytes the main's interface has transmitted.
fn main_tx_bytes(c: &Cluster) -> u64 {
    c.tx_bytes("main").expect("main's transmit counter")
}

fn out_path(c: &Cluster, node: &str, name: &str) -> PathBuf {
    let dir = c.lab.state_dir().join(format!("out-{node}"));
    std::fs::create_dir_all(&dir).expect("output dir");
    dir.join(name)
}

/// Starts `baton-fetch --peer --json` in `node` with `args`.
fn peer(c: &Cluster, node: &str, args: &[&str]) -> Child {
    let addr = c.addr(node).expect("address").to_string();
    let mut all = vec!["--peer", "--json", "--peer-addr", addr.as_str()];
    all.extend_from_slice(args);
    spawn_fetch(c, node, &all).expect("baton-fetch starts")
}

/// Waits for a peer (killing it at `limit`) and returns its JSON summary and output.
fn finish(child: Child, limit: Duration) -> (Value, Output) {
    let out = wait_fetch(child, limit);
    (fetch_json(&out), out)
}

/// Waits for all, concurrently (each has its own pipes to drain).
fn finish_all(children: Vec<Child>, limit: Duration) -> Vec<(Value, Output)> {
    let threads: Vec<_> = children.into_iter().map(|c| std::thread::spawn(move || finish(c, limit))).collect();
    threads.into_iter().map(|t| t.join().expect("waiter")).collect()
}

fn ok(json: &Value, out: &Output) {
    assert!(out.status.success(), "baton-fetch failed ({}): {json}\nstderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Interrupts a serving peer (it prints its summary and exits 0).
fn stop(child: &Child) {
    // SAFETY: signalling a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
}

/// Waits until `node` serves the package `sha` (its HTTP server is up and the share is hashed).
fn wait_holding(c: &Cluster, node: &str, sha: &str) {
    let addr = c.addr(node).expect("address");
    let url = format!("http://{addr}:{DEFAULT_HTTP_PORT}/peer/v1/{sha}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let out = c.exec(node, &["curl", "-s", "-I", "-o", "/dev/null", "-w", "%{http_code}", &url]).expect("curl");
        if out.stdout == b"200" {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{node} never served {sha}");
}

#[test]
fn six_peers_fetch_one_origin_copy_and_a_busy_peer_sends_requesters_on() {
    if !require_root() {
        return;
    }
    let c = cluster("tpeera", "198.18.160.0/21");
    let (url, sha) = origin_package(&c, "pkg/swarm.bin", SWARM_BYTES, 0x5a);

    // Six peers ask for the same package at almost the same time.
    let before = main_tx_bytes(&c);
    let started = Instant::now();
    let children: Vec<Child> = PEERS
        .iter()
        .map(|p| {
            let out = out_path(&c, p, "swarm.bin");
            let out = out.display().to_string();
            peer(&c, p, &["-o", &out, "--peer-linger", "3", &url])
        })
        .collect();
    let results = finish_all(children, RUN_LIMIT);
    let seconds = started.elapsed().as_secs_f64();
    let origin_sent = main_tx_bytes(&c) - before;
    let mut from_origin = 0;
    let mut from_peers = 0;
    let mut origin_fetchers = 0;
    for (p, (json, out)) in PEERS.iter().zip(&results) {
        ok(json, out);
        assert_eq!(sha256_file(&out_path(&c, p, "swarm.bin")).expect("hash"), sha, "{p}'s file");
        assert_eq!(json["verified"], "sha-256", "{p}: {json}");
        from_origin += n(&json["obtained"]["from_origin"]);
        from_peers += n(&json["obtained"]["from_peers"]);
        origin_fetchers += u64::from(json["obtained"]["outcome"] == "origin");
    }
    eprintln!(
        "six peers: {seconds:.1} s; the main sent {origin_sent} bytes for a {SWARM_BYTES}-byte package ({:.3}x); peers report {from_origin} from the origin, {from_peers} from peers; {origin_fetchers} went to the origin",
        origin_sent as f64 / SWARM_BYTES as f64
    );
    assert!(
        origin_sent as f64 <= 1.2 * SWARM_BYTES as f64,
        "the origin sent {origin_sent} bytes, more than 1.2 x {SWARM_BYTES}: {:?}",
        results.iter().map(|r| &r.0["obtained"]).collect::<Vec<_>>()
    );
    assert!(from_origin >= SWARM_BYTES as u64, "nobody fetched the package from the origin");
    assert_eq!(from_origin + from_peers, 6 * SWARM_BYTES as u64, "bytes received in all");

    // One upload slot: peer1 holds the package and serves one requester at a time. peer2's
    // download from it is slowed so it is still running when peer3 asks; peer3 is told busy
    // and completes from another source (peer2, serving while it downloads).
    let (url, sha) = origin_package(&c, "pkg/slot.bin", PACKAGE_BYTES, 0x51);
    let held = out_path(&c, "peer1", "slot-held.bin");
    std::fs::write(&held, pseudo_random(PACKAGE_BYTES, 0x51)).expect("held copy");
    let holder = peer(&c, "peer1", &["--peer-slots", "1", "--peer-share", &held.display().to_string(), "--peer-linger", "600"]);
    wait_holding(&c, "peer1", &sha);
    c.lab.set_rate("peer2", Rate::from_bits_per_second(40_000_000).expect("rate")).expect("slow peer2");
    let before = main_tx_bytes(&c);
    let out2 = out_path(&c, "peer2", "slot.bin").display().to_string();
    let first = peer(&c, "peer2", &["-o", &out2, "--peer-linger", "5", &url]);
    // Wait until peer2's download from peer1 is under way.
    let partial_dir = out_path(&c, "peer2", "x").parent().map(PathBuf::from).expect("dir");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let growing = std::fs::read_dir(&partial_dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".baton-partial-") && e.metadata().map(|m| m.len() > 1 << 20).unwrap_or(false));
        if growing {
            break;
        }
        assert!(Instant::now() < deadline, "peer2 never started receiving");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out3 = out_path(&c, "peer3", "slot.bin").display().to_string();
    let third = peer(&c, "peer3", &["-o", &out3, &url]);
    let (j3, o3) = finish(third, RUN_LIMIT);
    let (j2, o2) = finish(first, RUN_LIMIT);
    stop(&holder);
    let (j1, o1) = finish(holder, Duration::from_secs(20));
    let origin_sent = main_tx_bytes(&c) - before;
    for (j, o) in [(&j1, &o1), (&j2, &o2), (&j3, &o3)] {
        ok(j, o);
    }
    assert_eq!(sha256_file(&out_path(&c, "peer2", "slot.bin")).expect("hash"), sha);
    assert_eq!(sha256_file(&out_path(&c, "peer3", "slot.bin")).expect("hash"), sha);
    eprintln!("one slot: holder {j1}\nfirst {j2}\nthird {j3}");
    assert!(n(&j1["busy_sent"]) >= 1, "the holder told nobody busy: {j1}");
    assert!(n(&j3["obtained"]["busy"]) >= 1, "the third requester was not told busy: {j3}");
    assert_eq!(n(&j3["obtained"]["from_origin"]), 0, "the third requester went to the origin: {j3}");
    assert_eq!(n(&j3["obtained"]["from_peers"]), PACKAGE_BYTES as u64, "{j3}");
    assert_eq!(n(&j2["obtained"]["from_origin"]), 0, "{j2}");
    assert!(origin_sent < (PACKAGE_BYTES / 8) as u64, "the origin sent {origin_sent} bytes");
}

/// A lying peer: answers every query as a complete holder and serves bytes of the right
/// length that are not the package. Runs in `node`'s namespace until dropped.
struct Liar {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    /// Queries it answered.
    answered: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// An authenticated datagram with its MAC cut off and its MAC flag cleared: what an outsider
/// without the group secret reads of a query.
fn strip_mac(datagram: &[u8]) -> Option<Vec<u8>> {
    const FLAGS_AT: usize = 7;
    let mut d = datagram.get(..datagram.len().checked_sub(MAC_BYTES)?)?.to_vec();
    *d.get_mut(FLAGS_AT)? &= !1;
    Some(d)
}

impl Liar {
    fn start(c: &Cluster, node: &str, size: u64) -> Liar {
        Liar::spawn(c, node, size, false)
    }

    /// A liar outside the group: it reads authenticated queries too (it needs no secret for
    /// that) and answers them, unauthenticated.
    fn start_outside_group(c: &Cluster, node: &str, size: u64) -> Liar {
        Liar::spawn(c, node, size, true)
    }

    fn spawn(c: &Cluster, node: &str, size: u64, read_authenticated: bool) -> Liar {
        let ns = c.lab.node(node).expect("node").ns.clone();
        let addr = c.addr(node).expect("address");
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let answered = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let enter = move |ns: &str| {
            let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns");
            // SAFETY: setns on this thread only, with a namespace file we hold open.
            assert_eq!(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) }, 0);
        };
        let udp = {
            let (ns, stop, tx, answered) = (ns.clone(), stop.clone(), tx.clone(), answered.clone());
            std::thread::spawn(move || {
                enter(&ns);
                let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, DEFAULT_DISCOVERY_PORT)).expect("discovery port");
                s.join_multicast_v4(&DEFAULT_GROUP, &addr).expect("join");
                s.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
                let _ = tx.send(());
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = s.recv_from(&mut buf) else { continue };
                    let parsed = match Message::parse(&buf[..len], None, 0) {
                        Err(WireError::UnexpectedMac) if read_authenticated => {
                            strip_mac(&buf[..len]).and_then(|d| Message::parse(&d, None, 0).ok())
                        }
                        other => other.ok(),
                    };
                    let Some(q) = parsed else { continue };
                    if q.kind != Kind::Query {
                        continue;
                    }
                    let answer = Message { kind: Kind::Answer, port: DEFAULT_HTTP_PORT, state: HaveState::Complete, have: size, size, claim: 0, ..q };
                    if s.send_to(&answer.emit(None), from).is_ok() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        let http = {
            let (ns, stop, served) = (ns, stop.clone(), served.clone());
            std::thread::spawn(move || {
                enter(&ns);
                let l = TcpListener::bind(SocketAddrV4::new(addr, DEFAULT_HTTP_PORT)).expect("http port");
                l.set_nonblocking(true).expect("nonblocking");
                let _ = tx.send(());
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut s, _)) = l.accept() else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let _ = s.set_nonblocking(false);
                    let mut head = [0u8; 4096];
                    let _ = s.read(&mut head);
                    let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n");
                    let junk = vec![0x4cu8; 1 << 20];
                    let mut left = size;
                    while left > 0 {
                        let k = left.min(junk.len() as u64) as usize;
                        if s.write_all(&junk[..k]).is_err() {
                            break;
                        }
                        served.fetch_add(k as u64, Ordering::Relaxed);
                        left -= k as u64;
                    }
                }
            })
        };
        rx.recv().expect("liar ready");
        rx.recv().expect("liar ready");
        Liar { stop, served, answered, threads: vec![udp, http] }
    }
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Drops multicast in and out of `node` (nftables, counted).
fn block_multicast(c: &Cluster, node: &str) {
    let rules = "table ip baton_test_mcast {\n\
                 chain out { type filter hook output priority 0; ip daddr 224.0.0.0/4 counter drop; }\n\
                 chain in { type filter hook input priority 0; ip daddr 224.0.0.0/4 counter drop; }\n}\n";
    let path = c.lab.state_dir().join(format!("mcast-{node}.nft"));
    std::fs::write(&path, rules).expect("rules file");
    let out = c.exec(node, &["nft", "-f", &path.display().to_string()]).expect("nft");
    assert!(out.status.success(), "nft in {node}: {}", String::from_utf8_lossy(&out.stderr));
}

fn multicast_dropped(c: &Cluster, node: &str) -> u64 {
    let out = c.exec(node, &["nft", "-j", "list", "table", "ip", "baton_test_mcast"]).expect("nft list");
    let v: Value = serde_json::from_slice(&out.stdout).expect("nft json");
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum()
}

#[test]
fn a_lying_peer_is_caught_and_polling_or_broadcast_finds_packages_without_multicast() {
    if !require_root() {
        return;
    }
    let c = cluster("tpeerb", "198.18.168.0/21");

    // peer1 (the lowest address, so it is tried first among equal offers) lies; peer3 holds
    // the real package; peer2 asks.
    let (url, sha) = origin_package(&c, "pkg/liar.bin", PACKAGE_BYTES, 0x11);
    let liar = Liar::start(&c, "peer1", PACKAGE_BYTES as u64);
    let held = out_path(&c, "peer3", "held.bin");
    std::fs::write(&held, pseudo_random(PACKAGE_BYTES, 0x11)).expect("held copy");
    let holder = peer(&c, "peer3", &["--peer-share", &held.display().to_string(), "--peer-linger", "600"]);
    wait_holding(&c, "peer3", &sha);
    let out2 = out_path(&c, "peer2", "liar.bin");
    let (j2, o2) = finish(peer(&c, "peer2", &["-o", &out2.display().to_string(), &url]), RUN_LIMIT);
    ok(&j2, &o2);
    let liar_addr = format!("{}:{DEFAULT_HTTP_PORT}", c.addr("peer1").expect("address"));
    eprintln!("liar: {j2}");
    assert_eq!(sha256_file(&out2).expect("hash"), sha);
    assert!(liar.served.load(Ordering::Relaxed) > 0, "the liar was never asked");
    let bad: Vec<String> = j2["obtained"]["bad_peers"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect();
    assert_eq!(bad, vec![liar_addr], "{j2}");
    assert_eq!(n(&j2["obtained"]["from_origin"]), 0, "{j2}");
    assert_eq!(j2["obtained"]["outcome"], "discovered", "{j2}");
    drop(liar);
    stop(&holder);
    let (j3, o3) = finish(holder, Duration::from_secs(20));
    ok(&j3, &o3);

    // Multicast blocked on every peer: a requester that knows its peers polls them.
    for p in PEERS {
        block_multicast(&c, p);
    }
    let (url, sha) = origin_package(&c, "pkg/poll.bin", PACKAGE_BYTES, 0x22);
    let held = out_path(&c, "peer5", "held.bin");
    std::fs::write(&held, pseudo_random(PACKAGE_BYTES, 0x22)).expect("held copy");
    let holder = peer(&c, "peer5", &["--peer-share", &held.display().to_string(), "--peer-linger", "600"]);
    wait_holding(&c, "peer5", &sha);
    let before = main_tx_bytes(&c);
    let hosts: Vec<String> = ["peer1", "peer3", "peer5", "peer6"].iter().map(|p| c.addr(p).expect("address").to_string()).collect();
    let out4 = out_path(&c, "peer4", "poll.bin").display().to_string();
    let mut args = vec!["-o", out4.as_str()];
    for h in &hosts {
        args.extend_from_slice(&["--peer-host", h.as_str()]);
    }
    args.push(&url);
    let (j4, o4) = finish(peer(&c, "peer4", &args), RUN_LIMIT);
    ok(&j4, &o4);
    let origin_sent = main_tx_bytes(&c) - before;
    eprintln!("polling: {j4}; the origin sent {origin_sent} bytes");
    assert_eq!(sha256_file(&out_path(&c, "peer4", "poll.bin")).expect("hash"), sha);
    assert_eq!(j4["obtained"]["outcome"], "discovered", "{j4}");
    assert_eq!(n(&j4["obtained"]["from_peers"]), PACKAGE_BYTES as u64, "{j4}");
    assert!(origin_sent < (PACKAGE_BYTES / 8) as u64, "the origin sent {origin_sent} bytes");
    assert!(multicast_dropped(&c, "peer4") > 0, "no multicast query was sent (and dropped)");

    // Still without multicast, and knowing no peer: the subnet broadcast finds the holder.
    let bcast = {
        let a = c.addr("peer6").expect("address").octets();
        Ipv4Addr::new(a[0], a[1], a[2], 255).to_string()
    };
    let out6 = out_path(&c, "peer6", "poll.bin").display().to_string();
    let before = main_tx_bytes(&c);
    let (j6, o6) = finish(peer(&c, "peer6", &["-o", &out6, "--peer-broadcast", &bcast, &url]), RUN_LIMIT);
    ok(&j6, &o6);
    let origin_sent = main_tx_bytes(&c) - before;
    eprintln!("broadcast: {j6}; the origin sent {origin_sent} bytes");
    assert_eq!(sha256_file(&out_path(&c, "peer6", "poll.bin")).expect("hash"), sha);
    assert_eq!(j6["obtained"]["outcome"], "discovered", "{j6}");
    assert_eq!(n(&j6["obtained"]["from_origin"]), 0, "{j6}");
    assert!(origin_sent < (PACKAGE_BYTES / 8) as u64, "the origin sent {origin_sent} bytes");

    stop(&holder);
    let (j5, o5) = finish(holder, Duration::from_secs(20));
    ok(&j5, &o5);
    // peer4 had exited, so peer5 served both: peer4 (polled) and peer6 (broadcast).
    assert_eq!(n(&j5["served_bytes"]), 2 * PACKAGE_BYTES as u64, "{j5}");
}

/// The main's package list, as `<main>:<origin port>`.
fn list_addr(c: &Cluster) -> String {
    format!("{}:{}", c.addr("main").expect("main address"), baton_shared::config::DEFAULT_ORIGIN_PORT)
}

/// Waits until the main's list (asked with curl from `node`) names `want` as the location of
/// the package `sha`.
fn wait_listed(c: &Cluster, node: &str, sha: &str, want: &str) {
    let url = format!("http://{}{}/{sha}", list_addr(c), baton_io::peer::api::PACKAGES_PREFIX);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        let out = c.exec(node, &["curl", "-s", "--max-time", "5", &url]).expect("curl");
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v["location"]["addr"] == want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the main's list never named {want} for {sha}; last answer: {last}");
}

/// Writes a group secret file readable by its owner only; its path.
fn write_secret(c: &Cluster, name: &str, secret: &[u8]) -> String {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = c.lab.state_dir().join(name);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).expect("secret file");
    f.write_all(secret).expect("secret");
    path.display().to_string()
}

fn bad_peers(json: &Value) -> Vec<String> {
    json["obtained"]["bad_peers"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect()
}

#[test]
fn the_main_list_names_a_holder_and_only_the_group_secret_is_believed() {
    if !require_root() {
        return;
    }
    let c = cluster("tpeerc", "198.18.176.0/21");
    let list = list_addr(&c);
    let http = |node: &str| format!("{}:{DEFAULT_HTTP_PORT}", c.addr(node).expect("address"));

    // The main's list: peer1 shares and reports; peer2, with neither multicast nor known
    // hosts, learns of peer1 from the list alone.
    let (url, sha) = origin_package(&c, "pkg/listed.bin", PACKAGE_BYTES, 0x33);
    let held = out_path(&c, "peer1", "held.bin");
    std::fs::write(&held, pseudo_random(PACKAGE_BYTES, 0x33)).expect("held copy");
    let holder = peer(&c, "peer1", &["--peer-share", &held.display().to_string(), "--peer-list", &list, "--peer-linger", "600"]);
    wait_holding(&c, "peer1", &sha);
    wait_listed(&c, "peer2", &sha, &http("peer1"));
    let before = main_tx_bytes(&c);
    let out2 = out_path(&c, "peer2", "listed.bin");
    let (j2, o2) = finish(peer(&c, "peer2", &["--peer-no-multicast", "--peer-list", &list, "-o", &out2.display().to_string(), &url]), RUN_LIMIT);
    let origin_sent = main_tx_bytes(&c) - before;
    ok(&j2, &o2);
    eprintln!("main list: {j2}; the origin sent {origin_sent} bytes");
    assert_eq!(sha256_file(&out2).expect("hash"), sha);
    assert_eq!(j2["obtained"]["outcome"], "main_list", "{j2}");
    assert_eq!(n(&j2["obtained"]["from_origin"]), 0, "{j2}");
    assert_eq!(n(&j2["obtained"]["from_peers"]), PACKAGE_BYTES as u64, "{j2}");
    assert!(bad_peers(&j2).is_empty(), "{j2}");
    assert_eq!(n(&j2["reported"]), 1, "peer2 did not report its copy: {j2}");
    assert!(origin_sent < (PACKAGE_BYTES / 8) as u64, "the origin sent {origin_sent} bytes");
    stop(&holder);
    let (j1, o1) = finish(holder, Duration::from_secs(20));
    ok(&j1, &o1);
    assert_eq!(n(&j1["served_bytes"]), PACKAGE_BYTES as u64, "{j1}");
    assert_eq!(n(&j1["reported"]), 1, "{j1}");

    // The group secret: peer3 holds the package and speaks only to its group. A liar outside
    // the group, on a lower address (so it would be tried first if believed), answers every
    // query it sees.
    let (url, sha) = origin_package(&c, "pkg/secret.bin", PACKAGE_BYTES, 0x44);
    assert!(c.addr("peer2").expect("address") < c.addr("peer3").expect("address"));
    let group = write_secret(&c, "group.key", b"tpeerc group secret\n");
    let other = write_secret(&c, "other.key", b"another group entirely\n");
    let held = out_path(&c, "peer3", "held.bin");
    std::fs::write(&held, pseudo_random(PACKAGE_BYTES, 0x44)).expect("held copy");
    let holder = peer(&c, "peer3", &["--peer-share", &held.display().to_string(), "--peer-secret-file", &group, "--peer-linger", "600"]);
    wait_holding(&c, "peer3", &sha);
    let liar = Liar::start_outside_group(&c, "peer2", PACKAGE_BYTES as u64);

    let before = main_tx_bytes(&c);
    let out4 = out_path(&c, "peer4", "secret.bin");
    let (j4, o4) = finish(peer(&c, "peer4", &["--peer-secret-file", &group, "-o", &out4.display().to_string(), &url]), RUN_LIMIT);
    let origin_sent = main_tx_bytes(&c) - before;
    ok(&j4, &o4);
    let answered = liar.answered.load(Ordering::Relaxed);
    eprintln!("same secret: {j4}; the origin sent {origin_sent} bytes; the liar answered {answered} queries");
    assert_eq!(sha256_file(&out4).expect("hash"), sha);
    assert_eq!(j4["obtained"]["outcome"], "discovered", "{j4}");
    assert!(bad_peers(&j4).is_empty(), "an unauthenticated answer was believed: {j4}");
    assert_eq!(n(&j4["obtained"]["from_peers"]), PACKAGE_BYTES as u64, "{j4}");
    assert_eq!(n(&j4["obtained"]["from_origin"]), 0, "{j4}");
    assert!(answered >= 1, "the liar never answered, so the test proves nothing");
    assert_eq!(liar.served.load(Ordering::Relaxed), 0, "the liar was asked for bytes");
    assert!(origin_sent < (PACKAGE_BYTES / 8) as u64, "the origin sent {origin_sent} bytes");

    // Another secret: peer3 ignores its datagrams and it ignores the liar's, so it goes to the
    // origin.
    let out5 = out_path(&c, "peer5", "secret.bin");
    let (j5, o5) = finish(peer(&c, "peer5", &["--peer-secret-file", &other, "-o", &out5.display().to_string(), &url]), RUN_LIMIT);
    ok(&j5, &o5);
    eprintln!("other secret: {j5}");
    assert_eq!(sha256_file(&out5).expect("hash"), sha);
    assert_eq!(j5["obtained"]["outcome"], "origin", "{j5}");
    assert_eq!(n(&j5["obtained"]["from_peers"]), 0, "{j5}");
    assert_eq!(n(&j5["obtained"]["from_origin"]), PACKAGE_BYTES as u64, "{j5}");
    assert!(bad_peers(&j5).is_empty(), "{j5}");
    assert!(liar.answered.load(Ordering::Relaxed) > answered, "the liar never answered the other group");
    assert_eq!(liar.served.load(Ordering::Relaxed), 0, "the liar was asked for bytes");
    drop(liar);
    stop(&holder);
    let (j3, o3) = finish(holder, Duration::from_secs(20));
    ok(&j3, &o3);
    assert_eq!(n(&j3["served_bytes"]), PACKAGE_BYTES as u64, "peer3 served someone outside its group: {j3}");
}
