//! One TCP connection's bytes as the client saw them: a tcpdump that keeps whole TCP headers,
//! a classic-pcap parser that returns sequence numbers, flags, TCP timestamps and payload
//! lengths, and an analysis of the server-to-client byte stream: which bytes were new and which
//! were sent again, where new data paused, which segments came from another sender, and the
//! round-trip time.
//!
//! The analysis never reads a clock: every instant is a capture timestamp or one the caller
//! passes in (wall-clock microseconds, the clock tcpdump stamps packets with; [`now_us`] reads
//! it for the caller). It never compares a figure with a target either; benchmarks do that.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};

use crate::Cluster;

/// Bytes of each packet tcpdump keeps: Ethernet (14) + IPv4 without options (20) + TCP with the
/// largest option block (60) = 94. Payload is never needed: its length comes from the IP header.
pub const SNAPLEN: u32 = 96;
/// tcpdump's capture buffer in KiB: 64 MiB holds several seconds of a 300 Mbit/s transfer's
/// packets (about 50 000 a second with the ACKs, each a few hundred bytes in the ring), so the
/// kernel drops none while tcpdump waits for a core.
pub const CAPTURE_BUFFER_KIB: u32 = 65536;
/// How long tcpdump may take to announce that its capture is armed.
pub const CAPTURE_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before stopping tcpdump, so packets already delivered to the interface reach the file.
pub const CAPTURE_SETTLE: Duration = Duration::from_millis(200);

/// TCP header flags.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Length of the pcap file header.
const PCAP_HEADER_LEN: usize = 24;
/// Length of a pcap record header (seconds, sub-seconds, captured length, original length).
const PCAP_RECORD_LEN: usize = 16;
/// Link types this parser reads (tcpdump's LINKTYPE_* numbers).
const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_RAW_OPENBSD: u32 = 12;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_LINUX_SLL2: u32 = 276;
/// Header lengths of the link types.
const ETHERNET_LEN: usize = 14;
const VLAN_TAG_LEN: usize = 4;
const SLL_LEN: usize = 16;
const SLL2_LEN: usize = 20;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
/// TCP option kinds the parser walks.
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_TIMESTAMP: u8 = 8;

/// A sender keeps its IP ID series: Linux numbers the packets of one socket from a random start,
/// one per segment, so a segment whose ID is not a little ahead of (or a little behind, when
/// reordered) the previous one's came from another socket, i.e. another sender. Forward: the
/// largest merged (GRO) packet plus segments tcpdump may have missed; false continuations of a
/// random new start happen with probability (1024 + 64) / 65536.
const IP_ID_FORWARD: u16 = 1024;
/// See [`IP_ID_FORWARD`]: how far back a reordered segment of the same sender may be.
const IP_ID_BACKWARD: u16 = 64;

/// Wall-clock microseconds since the Unix epoch: the clock of pcap timestamps.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// One captured IPv4/TCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Capture time, wall-clock microseconds.
    pub ts_us: u64,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// The IP identification field.
    pub ip_id: u16,
    pub seq: u32,
    pub ack: u32,
    /// TCP flags (see [`flags`]).
    pub flags: u8,
    /// Payload bytes: IP total length minus the IP and TCP headers, so also right for packets cut
    /// at the snap length and for packets the receiver merged (GRO).
    pub payload: u32,
    /// The TCP timestamp option (TSval, TSecr) when the captured header holds one.
    pub ts_opt: Option<(u32, u32)>,
}

impl Segment {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Parses a classic pcap file (microsecond or nanosecond timestamps, either byte order) of
/// Ethernet, Linux cooked (v1, v2) or raw IP frames into its IPv4/TCP packets. Other packets
/// are skipped; a record cut short at the end of the file (tcpdump stopped mid-write) ends the
/// list.
pub fn parse_pcap(data: &[u8]) -> anyhow::Result<Vec<Segment>> {
    let header = data.get(..PCAP_HEADER_LEN).ok_or_else(|| anyhow!("pcap shorter than its header ({} bytes)", data.len()))?;
    let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let (le, nanos) = match magic {
        0xa1b2_c3d4 => (true, false),
        0xa1b2_3c4d => (true, true),
        0xd4c3_b2a1 => (false, false),
        0x4d3c_b2a1 => (false, true),
        other => bail!("not a classic pcap file (magic {other:#010x})"),
    };
    let rd32 = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    // The upper bits of the link-type field carry FCS information, not the type.
    let linktype = rd32(&header[20..24]) & 0x0fff_ffff;
    if ![LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_RAW_OPENBSD, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2].contains(&linktype) {
        bail!("unsupported pcap link type {linktype}");
    }
    let mut out = Vec::new();
    let mut off = PCAP_HEADER_LEN;
    while let Some(rec) = data.get(off..off + PCAP_RECORD_LEN) {
        let (secs, frac) = (u64::from(rd32(&rec[0..4])), u64::from(rd32(&rec[4..8])));
        let (incl, orig) = (rd32(&rec[8..12]) as usize, rd32(&rec[12..16]) as usize);
        let start = off + PCAP_RECORD_LEN;
        let Some(frame) = data.get(start..start + incl) else { break };
        off = start + incl;
        let ts_us = secs * 1_000_000 + if nanos { frac / 1000 } else { frac };
        let Some((l3, l2_len)) = ipv4_of(linktype, frame) else { continue };
        if let Some(seg) = parse_ipv4_tcp(ts_us, l3, orig.saturating_sub(l2_len)) {
            out.push(seg);
        }
    }
    Ok(out)
}

/// The IPv4 packet inside a frame and the length of the link header before it.
fn ipv4_of(linktype: u32, frame: &[u8]) -> Option<(&[u8], usize)> {
    let be16 = |b: &[u8], at: usize| b.get(at..at + 2).map(|v| u16::from_be_bytes([v[0], v[1]]));
    match linktype {
        LINKTYPE_ETHERNET => {
            let mut len = ETHERNET_LEN;
            let mut ethertype = be16(frame, 12)?;
            if ethertype == ETHERTYPE_VLAN {
                ethertype = be16(frame, 16)?;
                len += VLAN_TAG_LEN;
            }
            (ethertype == ETHERTYPE_IPV4).then(|| frame.get(len..).map(|ip| (ip, len)))?
        }
        LINKTYPE_LINUX_SLL => (be16(frame, 14)? == ETHERTYPE_IPV4).then(|| frame.get(SLL_LEN..).map(|ip| (ip, SLL_LEN)))?,
        LINKTYPE_LINUX_SLL2 => (be16(frame, 0)? == ETHERTYPE_IPV4).then(|| frame.get(SLL2_LEN..).map(|ip| (ip, SLL2_LEN)))?,
        _ => Some((frame, 0)),
    }
}

/// A segment from an IPv4 packet whose IP and TCP headers were captured (the payload may be cut
/// off). `wire_len` is the packet's length on the wire, used when the IP total length is 0 (an
/// unsegmented super-packet).
fn parse_ipv4_tcp(ts_us: u64, ip: &[u8], wire_len: usize) -> Option<Segment> {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != IPPROTO_TCP {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let total = match usize::from(u16::from_be_bytes([ip[2], ip[3]])) {
        0 => wire_len,
        n => n,
    };
    let tcp = ip.get(ihl..ihl + 20)?;
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < 20 {
        return None;
    }
    let payload = total.checked_sub(ihl + doff)?;
    let ts_opt = ip.get(ihl + 20..ihl + doff).and_then(timestamp_option);
    let addr = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
    let be16 = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    Some(Segment {
        ts_us,
        src: SocketAddrV4::new(addr(12), be16(tcp, 0)),
        dst: SocketAddrV4::new(addr(16), be16(tcp, 2)),
        ip_id: be16(ip, 4),
        seq: be32(tcp, 4),
        ack: be32(tcp, 8),
        flags: tcp[13],
        payload: u32::try_from(payload).ok()?,
        ts_opt,
    })
}

/// TSval and TSecr from a TCP option block.
fn timestamp_option(mut opts: &[u8]) -> Option<(u32, u32)> {
    while let Some(&kind) = opts.first() {
        match kind {
            TCPOPT_EOL => return None,
            TCPOPT_NOP => opts = &opts[1..],
            _ => {
                let len = usize::from(*opts.get(1)?);
                let opt = opts.get(..len.max(2))?;
                if kind == TCPOPT_TIMESTAMP && len == 10 {
                    return Some((
                        u32::from_be_bytes([opt[2], opt[3], opt[4], opt[5]]),
                        u32::from_be_bytes([opt[6], opt[7], opt[8], opt[9]]),
                    ));
                }
                opts = &opts[len.max(2)..];
            }
        }
    }
    None
}

/// A running tcpdump writing whole TCP headers of port 80 to a file in the lab's state directory.
#[derive(Debug)]
pub struct TcpCapture {
    child: Option<Child>,
    file: PathBuf,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// What a finished capture holds.
#[derive(Debug, Clone)]
pub struct Captured {
    pub segments: Vec<Segment>,
    /// Packets tcpdump reports as dropped by the kernel (None when it did not say).
    pub dropped: Option<u64>,
}

impl TcpCapture {
    /// Starts tcpdump on `node`'s interface and returns once it announces the capture is armed.
    pub fn start(cluster: &Cluster, node: &str) -> anyhow::Result<TcpCapture> {
        let file = cluster.lab.state_dir().join(format!("{node}-flow-{}.pcap", crate::unique()));
        let iface = cluster.lab.node(node)?.iface.clone();
        let mut cmd = cluster.lab.command(node, "tcpdump")?;
        cmd.args(["-i", &iface, "-n", "-s", &SNAPLEN.to_string(), "-B", &CAPTURE_BUFFER_KIB.to_string(), "-U", "-w"])
            .arg(&file)
            .arg("tcp port 80");
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().context("starting tcpdump")?;
        let mut pipe = child.stderr.take().ok_or_else(|| anyhow!("no tcpdump stderr"))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let seen = Arc::clone(&stderr);
        // Keeps reading until tcpdump exits: its last words are the drop counts.
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut all = seen.lock().unwrap_or_else(|p| p.into_inner());
                all.extend_from_slice(&buf[..n]);
                if all.windows(12).any(|w| w == b"listening on") {
                    let _ = tx.send(());
                }
            }
        });
        let cap = TcpCapture { child: Some(child), file, stderr };
        if rx.recv_timeout(CAPTURE_START_TIMEOUT).is_err() {
            bail!("tcpdump in {node} did not start: {}", cap.stderr_text());
        }
        Ok(cap)
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|p| p.into_inner())).to_string()
    }

    /// Stops tcpdump (SIGINT, so it flushes), waits for it and parses the file.
    pub fn finish(self) -> anyhow::Result<Captured> {
        self.finish_keeping(None)
    }

    /// Like [`TcpCapture::finish`], and copies the pcap file to `keep` when given.
    pub fn finish_keeping(mut self, keep: Option<&std::path::Path>) -> anyhow::Result<Captured> {
        if let Some(mut child) = self.child.take() {
            std::thread::sleep(CAPTURE_SETTLE);
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            child.wait().context("waiting for tcpdump")?;
        }
        // The reader thread sees EOF right after tcpdump exits; give it a moment to store the
        // summary lines.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !self.stderr_text().contains("dropped by kernel") && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let data = std::fs::read(&self.file).with_context(|| format!("reading {}", self.file.display()))?;
        let _ = std::fs::remove_file(&self.file);
        if let Some(dest) = keep {
            std::fs::write(dest, &data).with_context(|| format!("writing {}", dest.display()))?;
        }
        Ok(Captured { segments: parse_pcap(&data)?, dropped: dropped_by_kernel(&self.stderr_text()) })
    }
}

impl Drop for TcpCapture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The count of tcpdump's "N packets dropped by kernel" summary line.
fn dropped_by_kernel(stderr: &str) -> Option<u64> {
    stderr.lines().find(|l| l.contains("dropped by kernel")).and_then(|l| l.split_whitespace().next()).and_then(|n| n.parse().ok())
}

/// One TCP connection: the client's address and the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    pub client: SocketAddrV4,
    pub server: SocketAddrV4,
}

/// Connections to `server_port` in the order their first SYN was captured.
pub fn connections(segments: &[Segment], server_port: u16) -> Vec<Conn> {
    let mut out: Vec<Conn> = Vec::new();
    for s in segments {
        if s.has(flags::SYN) && !s.has(flags::ACK) && s.dst.port() == server_port {
            let c = Conn { client: s.src, server: s.dst };
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// One server-to-client segment that carried data, classified against what came before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataSegment {
    pub ts_us: u64,
    /// Stream offset of its first byte (0 = the first byte after the SYN).
    pub offset: u64,
    pub len: u32,
    /// Bytes above everything sent before.
    pub new: u32,
    /// Bytes at or below the highest byte sent before: sent again.
    pub resent: u32,
    /// Of the resent bytes, those the client had already been sent and captured.
    pub duplicate: u32,
    /// Which sender (socket) it came from: a count that rises each time the IP ID series breaks.
    pub sender: u32,
}

/// A pause between two segments that carried new data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The last new data before the pause.
    pub from_us: u64,
    /// The first new data after it.
    pub to_us: u64,
}

impl Gap {
    pub fn us(&self) -> u64 {
        self.to_us.saturating_sub(self.from_us)
    }
}

/// Bytes sent again within a time window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resent {
    pub bytes: u64,
    /// Of those, bytes the client had already been sent and captured.
    pub duplicate: u64,
}

/// One sender's segments followed by another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    /// From the old sender's last data segment to the new sender's first.
    pub gap: Gap,
    pub old_sender: u32,
    pub new_sender: u32,
    /// How far below the highest byte sent before the new sender started (0: right after it).
    pub rewind: u64,
}

/// How new data resumed after an instant at which the sender died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// The first new data from the sender that took over.
    pub first_new_us: u64,
    /// New bytes that arrived after the instant from the old sender (they were in flight).
    pub tail_bytes: u64,
    /// Whether the new sender was found by its IP ID series (else: the end of the longest pause).
    pub by_sender: bool,
}

/// The server-to-client direction of one connection.
#[derive(Debug, Clone)]
pub struct Stream {
    pub conn: Conn,
    /// The server's initial sequence number (from its SYN; else the first data segment's
    /// sequence number minus one).
    pub isn: u32,
    /// Client SYN to server SYN-ACK.
    pub handshake_rtt_us: Option<u64>,
    /// Smallest time from the client sending a TCP timestamp to the first data segment echoing
    /// it: the round trip of the data path with the least queueing seen.
    pub data_rtt_us: Option<u64>,
    pub data: Vec<DataSegment>,
    /// Stream offset of the server's FIN, i.e. the length of everything it sent.
    pub fin_offset: Option<u64>,
    /// One past the highest stream offset sent.
    pub high: u64,
    /// Bytes below `high` that never appeared in the capture.
    pub holes: u64,
    /// Resets in either direction.
    pub resets: usize,
    /// Whether the data segments' IP IDs tell senders apart (they are not all the same).
    pub ip_ids_usable: bool,
}

/// Merged byte ranges.
#[derive(Debug, Default)]
struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    /// Adds `[start, end)` and returns how many of its bytes were already present.
    fn insert(&mut self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        let lo = self.0.range(..=start).next_back().filter(|(_, &e)| e >= start).map_or(start, |(&s, _)| s);
        let touching: Vec<(u64, u64)> = self.0.range(lo..=end).map(|(&s, &e)| (s, e)).collect();
        let (mut merged_start, mut merged_end, mut present) = (start, end, 0);
        for (s, e) in touching {
            present += e.min(end).saturating_sub(s.max(start));
            merged_start = merged_start.min(s);
            merged_end = merged_end.max(e);
            self.0.remove(&s);
        }
        self.0.insert(merged_start, merged_end);
        present
    }

    /// Bytes of `[0, end)` not present.
    fn missing_below(&self, end: u64) -> u64 {
        let present: u64 = self.0.iter().map(|(&s, &e)| e.min(end).saturating_sub(s.min(end))).sum();
        end - present
    }
}

/// The 64-bit stream offset of a 32-bit one, taken as the nearest to `near`.
fn unwrap_offset(off32: u32, near: u64) -> u64 {
    let delta = i64::from(off32.wrapping_sub(near as u32) as i32);
    near.saturating_add_signed(delta)
}

/// Whether `id` continues the IP ID series that `prev` belongs to.
fn same_sender(prev: u16, id: u16) -> bool {
    let ahead = id.wrapping_sub(prev);
    ahead <= IP_ID_FORWARD || ahead >= 0u16.wrapping_sub(IP_ID_BACKWARD)
}

impl Stream {
    /// Analyses the server-to-client direction of `conn` in `segments` (capture order).
    pub fn analyse(segments: &[Segment], conn: Conn) -> Stream {
        let down = |s: &&Segment| s.src == conn.server && s.dst == conn.client;
        let up = |s: &&Segment| s.src == conn.client && s.dst == conn.server;
        let syn_ack = segments.iter().filter(down).find(|s| s.has(flags::SYN));
        let isn = syn_ack
            .map(|s| s.seq)
            .or_else(|| segments.iter().filter(down).find(|s| s.payload > 0).map(|s| s.seq.wrapping_sub(1)))
            .unwrap_or(0);
        let syn_us = segments.iter().filter(up).find(|s| s.has(flags::SYN)).map(|s| s.ts_us);
        let handshake_rtt_us = syn_us.zip(syn_ack.map(|s| s.ts_us)).and_then(|(a, b)| b.checked_sub(a));

        let mut tsval_sent: HashMap<u32, u64> = HashMap::new();
        let mut data_rtt_us: Option<u64> = None;
        let mut seen = Ranges::default();
        let (mut high, mut fin_offset, mut resets) = (0u64, None, 0usize);
        let mut data = Vec::new();
        let (mut sender, mut last_id): (u32, Option<u16>) = (0, None);
        let mut ip_ids_usable = false;
        let base = isn.wrapping_add(1);
        for s in segments {
            let is_up = up(&s);
            if !is_up && !down(&s) {
                continue;
            }
            if s.has(flags::RST) {
                resets += 1;
            }
            if is_up {
                if let Some((tsval, _)) = s.ts_opt {
                    tsval_sent.entry(tsval).or_insert(s.ts_us);
                }
                continue;
            }
            if s.has(flags::SYN) {
                continue;
            }
            let offset = unwrap_offset(s.seq.wrapping_sub(base), high);
            if s.has(flags::FIN) {
                fin_offset = Some(offset + u64::from(s.payload));
            }
            if s.payload == 0 {
                continue;
            }
            if let Some(echo) = s.ts_opt.and_then(|(_, ecr)| tsval_sent.get(&ecr)) {
                let rtt = s.ts_us.saturating_sub(*echo);
                data_rtt_us = Some(data_rtt_us.map_or(rtt, |r| r.min(rtt)));
            }
            if let Some(prev) = last_id {
                ip_ids_usable |= prev != s.ip_id;
                if !same_sender(prev, s.ip_id) {
                    sender += 1;
                }
            }
            last_id = Some(s.ip_id);
            let end = offset + u64::from(s.payload);
            let new = end.saturating_sub(high.max(offset));
            let resent = u64::from(s.payload) - new;
            let duplicate = seen.insert(offset, end);
            high = high.max(end);
            data.push(DataSegment {
                ts_us: s.ts_us,
                offset,
                len: s.payload,
                new: new as u32,
                resent: resent as u32,
                duplicate: duplicate as u32,
                sender,
            });
        }
        let holes = seen.missing_below(high);
        Stream { conn, isn, handshake_rtt_us, data_rtt_us, data, fin_offset, high, holes, resets, ip_ids_usable }
    }

    /// The round trip to compare pauses with: the data path's, else the handshake's.
    pub fn rtt_us(&self) -> Option<u64> {
        self.data_rtt_us.or(self.handshake_rtt_us)
    }

    /// Everything the server sent: up to its FIN, else up to the highest byte.
    pub fn length(&self) -> u64 {
        self.fin_offset.unwrap_or(self.high)
    }

    fn new_data(&self) -> impl Iterator<Item = &DataSegment> + '_ {
        self.data.iter().filter(|d| d.new > 0)
    }

    /// The longest pause between consecutive new-data segments that ends after `from_us` and
    /// starts before `to_us` (so a pause that began just before `from_us` counts).
    pub fn largest_new_gap(&self, from_us: u64, to_us: u64) -> Option<Gap> {
        let times: Vec<u64> = self.new_data().map(|d| d.ts_us).collect();
        times.windows(2).filter(|w| w[1] > from_us && w[0] < to_us).map(|w| Gap { from_us: w[0], to_us: w[1] }).max_by_key(Gap::us)
    }

    /// The first new data captured after `t_us`.
    pub fn first_new_after(&self, t_us: u64) -> Option<u64> {
        self.new_data().map(|d| d.ts_us).find(|&ts| ts > t_us)
    }

    /// Bytes sent again in segments captured within `[from_us, to_us)`.
    pub fn resent_between(&self, from_us: u64, to_us: u64) -> Resent {
        self.data.iter().filter(|d| d.ts_us >= from_us && d.ts_us < to_us).fold(Resent::default(), |acc, d| Resent {
            bytes: acc.bytes + u64::from(d.resent),
            duplicate: acc.duplicate + u64::from(d.duplicate),
        })
    }

    /// Bytes sent again over the whole connection.
    pub fn resent_total(&self) -> Resent {
        self.resent_between(0, u64::MAX)
    }

    /// The first change of sender after `from_us` and before `to_us`.
    pub fn sender_switch(&self, from_us: u64, to_us: u64) -> Option<Switch> {
        let i = (1..self.data.len()).find(|&i| {
            let (a, b) = (&self.data[i - 1], &self.data[i]);
            b.sender != a.sender && b.ts_us > from_us && b.ts_us < to_us
        })?;
        let (a, b) = (&self.data[i - 1], &self.data[i]);
        let high = self.data[..i].iter().map(|d| d.offset + u64::from(d.len)).max().unwrap_or(0);
        Some(Switch {
            gap: Gap { from_us: a.ts_us, to_us: b.ts_us },
            old_sender: a.sender,
            new_sender: b.sender,
            rewind: high.saturating_sub(b.offset),
        })
    }

    /// The largest payload of one sender's segments (its MSS, unless the receiver merged them).
    pub fn largest_payload(&self, sender: u32) -> u32 {
        self.data.iter().filter(|d| d.sender == sender).map(|d| d.len).max().unwrap_or(0)
    }

    /// How new data resumed after the sender died at `death_us`, looking until `to_us`: the first
    /// new data from the next sender (by IP ID series; None if no other sender sent new data),
    /// or, when the IP IDs cannot tell senders apart, the end of the longest pause in new data.
    pub fn recovery_after(&self, death_us: u64, to_us: u64) -> Option<Recovery> {
        let before = self.data.iter().rev().find(|d| d.ts_us <= death_us).map(|d| d.sender);
        let after: Vec<&DataSegment> = self.data.iter().filter(|d| d.ts_us > death_us && d.ts_us < to_us).collect();
        let tail = |until: u64| after.iter().filter(|d| d.ts_us < until && Some(d.sender) == before).map(|d| u64::from(d.new)).sum();
        if let (Some(old), true) = (before, self.ip_ids_usable) {
            let first = after.iter().find(|d| d.sender != old && d.new > 0)?;
            return Some(Recovery { first_new_us: first.ts_us, tail_bytes: tail(first.ts_us), by_sender: true });
        }
        let gap = self.largest_new_gap(death_us, to_us)?;
        let tail_bytes = after.iter().filter(|d| d.ts_us < gap.to_us).map(|d| u64::from(d.new)).sum();
        Some(Recovery { first_new_us: gap.to_us, tail_bytes, by_sender: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 40000);
    const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);
    const ISN: u32 = 0xffff_ff00;
    const MSS: u32 = 1448;

    /// The Ethernet/IPv4/TCP frame of `s` (with its timestamp option), cut at `SNAPLEN` like
    /// tcpdump cuts it, and its length on the wire; the payload only sets the IP total length.
    fn frame(s: &Segment) -> (Vec<u8>, usize) {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = 20 + 32 + s.payload as usize;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&u16::try_from(total).unwrap_or(0).to_be_bytes());
        f.extend_from_slice(&s.ip_id.to_be_bytes());
        f.extend_from_slice(&[0x40, 0, 64, IPPROTO_TCP, 0, 0]);
        f.extend_from_slice(&s.src.ip().octets());
        f.extend_from_slice(&s.dst.ip().octets());
        f.extend_from_slice(&s.src.port().to_be_bytes());
        f.extend_from_slice(&s.dst.port().to_be_bytes());
        f.extend_from_slice(&s.seq.to_be_bytes());
        f.extend_from_slice(&s.ack.to_be_bytes());
        f.extend_from_slice(&[0x80, s.flags, 0x01, 0xf5, 0, 0, 0, 0]);
        let (tsval, tsecr) = s.ts_opt.unwrap_or((0, 0));
        f.extend_from_slice(&[TCPOPT_NOP, TCPOPT_NOP, TCPOPT_TIMESTAMP, 10]);
        f.extend_from_slice(&tsval.to_be_bytes());
        f.extend_from_slice(&tsecr.to_be_bytes());
        let wire = ETHERNET_LEN + total;
        f.resize(wire.min(SNAPLEN as usize), 0xab);
        (f, wire)
    }

    /// A little-endian microsecond pcap file of Ethernet frames.
    fn pcap(frames: &[(u64, (Vec<u8>, usize))]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        for v in [0, 0, SNAPLEN, LINKTYPE_ETHERNET] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for (ts, (f, wire)) in frames {
            for v in [(ts / 1_000_000) as u32, (ts % 1_000_000) as u32, f.len() as u32, *wire as u32] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(f);
        }
        out
    }

    fn file_of(segs: &[Segment]) -> Vec<u8> {
        pcap(&segs.iter().map(|s| (s.ts_us, frame(s))).collect::<Vec<_>>())
    }

    fn seg(ts_us: u64, down: bool, id: u16, seq: u32, fl: u8, payload: u32, ts: (u32, u32)) -> Segment {
        let (src, dst) = if down { (SERVER, CLIENT) } else { (CLIENT, SERVER) };
        Segment { ts_us, src, dst, ip_id: id, seq, ack: 1, flags: fl, payload, ts_opt: Some(ts) }
    }

    /// Server data at stream offset `off` (relative to `ISN` + 1).
    fn data(ts_us: u64, id: u16, off: u32, len: u32) -> Segment {
        seg(ts_us, true, id, ISN.wrapping_add(1).wrapping_add(off), flags::ACK, len, (500, 0))
    }

    fn handshake() -> Vec<Segment> {
        vec![
            seg(1_000_000, false, 7, 99, flags::SYN, 0, (1000, 0)),
            seg(1_020_000, true, 0, ISN, flags::SYN | flags::ACK, 0, (400, 1000)),
            seg(1_020_100, false, 8, 100, flags::ACK, 0, (1020, 400)),
        ]
    }

    #[test]
    fn parses_cut_frames_with_exact_fields() {
        let s = Segment {
            ts_us: 1_700_000_000_123_456,
            src: SERVER,
            dst: CLIENT,
            ip_id: 0x1234,
            seq: 0xdead_beef,
            ack: 0x0102_0304,
            flags: flags::ACK | flags::PSH,
            payload: MSS,
            ts_opt: Some((77, 88)),
        };
        let (f, wire) = frame(&s);
        assert_eq!((f.len(), wire), (SNAPLEN as usize, 14 + 20 + 32 + 1448), "the frame is cut at the snap length");
        assert_eq!(&f[14..24], &[0x45, 0, 0x05, 0xdc, 0x12, 0x34, 0x40, 0, 64, 6]);
        assert_eq!(parse_pcap(&file_of(&[s])).expect("parses"), vec![s]);
    }

    #[test]
    fn gro_sized_and_super_packets_get_their_payload_from_the_ip_header() {
        // 40 segments merged by GRO: IP total length 57972.
        let merged = Segment { payload: 40 * MSS, ..data(5, 9, 0, 0) };
        // An unsegmented 80000-byte packet: IP total length 0, the record's wire length counts.
        let big = Segment { payload: 80_000, ..data(6, 10, 40 * MSS, 0) };
        assert_eq!(&frame(&merged).0[16..18], &57_972u16.to_be_bytes());
        assert_eq!(&frame(&big).0[16..18], &[0, 0]);
        let got = parse_pcap(&file_of(&[merged, big])).expect("parses");
        assert_eq!(got, vec![merged, big]);
        let mut segs = handshake();
        segs.extend(got);
        let s = Stream::analyse(&segs, Conn { client: CLIENT, server: SERVER });
        assert_eq!(s.data.iter().map(|d| (d.offset, d.new, d.resent)).collect::<Vec<_>>(), vec![(0, 40 * MSS, 0), (57_920, 80_000, 0)]);
        assert_eq!((s.high, s.holes), (137_920, 0));
    }

    #[test]
    fn skips_non_tcp_and_stops_at_a_truncated_record() {
        let (mut arp, _) = frame(&data(1, 1, 0, 0));
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let ack = seg(2, false, 2, 5, flags::ACK, 0, (1, 2));
        let mut file = pcap(&[(1, (arp, 60)), (2, frame(&ack)), (3, frame(&ack))]);
        file.truncate(file.len() - 10);
        assert_eq!(parse_pcap(&file).expect("parses"), vec![ack]);
        assert!(parse_pcap(&file[..20]).is_err());
        assert!(parse_pcap(&[0u8; 24]).is_err());
    }

    #[test]
    fn nanosecond_big_endian_files_and_cooked_frames() {
        let fin = seg(7_123_456, true, 3, 10, flags::FIN | flags::ACK, 0, (1, 2));
        let (eth, wire) = frame(&fin);
        let mut sll2 = vec![0u8; SLL2_LEN];
        sll2[0..2].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        sll2.extend_from_slice(&eth[ETHERNET_LEN..]);
        let mut out = Vec::new();
        for v in [0xa1b2_3c4du32, 0x0002_0004, 0, 0, SNAPLEN, LINKTYPE_LINUX_SLL2] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        for v in [7u32, 123_456_789, sll2.len() as u32, (wire - ETHERNET_LEN + SLL2_LEN) as u32] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&sll2);
        assert_eq!(parse_pcap(&out).expect("parses"), vec![fin]);
    }

    #[test]
    fn timestamp_option_walk() {
        assert_eq!(timestamp_option(&[1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 6]), Some((5, 6)));
        assert_eq!(timestamp_option(&[2, 4, 5, 180, 8, 10, 0, 0, 0, 5, 0, 0, 0, 6]), Some((5, 6)));
        assert_eq!(timestamp_option(&[0, 8, 10, 0, 0, 0, 5, 0, 0, 0, 6]), None);
        assert_eq!(timestamp_option(&[8, 10, 0, 0]), None, "a cut option is not read");
    }

    #[test]
    fn new_and_resent_bytes_across_the_sequence_wrap() {
        let mut segs = handshake();
        // ISN is 256 bytes below the wrap: offsets cross it at once.
        segs.push(data(1_100_000, 100, 0, MSS));
        segs.push(data(1_100_100, 101, MSS, MSS));
        // Partly old: only the part above the highest byte is new.
        segs.push(data(1_100_200, 102, MSS + 448, 2 * MSS));
        // Entirely old: a retransmission of bytes the client had.
        segs.push(data(1_100_300, 103, 0, MSS));
        let s = Stream::analyse(&segs, Conn { client: CLIENT, server: SERVER });
        let summary: Vec<(u64, u32, u32, u32)> = s.data.iter().map(|d| (d.offset, d.new, d.resent, d.duplicate)).collect();
        assert_eq!(summary, vec![(0, MSS, 0, 0), (1448, MSS, 0, 0), (1896, 1896, 1000, 1000), (0, 0, MSS, MSS)]);
        assert_eq!(s.high, u64::from(3 * MSS + 448));
        assert_eq!(s.resent_total(), Resent { bytes: 1000 + 1448, duplicate: 1000 + 1448 });
        assert_eq!(s.resent_between(1_100_250, 1_200_000), Resent { bytes: 1448, duplicate: 1448 });
        assert_eq!(s.holes, 0);
        assert_eq!(s.handshake_rtt_us, Some(20_000));
    }

    #[test]
    fn a_filled_hole_is_resent_but_not_duplicate_and_open_holes_are_counted() {
        let mut segs = handshake();
        segs.push(data(1_100_000, 100, 0, MSS));
        // Offset MSS..2*MSS is missing at first.
        segs.push(data(1_100_100, 101, 2 * MSS, MSS));
        segs.push(data(1_100_200, 102, 4 * MSS, MSS));
        segs.push(data(1_100_300, 103, MSS, MSS));
        let s = Stream::analyse(&segs, Conn { client: CLIENT, server: SERVER });
        let last = s.data.last().copied().expect("segment");
        assert_eq!((last.new, last.resent, last.duplicate), (0, MSS, 0));
        assert_eq!(s.holes, u64::from(MSS), "3*MSS..4*MSS never came");
        assert_eq!(s.length(), u64::from(5 * MSS));
    }

    #[test]
    fn the_longest_pause_in_new_data_ignores_retransmissions_inside_it() {
        let mut segs = handshake();
        for i in 0..10u32 {
            segs.push(data(2_000_000 + u64::from(i) * 100, 100 + i as u16, i * MSS, MSS));
        }
        // 2_000_900: last new data before the move. Retransmissions arrive during the pause,
        // then the next sender's new data 61 ms later, then a shorter pause of 30 ms.
        segs.push(data(2_030_000, 5000, 9 * MSS, MSS));
        segs.push(data(2_061_900, 5001, 10 * MSS, MSS));
        segs.push(data(2_091_900, 5002, 11 * MSS, MSS));
        let s = Stream::analyse(&segs, Conn { client: CLIENT, server: SERVER });
        let gap = s.largest_new_gap(2_000_950, 4_000_000).expect("a gap");
        assert_eq!(gap, Gap { from_us: 2_000_900, to_us: 2_061_900 });
        assert_eq!(gap.us(), 61_000);
        assert_eq!(s.largest_new_gap(2_062_000, 4_000_000).map(|g| g.us()), Some(30_000));
        assert_eq!(s.largest_new_gap(2_100_000, 4_000_000), None);
        assert_eq!(s.first_new_after(2_000_950), Some(2_061_900));
        assert_eq!(s.resent_between(2_000_950, 4_000_000), Resent { bytes: u64::from(MSS), duplicate: u64::from(MSS) });
        let switch = Switch { gap: Gap { from_us: 2_000_900, to_us: 2_030_000 }, old_sender: 0, new_sender: 1, rewind: u64::from(MSS) };
        assert_eq!(s.sender_switch(2_000_950, 4_000_000), Some(switch));
        assert_eq!(s.sender_switch(2_030_000, 4_000_000), None);
        assert_eq!((s.largest_payload(0), s.largest_payload(1), s.largest_payload(2)), (MSS, MSS, 0));
    }

    #[test]
    fn recovery_skips_the_dead_senders_tail_in_flight() {
        let mut segs = handshake();
        for i in 0..20u32 {
            segs.push(data(3_000_000 + u64::from(i) * 1000, 200 + i as u16, i * MSS, MSS));
        }
        // Killed at 3_010_500: segments 11..19 were in flight and still arrive, then the new
        // sender (another IP ID series) starts at the client's ACK after 300 ms.
        segs.push(data(3_310_000, 40_000, 20 * MSS, MSS));
        segs.push(data(3_350_000, 40_001, 21 * MSS, MSS));
        let s = Stream::analyse(&segs, Conn { client: CLIENT, server: SERVER });
        let r = s.recovery_after(3_010_500, 5_000_000).expect("recovered");
        assert_eq!(r, Recovery { first_new_us: 3_310_000, tail_bytes: u64::from(9 * MSS), by_sender: true });
        // Nothing new from another sender (only the tail and a retransmission): no recovery,
        // although new data paused and resumed within the tail.
        let mut dead = segs[..segs.len() - 2].to_vec();
        dead[22].ts_us += 50_000;
        dead.push(data(3_310_000, 40_000, 19 * MSS, MSS));
        let s = Stream::analyse(&dead, Conn { client: CLIENT, server: SERVER });
        assert!(s.ip_ids_usable);
        assert_eq!(s.largest_new_gap(3_010_500, 5_000_000).map(|g| g.us()), Some(51_000));
        assert_eq!(s.recovery_after(3_010_500, 5_000_000), None);
        // Without a usable IP ID series the longest pause gives the same answer.
        let same_ids: Vec<Segment> = segs.iter().map(|s| Segment { ip_id: 0, ..*s }).collect();
        let s = Stream::analyse(&same_ids, Conn { client: CLIENT, server: SERVER });
        assert!(!s.ip_ids_usable);
        let r = s.recovery_after(3_010_500, 5_000_000).expect("recovered");
        assert_eq!(r, Recovery { first_new_us: 3_310_000, tail_bytes: u64::from(9 * MSS), by_sender: false });
    }

    #[test]
    fn data_rtt_is_the_smallest_echo_delay_of_data_segments() {
        let mut segs = handshake();
        // The client's TSval 1500 leaves at 1.5 s (twice; the first counts), 1600 at 1.6 s.
        segs.push(seg(1_500_000, false, 9, 100, flags::ACK, 0, (1500, 400)));
        segs.push(seg(1_500_300, false, 10, 100, flags::ACK, 0, (1500, 400)));
        segs.push(seg(1_600_000, false, 11, 100, flags::ACK, 0, (1600, 400)));
        segs.push(seg(1_545_000, true, 1, ISN.wrapping_add(1), flags::ACK, MSS, (600, 1500)));
        segs.push(seg(1_641_000, true, 2, ISN.wrapping_add(1 + MSS), flags::ACK, MSS, (700, 1600)));
        // A pure ACK echoing quickly does not count: it may come from another box.
        segs.push(seg(1_601_000, true, 3, ISN.wrapping_add(1 + 2 * MSS), flags::ACK, 0, (700, 1600)));
        let s = Stream::analyse(&segs, Conn { client: CLIENT, server: SERVER });
        assert_eq!(s.data_rtt_us, Some(41_000));
        assert_eq!(s.rtt_us(), Some(41_000));
        assert_eq!(s.handshake_rtt_us, Some(20_000));
    }

    #[test]
    fn connections_are_listed_by_first_syn() {
        let other = SocketAddrV4::new(*CLIENT.ip(), 40001);
        let mut segs = handshake();
        segs.push(Segment { src: other, ..segs[0] });
        segs.push(segs[0]);
        assert_eq!(connections(&segs, 80), vec![Conn { client: CLIENT, server: SERVER }, Conn { client: other, server: SERVER }]);
    }

    #[test]
    fn ranges_merge_and_report_overlap() {
        let mut r = Ranges::default();
        assert_eq!(r.insert(10, 20), 0);
        assert_eq!(r.insert(30, 40), 0);
        assert_eq!(r.insert(15, 35), 10);
        assert_eq!(r.0.len(), 1);
        assert_eq!(r.insert(0, 50), 30);
        assert_eq!(r.missing_below(60), 10);
    }

    #[test]
    fn tcpdump_drop_summary() {
        let text = "listening on eth0\n12 packets captured\n14 packets received by filter\n3 packets dropped by kernel\n";
        assert_eq!(dropped_by_kernel(text), Some(3));
        assert_eq!(dropped_by_kernel("listening on eth0\n"), None);
    }
}
