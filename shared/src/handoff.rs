//! The handoff record: everything a participant needs to take over a live client connection —
//! the TCP state the main dumped with `TCP_REPAIR`, the request bytes already read, and what to
//! serve.
//!
//! A fixed binary layout (version byte, big-endian fields in declaration order) so the record
//! is the same whichever build wrote it. Decoding treats the bytes as untrusted: it checks every
//! length against a named limit before using it and never panics. This module must never touch
//! a socket; applying the state is the I/O crate's job.
//!
//! Layout, version 2:
//!
//! ```text
//! u8 version | u64 flow_id
//! u32 local ip | u16 local port | u32 remote ip | u16 remote port
//! u32 snd_seq | u32 rcv_seq | u16 mss | u8 snd_wscale | u8 rcv_wscale
//! u8 flags (bit 0 sack, bit 1 timestamps) | u32 ts_val
//! u32 snd_wl1 | u32 snd_wnd | u32 max_window | u32 rcv_wnd | u32 rcv_wup
//! u32 request length | request bytes
//! u8 object present (0 or 1) [ object ]
//! u64 snd_offset | u32 in_flight | u8 pending count | pending responses
//!
//! object   = u16 path length | path (UTF-8) | u64 size | 32-byte SHA-256
//! response = u64 start | u32 request_end | u8 keep_alive (0 or 1) | u16 head length | head
//!            | u8 body present (0 or 1) [ object | u64 offset | u64 length ]
//! ```
//!
//! Version 2 added the stream offset and the pending responses, which let a record describe a
//! connection in the middle of a response (a move between participants), not only one that has
//! just been accepted.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::digest::Sha256;
use crate::http::{ObjectPath, PathError};
use crate::wire::Reader;

/// Format version written first in every record. Bump it on any layout change: a participant
/// refuses records of another version instead of misreading them.
pub const HANDOFF_VERSION: u8 = 2;

/// Most request bytes a record carries: the head (at most [`crate::http::MAX_HEAD_BYTES`]) plus
/// as much again for bytes of a pipelined request the main read along with it.
pub const MAX_HANDOFF_REQUEST_BYTES: usize = 2 * crate::http::MAX_HEAD_BYTES;

/// Longest object path. Paths come from request targets, which are at most this long before
/// percent-decoding shortens them.
pub const MAX_HANDOFF_PATH_BYTES: usize = crate::http::MAX_TARGET_BYTES;

/// Longest response head a record carries (the participant's own heads are a few hundred bytes).
pub const MAX_RESPONSE_HEAD_BYTES: usize = crate::http::MAX_HEAD_BYTES;

/// Most unfinished responses a record carries: the one being sent, and the ones after it that
/// the participant had already started when the connection was taken from it.
pub const MAX_PENDING_RESPONSES: usize = 4;

/// Largest TCP window scale shift (RFC 7323 §2.3).
pub const MAX_WSCALE: u8 = 14;

/// Flag bit: SACK was negotiated.
const FLAG_SACK: u8 = 0x01;
/// Flag bit: timestamps were negotiated.
const FLAG_TIMESTAMPS: u8 = 0x02;

/// Bytes before the request length: version, flow id, TCP state.
const FIXED_LEN: usize = 1 + 8 + 6 + 6 + 4 + 4 + 2 + 1 + 1 + 1 + 4 + 5 * 4;

/// The window state of `TCP_REPAIR_WINDOW` (`struct tcp_repair_window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RepairWindow {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

/// The TCP state of one connection at handoff time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpState {
    /// The VIP side.
    pub local: SocketAddrV4,
    /// The client.
    pub remote: SocketAddrV4,
    /// `TCP_QUEUE_SEQ` of the send and receive queues (both queues are empty at handoff).
    pub snd_seq: u32,
    pub rcv_seq: u32,
    pub mss: u16,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    pub sack: bool,
    pub timestamps: bool,
    /// `TCP_TIMESTAMP` read at dump time (clock + offset).
    pub ts_val: u32,
    pub window: RepairWindow,
}

/// What the participant is to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPlan {
    /// A normalized relative object path (see [`ObjectPath`]).
    pub path: String,
    pub size: u64,
    pub sha256: Sha256,
}

/// The body part of a response: `len` bytes of `object` from byte `offset` of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyPart {
    pub object: ObjectPlan,
    pub offset: u64,
    pub len: u64,
}

/// One response as it goes out on a connection: where it starts in the connection's stream,
/// the exact head bytes, and the body. Enough for another server to send any suffix of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Stream offset (see [`Handoff::snd_offset`]) of the first head byte.
    pub start: u64,
    /// The client's sequence number just after the request this response answers: where the
    /// next request begins.
    pub request_end: u32,
    pub keep_alive: bool,
    pub head: Vec<u8>,
    pub body: Option<BodyPart>,
}

impl Response {
    /// Head plus body length (saturating: a response that long fails [`Handoff::check`]).
    pub fn len(&self) -> u64 {
        (self.head.len() as u64).saturating_add(self.body.as_ref().map_or(0, |b| b.len))
    }

    /// Whether the response has no bytes at all (never true for a real response).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stream offset just after the last byte.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len())
    }

    /// Refuses a response whose end is past the largest stream offset (its length would wrap).
    fn check_end(&self) -> Result<(), HandoffError> {
        let len = (self.head.len() as u64).checked_add(self.body.as_ref().map_or(0, |b| b.len));
        match len.and_then(|len| self.start.checked_add(len)) {
            Some(_) => Ok(()),
            None => Err(HandoffError::StreamOverflow),
        }
    }

    pub(crate) fn encoded_len(&self) -> usize {
        8 + 4 + 1 + 2 + self.head.len() + 1 + self.body.as_ref().map_or(0, |b| object_len(&b.object) + 16)
    }
}

/// One connection handed to a participant: just accepted by the main, or taken from another
/// participant in the middle of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    pub flow_id: u64,
    pub tcp: TcpState,
    /// Bytes already read from the client and not yet answered (the first request, and any
    /// pipelined bytes after it).
    pub request: Vec<u8>,
    /// The object the first request asks for, so the participant can have it ready before it
    /// restores the connection.
    pub object: Option<ObjectPlan>,
    /// Byte position of `tcp.snd_seq` in the connection's response stream, counted from the
    /// first byte the main handed off (0 for a new handoff). 64 bits, so positions stay
    /// unambiguous past the 4 GiB where sequence numbers wrap.
    pub snd_offset: u64,
    /// Bytes after `snd_seq` the previous owner had already sent and the client had not yet
    /// acknowledged. The new owner puts them in its send queue as sent (its kernel resends
    /// whatever the client lacks) and writes new data from `snd_offset + in_flight`: the move
    /// does not wait for the client's last acknowledgement. 0 for a new handoff or a rebuild.
    pub in_flight: u32,
    /// Responses not yet completely sent, in stream order; the first one may already be partly
    /// acknowledged (sending resumes at `snd_offset`). Empty for a new handoff.
    pub pending: Vec<Response>,
}

/// Why a handoff record was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HandoffError {
    #[error("handoff version {found} is not {HANDOFF_VERSION}")]
    Version { found: u8 },
    #[error("handoff record is truncated")]
    Truncated,
    #[error("{extra} trailing bytes after the handoff record")]
    TrailingBytes { extra: usize },
    #[error("request of {len} bytes exceeds {MAX_HANDOFF_REQUEST_BYTES}")]
    RequestTooLong { len: usize },
    #[error("object path of {len} bytes exceeds {MAX_HANDOFF_PATH_BYTES}")]
    PathTooLong { len: usize },
    #[error("window scale {wscale} exceeds {MAX_WSCALE}")]
    WindowScale { wscale: u8 },
    #[error("mss is zero")]
    ZeroMss,
    #[error("unknown flag bits {flags:#04x}")]
    UnknownFlags { flags: u8 },
    #[error("object presence byte {byte} is neither 0 nor 1")]
    Presence { byte: u8 },
    #[error("object path is not utf-8")]
    PathNotUtf8,
    #[error("object path is unsafe: {0}")]
    Path(#[source] PathError),
    #[error("{count} pending responses exceed {MAX_PENDING_RESPONSES}")]
    TooManyPending { count: usize },
    #[error("response head of {len} bytes exceeds {MAX_RESPONSE_HEAD_BYTES}")]
    HeadTooLong { len: usize },
    #[error("pending responses are not contiguous from the stream offset")]
    PendingGap,
    #[error("{in_flight} bytes in flight run past the pending responses")]
    InFlightBeyondResponses { in_flight: u32 },
    #[error("response ends past the largest stream offset")]
    StreamOverflow,
}

fn check_tcp(mss: u16, snd_wscale: u8, rcv_wscale: u8) -> Result<(), HandoffError> {
    if mss == 0 {
        return Err(HandoffError::ZeroMss);
    }
    for wscale in [snd_wscale, rcv_wscale] {
        if wscale > MAX_WSCALE {
            return Err(HandoffError::WindowScale { wscale });
        }
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), HandoffError> {
    if path.len() > MAX_HANDOFF_PATH_BYTES {
        return Err(HandoffError::PathTooLong { len: path.len() });
    }
    ObjectPath::from_relative(path)
        .map(drop)
        .map_err(HandoffError::Path)
}

fn put_addr(out: &mut Vec<u8>, addr: &SocketAddrV4) {
    out.extend_from_slice(&addr.ip().octets());
    out.extend_from_slice(&addr.port().to_be_bytes());
}

fn get_addr(r: &mut Reader<'_>) -> Option<SocketAddrV4> {
    let ip = Ipv4Addr::from(r.array::<4>()?);
    Some(SocketAddrV4::new(ip, r.u16()?))
}

impl Handoff {
    /// Checks the limits that [`Handoff::decode`] enforces, so a sender can refuse a record the
    /// participant would reject.
    pub fn check(&self) -> Result<(), HandoffError> {
        check_tcp(self.tcp.mss, self.tcp.snd_wscale, self.tcp.rcv_wscale)?;
        if self.request.len() > MAX_HANDOFF_REQUEST_BYTES {
            return Err(HandoffError::RequestTooLong {
                len: self.request.len(),
            });
        }
        if let Some(object) = &self.object {
            check_path(&object.path)?;
        }
        if self.pending.len() > MAX_PENDING_RESPONSES {
            return Err(HandoffError::TooManyPending { count: self.pending.len() });
        }
        for r in &self.pending {
            if r.head.len() > MAX_RESPONSE_HEAD_BYTES {
                return Err(HandoffError::HeadTooLong { len: r.head.len() });
            }
            if let Some(b) = &r.body {
                check_path(&b.object.path)?;
            }
            r.check_end()?;
        }
        check_pending(self.snd_offset, &self.pending)?;
        check_in_flight(self.snd_offset, self.in_flight, &self.pending)
    }

    /// Size of the encoded record.
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN
            + 4
            + self.request.len()
            + 1
            + self.object.as_ref().map_or(0, object_len)
            + 8
            + 4
            + 1
            + self.pending.iter().map(Response::encoded_len).sum::<usize>()
    }

    /// Appends the encoded record to `out`. Records that fail [`Handoff::check`] are written
    /// anyway (lengths saturate) and are then refused by the decoder.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let t = &self.tcp;
        out.reserve(self.encoded_len());
        out.push(HANDOFF_VERSION);
        out.extend_from_slice(&self.flow_id.to_be_bytes());
        put_addr(out, &t.local);
        put_addr(out, &t.remote);
        out.extend_from_slice(&t.snd_seq.to_be_bytes());
        out.extend_from_slice(&t.rcv_seq.to_be_bytes());
        out.extend_from_slice(&t.mss.to_be_bytes());
        out.push(t.snd_wscale);
        out.push(t.rcv_wscale);
        let mut flags = 0;
        if t.sack {
            flags |= FLAG_SACK;
        }
        if t.timestamps {
            flags |= FLAG_TIMESTAMPS;
        }
        out.push(flags);
        out.extend_from_slice(&t.ts_val.to_be_bytes());
        let w = &t.window;
        for v in [w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        let request_len = u32::try_from(self.request.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&request_len.to_be_bytes());
        out.extend_from_slice(&self.request);
        match &self.object {
            None => out.push(0),
            Some(o) => {
                out.push(1);
                put_object(out, o);
            }
        }
        out.extend_from_slice(&self.snd_offset.to_be_bytes());
        out.extend_from_slice(&self.in_flight.to_be_bytes());
        out.push(u8::try_from(self.pending.len()).unwrap_or(u8::MAX));
        for r in &self.pending {
            put_response(out, r);
        }
    }

    /// Decodes exactly one record filling all of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Handoff, HandoffError> {
        const T: HandoffError = HandoffError::Truncated;
        let mut r = Reader::new(buf);

        let version = r.u8().ok_or(T)?;
        if version != HANDOFF_VERSION {
            return Err(HandoffError::Version { found: version });
        }
        let flow_id = r.u64().ok_or(T)?;
        let local = get_addr(&mut r).ok_or(T)?;
        let remote = get_addr(&mut r).ok_or(T)?;
        let snd_seq = r.u32().ok_or(T)?;
        let rcv_seq = r.u32().ok_or(T)?;
        let mss = r.u16().ok_or(T)?;
        let snd_wscale = r.u8().ok_or(T)?;
        let rcv_wscale = r.u8().ok_or(T)?;
        check_tcp(mss, snd_wscale, rcv_wscale)?;
        let flags = r.u8().ok_or(T)?;
        if flags & !(FLAG_SACK | FLAG_TIMESTAMPS) != 0 {
            return Err(HandoffError::UnknownFlags { flags });
        }
        let ts_val = r.u32().ok_or(T)?;
        let window = RepairWindow {
            snd_wl1: r.u32().ok_or(T)?,
            snd_wnd: r.u32().ok_or(T)?,
            max_window: r.u32().ok_or(T)?,
            rcv_wnd: r.u32().ok_or(T)?,
            rcv_wup: r.u32().ok_or(T)?,
        };

        let len = r.u32().ok_or(T)? as usize;
        if len > MAX_HANDOFF_REQUEST_BYTES {
            return Err(HandoffError::RequestTooLong { len });
        }
        let request = r.bytes(len).ok_or(T)?.to_vec();

        let object = match presence(&mut r)? {
            false => None,
            true => Some(get_object(&mut r)?),
        };
        let snd_offset = r.u64().ok_or(T)?;
        let in_flight = r.u32().ok_or(T)?;
        let count = usize::from(r.u8().ok_or(T)?);
        if count > MAX_PENDING_RESPONSES {
            return Err(HandoffError::TooManyPending { count });
        }
        let mut pending = Vec::with_capacity(count);
        for _ in 0..count {
            pending.push(get_response(&mut r)?);
        }
        check_pending(snd_offset, &pending)?;
        check_in_flight(snd_offset, in_flight, &pending)?;
        if r.remaining() != 0 {
            return Err(HandoffError::TrailingBytes {
                extra: r.remaining(),
            });
        }

        let tcp = TcpState {
            local,
            remote,
            snd_seq,
            rcv_seq,
            mss,
            snd_wscale,
            rcv_wscale,
            sack: flags & FLAG_SACK != 0,
            timestamps: flags & FLAG_TIMESTAMPS != 0,
            ts_val,
            window,
        };
        Ok(Handoff {
            flow_id,
            tcp,
            request,
            object,
            snd_offset,
            in_flight,
            pending,
        })
    }
}

/// Bytes in flight must lie within the pending responses. A record without pending responses
/// (a participant's release, which the main completes from its ledger) is not checked here.
fn check_in_flight(snd_offset: u64, in_flight: u32, pending: &[Response]) -> Result<(), HandoffError> {
    let Some(last) = pending.last() else { return Ok(()) };
    let end = last.end();
    if snd_offset.saturating_add(u64::from(in_flight)) > end {
        return Err(HandoffError::InFlightBeyondResponses { in_flight });
    }
    Ok(())
}

/// The first pending response must contain `snd_offset` (or start exactly there) and each one
/// must start where the one before it ends.
fn check_pending(snd_offset: u64, pending: &[Response]) -> Result<(), HandoffError> {
    let Some(first) = pending.first() else { return Ok(()) };
    if first.start > snd_offset || first.end() <= snd_offset && !first.is_empty() {
        return Err(HandoffError::PendingGap);
    }
    if pending.windows(2).any(|w| w[0].end() != w[1].start) {
        return Err(HandoffError::PendingGap);
    }
    Ok(())
}

/// Appends one response in the record's `response` layout.
pub(crate) fn put_response(out: &mut Vec<u8>, r: &Response) {
    out.extend_from_slice(&r.start.to_be_bytes());
    out.extend_from_slice(&r.request_end.to_be_bytes());
    out.push(u8::from(r.keep_alive));
    out.extend_from_slice(&u16::try_from(r.head.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&r.head);
    match &r.body {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            put_object(out, &b.object);
            out.extend_from_slice(&b.offset.to_be_bytes());
            out.extend_from_slice(&b.len.to_be_bytes());
        }
    }
}

/// Reads one response in the record's `response` layout, checking its limits and that it ends
/// within the stream's 64-bit offsets.
pub(crate) fn get_response(r: &mut Reader<'_>) -> Result<Response, HandoffError> {
    const T: HandoffError = HandoffError::Truncated;
    let start = r.u64().ok_or(T)?;
    let request_end = r.u32().ok_or(T)?;
    let keep_alive = presence(r)?;
    let len = usize::from(r.u16().ok_or(T)?);
    if len > MAX_RESPONSE_HEAD_BYTES {
        return Err(HandoffError::HeadTooLong { len });
    }
    let head = r.bytes(len).ok_or(T)?.to_vec();
    let body = match presence(r)? {
        false => None,
        true => Some(BodyPart { object: get_object(r)?, offset: r.u64().ok_or(T)?, len: r.u64().ok_or(T)? }),
    };
    let response = Response { start, request_end, keep_alive, head, body };
    response.check_end()?;
    Ok(response)
}

fn object_len(o: &ObjectPlan) -> usize {
    2 + o.path.len() + 8 + 32
}

pub(crate) fn put_object(out: &mut Vec<u8>, o: &ObjectPlan) {
    let path_len = u16::try_from(o.path.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&path_len.to_be_bytes());
    out.extend_from_slice(o.path.as_bytes());
    out.extend_from_slice(&o.size.to_be_bytes());
    out.extend_from_slice(&o.sha256);
}

fn presence(r: &mut Reader<'_>) -> Result<bool, HandoffError> {
    match r.u8().ok_or(HandoffError::Truncated)? {
        0 => Ok(false),
        1 => Ok(true),
        byte => Err(HandoffError::Presence { byte }),
    }
}

pub(crate) fn get_object(r: &mut Reader<'_>) -> Result<ObjectPlan, HandoffError> {
    const T: HandoffError = HandoffError::Truncated;
    let len = usize::from(r.u16().ok_or(T)?);
    if len > MAX_HANDOFF_PATH_BYTES {
        return Err(HandoffError::PathTooLong { len });
    }
    let path = r.bytes(len).ok_or(T)?;
    let path = std::str::from_utf8(path).map_err(|_| HandoffError::PathNotUtf8)?;
    check_path(path)?;
    let size = r.u64().ok_or(T)?;
    let sha256 = r.array::<32>().ok_or(T)?;
    Ok(ObjectPlan { path: path.to_string(), size, sha256 })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fuzz::{edgy_u64, string_from};
    use rand::rngs::StdRng;
    use rand::Rng;

    #[rustfmt::skip]
    static FIXTURE: &[u8] = &[
        0x02,                                           // version
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // flow_id
        203, 0, 113, 10, 0x00, 0x50,                    // local 203.0.113.10:80
        198, 18, 1, 2, 0xc8, 0x22,                      // remote 198.18.1.2:51234
        0x11, 0x22, 0x33, 0x44,                         // snd_seq
        0x55, 0x66, 0x77, 0x88,                         // rcv_seq
        0x05, 0xb4,                                     // mss 1460
        0x07,                                           // snd_wscale
        0x09,                                           // rcv_wscale
        0x03,                                           // flags: sack | timestamps
        0xa0, 0xb0, 0xc0, 0xd0,                         // ts_val
        0x55, 0x66, 0x77, 0x88,                         // snd_wl1
        0x00, 0x00, 0xfa, 0xf0,                         // snd_wnd 64240
        0x00, 0x00, 0xff, 0xff,                         // max_window 65535
        0x00, 0x00, 0xff, 0xcb,                         // rcv_wnd 65483
        0x55, 0x66, 0x77, 0x88,                         // rcv_wup
        0x00, 0x00, 0x00, 0x13,                         // request length 19
        b'G', b'E', b'T', b' ', b'/', b'a', b' ', b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'0',
        b'\r', b'\n', b'\r', b'\n',                     // "GET /a HTTP/1.0\r\n\r\n"
        0x01,                                           // object present
        0x00, 0x07,                                     // path length 7
        b'a', b'/', b'b', b'.', b'b', b'i', b'n',       // "a/b.bin"
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, // size 4096
        0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, // sha256
        0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
        0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
        0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // snd_offset 0
        0x00, 0x00, 0x00, 0x00,                         // in_flight 0
        0x00,                                           // no pending responses
    ];

    /// Offsets into [`FIXTURE`] for the corruption tests.
    const MSS_AT: usize = 29;
    const SND_WSCALE_AT: usize = 31;
    const FLAGS_AT: usize = 33;
    const REQUEST_LEN_AT: usize = 58;
    const PRESENCE_AT: usize = 81;
    const PATH_AT: usize = 84;

    fn fixture() -> Handoff {
        Handoff {
            flow_id: 0x0102_0304_0506_0708,
            tcp: TcpState {
                local: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80),
                remote: SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 51234),
                snd_seq: 0x1122_3344,
                rcv_seq: 0x5566_7788,
                mss: 1460,
                snd_wscale: 7,
                rcv_wscale: 9,
                sack: true,
                timestamps: true,
                ts_val: 0xa0b0_c0d0,
                window: RepairWindow {
                    snd_wl1: 0x5566_7788,
                    snd_wnd: 64240,
                    max_window: 65535,
                    rcv_wnd: 65483,
                    rcv_wup: 0x5566_7788,
                },
            },
            request: b"GET /a HTTP/1.0\r\n\r\n".to_vec(),
            object: Some(ObjectPlan {
                path: "a/b.bin".into(),
                size: 4096,
                sha256: [0xab; 32],
            }),
            snd_offset: 0,
            in_flight: 0,
            pending: Vec::new(),
        }
    }

    fn encode(h: &Handoff) -> Vec<u8> {
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(out.len(), h.encoded_len());
        out
    }

    fn corrupt(at: usize, value: u8) -> Vec<u8> {
        let mut buf = FIXTURE.to_vec();
        buf[at] = value;
        buf
    }

    #[test]
    fn fixture_both_ways() {
        assert_eq!(Handoff::decode(FIXTURE), Ok(fixture()));
        assert_eq!(encode(&fixture()), FIXTURE);
        assert_eq!(fixture().check(), Ok(()));
        assert_eq!(FIXED_LEN, REQUEST_LEN_AT);
    }

    #[test]
    fn without_object_and_flags() {
        let mut h = fixture();
        h.object = None;
        h.tcp.sack = false;
        h.tcp.timestamps = true;
        h.request.clear();
        let bytes = encode(&h);
        assert_eq!(bytes.len(), FIXED_LEN + 4 + 1 + 13);
        assert_eq!(bytes[FLAGS_AT], 0x02);
        assert_eq!(bytes[FIXED_LEN..], [0; 18]);
        assert_eq!(Handoff::decode(&bytes), Ok(h));
    }

    #[test]
    fn every_prefix_is_truncated() {
        for n in 0..FIXTURE.len() {
            assert_eq!(
                Handoff::decode(&FIXTURE[..n]),
                Err(HandoffError::Truncated),
                "prefix {n}"
            );
        }
    }

    #[test]
    fn trailing_bytes() {
        let mut buf = FIXTURE.to_vec();
        buf.extend_from_slice(&[0, 0]);
        assert_eq!(
            Handoff::decode(&buf),
            Err(HandoffError::TrailingBytes { extra: 2 })
        );
    }

    #[test]
    fn wrong_version() {
        assert_eq!(
            Handoff::decode(&corrupt(0, 1)),
            Err(HandoffError::Version { found: 1 })
        );
        assert_eq!(
            Handoff::decode(&corrupt(0, 0)),
            Err(HandoffError::Version { found: 0 })
        );
    }

    #[test]
    fn bad_tcp_options() {
        let mut buf = corrupt(MSS_AT, 0);
        buf[MSS_AT + 1] = 0;
        assert_eq!(Handoff::decode(&buf), Err(HandoffError::ZeroMss));
        assert_eq!(
            Handoff::decode(&corrupt(SND_WSCALE_AT, 15)),
            Err(HandoffError::WindowScale { wscale: 15 })
        );
        assert_eq!(
            Handoff::decode(&corrupt(SND_WSCALE_AT + 1, 255)),
            Err(HandoffError::WindowScale { wscale: 255 })
        );
        let mut h = fixture();
        h.tcp.snd_wscale = 14;
        h.tcp.rcv_wscale = 14;
        assert_eq!(Handoff::decode(&encode(&h)), Ok(h));
        assert_eq!(
            Handoff::decode(&corrupt(FLAGS_AT, 0x07)),
            Err(HandoffError::UnknownFlags { flags: 0x07 })
        );
        assert_eq!(
            Handoff::decode(&corrupt(FLAGS_AT, 0x80)),
            Err(HandoffError::UnknownFlags { flags: 0x80 })
        );
    }

    #[test]
    fn request_length_limit() {
        let mut h = fixture();
        h.request = vec![b'x'; MAX_HANDOFF_REQUEST_BYTES];
        assert_eq!(Handoff::decode(&encode(&h)), Ok(h.clone()));
        h.request.push(b'x');
        let len = MAX_HANDOFF_REQUEST_BYTES + 1;
        assert_eq!(h.check(), Err(HandoffError::RequestTooLong { len }));
        assert_eq!(
            Handoff::decode(&encode(&h)),
            Err(HandoffError::RequestTooLong { len })
        );
        // Refused from the length alone, before the bytes arrive.
        let mut buf = FIXTURE[..REQUEST_LEN_AT].to_vec();
        buf.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            Handoff::decode(&buf),
            Err(HandoffError::RequestTooLong {
                len: u32::MAX as usize
            })
        );
    }

    #[test]
    fn presence_byte() {
        assert_eq!(
            Handoff::decode(&corrupt(PRESENCE_AT, 2)),
            Err(HandoffError::Presence { byte: 2 })
        );
    }

    #[test]
    fn object_path_rules() {
        assert_eq!(
            Handoff::decode(&corrupt(PATH_AT, 0xff)),
            Err(HandoffError::PathNotUtf8)
        );
        assert_eq!(
            Handoff::decode(&corrupt(PATH_AT, b'/')),
            Err(HandoffError::Path(PathError::NotNormalized))
        );
        assert_eq!(
            Handoff::decode(&corrupt(PATH_AT + 1, b'\\')),
            Err(HandoffError::Path(PathError::Backslash))
        );
        let mut h = fixture();
        if let Some(o) = h.object.as_mut() {
            o.path = "../etc/passwd".into();
        }
        assert_eq!(h.check(), Err(HandoffError::Path(PathError::Traversal)));
        assert_eq!(
            Handoff::decode(&encode(&h)),
            Err(HandoffError::Path(PathError::Traversal))
        );
        if let Some(o) = h.object.as_mut() {
            o.path = String::new();
        }
        assert_eq!(
            Handoff::decode(&encode(&h)),
            Err(HandoffError::Path(PathError::Empty))
        );
        if let Some(o) = h.object.as_mut() {
            o.path = "a".repeat(MAX_HANDOFF_PATH_BYTES + 1);
        }
        let len = MAX_HANDOFF_PATH_BYTES + 1;
        assert_eq!(h.check(), Err(HandoffError::PathTooLong { len }));
        assert_eq!(
            Handoff::decode(&encode(&h)),
            Err(HandoffError::PathTooLong { len })
        );
    }

    fn moved() -> Handoff {
        let mut h = fixture();
        h.object = None;
        h.snd_offset = 1000;
        let plan = ObjectPlan { path: "big.bin".into(), size: 1 << 33, sha256: [7; 32] };
        h.pending = vec![
            Response {
                start: 900,
                request_end: 0x5566_7788,
                keep_alive: true,
                head: b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
                body: Some(BodyPart { object: plan.clone(), offset: 0, len: 200 }),
            },
            Response {
                start: 900 + 19 + 200,
                request_end: 0x5566_7799,
                keep_alive: false,
                head: b"HTTP/1.1 206 Partial Content\r\n\r\n".to_vec(),
                body: Some(BodyPart { object: plan, offset: 1 << 32, len: 5 << 30 }),
            },
        ];
        h
    }

    #[test]
    fn pending_responses_round_trip() {
        let mut h = moved();
        h.in_flight = 100;
        assert_eq!(h.check(), Ok(()));
        let bytes = encode(&h);
        assert_eq!(Handoff::decode(&bytes), Ok(h.clone()));
        for n in 0..bytes.len() {
            assert_eq!(Handoff::decode(&bytes[..n]), Err(HandoffError::Truncated), "prefix {n}");
        }
        assert_eq!(h.pending[1].end(), h.pending[1].start + h.pending[1].head.len() as u64 + (5 << 30));
    }

    #[test]
    fn pending_limits() {
        let mut h = moved();
        h.pending.truncate(1);
        h.in_flight = 119;
        assert_eq!(h.check(), Ok(()), "in flight up to the end of the last response");
        h.in_flight = 120;
        assert_eq!(h.check(), Err(HandoffError::InFlightBeyondResponses { in_flight: 120 }));
        assert_eq!(Handoff::decode(&encode(&h)), Err(HandoffError::InFlightBeyondResponses { in_flight: 120 }));
        let mut h = moved();
        h.snd_offset = 899;
        assert_eq!(h.check(), Err(HandoffError::PendingGap));
        assert_eq!(Handoff::decode(&encode(&h)), Err(HandoffError::PendingGap));
        h.snd_offset = 900 + 19 + 200;
        assert_eq!(h.check(), Err(HandoffError::PendingGap), "first response already complete");
        let mut h = moved();
        h.pending[1].start += 1;
        assert_eq!(Handoff::decode(&encode(&h)), Err(HandoffError::PendingGap));
        let mut h = moved();
        let r = h.pending[1].clone();
        for _ in 0..MAX_PENDING_RESPONSES {
            h.pending.push(r.clone());
        }
        let count = h.pending.len();
        assert_eq!(h.check(), Err(HandoffError::TooManyPending { count }));
        assert_eq!(Handoff::decode(&encode(&h)), Err(HandoffError::TooManyPending { count }));
        let mut h = moved();
        h.pending[0].head = vec![b'x'; MAX_RESPONSE_HEAD_BYTES + 1];
        let len = MAX_RESPONSE_HEAD_BYTES + 1;
        assert_eq!(h.check(), Err(HandoffError::HeadTooLong { len }));
        assert_eq!(Handoff::decode(&encode(&h)), Err(HandoffError::HeadTooLong { len }));
        let mut h = moved();
        if let Some(b) = h.pending[0].body.as_mut() {
            b.object.path = "../x".into();
        }
        assert_eq!(Handoff::decode(&encode(&h)), Err(HandoffError::Path(PathError::Traversal)));
    }

    /// The tail of a record (after "no object") whose one pending response has a 1-byte head
    /// and a body of `u64::MAX` bytes. Found by `fuzz_decode`: the length overflowed in
    /// `Response::len`, a panic with overflow checks and, without them, a length wrapped to 0 that
    /// passed the gap checks, so the record was accepted.
    #[rustfmt::skip]
    pub(crate) static OVERFLOWING_RESPONSE: &[u8] = &[
        0, 0, 0, 0, 0, 0, 0, 0,                         // snd_offset 0
        0, 0, 0, 0,                                     // in_flight 0
        1,                                              // one pending response
        0, 0, 0, 0, 0, 0, 0, 0,                         // start 0
        0, 0, 0, 0,                                     // request_end
        0,                                              // no keep-alive
        0, 1, b'H',                                     // head "H"
        1,                                              // body present
        0, 1, b'o',                                     // path "o"
        0, 0, 0, 0, 0, 0, 0, 5,                         // size 5
        3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, // sha256
        3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
        0, 0, 0, 0, 0, 0, 0, 0,                         // offset 0
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // length u64::MAX
    ];

    #[test]
    fn regression_response_length_overflow() {
        let mut buf = FIXTURE[..PRESENCE_AT].to_vec();
        buf.push(0);
        buf.extend_from_slice(OVERFLOWING_RESPONSE);
        assert_eq!(Handoff::decode(&buf), Err(HandoffError::StreamOverflow));
        let mut h = moved();
        h.pending.truncate(1);
        h.pending[0].start = u64::MAX - 19;
        h.snd_offset = u64::MAX - 19;
        assert_eq!(h.check(), Err(HandoffError::StreamOverflow));
        assert_eq!(Handoff::decode(&encode(&h)), Err(HandoffError::StreamOverflow));
        if let Some(b) = h.pending[0].body.as_mut() {
            b.len = 0;
        }
        assert_eq!(h.pending[0].end(), u64::MAX, "ends exactly at the largest offset");
        assert_eq!(Handoff::decode(&encode(&h)), Ok(h));
    }

    /// A valid object path: 1 to 4 segments of path-safe characters, sometimes at the length
    /// limit.
    pub(crate) fn random_path(rng: &mut StdRng) -> String {
        if rng.gen_ratio(1, 50) {
            return "p".repeat(MAX_HANDOFF_PATH_BYTES);
        }
        let segments: Vec<String> = (0..rng.gen_range(1..=4))
            .map(|_| loop {
                let s = string_from(rng, "ab.-_~%é日 Z9", 1..=12);
                if s != "." && s != ".." {
                    break s;
                }
            })
            .collect();
        segments.join("/")
    }

    pub(crate) fn random_object(rng: &mut StdRng) -> ObjectPlan {
        ObjectPlan { path: random_path(rng), size: edgy_u64(rng), sha256: rng.gen() }
    }

    fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
        let len = if rng.gen_ratio(1, 50) { max } else { rng.gen_range(0..=max.min(64)) };
        (0..len).map(|_| rng.gen()).collect()
    }

    /// A response starting at `start` whose length keeps every stream offset in a u64.
    pub(crate) fn random_response(rng: &mut StdRng, start: u64) -> Response {
        let mut head = random_bytes(rng, MAX_RESPONSE_HEAD_BYTES);
        head.truncate(usize::try_from(u64::MAX - start).unwrap_or(usize::MAX));
        let room = u64::MAX - start - head.len() as u64;
        let body = rng.gen_bool(0.7).then(|| BodyPart {
            object: random_object(rng),
            offset: edgy_u64(rng),
            len: if rng.gen_ratio(1, 10) { room } else { rng.gen_range(0..=room.min(1 << 40)) },
        });
        Response { start, request_end: rng.gen(), keep_alive: rng.gen(), head, body }
    }

    /// A random handoff that passes [`Handoff::check`]: pending responses contiguous from one
    /// that holds `snd_offset`, bytes in flight within them.
    pub(crate) fn random_handoff(rng: &mut StdRng) -> Handoff {
        let wscale = |rng: &mut StdRng| rng.gen_range(0..=MAX_WSCALE);
        let tcp = TcpState {
            local: SocketAddrV4::new(Ipv4Addr::from(rng.gen::<u32>()), rng.gen()),
            remote: SocketAddrV4::new(Ipv4Addr::from(rng.gen::<u32>()), rng.gen()),
            snd_seq: rng.gen(),
            rcv_seq: rng.gen(),
            mss: rng.gen_range(1..=u16::MAX),
            snd_wscale: wscale(rng),
            rcv_wscale: wscale(rng),
            sack: rng.gen(),
            timestamps: rng.gen(),
            ts_val: rng.gen(),
            window: RepairWindow {
                snd_wl1: rng.gen(),
                snd_wnd: rng.gen(),
                max_window: rng.gen(),
                rcv_wnd: rng.gen(),
                rcv_wup: rng.gen(),
            },
        };
        let mut pending: Vec<Response> = Vec::new();
        let mut at = if rng.gen() { rng.gen_range(0..1 << 20) } else { rng.gen_range(0..u64::MAX / 2) };
        for _ in 0..rng.gen_range(0..=MAX_PENDING_RESPONSES) {
            let r = random_response(rng, at);
            at = r.end();
            pending.push(r);
            if at == u64::MAX {
                break;
            }
        }
        let (snd_offset, in_flight) = match (pending.first(), pending.last()) {
            (Some(first), Some(last)) => {
                let offset = if first.is_empty() { first.start } else { rng.gen_range(first.start..first.end()) };
                let room = u32::try_from(last.end() - offset).unwrap_or(u32::MAX);
                (offset, rng.gen_range(0..=room))
            }
            _ => (edgy_u64(rng), rng.gen()),
        };
        Handoff {
            flow_id: edgy_u64(rng),
            tcp,
            request: random_bytes(rng, MAX_HANDOFF_REQUEST_BYTES),
            object: rng.gen_bool(0.5).then(|| random_object(rng)),
            snd_offset,
            in_flight,
            pending,
        }
    }

    /// What every decoded record must satisfy, in arithmetic that cannot wrap.
    fn check_decoded(h: &Handoff) {
        assert_eq!(h.check(), Ok(()), "decoder and check agree");
        assert!(h.tcp.mss > 0 && h.tcp.snd_wscale <= MAX_WSCALE && h.tcp.rcv_wscale <= MAX_WSCALE);
        assert!(h.request.len() <= MAX_HANDOFF_REQUEST_BYTES);
        assert!(h.pending.len() <= MAX_PENDING_RESPONSES);
        let len = |r: &Response| r.head.len() as u128 + r.body.as_ref().map_or(0, |b| u128::from(b.len));
        let objects = h.object.iter().chain(h.pending.iter().filter_map(|r| r.body.as_ref().map(|b| &b.object)));
        for o in objects {
            assert!(o.path.len() <= MAX_HANDOFF_PATH_BYTES);
            assert_eq!(ObjectPath::from_relative(&o.path).map(|p| p.as_str().to_owned()), Ok(o.path.clone()));
        }
        if let (Some(first), Some(last)) = (h.pending.first(), h.pending.last()) {
            let offset = u128::from(h.snd_offset);
            let first_start = u128::from(first.start);
            assert!(first_start <= offset && (offset < first_start + len(first) || len(first) == 0));
            for w in h.pending.windows(2) {
                assert_eq!(u128::from(w[0].start) + len(&w[0]), u128::from(w[1].start), "contiguous");
            }
            assert!(offset + u128::from(h.in_flight) <= u128::from(last.start) + len(last), "in flight within");
        }
        for r in &h.pending {
            assert!(r.head.len() <= MAX_RESPONSE_HEAD_BYTES);
        }
    }

    #[test]
    fn fuzz_decode() {
        let mut with_pending = Vec::new();
        moved().encode(&mut with_pending);
        let mut without_object = Vec::new();
        Handoff { object: None, ..fixture() }.encode(&mut without_object);
        crate::fuzz::fuzz_bytes("handoff_decode", &[FIXTURE, &with_pending, &without_object], |input| {
            match Handoff::decode(input) {
                Ok(h) => {
                    check_decoded(&h);
                    let mut out = Vec::new();
                    h.encode(&mut out);
                    assert_eq!(out, input, "the encoding is canonical");
                }
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        });
    }

    #[test]
    fn fuzz_random_handoffs_round_trip() {
        crate::fuzz::fuzz_values("handoff_round_trip", random_handoff, |h| {
            assert_eq!(h.check(), Ok(()));
            let bytes = encode(h);
            let decoded = Handoff::decode(&bytes);
            assert_eq!(decoded.as_ref(), Ok(h));
            check_decoded(h);
            let cut = bytes.len() / 2;
            assert_eq!(Handoff::decode(&bytes[..cut]), Err(HandoffError::Truncated));
            let mut longer = bytes;
            longer.push(0);
            assert_eq!(Handoff::decode(&longer), Err(HandoffError::TrailingBytes { extra: 1 }));
        });
    }
}
