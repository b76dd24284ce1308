//! The peer cache's logic: package identity, the package list with its location-replacement
//! rule, how offers are ranked, who fetches from the origin when nobody has a package, and which
//! peers are avoided. The discovery wire format is in [`wire`], the rate limits in [`limit`].
//!
//! A package is named by its SHA-256 (MD5 names are accepted for compatibility, but integrity
//! is always checked with the origin's SHA-256). The list says where a package may be found;
//! it is only a hint and is never trusted for integrity: a requester verifies every byte.
//!
//! Nothing here does I/O or reads a clock or a random source: times and random draws are passed
//! in, so every rule is testable with fixed inputs.

pub mod limit;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use crate::digest::Sha256;

/// Alternates kept per package besides its location, best rate first. A LAN rarely has more
/// than a handful of useful sources for one package; more would only be polled in vain.
pub const MAX_ALTERNATES: usize = 4;
/// Packages one list holds. The main's list is fed by peers' reports, so it must be bounded;
/// when full, the entry learned longest ago goes.
pub const MAX_PACKAGES: usize = 65_536;
/// Peers remembered as bad at once (the oldest mark goes first when full).
pub const MAX_BAD_PEERS: usize = 1024;
/// How long a peer that served wrong bytes is avoided. Long enough that one download never
/// returns to it; short enough that a peer whose disk was repaired is used again the same day.
pub const BAD_PEER_HOLD: Duration = Duration::from_secs(30 * 60);
/// Weight of a new throughput sample in a peer's rate (exponential moving average).
pub const RATE_SMOOTHING: f64 = 0.5;

/// A package's name: its SHA-256, or an MD5 for compatibility with older package indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PackageId {
    Sha256(Sha256),
    Md5([u8; 16]),
}

/// Why a package id did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("a package id is 64 hex digits (sha-256) or 32 (md5), optionally after `sha256:` or `md5:`; got {len} characters")]
    Length { len: usize },
    #[error("a package id is hex digits only")]
    NotHex,
    #[error("a `{prefix}:` package id needs {want} hex digits")]
    PrefixLength { prefix: &'static str, want: usize },
}

impl PackageId {
    /// Parses lowercase or uppercase hex: 64 digits are a SHA-256, 32 an MD5. A `sha256:` or
    /// `md5:` prefix is accepted and must match the length.
    pub fn parse(s: &str) -> Result<PackageId, IdError> {
        let (prefix, hex) = match s.split_once(':') {
            Some((p, h)) if p.eq_ignore_ascii_case("sha256") => (Some(("sha256", 64)), h),
            Some((p, h)) if p.eq_ignore_ascii_case("md5") => (Some(("md5", 32)), h),
            _ => (None, s),
        };
        if let Some((prefix, want)) = prefix {
            if hex.len() != want {
                return Err(IdError::PrefixLength { prefix, want });
            }
        }
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(IdError::NotHex);
        }
        match hex.len() {
            64 => {
                let mut d = [0u8; 32];
                hex::decode_to_slice(hex, &mut d).map_err(|_| IdError::NotHex)?;
                Ok(PackageId::Sha256(d))
            }
            32 => {
                let mut d = [0u8; 16];
                hex::decode_to_slice(hex, &mut d).map_err(|_| IdError::NotHex)?;
                Ok(PackageId::Md5(d))
            }
            len => Err(IdError::Length { len }),
        }
    }
}

/// Lowercase hex, without a prefix (the length tells the kind).
impl fmt::Display for PackageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackageId::Sha256(d) => f.write_str(&hex::encode(d)),
            PackageId::Md5(d) => f.write_str(&hex::encode(d)),
        }
    }
}

/// What the origin published about a package: the digest every byte is checked against, its
/// size, and its MD5 when known (so MD5 names can be answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Package {
    pub sha256: Sha256,
    pub size: u64,
    pub md5: Option<[u8; 16]>,
}

impl Package {
    /// The package's canonical id (its SHA-256).
    pub fn id(&self) -> PackageId {
        PackageId::Sha256(self.sha256)
    }
}

/// Where a package was last seen, and how many times that has changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Location {
    pub addr: SocketAddrV4,
    /// How many times this entry's location changed; the first location makes it 1.
    pub generation: u32,
    /// Observed throughput from it in bytes/s (0: not measured).
    pub rate: f64,
}

/// Another place a package was seen, scored by observed throughput.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alternate {
    pub addr: SocketAddrV4,
    /// Bytes/s (0: not measured).
    pub rate: f64,
}

/// One package in a list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    /// What the origin published, when this list has been told.
    pub package: Option<Package>,
    pub location: Option<Location>,
    /// Best rate first; never contains the location.
    pub alternates: Vec<Alternate>,
}

/// What [`PackageList::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// The entry had no location; this is it now (generation 1).
    First,
    /// The address was the location already.
    Same,
    /// The new address replaced the location (the old one became an alternate).
    Replaced,
    /// The location stayed; the new address is an alternate.
    Kept,
}

/// The probability that a newly learned location replaces the stored one of `generation`:
/// `1 - 1/(generation + 1)`. A location that has changed often is likely stale already, so a
/// newer report wins more easily; a location that has held is kept more often.
pub fn replace_probability(generation: u32) -> f64 {
    1.0 - 1.0 / (f64::from(generation) + 1.0)
}

impl Entry {
    /// The observed rate of `addr` for this package (0 when unknown).
    pub fn rate(&self, addr: SocketAddrV4) -> f64 {
        match self.location {
            Some(l) if l.addr == addr => l.rate,
            _ => self.alternates.iter().find(|a| a.addr == addr).map_or(0.0, |a| a.rate),
        }
    }

    fn learn(&mut self, addr: SocketAddrV4, draw: f64) -> Learned {
        let Some(loc) = self.location else {
            self.alternates.retain(|a| a.addr != addr);
            self.location = Some(Location { addr, generation: 1, rate: 0.0 });
            return Learned::First;
        };
        if loc.addr == addr {
            return Learned::Same;
        }
        if draw < replace_probability(loc.generation) {
            let rate = self.rate(addr);
            self.alternates.retain(|a| a.addr != addr);
            self.location = Some(Location { addr, generation: loc.generation.saturating_add(1), rate });
            self.keep_alternate(Alternate { addr: loc.addr, rate: loc.rate });
            Learned::Replaced
        } else {
            if !self.alternates.iter().any(|a| a.addr == addr) {
                self.keep_alternate(Alternate { addr, rate: 0.0 });
            }
            Learned::Kept
        }
    }

    /// Adds an alternate; when there are too many, the lowest rate goes (a new, unmeasured one
    /// displaces only another unmeasured one or nothing).
    fn keep_alternate(&mut self, alt: Alternate) {
        self.alternates.retain(|a| a.addr != alt.addr);
        self.alternates.push(alt);
        self.sort_alternates();
        self.alternates.truncate(MAX_ALTERNATES);
    }

    fn sort_alternates(&mut self) {
        // Stable: among equal rates the earlier learned stays ahead.
        self.alternates.sort_by(|a, b| b.rate.total_cmp(&a.rate));
    }

    fn forget(&mut self, addr: SocketAddrV4) {
        self.alternates.retain(|a| a.addr != addr);
        if self.location.is_some_and(|l| l.addr == addr) {
            // The best alternate takes its place; the generation counts the change.
            let generation = self.location.map_or(0, |l| l.generation).saturating_add(1);
            self.location = if self.alternates.is_empty() {
                None
            } else {
                let a = self.alternates.remove(0);
                Some(Location { addr: a.addr, generation, rate: a.rate })
            };
        }
    }

    fn record(&mut self, addr: SocketAddrV4, rate: f64) {
        let blend = |old: f64| if old > 0.0 { old * (1.0 - RATE_SMOOTHING) + rate * RATE_SMOOTHING } else { rate };
        match &mut self.location {
            Some(l) if l.addr == addr => l.rate = blend(l.rate),
            _ => {
                if let Some(a) = self.alternates.iter_mut().find(|a| a.addr == addr) {
                    a.rate = blend(a.rate);
                } else {
                    self.keep_alternate(Alternate { addr, rate });
                    return;
                }
                self.sort_alternates();
            }
        }
    }
}

/// Packages and where they were seen: the main keeps one for the cluster, every peer its own.
#[derive(Debug, Clone, Default)]
pub struct PackageList {
    entries: HashMap<PackageId, Entry>,
    /// MD5 names of packages whose SHA-256 is known.
    md5: HashMap<[u8; 16], Sha256>,
    /// Insertion order, for eviction when full.
    order: VecDeque<PackageId>,
}

impl PackageList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Packages listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The canonical id: an MD5 whose SHA-256 is known becomes that SHA-256.
    pub fn resolve(&self, id: &PackageId) -> PackageId {
        match id {
            PackageId::Md5(m) => self.md5.get(m).map_or(*id, |s| PackageId::Sha256(*s)),
            PackageId::Sha256(_) => *id,
        }
    }

    /// The entry of `id` (by SHA-256 or a known MD5).
    pub fn get(&self, id: &PackageId) -> Option<&Entry> {
        self.entries.get(&self.resolve(id))
    }

    /// Every entry, by canonical id.
    pub fn iter(&self) -> impl Iterator<Item = (&PackageId, &Entry)> {
        self.entries.iter()
    }

    fn entry(&mut self, id: PackageId) -> &mut Entry {
        if !self.entries.contains_key(&id) {
            while self.entries.len() >= MAX_PACKAGES {
                let Some(old) = self.order.pop_front() else { break };
                if let Some(e) = self.entries.remove(&old) {
                    if let Some(m) = e.package.and_then(|p| p.md5) {
                        self.md5.remove(&m);
                    }
                }
            }
            self.order.push_back(id);
        }
        self.entries.entry(id).or_default()
    }

    /// Records what the origin published about a package. An entry learned under its MD5
    /// before is merged into the SHA-256 one.
    pub fn describe(&mut self, package: Package) {
        let id = package.id();
        let merged = package.md5.and_then(|m| {
            self.md5.insert(m, package.sha256);
            let old = PackageId::Md5(m);
            self.order.retain(|o| *o != old);
            self.entries.remove(&old)
        });
        let e = self.entry(id);
        e.package = Some(package);
        if let Some(old) = merged {
            for addr in old.location.map(|l| l.addr).into_iter().chain(old.alternates.iter().map(|a| a.addr)) {
                if e.location.is_none() {
                    e.location = Some(Location { addr, generation: 1, rate: old.rate(addr) });
                } else if e.location.map(|l| l.addr) != Some(addr) {
                    e.keep_alternate(Alternate { addr, rate: old.rate(addr) });
                }
            }
        }
    }

    /// A new location of `id` was heard. It replaces the stored one when `draw` (uniform in
    /// [0, 1)) falls below [`replace_probability`] of the stored generation; otherwise the old
    /// location stays and the new one is kept as an alternate.
    pub fn learn(&mut self, id: &PackageId, addr: SocketAddrV4, draw: f64) -> Learned {
        let id = self.resolve(id);
        self.entry(id).learn(addr, draw)
    }

    /// `addr` does not have `id` (it answered 404, or served wrong bytes).
    pub fn forget(&mut self, id: &PackageId, addr: SocketAddrV4) {
        let id = self.resolve(id);
        if let Some(e) = self.entries.get_mut(&id) {
            e.forget(addr);
        }
    }

    /// `bytes` of `id` came from `addr` in `elapsed`: its rate is updated (or it becomes an
    /// alternate). Transfers too short to measure are ignored.
    pub fn record_throughput(&mut self, id: &PackageId, addr: SocketAddrV4, bytes: u64, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if bytes == 0 || secs <= 0.0 {
            return;
        }
        let id = self.resolve(id);
        self.entry(id).record(addr, bytes as f64 / secs);
    }

    /// Where to try first for `id`: its location, then its alternates, leaving out `excluded`.
    pub fn candidates(&self, id: &PackageId, excluded: impl Fn(SocketAddrV4) -> bool) -> Vec<SocketAddrV4> {
        let Some(e) = self.get(id) else { return Vec::new() };
        e.location.map(|l| l.addr).into_iter().chain(e.alternates.iter().map(|a| a.addr)).filter(|a| !excluded(*a)).collect()
    }
}

/// A peer's answer to a discovery query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// Where it serves the package.
    pub addr: SocketAddrV4,
    /// It holds the whole package (otherwise it is still downloading it).
    pub complete: bool,
    /// Bytes it holds.
    pub have: u64,
    /// The package size it claims.
    pub size: u64,
}

/// Orders offers for trying: complete holders before downloading ones; among those, the higher
/// observed rate first, then the more bytes held; ties by address so the order is stable.
/// Excluded peers (bad, or the requester itself) and duplicates are left out.
pub fn rank_offers(offers: &[Offer], rate: impl Fn(SocketAddrV4) -> f64, excluded: impl Fn(SocketAddrV4) -> bool) -> Vec<SocketAddrV4> {
    let mut v: Vec<(Offer, f64)> = Vec::new();
    for o in offers {
        if excluded(o.addr) {
            continue;
        }
        if let Some(i) = v.iter().position(|(p, _)| p.addr == o.addr) {
            // A later answer from the same peer knows more.
            if o.have >= v[i].0.have {
                v[i].0 = *o;
            }
            continue;
        }
        v.push((*o, rate(o.addr)));
    }
    v.sort_by(|(a, ra), (b, rb)| {
        b.complete
            .cmp(&a.complete)
            .then(rb.total_cmp(ra))
            .then(b.have.cmp(&a.have))
            .then(a.addr.cmp(&b.addr))
    });
    v.into_iter().map(|(o, _)| o.addr).collect()
}

/// Whether a requester with `mine` (its random claim and its address) fetches from the origin
/// when nobody has the package: the lowest claim among the requesters heard wins, the address
/// breaking ties, so exactly one of them goes to the origin and the others fetch from it.
pub fn wins_election(mine: (u64, SocketAddrV4), others: &[(u64, SocketAddrV4)]) -> bool {
    others.iter().filter(|o| o.1 != mine.1).all(|o| mine < *o)
}

/// Peers caught serving bytes that did not match the origin's digest, avoided for
/// [`BAD_PEER_HOLD`].
#[derive(Debug, Clone, Default)]
pub struct BadPeers {
    marked: VecDeque<(SocketAddrV4, Instant)>,
}

impl BadPeers {
    /// `addr` served wrong bytes at `now`.
    pub fn mark(&mut self, addr: SocketAddrV4, now: Instant) {
        self.marked.retain(|(a, _)| *a != addr);
        if self.marked.len() >= MAX_BAD_PEERS {
            self.marked.pop_front();
        }
        self.marked.push_back((addr, now));
    }

    /// Whether `addr` is to be avoided at `now`.
    pub fn is_bad(&self, addr: SocketAddrV4, now: Instant) -> bool {
        self.marked.iter().any(|(a, t)| *a == addr && now.saturating_duration_since(*t) < BAD_PEER_HOLD)
    }

    /// Peers avoided at `now`.
    pub fn count(&self, now: Instant) -> usize {
        self.marked.iter().filter(|(_, t)| now.saturating_duration_since(*t) < BAD_PEER_HOLD).count()
    }
}

#[cfg(test)]
mod tests;
