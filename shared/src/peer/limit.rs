//! The peer cache's defaults and rate limits: token buckets for the queries a member sends and
//! for the answers it gives each source, so a flood of (possibly forged) queries can make a
//! member neither flood the LAN nor answer without bound. Time is passed in.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Instant;

/// Port where a member serves packages over HTTP.
pub const DEFAULT_HTTP_PORT: u16 = 7480;
/// UDP port of discovery, the same on every member.
pub const DEFAULT_DISCOVERY_PORT: u16 = 7481;
/// Multicast group of discovery: in the organization-local scope (RFC 2365, 239.255.0.0/16),
/// which routers at a site's edge do not forward.
pub const DEFAULT_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 74, 80);
/// Multicast TTL: 1 keeps queries on the local segment (no router forwards them).
pub const DEFAULT_MULTICAST_TTL: u32 = 1;

/// Discovery datagrams (queries, polls, announcements) a member sends per second on average.
/// One lookup sends one multicast query and, when that gets no answer, one poll per known
/// peer; 50/s lets a member with a few dozen known peers look up a package a second.
pub const QUERY_RATE_PER_SEC: f64 = 50.0;
/// Datagrams a member may send in one burst: one full round of polls to a LAN's peers.
pub const QUERY_BURST: f64 = 100.0;
/// Answers a member gives one source address per second on average: a requester asks at most
/// a few times per lookup, so more is a flood (or a forged source) and is dropped.
pub const ANSWER_RATE_PER_SOURCE: f64 = 10.0;
/// Answers one source may get in a burst.
pub const ANSWER_BURST: f64 = 20.0;
/// Sources whose answer budgets are tracked at once; the least recently seen is forgotten
/// first, which at worst grants it a fresh burst.
pub const MAX_TRACKED_SOURCES: usize = 4096;

/// A token bucket: `rate` tokens a second up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self { rate, burst, tokens: burst, last: now }
    }

    /// Takes one token if there is one at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One [`TokenBucket`] per source address, at most [`MAX_TRACKED_SOURCES`] of them.
#[derive(Debug, Clone)]
pub struct PerSource {
    rate: f64,
    burst: f64,
    buckets: HashMap<Ipv4Addr, TokenBucket>,
}

impl PerSource {
    /// Budgets of `rate` per second, `burst` at once, for every source.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, buckets: HashMap::new() }
    }

    /// Takes one token of `source`'s budget if it has one at `now`.
    pub fn try_take(&mut self, source: Ipv4Addr, now: Instant) -> bool {
        if !self.buckets.contains_key(&source) && self.buckets.len() >= MAX_TRACKED_SOURCES {
            // Forget full buckets first (they grant nothing a new one would not), else the
            // least recently used.
            self.buckets.retain(|_, b| {
                let mut probe = b.clone();
                probe.tokens = (probe.tokens + now.saturating_duration_since(probe.last).as_secs_f64() * probe.rate).min(probe.burst);
                probe.tokens < probe.burst
            });
            if self.buckets.len() >= MAX_TRACKED_SOURCES {
                if let Some(oldest) = self.buckets.iter().min_by_key(|(_, b)| b.last).map(|(a, _)| *a) {
                    self.buckets.remove(&oldest);
                }
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.entry(source).or_insert_with(|| TokenBucket::new(rate, burst, now)).try_take(now)
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}
