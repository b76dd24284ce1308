//! The participant's control connection to the main and the handed-off connections it serves.
//!
//! For each handoff: make sure the object is cached and verified, restore the socket, serve at
//! once and report `Restored` — the main already forwards the client's packets here (segments
//! that arrived before the socket existed were dropped by the data plane, never reset). When the
//! object or the restore fails, the answer is `RestoreFailed` and nothing has been sent to the
//! client, so the main can answer it itself.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_ebpf::FlowKey;
use baton_io::control::{write_message, FrameReader};
use baton_io::histogram::Histogram;
use baton_io::http::ServeConfig;
use baton_io::repair::{close_silently, destroy_socket, restore_with_sent, RepairGuard, Resume};
use baton_io::session::{stream_bytes, Ending, PendingBody, Session};
use baton_io::store::Primed;
use baton_shared::control::{encode_frame, Load, Message};
use baton_shared::geo::Coord;
use baton_shared::handoff::{Handoff, ObjectPlan, TcpState};
use baton_shared::http::object_path;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::cache::{CacheStore, Published};
use crate::guard::Guard;

/// Interval between heartbeats: the main declares a participant dead after 500 ms of silence
/// by default, so several heartbeats fit in that window.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// Delay before reconnecting after the control connection fails (doubles up to the maximum).
/// Kept short: while the main restarts, every participant's flows wait for it to come back.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_millis(500);

/// Most bytes of queued messages the writer sends in one write. A handoff queues `Restored`,
/// `Serving` and often `FlowClosed` at once; sending what is queued together makes one TLS
/// record and one system call of them (and one read on the main). The bound keeps the buffer
/// small when a burst of reports is queued; rustls splits anything above 16 KiB into records.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Messages to the main, queued for the writer task. Unbounded: reports are produced by
/// serving tasks that must not wait for the control connection, and each is small.
type Outbound = mpsc::UnboundedSender<Message>;

/// Who this participant is, as it registers.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub addr: std::net::Ipv4Addr,
    pub coord: Coord,
    pub capacity: u32,
    /// Port of its plain-HTTP mirror on `addr` (0: none), which the main advertises.
    pub mirror_port: u16,
}

/// What the agent counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub restored: AtomicU64,
    pub refused: AtomicU64,
    pub released: AtomicU64,
    pub finished: AtomicU64,
    pub body_bytes: AtomicU64,
    pub prepared: AtomicU64,
    pub prepare_failed: AtomicU64,
    /// New connections only (not moves): from the Handoff message being read off the control
    /// connection to the socket restored and `Restored` queued for the main.
    pub restore_step: Histogram,
    /// New connections only: from the Handoff message being read to the first response byte
    /// handed to the restored socket (observed as the session reports the response, which it
    /// does just before its first write, in the same poll).
    pub first_byte_step: Histogram,
}

/// How long the TLS handshake with the main may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Heartbeats between two walks of the cache directory for its size (a walk costs a
/// `stat` per object; the size changes slowly).
const CACHE_SIZE_EVERY: u32 = 50;

/// Turns the agent's counters into the load figures each heartbeat carries.
#[derive(Debug, Default)]
struct LoadMeter {
    last: Option<(std::time::Instant, u64)>,
    beats: u32,
    cache_bytes: u64,
}

impl LoadMeter {
    fn sample(&mut self, agent: &Agent) -> Load {
        let now = std::time::Instant::now();
        let sent = agent.stats.body_bytes.load(Ordering::Relaxed);
        let bytes_per_sec = match self.last {
            Some((at, before)) => {
                let secs = now.duration_since(at).as_secs_f64();
                if secs > 0.0 { (sent.saturating_sub(before) as f64 / secs) as u64 } else { 0 }
            }
            None => 0,
        };
        self.last = Some((now, sent));
        if self.beats % CACHE_SIZE_EVERY == 0 {
            self.cache_bytes = dir_bytes(agent.cache.root());
        }
        self.beats = self.beats.wrapping_add(1);
        Load {
            active_flows: agent.active.load(Ordering::Relaxed),
            bytes_per_sec,
            load_avg_milli: load_average_milli().unwrap_or(0),
            cache_bytes: self.cache_bytes,
        }
    }
}

/// The one-minute load average × 1000, from /proc/loadavg.
fn load_average_milli() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let first: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some((first * 1000.0).round().clamp(0.0, f64::from(u32::MAX)) as u32)
}

/// Bytes of the regular files below `root` (symlinks not followed).
fn dir_bytes(root: &std::path::Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for entry in rd.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    total
}

/// State shared by the agent's tasks.
#[derive(Debug)]
pub struct Agent {
    pub identity: Identity,
    pub main: SocketAddrV4,
    /// Mutual TLS with the cluster CA for the control connection.
    tls: Arc<rustls::ClientConfig>,
    pub cache: CacheStore,
    pub serve: ServeConfig,
    pub active: AtomicU32,
    pub stats: AgentStats,
    guard: Guard,
    /// Stop switches of the connections being served, by flow id.
    flows: Mutex<HashMap<u64, watch::Sender<bool>>>,
    /// The current control connection's outbound queue, if connected.
    outbound: Mutex<Option<Outbound>>,
}

impl Agent {
    pub fn new(
        identity: Identity,
        main: SocketAddrV4,
        tls: Arc<rustls::ClientConfig>,
        cache: CacheStore,
        serve: ServeConfig,
        guard: Guard,
    ) -> Arc<Self> {
        Arc::new(Self {
            tls,
            identity,
            main,
            cache,
            serve,
            active: AtomicU32::new(0),
            stats: AgentStats::default(),
            guard,
            flows: Mutex::new(HashMap::new()),
            outbound: Mutex::new(None),
        })
    }

    /// Keeps a control connection to the main, reconnecting with backoff, forever.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = RECONNECT_MIN;
        loop {
            match self.clone().session().await {
                Ok(()) => {
                    info!("control connection closed by the main");
                    backoff = RECONNECT_MIN;
                }
                Err(e) => warn!(error = %e, main = %self.main, "control connection failed"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
    }

    /// Sends a message on the current control connection (dropped when there is none).
    fn send(&self, msg: Message) {
        if let Some(tx) = self.outbound.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = tx.send(msg);
        }
    }

    async fn session(self: Arc<Self>) -> std::io::Result<()> {
        let stream = TcpStream::connect(self.main).await?;
        let _ = stream.set_nodelay(true);
        let stream = baton_io::tls::connect(self.tls.clone(), stream, TLS_HANDSHAKE_TIMEOUT)
            .await
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string()))?;
        let (rd, mut wr) = tokio::io::split(stream);
        let mut reader = FrameReader::new(rd);
        let id = &self.identity;
        write_message(
            &mut wr,
            &Message::Register {
                name: id.name.clone(),
                addr: id.addr,
                coord: id.coord,
                capacity: id.capacity,
                mirror_port: id.mirror_port,
            },
        )
        .await?;
        match reader.next().await? {
            Some(Message::Registered { participant_id }) => info!(participant_id, "registered with the main"),
            Some(Message::Rejected { reason }) => {
                return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, format!("main rejected us: {reason}")))
            }
            other => {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unexpected answer {other:?}")))
            }
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        *self.outbound.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        let writer = tokio::spawn(async move {
            let mut out = Vec::with_capacity(4096);
            while let Some(msg) = rx.recv().await {
                out.clear();
                encode_frame(&msg, &mut out);
                while out.len() < WRITE_BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(more) => encode_frame(&more, &mut out),
                        Err(_) => break,
                    }
                }
                if wr.write_all(&out).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
            }
        });
        let hb_tx = tx.clone();
        let me = self.clone();
        let heartbeat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
            let mut meter = LoadMeter::default();
            loop {
                tick.tick().await;
                let load = meter.sample(&me);
                if hb_tx.send(Message::Heartbeat(load)).is_err() {
                    break;
                }
            }
        });
        let result = loop {
            match reader.next().await {
                Ok(Some(Message::Handoff(h))) => {
                    let received = Instant::now();
                    let flow = h.flow_id;
                    let me = self.clone();
                    tokio::spawn(async move { me.take_over(h, received).await }.instrument(info_span!("flow", flow)));
                }
                Ok(Some(Message::Prepare { flow_id, objects })) => {
                    let me = self.clone();
                    tokio::spawn(async move { me.prepare(flow_id, objects).await }.instrument(info_span!("flow", flow = flow_id)));
                }
                Ok(Some(Message::Release { flow_id })) => {
                    if !self.release(flow_id) {
                        let _ = tx.send(Message::ReleaseFailed { flow_id, reason: baton_shared::control::NOT_SERVED_HERE.to_owned() });
                    }
                }
                Ok(Some(other)) => warn!(message = ?other, "unexpected control message"),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        *self.outbound.lock().unwrap_or_else(|p| p.into_inner()) = None;
        heartbeat.abort();
        writer.abort();
        result
    }

    async fn take_over(self: Arc<Self>, h: Handoff, received: Instant) {
        let flow_id = h.flow_id;
        let client = h.tcp.remote;
        // A first handoff of a new connection, not a move's (those resume pending responses).
        let fresh = h.snd_offset == 0 && h.in_flight == 0 && h.pending.is_empty();
        let t0 = received;
        // The objects, cached and verified before the connection is restored: if one cannot be
        // had, the sender still holds the connection (or its state) and gives it to someone else.
        let mut primed = None;
        if let Some(plan) = &h.object {
            let path = match object_path(&format!("/{}", plan.path)) {
                Ok(p) => p,
                Err(e) => return self.refuse(flow_id, format!("bad object path: {e}")),
            };
            match self.cache.get(&path, Some(Published::from(plan))).await {
                Ok(Some(obj)) => primed = Some((path, obj)),
                Ok(None) => return self.refuse(flow_id, "origin has no such object".to_owned()),
                Err(e) => return self.refuse(flow_id, e.to_string()),
            }
        }
        let mut pending = Vec::with_capacity(h.pending.len());
        for response in &h.pending {
            let file = match &response.body {
                None => None,
                Some(body) => {
                    let path = match object_path(&format!("/{}", body.object.path)) {
                        Ok(p) => p,
                        Err(e) => return self.refuse(flow_id, format!("bad object path: {e}")),
                    };
                    match self.cache.get(&path, Some(Published::from(&body.object))).await {
                        Ok(Some(obj)) => Some(obj.file),
                        Ok(None) => return self.refuse(flow_id, "origin has no such object".to_owned()),
                        Err(e) => return self.refuse(flow_id, e.to_string()),
                    }
                }
            };
            pending.push(PendingBody { response: response.clone(), file });
        }
        let cached = t0.elapsed();
        let key = self.guard_key(&h);
        // Owned before the socket exists: from now on this host's kernel never sends a FIN or
        // RST on the connection unless this process says so (a crash stays silent).
        self.guard.own(key);
        // What the previous owner had in flight goes back into the send queue, as sent.
        let sent = if h.in_flight > 0 {
            match stream_bytes(&pending, h.snd_offset, h.in_flight as usize) {
                Ok(b) => b,
                Err(e) => return self.refuse(flow_id, format!("bytes in flight: {e}")),
            }
        } else {
            Vec::new()
        };
        let fd = match restore_over_orphan(&h.tcp, &sent) {
            Ok(fd) => fd,
            Err(e) => {
                self.guard.remove(key);
                return self.refuse(flow_id, format!("restore failed: {e}"));
            }
        };
        let restored = t0.elapsed();
        if let Err(e) = set_nonblocking(&fd) {
            close_silently(fd);
            self.guard.remove(key);
            return self.refuse(flow_id, format!("restored socket: {e}"));
        }
        let mut stream = match TcpStream::from_std(std::net::TcpStream::from(fd)) {
            Ok(s) => s,
            Err(e) => {
                self.guard.remove(key);
                return self.refuse(flow_id, format!("registering the restored socket: {e}"));
            }
        };
        let _ = stream.set_nodelay(true);
        let (stop_tx, stop_rx) = watch::channel(false);
        self.flows.lock().unwrap_or_else(|p| p.into_inner()).insert(flow_id, stop_tx);
        self.active.fetch_add(1, Ordering::Relaxed);
        // Serve first, report second: the client's next byte does not wait for the report.
        self.stats.restored.fetch_add(1, Ordering::Relaxed);
        self.send(Message::Restored { flow_id });
        let answered = t0.elapsed();
        if fresh {
            self.stats.restore_step.observe(answered);
        }
        let me = self.clone();
        // The session reports each response right before writing its first byte.
        let mut first_byte = fresh.then_some(t0);
        let first_byte_us = AtomicU64::new(0);
        let first_byte_seen = &first_byte_us;
        let mut report = move |response| {
            if let Some(t) = first_byte.take() {
                let d = t.elapsed();
                me.stats.first_byte_step.observe(d);
                first_byte_seen.store(d.as_micros() as u64, Ordering::Relaxed);
            }
            me.send(Message::Serving { flow_id, response })
        };
        let ended = {
            let snd_offset = h.snd_offset + u64::from(h.in_flight);
            let (rcv_seq, input) = (h.tcp.rcv_seq, h.request);
            match primed {
                Some((path, obj)) => {
                    let source = Primed::new(&self.cache, path, obj);
                    Session::new(&mut stream, &source, &self.serve, snd_offset, rcv_seq, input, stop_rx, &mut report)
                        .before_close(|| self.guard.remove(key))
                        .resume(pending)
                        .await
                }
                None => {
                    Session::new(&mut stream, &self.cache, &self.serve, snd_offset, rcv_seq, input, stop_rx, &mut report)
                        .before_close(|| self.guard.remove(key))
                        .resume(pending)
                        .await
                }
            }
        };
        self.flows.lock().unwrap_or_else(|p| p.into_inner()).remove(&flow_id);
        self.active.fetch_sub(1, Ordering::Relaxed);
        match ended {
            Ok(Ending::Finished(s)) => {
                self.stats.finished.fetch_add(1, Ordering::Relaxed);
                self.stats.body_bytes.fetch_add(s.body_bytes, Ordering::Relaxed);
                info!(
                    %client,
                    requests = s.requests,
                    bytes = s.body_bytes,
                    cache_us = cached.as_micros() as u64,
                    restore_us = (restored - cached).as_micros() as u64,
                    answered_us = answered.as_micros() as u64,
                    first_byte_us = first_byte_us.load(Ordering::Relaxed),
                    "handed-off connection done"
                );
                self.close(stream, key);
                self.send(Message::FlowClosed { flow_id, bytes_sent: s.body_bytes });
            }
            Ok(Ending::Stopped { unread, offset }) => {
                self.give_back(stream, key, flow_id, unread, offset).await;
            }
            Err(e) => {
                info!(%client, error = %e, "connection ended");
                self.close(stream, key);
                self.send(Message::FlowClosed { flow_id, bytes_sent: 0 });
            }
        }
    }

    /// Caches and verifies objects a flow will need here (a move's target, a flow's standby).
    async fn prepare(&self, flow_id: u64, objects: Vec<ObjectPlan>) {
        let t0 = std::time::Instant::now();
        for o in &objects {
            let got = match object_path(&format!("/{}", o.path)) {
                Ok(path) => self.cache.get(&path, Some(Published::from(o))).await.map_err(|e| e.to_string()),
                Err(e) => Err(format!("bad object path: {e}")),
            };
            match got {
                Ok(Some(_)) => {}
                Ok(None) => {
                    self.stats.prepare_failed.fetch_add(1, Ordering::Relaxed);
                    return self.send(Message::PrepareFailed { flow_id, reason: format!("origin has no {}", o.path) });
                }
                Err(reason) => {
                    self.stats.prepare_failed.fetch_add(1, Ordering::Relaxed);
                    return self.send(Message::PrepareFailed { flow_id, reason });
                }
            }
        }
        debug!(objects = objects.len(), ms = t0.elapsed().as_millis() as u64, "prepared");
        self.stats.prepared.fetch_add(1, Ordering::Relaxed);
        self.send(Message::Prepared { flow_id });
    }

    /// Closes a finished connection the ordinary way: the guard goes first, so its FIN (or
    /// RST) may leave this host.
    fn close(&self, stream: TcpStream, key: FlowKey) {
        self.guard.remove(key);
        drop(stream);
    }

    /// Stopped for a move: freezes the socket at once, closes it silently and sends its state
    /// to the main. Nothing waits for the client's acknowledgements: the bytes still in flight
    /// travel in the record and the next owner's kernel takes them over.
    async fn give_back(&self, stream: TcpStream, key: FlowKey, flow_id: u64, mut unread: Vec<u8>, offset: u64) {
        let t0 = std::time::Instant::now();
        self.guard.freeze(key);
        let frozen = RepairGuard::enter(&stream).and_then(|g| {
            let frozen = g.freeze_for_move();
            g.close_silently();
            frozen
        });
        drop(stream);
        match frozen {
            Ok(f) => {
                unread.extend_from_slice(&f.unread);
                let handoff = Handoff {
                    flow_id,
                    tcp: f.tcp,
                    request: unread,
                    object: None,
                    snd_offset: offset.saturating_sub(u64::from(f.unacked)),
                    in_flight: f.in_flight,
                    pending: Vec::new(),
                };
                info!(
                    unacked = f.unacked,
                    in_flight = f.in_flight,
                    offset = handoff.snd_offset,
                    freeze_us = t0.elapsed().as_micros() as u64,
                    "connection released"
                );
                self.stats.released.fetch_add(1, Ordering::Relaxed);
                self.send(Message::Released(handoff));
            }
            Err(e) => {
                // The socket is closed either way: the main must recover the flow, not leave it here.
                warn!(error = %e, "could not freeze the connection for a move; it is not served here any more");
                self.send(Message::ReleaseFailed { flow_id, reason: baton_shared::control::NOT_SERVED_HERE.to_owned() });
            }
        }
        self.guard.remove(key);
    }

    fn refuse(&self, flow_id: u64, reason: String) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        warn!(reason = %reason, "refusing handoff");
        self.send(Message::RestoreFailed { flow_id, reason });
    }

    fn guard_key(&self, h: &Handoff) -> FlowKey {
        FlowKey::new(h.tcp.remote, h.tcp.local)
    }

    /// Asks a served connection to stop for a move; false when it is not served here.
    pub fn release(&self, flow_id: u64) -> bool {
        let flows = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        match flows.get(&flow_id) {
            Some(stop) => stop.send(true).is_ok(),
            None => false,
        }
    }

    /// Asks every served connection to stop and be given back (a graceful shutdown).
    pub fn release_all(&self) -> usize {
        let flows = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        flows.values().filter(|stop| stop.send(true).is_ok()).count()
    }

    /// Connections being served.
    pub fn serving(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
}

/// Restores the connection; when a socket of this host still holds its 4-tuple (the orphan of
/// a participant process that was killed while serving it), that socket is destroyed and the
/// restore tried once more.
fn restore_over_orphan(tcp: &TcpState, sent: &[u8]) -> Result<std::os::fd::OwnedFd, baton_io::repair::RepairError> {
    match restore_with_sent(tcp, Resume::Quiet, sent) {
        Err(e) if e.is_address_taken() => {
            match destroy_socket(tcp.local, tcp.remote) {
                Ok(found) => info!(found, "destroyed the stale socket holding the connection's addresses"),
                Err(err) => warn!(error = %err, "could not destroy the stale socket"),
            }
            restore_with_sent(tcp, Resume::Quiet, sent)
        }
        other => other,
    }
}

fn set_nonblocking(fd: &std::os::fd::OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: FIONBIO reads one int; the descriptor is open.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONBIO, &on) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
