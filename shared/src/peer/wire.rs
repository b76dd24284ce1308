//! The peer cache's discovery datagram: a query ("who has package X?"), an answer ("I have it,
//! complete or this much, at this HTTP port"), and an announcement ("nobody had it; I am
//! fetching it from the origin, get it from me").
//!
//! ```text
//!  0      4   5    6     7      8         16        24        32        40        48    50    51
//!  +------+---+----+-----+------+---------+---------+---------+---------+---------+-----+-----+------------+--------+
//!  | BTPC | v |kind|state|flags |  nonce  | sent_ms |  claim  |  have   |  size   |port |idkind| id (32|16) | [mac]  |
//!  +------+---+----+-----+------+---------+---------+---------+---------+---------+-----+-----+------------+--------+
//! ```
//!
//! All integers are big-endian. With a group secret every datagram ends in a 16-byte truncated
//! HMAC-SHA256 of everything before it (flag bit 0), and a datagram whose `sent_ms` is further
//! than [`MAX_CLOCK_SKEW_MS`] from the receiver's clock is refused, which bounds how long a
//! recorded datagram can be replayed. Parsing never panics on any input.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::PackageId;
use crate::wire::Reader;

/// First bytes of every datagram.
pub const MAGIC: [u8; 4] = *b"BTPC";
/// Format version.
pub const VERSION: u8 = 1;
/// Bytes of the truncated HMAC-SHA256 (128 bits, as RFC 2104 permits for truncation).
pub const MAC_BYTES: usize = 16;
/// How far an authenticated datagram's clock may be from ours. LAN hosts keep time with NTP to
/// well under a second; this is also the window in which a recorded datagram can be replayed.
pub const MAX_CLOCK_SKEW_MS: u64 = 30_000;
/// Bytes before the id.
const FIXED_BYTES: usize = 4 + 1 + 1 + 1 + 1 + 8 * 5 + 2 + 1;
/// Flag: a MAC follows.
const FLAG_MAC: u8 = 0x01;

/// What a datagram is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Query = 1,
    Answer = 2,
    Announce = 3,
}

/// What an answer says the sender holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaveState {
    /// Nothing (queries and announcements).
    None = 0,
    Complete = 1,
    /// Still downloading: `have` bytes so far.
    Downloading = 2,
}

/// One discovery datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    /// Chosen by the asker; an answer carries its query's nonce.
    pub nonce: u64,
    /// The sender's wall clock, milliseconds since the Unix epoch.
    pub sent_ms: u64,
    pub id: PackageId,
    /// The sender's HTTP port for packages.
    pub port: u16,
    /// The sender's random claim in the origin election (queries and announcements).
    pub claim: u64,
    pub state: HaveState,
    /// Bytes held (answers).
    pub have: u64,
    /// The package's size (answers and announcements; 0 when not known).
    pub size: u64,
}

/// Why a datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a peer discovery datagram")]
    Magic,
    #[error("unsupported discovery version {0}")]
    Version(u8),
    #[error("truncated datagram")]
    Truncated,
    #[error("unknown {field} {value}")]
    Unknown { field: &'static str, value: u8 },
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("no authentication, but this group has a secret")]
    Unauthenticated,
    #[error("authenticated with a group secret this member does not have")]
    UnexpectedMac,
    #[error("the authentication does not match")]
    BadMac,
    #[error("sent {skew_ms} ms away from this member's clock (at most {MAX_CLOCK_SKEW_MS})")]
    Stale { skew_ms: u64 },
    #[error("an answer must say what it holds, and a query or announcement must not")]
    Inconsistent,
    #[error("claims to hold {have} bytes of a {size}-byte package")]
    HaveBeyondSize { have: u64, size: u64 },
}

fn mac(secret: &[u8], bytes: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("hmac accepts any key length"));
    m.update(bytes);
    m
}

impl Message {
    /// The datagram, authenticated when `secret` is given.
    pub fn emit(&self, secret: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_BYTES + 32 + MAC_BYTES);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.kind as u8);
        out.push(self.state as u8);
        out.push(if secret.is_some() { FLAG_MAC } else { 0 });
        for v in [self.nonce, self.sent_ms, self.claim, self.have, self.size] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&self.port.to_be_bytes());
        match &self.id {
            PackageId::Sha256(d) => {
                out.push(1);
                out.extend_from_slice(d);
            }
            PackageId::Md5(d) => {
                out.push(2);
                out.extend_from_slice(d);
            }
        }
        if let Some(s) = secret {
            let tag = mac(s, &out).finalize().into_bytes();
            out.extend_from_slice(&tag[..MAC_BYTES]);
        }
        out
    }

    /// Parses and checks a datagram received at `now_ms` (wall clock, ms since the epoch).
    /// With `secret`, only datagrams authenticated by it and sent within [`MAX_CLOCK_SKEW_MS`]
    /// pass; without, authenticated ones are refused (they belong to another group).
    pub fn parse(bytes: &[u8], secret: Option<&[u8]>, now_ms: u64) -> Result<Message, WireError> {
        let mut r = Reader::new(bytes);
        if r.array::<4>().ok_or(WireError::Truncated)? != MAGIC {
            return Err(WireError::Magic);
        }
        let version = r.u8().ok_or(WireError::Truncated)?;
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let kind = match r.u8().ok_or(WireError::Truncated)? {
            1 => Kind::Query,
            2 => Kind::Answer,
            3 => Kind::Announce,
            value => return Err(WireError::Unknown { field: "kind", value }),
        };
        let state = match r.u8().ok_or(WireError::Truncated)? {
            0 => HaveState::None,
            1 => HaveState::Complete,
            2 => HaveState::Downloading,
            value => return Err(WireError::Unknown { field: "state", value }),
        };
        let flags = r.u8().ok_or(WireError::Truncated)?;
        if flags & !FLAG_MAC != 0 {
            return Err(WireError::Unknown { field: "flags", value: flags });
        }
        let mut ints = [0u64; 5];
        for v in &mut ints {
            *v = r.u64().ok_or(WireError::Truncated)?;
        }
        let [nonce, sent_ms, claim, have, size] = ints;
        let port = r.u16().ok_or(WireError::Truncated)?;
        let id = match r.u8().ok_or(WireError::Truncated)? {
            1 => PackageId::Sha256(r.array::<32>().ok_or(WireError::Truncated)?),
            2 => PackageId::Md5(r.array::<16>().ok_or(WireError::Truncated)?),
            value => return Err(WireError::Unknown { field: "id kind", value }),
        };
        let signed_len = bytes.len() - r.remaining();
        let has_mac = flags & FLAG_MAC != 0;
        match (secret, has_mac) {
            (Some(s), true) => {
                let tag = r.bytes(MAC_BYTES).ok_or(WireError::Truncated)?;
                if r.remaining() != 0 {
                    return Err(WireError::Trailing(r.remaining()));
                }
                mac(s, &bytes[..signed_len]).verify_truncated_left(tag).map_err(|_| WireError::BadMac)?;
                let skew_ms = now_ms.abs_diff(sent_ms);
                if skew_ms > MAX_CLOCK_SKEW_MS {
                    return Err(WireError::Stale { skew_ms });
                }
            }
            (Some(_), false) => return Err(WireError::Unauthenticated),
            (None, true) => return Err(WireError::UnexpectedMac),
            (None, false) => {
                if r.remaining() != 0 {
                    return Err(WireError::Trailing(r.remaining()));
                }
            }
        }
        if (kind == Kind::Answer) == (state == HaveState::None) {
            return Err(WireError::Inconsistent);
        }
        if kind == Kind::Answer && have > size {
            return Err(WireError::HaveBeyondSize { have, size });
        }
        Ok(Message { kind, nonce, sent_ms, id, port, claim, state, have, size })
    }
}
