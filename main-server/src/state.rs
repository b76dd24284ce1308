//! What the main's tasks share: registry, data plane, origin store, geolocation, handed-off flows
//! and counters.
//!
//! Nothing here blocks for long: map updates are single system calls and every lock guards a
//! plain collection.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use baton_ebpf::{FlowKey, MainDataplane};
use baton_io::http::ServeConfig;
use baton_io::store::DirStore;
use baton_shared::geo::{choose, Coord};
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
        let reader = self.reader.as_ref()?;
        let city: maxminddb::geoip2::City = reader.lookup(IpAddr::V4(ip)).ok().flatten()?;
        let loc = city.location?;
        Coord::new(loc.latitude?, loc.longitude?).ok()
    }
}

/// A connection now served by a participant.
#[derive(Debug, Clone)]
pub struct FlowRecord {
    pub key: FlowKey,
    pub client: SocketAddrV4,
    pub participant: String,
    pub object: String,
    pub started: Instant,
}

/// Handed-off flows by flow id, with the time their close was reported.
#[derive(Debug, Default)]
pub struct FlowTable {
    inner: Mutex<HashMap<u64, (FlowRecord, Option<Instant>)>>,
}

impl FlowTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, (FlowRecord, Option<Instant>)>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, id: u64, rec: FlowRecord) {
        self.lock().insert(id, (rec, None));
    }

    /// Marks a flow closed if `participant` owns it; returns whether it did.
    pub fn closed(&self, id: u64, participant: &str, now: Instant) -> bool {
        match self.lock().get_mut(&id) {
            Some((rec, closed)) if rec.participant == participant => {
                closed.get_or_insert(now);
                true
            }
            _ => false,
        }
    }

    /// Removes and returns flows whose linger has passed.
    pub fn expired(&self, now: Instant) -> Vec<FlowRecord> {
        let mut g = self.lock();
        let ids: Vec<u64> = g
            .iter()
            .filter(|(_, (_, closed))| closed.is_some_and(|t| now.duration_since(t) >= FLOW_LINGER))
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter().filter_map(|id| g.remove(&id).map(|(r, _)| r)).collect()
    }

    /// Removes flows for which `stale` says so.
    pub fn remove_where(&self, mut stale: impl FnMut(&FlowRecord) -> bool) -> Vec<FlowRecord> {
        let mut g = self.lock();
        let ids: Vec<u64> = g.iter().filter(|(_, (r, _))| stale(r)).map(|(id, _)| *id).collect();
        ids.into_iter().filter_map(|id| g.remove(&id).map(|(r, _)| r)).collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counters the admin API reports.
#[derive(Debug, Default)]
pub struct Metrics {
    pub handoffs: AtomicU64,
    pub handoff_failures: AtomicU64,
    /// Handoffs whose participant never reported the restore (the flow stayed with it).
    pub handoffs_unconfirmed: AtomicU64,
    pub local_serves: AtomicU64,
}

/// Everything the main's tasks share.
#[derive(Debug)]
pub struct Shared {
    pub registry: Registry,
    pub dataplane: MainDataplane,
    pub origin: DirStore,
    pub geo: GeoDb,
    pub serve: ServeConfig,
    pub restore_timeout: Duration,
    pub flows: FlowTable,
    pub metrics: Metrics,
}

impl Shared {
    /// The participant a client at `client` should get, if any can serve.
    pub fn select(&self, client: Option<Coord>) -> Option<String> {
        choose(client, &self.registry.candidates())
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
}
