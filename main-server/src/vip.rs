//! The VIP listener: accept a client, read its request, pick a participant and hand the live
//! connection over with TCP_REPAIR; serve the request here whenever that is not possible.
//!
//! Ordering is what keeps the client unaware: the flow is FROZEN in the data plane before the
//! dump (the kernel sees none of the client's packets from then on), it becomes FORWARD only
//! after the participant restored the socket, and only then does the participant start writing
//! and the main close its copy in repair mode (no FIN, no RST). Any failure before that point
//! unfreezes the flow and the main answers the request itself on the same connection.

use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_ebpf::FlowKey;
use baton_io::http::{read_head, respond, serve_connection, write_response, HeadRead};
use baton_io::repair::{check_quiescent, RepairGuard};
use baton_shared::control::Message;
use baton_shared::handoff::{Handoff, ObjectPlan, MAX_HANDOFF_REQUEST_BYTES};
use baton_shared::http::{object_path, plan_error_response, Method, RequestHead};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::registry::RestoreAnswer;
use crate::state::{FlowRecord, Shared};

/// Connections the VIP listener serves at once before it stops accepting (mini-redis style cap;
/// handed-off connections do not count, they leave the main within one handoff).
pub const MAX_VIP_CONNECTIONS: usize = 10_000;
/// Attempts to drain bytes that raced into the receive queue before the flow froze.
const QUIESCE_ATTEMPTS: usize = 4;

/// Why a handoff did not happen; the main then serves the request itself.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("no participant can serve")]
    NoParticipant,
    #[error("data plane: {0}")]
    Dataplane(String),
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

async fn handle(mut stream: TcpStream, peer: SocketAddrV4, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let cfg = shared.serve.clone();
    let mut buf = Vec::new();
    let accepted = Instant::now();
    let (head, raw) = match read_head(&mut stream, &mut buf, cfg.head_timeout).await {
        Ok(HeadRead::Head { head, raw }) => (head, raw),
        Ok(HeadRead::Closed) => return,
        Ok(HeadRead::Invalid(e)) => {
            info!(status = e.status(), error = %e, "bad request head");
            let _ = write_response(&mut stream, &plan_error_response(e.status(), false, &cfg.server_name), None).await;
            return;
        }
        Ok(HeadRead::TimedOut) => {
            info!("request head timed out");
            if !buf.is_empty() {
                let _ = write_response(&mut stream, &plan_error_response(408, false, &cfg.server_name), None).await;
            }
            return;
        }
        Err(e) => {
            debug!(error = %e, "client went away");
            return;
        }
    };
    let head_read = accepted.elapsed();

    if let Some(plan) = handoff_plan(&head, &shared).await {
        let flow_id = NEXT_FLOW.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("flow", flow = flow_id);
        let mut request = raw.clone();
        request.extend_from_slice(&buf);
        match try_handoff(&mut stream, peer, flow_id, request, plan, &shared).instrument(span.clone()).await {
            Ok(participant) => {
                span.in_scope(|| info!(%participant, head_read_us = head_read.as_micros() as u64, total_us = accepted.elapsed().as_micros() as u64, "handed off"));
                shared.metrics.handoffs.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                span.in_scope(|| info!(error = %e, "serving locally"));
                shared.metrics.local_serves.fetch_add(1, Ordering::Relaxed);
                if !matches!(e, HandoffError::NoParticipant) {
                    shared.metrics.handoff_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    // Serve here: this request, then the rest of the connection.
    let origin = shared.origin.clone();
    match respond(&mut stream, &head, &origin, &cfg).await {
        Ok(sent) if sent.keep_alive => {
            if let Err(e) = serve_connection(&mut stream, buf, &origin, &cfg).await {
                debug!(error = %e, "connection ended");
            }
        }
        Ok(_) => {}
        Err(e) => debug!(error = %e, "client went away"),
    }
}

/// A request worth handing off: GET or HEAD of an object that exists. Everything else (bad
/// paths, missing objects, other methods) is answered by the main, so bad input never reaches a
/// participant.
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
    mut request: Vec<u8>,
    object: ObjectPlan,
    shared: &Shared,
) -> Result<String, HandoffError> {
    let client_coord = shared.geo.locate(*peer.ip());
    let participant = shared.select(client_coord).ok_or(HandoffError::NoParticipant)?;
    let participant_addr = shared.registry.addr_of(&participant).ok_or(HandoffError::NoParticipant)?;
    let local = match stream.local_addr()? {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => return Err(HandoffError::NoParticipant),
    };
    let key = FlowKey::new(peer, local);
    let dp = &shared.dataplane;

    let t_freeze = Instant::now();
    dp.freeze(&key).map_err(|e| HandoffError::Dataplane(e.to_string()))?;
    let unfreeze = |e: HandoffError| {
        if let Err(err) = dp.remove(&key) {
            warn!(error = %err, "could not unfreeze the flow");
        }
        e
    };
    // From here the kernel receives nothing more of this flow; take what raced in before.
    if let Err(e) = drain_receive_queue(stream, &mut request).await {
        return Err(unfreeze(e));
    }
    if request.len() > MAX_HANDOFF_REQUEST_BYTES {
        return Err(unfreeze(HandoffError::RequestTooLarge(request.len())));
    }
    let guard = match RepairGuard::enter(stream) {
        Ok(g) => g,
        Err(e) => return Err(unfreeze(e.into())),
    };
    let tcp = match guard.dump() {
        Ok(t) => t,
        Err(e) => {
            drop(guard);
            return Err(unfreeze(e.into()));
        }
    };
    let dumped = t_freeze.elapsed();
    let handoff = Handoff { flow_id, tcp, request, object: Some(object.clone()) };
    let t_ctl = Instant::now();
    let answer = match shared.registry.send_handoff(&participant, flow_id, Message::Handoff(handoff)) {
        Ok(rx) => rx,
        Err(e) => {
            drop(guard);
            return Err(unfreeze(e.into()));
        }
    };
    let timeout = shared.restore_timeout;
    let outcome = match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(RestoreAnswer::Restored)) => Ok(()),
        Ok(Ok(RestoreAnswer::Failed(reason))) => Err(HandoffError::Refused(reason)),
        Ok(Err(_)) => Err(HandoffError::Refused("participant went away".to_owned())),
        Err(_) => {
            shared.registry.forget_pending(&participant, flow_id);
            let _ = shared.registry.send(&participant, Message::HandoffAbort { flow_id });
            Err(HandoffError::Timeout(timeout))
        }
    };
    if let Err(e) = outcome {
        drop(guard);
        return Err(unfreeze(e));
    }
    let control_rtt = t_ctl.elapsed();
    if let Err(e) = dp.forward(&key, participant_addr) {
        let _ = shared.registry.send(&participant, Message::HandoffAbort { flow_id });
        drop(guard);
        return Err(unfreeze(HandoffError::Dataplane(e.to_string())));
    }
    if let Err(e) = shared.registry.send(&participant, Message::HandoffCommit { flow_id }) {
        // The participant holds the socket but will never start: take the flow back.
        if let Err(err) = dp.freeze(&key) {
            warn!(error = %err, "could not refreeze the flow");
        }
        drop(guard);
        return Err(unfreeze(e.into()));
    }
    guard.close_silently();
    shared.registry.add_flows(&participant, 1);
    shared.flows.insert(
        flow_id,
        FlowRecord { key, client: peer, participant: participant.clone(), object: object.path, started: Instant::now() },
    );
    debug!(dump_us = dumped.as_micros() as u64, control_us = control_rtt.as_micros() as u64, "handoff steps");
    Ok(participant)
}

/// Moves bytes that reached the receive queue before the freeze into `request`, until the socket
/// is quiescent (established, both queues empty).
async fn drain_receive_queue(stream: &mut TcpStream, request: &mut Vec<u8>) -> Result<(), HandoffError> {
    for _ in 0..QUIESCE_ATTEMPTS {
        match check_quiescent(stream) {
            Ok(()) => return Ok(()),
            Err(baton_io::repair::RepairError::RecvQueueNotEmpty { .. }) => {
                let mut chunk = vec![0u8; 16 * 1024];
                match stream.try_read(&mut chunk) {
                    Ok(0) => return Err(HandoffError::Io(std::io::ErrorKind::UnexpectedEof.into())),
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let _ = stream.read(&mut [0u8; 0]).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    check_quiescent(stream).map_err(Into::into)
}
