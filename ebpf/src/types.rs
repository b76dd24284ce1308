//! Rust mirrors of the structures and constants the BPF programs share with
//! userspace (`c/baton_structs.h`, `c/baton_consts.h`).
//!
//! Layouts are asserted at compile time; fields that the C keeps in network
//! byte order are stored here as byte arrays, so they can only be read and
//! written through accessors that take and return `std::net` types. This
//! module must never hold logic beyond these conversions, and a layout here
//! must never change without the same change in the C headers.

use std::fmt;
use std::mem::{offset_of, size_of};
use std::net::{Ipv4Addr, SocketAddrV4};

/// Capacity of the `baton_flows` map (`FLOW_MAP_MAX_ENTRIES` in C): the most
/// connections one main can have handed off at once. 64k concurrent handed-off
/// downloads is beyond one host's egress; the map costs a few MiB.
pub const FLOW_MAP_MAX_ENTRIES: u32 = 65_536;

/// Capacity of the participant's `baton_guard` map (`GUARD_MAP_MAX_ENTRIES`
/// in C): connections restored on one participant. Bounded by what one main
/// hands off at most, [`FLOW_MAP_MAX_ENTRIES`].
pub const GUARD_MAP_MAX_ENTRIES: u32 = 65_536;

/// Raw `baton_guard` value `GUARD_OWNED`.
const GUARD_OWNED: u32 = 1;
/// Raw `baton_guard` value `GUARD_CLOSING`.
const GUARD_CLOSING: u32 = 2;
/// Raw `baton_guard` value `GUARD_FROZEN`.
const GUARD_FROZEN: u32 = 3;

/// Raw `flow_value.state` of a frozen flow (`FLOW_FROZEN`).
const FLOW_FROZEN: u32 = 1;
/// Raw `flow_value.state` of a forwarded flow (`FLOW_FORWARD`).
const FLOW_FORWARD: u32 = 2;
/// Raw config value for IPIP (`ENCAP_IPIP`).
const ENCAP_IPIP: u32 = 0;
/// Raw config value for GUE (`ENCAP_GUE`).
const ENCAP_GUE: u32 = 1;
/// FIN bit as recorded in `tcp_flags_seen`.
const TCP_FIN: u8 = 0x01;
/// RST bit as recorded in `tcp_flags_seen`.
const TCP_RST: u8 = 0x04;
/// TTL of the outer header of an encapsulated packet (`OUTER_TTL`).
pub(crate) const OUTER_TTL: u8 = 64;
/// SYN bit of the TCP flags byte.
const TCP_SYN: u8 = 0x02;
/// ACK bit of the TCP flags byte.
const TCP_ACK: u8 = 0x10;
/// GUE source ports are `GUE_SPORT_BASE | (hash & GUE_SPORT_MASK)`: the
/// IANA dynamic range, 14 bits of per-flow entropy for ECMP.
const GUE_SPORT_BASE: u16 = 0xc000;
/// See [`GUE_SPORT_BASE`].
const GUE_SPORT_MASK: u32 = 0x3fff;

/// How the main encapsulates client segments toward a participant.
///
/// `Gue` is IPv4 + UDP to `port` followed directly by the inner IPv4 packet
/// (GUE "variant 1", the framing of Linux `fou ... ipproto 4`); the UDP source
/// port is a hash of the flow ([`FlowKey::gue_source_port`]) and the UDP
/// checksum is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encap {
    /// Outer IPv4 header with protocol 4.
    Ipip,
    /// Outer IPv4 + UDP to `port`.
    Gue {
        /// UDP destination port on the participant.
        port: u16,
    },
}

impl Encap {
    /// Bytes the encapsulation adds to a forwarded packet: the outer IPv4 header, and for GUE
    /// its UDP header (the inner packet follows the UDP header directly).
    pub fn overhead(self) -> u16 {
        match self {
            Encap::Ipip => 20,
            Encap::Gue { .. } => 20 + 8,
        }
    }

    fn raw(self) -> (u32, [u8; 2]) {
        match self {
            Encap::Ipip => (ENCAP_IPIP, [0; 2]),
            Encap::Gue { port } => (ENCAP_GUE, port.to_be_bytes()),
        }
    }
}

/// A client connection to the VIP, as seen in the client's packets
/// (`struct flow_key`; all fields in network byte order).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    client_addr: [u8; 4],
    vip_addr: [u8; 4],
    client_port: [u8; 2],
    vip_port: [u8; 2],
}

impl FlowKey {
    /// The flow of segments from `client` to `vip`.
    pub fn new(client: SocketAddrV4, vip: SocketAddrV4) -> Self {
        Self {
            client_addr: client.ip().octets(),
            vip_addr: vip.ip().octets(),
            client_port: client.port().to_be_bytes(),
            vip_port: vip.port().to_be_bytes(),
        }
    }

    /// The client's address and port.
    pub fn client(&self) -> SocketAddrV4 {
        SocketAddrV4::new(
            Ipv4Addr::from(self.client_addr),
            u16::from_be_bytes(self.client_port),
        )
    }

    /// The VIP address and port the client talks to.
    pub fn vip(&self) -> SocketAddrV4 {
        SocketAddrV4::new(
            Ipv4Addr::from(self.vip_addr),
            u16::from_be_bytes(self.vip_port),
        )
    }

    /// The UDP source port the main uses for this flow with [`Encap::Gue`]
    /// (the same function as `flow_hash` in `c/encap_helpers.h`).
    pub fn gue_source_port(&self) -> u16 {
        // The C loads the network-order fields as native words.
        let client = u32::from_ne_bytes(self.client_addr);
        let vip = u32::from_ne_bytes(self.vip_addr);
        let ports = (u32::from(u16::from_ne_bytes(self.client_port)) << 16)
            | u32::from(u16::from_ne_bytes(self.vip_port));
        let mut h = client ^ vip.rotate_left(13) ^ ports;
        h ^= h >> 16;
        h = h.wrapping_mul(0x7feb_352d);
        h ^= h >> 15;
        h = h.wrapping_mul(0x846c_a68b);
        h ^= h >> 16;
        // Masked to 14 bits, so the cast cannot truncate.
        GUE_SPORT_BASE | (h & GUE_SPORT_MASK) as u16
    }
}

impl fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}", self.client(), self.vip())
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}", self.client(), self.vip())
    }
}

/// What the main does with a flow's packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowState {
    /// The connection is being moved: its packets are dropped (the client
    /// retransmits), never passed to the local stack.
    Frozen,
    /// The connection lives on a participant: packets are encapsulated to it.
    Forward,
}

/// The state to put a flow in with
/// [`MainDataplane::set_state`](crate::MainDataplane::set_state):
/// [`FlowState`] plus the participant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowTarget {
    /// Drop the flow's packets (it is being moved).
    Frozen,
    /// Encapsulate the flow's packets to this participant.
    Forward(Ipv4Addr),
}

/// Where a handed-off connection stood when the main took it out of its
/// kernel (`TCP_REPAIR` dump), so the program's forward-only observations
/// start from a correct base instead of from whatever segment comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowSeed {
    /// The main's `snd_nxt` at handoff. Seeds `last_ack`: from then on an ACK
    /// below it counts as old and is ignored, so it must be a position the
    /// client has really acknowledged. At a handoff or a graceful move
    /// nothing is in flight (`snd_una == snd_nxt`); if something were, seed
    /// with `snd_una` instead, or recovery would skip the unacknowledged bytes.
    pub snd_nxt: u32,
    /// The main's `rcv_nxt` at handoff: the next byte expected from the
    /// client. Seeds `client_next_seq`.
    pub rcv_nxt: u32,
}

/// Bit of 2^32: one wrap of the 32-bit ACK number.
const ACK_EPOCH: u64 = 1 << 32;

/// Per-flow state (`struct flow_value`). The main sets the state and the
/// participant (and may seed the observations); the program keeps the
/// observations current.
///
/// The observations are what a new owner needs to rebuild the connection:
/// - [`last_ack`](Self::last_ack) is the highest ACK the client sent (TCP
///   sequence comparison, so reordering never takes it back) and
///   [`ack_wraps`](Self::ack_wraps) counts how often it passed 2^32;
///   [`acked_position`](Self::acked_position) turns both into a 64-bit
///   stream position.
/// - [`client_next_seq`](Self::client_next_seq) is the next byte the client
///   will send (highest `seq + payload`, +1 for SYN and FIN), forward-only
///   too.
/// - [`last_window`](Self::last_window) and [`last_tsecr`](Self::last_tsecr)
///   come from the latest ACK segment whose ACK was not behind the highest
///   one; TSecr in addition never moves backwards.
///
/// The program does not validate ACKs (it cannot know what the participant
/// has sent): an ACK the client never could have sent (a forged segment with
/// the right 4-tuple) would be taken. Bound it by what was really sent.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowValue {
    state: u32,
    participant_addr: [u8; 4],
    last_ack: u32,
    ack_wraps: u32,
    last_tsecr: u32,
    client_next_seq: u32,
    last_window: u16,
    tcp_flags_seen: u8,
    has_tsecr: u8,
    has_ack: u8,
    has_next_seq: u8,
    pad: u16,
    last_seen_ns: u64,
    packets: u64,
    bytes: u64,
}

impl FlowValue {
    /// A frozen flow with no observations yet.
    pub fn frozen() -> Self {
        Self {
            state: FLOW_FROZEN,
            ..Self::default()
        }
    }

    /// A frozen flow whose observations start at `seed`: `last_ack` =
    /// `seed.snd_nxt` (no wraps), `client_next_seq` = `seed.rcv_nxt`, no
    /// window or TSecr yet, no packets.
    pub fn frozen_seeded(seed: FlowSeed) -> Self {
        Self {
            state: FLOW_FROZEN,
            last_ack: seed.snd_nxt,
            has_ack: 1,
            client_next_seq: seed.rcv_nxt,
            has_next_seq: 1,
            ..Self::default()
        }
    }

    /// A flow as the userspace data plane saved it: its target and, when known, its ACK
    /// position (ACK, wraps) and the client's next sequence number.
    pub(crate) fn restored(target: FlowTarget, ack: Option<(u32, u32)>, next_seq: Option<u32>) -> Self {
        let (last_ack, ack_wraps) = ack.unwrap_or((0, 0));
        Self {
            last_ack,
            ack_wraps,
            has_ack: u8::from(ack.is_some()),
            client_next_seq: next_seq.unwrap_or(0),
            has_next_seq: u8::from(next_seq.is_some()),
            ..Self::default()
        }
        .with_target(target)
    }

    /// A flow forwarded to `participant`, with no observations yet.
    pub fn forward(participant: Ipv4Addr) -> Self {
        Self::default().with_forward(participant)
    }

    /// This value with the state set to forward to `participant`; the
    /// observations are kept.
    pub fn with_forward(self, participant: Ipv4Addr) -> Self {
        Self {
            state: FLOW_FORWARD,
            participant_addr: participant.octets(),
            ..self
        }
    }

    /// This value with state and participant set as `target` says (frozen
    /// clears the participant); the observations are kept.
    pub fn with_target(self, target: FlowTarget) -> Self {
        match target {
            FlowTarget::Frozen => Self {
                state: FLOW_FROZEN,
                participant_addr: [0; 4],
                ..self
            },
            FlowTarget::Forward(participant) => self.with_forward(participant),
        }
    }

    /// Records what one client segment tells about the connection, as `flow_observe` in
    /// `c/main.bpf.c` does (the userspace data plane's copy of the program's rule; the table
    /// lock makes it one writer at a time, so no compare-and-swap is needed):
    /// the ACK moves only forward in sequence space (counting wraps), window and TSecr come only
    /// from segments whose ACK is not behind it, `client_next_seq` moves forward to
    /// `seq + payload (+1 SYN, +1 FIN)` for all but RST segments, FIN and RST are remembered.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn observe(
        &mut self,
        flags: u8,
        seq: u32,
        ack: u32,
        window: u16,
        payload_len: u32,
        tsecr: Option<u32>,
        l3_len: u16,
        now_ns: u64,
    ) {
        if flags & TCP_ACK != 0 {
            let current = if self.has_ack == 0 {
                self.last_ack = ack;
                self.ack_wraps = 0;
                self.has_ack = 1;
                true
            } else {
                let ahead = ack.wrapping_sub(self.last_ack) as i32;
                if ahead > 0 {
                    if ack < self.last_ack {
                        self.ack_wraps = self.ack_wraps.wrapping_add(1);
                    }
                    self.last_ack = ack;
                }
                ahead >= 0
            };
            if current {
                self.last_window = window;
                if let Some(echo) = tsecr {
                    if self.has_tsecr == 0 || (echo.wrapping_sub(self.last_tsecr) as i32) > 0 {
                        self.last_tsecr = echo;
                        self.has_tsecr = 1;
                    }
                }
            }
        }
        if flags & TCP_RST == 0 {
            let mut end = seq.wrapping_add(payload_len);
            if flags & TCP_SYN != 0 {
                end = end.wrapping_add(1);
            }
            if flags & TCP_FIN != 0 {
                end = end.wrapping_add(1);
            }
            if self.has_next_seq == 0 {
                self.client_next_seq = end;
                self.has_next_seq = 1;
            } else if (end.wrapping_sub(self.client_next_seq) as i32) > 0 {
                self.client_next_seq = end;
            }
        }
        self.tcp_flags_seen |= flags & (TCP_FIN | TCP_RST);
        self.last_seen_ns = now_ns;
        self.packets = self.packets.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(u64::from(l3_len));
    }

    /// The state, or `None` when the raw value is not one this build knows.
    pub fn state(&self) -> Option<FlowState> {
        match self.state {
            FLOW_FROZEN => Some(FlowState::Frozen),
            FLOW_FORWARD => Some(FlowState::Forward),
            _ => None,
        }
    }

    /// State and participant together, or `None` for an unknown raw state.
    pub fn target(&self) -> Option<FlowTarget> {
        match self.state {
            FLOW_FROZEN => Some(FlowTarget::Frozen),
            FLOW_FORWARD => Some(FlowTarget::Forward(self.participant())),
            _ => None,
        }
    }

    /// The raw state as stored in the map.
    pub fn raw_state(&self) -> u32 {
        self.state
    }

    /// The participant packets are sent to (meaningful when forwarding;
    /// `0.0.0.0` otherwise).
    pub fn participant(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.participant_addr)
    }

    /// The highest ACK number the client sent (TCP sequence comparison), or
    /// the seed's `snd_nxt` until a higher one arrives: the client's next
    /// expected byte. 0 when neither seeded nor seen (see
    /// [`has_ack`](Self::has_ack)).
    pub fn last_ack(&self) -> u32 {
        self.last_ack
    }

    /// Whether [`last_ack`](Self::last_ack) is valid (seeded or seen).
    pub fn has_ack(&self) -> bool {
        self.has_ack != 0
    }

    /// How many times the accepted ACK number wrapped past 2^32 since it was
    /// seeded (or first seen).
    pub fn ack_wraps(&self) -> u32 {
        self.ack_wraps
    }

    /// The client's acknowledged position as a 64-bit sequence number, or
    /// `None` without a valid ACK.
    ///
    /// `base` is the 64-bit value of the ACK number the entry was seeded with
    /// (typically the 64-bit `snd_nxt` at handoff, whose low 32 bits are
    /// [`FlowSeed::snd_nxt`]); only its upper 32 bits are used, so any value
    /// in the same 2^32 epoch gives the same answer. The result is
    /// `epoch(base) + ack_wraps * 2^32 + last_ack`, never below `base`'s epoch.
    /// For an entry that was not seeded, the epoch is that of the first ACK
    /// the program saw, which the caller must know by other means.
    ///
    /// Example: seeded with `snd_nxt = 0xffff_fff0` and 64-bit base
    /// `0x1_ffff_fff0`; the client then acknowledges 0x20 (one wrap): the
    /// position is `0x2_0000_0020`.
    pub fn acked_position(&self, base: u64) -> Option<u64> {
        self.has_ack().then(|| {
            (base & !(ACK_EPOCH - 1))
                .wrapping_add(u64::from(self.ack_wraps) << 32)
                .wrapping_add(u64::from(self.last_ack))
        })
    }

    /// The next sequence number the client will send (highest `seq +
    /// payload`, +1 for SYN and FIN), or the seed's `rcv_nxt` until the
    /// client goes beyond it; `None` when neither seeded nor seen.
    pub fn client_next_seq(&self) -> Option<u32> {
        (self.has_next_seq != 0).then_some(self.client_next_seq)
    }

    /// Raw (unscaled) window field of the latest client segment whose ACK was
    /// not behind the highest ACK (0 before any).
    pub fn last_window(&self) -> u16 {
        self.last_window
    }

    /// The highest TSecr of the client's ACK segments that were not behind
    /// the highest ACK.
    pub fn last_tsecr(&self) -> Option<u32> {
        (self.has_tsecr != 0).then_some(self.last_tsecr)
    }

    /// The client sent a FIN.
    pub fn fin_seen(&self) -> bool {
        self.tcp_flags_seen & TCP_FIN != 0
    }

    /// The client sent a RST.
    pub fn rst_seen(&self) -> bool {
        self.tcp_flags_seen & TCP_RST != 0
    }

    /// `CLOCK_MONOTONIC` nanoseconds of the latest packet (0 if none); compare
    /// with [`monotonic_now_ns`].
    pub fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }

    /// Client packets seen for this flow.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Client bytes seen for this flow (IPv4 total lengths).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl fmt::Debug for FlowValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowValue")
            .field("state", &self.state())
            .field("participant", &self.participant())
            .field("last_ack", &self.has_ack().then_some(self.last_ack))
            .field("ack_wraps", &self.ack_wraps)
            .field("client_next_seq", &self.client_next_seq())
            .field("last_window", &self.last_window)
            .field("last_tsecr", &self.last_tsecr())
            .field("fin_seen", &self.fin_seen())
            .field("rst_seen", &self.rst_seen())
            .field("last_seen_ns", &self.last_seen_ns)
            .field("packets", &self.packets)
            .field("bytes", &self.bytes)
            .finish()
    }
}

/// A participant's egress guard entry for one restored connection (value of
/// the `baton_guard` map).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuardState {
    /// Only the main decides this connection's fate: the guard drops FIN and
    /// RST segments and anything an orphaned socket sends.
    Owned,
    /// The participant is ending the connection itself: everything passes.
    Closing,
    /// As [`GuardState::Owned`], and the client's segments forwarded by the
    /// main are dropped on ingress: the socket is being dumped for a move and
    /// must not take data the dump does not describe (the client retransmits
    /// it to the next owner).
    Frozen,
    /// A raw value this build does not know; the program treats it like
    /// [`GuardState::Owned`] (it fails closed).
    Unknown(u32),
}

impl GuardState {
    /// The value stored in the map.
    pub fn raw(self) -> u32 {
        match self {
            GuardState::Owned => GUARD_OWNED,
            GuardState::Closing => GUARD_CLOSING,
            GuardState::Frozen => GUARD_FROZEN,
            GuardState::Unknown(raw) => raw,
        }
    }

    /// Interprets a value read from the map.
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            GUARD_OWNED => GuardState::Owned,
            GUARD_CLOSING => GuardState::Closing,
            GUARD_FROZEN => GuardState::Frozen,
            other => GuardState::Unknown(other),
        }
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock of
/// [`FlowValue::last_seen_ns`].
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC
    // is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Configuration of the main program (`struct main_config`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MainConfig {
    local_addr: [u8; 4],
    encap: u32,
    gue_port: [u8; 2],
    pad: u16,
}

impl MainConfig {
    /// Outer source `local_addr`, encapsulation `encap`.
    pub fn new(local_addr: Ipv4Addr, encap: Encap) -> Self {
        let (encap, gue_port) = encap.raw();
        Self {
            local_addr: local_addr.octets(),
            encap,
            gue_port,
            pad: 0,
        }
    }
}

/// Configuration of the participant program (`struct participant_config`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParticipantConfig {
    main_addr: [u8; 4],
    encap: u32,
    gue_port: [u8; 2],
    flags: u16,
}

/// `PART_CFG_REQUIRE_SOCKET`: drop encapsulated TCP segments that have no local socket.
pub const PART_CFG_REQUIRE_SOCKET: u16 = 0x0001;

impl ParticipantConfig {
    /// Accept encapsulated packets from `main_addr` only; with `require_socket`, also drop
    /// encapsulated TCP segments no local socket would take (instead of the kernel resetting
    /// them from the VIP before the connection is restored).
    pub fn new(main_addr: Ipv4Addr, encap: Encap, require_socket: bool) -> Self {
        let (encap, gue_port) = encap.raw();
        Self {
            main_addr: main_addr.octets(),
            encap,
            gue_port,
            flags: if require_socket { PART_CFG_REQUIRE_SOCKET } else { 0 },
        }
    }
}

// SAFETY: plain #[repr(C)] data with every padding byte an explicit field,
// so every bit pattern is valid and no byte is uninitialised.
unsafe impl aya::Pod for FlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowValue {}
// SAFETY: as above.
unsafe impl aya::Pod for MainConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for ParticipantConfig {}

const _: () = assert!(size_of::<FlowKey>() == 12);
const _: () = assert!(offset_of!(FlowKey, vip_addr) == 4);
const _: () = assert!(offset_of!(FlowKey, client_port) == 8);
const _: () = assert!(offset_of!(FlowKey, vip_port) == 10);
const _: () = assert!(size_of::<FlowValue>() == 56);
const _: () = assert!(offset_of!(FlowValue, participant_addr) == 4);
const _: () = assert!(offset_of!(FlowValue, last_ack) == 8);
const _: () = assert!(offset_of!(FlowValue, ack_wraps) == 12);
const _: () = assert!(offset_of!(FlowValue, last_tsecr) == 16);
const _: () = assert!(offset_of!(FlowValue, client_next_seq) == 20);
const _: () = assert!(offset_of!(FlowValue, last_window) == 24);
const _: () = assert!(offset_of!(FlowValue, tcp_flags_seen) == 26);
const _: () = assert!(offset_of!(FlowValue, has_tsecr) == 27);
const _: () = assert!(offset_of!(FlowValue, has_ack) == 28);
const _: () = assert!(offset_of!(FlowValue, has_next_seq) == 29);
const _: () = assert!(offset_of!(FlowValue, pad) == 30);
const _: () = assert!(offset_of!(FlowValue, last_seen_ns) == 32);
const _: () = assert!(offset_of!(FlowValue, packets) == 40);
const _: () = assert!(offset_of!(FlowValue, bytes) == 48);
const _: () = assert!(size_of::<MainConfig>() == 12);
const _: () = assert!(offset_of!(MainConfig, encap) == 4);
const _: () = assert!(offset_of!(MainConfig, gue_port) == 8);
const _: () = assert!(size_of::<ParticipantConfig>() == 12);
const _: () = assert!(offset_of!(ParticipantConfig, encap) == 4);
const _: () = assert!(offset_of!(ParticipantConfig, gue_port) == 8);

macro_rules! counters {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every counter, in map index order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];

            /// Stable snake_case name, for metrics.
            pub fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            /// Index in the counters map.
            pub fn index(self) -> u32 {
                self as u32
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

counters! {
    /// Why the main program passed, dropped or forwarded a packet
    /// (`enum main_counter`, same order).
    MainCounter {
        /// Not Ethernet + IPv4: passed.
        PassNotIpv4 = "pass_not_ipv4",
        /// IPv4 but not TCP: passed.
        PassNotTcp = "pass_not_tcp",
        /// IPv4 fragment: passed.
        PassFragment = "pass_fragment",
        /// Truncated or inconsistent headers: passed (the kernel discards them).
        PassMalformed = "pass_malformed",
        /// TCP, not a handed-off flow: passed.
        PassNoFlow = "pass_no_flow",
        /// Frozen flow: dropped.
        DropFrozen = "drop_frozen",
        /// Encapsulated and sent (redirect or XDP_TX).
        ForwardOk = "forward_ok",
        /// Encapsulated and handed to the kernel's neighbour resolution (tc).
        ForwardNeigh = "forward_neigh",
        /// Not configured, or the kernel refused to add the outer header: dropped.
        DropEncapFailed = "drop_encap_failed",
        /// No route to the participant (or forwarding disabled on the interface): dropped.
        DropFibFailed = "drop_fib_failed",
        /// Encapsulated packet larger than the route MTU: dropped.
        DropFragNeeded = "drop_frag_needed",
        /// XDP only: the participant's next hop has no resolved neighbour entry: dropped.
        DropNoNeigh = "drop_no_neigh",
        /// Flow entry with an unknown state or no participant: dropped.
        DropBadState = "drop_bad_state",
        /// ICMP unreachable (e.g. fragmentation needed) about a forwarded
        /// flow, sent on to its participant; counted in addition to the
        /// forwarding outcome.
        IcmpToParticipant = "icmp_to_participant",
        /// A SYN on the entry of a connection that had ended: entry deleted, SYN passed.
        PassStaleSyn = "pass_stale_syn",
    }
}

counters! {
    /// Why the participant program passed, dropped or decapsulated a packet
    /// (`enum part_counter`, same order).
    ParticipantCounter {
        /// Not Ethernet + IPv4: passed.
        PassNotIpv4 = "pass_not_ipv4",
        /// Outer IPv4 header broken: passed (the kernel discards it).
        PassMalformed = "pass_malformed",
        /// Not encapsulated: passed.
        PassNotEncap = "pass_not_encap",
        /// Decapsulated; the inner packet went up the stack.
        DecapOk = "decap_ok",
        /// Encapsulated, but not from our main: dropped.
        DropBadSource = "drop_bad_source",
        /// Encapsulated from our main, inner packet broken: dropped.
        DropMalformed = "drop_malformed",
        /// Encapsulated from our main, outer packet fragmented: dropped.
        DropFragment = "drop_fragment",
        /// The kernel refused to remove the outer header: dropped.
        DropDecapFailed = "drop_decap_failed",
        /// A TCP segment for a connection with no socket here (not yet restored): dropped.
        DropNoSocket = "drop_no_socket",
        /// Egress guard: a packet of an owned connection, allowed out.
        GuardPassOwned = "guard_pass_owned",
        /// Egress guard: a packet of a connection the participant is closing, passed.
        GuardPassClosing = "guard_pass_closing",
        /// Egress guard: a FIN (without RST) of an owned connection, dropped.
        GuardDropFin = "guard_drop_fin",
        /// Egress guard: a RST of an owned connection, dropped.
        GuardDropRst = "guard_drop_rst",
        /// Egress guard: a segment of an owned connection sent by a TCP socket past
        /// ESTABLISHED/CLOSE_WAIT (an orphan after its process died), dropped.
        GuardDropOrphan = "guard_drop_orphan",
        /// A forwarded segment of a connection frozen here for a move
        /// ([`GuardState::Frozen`]): dropped on ingress.
        DropFrozen = "drop_frozen",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_key_round_trips_and_is_network_order() {
        let client = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 40_000);
        let vip = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);
        let key = FlowKey::new(client, vip);
        assert_eq!(key.client(), client);
        assert_eq!(key.vip(), vip);
        assert_eq!(key.client_addr, [198, 51, 100, 7]);
        assert_eq!(key.client_port, [0x9c, 0x40]);
        assert_eq!(key.vip_port, [0, 80]);
        assert_eq!(key.to_string(), "198.51.100.7:40000->203.0.113.10:80");
    }

    #[test]
    fn gue_source_port_is_in_the_dynamic_range_and_varies() {
        let vip = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);
        let ports: std::collections::HashSet<u16> = (1..200u16)
            .map(|p| {
                FlowKey::new(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), p), vip)
                    .gue_source_port()
            })
            .collect();
        assert!(ports.iter().all(|p| *p >= 0xc000));
        assert!(ports.len() > 150, "only {} distinct ports", ports.len());
    }

    #[test]
    fn flow_value_constructors() {
        let frozen = FlowValue::frozen();
        assert_eq!(frozen.state(), Some(FlowState::Frozen));
        assert_eq!(frozen.raw_state(), 1);
        assert_eq!(frozen.last_tsecr(), None);
        let p = Ipv4Addr::new(198, 18, 0, 2);
        let fwd = FlowValue {
            last_ack: 5,
            has_tsecr: 1,
            last_tsecr: 9,
            ..frozen
        }
        .with_forward(p);
        assert_eq!(fwd.state(), Some(FlowState::Forward));
        assert_eq!(fwd.raw_state(), 2);
        assert_eq!(fwd.participant(), p);
        assert_eq!(fwd.last_ack(), 5);
        assert_eq!(fwd.last_tsecr(), Some(9));
        assert_eq!(FlowValue::forward(p).last_ack(), 0);
    }

    #[test]
    fn seeded_value_and_targets() {
        let seed = FlowSeed {
            snd_nxt: 0xffff_fff0,
            rcv_nxt: 77,
        };
        let v = FlowValue::frozen_seeded(seed);
        assert_eq!(v.state(), Some(FlowState::Frozen));
        assert!(v.has_ack());
        assert_eq!((v.last_ack(), v.ack_wraps()), (0xffff_fff0, 0));
        assert_eq!(v.client_next_seq(), Some(77));
        assert_eq!(v.last_tsecr(), None);
        assert_eq!(v.packets(), 0);
        let p = Ipv4Addr::new(198, 19, 184, 2);
        let fwd = v.with_target(FlowTarget::Forward(p));
        assert_eq!(fwd.target(), Some(FlowTarget::Forward(p)));
        assert_eq!((fwd.last_ack(), fwd.client_next_seq()), (0xffff_fff0, Some(77)));
        let back = fwd.with_target(FlowTarget::Frozen);
        assert_eq!(back.target(), Some(FlowTarget::Frozen));
        assert_eq!(back.participant(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(back.last_ack(), 0xffff_fff0);
        assert_eq!(FlowValue::frozen().client_next_seq(), None);
        assert!(!FlowValue::frozen().has_ack());
    }

    #[test]
    fn acked_position_extends_with_wraps() {
        let seeded = FlowValue::frozen_seeded(FlowSeed {
            snd_nxt: 0xffff_fff0,
            rcv_nxt: 0,
        });
        assert_eq!(FlowValue::frozen().acked_position(0x1_0000_0000), None);
        assert_eq!(seeded.acked_position(0x1_ffff_fff0), Some(0x1_ffff_fff0));
        // Any base in the same epoch gives the same answer.
        assert_eq!(seeded.acked_position(0x1_0000_0000), Some(0x1_ffff_fff0));
        let wrapped = FlowValue {
            last_ack: 0x20,
            ack_wraps: 1,
            ..seeded
        };
        assert_eq!(wrapped.acked_position(0x1_ffff_fff0), Some(0x2_0000_0020));
        let twice = FlowValue {
            last_ack: 5,
            ack_wraps: 2,
            ..seeded
        };
        assert_eq!(twice.acked_position(0xffff_fff0), Some(0x2_0000_0005));
    }

    #[test]
    fn guard_state_raw_values() {
        for (state, raw) in [
            (GuardState::Owned, 1),
            (GuardState::Closing, 2),
            (GuardState::Frozen, 3),
            (GuardState::Unknown(9), 9),
        ] {
            assert_eq!(state.raw(), raw);
            assert_eq!(GuardState::from_raw(raw), state);
        }
    }

    #[test]
    fn config_bytes() {
        let cfg = MainConfig::new(Ipv4Addr::new(198, 18, 0, 1), Encap::Gue { port: 6080 });
        assert_eq!(cfg.local_addr, [198, 18, 0, 1]);
        assert_eq!(cfg.encap, 1);
        assert_eq!(cfg.gue_port, [0x17, 0xc0]);
        let cfg = ParticipantConfig::new(Ipv4Addr::new(198, 18, 0, 1), Encap::Ipip, true);
        assert_eq!(cfg.encap, 0);
        assert_eq!(cfg.gue_port, [0, 0]);
    }

    #[test]
    fn counter_names_are_unique_and_indexes_dense() {
        for (i, c) in MainCounter::ALL.iter().enumerate() {
            assert_eq!(c.index() as usize, i);
        }
        for (i, c) in ParticipantCounter::ALL.iter().enumerate() {
            assert_eq!(c.index() as usize, i);
        }
        let names: std::collections::HashSet<_> =
            MainCounter::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), MainCounter::ALL.len());
        assert_eq!(MainCounter::ALL.len(), 15);
        assert_eq!(ParticipantCounter::ALL.len(), 15);
        assert_eq!(ParticipantCounter::GuardDropOrphan.index(), 13);
        assert_eq!(MainCounter::DropFrozen.index(), 5);
        assert_eq!(ParticipantCounter::DropBadSource.index(), 4);
    }
}
