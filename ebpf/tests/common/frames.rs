//! Frame builders for the fixtures (etherparse), and the independent
//! construction of the outer headers the programs are expected to add.

use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::{
    EtherType, Ethernet2Header, IcmpEchoHeader, Icmpv4Header, Icmpv4Type, IpFragOffset, IpNumber,
    Ipv4Dscp, Ipv4Ecn, Ipv4Header, Ipv6FlowLabel, Ipv6Header, TcpHeader, TcpOptionElement,
    UdpHeader,
};

use super::lab;

pub const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 100, 7), 40_000);
pub const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);
pub const GUE_PORT: u16 = 6080;

/// Ethernet header bytes.
pub fn eth(dst: [u8; 6], src: [u8; 6], ether_type: u16) -> Vec<u8> {
    Ethernet2Header {
        source: src,
        destination: dst,
        ether_type: EtherType(ether_type),
    }
    .to_bytes()
    .to_vec()
}

/// A client TCP segment; every field the programs look at is settable.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub ack: Option<u32>,
    pub window: u16,
    /// (TSval, TSecr), sent as NOP NOP TS.
    pub timestamps: Option<(u32, u32)>,
    /// Raw option bytes; replaces `timestamps` when set (padded to 4 bytes).
    pub raw_options: Option<Vec<u8>>,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: Vec<u8>,
    pub ip_id: u16,
    pub df: bool,
    pub mf: bool,
    pub frag_offset: u16,
    pub dscp: u8,
    pub ecn: u8,
    pub ip_options: Vec<u8>,
}

impl Default for Tcp {
    fn default() -> Self {
        Tcp {
            src: CLIENT,
            dst: VIP,
            seq: 1_000_000,
            ack: Some(2_000_000),
            window: 501,
            timestamps: Some((111_111, 222_222)),
            raw_options: None,
            syn: false,
            fin: false,
            rst: false,
            payload: Vec::new(),
            ip_id: 0x1234,
            df: true,
            mf: false,
            frag_offset: 0,
            dscp: 0,
            ecn: 0,
            ip_options: Vec::new(),
        }
    }
}

impl Tcp {
    fn tcp_header(&self, ip: &Ipv4Header) -> TcpHeader {
        let mut tcp = TcpHeader::new(self.src.port(), self.dst.port(), self.seq, self.window);
        if let Some(ack) = self.ack {
            tcp.ack = true;
            tcp.acknowledgment_number = ack;
        }
        tcp.syn = self.syn;
        tcp.fin = self.fin;
        tcp.rst = self.rst;
        tcp.psh = !self.payload.is_empty();
        if let Some(raw) = &self.raw_options {
            let mut raw = raw.clone();
            while raw.len() % 4 != 0 {
                raw.push(0);
            }
            tcp.set_options_raw(&raw).unwrap();
        } else if let Some((val, ecr)) = self.timestamps {
            tcp.set_options(&[
                TcpOptionElement::Noop,
                TcpOptionElement::Noop,
                TcpOptionElement::Timestamp(val, ecr),
            ])
            .unwrap();
        }
        tcp.checksum = tcp.calc_checksum_ipv4(ip, &self.payload).unwrap();
        tcp
    }

    /// The IPv4 packet (no Ethernet header).
    pub fn ipv4_packet(&self) -> Vec<u8> {
        let mut ip = Ipv4Header::new(
            0,
            64,
            IpNumber::TCP,
            self.src.ip().octets(),
            self.dst.ip().octets(),
        )
        .unwrap();
        ip.options = self.ip_options.as_slice().try_into().unwrap();
        ip.identification = self.ip_id;
        ip.dont_fragment = self.df;
        ip.more_fragments = self.mf;
        ip.fragment_offset = IpFragOffset::try_new(self.frag_offset).unwrap();
        ip.dscp = Ipv4Dscp::try_new(self.dscp).unwrap();
        ip.ecn = Ipv4Ecn::try_new(self.ecn).unwrap();
        // Length first (the TCP checksum does not depend on it), then the TCP header.
        let tcp_len = self.tcp_header(&ip).header_len() + self.payload.len();
        ip.total_len = (ip.header_len() + tcp_len) as u16;
        ip.header_checksum = ip.calc_header_checksum();
        let tcp = self.tcp_header(&ip);
        let mut out = ip.to_bytes().to_vec();
        out.extend_from_slice(&tcp.to_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// The frame as it arrives at the main (router -> main interface).
    pub fn frame(&self) -> Vec<u8> {
        let mut out = eth(lab::LOCAL_MAC, lab::ROUTER_MAC, 0x0800);
        out.extend(self.ipv4_packet());
        out
    }

    /// Length of Ethernet + IPv4 + TCP headers, without payload.
    pub fn headers_len(&self) -> usize {
        self.frame().len() - self.payload.len()
    }
}

/// An IPv4 packet with the given protocol and payload.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut ip = Ipv4Header::new(
        payload.len() as u16,
        64,
        IpNumber(protocol),
        src.octets(),
        dst.octets(),
    )
    .unwrap();
    ip.identification = 0x4242;
    ip.header_checksum = ip.calc_header_checksum();
    let mut out = ip.to_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

pub fn udp_frame(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut ip = Ipv4Header::new(
        (UdpHeader::LEN + payload.len()) as u16,
        64,
        IpNumber::UDP,
        src.ip().octets(),
        dst.ip().octets(),
    )
    .unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    let udp = UdpHeader::with_ipv4_checksum(src.port(), dst.port(), &ip, payload).unwrap();
    let mut out = eth(lab::LOCAL_MAC, lab::ROUTER_MAC, 0x0800);
    out.extend_from_slice(&ip.to_bytes());
    out.extend_from_slice(&udp.to_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn icmp_echo_frame(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let payload = b"baton-ping";
    let mut icmp = Icmpv4Header::new(Icmpv4Type::EchoRequest(IcmpEchoHeader { id: 7, seq: 1 }));
    icmp.update_checksum(payload);
    let mut body = icmp.to_bytes().to_vec();
    body.extend_from_slice(payload);
    let mut out = eth(lab::LOCAL_MAC, lab::ROUTER_MAC, 0x0800);
    out.extend(ipv4_packet(src, dst, 1, &body));
    out
}

/// A TCP segment over IPv6 (the programs only handle IPv4).
pub fn ipv6_tcp_frame() -> Vec<u8> {
    let tcp = TcpHeader::new(40_000, 80, 1, 500);
    let ip = Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: tcp.header_len() as u16,
        next_header: IpNumber::TCP,
        hop_limit: 64,
        source: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
        destination: [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ],
    };
    let mut out = eth(lab::LOCAL_MAC, lab::ROUTER_MAC, 0x86dd);
    out.extend_from_slice(&ip.to_bytes());
    out.extend_from_slice(&tcp.to_bytes());
    out
}

/// An ARP request (who has 198.18.0.1, tell 198.18.0.254).
pub fn arp_frame() -> Vec<u8> {
    let mut out = eth([0xff; 6], lab::ROUTER_MAC, 0x0806);
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    out.extend_from_slice(&lab::ROUTER_MAC);
    out.extend_from_slice(&[198, 18, 0, 254]);
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&[198, 18, 0, 1]);
    out.resize(60, 0);
    out
}

/// The outer IPv4 header the main must put in front of `inner` (built from
/// RFC 2003 / the documented rules, not from the program).
pub fn expected_outer_ipv4(
    inner: &[u8],
    protocol: u8,
    extra: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Vec<u8> {
    let mut ip = Ipv4Header::new(
        (extra + inner.len()) as u16,
        64,
        IpNumber(protocol),
        src.octets(),
        dst.octets(),
    )
    .unwrap();
    // Fixtures may carry a payload that is not IPv4 at all (participant
    // tests); the main only ever encapsulates real IPv4 packets.
    if let Ok((inner_ip, _)) = Ipv4Header::from_slice(inner) {
        ip.dscp = inner_ip.dscp;
        ip.ecn = inner_ip.ecn;
        ip.identification = inner_ip.identification;
        ip.dont_fragment = inner_ip.dont_fragment;
    }
    ip.header_checksum = ip.calc_header_checksum();
    ip.to_bytes().to_vec()
}

/// Outer IPv4 (protocol 4) + `inner`.
pub fn ipip(inner: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut out = expected_outer_ipv4(inner, 4, 0, src, dst);
    out.extend_from_slice(inner);
    out
}

/// Outer IPv4 + UDP(sport -> dport, checksum 0) + `inner`.
pub fn gue(inner: &[u8], src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut out = expected_outer_ipv4(inner, 17, UdpHeader::LEN, src, dst);
    let udp = UdpHeader {
        source_port: sport,
        destination_port: dport,
        length: (8 + inner.len()) as u16,
        checksum: 0,
    };
    out.extend_from_slice(&udp.to_bytes());
    out.extend_from_slice(inner);
    out
}

/// Rewrites the checksum of the IPv4 header that starts at `off` in `bytes`.
pub fn fix_ipv4_checksum(bytes: &mut [u8], off: usize) {
    let ihl = usize::from(bytes[off] & 0x0f) * 4;
    bytes[off + 10] = 0;
    bytes[off + 11] = 0;
    let mut sum: u32 = bytes[off..off + ihl]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    bytes[off + 10..off + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// RFC 1071 check of an IPv4 header: the one's-complement sum over the
/// header, checksum included, is 0xffff.
pub fn ipv4_checksum_ok(header: &[u8]) -> bool {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// An ICMP message (type, code, 4 bytes of rest-of-header) from `router` to
/// `to`, quoting `quoted`, as it arrives at the main.
pub fn icmp_frame(
    router: Ipv4Addr,
    to: Ipv4Addr,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
) -> Vec<u8> {
    let mut body = vec![icmp_type, code, 0, 0];
    body.extend_from_slice(&rest);
    body.extend_from_slice(quoted);
    if body.len() % 2 == 1 {
        body.push(0);
    }
    let mut sum: u32 = body
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    body.truncate(8 + quoted.len());
    body[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let mut out = eth(lab::LOCAL_MAC, lab::ROUTER_MAC, 0x0800);
    out.extend(ipv4_packet(router, to, 1, &body));
    out
}

/// ICMP "fragmentation needed" (next-hop MTU `mtu`) about the first bytes
/// (IPv4 header + 8) of `packet`, which the VIP sent.
pub fn frag_needed_frame(router: Ipv4Addr, packet: &[u8], mtu: u16) -> Vec<u8> {
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let [hi, lo] = mtu.to_be_bytes();
    icmp_frame(
        router,
        Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
        3,
        4,
        [0, 0, hi, lo],
        &packet[..ihl + 8],
    )
}
