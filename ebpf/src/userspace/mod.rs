//! The main's data plane without eBPF, for hosts that cannot load BPF programs: the same flow
//! table and rules as `main.bpf.c`, run by threads of `baton-main`.
//!
//! - **Receive:** an AF_PACKET socket on the VIP interface (and on `lo`, for the health
//!   probes) sees every arriving frame before netfilter does.
//! - **Decide:** [`packet`] parses the frame, records the client's ACK, window and timestamp
//!   echo in the flow's entry and decides as the BPF program does (pass, drop while frozen,
//!   forward).
//! - **Forward:** the client's IPv4 packet is encapsulated (IPIP or GUE, the same outer
//!   headers as the program's) and sent through a raw IPv4 socket, so the kernel routes it and
//!   resolves the neighbour.
//! - **Keep the kernel out:** an nftables set of the flows in the table ([`nft`]) drops their
//!   packets in `prerouting`, so the kernel, which has no socket for them any more, never
//!   answers them with a reset.
//!
//! The table is saved to [`STATE_FILE`] in the main's state directory shortly after each
//! change, and the
//! nftables table stays when the process ends, so a restarted main forwards the same flows.
//! Unlike the BPF data plane, nothing forwards while `baton-main` is down: the flows are held
//! (their packets dropped, the client retransmits) until it is back.
//!
//! Slower than the programs by design (one copy to user space and one system call per
//! forwarded packet). It holds no policy: it never removes a flow on its own, except a stale
//! entry that a new SYN from the same port replaces, as the program does.

pub(crate) mod nft;
pub mod packet;

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use baton_packet::{Frame, Options as SocketOptions, PacketSocket, RxBatch};
use tracing::{debug, info, warn};

use crate::error::DataplaneError;
use crate::main_dataplane::MainOptions;
use crate::types::{monotonic_now_ns, Encap, FlowKey, FlowSeed, FlowTarget, FlowValue, MainCounter, FLOW_MAP_MAX_ENTRIES};
use packet::ETHERNET_HEADER_BYTES;

/// The file in the main's state directory that holds the saved flow table.
pub const STATE_FILE: &str = "userspace-flows";
/// Longest a change to the table waits before it is saved.
pub const SAVE_INTERVAL: Duration = Duration::from_millis(100);
/// Frames read per `recvmmsg`.
const RX_BATCH: usize = 32;
/// Bytes of one receive buffer: the largest IPv4 packet (a GRO aggregate) and its Ethernet
/// header.
const FRAME_CAPACITY: usize = 65_535 + ETHERNET_HEADER_BYTES;
/// How often a receive thread looks at the stop flag while no frame arrives.
const POLL_MS: libc::c_int = 100;
/// The loopback interface, where the main's own probe connections arrive.
const LOOPBACK_IFACE: &str = "lo";
/// First bytes of a saved table.
const MAGIC: &[u8; 8] = b"BATONUS1";
/// Bytes of one saved entry: key (4+2+4+2), state, participant, has_ack, ack, wraps,
/// has_next_seq, next_seq.
const SAVED_ENTRY_BYTES: usize = 12 + 1 + 4 + 1 + 4 + 4 + 1 + 4;

/// What the receive threads share with the control side.
struct Inner {
    flows: Mutex<HashMap<FlowKey, FlowValue>>,
    counters: Vec<AtomicU64>,
    local: Ipv4Addr,
    encap: Encap,
    /// Raw IPv4 socket (`IPPROTO_RAW`: the packet carries its own header).
    raw: OwnedFd,
    stop: AtomicBool,
    dirty: AtomicBool,
    state_path: PathBuf,
}

/// The userspace data plane: the same operations as [`crate::MainDataplane`].
pub struct UserspaceDataplane {
    inner: Arc<Inner>,
    iface: String,
    ifindex: u32,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for UserspaceDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserspaceDataplane").field("iface", &self.iface).field("state", &self.inner.state_path).finish_non_exhaustive()
    }
}

fn io_err(action: &'static str) -> impl FnOnce(io::Error) -> DataplaneError {
    move |source| DataplaneError::Userspace { action, source }
}

impl UserspaceDataplane {
    /// Opens the sockets on `opts.iface`, restores the table saved by an earlier run (and the
    /// flows its nftables set still holds), makes sure the nftables table holds every flow in
    /// it, and starts forwarding. The table is saved in `state_dir` (created if missing).
    /// `opts.mode` and `opts.pin_dir` are not used.
    pub fn load(opts: &MainOptions, state_dir: &Path) -> Result<Self, DataplaneError> {
        let ifindex = crate::program::ifindex(&opts.iface)?;
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(io_err("opening a raw IPv4 socket (needs CAP_NET_RAW)")(io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let raw = unsafe { OwnedFd::from_raw_fd(fd) };
        let state_path = state_dir.join(STATE_FILE);
        let mut flows = load_table(&state_path)?;
        for key in nft::held()? {
            // Held by the kernel's rule but not saved (changed just before a crash): keep it
            // held; the main decides what becomes of it.
            flows.entry(key).or_insert_with(FlowValue::frozen);
        }
        let keys: Vec<FlowKey> = flows.keys().copied().collect();
        nft::ensure(&keys)?;
        if !flows.is_empty() {
            info!(flows = flows.len(), path = %state_path.display(), "userspace data plane: flows restored");
        }
        let inner = Arc::new(Inner {
            flows: Mutex::new(flows),
            counters: MainCounter::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            local: opts.local_addr,
            encap: opts.encap,
            raw,
            stop: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            state_path,
        });
        let plane = Self { inner, iface: opts.iface.clone(), ifindex, threads: Mutex::new(Vec::new()) };
        plane.spawn_receiver(&opts.iface)?;
        let saver = Arc::clone(&plane.inner);
        let handle = std::thread::Builder::new()
            .name("dp-save".into())
            .spawn(move || save_loop(&saver))
            .map_err(io_err("starting the table saver"))?;
        plane.threads.lock().map_err(|_| DataplaneError::Poisoned)?.push(handle);
        Ok(plane)
    }

    fn spawn_receiver(&self, iface: &str) -> Result<(), DataplaneError> {
        let socket = PacketSocket::open(iface, SocketOptions { promiscuous: false, auxdata: true }).map_err(|source| DataplaneError::Packet { source })?;
        let inner = Arc::clone(&self.inner);
        let name = format!("dp-{iface}");
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || receive_loop(&inner, &socket))
            .map_err(io_err("starting a receive thread"))?;
        self.threads.lock().map_err(|_| DataplaneError::Poisoned)?.push(handle);
        Ok(())
    }

    /// Also forwards the flows whose packets arrive on `lo` (the main's own health probes).
    pub fn attach_loopback(&self) -> Result<(), DataplaneError> {
        self.spawn_receiver(LOOPBACK_IFACE)
    }

    fn changed(&self) {
        self.inner.dirty.store(true, Ordering::Release);
    }

    /// Inserts or replaces a flow's entry; a new flow is held from the kernel before this
    /// returns.
    fn put(&self, key: &FlowKey, value: FlowValue) -> Result<(), DataplaneError> {
        let known = {
            let flows = self.inner.flows.lock().map_err(|_| DataplaneError::Poisoned)?;
            if !flows.contains_key(key) && flows.len() >= FLOW_MAP_MAX_ENTRIES as usize {
                return Err(DataplaneError::FlowTableFull { capacity: FLOW_MAP_MAX_ENTRIES });
            }
            flows.contains_key(key)
        };
        // Outside the lock: nft takes milliseconds, and the receive threads need the table.
        // Holding a flow twice is harmless; the table holds nothing the rule does not.
        if !known {
            nft::hold(key)?;
        }
        self.inner.flows.lock().map_err(|_| DataplaneError::Poisoned)?.insert(*key, value);
        self.changed();
        Ok(())
    }

    /// Marks a flow frozen (see [`crate::MainDataplane::freeze`]).
    pub fn freeze(&self, key: &FlowKey) -> Result<(), DataplaneError> {
        self.put(key, FlowValue::frozen())
    }

    /// See [`crate::MainDataplane::freeze_seeded`].
    pub fn freeze_seeded(&self, key: &FlowKey, seed: FlowSeed) -> Result<(), DataplaneError> {
        self.put(key, FlowValue::frozen_seeded(seed))
    }

    /// See [`crate::MainDataplane::forward`].
    pub fn forward(&self, key: &FlowKey, participant: Ipv4Addr) -> Result<(), DataplaneError> {
        // In place under one lock: a copy put back later would undo the observations the
        // receive threads made meanwhile.
        let mut flows = self.inner.flows.lock().map_err(|_| DataplaneError::Poisoned)?;
        if let Some(entry) = flows.get_mut(key) {
            *entry = entry.with_forward(participant);
            drop(flows);
            self.changed();
            return Ok(());
        }
        drop(flows);
        self.put(key, FlowValue::default().with_forward(participant))
    }

    /// See [`crate::MainDataplane::set_state`].
    pub fn set_state(&self, key: &FlowKey, target: FlowTarget) -> Result<(), DataplaneError> {
        let mut flows = self.inner.flows.lock().map_err(|_| DataplaneError::Poisoned)?;
        let entry = flows.get_mut(key).ok_or(DataplaneError::NoSuchFlow { key: *key })?;
        *entry = entry.with_target(target);
        drop(flows);
        self.changed();
        Ok(())
    }

    /// Forgets a flow; its packets go to the local stack again. Absent is fine.
    pub fn remove(&self, key: &FlowKey) -> Result<(), DataplaneError> {
        let removed = self.inner.flows.lock().map_err(|_| DataplaneError::Poisoned)?.remove(key).is_some();
        if removed {
            self.changed();
            nft::release(key)?;
        }
        Ok(())
    }

    /// The entry of one flow.
    pub fn get(&self, key: &FlowKey) -> Result<Option<FlowValue>, DataplaneError> {
        Ok(self.inner.flows.lock().map_err(|_| DataplaneError::Poisoned)?.get(key).copied())
    }

    /// Every flow in the table.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, DataplaneError> {
        Ok(self.inner.flows.lock().map_err(|_| DataplaneError::Poisoned)?.iter().map(|(k, v)| (*k, *v)).collect())
    }

    /// Every counter, in [`MainCounter::ALL`] order (the program's counters, same meanings).
    pub fn counters(&self) -> Result<Vec<(MainCounter, u64)>, DataplaneError> {
        Ok(MainCounter::ALL.iter().zip(&self.inner.counters).map(|(c, v)| (*c, v.load(Ordering::Relaxed))).collect())
    }

    /// Index of the VIP interface.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Name of the VIP interface.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Where the table is saved.
    pub fn state_path(&self) -> &Path {
        &self.inner.state_path
    }

    fn stop(&self) {
        self.inner.stop.store(true, Ordering::Release);
        let handles = match self.threads.lock() {
            Ok(mut threads) => std::mem::take(&mut *threads),
            Err(_) => Vec::new(),
        };
        for handle in handles {
            let _ = handle.join();
        }
    }

    /// Stops forwarding for a clean shutdown and removes the nftables table: the flows' packets
    /// reach the kernel again, which resets them (as detaching the program does). The saved
    /// table stays for a later load.
    pub fn detach(self) -> Result<(), DataplaneError> {
        self.stop();
        nft::remove_table()
    }
}

impl Drop for UserspaceDataplane {
    /// Stops the threads and saves the table; the nftables table stays, so the flows are held
    /// (not reset) until the next load.
    fn drop(&mut self) {
        self.stop();
        if let Err(e) = save_table(&self.inner) {
            warn!(error = %e, "userspace data plane: saving the flow table failed");
        }
    }
}

fn receive_loop(inner: &Inner, socket: &PacketSocket) {
    let mut batch = RxBatch::new(RX_BATCH, FRAME_CAPACITY);
    let mut out = Vec::with_capacity(FRAME_CAPACITY + 28);
    let mut scratch = Vec::with_capacity(FRAME_CAPACITY);
    while !inner.stop.load(Ordering::Acquire) {
        match socket.wait_readable(POLL_MS) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                warn!(error = %e, "userspace data plane: receive stopped");
                return;
            }
        }
        let n = match socket.receive(&mut batch) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "userspace data plane: receive stopped");
                return;
            }
        };
        for i in 0..n {
            match batch.frame(i) {
                Some(Frame::Data { bytes, csum_not_ready }) => inner.handle(bytes, csum_not_ready, &mut out, &mut scratch),
                Some(Frame::Oversize(_)) => inner.count(MainCounter::PassMalformed),
                None => {}
            }
        }
    }
}

impl Inner {
    fn count(&self, c: MainCounter) {
        if let Some(v) = self.counters.get(c.index() as usize) {
            v.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn handle(&self, frame: &[u8], csum_not_ready: bool, out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
        let outcome = match self.flows.lock() {
            Ok(mut flows) => packet::process(&mut flows, frame, csum_not_ready, self.local, self.encap, monotonic_now_ns(), out, scratch),
            Err(_) => return,
        };
        for c in &outcome.counters {
            self.count(*c);
        }
        if let Some(participant) = outcome.send {
            self.count(self.send(out, participant));
        }
        if let Some(key) = outcome.released {
            // This SYN met the rule already; the client's next one reaches the kernel.
            self.dirty.store(true, Ordering::Release);
            if let Err(e) = nft::release(&key) {
                warn!(error = %e, client = %key.client(), "userspace data plane: could not release a stale flow");
            }
        }
    }

    /// Sends one outer packet; the counter of the outcome.
    fn send(&self, packet: &[u8], participant: Ipv4Addr) -> MainCounter {
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(participant.octets()) },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `packet` is readable for its length; `addr` is a sockaddr_in of `len` bytes.
        let sent = unsafe { libc::sendto(self.raw.as_raw_fd(), packet.as_ptr().cast(), packet.len(), libc::MSG_DONTWAIT, std::ptr::from_ref(&addr).cast(), len) };
        if sent >= 0 {
            return MainCounter::ForwardOk;
        }
        let error = io::Error::last_os_error();
        debug!(error = %error, %participant, "userspace data plane: send failed");
        match error.raw_os_error() {
            Some(libc::EMSGSIZE) => MainCounter::DropFragNeeded,
            Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EHOSTDOWN) => MainCounter::DropFibFailed,
            _ => MainCounter::DropEncapFailed,
        }
    }
}

fn save_loop(inner: &Inner) {
    while !inner.stop.load(Ordering::Acquire) {
        std::thread::sleep(SAVE_INTERVAL);
        if inner.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = save_table(inner) {
                inner.dirty.store(true, Ordering::Release);
                warn!(error = %e, "userspace data plane: saving the flow table failed");
            }
        }
    }
}

/// Writes the table (keys, targets, ACK and sequence positions) atomically.
fn save_table(inner: &Inner) -> Result<(), DataplaneError> {
    let entries: Vec<(FlowKey, FlowValue)> = inner.flows.lock().map_err(|_| DataplaneError::Poisoned)?.iter().map(|(k, v)| (*k, *v)).collect();
    let mut buf = Vec::with_capacity(MAGIC.len() + entries.len() * SAVED_ENTRY_BYTES);
    buf.extend_from_slice(MAGIC);
    for (key, value) in &entries {
        encode_entry(&mut buf, key, value);
    }
    let path = &inner.state_path;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("creating the state directory"))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &buf).map_err(io_err("writing the flow table"))?;
    std::fs::rename(&tmp, path).map_err(io_err("replacing the flow table"))
}

fn encode_entry(buf: &mut Vec<u8>, key: &FlowKey, value: &FlowValue) {
    let (c, v) = (key.client(), key.vip());
    buf.extend_from_slice(&c.ip().octets());
    buf.extend_from_slice(&c.port().to_be_bytes());
    buf.extend_from_slice(&v.ip().octets());
    buf.extend_from_slice(&v.port().to_be_bytes());
    let (state, participant) = match value.target() {
        Some(FlowTarget::Forward(p)) => (2u8, p),
        _ => (1u8, Ipv4Addr::UNSPECIFIED),
    };
    buf.push(state);
    buf.extend_from_slice(&participant.octets());
    buf.push(u8::from(value.has_ack()));
    buf.extend_from_slice(&value.last_ack().to_be_bytes());
    buf.extend_from_slice(&value.ack_wraps().to_be_bytes());
    buf.push(u8::from(value.client_next_seq().is_some()));
    buf.extend_from_slice(&value.client_next_seq().unwrap_or(0).to_be_bytes());
}

/// Reads a table saved by [`save_table`]; a missing file is an empty table, a damaged one is
/// reported and ignored (the flows it named stay held by the nftables set).
fn load_table(path: &Path) -> Result<HashMap<FlowKey, FlowValue>, DataplaneError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(io_err("reading the saved flow table")(e)),
    };
    match decode_table(&bytes) {
        Some(t) => Ok(t),
        None => {
            warn!(path = %path.display(), "userspace data plane: the saved flow table does not parse; ignored");
            Ok(HashMap::new())
        }
    }
}

fn decode_table(bytes: &[u8]) -> Option<HashMap<FlowKey, FlowValue>> {
    let body = bytes.strip_prefix(MAGIC.as_slice())?;
    if body.len() % SAVED_ENTRY_BYTES != 0 {
        return None;
    }
    let u16_at = |b: &[u8], i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let ip_at = |b: &[u8], i: usize| Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]);
    let mut table = HashMap::new();
    for e in body.chunks_exact(SAVED_ENTRY_BYTES) {
        let key = FlowKey::new(std::net::SocketAddrV4::new(ip_at(e, 0), u16_at(e, 4)), std::net::SocketAddrV4::new(ip_at(e, 6), u16_at(e, 10)));
        let target = match e[12] {
            1 => FlowTarget::Frozen,
            2 => FlowTarget::Forward(ip_at(e, 13)),
            _ => return None,
        };
        let ack = (e[17] != 0).then(|| (u32_at(e, 18), u32_at(e, 22)));
        let next_seq = (e[26] != 0).then(|| u32_at(e, 27));
        table.insert(key, FlowValue::restored(target, ack, next_seq));
    }
    Some(table)
}

#[cfg(test)]
mod tests;
