//! The participants the main knows: where they are, whether they are connected, how loaded they
//! are, and the channel that reaches each one.
//!
//! The registry is the single owner of participant state; selection reads a snapshot of it. It
//! never performs I/O itself: sending to a participant means pushing a message into that
//! participant's outbound queue, which its control-connection task drains.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use baton_shared::control::Message;
use baton_shared::geo::{Candidate, Coord};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// Outbound control messages a participant may have queued before its writer task sends them.
/// Handoffs wait on their answer, so the queue never grows past the handoffs in flight.
pub const CONTROL_QUEUE_DEPTH: usize = 1024;

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
    pub active_flows: u32,
    /// Added by an operator (kept when it disconnects) rather than only self-registered.
    pub static_entry: bool,
    /// Present while its control connection is up.
    link: Option<Link>,
}

#[derive(Debug)]
struct Link {
    session: u64,
    tx: mpsc::Sender<Message>,
    pending: HashMap<u64, oneshot::Sender<RestoreAnswer>>,
}

/// What `batonctl participant list` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantView {
    pub name: String,
    pub addr: Ipv4Addr,
    pub lat: f64,
    pub lon: f64,
    pub capacity: u32,
    pub active_flows: u32,
    pub connected: bool,
    pub static_entry: bool,
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
            Participant { name: name.to_owned(), addr, coord, capacity, active_flows: 0, static_entry: true, link: None },
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
    pub fn connect(&self, name: &str, addr: Ipv4Addr, coord: Coord, capacity: u32) -> Session {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE_DEPTH);
        let mut g = self.lock();
        g.next_session += 1;
        let session = g.next_session;
        let entry = g.participants.entry(name.to_owned()).or_insert_with(|| Participant {
            name: name.to_owned(),
            addr,
            coord,
            capacity,
            active_flows: 0,
            static_entry: false,
            link: None,
        });
        entry.addr = addr;
        entry.coord = coord;
        entry.capacity = capacity;
        entry.link = Some(Link { session, tx, pending: HashMap::new() });
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
        if !p.static_entry {
            g.participants.remove(name);
        }
        true
    }

    pub fn heartbeat(&self, name: &str, active_flows: u32) {
        if let Some(p) = self.lock().participants.get_mut(name) {
            p.active_flows = active_flows;
        }
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

    /// Candidates for selection: connected participants are up.
    pub fn candidates(&self) -> Vec<Candidate> {
        self.lock()
            .participants
            .values()
            .map(|p| Candidate {
                name: p.name.clone(),
                coord: p.coord,
                up: p.link.is_some(),
                active_flows: p.active_flows,
                capacity: p.capacity,
            })
            .collect()
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
                active_flows: p.active_flows,
                connected: p.link.is_some(),
                static_entry: p.static_entry,
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
        let mut s = reg.connect("p1", Ipv4Addr::new(198, 18, 0, 2), coord(), 10);
        let rx = reg.send_handoff("p1", 7, Message::Heartbeat { active_flows: 0 }).expect("send");
        assert!(matches!(s.rx.recv().await, Some(Message::Heartbeat { .. })));
        assert!(reg.answer("p1", 7, RestoreAnswer::Restored));
        assert_eq!(rx.await.expect("answer"), RestoreAnswer::Restored);
        let rx = reg.send_handoff("p1", 8, Message::Heartbeat { active_flows: 0 }).expect("send");
        reg.disconnect("p1", s.id);
        assert!(rx.await.is_err(), "a lost participant's answer is unknown, not a failure");
        assert!(reg.list().is_empty(), "self-registered participants are forgotten on disconnect");
    }

    #[test]
    fn static_entries_survive_disconnects_and_stale_sessions_are_ignored() {
        let reg = Registry::default();
        reg.add("p1", Ipv4Addr::new(198, 18, 0, 2), coord(), 10).expect("add");
        let old = reg.connect("p1", Ipv4Addr::new(198, 18, 0, 2), coord(), 10);
        let new = reg.connect("p1", Ipv4Addr::new(198, 18, 0, 2), coord(), 10);
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
}
