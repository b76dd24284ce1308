//! Abuse of the VIP, in labs of network namespaces with the real binaries: what an attacker or
//! an overload can do to the main's flow table, and what it must never do to real clients.
//!
//! - **SYN flood.** A lab client sends a bounded flood of spoofed SYNs (raw IPv4 socket, random
//!   source addresses of its own subnet and random ports) at the VIP while another client
//!   downloads objects through it. Proven: the main's namespace has SYN cookies on (the main
//!   turns them on at start: `baton_main::ensure_syncookies`), the flood reached the main's
//!   data plane and overflowed the listener's SYN queue (the kernel sent cookies), at least 99% of
//!   the legitimate downloads arrived whole (SHA-256) within a deadline, and afterwards the flow
//!   list and the data plane's table (the pinned BPF map, or the userspace plane's nftables set)
//!   hold flows of the legitimate client only, never one of a spoofed SYN: a flow exists only
//!   after a completed handshake and a request head.
//! - **Full flow table.** The table is filled to capacity from outside the main (the pinned BPF
//!   map directly; for the userspace plane, the table it restores at start). A download then
//!   succeeds, served by the main itself and counted once as `flow_table_full`, with no flow
//!   listed and no table entry for it while it is served; once the dummy entries are gone, the
//!   next download is handed off again (listed, with its entry). The health probes are off in
//!   that test: a probe is a handed-off flow, and one that expires would free a slot.
//!
//! Everything the tests start (clusters, the flood thread) stops when they end, also on failure.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use baton_ebpf::{FlowKey, FlowValue, FLOW_MAP_MAX_ENTRIES};
use baton_tests::{in_dataplanes, scrape_metrics, spawn_curl, Background, Cluster, ClusterOptions};

/// Where the main's `/metrics` listens (inside the main's namespace).
const METRICS_PORT: u16 = 9471;
/// The VIP's HTTP port in the lab clusters.
const VIP_PORT: u16 = 80;
/// A probe interval that means "no probes during the test": a probe is a handed-off flow, and a
/// probe flow that expires frees a slot of a table the test keeps full.
const NO_PROBES_MS: &str = "3600000";
/// How long the handoff count may lag the client (the main counts a handoff once the
/// participant confirmed it; a small object can arrive before that).
const COUNT_SETTLE: Duration = Duration::from_secs(2);

/// The object of the full-table test: larger than the server's send buffer and the client's
/// receive buffer together, so a client that stops reading holds the connection open.
const FULL_OBJECT_BYTES: usize = 16 << 20;
/// Body bytes that must have arrived before the download is observed.
const OBSERVED_AFTER_BYTES: u64 = 64 << 10;

/// SYNs of the flood.
const SYN_COUNT: usize = 20_000;
/// The flood's rate: a few thousand a second, well above the listener's backlog (1024) per second.
const SYN_RATE_PER_SEC: usize = 4_000;
/// The flood ends after this long even if not every SYN went out.
const FLOOD_LIMIT: Duration = Duration::from_secs(15);
/// SYNs sent before the first legitimate download starts: the listener's SYN queue (1024) is
/// full by then, so every legitimate connection meets the overflow.
const FLOOD_HEAD_START: usize = 2_000;
/// Who floods and who downloads (two different clients of the default topology).
const FLOODER: &str = "c-sin";
const DOWNLOADER: &str = "c-fra";
/// Legitimate downloads during the flood, each of its own object, this many at a time.
const LEGIT_DOWNLOADS: usize = 40;
const LEGIT_PARALLEL: usize = 4;
const LEGIT_OBJECT_BYTES: usize = 512 << 10;
/// curl's whole-transfer limit per legitimate download, in seconds: a client whose SYN the main
/// dropped would wait 1 s, then 3 s, then 7 s for its retransmissions, so a queue that a flood
/// holds full (about a minute per spoofed SYN without cookies) fails it.
const LEGIT_MAX_TIME_S: &str = "10";
/// Share of the legitimate downloads that must arrive whole, in percent.
const LEGIT_SUCCESS_MIN_PCT: f64 = 99.0;
/// Share of the flood's SYNs the main's data plane must have seen (the flood is real).
const FLOOD_SEEN_MIN_PCT: f64 = 90.0;

/// The userspace data plane's nftables table and set of held flows (`ebpf/src/userspace/nft.rs`).
const NFT_TABLE: &str = "baton_userspace";
const NFT_SET: &str = "flows";

/// Bytes of one flood SYN: IPv4 header, TCP header and an MSS option.
const SYN_BYTES: usize = 20 + 20 + 4;

#[test]
fn a_syn_flood_does_not_stop_legitimate_downloads_or_fill_the_flow_map() {
    in_dataplanes(&["tc", "xdp", "userspace"], "tsyn", "198.19.8.0/21", |mut opts| {
        opts.main_args = vec!["--metrics-addr".into(), format!("127.0.0.1:{METRICS_PORT}")];
        let mode = opts.dataplane;
        let mut c = Cluster::start(&opts).expect("cluster");

        // The main turns SYN cookies on in its namespace when they are off.
        let out = c.exec("main", &["sysctl", "-qw", "net.ipv4.tcp_syncookies=0"]).expect("sysctl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        c.restart_main(Duration::ZERO).expect("main restarts");
        c.wait_registered(c.participant_names().len()).expect("participants reconnect");
        assert_eq!(syncookies(&c), "1", "baton-main did not turn SYN cookies on in its namespace");

        let objects: Vec<(String, String)> = (0..LEGIT_DOWNLOADS)
            .map(|i| {
                let name = format!("legit-{i}.bin");
                let sha = c.write_object(&name, LEGIT_OBJECT_BYTES, 100 + i as u64).expect("object");
                c.provision(&name).expect("provision");
                (name, sha)
            })
            .collect();
        let vip = c.lab.vip();
        let flooder = c.lab.node(FLOODER).expect("flooder").clone();
        let legit = c.addr(DOWNLOADER).expect("downloader");
        let main_addr = c.addr("main").expect("main");
        let net = flooder.subnet.network().octets();
        // Hosts of the flooder's /24 that no lab node uses (.1 is the router, .2 the node).
        let spoofed: Vec<Ipv4Addr> = (10..=250u8)
            .map(|h| Ipv4Addr::new(net[0], net[1], net[2], h))
            .filter(|a| *a != flooder.addr && *a != flooder.gateway)
            .collect();
        let in_flood_net = |a: Ipv4Addr| a.octets()[..3] == net[..3];

        let before = scrape_metrics(&c, "main", METRICS_PORT);
        let ext_before = tcp_ext(&c, "main");
        let spec = FloodSpec { vip, sources: spoofed, count: SYN_COUNT, rate: SYN_RATE_PER_SEC, limit: FLOOD_LIMIT, seed: 0x5eed ^ mode.len() as u64 };
        let flood = Flood::start(&flooder.ns, spec);
        flood.wait_sent(FLOOD_HEAD_START, Duration::from_secs(5));

        let mut results = Vec::with_capacity(LEGIT_DOWNLOADS);
        let mut during_flood = 0;
        let mut running: Vec<(usize, Background)> = Vec::new();
        let mut next = 0;
        while results.len() < LEGIT_DOWNLOADS {
            while running.len() < LEGIT_PARALLEL && next < LEGIT_DOWNLOADS {
                let dl = spawn_curl(&c, DOWNLOADER, &c.vip_url(&objects[next].0), &["--max-time", LEGIT_MAX_TIME_S]).expect("curl");
                running.push((next, dl));
                next += 1;
            }
            let Some(done) = running.iter_mut().position(|(_, dl)| !dl.running()) else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let (i, dl) = running.swap_remove(done);
            if flood.running() {
                during_flood += 1;
            }
            results.push((i, dl.finish().expect("download")));
        }
        let report = flood.finish();

        let ok = results.iter().filter(|(i, d)| d.exit == 0 && d.bytes == LEGIT_OBJECT_BYTES as u64 && d.sha256 == objects[*i].1).count();
        let pct = 100.0 * ok as f64 / LEGIT_DOWNLOADS as f64;
        let mut served: BTreeMap<String, usize> = BTreeMap::new();
        for (_, d) in &results {
            *served.entry(d.served_by().unwrap_or("-").to_owned()).or_default() += 1;
        }
        let after = scrape_metrics(&c, "main", METRICS_PORT);
        let ext_after = tcp_ext(&c, "main");
        let delta = |m: &str| after.get(m).copied().unwrap_or(0.0) - before.get(m).copied().unwrap_or(0.0);
        let ext_delta = |k: &str| ext_after.get(k).copied().unwrap_or(0).saturating_sub(ext_before.get(k).copied().unwrap_or(0));
        let seen = delta("baton_dataplane_packets_total{reason=\"pass_no_flow\"}");
        let cookies = ext_delta("SyncookiesSent");

        let rows = c.flows().expect("flow list");
        let table = table_clients(&c, mode);
        let (mut from_legit, mut from_probes, mut from_flood, mut other) = (0, 0, 0, Vec::new());
        for a in &table {
            match *a {
                a if a == legit => from_legit += 1,
                a if a == main_addr => from_probes += 1,
                a if in_flood_net(a) => from_flood += 1,
                a => other.push(a),
            }
        }
        eprintln!(
            "--dataplane {mode}: {ok}/{LEGIT_DOWNLOADS} legitimate downloads whole ({pct:.1}%), {during_flood} of them finished \
             during the flood; served by {served:?}; flood: {} SYNs in {:.2} s ({:.0}/s), {seen} packets without a flow seen by \
             the data plane, {cookies} SYN cookies sent, listen drops {}; after: {} flows listed, {} table entries \
             ({from_legit} of the downloader, {from_probes} health probes, {from_flood} of the flood)",
            report.sent,
            report.elapsed.as_secs_f64(),
            report.sent as f64 / report.elapsed.as_secs_f64().max(1e-3),
            ext_delta("ListenDrops"),
            rows.len(),
            table.len(),
        );
        for (i, d) in results.iter().filter(|(i, d)| !(d.exit == 0 && d.sha256 == objects[*i].1)) {
            eprintln!("  download {i} failed: exit {}, {} bytes, {}", d.exit, d.bytes, d.stderr.trim());
        }

        assert_eq!(report.sent, SYN_COUNT, "the flood stopped early");
        assert!(seen >= report.sent as f64 * FLOOD_SEEN_MIN_PCT / 100.0, "the main's data plane saw only {seen} packets of the {} SYNs", report.sent);
        assert!(cookies > 0, "the flood never overflowed the listener's SYN queue (no SYN cookie sent): it tested nothing");
        assert!(during_flood * 2 >= LEGIT_DOWNLOADS, "only {during_flood} downloads finished while the flood ran");
        assert!(pct >= LEGIT_SUCCESS_MIN_PCT, "only {pct:.1}% of the legitimate downloads arrived whole under the flood");
        assert_eq!(from_flood, 0, "the flood created {from_flood} data-plane entries");
        assert!(other.is_empty(), "data-plane entries of unknown clients: {other:?}");
        assert!(from_legit <= LEGIT_DOWNLOADS, "{from_legit} entries of the downloader after {LEGIT_DOWNLOADS} downloads");
        assert!(rows.len() <= LEGIT_DOWNLOADS, "{} flows listed after {LEGIT_DOWNLOADS} downloads", rows.len());
        for r in &rows {
            let client = r["client"].as_str().and_then(|s| s.parse::<SocketAddrV4>().ok()).map(|a| *a.ip());
            assert_eq!(client, Some(legit), "a listed flow of another client: {r}");
        }
    });
}

#[test]
fn a_full_flow_map_fails_safe_and_is_counted() {
    in_dataplanes(&["tc", "xdp", "userspace"], "tfull", "198.19.16.0/21", |mut opts| {
        opts.main_args = vec!["--metrics-addr".into(), format!("127.0.0.1:{METRICS_PORT}"), "--probe-interval-ms".into(), NO_PROBES_MS.into()];
        let mode = opts.dataplane;
        let mut c = Cluster::start(&opts).expect("cluster");
        let size = FULL_OBJECT_BYTES;
        let sha = c.write_object("full.bin", size, 7).expect("object");
        c.provision("full.bin").expect("provision");
        let client = "c-fra";
        let client_addr = c.addr(client).expect("client");
        let dummies = dummy_keys(&c, &opts);
        let main_args: Vec<String> = ["--dataplane".to_owned(), mode.to_owned()].into_iter().chain(opts.main_args.iter().cloned()).collect();

        // Fill the table to capacity.
        let mut pinned = None;
        if mode == "userspace" {
            restart_main_with_table(&mut c, &main_args, &dummies[..FLOW_MAP_MAX_ENTRIES as usize]);
            assert_eq!(held_flows(&c).len(), FLOW_MAP_MAX_ENTRIES as usize, "the restored table holds every dummy flow");
        } else {
            let mut map = pinned_flows(&c);
            let existing = map.keys().count();
            let mut inserted = 0;
            let mut refused = false;
            for key in &dummies {
                match map.insert(key, FlowValue::frozen(), 0) {
                    Ok(()) => inserted += 1,
                    Err(e) if is_e2big(&e) => {
                        refused = true;
                        break;
                    }
                    Err(e) => panic!("inserting a dummy flow: {e}"),
                }
            }
            assert!(refused, "the map took {inserted} dummy flows without refusing one");
            assert_eq!(existing + inserted, FLOW_MAP_MAX_ENTRIES as usize, "the map is full at its capacity");
            pinned = Some((map, inserted));
        }

        let before = scrape_metrics(&c, "main", METRICS_PORT);
        let (dl, rows, entries) = observed_download(&c, client, "full.bin", mode);
        assert!(dl.head.starts_with("HTTP/1.1 200"), "{}", dl.head);
        assert_eq!(dl.body_bytes, size as u64);
        assert_eq!(dl.sha256, sha);
        assert_eq!(dl.header("x-served-by"), Some("main"), "with a full table the main serves");
        assert!(rows.is_empty(), "a flow was listed while the main served with a full table: {rows:?}");
        assert_eq!(entries, 0, "the client got a table entry although the table was full");
        std::thread::sleep(COUNT_SETTLE);
        let after = scrape_metrics(&c, "main", METRICS_PORT);
        let delta = |m: &str| after.get(m).copied().unwrap_or(0.0) - before.get(m).copied().unwrap_or(0.0);
        eprintln!(
            "--dataplane {mode}: full table: served by main; flow_table_full +{}, local_serves +{}, handoff_failures +{}, handoffs +{}",
            delta("baton_flow_table_full_total"),
            delta("baton_local_serves_total"),
            delta("baton_handoff_failures_total"),
            delta("baton_handoffs_total")
        );
        assert_eq!(delta("baton_flow_table_full_total"), 1.0);
        assert_eq!(delta("baton_local_serves_total"), 1.0);
        assert_eq!(delta("baton_handoff_failures_total"), 1.0, "a full table is a failed handoff");
        assert_eq!(delta("baton_handoffs_total"), 0.0);

        // Make room again.
        if let Some((mut map, inserted)) = pinned.take() {
            for key in &dummies[..inserted] {
                map.remove(key).expect("removing a dummy flow");
            }
            assert_eq!(map.keys().count(), 0, "the dummy flows are gone");
        } else {
            restart_main_with_table(&mut c, &main_args, &[]);
            assert!(held_flows(&c).is_empty(), "the nftables set is empty again");
        }

        let before = scrape_metrics(&c, "main", METRICS_PORT);
        let (dl, rows, entries) = observed_download(&c, client, "full.bin", mode);
        assert!(dl.head.starts_with("HTTP/1.1 200"), "{}", dl.head);
        assert_eq!(dl.body_bytes, size as u64);
        assert_eq!(dl.sha256, sha);
        assert_eq!(dl.header("x-served-by"), Some("p-fra"), "with room in the table the download is handed off again");
        assert_eq!(rows.len(), 1, "the handed-off download is the one listed flow: {rows:?}");
        assert_eq!(rows[0]["client"].as_str().and_then(|s| s.parse::<SocketAddrV4>().ok()).map(|a| *a.ip()), Some(client_addr), "{rows:?}");
        assert_eq!(entries, 1, "the handed-off download has its table entry");
        let deadline = Instant::now() + COUNT_SETTLE;
        let after = loop {
            let m = scrape_metrics(&c, "main", METRICS_PORT);
            if m.get("baton_handoffs_total") > before.get("baton_handoffs_total") || Instant::now() > deadline {
                break m;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let delta = |m: &str| after.get(m).copied().unwrap_or(0.0) - before.get(m).copied().unwrap_or(0.0);
        assert_eq!(delta("baton_handoffs_total"), 1.0);
        assert_eq!(delta("baton_flow_table_full_total"), 0.0);
        assert_eq!(delta("baton_local_serves_total"), 0.0);
    });
}

/// What a paused download received.
#[derive(Debug)]
struct Received {
    /// The response head, as sent.
    head: String,
    body_bytes: u64,
    sha256: String,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().filter_map(|l| l.split_once(':')).find(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim())
    }
}

/// Downloads `object` through the VIP from `client` with a plain socket that stops reading once
/// [`OBSERVED_AFTER_BYTES`] of the body arrived: the object is larger than every buffer on the
/// way, so the connection stays open (and any handoff is done) while the flow list and the
/// table entries of `client` are read. Then it reads the rest.
fn observed_download(c: &Cluster, client: &str, object: &str, mode: &str) -> (Received, Vec<serde_json::Value>, usize) {
    let addr = c.addr(client).expect("client");
    let ns = c.lab.node(client).expect("client node").ns.clone();
    let vip = SocketAddrV4::new(c.lab.vip(), VIP_PORT);
    let request = format!("GET /{object} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", vip.ip());
    let (paused_tx, paused_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        baton_tests::in_netns(&ns, move || -> std::io::Result<Received> {
            use sha2::Digest as _;
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect_timeout(&vip.into(), Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            s.write_all(request.as_bytes())?;
            let (mut got, mut chunk) = (Vec::new(), vec![0u8; 64 << 10]);
            let mut head_end = None;
            let mut paused = false;
            let mut hasher = sha2::Sha256::new();
            let mut body_bytes = 0u64;
            loop {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                match head_end {
                    None => {
                        got.extend_from_slice(&chunk[..n]);
                        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            head_end = Some(i + 4);
                            hasher.update(&got[i + 4..]);
                            body_bytes += (got.len() - i - 4) as u64;
                        }
                    }
                    Some(_) => {
                        hasher.update(&chunk[..n]);
                        body_bytes += n as u64;
                    }
                }
                if !paused && body_bytes >= OBSERVED_AFTER_BYTES {
                    paused = true;
                    let _ = paused_tx.send(());
                    let _ = go_rx.recv_timeout(Duration::from_secs(30));
                }
            }
            let head = String::from_utf8_lossy(&got[..head_end.unwrap_or(got.len())]).into_owned();
            Ok(Received { head, body_bytes, sha256: hex::encode(hasher.finalize()) })
        })
    });
    let observed = paused_rx.recv_timeout(Duration::from_secs(10)).is_ok();
    let rows = c.flows().expect("flow list");
    let entries = table_clients(c, mode).into_iter().filter(|a| *a == addr).count();
    let _ = go_tx.send(());
    let received = reader.join().expect("reader thread").expect("entering the client's namespace").expect("download");
    assert!(observed, "the download never got {OBSERVED_AFTER_BYTES} body bytes: {received:?}");
    (received, rows, entries)
}

/// The `net.ipv4.tcp_syncookies` of the main's namespace.
fn syncookies(c: &Cluster) -> String {
    let out = c.exec("main", &["cat", "/proc/sys/net/ipv4/tcp_syncookies"]).expect("cat");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The `TcpExt` counters of `node`'s namespace (`/proc/net/netstat`).
fn tcp_ext(c: &Cluster, node: &str) -> BTreeMap<String, u64> {
    let out = c.exec(node, &["cat", "/proc/net/netstat"]).expect("netstat");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let [names, values] = lines.as_slice() else { panic!("no TcpExt lines in /proc/net/netstat:\n{text}") };
    names.split_whitespace().skip(1).zip(values.split_whitespace().skip(1)).map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(0))).collect()
}

/// The client address of every entry of the main's data-plane table: the pinned BPF map, or
/// for the userspace plane the nftables set that holds its flows from the kernel.
fn table_clients(c: &Cluster, mode: &str) -> Vec<Ipv4Addr> {
    if mode == "userspace" {
        return held_flows(c).into_iter().map(|k| *k.client().ip()).collect();
    }
    let map = pinned_flows(c);
    map.keys().map(|k| *k.expect("reading a key of the pinned flow map").client().ip()).collect()
}

/// The main's pinned `baton_flows` map.
fn pinned_flows(c: &Cluster) -> aya::maps::HashMap<aya::maps::MapData, FlowKey, FlowValue> {
    let path = c.lab.pin_dir().join("main").join("baton_flows");
    let data = aya::maps::MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    aya::maps::Map::HashMap(data).try_into().expect("baton_flows is a hash map of flow keys and values")
}

fn is_e2big(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG))
}

/// More flow keys than the table holds, of clients in the last /24 of the lab's block, which no
/// lab node uses (links take the block's /24s from the first one on).
fn dummy_keys(c: &Cluster, opts: &ClusterOptions) -> Vec<FlowKey> {
    let (base, _) = opts.block.split_once('/').expect("block");
    let b = base.parse::<Ipv4Addr>().expect("block address").octets();
    let net = [b[0], b[1], b[2] + 7];
    for n in c.lab.nodes().iter().filter(|n| n.name != "router") {
        assert_ne!(n.addr.octets()[..3], net, "{} lives in the dummy clients' /24", n.name);
    }
    let vip = SocketAddrV4::new(c.lab.vip(), VIP_PORT);
    // 256 addresses x 257 ports: one more than the capacity.
    (0..=255u8)
        .flat_map(|h| (10_000..10_257u16).map(move |p| (h, p)))
        .map(|(h, p)| FlowKey::new(SocketAddrV4::new(Ipv4Addr::new(net[0], net[1], net[2], h), p), vip))
        .collect()
}

/// The main's userspace table file (`baton_ebpf::userspace::STATE_FILE` in its state dir).
fn userspace_table_path(c: &Cluster) -> std::path::PathBuf {
    c.lab.state_dir().join("main-state").join(baton_ebpf::userspace::STATE_FILE)
}

/// Restarts the main (userspace data plane) with exactly `keys` in its table: the table it saves
/// is replaced and the nftables set that holds the saved flows is emptied while it is down, so the
/// new process restores these flows (held, frozen) and no others.
fn restart_main_with_table(c: &mut Cluster, main_args: &[String], keys: &[FlowKey]) {
    let main = c.main_node().expect("main node");
    c.kill(&main, "baton-main");
    let path = userspace_table_path(c);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("the main's state directory");
    }
    std::fs::write(&path, encode_userspace_table(keys)).expect("writing the userspace table");
    let out = c.exec(&main, &["nft", "flush", "set", "ip", NFT_TABLE, NFT_SET]).expect("nft");
    assert!(out.status.success(), "nft flush: {}", String::from_utf8_lossy(&out.stderr));
    c.start_main(main_args).expect("main starts");
    c.wait_registered(c.participant_names().len()).expect("participants reconnect");
}

/// The userspace table's file format (`save_table` in `ebpf/src/userspace/mod.rs`): a magic,
/// then per flow the key (client, VIP: address and port), state (1 frozen), participant,
/// has_ack, ack, wraps, has_next_seq, next_seq, big-endian. A file the main cannot parse is
/// ignored, and the test then fails for a table that is not full.
fn encode_userspace_table(keys: &[FlowKey]) -> Vec<u8> {
    let mut buf = b"BATONUS1".to_vec();
    for k in keys {
        let (c, v) = (k.client(), k.vip());
        buf.extend_from_slice(&c.ip().octets());
        buf.extend_from_slice(&c.port().to_be_bytes());
        buf.extend_from_slice(&v.ip().octets());
        buf.extend_from_slice(&v.port().to_be_bytes());
        buf.push(1);
        buf.extend_from_slice(&[0; 4 + 1 + 4 + 4 + 1 + 4]);
    }
    buf
}

/// The flows the userspace plane's nftables set holds in the main's namespace.
fn held_flows(c: &Cluster) -> Vec<FlowKey> {
    let out = c.exec("main", &["nft", "list", "set", "ip", NFT_TABLE, NFT_SET]).expect("nft");
    assert!(out.status.success(), "nft list: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(start) = text.find("elements = {") else { return Vec::new() };
    let body = &text[start + "elements = {".len()..];
    let body = &body[..body.find('}').unwrap_or(body.len())];
    body.split(',')
        .map(|item| {
            let parts: Vec<&str> = item.split(" . ").map(str::trim).collect();
            let [ca, cp, va, vp] = parts.as_slice() else { panic!("unexpected nft element {item:?}") };
            let addr = |a: &str, p: &str| SocketAddrV4::new(a.parse().expect("address"), p.parse().expect("port"));
            FlowKey::new(addr(ca, cp), addr(va, vp))
        })
        .collect()
}

/// What the flood sends.
#[derive(Debug, Clone)]
struct FloodSpec {
    vip: Ipv4Addr,
    /// Spoofed source addresses, picked at random per SYN.
    sources: Vec<Ipv4Addr>,
    count: usize,
    rate: usize,
    limit: Duration,
    seed: u64,
}

/// What the flood did.
#[derive(Debug, Clone, Copy)]
struct FloodReport {
    sent: usize,
    elapsed: Duration,
}

/// A SYN flood running on a thread in a lab node's namespace; stopped and joined on drop.
struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
    handle: Option<JoinHandle<anyhow::Result<std::io::Result<FloodReport>>>>,
}

impl Flood {
    fn start(ns: &str, spec: FloodSpec) -> Flood {
        let (stop, sent, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let (s, n, d, ns) = (stop.clone(), sent.clone(), done.clone(), ns.to_owned());
        let handle = std::thread::spawn(move || {
            let r = baton_tests::in_netns(&ns, move || syn_flood(&spec, &n, &s));
            d.store(true, Ordering::Release);
            r
        });
        Flood { stop, sent, done, handle: Some(handle) }
    }

    fn running(&self) -> bool {
        !self.done.load(Ordering::Acquire)
    }

    /// Waits until `n` SYNs went out.
    fn wait_sent(&self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.sent.load(Ordering::Relaxed) < n {
            assert!(self.running(), "the flood ended after {} SYNs", self.sent.load(Ordering::Relaxed));
            assert!(Instant::now() < deadline, "the flood sent only {} SYNs in {limit:?}", self.sent.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the flood to end.
    fn finish(mut self) -> FloodReport {
        let handle = self.handle.take().expect("flood thread");
        handle.join().expect("flood thread").expect("entering the flooder's namespace").expect("flood")
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sends `spec.count` SYNs at `spec.rate` through a raw IPv4 socket (`IPPROTO_RAW`: the packet
/// carries its own header), each from a random address of `spec.sources` and a random port.
fn syn_flood(spec: &FloodSpec, sent: &AtomicUsize, stop: &AtomicBool) -> std::io::Result<FloodReport> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let dest = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(spec.vip.octets()) },
        sin_zero: [0; 8],
    };
    let mut rng = spec.seed | 1;
    let start = Instant::now();
    let mut n = 0;
    while n < spec.count && !stop.load(Ordering::Acquire) && start.elapsed() < spec.limit {
        let due = start + Duration::from_secs_f64(n as f64 / spec.rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()).filter(|w| *w > Duration::from_millis(1)) {
            std::thread::sleep(wait);
        }
        let r = xorshift(&mut rng);
        let src = spec.sources[(r % spec.sources.len() as u64) as usize];
        let port = 1024 + ((r >> 20) % (65_536 - 1024)) as u16;
        let pkt = syn_segment(src, port, spec.vip, VIP_PORT, (r >> 32) as u32);
        // SAFETY: sendto with a buffer and a sockaddr_in we own, and their sizes.
        let rc = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&dest as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            return Err(e);
        }
        n += 1;
        sent.store(n, Ordering::Relaxed);
    }
    Ok(FloodReport { sent: n, elapsed: start.elapsed() })
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// An IPv4 TCP SYN with an MSS option (1460), both checksums filled in.
fn syn_segment(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, seq: u32) -> [u8; SYN_BYTES] {
    let mut p = [0u8; SYN_BYTES];
    p[0] = 0x45; // IPv4, 5 words of header
    p[2..4].copy_from_slice(&(SYN_BYTES as u16).to_be_bytes());
    p[4..6].copy_from_slice(&(seq as u16).to_be_bytes()); // identification
    p[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
    p[8] = 64; // TTL
    p[9] = libc::IPPROTO_TCP as u8;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = internet_checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let t = 20;
    p[t..t + 2].copy_from_slice(&sport.to_be_bytes());
    p[t + 2..t + 4].copy_from_slice(&dport.to_be_bytes());
    p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    p[t + 12] = 6 << 4; // 6 words of header: 20 bytes and the MSS option
    p[t + 13] = 0x02; // SYN
    p[t + 14..t + 16].copy_from_slice(&64_240u16.to_be_bytes());
    p[t + 20..t + 24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    let tcp_len = (SYN_BYTES - t) as u16;
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = libc::IPPROTO_TCP as u8;
    pseudo[10..12].copy_from_slice(&tcp_len.to_be_bytes());
    let tcp_sum = internet_checksum(&[&pseudo, &p[t..]]);
    p[t + 16..t + 18].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// RFC 1071 checksum over the concatenation of `parts` (each of even length).
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = parts.iter().flat_map(|p| p.chunks(2)).map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[test]
fn flood_syns_are_well_formed_segments() {
    let (src, dst) = (Ipv4Addr::new(198, 19, 14, 77), Ipv4Addr::new(203, 0, 113, 10));
    let p = syn_segment(src, 40_001, dst, 80, 0x0102_0304);
    let (ip, rest) = etherparse::Ipv4Header::from_slice(&p).expect("ipv4 header");
    assert_eq!((ip.source, ip.destination, ip.total_len, ip.time_to_live), (src.octets(), dst.octets(), SYN_BYTES as u16, 64));
    assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "ip checksum");
    let (tcp, payload) = etherparse::TcpHeader::from_slice(rest).expect("tcp header");
    assert!(payload.is_empty());
    assert_eq!((tcp.source_port, tcp.destination_port, tcp.sequence_number), (40_001, 80, 0x0102_0304));
    assert!(tcp.syn && !tcp.ack && !tcp.rst && !tcp.fin);
    assert_eq!(tcp.options.as_slice(), &[2, 4, 0x05, 0xb4]);
    assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(&ip, payload).expect("checksum"), "tcp checksum");
}
