//! What the main's tasks share: registry, data plane, origin store, geolocation, handed-off flows
//! and counters.
//!
//! Nothing here blocks for long: map updates are single system calls and every lock guards a
//! plain collection.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use baton_ebpf::{FlowKey, MainPlane};
use baton_io::http::ServeConfig;
use baton_io::store::DirStore;
use baton_shared::geo::Coord;
use baton_shared::select::{self, Candidate, Policy, Ranking};
use baton_shared::moves::Conductor;
use serde::Serialize;

use crate::registry::Registry;

/// How long a flow's data-plane entry outlives the participant's report that the connection
/// closed: the client's last ACK of the participant's FIN, and its retransmissions, still need
/// forwarding. Without the entry the main's kernel would answer them with a reset.
pub const FLOW_LINGER: Duration = Duration::from_secs(10);
/// A handed-off flow whose client sent nothing for this long is dropped from the data plane even
/// without a close report (a participant that vanished, a client that left silently).
pub const FLOW_IDLE_LIMIT: Duration = Duration::from_secs(600);

/// A client's location from the GeoIP database.
#[derive(Debug)]
pub struct GeoDb {
    reader: Option<maxminddb::Reader<Vec<u8>>>,
}

impl GeoDb {
    pub fn open(path: Option<&Path>) -> anyhow::Result<Self> {
        use anyhow::Context;
        let reader = match path {
            Some(p) => Some(maxminddb::Reader::open_readfile(p).with_context(|| format!("opening GeoIP database {}", p.display()))?),
            None => None,
        };
        Ok(Self { reader })
    }

    /// Coordinates of `ip`, when the database knows them.
    pub fn locate(&self, ip: Ipv4Addr) -> Option<Coord> {
        self.lookup(ip).map(|g| g.coord)
    }

    /// What the database says of `ip`: coordinates, and city and country names in English
    /// when it has them.
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<GeoInfo> {
        let reader = self.reader.as_ref()?;
        let city: maxminddb::geoip2::City = reader.lookup(IpAddr::V4(ip)).ok().flatten()?;
        let loc = city.location.as_ref()?;
        let coord = Coord::new(loc.latitude?, loc.longitude?).ok()?;
        let english = |names: Option<&std::collections::BTreeMap<&str, &str>>| names.and_then(|n| n.get("en")).map(|s| (*s).to_owned());
        Some(GeoInfo {
            coord,
            city: english(city.city.as_ref().and_then(|c| c.names.as_ref())),
            country: city.country.as_ref().and_then(|c| c.iso_code).map(str::to_owned),
        })
    }
}

/// A GeoIP answer.
#[derive(Debug, Clone, PartialEq)]
pub struct GeoInfo {
    pub coord: Coord,
    pub city: Option<String>,
    pub country: Option<String>,
}

/// A connection now served by a participant.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowRecord {
    pub key: FlowKey,
    pub client: SocketAddrV4,
    pub started: Instant,
}

/// Handed-off flows, one per 4-tuple (a client that reuses a port replaces its old flow), with
/// the time their close was reported, and an index by flow id for the participants' reports.
#[derive(Debug, Default)]
pub struct FlowTable {
    inner: Mutex<FlowMaps>,
}

#[derive(Debug, Default)]
struct FlowMaps {
    by_key: HashMap<FlowKey, (u64, FlowRecord, Option<Instant>)>,
    by_id: HashMap<u64, FlowKey>,
}

impl FlowTable {
    fn lock(&self) -> MutexGuard<'_, FlowMaps> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a flow about to be handed off. It is recorded before the participant hears of
    /// it, so a close report (which can follow the restore report at once) always finds it.
    pub fn insert(&self, id: u64, rec: FlowRecord) {
        let mut g = self.lock();
        if let Some((old, _, _)) = g.by_key.insert(rec.key, (id, rec.clone(), None)) {
            g.by_id.remove(&old);
        }
        g.by_id.insert(id, rec.key);
    }

    /// Forgets a flow whose handoff did not happen.
    pub fn forget(&self, id: u64) {
        let mut g = self.lock();
        if let Some(key) = g.by_id.remove(&id) {
            if g.by_key.get(&key).is_some_and(|(i, _, _)| *i == id) {
                g.by_key.remove(&key);
            }
        }
    }

    /// Marks a flow closed (its entry lingers, then goes); returns whether it was known.
    pub fn closed(&self, id: u64, now: Instant) -> bool {
        let mut g = self.lock();
        let Some(key) = g.by_id.get(&id).copied() else { return false };
        match g.by_key.get_mut(&key) {
            Some((i, _, closed)) if *i == id => {
                closed.get_or_insert(now);
                true
            }
            _ => false,
        }
    }

    /// The data-plane key of a flow.
    pub fn key_of(&self, id: u64) -> Option<FlowKey> {
        self.lock().by_id.get(&id).copied()
    }

    /// Removes and returns flows (with their ids) whose linger has passed.
    pub fn expired(&self, now: Instant) -> Vec<(u64, FlowRecord)> {
        self.remove_where(|_, closed| closed.is_some_and(|t| now.duration_since(t) >= FLOW_LINGER))
    }

    /// Removes and returns flows (with their ids) for which `stale` says so.
    pub fn remove_where(&self, mut stale: impl FnMut(&FlowRecord, Option<Instant>) -> bool) -> Vec<(u64, FlowRecord)> {
        let mut g = self.lock();
        let keys: Vec<FlowKey> = g.by_key.iter().filter(|(_, (_, r, c))| stale(r, *c)).map(|(k, _)| *k).collect();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some((id, rec, _)) = g.by_key.remove(&k) {
                g.by_id.remove(&id);
                out.push((id, rec));
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counters the admin API and /metrics report.
#[derive(Debug, Default)]
pub struct Metrics {
    pub handoffs: AtomicU64,
    pub handoff_failures: AtomicU64,
    /// Handoffs refused because the data plane's flow table was full (served by the main).
    pub flow_table_full: AtomicU64,
    /// Handoffs whose participant never reported the restore (the flow stayed with it).
    pub handoffs_unconfirmed: AtomicU64,
    pub local_serves: AtomicU64,
    /// Selections by outcome: the winner's name, or "none".
    pub selections: Tally,
    /// Health probes by outcome ("ok", "failed").
    pub probes: Tally,
    /// Participants becoming healthy or unhealthy.
    pub health_changes: AtomicU64,
    /// Control connections and messages refused, by reason.
    pub control_refused: Tally,
    /// Requests the VIP answered for mirror discovery, by kind ("head": an object's HEAD with
    /// its mirrors; "metalink": a Metalink document). Neither a handoff nor a local serve.
    pub mirror_answers: Tally,
    /// Admin requests carried out, and admin HTTP requests refused for want of a valid token.
    pub admin_requests: AtomicU64,
    pub admin_refused: AtomicU64,
    /// Body bytes of the object responses the origin listener sent (shared with its
    /// connections, see [`crate::origin::Origin::sent_bytes`]).
    pub origin_sent_bytes: std::sync::Arc<AtomicU64>,
}

impl Metrics {
    /// Counts a refused control connection or message.
    pub fn refuse(&self, reason: &'static str) {
        self.control_refused.add(reason);
    }
}

/// Counts by label (a participant, a reason), for /metrics and `batonctl stats`.
#[derive(Debug, Default)]
pub struct Tally(Mutex<std::collections::BTreeMap<String, u64>>);

impl Tally {
    pub fn add(&self, label: &str) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match g.get_mut(label) {
            Some(n) => *n += 1,
            None => {
                g.insert(label.to_owned(), 1);
            }
        }
    }

    pub fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Everything the main's tasks share.
#[derive(Debug)]
pub struct Shared {
    pub registry: Registry,
    pub dataplane: MainPlane,
    pub origin: DirStore,
    pub geo: GeoDb,
    pub serve: ServeConfig,
    pub restore_timeout: Duration,
    pub flows: FlowTable,
    pub metrics: Metrics,
    /// Moves, drains and crash recovery of handed-off flows.
    pub conductor: Mutex<Conductor>,
    /// Zero of the conductor's clock.
    pub epoch: Instant,
    /// Where the flow table is saved for a restart of the main, if anywhere.
    pub state_file: Option<PathBuf>,
    /// The flow table changed since it was last saved.
    pub dirty: AtomicBool,
    /// The VIP listener's address (probes connect to it).
    pub vip: SocketAddrV4,
    /// This host's own address (probes come from it).
    pub local_addr: Ipv4Addr,
    /// How participants are ranked.
    pub policy: Policy,
    /// Participants' health from the active probes.
    pub health: crate::probe::Health,
    /// Flows that are the main's own health probes (listed only on request).
    pub probe_flows: Mutex<std::collections::HashSet<u64>>,
    /// Piece hashes of the objects whose Metalink documents were asked for.
    pub pieces: crate::mirror::PieceCache,
    /// The cluster's peer-cache package list, served on the origin listener.
    pub packages: std::sync::Arc<crate::packages::Packages>,
}

impl Shared {
    /// Every participant as selection sees it for a request of `object`.
    pub fn candidates(&self, object: Option<&str>) -> Vec<Candidate> {
        let c = self.conductor.lock().unwrap_or_else(|p| p.into_inner());
        self.candidates_given(object, |name| c.is_draining(name))
    }

    /// [`Shared::candidates`] with the drain state from `draining`: for callers that hold the
    /// conductor already (its `Env::choose`), which must not lock it again.
    pub fn candidates_given(&self, object: Option<&str>, draining: impl Fn(&str) -> bool) -> Vec<Candidate> {
        self.registry
            .snapshot(object)
            .into_iter()
            .map(|p| Candidate {
                health: if !p.connected {
                    select::Health::Down
                } else if draining(&p.name) {
                    select::Health::Draining
                } else if !self.health.healthy(&p.name) {
                    select::Health::Unhealthy
                } else {
                    select::Health::Healthy
                },
                name: p.name,
                coord: p.coord,
                active_flows: p.active_flows,
                capacity: p.capacity,
                has_object: p.has_object,
            })
            .collect()
    }

    /// The whole ranking for a client at `client` asking for `object` (`batonctl explain`).
    pub fn rank(&self, client: Option<Coord>, object: Option<&str>) -> Ranking {
        select::rank(&self.policy, client, &self.candidates(object))
    }

    /// The participant a new client at `client` asking for `object` should get, if any can
    /// serve; counted by outcome.
    pub fn select(&self, client: Option<Coord>, object: Option<&str>) -> Option<String> {
        let winner = select::choose(&self.policy, client, &self.candidates(object));
        self.metrics.selections.add(winner.as_deref().unwrap_or("none"));
        winner
    }

    /// Notes that the flow table must be saved again.
    pub fn mark_dirty(&self) {
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `batonctl`'s view of the counters.
#[derive(Debug, Serialize)]
pub struct StatsView {
    pub handoffs: u64,
    pub handoff_failures: u64,
    pub handoffs_unconfirmed: u64,
    pub local_serves: u64,
    pub flows: usize,
    pub participants: usize,
    pub participants_healthy: usize,
    pub moves_done: u64,
    pub recoveries: u64,
    pub selections: std::collections::BTreeMap<String, u64>,
    pub probes: std::collections::BTreeMap<String, u64>,
    pub control_refused: std::collections::BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn rec(port: u16) -> FlowRecord {
        let client = SocketAddrV4::new(Ipv4Addr::new(198, 18, 4, 2), port);
        FlowRecord {
            key: FlowKey::new(client, SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80)),
            client,
            started: Instant::now(),
        }
    }

    #[test]
    fn close_reports_need_the_owner_and_expire_after_the_linger() {
        let t = FlowTable::default();
        let now = Instant::now();
        t.insert(1, rec(1000));
        assert!(!t.closed(7, now), "unknown flow");
        assert!(t.closed(1, now));
        assert_eq!(t.key_of(1), Some(rec(1000).key));
        assert!(t.expired(now).is_empty(), "a closed flow lingers first");
        let gone = t.expired(now + FLOW_LINGER);
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].0, gone[0].1.client.port()), (1, 1000));
        assert!(t.is_empty());
    }

    #[test]
    fn a_reused_port_replaces_the_old_flow() {
        let t = FlowTable::default();
        let now = Instant::now();
        t.insert(1, rec(1000));
        assert!(t.closed(1, now));
        t.insert(2, rec(1000));
        assert_eq!(t.len(), 1);
        assert!(!t.closed(1, now), "the old flow's report no longer applies");
        assert!(t.expired(now + FLOW_LINGER).is_empty(), "the new flow is open");
        t.forget(2);
        assert!(t.is_empty());
    }
}
