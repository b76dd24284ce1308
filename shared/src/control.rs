//! The participant ↔ main control channel: message types and their length-prefixed framing.
//!
//! A frame is a u32 big-endian length of the rest, a kind byte, and the body in the kind's fixed
//! layout (big-endian integers, length-prefixed UTF-8 strings). Decoding is check-then-parse: an
//! incomplete frame is `Ok(None)`, an oversize one is refused from its length prefix alone. This
//! module never reads or writes a socket, and authenticates nothing (that layer wraps these
//! frames later).

use std::net::Ipv4Addr;

use crate::geo::{Coord, GeoError};
use crate::handoff::{get_object, get_response, put_object, put_response, Handoff, HandoffError, ObjectPlan, Response};
use crate::wire::Reader;

/// Largest frame body (everything after the length prefix). The biggest real message, a
/// [`Message::Handoff`], stays under 40 KiB; 1 MiB leaves room for growth while bounding what a
/// peer can make us buffer.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// Longest participant name. Names appear in logs, metrics labels and `batonctl` tables, so they
/// are short and limited to `[a-z0-9-]`.
pub const MAX_NAME_BYTES: usize = 64;

/// Longest reason text in [`Message::Rejected`] and [`Message::RestoreFailed`]: room for an error
/// chain, not for a log dump.
pub const MAX_REASON_BYTES: usize = 1024;

/// Bytes of the length prefix.
const LEN_PREFIX: usize = 4;

const KIND_REGISTER: u8 = 1;
const KIND_REGISTERED: u8 = 2;
const KIND_REJECTED: u8 = 3;
const KIND_HEARTBEAT: u8 = 4;
const KIND_HANDOFF: u8 = 5;
const KIND_RESTORED: u8 = 6;
const KIND_RESTORE_FAILED: u8 = 7;
const KIND_FLOW_CLOSED: u8 = 8;
const KIND_RELEASE: u8 = 9;
const KIND_RELEASED: u8 = 10;
const KIND_RELEASE_FAILED: u8 = 11;
const KIND_SERVING: u8 = 12;
const KIND_PREPARE: u8 = 13;
const KIND_PREPARED: u8 = 14;
const KIND_PREPARE_FAILED: u8 = 15;

/// Most objects one [`Message::Prepare`] names (one per unfinished response).
pub const MAX_PREPARE_OBJECTS: usize = crate::handoff::MAX_PENDING_RESPONSES;

/// A participant's load figures, sent with every heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Load {
    /// Connections it serves now.
    pub active_flows: u32,
    /// Bytes it sent to clients per second, over the last heartbeat interval.
    pub bytes_per_sec: u64,
    /// The host's one-minute load average, × 1000.
    pub load_avg_milli: u32,
    /// Bytes of objects in its cache.
    pub cache_bytes: u64,
}

/// The `ReleaseFailed` reason of a participant that does not serve the flow at all (it ended, or
/// the process that served it is gone): the main recovers or forgets the flow instead of
/// leaving it with that participant.
pub const NOT_SERVED_HERE: &str = "not served here";

/// A control-channel message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Participant → main, first message: who and where it is.
    Register {
        name: String,
        addr: Ipv4Addr,
        coord: Coord,
        capacity: u32,
        /// Port of its plain-HTTP mirror on `addr`; 0 when it runs none.
        mirror_port: u16,
    },
    /// Main → participant: registration accepted.
    Registered { participant_id: u32 },
    /// Main → participant: registration refused.
    Rejected { reason: String },
    /// Participant → main, periodic: current load.
    Heartbeat(Load),
    /// Main → participant: take over this connection.
    Handoff(Handoff),
    /// Participant → main: the connection is restored and being served.
    Restored { flow_id: u64 },
    /// Participant → main: the connection could not be restored.
    RestoreFailed { flow_id: u64, reason: String },
    /// Participant → main: the connection ended.
    FlowClosed { flow_id: u64, bytes_sent: u64 },
    /// Main → participant: stop sending on this connection and give it back (a move).
    Release { flow_id: u64 },
    /// Participant → main: the connection, stopped and frozen, as a record the next server can
    /// restore: `tcp.snd_seq` is the first byte the client has not acknowledged, `snd_offset`
    /// its stream position, `request` the client bytes read and not yet answered; `pending` and
    /// `object` are empty (the main holds the responses from the `Serving` reports).
    Released(Handoff),
    /// Participant → main: the connection was not released (it had ended, or is unknown); the
    /// participant keeps whatever it still has.
    ReleaseFailed { flow_id: u64, reason: String },
    /// Participant → main: it starts sending this response on the connection. Sent before the
    /// first byte of it, so the main always knows what every sent byte belongs to.
    Serving { flow_id: u64, response: Response },
    /// Main → participant: have these objects cached and verified; a flow may come (a move
    /// about to start, or a standby for a flow's recovery).
    Prepare { flow_id: u64, objects: Vec<ObjectPlan> },
    /// Participant → main: the objects of a `Prepare` are ready.
    Prepared { flow_id: u64 },
    /// Participant → main: the objects of a `Prepare` could not be had.
    PrepareFailed { flow_id: u64, reason: String },
}

/// Why a frame was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds {MAX_FRAME_BYTES}")]
    TooLarge { len: usize },
    #[error("frame has no kind byte")]
    Empty,
    #[error("unknown message kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("message body is truncated")]
    Truncated,
    #[error("{extra} trailing bytes in frame")]
    TrailingBytes { extra: usize },
    #[error("name must be 1 to {MAX_NAME_BYTES} bytes of [a-z0-9-]")]
    BadName,
    #[error("reason of {len} bytes exceeds {MAX_REASON_BYTES}")]
    ReasonTooLong { len: usize },
    #[error("text is not utf-8")]
    NotUtf8,
    #[error("bad coordinate: {0}")]
    Coord(#[source] GeoError),
    #[error("bad handoff: {0}")]
    Handoff(#[from] HandoffError),
    #[error("{count} objects to prepare exceed {MAX_PREPARE_OBJECTS}")]
    TooManyObjects { count: usize },
}

/// Checks a participant name: 1 to [`MAX_NAME_BYTES`] bytes of `[a-z0-9-]`.
pub fn validate_name(name: &str) -> Result<(), FrameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(FrameError::BadName)
    }
}

/// `reason` cut to at most [`MAX_REASON_BYTES`] on a character boundary.
fn clip_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

fn put_reason(out: &mut Vec<u8>, reason: &str) {
    let reason = clip_reason(reason);
    // MAX_REASON_BYTES fits in a u16.
    out.extend_from_slice(&(reason.len() as u16).to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
}

/// Appends one frame for `msg` to `out`.
///
/// Reasons longer than [`MAX_REASON_BYTES`] are cut short (they are human-readable text). Names
/// are written as given; one that fails [`validate_name`] is refused by the receiver.
pub fn encode_frame(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    match msg {
        Message::Register {
            name,
            addr,
            coord,
            capacity,
            mirror_port,
        } => {
            out.push(KIND_REGISTER);
            let name = &name.as_bytes()[..name.len().min(usize::from(u8::MAX))];
            out.push(name.len() as u8);
            out.extend_from_slice(name);
            out.extend_from_slice(&addr.octets());
            out.extend_from_slice(&coord.lat.to_bits().to_be_bytes());
            out.extend_from_slice(&coord.lon.to_bits().to_be_bytes());
            out.extend_from_slice(&capacity.to_be_bytes());
            out.extend_from_slice(&mirror_port.to_be_bytes());
        }
        Message::Registered { participant_id } => {
            out.push(KIND_REGISTERED);
            out.extend_from_slice(&participant_id.to_be_bytes());
        }
        Message::Rejected { reason } => {
            out.push(KIND_REJECTED);
            put_reason(out, reason);
        }
        Message::Heartbeat(load) => {
            out.push(KIND_HEARTBEAT);
            out.extend_from_slice(&load.active_flows.to_be_bytes());
            out.extend_from_slice(&load.bytes_per_sec.to_be_bytes());
            out.extend_from_slice(&load.load_avg_milli.to_be_bytes());
            out.extend_from_slice(&load.cache_bytes.to_be_bytes());
        }
        Message::Handoff(handoff) => {
            out.push(KIND_HANDOFF);
            handoff.encode(out);
        }
        Message::Restored { flow_id } => {
            out.push(KIND_RESTORED);
            out.extend_from_slice(&flow_id.to_be_bytes());
        }
        Message::RestoreFailed { flow_id, reason } => {
            out.push(KIND_RESTORE_FAILED);
            out.extend_from_slice(&flow_id.to_be_bytes());
            put_reason(out, reason);
        }
        Message::FlowClosed {
            flow_id,
            bytes_sent,
        } => {
            out.push(KIND_FLOW_CLOSED);
            out.extend_from_slice(&flow_id.to_be_bytes());
            out.extend_from_slice(&bytes_sent.to_be_bytes());
        }
        Message::Release { flow_id } => {
            out.push(KIND_RELEASE);
            out.extend_from_slice(&flow_id.to_be_bytes());
        }
        Message::Released(handoff) => {
            out.push(KIND_RELEASED);
            handoff.encode(out);
        }
        Message::ReleaseFailed { flow_id, reason } => {
            out.push(KIND_RELEASE_FAILED);
            out.extend_from_slice(&flow_id.to_be_bytes());
            put_reason(out, reason);
        }
        Message::Serving { flow_id, response } => {
            out.push(KIND_SERVING);
            out.extend_from_slice(&flow_id.to_be_bytes());
            put_response(out, response);
        }
        Message::Prepare { flow_id, objects } => {
            out.push(KIND_PREPARE);
            out.extend_from_slice(&flow_id.to_be_bytes());
            out.push(u8::try_from(objects.len()).unwrap_or(u8::MAX));
            for o in objects {
                put_object(out, o);
            }
        }
        Message::Prepared { flow_id } => {
            out.push(KIND_PREPARED);
            out.extend_from_slice(&flow_id.to_be_bytes());
        }
        Message::PrepareFailed { flow_id, reason } => {
            out.push(KIND_PREPARE_FAILED);
            out.extend_from_slice(&flow_id.to_be_bytes());
            put_reason(out, reason);
        }
    }
    let len = u32::try_from(out.len() - start - LEN_PREFIX).unwrap_or(u32::MAX);
    out[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
}

/// Decodes one frame from the start of `buf`.
///
/// `Ok(None)` means incomplete: read more and call again. An oversize length prefix is an error
/// as soon as the prefix is in, without waiting for the body. On success, returns the message
/// and the number of bytes it used; bytes after it belong to the next frame.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Message, usize)>, FrameError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { len });
    }
    let Some(frame) = buf.get(LEN_PREFIX..LEN_PREFIX + len) else {
        return Ok(None);
    };
    let Some((&kind, body)) = frame.split_first() else {
        return Err(FrameError::Empty);
    };
    Ok(Some((decode_body(kind, body)?, LEN_PREFIX + len)))
}

fn get_reason(r: &mut Reader<'_>) -> Result<String, FrameError> {
    let len = usize::from(r.u16().ok_or(FrameError::Truncated)?);
    if len > MAX_REASON_BYTES {
        return Err(FrameError::ReasonTooLong { len });
    }
    let bytes = r.bytes(len).ok_or(FrameError::Truncated)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| FrameError::NotUtf8)
}

fn decode_body(kind: u8, body: &[u8]) -> Result<Message, FrameError> {
    const T: FrameError = FrameError::Truncated;
    if kind == KIND_HANDOFF {
        return Ok(Message::Handoff(Handoff::decode(body)?));
    }
    if kind == KIND_RELEASED {
        return Ok(Message::Released(Handoff::decode(body)?));
    }
    let mut r = Reader::new(body);
    let msg = match kind {
        KIND_REGISTER => {
            let len = usize::from(r.u8().ok_or(T)?);
            let name = r.bytes(len).ok_or(T)?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| FrameError::BadName)?;
            validate_name(&name)?;
            let addr = Ipv4Addr::from(r.array::<4>().ok_or(T)?);
            let lat = f64::from_bits(r.u64().ok_or(T)?);
            let lon = f64::from_bits(r.u64().ok_or(T)?);
            let coord = Coord::new(lat, lon).map_err(FrameError::Coord)?;
            let capacity = r.u32().ok_or(T)?;
            let mirror_port = r.u16().ok_or(T)?;
            Message::Register {
                name,
                addr,
                coord,
                capacity,
                mirror_port,
            }
        }
        KIND_REGISTERED => Message::Registered {
            participant_id: r.u32().ok_or(T)?,
        },
        KIND_REJECTED => Message::Rejected {
            reason: get_reason(&mut r)?,
        },
        KIND_HEARTBEAT => Message::Heartbeat(Load {
            active_flows: r.u32().ok_or(T)?,
            bytes_per_sec: r.u64().ok_or(T)?,
            load_avg_milli: r.u32().ok_or(T)?,
            cache_bytes: r.u64().ok_or(T)?,
        }),
        KIND_RESTORED => Message::Restored {
            flow_id: r.u64().ok_or(T)?,
        },
        KIND_RESTORE_FAILED => {
            let flow_id = r.u64().ok_or(T)?;
            Message::RestoreFailed {
                flow_id,
                reason: get_reason(&mut r)?,
            }
        }
        KIND_FLOW_CLOSED => Message::FlowClosed {
            flow_id: r.u64().ok_or(T)?,
            bytes_sent: r.u64().ok_or(T)?,
        },
        KIND_RELEASE => Message::Release { flow_id: r.u64().ok_or(T)? },
        KIND_RELEASE_FAILED => {
            let flow_id = r.u64().ok_or(T)?;
            Message::ReleaseFailed { flow_id, reason: get_reason(&mut r)? }
        }
        KIND_SERVING => {
            let flow_id = r.u64().ok_or(T)?;
            Message::Serving { flow_id, response: get_response(&mut r)? }
        }
        KIND_PREPARE => {
            let flow_id = r.u64().ok_or(T)?;
            let count = usize::from(r.u8().ok_or(T)?);
            if count > MAX_PREPARE_OBJECTS {
                return Err(FrameError::TooManyObjects { count });
            }
            let mut objects = Vec::with_capacity(count);
            for _ in 0..count {
                objects.push(get_object(&mut r)?);
            }
            Message::Prepare { flow_id, objects }
        }
        KIND_PREPARED => Message::Prepared { flow_id: r.u64().ok_or(T)? },
        KIND_PREPARE_FAILED => {
            let flow_id = r.u64().ok_or(T)?;
            Message::PrepareFailed { flow_id, reason: get_reason(&mut r)? }
        }
        kind => return Err(FrameError::UnknownKind { kind }),
    };
    if r.remaining() != 0 {
        return Err(FrameError::TrailingBytes {
            extra: r.remaining(),
        });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::{RepairWindow, TcpState};
    use std::net::SocketAddrV4;

    #[rustfmt::skip]
    static REGISTER: &[u8] = &[
        0, 0, 0, 33,                                    // length
        1,                                              // kind
        5, b'f', b'r', b'a', b'-', b'1',                // name "fra-1"
        198, 18, 2, 10,                                 // addr
        0x40, 0x49, 0, 0, 0, 0, 0, 0,                   // lat 50.0
        0x40, 0x21, 0, 0, 0, 0, 0, 0,                   // lon 8.5
        0, 0, 0x03, 0xe8,                               // capacity 1000
        0x1f, 0x90,                                     // mirror_port 8080
    ];
    static REGISTERED: &[u8] = &[0, 0, 0, 5, 2, 0, 0, 0, 7];
    static REJECTED: &[u8] = &[0, 0, 0, 7, 3, 0, 4, b'f', b'u', b'l', b'l'];
    #[rustfmt::skip]
    static HEARTBEAT: &[u8] = &[
        0, 0, 0, 25,                                    // length
        4,                                              // kind
        0, 0, 1, 2,                                     // active_flows 258
        0, 0, 0, 0, 0x05, 0xf5, 0xe1, 0,                // bytes_per_sec 100_000_000
        0, 0, 0x06, 0x1a,                               // load_avg_milli 1562
        0, 0, 0, 0x01, 0, 0, 0, 0,                      // cache_bytes 4 GiB
    ];
    #[rustfmt::skip]
    static HANDOFF: &[u8] = &[
        0, 0, 0, 77,                                    // length
        5,                                              // kind
        2,                                              // handoff version
        0, 0, 0, 0, 0, 0, 0, 9,                         // flow_id
        203, 0, 113, 10, 0x01, 0xbb,                    // local 203.0.113.10:443
        198, 18, 3, 4, 0x9c, 0x40,                      // remote 198.18.3.4:40000
        0, 0, 0, 1,                                     // snd_seq
        0, 0, 0, 2,                                     // rcv_seq
        0x05, 0xb4,                                     // mss 1460
        0, 0,                                           // wscales
        0x01,                                           // flags: sack
        0, 0, 0, 0,                                     // ts_val
        0, 0, 0, 2,                                     // snd_wl1
        0, 0, 0xff, 0xff,                               // snd_wnd
        0, 0, 0xff, 0xff,                               // max_window
        0, 0, 0xff, 0xff,                               // rcv_wnd
        0, 0, 0, 2,                                     // rcv_wup
        0, 0, 0, 0,                                     // no request bytes
        0,                                              // no object
        0, 0, 0, 0, 0, 0, 0, 0,                         // snd_offset
        0, 0, 0, 0,                                     // in_flight
        0,                                              // no pending responses
    ];
    static RESTORED: &[u8] = &[0, 0, 0, 9, 6, 1, 2, 3, 4, 5, 6, 7, 8];
    #[rustfmt::skip]
    static RESTORE_FAILED: &[u8] = &[
        0, 0, 0, 25,                                    // length
        7,                                              // kind
        0, 0, 0, 0, 0, 0, 0, 9,                         // flow_id
        0, 14,                                          // reason length
        b'n', b'o', b' ', b's', b'u', b'c', b'h', b' ', b'o', b'b', b'j', b'e', b'c', b't',
    ];
    #[rustfmt::skip]
    static FLOW_CLOSED: &[u8] = &[
        0, 0, 0, 17,                                    // length
        8,                                              // kind
        0, 0, 0, 0, 0, 0, 0, 9,                         // flow_id
        0, 0, 0, 1, 0, 0, 0, 0,                         // bytes_sent 2^32
    ];

    fn handoff() -> Handoff {
        Handoff {
            flow_id: 9,
            tcp: TcpState {
                local: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 443),
                remote: SocketAddrV4::new(Ipv4Addr::new(198, 18, 3, 4), 40000),
                snd_seq: 1,
                rcv_seq: 2,
                mss: 1460,
                snd_wscale: 0,
                rcv_wscale: 0,
                sack: true,
                timestamps: false,
                ts_val: 0,
                window: RepairWindow {
                    snd_wl1: 2,
                    snd_wnd: 0xffff,
                    max_window: 0xffff,
                    rcv_wnd: 0xffff,
                    rcv_wup: 2,
                },
            },
            request: Vec::new(),
            object: None,
            snd_offset: 0,
            in_flight: 0,
            pending: Vec::new(),
        }
    }

    #[rustfmt::skip]
    static RELEASE: &[u8] = &[0, 0, 0, 9, 9, 0, 0, 0, 0, 0, 0, 0, 9];
    #[rustfmt::skip]
    static RELEASE_FAILED: &[u8] = &[
        0, 0, 0, 15,                                    // length
        11,                                             // kind
        0, 0, 0, 0, 0, 0, 0, 9,                         // flow_id
        0, 4, b'g', b'o', b'n', b'e',                   // reason "gone"
    ];
    #[rustfmt::skip]
    static SERVING: &[u8] = &[
        0, 0, 0, 37,                                    // length
        12,                                             // kind
        0, 0, 0, 0, 0, 0, 0, 9,                         // flow_id
        0, 0, 0, 0, 0, 0, 0x01, 0x00,                   // start 256
        0, 0, 0, 2,                                     // request_end
        1,                                              // keep-alive
        0, 12,                                          // head length
        b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'1', b' ', b'2', b'0', b'4',
        0,                                              // no body
    ];

    #[rustfmt::skip]
    static PREPARE: &[u8] = &[
        0, 0, 0, 53,                                    // length
        13,                                             // kind
        0, 0, 0, 0, 0, 0, 0, 9,                         // flow_id
        1,                                              // one object
        0, 1, b'o',                                     // path "o"
        0, 0, 0, 0, 0, 0, 0, 5,                         // size 5
        3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, // sha256
        3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    ];
    static PREPARED: &[u8] = &[0, 0, 0, 9, 14, 0, 0, 0, 0, 0, 0, 0, 9];
    #[rustfmt::skip]
    static PREPARE_FAILED: &[u8] = &[0, 0, 0, 13, 15, 0, 0, 0, 0, 0, 0, 0, 9, 0, 2, b'n', b'o'];

    fn fixtures() -> Vec<(Message, &'static [u8])> {
        vec![
            (
                Message::Register {
                    name: "fra-1".into(),
                    addr: Ipv4Addr::new(198, 18, 2, 10),
                    coord: Coord::new(50.0, 8.5).expect("in range"),
                    capacity: 1000,
                    mirror_port: 8080,
                },
                REGISTER,
            ),
            (Message::Registered { participant_id: 7 }, REGISTERED),
            (
                Message::Rejected {
                    reason: "full".into(),
                },
                REJECTED,
            ),
            (
                Message::Heartbeat(Load { active_flows: 258, bytes_per_sec: 100_000_000, load_avg_milli: 1562, cache_bytes: 1 << 32 }),
                HEARTBEAT,
            ),
            (Message::Handoff(handoff()), HANDOFF),
            (
                Message::Restored {
                    flow_id: 0x0102_0304_0506_0708,
                },
                RESTORED,
            ),
            (
                Message::RestoreFailed {
                    flow_id: 9,
                    reason: "no such object".into(),
                },
                RESTORE_FAILED,
            ),
            (
                Message::FlowClosed {
                    flow_id: 9,
                    bytes_sent: 1 << 32,
                },
                FLOW_CLOSED,
            ),
            (Message::Release { flow_id: 9 }, RELEASE),
            (Message::ReleaseFailed { flow_id: 9, reason: "gone".into() }, RELEASE_FAILED),
            (
                Message::Serving {
                    flow_id: 9,
                    response: Response {
                        start: 256,
                        request_end: 2,
                        keep_alive: true,
                        head: b"HTTP/1.1 204".to_vec(),
                        body: None,
                    },
                },
                SERVING,
            ),
            (
                Message::Prepare {
                    flow_id: 9,
                    objects: vec![ObjectPlan { path: "o".into(), size: 5, sha256: [3; 32] }],
                },
                PREPARE,
            ),
            (Message::Prepared { flow_id: 9 }, PREPARED),
            (Message::PrepareFailed { flow_id: 9, reason: "no".into() }, PREPARE_FAILED),
        ]
    }

    fn encode(msg: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(msg, &mut out);
        out
    }

    fn decode_err(buf: &[u8]) -> FrameError {
        match decode_frame(buf) {
            Err(e) => e,
            Ok(other) => panic!("expected an error, got {other:?}"),
        }
    }

    /// A frame with the given kind and body, length filled in.
    fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        out.push(kind);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn fixtures_both_ways() {
        for (msg, bytes) in fixtures() {
            assert_eq!(encode(&msg), bytes, "{msg:?}");
            assert_eq!(decode_frame(bytes), Ok(Some((msg, bytes.len()))));
        }
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for (_, bytes) in fixtures() {
            for n in 0..bytes.len() {
                assert_eq!(decode_frame(&bytes[..n]), Ok(None), "{bytes:?} prefix {n}");
            }
        }
    }

    #[test]
    fn stream_of_frames() {
        let mut stream = Vec::new();
        for (msg, _) in fixtures() {
            encode_frame(&msg, &mut stream);
        }
        let mut at = 0;
        for (msg, _) in fixtures() {
            match decode_frame(&stream[at..]) {
                Ok(Some((got, used))) => {
                    assert_eq!(got, msg);
                    at += used;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(at, stream.len());
    }

    #[test]
    fn oversize_is_refused_from_the_prefix() {
        let len = MAX_FRAME_BYTES + 1;
        let prefix = (len as u32).to_be_bytes();
        assert_eq!(decode_err(&prefix), FrameError::TooLarge { len });
        assert_eq!(
            decode_err(&[0xff; 4]),
            FrameError::TooLarge {
                len: u32::MAX as usize
            }
        );
        // Exactly at the limit: wait for the body.
        assert_eq!(
            decode_frame(&(MAX_FRAME_BYTES as u32).to_be_bytes()),
            Ok(None)
        );
    }

    #[test]
    fn framing_errors() {
        assert_eq!(decode_err(&[0, 0, 0, 0]), FrameError::Empty);
        assert_eq!(
            decode_err(&frame(0, &[])),
            FrameError::UnknownKind { kind: 0 }
        );
        assert_eq!(
            decode_err(&frame(99, &[1, 2])),
            FrameError::UnknownKind { kind: 99 }
        );
        assert_eq!(
            decode_err(&frame(16, &[1, 2])),
            FrameError::UnknownKind { kind: 16 }
        );
        assert_eq!(decode_err(&frame(6, &[0; 7])), FrameError::Truncated);
        assert_eq!(
            decode_err(&frame(6, &[0; 9])),
            FrameError::TrailingBytes { extra: 1 }
        );
        assert_eq!(decode_err(&frame(2, &[0, 0, 7])), FrameError::Truncated);
        assert_eq!(
            decode_err(&frame(2, &[0, 0, 0, 7, 0])),
            FrameError::TrailingBytes { extra: 1 }
        );
        assert_eq!(decode_err(&frame(8, &[0; 15])), FrameError::Truncated);
        assert_eq!(
            decode_err(&frame(6, &[0; 9])),
            FrameError::TrailingBytes { extra: 1 }
        );
        assert_eq!(decode_err(&frame(3, &[0, 5, b'a'])), FrameError::Truncated);
        // A body error inside a complete frame does not read past the frame.
        let mut two = frame(4, &[0, 0, 1]);
        two.extend_from_slice(HEARTBEAT);
        assert_eq!(decode_err(&two), FrameError::Truncated);
    }

    #[test]
    fn names() {
        assert_eq!(validate_name("fra-1"), Ok(()));
        assert_eq!(validate_name(&"a".repeat(MAX_NAME_BYTES)), Ok(()));
        for bad in [
            "",
            "Fra",
            "fra_1",
            "fra 1",
            "fr\u{e4}",
            &"a".repeat(MAX_NAME_BYTES + 1),
        ] {
            assert_eq!(validate_name(bad), Err(FrameError::BadName), "{bad:?}");
        }
        let mut bytes = REGISTER.to_vec();
        bytes[6] = b'F';
        assert_eq!(decode_err(&bytes), FrameError::BadName);
        bytes[6] = 0xff;
        assert_eq!(decode_err(&bytes), FrameError::BadName);
        let msg = Message::Register {
            name: "a".repeat(MAX_NAME_BYTES + 1),
            addr: Ipv4Addr::LOCALHOST,
            coord: Coord::new(0.0, 0.0).expect("in range"),
            capacity: 1,
            mirror_port: 0,
        };
        assert_eq!(decode_err(&encode(&msg)), FrameError::BadName);
    }

    #[test]
    fn register_carries_the_mirror_port() {
        // A registration without it (as older participants sent) is incomplete.
        assert_eq!(decode_err(&frame(KIND_REGISTER, &REGISTER[5..REGISTER.len() - 2])), FrameError::Truncated);
        let mut no_mirror = REGISTER.to_vec();
        no_mirror[35..37].copy_from_slice(&[0, 0]);
        let Ok(Some((Message::Register { mirror_port, capacity, .. }, 37))) = decode_frame(&no_mirror) else {
            panic!("registration without a mirror must decode");
        };
        assert_eq!((mirror_port, capacity), (0, 1000));
    }

    #[test]
    fn coordinates_are_checked() {
        let mut bytes = REGISTER.to_vec();
        bytes[15..23].copy_from_slice(&91.0f64.to_bits().to_be_bytes());
        assert_eq!(
            decode_err(&bytes),
            FrameError::Coord(GeoError::Latitude { lat: 91.0 })
        );
        bytes[15..23].copy_from_slice(&f64::NAN.to_bits().to_be_bytes());
        assert_eq!(decode_err(&bytes), FrameError::Coord(GeoError::NotFinite));
    }

    #[test]
    fn reasons() {
        let mut body = vec![0x04, 0x01];
        body.extend_from_slice(&[b'x'; MAX_REASON_BYTES + 1]);
        assert_eq!(
            decode_err(&frame(3, &body)),
            FrameError::ReasonTooLong {
                len: MAX_REASON_BYTES + 1
            }
        );
        assert_eq!(
            decode_err(&frame(3, &[0, 2, 0xc3, 0x28])),
            FrameError::NotUtf8
        );
        // Long reasons are cut on a character boundary when sent.
        let long = "\u{e9}".repeat(MAX_REASON_BYTES);
        let msg = Message::RestoreFailed {
            flow_id: 1,
            reason: long.clone(),
        };
        let Ok(Some((Message::RestoreFailed { reason, .. }, _))) = decode_frame(&encode(&msg))
        else {
            panic!("clipped reason must decode");
        };
        assert_eq!(reason.len(), MAX_REASON_BYTES);
        assert_eq!(reason, long[..MAX_REASON_BYTES]);
        let msg = Message::Rejected {
            reason: "x".repeat(MAX_REASON_BYTES + 1),
        };
        let Ok(Some((Message::Rejected { reason }, _))) = decode_frame(&encode(&msg)) else {
            panic!("clipped reason must decode");
        };
        assert_eq!(reason, "x".repeat(MAX_REASON_BYTES));
    }

    #[test]
    fn handoff_errors_pass_through() {
        let mut bytes = HANDOFF.to_vec();
        bytes[5] = 1;
        assert_eq!(
            decode_err(&bytes),
            FrameError::Handoff(HandoffError::Version { found: 1 })
        );
        let mut released = bytes.clone();
        released[4] = KIND_RELEASED;
        assert_eq!(
            decode_err(&released),
            FrameError::Handoff(HandoffError::Version { found: 1 })
        );
        let mut bytes = HANDOFF.to_vec();
        bytes.push(0);
        bytes[3] += 1;
        assert_eq!(
            decode_err(&bytes),
            FrameError::Handoff(HandoffError::TrailingBytes { extra: 1 })
        );
    }

    /// A random message the decoder must accept: valid names, reasons within the limit,
    /// coordinates in range, handoffs and responses that pass their checks.
    fn random_message(rng: &mut rand::rngs::StdRng) -> Message {
        use crate::fuzz::{edgy_u64, string_from};
        use crate::handoff::tests::{random_handoff, random_object, random_response};
        use rand::Rng;
        let reason = |rng: &mut rand::rngs::StdRng| {
            if rng.gen_ratio(1, 20) {
                "\u{e9}".repeat(MAX_REASON_BYTES / 2)
            } else {
                string_from(rng, "ab \u{e9}\u{1f600}\0\n", 0..=40)
            }
        };
        let flow_id = edgy_u64(rng);
        match rng.gen_range(0..15) {
            0 => Message::Register {
                name: string_from(rng, "abz09-", 1..=MAX_NAME_BYTES),
                addr: Ipv4Addr::from(rng.gen::<u32>()),
                coord: Coord::new(rng.gen_range(-90.0..=90.0), rng.gen_range(-180.0..=180.0)).expect("in range"),
                capacity: rng.gen(),
                mirror_port: rng.gen(),
            },
            1 => Message::Registered { participant_id: rng.gen() },
            2 => Message::Rejected { reason: reason(rng) },
            3 => Message::Heartbeat(Load {
                active_flows: rng.gen(),
                bytes_per_sec: edgy_u64(rng),
                load_avg_milli: rng.gen(),
                cache_bytes: edgy_u64(rng),
            }),
            4 => Message::Handoff(random_handoff(rng)),
            5 => Message::Restored { flow_id },
            6 => Message::RestoreFailed { flow_id, reason: reason(rng) },
            7 => Message::FlowClosed { flow_id, bytes_sent: edgy_u64(rng) },
            8 => Message::Release { flow_id },
            9 => Message::Released(random_handoff(rng)),
            10 => Message::ReleaseFailed { flow_id, reason: reason(rng) },
            11 => {
                let start = if rng.gen() { edgy_u64(rng) / 2 } else { rng.gen_range(0..1 << 30) };
                Message::Serving { flow_id, response: random_response(rng, start) }
            }
            12 => Message::Prepare {
                flow_id,
                objects: (0..rng.gen_range(0..=MAX_PREPARE_OBJECTS)).map(|_| random_object(rng)).collect(),
            },
            13 => Message::Prepared { flow_id },
            _ => Message::PrepareFailed { flow_id, reason: reason(rng) },
        }
    }

    #[test]
    fn fuzz_random_messages_round_trip() {
        crate::fuzz::fuzz_values("control_round_trip", random_message, |msg| {
            let mut bytes = encode(msg);
            let len = bytes.len();
            assert_eq!(decode_frame(&bytes), Ok(Some((msg.clone(), len))));
            assert_eq!(decode_frame(&bytes[..len - 1]), Ok(None), "one byte short");
            bytes.extend_from_slice(REGISTERED);
            assert_eq!(decode_frame(&bytes), Ok(Some((msg.clone(), len))), "the next frame is left alone");
        });
    }

    #[test]
    fn fuzz_decode_frame() {
        let mut corpus: Vec<&[u8]> = fixtures().into_iter().map(|(_, bytes)| bytes).collect();
        let mut stream = HEARTBEAT.to_vec();
        stream.extend_from_slice(SERVING);
        corpus.push(&stream);
        crate::fuzz::fuzz_bytes("decode_frame", &corpus, |input| {
            let prefix = input.first_chunk::<LEN_PREFIX>().map(|p| u32::from_be_bytes(*p) as usize);
            match decode_frame(input) {
                Ok(Some((msg, used))) => {
                    assert!(used <= input.len(), "used {used} of {} bytes", input.len());
                    assert_eq!(prefix.map(|len| len + LEN_PREFIX), Some(used));
                    assert!(used - LEN_PREFIX <= MAX_FRAME_BYTES);
                    assert_eq!(encode(&msg), input[..used], "the encoding is canonical");
                    assert_eq!(decode_frame(&input[..used]), Ok(Some((msg, used))));
                }
                Ok(None) => assert!(prefix.is_none_or(|len| len <= MAX_FRAME_BYTES && input.len() < LEN_PREFIX + len)),
                Err(FrameError::TooLarge { len }) => assert_eq!((Some(len), len > MAX_FRAME_BYTES), (prefix, true)),
                Err(e) => {
                    assert!(prefix.is_some_and(|len| len <= MAX_FRAME_BYTES && input.len() >= LEN_PREFIX + len));
                    assert!(!e.to_string().is_empty());
                }
            }
        });
    }
}
