//! The participants the main knows: where they are, whether they are connected, how loaded they
//! are, and the channel that reaches each one.
//!
//! The registry is the single owner of participant state; selection reads a snapshot of it. It
//! never performs I/O itself: sending to a participant means pushing a message into that
//! participant's outbound queue, which its control-connection task drains.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};

use std::collections::{HashSet, VecDeque};

use baton_shared::control::{Load, Message};
use baton_shared::geo::Coord;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// Outbound control messages a participant may have queued before its writer task sends them.
/// Handoffs wait on their answer, so the queue never grows past the handoffs in flight.
pub const CONTROL_QUEUE_DEPTH: usize = 1024;
/// Objects remembered per participant as "it holds this" (handed off, prepared or served
/// there). Oldest forgotten first; a forgotten object only costs a selection point.
pub const MAX_KNOWN_OBJECTS: usize = 4096;

/// The answer a participant gave to a handoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreAnswer {
    Restored,
    Failed(String),
}

/// A participant's entry.
#[derive(Debug)]
pub struct Participant {
    pub name: String,
    pub addr: Ipv4Addr,
    pub coord: Coord,
    pub capacity: u32,
    /// Port of its plain-HTTP mirror on `addr`, as its current session registered it; 0 when
    /// it runs none or is not connected.
    pub mirror_port: u16,
    pub active_flows: u32,
    /// The figures of its last heartbeat.
    pub load: Load,
    /// Added by an operator (kept when it disconnects) rather than only self-registered.
    pub static_entry: bool,
    /// Objects it is known to hold, oldest first.
    objects: KnownObjects,
    /// Present while its control connection is up.
    link: Option<Link>,
}

/// A bounded set of object paths, forgetting the oldest.
#[derive(Debug, Default)]
struct KnownObjects {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl KnownObjects {
    fn insert(&mut self, path: &str) {
        if self.set.contains(path) {
            return;
        }
        if self.order.len() >= MAX_KNOWN_OBJECTS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(path.to_owned());
        self.set.insert(path.to_owned());
    }
}

#[derive(Debug)]
struct Link {
    session: u64,
    tx: mpsc::Sender<Message>,
    pending: HashMap<u64, oneshot::Sender<RestoreAnswer>>,
    /// Flows this session was asked to prepare (as a move's target or a standby): a
    /// `Prepared` about any other flow is not its to send.
    prepares: HashSet<u64>,
}

/// Most remembered prepare requests per session (each answer removes its own).
const MAX_PREPARES_TRACKED: usize = 65_536;

/// What `batonctl participant list` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantView {
    pub name: String,
    pub addr: Ipv4Addr,
    pub lat: f64,
    pub lon: f64,
    pub capacity: u32,
    pub mirror_port: u16,
    pub active_flows: u32,
    pub load: Load,
    pub connected: bool,
    pub static_entry: bool,
    pub known_objects: usize,
}

/// A participant an operator added, as saved across restarts of the main.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct StaticEntry {
    pub name: String,
    pub addr: Ipv4Addr,
    pub lat: f64,
    pub lon: f64,
    pub capacity: u32,
}

/// What selection needs of one participant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: String,
    pub coord: Coord,
    pub connected: bool,
    pub active_flows: u32,
    pub capacity: u32,
    pub has_object: bool,
}

/// Why a registry operation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("participant {name} is not registered")]
    Unknown { name: String },
    #[error("participant {name} is not connected")]
    NotConnected { name: String },
    #[error("participant {name} has too many queued control messages")]
    QueueFull { name: String },
    #[error("participant {name} already exists with address {addr}")]
    Exists { name: String, addr: Ipv4Addr },
}

/// All participants, shared between tasks.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    participants: HashMap<String, Participant>,
    next_session: u64,
}

/// Handle a control connection keeps for the participant it serves.
#[derive(Debug)]
pub struct Session {
    pub name: String,
    pub id: u64,
    pub rx: mpsc::Receiver<Message>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent across a panicking holder: every update is a single insert.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Operator-added participant (`batonctl participant add`).
    pub fn add(&self, name: &str, addr: Ipv4Addr, coord: Coord, capacity: u32) -> Result<(), RegistryError> {
        let mut g = self.lock();
        if let Some(p) = g.participants.get_mut(name) {
            if p.addr != addr {
                return Err(RegistryError::Exists { name: name.to_owned(), addr: p.addr });
            }
            p.coord = coord;
            p.capacity = capacity;
            p.static_entry = true;
            return Ok(());
        }
        g.participants.insert(
            name.to_owned(),
            Participant {
                name: name.to_owned(),
                addr,
                coord,
                capacity,
                mirror_port: 0,
                active_flows: 0,
                load: Load::default(),
                static_entry: true,
                objects: KnownObjects::default(),
                link: None,
            },
        );
        Ok(())
    }

    /// Removes a participant; its control connection is closed by dropping its queue.
    pub fn remove(&self, name: &str) -> Result<(), RegistryError> {
        match self.lock().participants.remove(name) {
            Some(_) => Ok(()),
            None => Err(RegistryError::Unknown { name: name.to_owned() }),
        }
    }

    /// A participant registered over its control connection; replaces an older session.
    pub fn connect(&self, name: &str, addr: Ipv4Addr, coord: Coord, capacity: u32, mirror_port: u16) -> Session {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE_DEPTH);
        let mut g = self.lock();
        g.next_session += 1;
        let session = g.next_session;
        let entry = g.participants.entry(name.to_owned()).or_insert_with(|| Participant {
            name: name.to_owned(),
            addr,
            coord,
            capacity,
            mirror_port,
            active_flows: 0,
            load: Load::default(),
            static_entry: false,
            objects: KnownObjects::default(),
            link: None,
        });
        entry.addr = addr;
        entry.coord = coord;
        entry.capacity = capacity;
        entry.mirror_port = mirror_port;
        entry.link = Some(Link { session, tx, pending: HashMap::new(), prepares: HashSet::new() });
        Session { name: name.to_owned(), id: session, rx }
    }

    /// The control connection of `session` ended: pending handoffs get no answer (dropping their
    /// senders: whether the participant restored them is unknown), and a self-registered
    /// participant is forgotten.
    /// Ends `session` of `name`; returns false when a newer session had already replaced it
    /// (the participant is connected, nothing changed).
    pub fn disconnect(&self, name: &str, session: u64) -> bool {
        let mut g = self.lock();
        let Some(p) = g.participants.get_mut(name) else { return false };
        if p.link.as_ref().map(|l| l.session) != Some(session) {
            return false;
        }
        p.link = None;
        p.mirror_port = 0;
        if !p.static_entry {
            g.participants.remove(name);
        }
        true
    }

    pub fn heartbeat(&self, name: &str, load: Load) {
        if let Some(p) = self.lock().participants.get_mut(name) {
            p.active_flows = load.active_flows;
            p.load = load;
        }
    }

    /// Notes that `name` holds (or is filling) `object`.
    pub fn holds(&self, name: &str, object: &str) {
        if let Some(p) = self.lock().participants.get_mut(name) {
            p.objects.insert(object);
        }
    }

    /// Notes that `name` was asked to prepare `flow`.
    pub fn expect_prepared(&self, name: &str, flow: u64) {
        if let Some(link) = self.lock().participants.get_mut(name).and_then(|p| p.link.as_mut()) {
            if link.prepares.len() < MAX_PREPARES_TRACKED {
                link.prepares.insert(flow);
            }
        }
    }

    /// Whether `name` was asked to prepare `flow` (and has not answered yet); the answer
    /// consumes the request.
    pub fn take_prepared(&self, name: &str, flow: u64) -> bool {
        self.lock().participants.get_mut(name).and_then(|p| p.link.as_mut()).is_some_and(|l| l.prepares.remove(&flow))
    }

    /// Whether a handoff of `flow` to `name` awaits its answer.
    pub fn awaits_answer(&self, name: &str, flow: u64) -> bool {
        self.lock().participants.get(name).and_then(|p| p.link.as_ref()).is_some_and(|l| l.pending.contains_key(&flow))
    }

    /// The operator-added participants, for saving.
    pub fn static_entries(&self) -> Vec<StaticEntry> {
        let mut v: Vec<StaticEntry> = self
            .lock()
            .participants
            .values()
            .filter(|p| p.static_entry)
            .map(|p| StaticEntry { name: p.name.clone(), addr: p.addr, lat: p.coord.lat, lon: p.coord.lon, capacity: p.capacity })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Queues a message for a participant.
    pub fn send(&self, name: &str, msg: Message) -> Result<(), RegistryError> {
        let mut g = self.lock();
        let link = Self::link_mut(&mut g, name)?;
        link.tx.try_send(msg).map_err(|_| RegistryError::QueueFull { name: name.to_owned() })
    }

    /// Queues a handoff and returns the receiver of the participant's answer.
    pub fn send_handoff(&self, name: &str, flow_id: u64, msg: Message) -> Result<oneshot::Receiver<RestoreAnswer>, RegistryError> {
        let mut g = self.lock();
        let link = Self::link_mut(&mut g, name)?;
        link.tx.try_send(msg).map_err(|_| RegistryError::QueueFull { name: name.to_owned() })?;
        let (tx, rx) = oneshot::channel();
        link.pending.insert(flow_id, tx);
        Ok(rx)
    }

    fn link_mut<'a>(g: &'a mut Inner, name: &str) -> Result<&'a mut Link, RegistryError> {
        let p = g.participants.get_mut(name).ok_or_else(|| RegistryError::Unknown { name: name.to_owned() })?;
        p.link.as_mut().ok_or_else(|| RegistryError::NotConnected { name: name.to_owned() })
    }

    /// A participant answered a handoff.
    pub fn answer(&self, name: &str, flow_id: u64, answer: RestoreAnswer) -> bool {
        let mut g = self.lock();
        let Some(link) = g.participants.get_mut(name).and_then(|p| p.link.as_mut()) else { return false };
        match link.pending.remove(&flow_id) {
            Some(tx) => tx.send(answer).is_ok(),
            None => false,
        }
    }

    /// Forgets a pending handoff the main gave up on.
    pub fn forget_pending(&self, name: &str, flow_id: u64) {
        if let Some(link) = self.lock().participants.get_mut(name).and_then(|p| p.link.as_mut()) {
            link.pending.remove(&flow_id);
        }
    }

    /// Adjusts the main's own count of flows on a participant (heartbeats overwrite it).
    pub fn add_flows(&self, name: &str, delta: i32) {
        if let Some(p) = self.lock().participants.get_mut(name) {
            p.active_flows = p.active_flows.saturating_add_signed(delta);
        }
    }

    /// Every participant as selection sees it, for a request of `object`.
    pub fn snapshot(&self, object: Option<&str>) -> Vec<Snapshot> {
        self.lock()
            .participants
            .values()
            .map(|p| Snapshot {
                name: p.name.clone(),
                coord: p.coord,
                connected: p.link.is_some(),
                active_flows: p.active_flows,
                capacity: p.capacity,
                has_object: object.is_some_and(|o| p.objects.set.contains(o)),
            })
            .collect()
    }

    /// Whether `name`'s control connection is up.
    pub fn is_connected(&self, name: &str) -> bool {
        self.lock().participants.get(name).is_some_and(|p| p.link.is_some())
    }

    /// Where each connected participant's mirror listens (those that run one), by name.
    pub fn mirrors(&self) -> Vec<(String, SocketAddrV4)> {
        let mut v: Vec<(String, SocketAddrV4)> = self
            .lock()
            .participants
            .values()
            .filter(|p| p.link.is_some() && p.mirror_port != 0)
            .map(|p| (p.name.clone(), SocketAddrV4::new(p.addr, p.mirror_port)))
            .collect();
        v.sort();
        v
    }

    pub fn addr_of(&self, name: &str) -> Option<Ipv4Addr> {
        self.lock().participants.get(name).map(|p| p.addr)
    }

    pub fn list(&self) -> Vec<ParticipantView> {
        let mut v: Vec<_> = self
            .lock()
            .participants
            .values()
            .map(|p| ParticipantView {
                name: p.name.clone(),
                addr: p.addr,
                lat: p.coord.lat,
                lon: p.coord.lon,
                capacity: p.capacity,
                mirror_port: p.mirror_port,
                active_flows: p.active_flows,
                load: p.load,
                connected: p.link.is_some(),
                static_entry: p.static_entry,
                known_objects: p.objects.order.len(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coord() -> Coord {
        Coord::new(50.1, 8.7).expect("coord")
    }

    #[tokio::test]
    async fn handoff_answers_reach_the_waiter_and_disconnect_leaves_them_unanswered() {
        let reg = Registry::default();
        let mut s = reg.connect("p1", Ipv4Addr::new(198, 18, 0, 2), coord(), 10, 0);
        let rx = reg.send_handoff("p1", 7, Message::Heartbeat(Load::default())).expect("send");
        assert!(matches!(s.rx.recv().await, Some(Message::Heartbeat { .. })));
        assert!(reg.answer("p1", 7, RestoreAnswer::Restored));
        assert_eq!(rx.await.expect("answer"), RestoreAnswer::Restored);
        let rx = reg.send_handoff("p1", 8, Message::Heartbeat(Load::default())).expect("send");
        reg.disconnect("p1", s.id);
        assert!(rx.await.is_err(), "a lost participant's answer is unknown, not a failure");
        assert!(reg.list().is_empty(), "self-registered participants are forgotten on disconnect");
    }

    #[test]
    fn static_entries_survive_disconnects_and_stale_sessions_are_ignored() {
        let reg = Registry::default();
        reg.add("p1", Ipv4Addr::new(198, 18, 0, 2), coord(), 10).expect("add");
        let old = reg.connect("p1", Ipv4Addr::new(198, 18, 0, 2), coord(), 10, 0);
        let new = reg.connect("p1", Ipv4Addr::new(198, 18, 0, 2), coord(), 10, 0);
        reg.disconnect("p1", old.id);
        assert!(reg.list()[0].connected, "a stale session must not take down the new one");
        reg.disconnect("p1", new.id);
        let l = reg.list();
        assert_eq!(l.len(), 1);
        assert!(!l[0].connected);
        assert_eq!(
            reg.add("p1", Ipv4Addr::new(198, 18, 0, 9), coord(), 1),
            Err(RegistryError::Exists { name: "p1".into(), addr: Ipv4Addr::new(198, 18, 0, 2) })
        );
        assert_eq!(reg.remove("p2"), Err(RegistryError::Unknown { name: "p2".into() }));
    }

    #[test]
    fn mirrors_are_the_connected_participants_that_run_one() {
        let reg = Registry::default();
        reg.add("p0", Ipv4Addr::new(198, 18, 0, 2), coord(), 10).expect("add");
        let a = reg.connect("p1", Ipv4Addr::new(198, 18, 1, 2), coord(), 10, 8080);
        let _b = reg.connect("p2", Ipv4Addr::new(198, 18, 2, 2), coord(), 10, 0);
        let c = reg.connect("p0", Ipv4Addr::new(198, 18, 0, 2), coord(), 10, 80);
        assert_eq!(
            reg.mirrors(),
            [
                ("p0".to_owned(), SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 80)),
                ("p1".to_owned(), SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 8080)),
            ]
        );
        assert!(reg.disconnect("p0", c.id));
        assert!(reg.disconnect("p1", a.id));
        assert!(reg.mirrors().is_empty(), "a disconnected participant's mirror is not advertised");
        assert_eq!(reg.list().iter().find(|p| p.name == "p0").map(|p| p.mirror_port), Some(0));
    }
}
