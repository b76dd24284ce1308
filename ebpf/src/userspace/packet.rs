//! What the main program does to one frame, in Rust: parse a client segment (or an ICMP
//! unreachable about one of the VIP's segments), update the flow's observations, decide, and
//! build the encapsulated packet. The same rules as `main.bpf.c`, so a flow behaves the same in
//! every mode; pure functions over bytes, so they are tested without sockets.
//!
//! Parsing uses etherparse's checked slices: no accessor here can panic on a hostile frame.

use std::net::Ipv4Addr;

use etherparse::{EtherType, Ethernet2HeaderSlice, IpNumber, Ipv4Header, Ipv4HeaderSlice, TcpHeaderSlice, TcpOptionElement, UdpHeader};

use crate::types::{Encap, FlowKey, FlowValue, MainCounter, OUTER_TTL};

/// TCP header flag bits as in the header's 14th byte.
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// ICMP type "destination unreachable".
const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP header bytes before the quoted datagram.
const ICMP_HEADER_BYTES: usize = 8;

/// A parsed client segment: what the observations need, and where its IPv4 packet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub key: FlowKey,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub flags: u8,
    pub payload_len: u32,
    pub tsecr: Option<u32>,
    /// IPv4 total length.
    pub l3_len: u16,
    pub tos: u8,
    pub ip_id: u16,
    pub dont_fragment: bool,
}

/// What a frame is, for the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A TCP segment (the key is client → VIP).
    Segment(Segment),
    /// An ICMP unreachable quoting a segment the VIP sent; `key` is the client's flow.
    Icmp { key: FlowKey, l3_len: u16, tos: u8, ip_id: u16, dont_fragment: bool },
    /// Anything else, with the pass reason the main program counts.
    Other(MainCounter),
}

/// Where the IPv4 packet starts in an Ethernet frame.
pub const ETHERNET_HEADER_BYTES: usize = 14;

/// Parses an Ethernet frame as the main program does.
pub fn parse(frame: &[u8]) -> Parsed {
    let Ok(eth) = Ethernet2HeaderSlice::from_slice(frame) else { return Parsed::Other(MainCounter::PassMalformed) };
    if eth.ether_type() != EtherType::IPV4 {
        return Parsed::Other(MainCounter::PassNotIpv4);
    }
    let l3 = &frame[ETHERNET_HEADER_BYTES..];
    let Ok(ip) = Ipv4HeaderSlice::from_slice(l3) else { return Parsed::Other(MainCounter::PassMalformed) };
    let ihl = usize::from(ip.ihl()) * 4;
    let tot_len = usize::from(ip.total_len());
    if tot_len < ihl || tot_len > l3.len() {
        return Parsed::Other(MainCounter::PassMalformed);
    }
    if ip.more_fragments() || ip.fragments_offset().value() != 0 {
        return Parsed::Other(MainCounter::PassFragment);
    }
    let l3 = &l3[..tot_len];
    let l3_len = ip.total_len();
    let (tos, ip_id, dont_fragment) = ((ip.dcp().value() << 2) | ip.ecn().value(), ip.identification(), ip.dont_fragment());
    match ip.protocol() {
        IpNumber::TCP => {}
        IpNumber::ICMP => {
            return match icmp_about_flow(&l3[ihl..]) {
                Some(key) => Parsed::Icmp { key, l3_len, tos, ip_id, dont_fragment },
                None => Parsed::Other(MainCounter::PassNotTcp),
            }
        }
        _ => return Parsed::Other(MainCounter::PassNotTcp),
    }
    let Ok(tcp) = TcpHeaderSlice::from_slice(&l3[ihl..]) else { return Parsed::Other(MainCounter::PassMalformed) };
    let doff = usize::from(tcp.data_offset()) * 4;
    if ihl + doff > tot_len {
        return Parsed::Other(MainCounter::PassMalformed);
    }
    let tsecr = tcp.options_iterator().find_map(|o| match o {
        Ok(TcpOptionElement::Timestamp(_, echo)) => Some(echo),
        _ => None,
    });
    let raw = tcp.slice();
    Parsed::Segment(Segment {
        key: FlowKey::new(
            std::net::SocketAddrV4::new(Ipv4Addr::from(ip.source()), tcp.source_port()),
            std::net::SocketAddrV4::new(Ipv4Addr::from(ip.destination()), tcp.destination_port()),
        ),
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        window: tcp.window_size(),
        flags: raw[13],
        payload_len: (tot_len - ihl - doff) as u32,
        tsecr,
        l3_len,
        tos,
        ip_id,
        dont_fragment,
    })
}

/// The client's flow of an ICMP destination-unreachable (`icmp` starts at the ICMP header)
/// that quotes a TCP segment the VIP sent.
fn icmp_about_flow(icmp: &[u8]) -> Option<FlowKey> {
    if icmp.len() < ICMP_HEADER_BYTES || icmp[0] != ICMP_DEST_UNREACH {
        return None;
    }
    let quoted = &icmp[ICMP_HEADER_BYTES..];
    let orig = Ipv4HeaderSlice::from_slice(quoted).ok()?;
    if orig.protocol() != IpNumber::TCP {
        return None;
    }
    let ports = quoted.get(usize::from(orig.ihl()) * 4..)?.get(..4)?;
    let (sport, dport) = (u16::from_be_bytes([ports[0], ports[1]]), u16::from_be_bytes([ports[2], ports[3]]));
    Some(FlowKey::new(
        std::net::SocketAddrV4::new(Ipv4Addr::from(orig.destination()), dport),
        std::net::SocketAddrV4::new(Ipv4Addr::from(orig.source()), sport),
    ))
}

/// What to do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Leave it to the kernel (counted with this reason).
    Pass(MainCounter),
    /// A SYN on an ended flow: the entry goes, the kernel may take the next SYN.
    StaleSyn,
    /// Dropped with this reason.
    Drop(MainCounter),
    /// Encapsulate to this participant.
    Forward(Ipv4Addr),
}

/// Decides about a segment of a flow in the table and records its observations in `flow`
/// (`now_ns`: `CLOCK_MONOTONIC`), as `main_classify` does.
pub fn classify_segment(flow: &mut FlowValue, seg: &Segment, now_ns: u64) -> Action {
    if seg.flags & (TCP_SYN | TCP_ACK) == TCP_SYN && (flow.fin_seen() || flow.rst_seen()) {
        return Action::StaleSyn;
    }
    flow.observe(seg.flags, seg.seq, seg.ack, seg.window, seg.payload_len, seg.tsecr, seg.l3_len, now_ns);
    target_action(flow)
}

/// Where a flow's packets go given its state.
pub fn target_action(flow: &FlowValue) -> Action {
    match flow.state() {
        Some(crate::types::FlowState::Frozen) => Action::Drop(MainCounter::DropFrozen),
        Some(crate::types::FlowState::Forward) if !flow.participant().is_unspecified() => Action::Forward(flow.participant()),
        _ => Action::Drop(MainCounter::DropBadState),
    }
}

/// What [`process`] decided about one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Counters to add one to (the send's own outcome is counted by whoever sends).
    pub counters: Vec<MainCounter>,
    /// The encapsulated IPv4 packet to send to this participant.
    pub send: Option<Ipv4Addr>,
    /// A stale entry removed from the table (a SYN on an ended flow).
    pub released: Option<FlowKey>,
}

/// Runs one frame through the main program's rules against `flows`: observations are recorded
/// in the flow's entry, a stale entry is removed, and for a forwarded packet `out` receives
/// the encapsulated packet (`scratch` is room for a copy whose TCP checksum must be completed,
/// when the kernel left it to offload: `csum_not_ready`).
#[allow(clippy::too_many_arguments)]
pub fn process(
    flows: &mut std::collections::HashMap<FlowKey, FlowValue>,
    frame: &[u8],
    csum_not_ready: bool,
    local: Ipv4Addr,
    encap: Encap,
    now_ns: u64,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Outcome {
    let mut outcome = Outcome { counters: Vec::new(), send: None, released: None };
    let (key, l3_len, tos, ip_id, df, action) = match parse(frame) {
        Parsed::Other(reason) => {
            outcome.counters.push(reason);
            return outcome;
        }
        Parsed::Icmp { key, l3_len, tos, ip_id, dont_fragment } => {
            let action = match flows.get(&key).map(target_action) {
                Some(Action::Forward(p)) => {
                    outcome.counters.push(MainCounter::IcmpToParticipant);
                    Action::Forward(p)
                }
                _ => Action::Pass(MainCounter::PassNotTcp),
            };
            (key, l3_len, tos, ip_id, dont_fragment, action)
        }
        Parsed::Segment(seg) => {
            let action = match flows.get_mut(&seg.key) {
                None => Action::Pass(MainCounter::PassNoFlow),
                Some(flow) => classify_segment(flow, &seg, now_ns),
            };
            (seg.key, seg.l3_len, seg.tos, seg.ip_id, seg.dont_fragment, action)
        }
    };
    match action {
        Action::Pass(reason) | Action::Drop(reason) => outcome.counters.push(reason),
        Action::StaleSyn => {
            flows.remove(&key);
            outcome.counters.push(MainCounter::PassStaleSyn);
            outcome.released = Some(key);
        }
        Action::Forward(participant) => {
            let start = ETHERNET_HEADER_BYTES;
            let Some(inner) = frame.get(start..start + usize::from(l3_len)) else {
                outcome.counters.push(MainCounter::DropEncapFailed);
                return outcome;
            };
            let inner = if csum_not_ready {
                scratch.clear();
                scratch.extend_from_slice(inner);
                finish_tcp_checksum(scratch);
                &scratch[..]
            } else {
                inner
            };
            if encapsulate(out, inner, &key, tos, ip_id, df, local, participant, encap).is_none() {
                outcome.counters.push(MainCounter::DropEncapFailed);
            } else {
                outcome.send = Some(participant);
            }
        }
    }
    outcome
}

/// Appends the outer headers for `inner` (the client's IPv4 packet) sent from `local` to
/// `participant` to `out`, then the inner packet, as `build_outer_headers` does. `None` when
/// the result would exceed an IPv4 packet.
#[allow(clippy::too_many_arguments)]
pub fn encapsulate(
    out: &mut Vec<u8>,
    inner: &[u8],
    key: &FlowKey,
    tos: u8,
    ip_id: u16,
    dont_fragment: bool,
    local: Ipv4Addr,
    participant: Ipv4Addr,
    encap: Encap,
) -> Option<()> {
    let (protocol, extra) = match encap {
        Encap::Ipip => (IpNumber::IPV4, 0),
        Encap::Gue { .. } => (IpNumber::UDP, UdpHeader::LEN),
    };
    let payload = u16::try_from(inner.len() + extra).ok()?;
    let mut ip = Ipv4Header::new(payload, OUTER_TTL, protocol, local.octets(), participant.octets()).ok()?;
    ip.dscp = etherparse::Ipv4Dscp::try_new(tos >> 2).ok()?;
    ip.ecn = etherparse::Ipv4Ecn::try_new(tos & 0x3).ok()?;
    ip.identification = ip_id;
    ip.dont_fragment = dont_fragment;
    ip.header_checksum = ip.calc_header_checksum();
    out.clear();
    out.extend_from_slice(&ip.to_bytes());
    if let Encap::Gue { port } = encap {
        let udp = UdpHeader {
            source_port: key.gue_source_port(),
            destination_port: port,
            length: u16::try_from(inner.len() + UdpHeader::LEN).ok()?,
            checksum: 0,
        };
        out.extend_from_slice(&udp.to_bytes());
    }
    out.extend_from_slice(inner);
    Some(())
}

/// Completes the TCP checksum of an IPv4 packet whose sender left it to offload (the field
/// holds only the pseudo-header sum). Does nothing to anything but a whole TCP segment.
pub fn finish_tcp_checksum(packet: &mut [u8]) {
    let Ok(ip) = Ipv4HeaderSlice::from_slice(packet) else { return };
    if ip.protocol() != IpNumber::TCP {
        return;
    }
    let (ihl, tot) = (usize::from(ip.ihl()) * 4, usize::from(ip.total_len()));
    let (src, dst) = (ip.source(), ip.destination());
    if tot > packet.len() || tot < ihl + 20 {
        return;
    }
    let segment_len = tot - ihl;
    let mut sum: u32 = 0;
    for pair in [src, dst] {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]])) + u32::from(u16::from_be_bytes([pair[2], pair[3]]));
    }
    sum += u32::from(u8::from(IpNumber::TCP)) + segment_len as u32;
    let segment = &mut packet[ihl..tot];
    segment[16] = 0;
    segment[17] = 0;
    for chunk in segment.chunks(2) {
        let word = if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { u16::from_be_bytes([chunk[0], 0]) };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let check = !(sum as u16);
    segment[16..18].copy_from_slice(&check.to_be_bytes());
}
