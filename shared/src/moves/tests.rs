//! The conductor and the ledger against a simulated network, in simulated time (the style of
//! quinn's `Pair`): a client that accepts only in-order bytes and checks every one of them, a
//! PAWS check on timestamps, participants that send at a bounded rate and window, release when
//! asked, and can die; the main's data plane as an observation of the client's ACKs.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::cmp::Reverse;
use std::net::{Ipv4Addr, SocketAddrV4};

use super::*;
use crate::handoff::{BodyPart, ObjectPlan};

const MS: Duration = Duration::from_millis(1);
/// One-way delays: participant ↔ client, client → main, main → participant, control messages.
const TO_CLIENT: u64 = 20;
const CLIENT_TO_MAIN: u64 = 10;
const MAIN_TO_PEER: u64 = 10;
const CONTROL: u64 = 1;
const RTT: u64 = TO_CLIENT + CLIENT_TO_MAIN + MAIN_TO_PEER;
const SEGMENT: u64 = 1000;
/// Bytes a participant may send per millisecond and have in flight.
const RATE: u64 = 2_000;
const WINDOW: u64 = 1_200_000;
const RTO: u64 = 200;
const HEARTBEAT: u64 = 100;
/// How long a participant waits for its sent bytes to be acknowledged before releasing anyway.
const RELEASE_WAIT: u64 = 500;
/// How long a participant takes to cache an object when asked to prepare.
const PREPARE_TIME: u64 = 150;
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4000000\r\n\r\n";
const BODY: u64 = 4_000_000;

fn object_byte(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

fn response() -> Response {
    Response {
        start: 0,
        request_end: 5035,
        keep_alive: true,
        head: HEAD.to_vec(),
        body: Some(BodyPart {
            object: ObjectPlan { path: "big.bin".into(), size: BODY + 77, sha256: [1; 32] },
            offset: 77,
            len: BODY,
        }),
    }
}

/// The byte at stream offset `at` according to a list of responses.
fn byte_at(responses: &[Response], at: u64) -> Option<u8> {
    let r = responses.iter().find(|r| r.start <= at && at < r.end())?;
    let i = at - r.start;
    if (i as usize) < r.head.len() {
        return Some(r.head[i as usize]);
    }
    let b = r.body.as_ref()?;
    Some(object_byte(b.offset + i - r.head.len() as u64))
}

fn origin(flow: FlowId, snd_seq: u32) -> Handoff {
    Handoff {
        flow_id: flow,
        tcp: TcpState {
            local: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80),
            remote: SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 40000 + flow as u16),
            snd_seq,
            rcv_seq: 5040,
            mss: 1460,
            snd_wscale: 7,
            rcv_wscale: 7,
            sack: true,
            timestamps: true,
            ts_val: 1_000,
            window: RepairWindow { snd_wl1: 5040, snd_wnd: 64_000, max_window: 64_000, rcv_wnd: 65_000, rcv_wup: 5040 },
        },
        request: b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n12345".to_vec(),
        object: None,
        snd_offset: 0,
        in_flight: 0,
        pending: Vec::new(),
    }
}

#[derive(Debug)]
enum Ev {
    /// Segment from a participant (bytes, TSval).
    Data { flow: FlowId, start: u64, bytes: Vec<u8>, ts: u32 },
    /// ACK arriving at the main's data plane.
    AckAtMain { flow: FlowId, ack: u64, tsecr: u32 },
    /// ACK forwarded to a participant.
    AckAtPeer { flow: FlowId, to: String, ack: u64 },
    ToPeer { to: String, msg: PeerMsg },
    ToMain { from: String, msg: MainMsg },
}

#[derive(Debug)]
enum PeerMsg {
    Prepare(FlowId),
    Release(FlowId),
    Handoff(Handoff),
}

#[derive(Debug)]
enum MainMsg {
    Heartbeat,
    Prepared(FlowId),
    Released(Handoff),
    Restored(FlowId),
    Serving(FlowId, Response),
}

struct Client {
    rcv: u64,
    ts_recent: u32,
    /// Time of the latest in-order byte and the largest gap between two of them.
    last_new: u64,
    largest_gap: u64,
    /// Bytes received that were not new.
    duplicate: u64,
    paws_drops: u64,
    /// The client stops reading (window zero: no new bytes accepted) until this time.
    paused_until: u64,
}

struct Conn {
    /// A restored socket's congestion window (bytes) in slow start, from an initial ten
    /// segments: like Linux, it ignores ACKs beyond what it has sent, so a rebuilt connection
    /// that starts behind the client's position by more than that deadlocks.
    initial_window: Option<u64>,
    snd_una: u64,
    snd_nxt: u64,
    pending: Vec<Response>,
    /// (restore time, TSval then).
    clock: (u64, u32),
    last_progress: u64,
    release_deadline: Option<u64>,
}

impl Conn {
    fn end(&self) -> u64 {
        self.pending.last().map_or(self.snd_una, Response::end)
    }

    fn ts(&self, now: u64) -> u32 {
        self.clock.1.wrapping_add((now - self.clock.0) as u32)
    }
}

struct Peer {
    alive: bool,
    /// The process is stopped (SIGSTOP): no control messages, but its kernel still sends.
    process_stopped: bool,
    refuse_restores: bool,
    conns: BTreeMap<FlowId, Conn>,
}

struct DataPlane {
    target: String,
    acked: u64,
    tsecr: u32,
    last_seen: u64,
}

struct Sim {
    now: u64,
    seq: u64,
    events: BinaryHeap<Reverse<(u64, u64)>>,
    payloads: BTreeMap<u64, Ev>,
    main: Conductor,
    peers: BTreeMap<String, Peer>,
    clients: BTreeMap<FlowId, Client>,
    plane: BTreeMap<FlowId, DataPlane>,
    truth: Vec<Response>,
    log: Vec<String>,
    prepares: u32,
}

struct SimEnv<'a> {
    plane: &'a BTreeMap<FlowId, DataPlane>,
    peers: Vec<String>,
    now: u64,
}

impl Env for SimEnv<'_> {
    fn observe(&self, flow: FlowId, _ledger: &Ledger) -> Option<Observation> {
        let p = self.plane.get(&flow)?;
        Some(Observation {
            acked: p.acked,
            client_next: 5040,
            window: 500,
            tsecr: Some(p.tsecr),
            idle: Duration::from_millis(self.now - p.last_seen),
        })
    }

    fn choose(&self, _flow: FlowId, _ledger: &Ledger, exclude: &BTreeSet<String>) -> Option<String> {
        self.peers.iter().find(|p| !exclude.contains(*p)).cloned()
    }
}

impl Sim {
    fn new(peers: &[&str], flows: &[(FlowId, &str)]) -> Self {
        let mut sim = Sim {
            now: 0,
            seq: 0,
            events: BinaryHeap::new(),
            payloads: BTreeMap::new(),
            main: Conductor::new(Timeouts {
                prepare: Duration::from_secs(5),
                heartbeat: Duration::from_millis(500),
                release: Duration::from_secs(2),
                restore: Duration::from_secs(1),
            })
            .with_standby(true),
            peers: BTreeMap::new(),
            clients: BTreeMap::new(),
            plane: BTreeMap::new(),
            truth: vec![response()],
            log: Vec::new(),
            prepares: 0,
        };
        for p in peers {
            sim.peers.insert(
                (*p).to_owned(),
                Peer { alive: true, process_stopped: false, refuse_restores: false, conns: BTreeMap::new() },
            );
            sim.main.peer_up(p, Duration::ZERO);
        }
        for &(flow, owner) in flows {
            // Sequence numbers near the wrap, so offsets must not be confused with sequences.
            let h = origin(flow, u32::MAX - 1_000_000);
            sim.main.adopt(owner, Ledger::new(&h));
            sim.plane.insert(flow, DataPlane { target: owner.to_owned(), acked: 0, tsecr: 1_000, last_seen: 0 });
            sim.clients.insert(
                flow,
                Client { rcv: 0, ts_recent: 1_000, last_new: 0, largest_gap: 0, duplicate: 0, paws_drops: 0, paused_until: 0 },
            );
            let conn = Conn { initial_window: None, snd_una: 0, snd_nxt: 0, pending: vec![response()], clock: (0, 1_000), last_progress: 0, release_deadline: None };
            sim.peers.get_mut(owner).expect("peer").conns.insert(flow, conn);
            sim.send(CONTROL, Ev::ToMain { from: owner.to_owned(), msg: MainMsg::Serving(flow, response()) });
        }
        sim
    }

    fn send(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((self.now + delay, self.seq)));
        self.payloads.insert(self.seq, ev);
    }

    fn now_d(&self) -> Duration {
        Duration::from_millis(self.now)
    }

    fn run_actions(&mut self) {
        for action in self.main.drain_actions() {
            match action {
                Action::Prepare { participant, flow, objects } => {
                    assert!(!objects.is_empty());
                    self.prepares += 1;
                    self.send(CONTROL, Ev::ToPeer { to: participant, msg: PeerMsg::Prepare(flow) })
                }
                Action::Release { participant, flow } => {
                    self.send(CONTROL, Ev::ToPeer { to: participant, msg: PeerMsg::Release(flow) })
                }
                Action::Forward { flow, participant } => {
                    if let Some(p) = self.plane.get_mut(&flow) {
                        p.target = participant;
                    }
                }
                Action::Freeze { flow } => {
                    if let Some(p) = self.plane.get_mut(&flow) {
                        p.target = String::new();
                    }
                }
                Action::Handoff { participant, handoff } => {
                    self.send(CONTROL, Ev::ToPeer { to: participant, msg: PeerMsg::Handoff(handoff) })
                }
                Action::ServeLocally { handoff } => self.log.push(format!("local {}", handoff.flow_id)),
                Action::Forget { flow, reason } => {
                    self.log.push(format!("forget {flow}: {reason}"));
                    self.plane.remove(&flow);
                }
            }
        }
    }

    /// Kills a participant: it stops sending; a killed process's control connection closes at
    /// once, a frozen machine's does not (only its heartbeats stop).
    fn kill(&mut self, name: &str, closes_control: bool) {
        if let Some(p) = self.peers.get_mut(name) {
            p.alive = false;
            p.conns.clear();
        }
        self.lose_control(name, closes_control);
    }

    /// Stops a participant's process but not its kernel: its heartbeats and reports stop, its
    /// connections keep sending what they can (and acting on ACKs that still reach them).
    fn stop_process(&mut self, name: &str) {
        if let Some(p) = self.peers.get_mut(name) {
            p.process_stopped = true;
        }
    }

    fn lose_control(&mut self, name: &str, closes_control: bool) {
        if closes_control {
            let now = self.now_d();
            let env = SimEnv { plane: &self.plane, peers: self.alive_peers(), now: self.now };
            self.main.peer_down(name, now, &env);
            self.run_actions();
        }
    }

    fn alive_peers(&self) -> Vec<String> {
        self.peers.iter().filter(|(_, p)| p.alive).map(|(n, _)| n.clone()).collect()
    }

    fn move_flow(&mut self, flow: FlowId, to: Option<&str>) -> Result<String, MoveError> {
        let now = self.now_d();
        let env = SimEnv { plane: &self.plane, peers: self.alive_peers(), now: self.now };
        let r = self.main.move_flow(flow, to, now, &env);
        self.run_actions();
        r
    }

    fn drain(&mut self, name: &str) -> usize {
        let now = self.now_d();
        let env = SimEnv { plane: &self.plane, peers: self.alive_peers(), now: self.now };
        let n = self.main.drain(name, now, &env);
        self.run_actions();
        n
    }

    fn done(&self) -> bool {
        let total = self.truth[0].end();
        self.clients.values().all(|c| c.rcv == total)
    }

    /// Runs until every client has everything or `limit` ms pass.
    fn run_until(&mut self, limit: u64) {
        while self.now < limit && !self.done() {
            self.step();
        }
    }

    fn step(&mut self) {
        self.now += 1;
        while let Some(Reverse((at, id))) = self.events.peek().copied() {
            if at > self.now {
                break;
            }
            self.events.pop();
            if let Some(ev) = self.payloads.remove(&id) {
                self.deliver(ev);
            }
        }
        self.peers_send();
        if self.now % HEARTBEAT == 0 {
            let alive: Vec<String> =
                self.peers.iter().filter(|(_, p)| p.alive && !p.process_stopped).map(|(n, _)| n.clone()).collect();
            for name in alive {
                self.send(CONTROL, Ev::ToMain { from: name, msg: MainMsg::Heartbeat });
            }
        }
        if self.now % 10 == 0 {
            let now = self.now_d();
            let env = SimEnv { plane: &self.plane, peers: self.alive_peers(), now: self.now };
            self.main.tick(now, &env);
            self.run_actions();
        }
    }

    fn deliver(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Data { flow, start, bytes, ts } => {
                let Some(c) = self.clients.get_mut(&flow) else { return };
                if (ts.wrapping_sub(c.ts_recent) as i32) < 0 {
                    c.paws_drops += 1;
                    return;
                }
                let end = start + bytes.len() as u64;
                if start <= c.rcv && end > c.rcv && now >= c.paused_until {
                    for (i, b) in bytes.iter().enumerate().skip((c.rcv - start) as usize) {
                        let at = start + i as u64;
                        assert_eq!(Some(*b), byte_at(&self.truth, at), "flow {flow}: wrong byte at {at}");
                    }
                    c.duplicate += c.rcv - start;
                    c.rcv = end;
                    c.largest_gap = c.largest_gap.max(now - c.last_new);
                    c.last_new = now;
                    c.ts_recent = ts;
                } else {
                    c.duplicate += bytes.len() as u64;
                }
                let (ack, tsecr) = (c.rcv, c.ts_recent);
                self.send(CLIENT_TO_MAIN, Ev::AckAtMain { flow, ack, tsecr });
            }
            Ev::AckAtMain { flow, ack, tsecr } => {
                let Some(p) = self.plane.get_mut(&flow) else { return };
                p.acked = p.acked.max(ack);
                p.tsecr = tsecr;
                p.last_seen = now;
                let to = p.target.clone();
                self.send(MAIN_TO_PEER, Ev::AckAtPeer { flow, to, ack });
            }
            Ev::AckAtPeer { flow, to, ack } => {
                let Some(peer) = self.peers.get_mut(&to).filter(|p| p.alive) else { return };
                // No socket for the flow: the participant's data plane drops the segment.
                let Some(conn) = peer.conns.get_mut(&flow) else { return };
                if ack > conn.snd_una && ack <= conn.snd_nxt {
                    // Slow start: the window grows by what each valid ACK acknowledges.
                    let acked = ack - conn.snd_una;
                    conn.initial_window = conn.initial_window.map(|w| w + acked).filter(|w| *w < WINDOW);
                    conn.snd_una = ack;
                    conn.last_progress = now;
                }
            }
            Ev::ToPeer { to, msg } => self.peer_receives(&to, msg),
            Ev::ToMain { from, msg } => {
                if !self.peers.get(&from).is_some_and(|p| p.alive && !p.process_stopped) {
                    return;
                }
                let nd = self.now_d();
                self.main.heard(&from, nd);
                let env = SimEnv { plane: &self.plane, peers: self.alive_peers(), now: self.now };
                match msg {
                    MainMsg::Heartbeat => {}
                    MainMsg::Prepared(flow) => self.main.prepared(&from, flow, nd),
                    MainMsg::Released(h) => self.main.released(&from, &h, nd, &env),
                    MainMsg::Restored(flow) => self.main.restored(&from, flow),
                    MainMsg::Serving(flow, r) => self.main.serving(&from, flow, r, &env).expect("contiguous"),
                }
                self.run_actions();
            }
        }
    }

    fn peer_receives(&mut self, to: &str, msg: PeerMsg) {
        let now = self.now;
        let Some(peer) = self.peers.get_mut(to).filter(|p| p.alive && !p.process_stopped) else { return };
        match msg {
            PeerMsg::Prepare(flow) => {
                // Filling a cache takes a while; the owner keeps serving meanwhile.
                self.send(PREPARE_TIME, Ev::ToMain { from: to.to_owned(), msg: MainMsg::Prepared(flow) });
            }
            PeerMsg::Release(flow) => {
                if let Some(c) = peer.conns.get_mut(&flow) {
                    c.release_deadline = Some(now + RELEASE_WAIT);
                }
            }
            PeerMsg::Handoff(h) => {
                if peer.refuse_restores {
                    let from = to.to_owned();
                    let nd = self.now_d();
                    let env = SimEnv { plane: &self.plane, peers: self.alive_peers(), now: self.now };
                    self.main.restore_failed(&from, h.flow_id, Some(h), nd, &env);
                    self.run_actions();
                    return;
                }
                let ledger = &self.main.flow(h.flow_id).expect("flow").ledger;
                assert_eq!(h.tcp.snd_seq, ledger.seq_of(h.snd_offset), "sequence matches the offset");
                assert_eq!(h.check(), Ok(()));
                let conn = Conn {
                    initial_window: Some(10 * SEGMENT),
                    snd_una: h.snd_offset,
                    snd_nxt: h.snd_offset,
                    pending: h.pending.clone(),
                    clock: (now, h.tcp.ts_val),
                    last_progress: now,
                    release_deadline: None,
                };
                peer.conns.insert(h.flow_id, conn);
                self.send(CONTROL, Ev::ToMain { from: to.to_owned(), msg: MainMsg::Restored(h.flow_id) });
            }
        }
    }

    fn peers_send(&mut self) {
        let now = self.now;
        let mut out = Vec::new();
        for (name, peer) in self.peers.iter_mut().filter(|(_, p)| p.alive) {
            let mut released = Vec::new();
            for (&flow, c) in peer.conns.iter_mut() {
                if let Some(deadline) = c.release_deadline {
                    if c.snd_una == c.snd_nxt || now >= deadline {
                        released.push(flow);
                    }
                    continue;
                }
                if now - c.last_progress > RTO && c.snd_nxt > c.snd_una {
                    c.snd_nxt = c.snd_una;
                    c.last_progress = now;
                }
                let mut budget = RATE;
                let window = c.initial_window.unwrap_or(WINDOW);
                while budget > 0 && c.snd_nxt < c.end() && c.snd_nxt - c.snd_una < window {
                    let len = SEGMENT.min(c.end() - c.snd_nxt).min(budget);
                    let bytes: Vec<u8> =
                        (c.snd_nxt..c.snd_nxt + len).map(|at| byte_at(&c.pending, at).expect("in pending")).collect();
                    out.push(Ev::Data { flow, start: c.snd_nxt, bytes, ts: c.ts(now) });
                    c.snd_nxt += len;
                    budget -= len;
                }
            }
            for flow in released {
                if let Some(c) = peer.conns.remove(&flow) {
                    let mut h = origin(flow, u32::MAX - 1_000_000);
                    h.tcp.snd_seq = h.tcp.snd_seq.wrapping_add(c.snd_una as u32);
                    h.tcp.ts_val = c.ts(now);
                    h.snd_offset = c.snd_una;
                    h.request.clear();
                    out.push(Ev::ToMain { from: name.clone(), msg: MainMsg::Released(h) });
                }
            }
        }
        for ev in out {
            let delay = if matches!(ev, Ev::Data { .. }) { TO_CLIENT } else { CONTROL };
            self.send(delay, ev);
        }
    }

    fn owner(&self, flow: FlowId) -> String {
        self.main.flow(flow).map(|f| f.owner.clone()).unwrap_or_default()
    }

    fn client(&self, flow: FlowId) -> &Client {
        &self.clients[&flow]
    }
}

fn ledger() -> Ledger {
    let mut l = Ledger::new(&origin(1, 100));
    l.record(response()).expect("first response");
    l
}

#[test]
fn ledger_consumes_input_and_resumes_inside_head_and_body() {
    let mut l = Ledger::new(&origin(1, 100));
    assert_eq!(l.input_start, 5040 - 39);
    l.record(response()).expect("first response");
    assert_eq!(l.input, b"12345".to_vec(), "the pipelined bytes stay input");
    assert_eq!(l.pending_at(0).expect("start").len(), 1);
    assert_eq!(l.pending_at(10).expect("inside the head")[0].start, 0);
    let end = response().end();
    assert_eq!(l.pending_at(end).expect("all sent"), Vec::<Response>::new());
    assert_eq!(l.pending_at(end + 1), Err(ResumeError::Ahead { at: end + 1, end }));
    let second = Response { start: end, request_end: 5045, keep_alive: false, head: b"HTTP/1.1 404\r\n\r\n".to_vec(), body: None };
    assert_eq!(l.record(Response { start: end + 1, ..second.clone() }), Err(LedgerError::NotContiguous { start: end + 1, expected: end }));
    l.record(second.clone()).expect("second");
    assert!(l.input.is_empty());
    l.acknowledge(end + 3);
    assert_eq!(l.responses.len(), 1, "the first response is acknowledged and dropped");
    assert_eq!(l.pending_at(end), Ok(vec![second.clone()]));
    assert_eq!(l.pending_at(end - 1), Err(ResumeError::Behind { at: end - 1, first: end }));
    assert_eq!(l.pending_at(end + 3).expect("in the second")[0], second);
}

#[test]
fn crash_rebuild_resumes_at_the_ack_with_rising_timestamps() {
    let mut l = ledger();
    let obs = Observation { acked: 123_456, client_next: 5040, window: 1000, tsecr: Some(u32::MAX - 10), idle: Duration::from_millis(30) };
    let h = l.after_crash(&obs).expect("resumable").expect("something left");
    assert_eq!(h.snd_offset, 123_456);
    assert_eq!(h.tcp.snd_seq, 100 + 123_456);
    assert_eq!(h.tcp.rcv_seq, 5040);
    assert_eq!(h.request, b"12345".to_vec());
    assert_eq!(h.tcp.window.snd_wnd, 1000 << 7);
    assert_eq!(h.tcp.ts_val, (u32::MAX - 10).wrapping_add(1030));
    assert!((h.tcp.ts_val.wrapping_sub(u32::MAX - 10) as i32) > 0, "TSval rises across the wrap");
    assert_eq!(h.check(), Ok(()));
    // The ledger now knows the client has everything before the ACK.
    assert_eq!(l.acked, 123_456);
    assert!(matches!(l.after_crash(&Observation { acked: 5, ..obs }), Ok(Some(h)) if h.snd_offset == 123_456));
}

#[test]
fn crash_after_the_closing_fin_was_acknowledged_needs_nothing() {
    let mut l = ledger();
    let end = response().end();
    l.record(Response { start: end, request_end: 5045, keep_alive: false, head: b"HTTP/1.1 404\r\n\r\n".to_vec(), body: None })
        .expect("second");
    let fin_end = l.sent_end() + 1;
    let obs = Observation { acked: fin_end, client_next: 5045, window: 10, tsecr: None, idle: MS };
    assert_eq!(l.after_crash(&obs), Ok(None));
}

#[test]
fn three_graceful_moves_deliver_every_byte_once_with_short_stalls() {
    let mut sim = Sim::new(&["a", "b", "c"], &[(1, "a")]);
    let plan = [(400, "b"), (900, "c"), (1400, "a")];
    for (at, to) in plan {
        sim.run_until(at);
        let target = sim.move_flow(1, Some(to)).expect("move accepted");
        assert_eq!(target, to);
        assert_eq!(sim.move_flow(1, None), Err(MoveError::Busy(1)), "one move at a time");
        sim.run_until(at + 450);
        assert_eq!(sim.owner(1), to);
        assert_eq!(sim.main.flow(1).map(|f| f.phase.clone()), Some(Phase::Active));
    }
    sim.run_until(20_000);
    assert!(sim.done(), "download completes: {:?}", sim.log);
    let c = sim.client(1);
    assert_eq!(c.paws_drops, 0);
    assert!(c.largest_gap <= RTT + 2 * CONTROL + 2, "stall {} ms, round trip {RTT} ms", c.largest_gap);
    assert_eq!(sim.main.counts().moves_done, 3);
    assert_eq!(sim.main.flow(1).map(|f| f.moves), Some(3));
    assert_eq!(sim.prepares, 1 + 3, "one standby prefetch, then one prepare per move");
}

#[test]
fn killed_owner_is_replaced_at_several_points() {
    for kill_at in [1, 35, 333, 700, 1200] {
        for closes_control in [true, false] {
            let mut sim = Sim::new(&["a", "b", "c"], &[(1, "a")]);
            sim.run_until(kill_at);
            let victim = sim.owner(1);
            sim.kill(&victim, closes_control);
            sim.run_until(20_000);
            assert!(sim.done(), "kill at {kill_at} ({closes_control}): {:?}", sim.log);
            let c = sim.client(1);
            assert_eq!(c.paws_drops, 0, "timestamps keep rising after a rebuild");
            let detect = if closes_control { 0 } else { 500 + 10 + HEARTBEAT };
            assert!(c.largest_gap <= detect + RTT + RTO + 50, "kill at {kill_at}: stall {} ms", c.largest_gap);
            assert_ne!(sim.owner(1), victim, "kill at {kill_at} ({closes_control}): {:?} {:?}", sim.log, sim.main.counts());
            assert_eq!(sim.main.counts().recoveries, 1);
        }
    }
}

#[test]
fn a_stopped_process_whose_kernel_still_sends_is_replaced() {
    // SIGSTOP: the control connection stays open and the kernel keeps the connection going;
    // only the heartbeats stop. The main must cut the old owner off before it rebuilds, or the
    // client would move past the point the new owner starts from.
    for stop_at in [200, 700, 1200] {
        let mut sim = Sim::new(&["a", "b", "c"], &[(1, "a")]);
        sim.run_until(stop_at);
        sim.stop_process("a");
        sim.run_until(20_000);
        assert!(sim.done(), "stop at {stop_at}: {:?}", sim.log);
        assert_ne!(sim.owner(1), "a");
        // The stopped owner's retransmissions carry older timestamps than the new owner's, so
        // the client's PAWS check discards them: as it should.
        assert!(sim.client(1).largest_gap <= 500 + 10 + HEARTBEAT + RTT + RTO + 50, "stall {}", sim.client(1).largest_gap);
    }
}

#[test]
fn drain_moves_every_flow_and_sends_nothing_new() {
    let flows: Vec<(FlowId, &str)> = (1..=6).map(|i| (i, "a")).collect();
    let mut sim = Sim::new(&["a", "b", "c"], &flows);
    sim.run_until(300);
    assert_eq!(sim.drain("a"), 6);
    assert!(!sim.main.accepts_new("a"));
    sim.run_until(20_000);
    assert!(sim.done());
    assert!(sim.main.flows_of("a").is_empty());
    assert!(sim.peers["a"].conns.is_empty());
    assert_eq!(sim.main.counts().moves_done, 6);
    sim.main.undrain("a");
    assert!(sim.main.accepts_new("a"));
}

#[test]
fn a_client_that_stops_reading_still_moves() {
    let mut sim = Sim::new(&["a", "b"], &[(1, "a")]);
    sim.run_until(300);
    // The client reads nothing for a second: the release wait runs out with bytes unacknowledged,
    // and the next owner sends them again.
    sim.clients.get_mut(&1).expect("client").paused_until = 1300;
    sim.move_flow(1, Some("b")).expect("move");
    sim.run_until(1000);
    assert_eq!(sim.owner(1), "b");
    sim.run_until(20_000);
    assert!(sim.done());
    assert_eq!(sim.main.counts().moves_done, 1);
}

#[test]
fn refused_restore_goes_to_the_next_participant() {
    let mut sim = Sim::new(&["a", "b", "c"], &[(1, "a")]);
    sim.peers.get_mut("b").expect("b").refuse_restores = true;
    sim.run_until(200);
    sim.move_flow(1, Some("b")).expect("move");
    sim.run_until(20_000);
    assert!(sim.done());
    assert_eq!(sim.owner(1), "c");
}

#[test]
fn moves_are_checked() {
    let mut sim = Sim::new(&["a", "b"], &[(1, "a")]);
    assert_eq!(sim.move_flow(2, None), Err(MoveError::NoFlow(2)));
    assert_eq!(sim.move_flow(1, Some("a")), Err(MoveError::AlreadyThere { flow: 1, participant: "a".into() }));
    assert_eq!(sim.move_flow(1, Some("zz")), Err(MoveError::Unavailable("zz".into())));
    sim.kill("b", true);
    assert_eq!(sim.move_flow(1, None), Err(MoveError::NoTarget(1)));
    // The last participant dies: the main serves the flow itself.
    sim.kill("a", true);
    let t = sim.now;
    sim.run_until(t + 600);
    assert_eq!(sim.main.counts().local, 1);
    assert!(sim.log.iter().any(|l| l == "local 1"));
}

#[test]
fn a_release_that_never_comes_is_abandoned() {
    let mut c = Conductor::new(Timeouts::default());
    struct NoEnv;
    impl Env for NoEnv {
        fn observe(&self, _: FlowId, _: &Ledger) -> Option<Observation> {
            None
        }
        fn choose(&self, _: FlowId, _: &Ledger, _: &BTreeSet<String>) -> Option<String> {
            None
        }
    }
    c.peer_up("a", Duration::ZERO);
    c.peer_up("b", Duration::ZERO);
    c.adopt("a", ledger());
    c.move_flow(1, Some("b"), Duration::ZERO, &NoEnv).expect("move");
    assert!(matches!(c.flow(1).map(|f| &f.phase), Some(Phase::Preparing { .. })), "the target caches first");
    assert!(matches!(c.poll_action(), Some(Action::Prepare { participant, .. }) if participant == "b"));
    c.prepared("c", 1, Duration::ZERO);
    assert!(c.poll_action().is_none(), "only the target's answer counts");
    c.prepared("b", 1, Duration::ZERO);
    assert!(matches!(c.poll_action(), Some(Action::Release { participant, .. }) if participant == "a"));
    c.heard("a", Duration::from_secs(5));
    c.heard("b", Duration::from_secs(5));
    c.tick(Duration::from_secs(5), &NoEnv);
    assert_eq!(c.flow(1).map(|f| (f.owner.as_str(), f.phase.clone())), Some(("a", Phase::Active)));
    assert_eq!(c.counts().moves_abandoned, 1);
    // A participant that never reconnects after a restart of the main loses its flows, and
    // with nothing to observe they are forgotten.
    c.peer_expected("a", Duration::from_secs(5), Duration::from_secs(2));
    c.tick(Duration::from_millis(6_900), &NoEnv);
    assert!(c.flow(1).is_some());
    c.tick(Duration::from_millis(7_100), &NoEnv);
    assert!(c.flow(1).is_none());
    assert_eq!(c.counts().lost, 1);
}

#[test]
fn a_crash_rebuild_waits_until_the_ack_stops_advancing_not_for_a_pause() {
    // A window-limited sender's last segments land in bursts a round trip apart: between
    // bursts the client is silent for longer than a pause, but its ACK is not final yet.
    struct Bursts(std::cell::Cell<Observation>);
    impl Env for Bursts {
        fn observe(&self, _: FlowId, _: &Ledger) -> Option<Observation> {
            Some(self.0.get())
        }
        fn choose(&self, _: FlowId, _: &Ledger, exclude: &BTreeSet<String>) -> Option<String> {
            (!exclude.contains("b")).then(|| "b".to_owned())
        }
    }
    let mut c = Conductor::new(Timeouts::default());
    c.peer_up("a", Duration::ZERO);
    c.peer_up("b", Duration::ZERO);
    let mut l = Ledger::new(&origin(1, 7));
    l.record(response()).expect("record");
    c.adopt("a", l);
    let obs = |acked: u64, idle_ms: u64| Observation { acked, client_next: 5040, window: 500, tsecr: Some(2_000), idle: Duration::from_millis(idle_ms) };
    let env = Bursts(std::cell::Cell::new(obs(100_000, 0)));
    c.peer_down("a", Duration::ZERO, &env);
    let handed = |c: &mut Conductor| c.drain_actions().into_iter().find_map(|a| match a {
        Action::Handoff { handoff, .. } => Some(handoff.snd_offset),
        _ => None,
    });
    assert_eq!(handed(&mut c), None, "not at the death");
    // Bursts every 60 ms, each followed by 50 ms of silence.
    let mut acked = 100_000;
    for step in 1..=5u64 {
        acked += 64_000;
        env.0.set(obs(acked, 0));
        c.tick(Duration::from_millis(step * 60 - 50), &env);
        env.0.set(obs(acked, 50));
        c.tick(Duration::from_millis(step * 60), &env);
        assert_eq!(handed(&mut c), None, "a 50 ms pause is no settled ACK (burst {step})");
    }
    // The ACK stands still, though window updates keep coming (idle stays small).
    let last = 5 * 60;
    env.0.set(obs(acked, 5));
    c.tick(Duration::from_millis(last) + SETTLE_QUIET / 2, &env);
    assert_eq!(handed(&mut c), None);
    c.tick(Duration::from_millis(last) + SETTLE_QUIET, &env);
    assert_eq!(handed(&mut c), Some(acked), "rebuilt at the final ACK");
}

#[test]
fn a_crash_rebuild_does_not_wait_past_the_limit() {
    struct Streaming(std::cell::Cell<u64>);
    impl Env for Streaming {
        fn observe(&self, _: FlowId, _: &Ledger) -> Option<Observation> {
            self.0.set(self.0.get() + 1_000);
            Some(Observation { acked: self.0.get(), client_next: 5040, window: 500, tsecr: None, idle: Duration::ZERO })
        }
        fn choose(&self, _: FlowId, _: &Ledger, _: &BTreeSet<String>) -> Option<String> {
            Some("b".to_owned())
        }
    }
    let mut c = Conductor::new(Timeouts::default());
    c.peer_up("a", Duration::ZERO);
    c.peer_up("b", Duration::ZERO);
    let mut l = Ledger::new(&origin(1, 7));
    l.record(response()).expect("record");
    c.adopt("a", l);
    let env = Streaming(std::cell::Cell::new(0));
    c.peer_down("a", Duration::ZERO, &env);
    let mut t = Duration::ZERO;
    while t < SETTLE_MAX {
        assert!(!c.drain_actions().iter().any(|a| matches!(a, Action::Handoff { .. })), "at {t:?}");
        t += Duration::from_millis(20);
        c.heard("b", t);
        c.tick(t, &env);
    }
    assert!(c.drain_actions().iter().any(|a| matches!(a, Action::Handoff { .. })), "handed over at the limit");
}

#[test]
fn a_flow_its_owner_does_not_serve_is_recovered_elsewhere() {
    struct Still;
    impl Env for Still {
        fn observe(&self, _: FlowId, _: &Ledger) -> Option<Observation> {
            Some(Observation { acked: 5_000, client_next: 5040, window: 500, tsecr: Some(9), idle: SETTLE_QUIET })
        }
        fn choose(&self, _: FlowId, _: &Ledger, exclude: &BTreeSet<String>) -> Option<String> {
            (!exclude.contains("b")).then(|| "b".to_owned())
        }
    }
    let mut c = Conductor::new(Timeouts::default());
    c.peer_up("a", Duration::ZERO);
    c.peer_up("b", Duration::ZERO);
    c.adopt("a", ledger());
    c.lost_by_owner("b", 1, Duration::ZERO, &Still);
    assert!(c.drain_actions().is_empty(), "only the owner's word counts");
    c.lost_by_owner("a", 1, Duration::ZERO, &Still);
    let actions = c.drain_actions();
    assert!(matches!(actions.first(), Some(Action::Freeze { flow: 1 })), "{actions:?}");
    assert!(actions.iter().any(|a| matches!(a, Action::Handoff { participant, handoff } if participant == "b" && handoff.snd_offset == 5_000)), "{actions:?}");
    assert_eq!(c.counts().recoveries, 1);
}
