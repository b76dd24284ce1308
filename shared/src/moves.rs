//! Moving live connections between participants: what the main remembers about each handed-off
//! connection (the [`Ledger`]), where a new owner resumes, and the [`Conductor`], the main's
//! deterministic state machine for operator moves, drains and participant crashes.
//!
//! Positions in a connection's response stream are 64-bit byte offsets counted from the first
//! byte the main handed off (`Handoff::snd_offset` 0 = the main's `snd_seq` at the handoff), so
//! they stay unambiguous past the 4 GiB where TCP sequence numbers wrap.
//!
//! Two ways a connection changes hands:
//! - graceful: the owner stops writing, waits (bounded) until the client acknowledged what it
//!   sent, freezes the socket and reports it ([`Message::Released`](crate::control::Message));
//!   the next owner resumes at the first unacknowledged byte;
//! - crash: the owner is gone; the main rebuilds the state from the ledger and what its data
//!   plane last saw from the client ([`Observation`]): the client's ACK is the next byte it needs,
//!   and timestamps move forward so the client's PAWS check accepts the new segments.
//!
//! Either way the new owner gets a [`Handoff`] with the responses still to send, and sends from
//! the resume offset: nothing the client has is sent as new data, nothing it lacks is skipped.
//!
//! Like the rest of this crate, nothing here does I/O or reads a clock: time is passed in as a
//! [`Duration`] since an epoch the caller chooses, and the data plane and the participant
//! ranking are reached through [`Env`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddrV4;
use std::time::Duration;

use crate::handoff::{Handoff, ObjectPlan, RepairWindow, Response, TcpState, MAX_PENDING_RESPONSES};

/// A connection's id, as in the handoff record.
pub type FlowId = u64;

/// How far ahead of the client's last echoed timestamp a rebuilt connection's TSval starts, on
/// top of the time since that echo: covers the segments the dead owner sent after it (at most
/// about a round trip's worth, far less than a second). A larger jump is harmless: PAWS only
/// rejects values that go backwards.
pub const CRASH_TS_MARGIN: Duration = Duration::from_secs(1);

/// A dead owner's last segments are still on their way to the client when the main learns of
/// the death, and the client acknowledges them for up to a round trip more. A rebuilt
/// connection must start at the client's final ACK: the new owner's kernel ignores ACKs beyond
/// what it has sent, so starting further back than its initial window deadlocks. The main waits
/// until the client's ACK has stopped advancing for this long (everything in flight landed).
/// Silence alone is not enough: a window-limited sender's segments come in bursts a round trip
/// apart, and pure window updates repeat the ACK, so the quiet is measured on the ACK itself and
/// spans several round trips of a continental path ...
pub const SETTLE_QUIET: Duration = Duration::from_millis(200);
/// ... or this long after the death, whichever comes first.
pub const SETTLE_MAX: Duration = Duration::from_secs(3);

/// Most client bytes the ledger keeps as unanswered input (a request head plus pipelined bytes).
pub const MAX_LEDGER_INPUT_BYTES: usize = crate::handoff::MAX_HANDOFF_REQUEST_BYTES;

/// Why a connection cannot be resumed at a position.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ResumeError {
    #[error("position {at} is before the first response the main knows ({first})")]
    Behind { at: u64, first: u64 },
    #[error("position {at} is past everything the connection sent ({end})")]
    Ahead { at: u64, end: u64 },
    #[error("more than {MAX_PENDING_RESPONSES} unfinished responses")]
    TooManyPending,
}

/// Why a `Serving` report was not recorded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LedgerError {
    #[error("response starts at {start}, not where the previous one ends ({expected})")]
    NotContiguous { start: u64, expected: u64 },
    #[error("more than {MAX_PENDING_RESPONSES} unacknowledged responses")]
    TooMany,
}

/// What the main's data plane last saw from the client of a handed-off connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Stream offset the client acknowledged (its highest ACK): the next byte it needs.
    pub acked: u64,
    /// The client's next sequence number (highest seq + length seen).
    pub client_next: u32,
    /// Raw (unscaled) window of the latest ACK.
    pub window: u16,
    /// Timestamp echo of the latest segment, when the connection uses timestamps.
    pub tsecr: Option<u32>,
    /// Time since the data plane last saw a packet of the connection.
    pub idle: Duration,
}

/// Everything the main knows about the bytes of one handed-off connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    pub flow_id: FlowId,
    /// TCP state of the first handoff; its `snd_seq` is stream offset 0.
    pub origin: TcpState,
    /// Client sequence number of `input[0]`.
    pub input_start: u32,
    /// Client bytes known to be read and not yet answered.
    pub input: Vec<u8>,
    /// Responses not yet known to be acknowledged completely, in stream order.
    pub responses: VecDeque<Response>,
    /// Highest stream offset known to be acknowledged.
    pub acked: u64,
}

/// `a` is after `b` in sequence space.
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl Ledger {
    /// The ledger of a connection the main has just handed off (offset 0, nothing sent yet).
    pub fn new(handoff: &Handoff) -> Self {
        let len = u32::try_from(handoff.request.len()).unwrap_or(u32::MAX);
        Self {
            flow_id: handoff.flow_id,
            origin: handoff.tcp.clone(),
            input_start: handoff.tcp.rcv_seq.wrapping_sub(len),
            input: handoff.request.clone(),
            responses: VecDeque::new(),
            acked: handoff.snd_offset,
        }
    }

    /// The client's address and the VIP.
    pub fn endpoints(&self) -> (SocketAddrV4, SocketAddrV4) {
        (self.origin.remote, self.origin.local)
    }

    /// Stream offset just after the last byte any owner reported sending.
    pub fn sent_end(&self) -> u64 {
        self.responses.back().map_or(self.acked, Response::end)
    }

    /// Sequence number of a stream offset.
    pub fn seq_of(&self, offset: u64) -> u32 {
        // Truncation is the point: sequence numbers are the offset modulo 2^32.
        self.origin.snd_seq.wrapping_add(offset as u32)
    }

    /// Records that the owner starts sending `response`.
    pub fn record(&mut self, response: Response) -> Result<(), LedgerError> {
        let expected = self.sent_end();
        if response.start != expected {
            return Err(LedgerError::NotContiguous { start: response.start, expected });
        }
        if self.responses.len() >= MAX_PENDING_RESPONSES {
            self.prune();
            if self.responses.len() >= MAX_PENDING_RESPONSES {
                return Err(LedgerError::TooMany);
            }
        }
        // The request this answers is no longer input.
        let consumed = response.request_end.wrapping_sub(self.input_start) as usize;
        if seq_after(response.request_end, self.input_start) && consumed <= self.input.len() {
            self.input.drain(..consumed);
        } else if response.request_end != self.input_start {
            self.input.clear();
        }
        self.input_start = response.request_end;
        self.responses.push_back(response);
        Ok(())
    }

    /// Notes that the client acknowledged everything before `offset`.
    pub fn acknowledge(&mut self, offset: u64) {
        if offset > self.acked {
            self.acked = offset.min(self.sent_end());
            self.prune();
        }
    }

    fn prune(&mut self) {
        while self.responses.front().is_some_and(|r| r.end() <= self.acked) {
            self.responses.pop_front();
        }
    }

    /// The responses a new owner still has to send when it resumes at `at`: the one holding
    /// `at` and all after it. Empty when everything sent was acknowledged (an idle keep-alive
    /// connection, or one whose last response is complete).
    pub fn pending_at(&self, at: u64) -> Result<Vec<Response>, ResumeError> {
        if let Some(first) = self.responses.front() {
            if at < first.start {
                return Err(ResumeError::Behind { at, first: first.start });
            }
        } else if at < self.acked {
            return Err(ResumeError::Behind { at, first: self.acked });
        }
        let end = self.sent_end();
        if at > end {
            return Err(ResumeError::Ahead { at, end });
        }
        let pending: Vec<Response> = self.responses.iter().filter(|r| r.end() > at).cloned().collect();
        if pending.len() > MAX_PENDING_RESPONSES {
            return Err(ResumeError::TooManyPending);
        }
        Ok(pending)
    }

    /// The objects of the responses not yet acknowledged completely: what a new owner needs.
    pub fn objects(&self) -> Vec<ObjectPlan> {
        let mut out: Vec<ObjectPlan> = Vec::new();
        for r in self.responses.iter().filter(|r| r.end() > self.acked) {
            if let Some(b) = &r.body {
                if !out.iter().any(|o| o.sha256 == b.object.sha256 && o.path == b.object.path) {
                    out.push(b.object.clone());
                }
            }
        }
        out
    }

    /// Where the last response ends when it closes the connection, i.e. the offset of the FIN.
    fn closing_end(&self) -> Option<u64> {
        self.responses.back().filter(|r| !r.keep_alive).map(Response::end)
    }

    /// The record a new owner restores after a graceful release: the released socket's state
    /// (authoritative for sequence numbers, window, timestamps and unread input) and the
    /// responses still to send from the first unacknowledged byte. Updates the ledger.
    pub fn after_release(&mut self, released: &Handoff) -> Result<Handoff, ResumeError> {
        let pending = self.pending_at(released.snd_offset)?;
        let in_flight_end = released.snd_offset.saturating_add(u64::from(released.in_flight));
        if in_flight_end > self.sent_end() {
            return Err(ResumeError::Ahead { at: in_flight_end, end: self.sent_end() });
        }
        self.acknowledge(released.snd_offset);
        let len = u32::try_from(released.request.len()).unwrap_or(u32::MAX);
        self.input_start = released.tcp.rcv_seq.wrapping_sub(len);
        self.input = released.request.clone();
        Ok(Handoff {
            flow_id: self.flow_id,
            tcp: released.tcp.clone(),
            request: released.request.clone(),
            object: None,
            snd_offset: released.snd_offset,
            in_flight: released.in_flight,
            pending,
        })
    }

    /// The record a new owner restores after the old one died, rebuilt from the ledger and the
    /// data plane's last observation of the client. `None` when the connection has nothing
    /// left to resume: the client acknowledged the FIN of a closing response.
    pub fn after_crash(&mut self, obs: &Observation) -> Result<Option<Handoff>, ResumeError> {
        let at = obs.acked.max(self.acked);
        if self.closing_end().is_some_and(|end| at == end + 1) {
            return Ok(None);
        }
        let pending = self.pending_at(at)?;
        self.acknowledge(at);
        let o = &self.origin;
        let rcv_seq = self.input_start.wrapping_add(u32::try_from(self.input.len()).unwrap_or(u32::MAX));
        let snd_wnd = u32::from(obs.window) << o.snd_wscale.min(crate::handoff::MAX_WSCALE);
        let ts_val = match (o.timestamps, obs.tsecr) {
            (true, Some(tsecr)) => {
                let ahead = obs.idle.saturating_add(CRASH_TS_MARGIN).as_millis();
                tsecr.wrapping_add(u32::try_from(ahead).unwrap_or(u32::MAX))
            }
            // No echo seen yet: the origin's clock value plus the margin is still ahead of
            // anything the client holds only if little time passed; the best we know.
            _ => o.ts_val.wrapping_add(CRASH_TS_MARGIN.as_millis() as u32),
        };
        let tcp = TcpState {
            snd_seq: self.seq_of(at),
            rcv_seq,
            ts_val,
            window: RepairWindow {
                snd_wl1: rcv_seq,
                snd_wnd,
                max_window: o.window.max_window.max(snd_wnd),
                rcv_wnd: o.window.rcv_wnd,
                rcv_wup: rcv_seq,
            },
            ..o.clone()
        };
        Ok(Some(Handoff {
            flow_id: self.flow_id,
            tcp,
            request: self.input.clone(),
            object: None,
            snd_offset: at,
            in_flight: 0,
            pending,
        }))
    }
}

/// Timeouts of the [`Conductor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// How long the target of a move may take to have the flow's objects cached before the
    /// move is abandoned (the owner keeps the flow).
    pub prepare: Duration,
    /// A participant not heard from (heartbeat or any message) for this long is dead.
    pub heartbeat: Duration,
    /// How long a participant may take to release a flow before the move is abandoned (it
    /// keeps the flow).
    pub release: Duration,
    /// How long a participant may take to confirm a restore before the main stops waiting
    /// (the flow stays with it, unconfirmed).
    pub restore: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            prepare: Duration::from_secs(60),
            heartbeat: Duration::from_millis(500),
            release: Duration::from_secs(5),
            restore: Duration::from_secs(2),
        }
    }
}

/// Where a flow stands in a move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// The owner serves it.
    Active,
    /// A move: `target` is caching the flow's objects; the owner keeps serving meanwhile.
    Preparing { target: String, deadline: Duration },
    /// The owner was asked to release it, for `target` (or the best other participant).
    Releasing { target: Option<String>, deadline: Duration },
    /// The owner was handed it and has not confirmed yet.
    Restoring { deadline: Duration },
    /// Nobody could take it; the main serves it itself.
    Local,
    /// Its owner died at `since`; it is rebuilt elsewhere once the client's ACK has settled:
    /// `acked` is the last observed one, first seen at `advanced`.
    Orphaned { since: Duration, acked: u64, advanced: Duration },
}

/// One handed-off connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub owner: String,
    pub phase: Phase,
    pub ledger: Ledger,
    /// Participants that refused or lost this flow during the current move.
    tried: BTreeSet<String>,
    /// The record of the handoff in progress, for the next participant if this one refuses.
    last_handoff: Option<Handoff>,
    /// Moves completed (graceful or after a crash).
    pub moves: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Peer {
    last_heard: Duration,
    alive: bool,
    draining: bool,
}

/// What the main must do, in order, after a call into the [`Conductor`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Ask `participant` to have these objects cached (`Message::Prepare`): the target of a
    /// move, or a flow's standby for a recovery.
    Prepare { participant: String, flow: FlowId, objects: Vec<ObjectPlan> },
    /// Ask `participant` to release the flow (`Message::Release`).
    Release { participant: String, flow: FlowId },
    /// Point the flow's data-plane entry at `participant` (keeping its observations).
    Forward { flow: FlowId, participant: String },
    /// Drop the flow's client segments (keeping the observations): its owner is presumed
    /// dead, and must get no more ACKs in case only its process stopped while its kernel can
    /// still send, so the client's position settles where the owner's data ends.
    Freeze { flow: FlowId },
    /// Send this record to `participant` (`Message::Handoff`).
    Handoff { participant: String, handoff: Handoff },
    /// No participant can take the flow: the main restores and serves it itself.
    ServeLocally { handoff: Handoff },
    /// The flow is over (or cannot be saved): remove it from the data plane.
    Forget { flow: FlowId, reason: &'static str },
}

/// What the conductor needs from the running main.
pub trait Env {
    /// The data plane's last observation of the flow's client.
    fn observe(&self, flow: FlowId, ledger: &Ledger) -> Option<Observation>;
    /// The best participant for the flow's client among those not in `exclude`.
    fn choose(&self, flow: FlowId, ledger: &Ledger, exclude: &BTreeSet<String>) -> Option<String>;
}

/// Why an operator's move was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MoveError {
    #[error("no flow {0}")]
    NoFlow(FlowId),
    #[error("flow {0} is already moving")]
    Busy(FlowId),
    #[error("flow {0} is served by the main itself")]
    Local(FlowId),
    #[error("participant {0} is unknown, down or draining")]
    Unavailable(String),
    #[error("flow {flow} is already on {participant}")]
    AlreadyThere { flow: FlowId, participant: String },
    #[error("no other participant can take flow {0}")]
    NoTarget(FlowId),
}

/// Counts the conductor keeps for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub moves_started: u64,
    pub moves_done: u64,
    pub moves_abandoned: u64,
    pub recoveries: u64,
    pub lost: u64,
    pub local: u64,
    pub unconfirmed: u64,
}

/// The main's bookkeeping of handed-off flows and participants, driven by events, answering
/// with [`Action`]s.
#[derive(Debug, Default)]
pub struct Conductor {
    timeouts: Timeouts,
    /// Whether each flow's next-best participant is asked to cache the flow's objects, so a
    /// recovery after a crash does not wait for an origin fill.
    standby: bool,
    peers: BTreeMap<String, Peer>,
    flows: BTreeMap<FlowId, Flow>,
    actions: VecDeque<Action>,
    counts: Counts,
}

impl Conductor {
    pub fn new(timeouts: Timeouts) -> Self {
        Self { timeouts, ..Self::default() }
    }

    /// Enables or disables standby prefetching (see the field).
    pub fn with_standby(mut self, standby: bool) -> Self {
        self.standby = standby;
        self
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The next thing to do, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// All pending actions.
    pub fn drain_actions(&mut self) -> Vec<Action> {
        self.actions.drain(..).collect()
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn flow(&self, id: FlowId) -> Option<&Flow> {
        self.flows.get(&id)
    }

    pub fn flows(&self) -> impl Iterator<Item = (FlowId, &Flow)> {
        self.flows.iter().map(|(id, f)| (*id, f))
    }

    /// Flows owned by `participant`.
    pub fn flows_of(&self, participant: &str) -> Vec<FlowId> {
        self.flows.iter().filter(|(_, f)| f.owner == participant).map(|(id, _)| *id).collect()
    }

    /// Whether new connections may go to `participant`.
    pub fn accepts_new(&self, participant: &str) -> bool {
        self.peers.get(participant).is_none_or(|p| p.alive && !p.draining)
    }

    pub fn is_draining(&self, participant: &str) -> bool {
        self.peers.get(participant).is_some_and(|p| p.draining)
    }

    /// A participant (re)connected.
    pub fn peer_up(&mut self, name: &str, now: Duration) {
        let peer = self.peers.entry(name.to_owned()).or_insert(Peer { last_heard: now, alive: true, draining: false });
        peer.alive = true;
        peer.last_heard = now;
    }

    /// A participant the main expects back (after a restart of the main), with `grace` to
    /// reconnect before its flows are recovered elsewhere.
    pub fn peer_expected(&mut self, name: &str, now: Duration, grace: Duration) {
        let last_heard = (now + grace).saturating_sub(self.timeouts.heartbeat);
        self.peers.insert(name.to_owned(), Peer { last_heard, alive: true, draining: false });
    }

    /// Any message from a participant. One declared dead for its silence (a stopped process,
    /// a partition) that speaks again is alive again; the flows it had are elsewhere by then.
    pub fn heard(&mut self, name: &str, now: Duration) {
        if let Some(p) = self.peers.get_mut(name) {
            p.alive = true;
            p.last_heard = p.last_heard.max(now);
        }
    }

    /// A connection the main is handing off to `owner` (before the participant hears of it, so
    /// its first reports find the flow). [`Conductor::restored`] confirms it; a refusal of a
    /// first handoff is the caller's to handle ([`Conductor::remove`]).
    pub fn adopt(&mut self, owner: &str, ledger: Ledger) {
        let id = ledger.flow_id;
        self.flows.insert(id, Flow { owner: owner.to_owned(), phase: Phase::Active, ledger, tried: BTreeSet::new(), last_handoff: None, moves: 0 });
    }

    /// A flow the main restored from its saved state after a restart.
    pub fn reload(&mut self, owner: &str, ledger: Ledger, moves: u32) {
        let id = ledger.flow_id;
        self.flows.insert(id, Flow { owner: owner.to_owned(), phase: Phase::Active, ledger, tried: BTreeSet::new(), last_handoff: None, moves });
    }

    /// The owner starts sending a response. With standby prefetching, the participant that
    /// would take the flow if its owner died is asked to cache the response's object.
    pub fn serving(&mut self, from: &str, id: FlowId, response: Response, env: &impl Env) -> Result<(), LedgerError> {
        let object = response.body.as_ref().map(|b| b.object.clone());
        match self.flows.get_mut(&id) {
            Some(f) if f.owner == from => f.ledger.record(response)?,
            _ => return Ok(()),
        }
        if let (true, Some(object)) = (self.standby, object) {
            if let Some(flow) = self.flows.get(&id) {
                if let Some(standby) = env.choose(id, &flow.ledger, &self.excluded(flow)) {
                    self.actions.push_back(Action::Prepare { participant: standby, flow: id, objects: vec![object] });
                }
            }
        }
        Ok(())
    }

    /// The owner says the connection ended.
    pub fn closed(&mut self, from: &str, id: FlowId) {
        if self.flows.get(&id).is_some_and(|f| f.owner == from) {
            self.flows.remove(&id);
            self.actions.push_back(Action::Forget { flow: id, reason: "closed" });
        }
    }

    /// The main forgets a flow on its own (idle, or its client ended it).
    pub fn remove(&mut self, id: FlowId) -> Option<Flow> {
        self.flows.remove(&id)
    }

    fn excluded(&self, flow: &Flow) -> BTreeSet<String> {
        let mut out: BTreeSet<String> =
            self.peers.iter().filter(|(_, p)| !p.alive || p.draining).map(|(n, _)| n.clone()).collect();
        out.extend(flow.tried.iter().cloned());
        out.insert(flow.owner.clone());
        out
    }

    /// An operator (or a drain) asks to move a flow to `to`, or to the best other participant.
    pub fn move_flow(&mut self, id: FlowId, to: Option<&str>, now: Duration, env: &impl Env) -> Result<String, MoveError> {
        let flow = self.flows.get(&id).ok_or(MoveError::NoFlow(id))?;
        match flow.phase {
            Phase::Active => {}
            Phase::Local => return Err(MoveError::Local(id)),
            _ => return Err(MoveError::Busy(id)),
        }
        let target = match to {
            Some(t) => {
                if t == flow.owner {
                    return Err(MoveError::AlreadyThere { flow: id, participant: t.to_owned() });
                }
                if !self.peers.get(t).is_some_and(|p| p.alive && !p.draining) {
                    return Err(MoveError::Unavailable(t.to_owned()));
                }
                t.to_owned()
            }
            None => env.choose(id, &flow.ledger, &self.excluded(flow)).ok_or(MoveError::NoTarget(id))?,
        };
        let owner = flow.owner.clone();
        let objects = flow.ledger.objects();
        let timeouts = self.timeouts;
        if let Some(f) = self.flows.get_mut(&id) {
            f.tried.clear();
            if objects.is_empty() {
                f.phase = Phase::Releasing { target: Some(target.clone()), deadline: now + timeouts.release };
                self.actions.push_back(Action::Release { participant: owner, flow: id });
            } else {
                // The target caches first, while the owner keeps serving: the client's stall
                // is then one round trip, not an origin fill.
                f.phase = Phase::Preparing { target: target.clone(), deadline: now + timeouts.prepare };
                self.actions.push_back(Action::Prepare { participant: target.clone(), flow: id, objects });
            }
        }
        self.counts.moves_started += 1;
        Ok(target)
    }

    /// A participant has a flow's objects cached: if it is the target of the flow's move, the
    /// owner is asked to release the flow now.
    pub fn prepared(&mut self, from: &str, id: FlowId, now: Duration) {
        let release = self.timeouts.release;
        let Some(f) = self.flows.get_mut(&id) else { return };
        if let Phase::Preparing { target, .. } = &f.phase {
            if target == from {
                f.phase = Phase::Releasing { target: Some(from.to_owned()), deadline: now + release };
                self.actions.push_back(Action::Release { participant: f.owner.clone(), flow: id });
            }
        }
    }

    /// The target of a move could not cache the flow's objects: the move is abandoned.
    pub fn prepare_failed(&mut self, from: &str, id: FlowId) {
        let Some(f) = self.flows.get_mut(&id) else { return };
        if matches!(&f.phase, Phase::Preparing { target, .. } if target == from) {
            f.phase = Phase::Active;
            self.counts.moves_abandoned += 1;
        }
    }

    /// Stops new connections going to `participant` and moves each of its flows to its next
    /// best participant. Returns how many moves started.
    pub fn drain(&mut self, participant: &str, now: Duration, env: &impl Env) -> usize {
        if let Some(p) = self.peers.get_mut(participant) {
            p.draining = true;
        } else {
            self.peers.insert(participant.to_owned(), Peer { last_heard: now, alive: false, draining: true });
        }
        let mut started = 0;
        for id in self.flows_of(participant) {
            if self.move_flow(id, None, now, env).is_ok() {
                started += 1;
            }
        }
        started
    }

    /// Lets `participant` take new connections again.
    pub fn undrain(&mut self, participant: &str) {
        if let Some(p) = self.peers.get_mut(participant) {
            p.draining = false;
        }
    }

    /// The owner released a flow: hand it to the target.
    pub fn released(&mut self, from: &str, released: &Handoff, now: Duration, env: &impl Env) {
        let id = released.flow_id;
        let Some(flow) = self.flows.get_mut(&id) else { return };
        if flow.owner != from {
            return;
        }
        let target = match &flow.phase {
            Phase::Releasing { target, .. } => target.clone(),
            // A release nobody asked for (a participant shutting down): treat it like a drain.
            _ => None,
        };
        match flow.ledger.after_release(released) {
            Ok(handoff) => {
                flow.tried.insert(from.to_owned());
                self.dispatch(id, handoff, target, now, env);
            }
            Err(e) => self.lose(id, resume_reason(&e)),
        }
    }

    /// The owner would not release the flow; it keeps it.
    pub fn release_failed(&mut self, from: &str, id: FlowId) {
        if let Some(f) = self.flows.get_mut(&id) {
            if f.owner == from && matches!(f.phase, Phase::Releasing { .. }) {
                f.phase = Phase::Active;
                self.counts.moves_abandoned += 1;
            }
        }
    }

    /// The owner says it does not serve the flow at all: it is recovered like the flow of a
    /// dead participant (frozen, rebuilt once the client's ACK settles, or forgotten when the
    /// client acknowledged everything).
    pub fn lost_by_owner(&mut self, from: &str, id: FlowId, now: Duration, env: &impl Env) {
        let Some(f) = self.flows.get_mut(&id) else { return };
        if f.owner != from || matches!(f.phase, Phase::Local | Phase::Orphaned { .. }) {
            return;
        }
        if matches!(f.phase, Phase::Releasing { .. } | Phase::Preparing { .. }) {
            self.counts.moves_abandoned += 1;
        }
        self.counts.recoveries += 1;
        f.tried.insert(from.to_owned());
        f.phase = Phase::Orphaned { since: now, acked: f.ledger.acked, advanced: now };
        self.actions.push_back(Action::Freeze { flow: id });
        self.settle(now, env);
    }

    /// The new owner restored the flow.
    pub fn restored(&mut self, from: &str, id: FlowId) {
        if let Some(f) = self.flows.get_mut(&id) {
            if f.owner == from && matches!(f.phase, Phase::Restoring { .. }) {
                f.phase = Phase::Active;
                f.tried.clear();
                f.last_handoff = None;
                f.moves += 1;
                self.counts.moves_done += 1;
            }
        }
    }

    /// The new owner could not restore the flow: try the next one. Nothing reached the client
    /// from it, so the same record serves.
    pub fn restore_failed(&mut self, from: &str, id: FlowId, handoff: Option<Handoff>, now: Duration, env: &impl Env) {
        let Some(f) = self.flows.get_mut(&id) else { return };
        if f.owner != from || !matches!(f.phase, Phase::Restoring { .. }) {
            return;
        }
        f.tried.insert(from.to_owned());
        let handoff = match handoff.or_else(|| f.last_handoff.take()) {
            Some(h) => Some(h),
            None => self.rebuild(id, env),
        };
        match handoff {
            Some(h) => self.dispatch(id, h, None, now, env),
            None => self.lose(id, "cannot rebuild after a refused restore"),
        }
    }

    /// A participant's control connection closed: its flows are recovered elsewhere.
    pub fn peer_down(&mut self, name: &str, now: Duration, env: &impl Env) {
        let Some(p) = self.peers.get_mut(name) else { return };
        if !p.alive {
            return;
        }
        p.alive = false;
        // Moves toward the dead participant stop; its own flows are recovered below.
        for f in self.flows.values_mut() {
            if matches!(&f.phase, Phase::Preparing { target, .. } if target == name) {
                f.phase = Phase::Active;
                self.counts.moves_abandoned += 1;
            }
        }
        for id in self.flows_of(name) {
            let Some(f) = self.flows.get_mut(&id) else { continue };
            if matches!(f.phase, Phase::Local) {
                continue;
            }
            self.counts.recoveries += 1;
            f.tried.insert(name.to_owned());
            f.phase = Phase::Orphaned { since: now, acked: f.ledger.acked, advanced: now };
            self.actions.push_back(Action::Freeze { flow: id });
        }
        self.settle(now, env);
    }

    /// Rebuilds and hands over each orphaned flow whose client's ACK has settled (see
    /// [`SETTLE_QUIET`]).
    fn settle(&mut self, now: Duration, env: &impl Env) {
        let orphans: Vec<FlowId> =
            self.flows.iter().filter(|(_, f)| matches!(f.phase, Phase::Orphaned { .. })).map(|(id, _)| *id).collect();
        for id in orphans {
            let Some(flow) = self.flows.get_mut(&id) else { continue };
            let Some(obs) = env.observe(id, &flow.ledger) else {
                self.lose(id, "owner died and the data plane has no view of the client");
                continue;
            };
            let Phase::Orphaned { since, acked, advanced } = &mut flow.phase else { continue };
            if obs.acked != *acked {
                *acked = obs.acked;
                *advanced = now;
            }
            // Nothing at all from the client for the quiet time also means its ACK stood still.
            let still = now.saturating_sub(*advanced).max(obs.idle);
            if still < SETTLE_QUIET && now.saturating_sub(*since) < SETTLE_MAX {
                continue;
            }
            let rebuilt = flow.ledger.after_crash(&obs);
            match rebuilt {
                Ok(Some(h)) => self.dispatch(id, h, None, now, env),
                Ok(None) => {
                    self.flows.remove(&id);
                    self.actions.push_back(Action::Forget { flow: id, reason: "complete when its owner died" });
                }
                Err(_) => self.lose(id, "owner died and the connection cannot be rebuilt"),
            }
        }
    }

    /// Advances time: participants silent for longer than the heartbeat timeout are dead;
    /// moves past their deadline end.
    pub fn tick(&mut self, now: Duration, env: &impl Env) {
        let silent: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.alive && now.saturating_sub(p.last_heard) > self.timeouts.heartbeat)
            .map(|(n, _)| n.clone())
            .collect();
        for name in silent {
            self.peer_down(&name, now, env);
        }
        self.settle(now, env);
        for f in self.flows.values_mut() {
            match f.phase {
                Phase::Preparing { deadline, .. } | Phase::Releasing { deadline, .. } if now >= deadline => {
                    f.phase = Phase::Active;
                    self.counts.moves_abandoned += 1;
                }
                Phase::Restoring { deadline } if now >= deadline => {
                    f.phase = Phase::Active;
                    f.moves += 1;
                    self.counts.unconfirmed += 1;
                }
                _ => {}
            }
        }
    }

    fn rebuild(&mut self, id: FlowId, env: &impl Env) -> Option<Handoff> {
        let flow = self.flows.get_mut(&id)?;
        let obs = env.observe(id, &flow.ledger)?;
        match flow.ledger.after_crash(&obs) {
            Ok(Some(h)) => Some(h),
            Ok(None) | Err(_) => None,
        }
    }

    fn lose(&mut self, id: FlowId, reason: &'static str) {
        self.flows.remove(&id);
        self.counts.lost += 1;
        self.actions.push_back(Action::Forget { flow: id, reason });
    }

    /// Hands `handoff` to `target` if it can still take it, else to the best other
    /// participant, else to the main itself.
    fn dispatch(&mut self, id: FlowId, handoff: Handoff, target: Option<String>, now: Duration, env: &impl Env) {
        let Some(flow) = self.flows.get(&id) else { return };
        let exclude = self.excluded(flow);
        let target = target
            .filter(|t| !exclude.contains(t) && self.peers.get(t).is_some_and(|p| p.alive && !p.draining))
            .or_else(|| env.choose(id, &flow.ledger, &exclude));
        let restore = self.timeouts.restore;
        let Some(flow) = self.flows.get_mut(&id) else { return };
        match target {
            Some(t) => {
                flow.owner = t.clone();
                flow.phase = Phase::Restoring { deadline: now + restore };
                flow.last_handoff = Some(handoff.clone());
                self.actions.push_back(Action::Forward { flow: id, participant: t.clone() });
                self.actions.push_back(Action::Handoff { participant: t, handoff });
            }
            None => {
                flow.owner = String::new();
                flow.phase = Phase::Local;
                self.counts.local += 1;
                self.actions.push_back(Action::ServeLocally { handoff });
            }
        }
    }
}

fn resume_reason(e: &ResumeError) -> &'static str {
    match e {
        ResumeError::Behind { .. } => "released position is before the known responses",
        ResumeError::Ahead { .. } => "released position is past the known responses",
        ResumeError::TooManyPending => "too many unfinished responses",
    }
}

#[cfg(test)]
mod tests;
