//! The VIP listener: accept a client, read its request, pick a participant and hand the live
//! connection over with TCP_REPAIR; serve the request here whenever that is not possible.
//!
//! Ordering is what keeps the client unaware: the flow is FROZEN in the data plane before the
//! dump (the kernel sees none of the client's packets from then on) and FORWARD right after it,
//! before the participant is told, so the participant can write the moment it has restored the
//! socket and every ACK already reaches it (its data plane drops, never resets, segments that
//! come before the socket exists). The main closes its copy in repair mode (no FIN, no RST) once
//! the participant reports the restore. A failure before the handoff is sent, or a reported
//! failed restore, unfreezes the flow and the main answers the request itself on the same
//! connection.
//!
//! Mirror discovery is never handed off: a HEAD of an object and a `<path>.meta4` Metalink
//! document are answered here ([`crate::mirror`]), and the connection's next request is read
//! and dealt with the same way.

use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_ebpf::{FlowKey, FlowSeed, FlowTarget};
use baton_io::http::{read_head, send_all, serve_connection, HeadRead};
use baton_io::repair::{check_quiescent, RepairGuard};
use baton_shared::control::Message;
use baton_shared::handoff::{Handoff, ObjectPlan, MAX_HANDOFF_REQUEST_BYTES};
use baton_shared::http::{object_path, plan_error_response, Method, RequestHead};
use baton_shared::moves::Ledger;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::registry::RestoreAnswer;
use crate::state::{FlowRecord, Shared};

/// Connections the VIP listener serves at once before it stops accepting (mini-redis style cap;
/// handed-off connections do not count, they leave the main within one handoff).
pub const MAX_VIP_CONNECTIONS: usize = 10_000;
/// Attempts to drain bytes that raced into the receive queue before the flow froze.
const QUIESCE_ATTEMPTS: usize = 4;
/// Largest read of one drain attempt: more than a request head may be, so one attempt takes
/// a whole pipelined request.
const DRAIN_CHUNK_BYTES: usize = 16 * 1024;

/// Why a handoff did not happen; the main then serves the request itself.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("no participant can serve")]
    NoParticipant,
    #[error("data plane: {0}")]
    Dataplane(String),
    /// The data plane's flow table is full: the connection stays with the main.
    #[error("the data plane's flow table is full")]
    FlowTableFull,
    #[error("tcp repair: {0}")]
    Repair(#[from] baton_io::repair::RepairError),
    #[error("request of {0} bytes is too large to hand off")]
    RequestTooLarge(usize),
    #[error("control channel: {0}")]
    Control(#[from] crate::registry::RegistryError),
    #[error("participant refused the restore: {0}")]
    Refused(String),
    #[error("participant did not answer within {0:?}")]
    Timeout(Duration),
    #[error("reading the client: {0}")]
    Io(#[from] std::io::Error),
}

/// A completed handoff: who took the flow, and how long each step took.
#[derive(Debug)]
struct Handed {
    participant: String,
    steps: Steps,
}

/// Durations of the handoff's steps: selection, freeze through dump, and the participant's
/// restore report (the participant is already serving when it arrives).
#[derive(Debug, Clone, Copy)]
struct Steps {
    select: Duration,
    dump: Duration,
    control: Duration,
}

/// Binds the VIP listener with the MSS clamped so that a client's segments still fit the path MTU
/// once the main's data plane adds its encapsulation header.
pub fn bind_vip(addr: SocketAddrV4, mss: u16) -> std::io::Result<TcpListener> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    let mss = libc::c_int::from(mss);
    // SAFETY: setsockopt with a valid int pointer and its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mss as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    sock.bind(SocketAddr::V4(addr))?;
    sock.listen(1024)
}

/// Accepts clients on the VIP until the process ends.
pub async fn run(listener: TcpListener, shared: Arc<Shared>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_VIP_CONNECTIONS));
    let mut backoff = Duration::from_millis(1);
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, SocketAddr::V4(peer))) => {
                backoff = Duration::from_millis(1);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let span = info_span!("client", client = %peer);
                    handle(stream, peer, shared).instrument(span).await;
                    drop(permit);
                });
            }
            Ok((_, peer)) => debug!(%peer, "ignoring a non-IPv4 client"),
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

static NEXT_FLOW: AtomicU64 = AtomicU64::new(1);

/// Makes new flow ids start above `id` (flows reloaded after a restart keep theirs).
pub fn reserve_flow_ids_through(id: u64) {
    NEXT_FLOW.fetch_max(id.saturating_add(1), Ordering::Relaxed);
}

async fn handle(mut stream: TcpStream, peer: SocketAddrV4, shared: Arc<Shared>) {
    // TCP_NODELAY only matters when the main itself answers (a mirror answer, a local serve);
    // a handed-off socket is never written here, so it is set on those paths alone.
    let cfg = shared.serve.clone();
    let mut buf = Vec::new();
    let mut accepted = Instant::now();
    let mut head_read: Duration;
    // Mirror discovery (a HEAD of an object, a Metalink document) is answered here and the
    // connection's next request read; the first other request goes on below, as a connection's
    // first request always did.
    let (head, plan) = loop {
        // The head stays in `buf`: it travels with a handoff, or the local session reads it again.
        let (head, len) = match read_head(&mut stream, &mut buf, cfg.head_timeout).await {
            Ok(HeadRead::Head { head, len }) => {
                head_read = accepted.elapsed();
                (head, len)
            }
            Ok(HeadRead::Closed) => return,
            Ok(HeadRead::Invalid(e)) => {
                info!(status = e.status(), error = %e, "bad request head");
                let _ = send_all(&stream, &plan_error_response(e.status(), false, &cfg.server_name).head, cfg.send_timeout).await;
                return;
            }
            Ok(HeadRead::TimedOut) => {
                info!("request head timed out");
                if !buf.is_empty() {
                    let _ = send_all(&stream, &plan_error_response(408, false, &cfg.server_name).head, cfg.send_timeout).await;
                }
                return;
            }
            Err(e) => {
                debug!(error = %e, "client went away");
                return;
            }
        };
        // A GET of an object that exists is never mirror discovery (the mirror module answers
        // only HEADs of objects and `.meta4` documents): plan the handoff first and skip the
        // mirror lookup, so the object is opened once per request, not twice.
        let planned = if head.method == Method::Get { handoff_plan(&head, &shared).await } else { None };
        if planned.is_some() {
            break (head, planned);
        }
        let Some(answer) = mirror_answer(&stream, &head, peer, &shared).await else {
            // A GET was planned above already and found nothing to hand off.
            let plan = if head.method == Method::Get { None } else { handoff_plan(&head, &shared).await };
            break (head, plan);
        };
        let _ = stream.set_nodelay(true);
        shared.metrics.mirror_answers.add(answer.kind.label());
        debug!(kind = answer.kind.label(), status = answer.plan.status, target = %head.target, "answered mirror discovery");
        if let Err(e) = send_all(&stream, &answer.plan.head, cfg.send_timeout).await {
            debug!(error = %e, "client went away");
            return;
        }
        if !answer.plan.keep_alive {
            let _ = stream.shutdown().await;
            return;
        }
        buf.drain(..len);
        accepted = Instant::now();
    };
    // The main's own health probe names the participant it tests.
    let probe = crate::probe::probed_participant(&head, *peer.ip(), shared.local_addr);
    if let Some(plan) = plan {
        let flow_id = NEXT_FLOW.fetch_add(1, Ordering::Relaxed);
        let span = match &probe {
            Some(p) => info_span!("flow", flow = flow_id, probe = %p),
            None => info_span!("flow", flow = flow_id),
        };
        let is_probe = probe.is_some();
        // On failure `buf` also holds what the handoff drained from the receive queue, so the
        // local serve below answers every byte the client sent.
        match try_handoff(&mut stream, peer, flow_id, &mut buf, plan, probe, &shared).instrument(span.clone()).await {
            Ok(Handed { participant, steps }) => {
                // Logged after the commit: the participant is already serving.
                if is_probe {
                    shared.probe_flows.lock().unwrap_or_else(|p| p.into_inner()).insert(flow_id);
                    debug!(%participant, "probe handed off");
                    return;
                }
                let total = accepted.elapsed();
                crate::metrics::HANDOFF_STEPS.observe(head_read, steps.select, steps.dump, steps.control, total);
                span.in_scope(|| {
                    info!(
                        %participant,
                        head_read_us = head_read.as_micros() as u64,
                        select_us = steps.select.as_micros() as u64,
                        dump_us = steps.dump.as_micros() as u64,
                        control_us = steps.control.as_micros() as u64,
                        total_us = total.as_micros() as u64,
                        "handed off"
                    )
                });
                shared.metrics.handoffs.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) if is_probe => span.in_scope(|| debug!(error = %e, "probe not handed off")),
            Err(e) => {
                span.in_scope(|| info!(error = %e, "serving locally"));
                shared.metrics.local_serves.fetch_add(1, Ordering::Relaxed);
                if !matches!(e, HandoffError::NoParticipant) {
                    shared.metrics.handoff_failures.fetch_add(1, Ordering::Relaxed);
                }
                if matches!(e, HandoffError::FlowTableFull) {
                    shared.metrics.flow_table_full.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    // Serve here: this request, then the rest of the connection.
    let _ = stream.set_nodelay(true);
    if let Err(e) = serve_connection(&mut stream, buf, &shared.origin, &cfg).await {
        debug!(error = %e, "connection ended");
    }
}

/// The main's own answer when `head` is mirror discovery (see [`crate::mirror::answer`]); never
/// for the main's health probes, which must reach the participant they name.
async fn mirror_answer(stream: &TcpStream, head: &RequestHead, peer: SocketAddrV4, shared: &Shared) -> Option<crate::mirror::Answer> {
    if crate::probe::probed_participant(head, *peer.ip(), shared.local_addr).is_some() {
        return None;
    }
    let SocketAddr::V4(vip) = stream.local_addr().ok()? else { return None };
    let client = shared.geo.locate(*peer.ip());
    crate::mirror::answer(head, &shared.origin, &shared.serve, &shared.pieces, vip, |path| shared.mirrors_for(client, path)).await
}

/// A request worth handing off: GET or HEAD of an object that exists (a HEAD gets here only as
/// a health probe, or when the mirror answer could not look the object up). Everything else
/// (bad paths, missing objects, other methods) is answered by the main, so bad input never
/// reaches a participant.
async fn handoff_plan(head: &RequestHead, shared: &Shared) -> Option<ObjectPlan> {
    if matches!(head.method, Method::Other(_)) {
        return None;
    }
    let path = object_path(&head.target).ok()?;
    match shared.origin.resolve(&path).await {
        Ok(Some(obj)) => Some(ObjectPlan { path: path.as_str().to_owned(), size: obj.meta.size, sha256: obj.meta.sha256 }),
        Ok(None) => None,
        Err(e) => {
            warn!(error = %e, "origin lookup failed");
            None
        }
    }
}

async fn try_handoff(
    stream: &mut TcpStream,
    peer: SocketAddrV4,
    flow_id: u64,
    request: &mut Vec<u8>,
    object: ObjectPlan,
    forced: Option<String>,
    shared: &Shared,
) -> Result<Handed, HandoffError> {
    let t_start = Instant::now();
    let participant = match forced {
        Some(p) => p,
        None => shared.select(shared.geo.locate(*peer.ip()), Some(&object.path)).ok_or(HandoffError::NoParticipant)?,
    };
    let participant_addr = shared.registry.addr_of(&participant).ok_or(HandoffError::NoParticipant)?;
    let local = match stream.local_addr()? {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => return Err(HandoffError::NoParticipant),
    };
    let key = FlowKey::new(peer, local);
    let dp = &shared.dataplane;

    let t_freeze = Instant::now();
    let selected = t_start.elapsed();
    dp.freeze(&key).map_err(|e| if e.is_table_full() { HandoffError::FlowTableFull } else { HandoffError::Dataplane(e.to_string()) })?;
    let unfreeze = |e: HandoffError| {
        if let Err(err) = dp.remove(&key) {
            warn!(error = %err, "could not unfreeze the flow");
        }
        e
    };
    // From here the kernel receives nothing more of this flow; take what raced in before.
    if let Err(e) = drain_receive_queue(stream, request) {
        return Err(unfreeze(e));
    }
    if request.len() > MAX_HANDOFF_REQUEST_BYTES {
        return Err(unfreeze(HandoffError::RequestTooLarge(request.len())));
    }
    let guard = match RepairGuard::enter(stream) {
        Ok(g) => g,
        Err(e) => return Err(unfreeze(e.into())),
    };
    let tcp = match guard.dump_known(local, peer) {
        Ok(t) => t,
        Err(e) => {
            drop(guard);
            return Err(unfreeze(e.into()));
        }
    };
    let dumped = t_freeze.elapsed();
    // The data plane's view of the client starts where the dump says the connection stands, so
    // its forward-only ACK and sequence tracking has a true base for a later recovery.
    if let Err(e) = dp.freeze_seeded(&key, FlowSeed { snd_nxt: tcp.snd_seq, rcv_nxt: tcp.rcv_seq }) {
        drop(guard);
        return Err(unfreeze(HandoffError::Dataplane(e.to_string())));
    }
    // The flow goes to the participant before the participant hears of it: it serves the moment
    // its socket exists, and its data plane drops (never resets) segments that arrive earlier.
    if let Err(e) = dp.set_state(&key, FlowTarget::Forward(participant_addr)) {
        drop(guard);
        return Err(unfreeze(HandoffError::Dataplane(e.to_string())));
    }
    let record = FlowRecord { key, client: peer, started: Instant::now() };
    shared.flows.insert(flow_id, record);
    let object_path = object.path.clone();
    let handoff = Handoff { flow_id, tcp, request: request.clone(), object: Some(object), snd_offset: 0, in_flight: 0, pending: Vec::new() };
    // Known to the conductor before the participant hears of it, so its first report (which
    // may overtake the restore answer here) finds the flow.
    shared.conductor.lock().unwrap_or_else(|p| p.into_inner()).adopt(&participant, Ledger::new(&handoff));
    shared.mark_dirty();
    let forget = |shared: &Shared| {
        shared.flows.forget(flow_id);
        shared.conductor.lock().unwrap_or_else(|p| p.into_inner()).remove(flow_id);
    };
    let t_ctl = Instant::now();
    let answer = match shared.registry.send_handoff(&participant, flow_id, Message::Handoff(handoff)) {
        Ok(rx) => rx,
        Err(e) => {
            forget(shared);
            drop(guard);
            return Err(unfreeze(e.into()));
        }
    };
    let timeout = shared.restore_timeout;
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(RestoreAnswer::Restored)) => {}
        Ok(Ok(RestoreAnswer::Failed(reason))) => {
            // The participant never restored the socket: the connection is still ours alone.
            forget(shared);
            drop(guard);
            return Err(unfreeze(HandoffError::Refused(reason)));
        }
        Ok(Err(_)) | Err(_) => {
            // No answer: the participant may already be serving, so taking the connection back
            // could interleave two writers. The flow stays with it; losing a participant's
            // flows is recovered from the data plane's view of the client.
            shared.registry.forget_pending(&participant, flow_id);
            shared.metrics.handoffs_unconfirmed.fetch_add(1, Ordering::Relaxed);
            warn!(%participant, "no restore report; the flow stays with the participant");
        }
    }
    let control_rtt = t_ctl.elapsed();
    guard.close_silently();
    shared.registry.add_flows(&participant, 1);
    shared.registry.holds(&participant, &object_path);
    Ok(Handed {
        participant,
        steps: Steps { select: selected, dump: dumped, control: control_rtt },
    })
}

/// Moves bytes that reached the receive queue before the freeze into `request`, until the socket
/// is quiescent (established, both queues empty). Reads with `recv(MSG_DONTWAIT)` directly:
/// the kernel's queue, not tokio's readiness cache, says what is there.
fn drain_receive_queue(stream: &TcpStream, request: &mut Vec<u8>) -> Result<(), HandoffError> {
    let fd = stream.as_raw_fd();
    for _ in 0..QUIESCE_ATTEMPTS {
        match check_quiescent(stream) {
            Ok(()) => return Ok(()),
            Err(baton_io::repair::RepairError::RecvQueueNotEmpty { bytes }) => {
                // Read straight into the request's spare capacity: no zeroed bounce buffer on
                // the (rare) path that needs one, and none at all on the common one.
                let want = bytes.clamp(1, DRAIN_CHUNK_BYTES);
                request.reserve(want);
                let spare = request.spare_capacity_mut();
                // SAFETY: `spare` is writable for `spare.len()` bytes (at least `want`); the
                // descriptor is open. recv writes at most that many bytes.
                let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), want.min(spare.len()), libc::MSG_DONTWAIT) };
                match n {
                    0 => return Err(HandoffError::Io(std::io::ErrorKind::UnexpectedEof.into())),
                    n if n > 0 => {
                        // SAFETY: recv initialised the first `n` bytes of the spare capacity.
                        unsafe { request.set_len(request.len() + n as usize) };
                    }
                    _ => {
                        let e = std::io::Error::last_os_error();
                        if e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::Interrupted {
                            return Err(e.into());
                        }
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    check_quiescent(stream).map_err(Into::into)
}
