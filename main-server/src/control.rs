//! The main's side of the participant control channel: registration, heartbeats, handoff
//! answers and close reports.
//!
//! Every connection is mutual TLS with the cluster CA (TLS 1.3, no early data, so a recorded
//! session cannot be replayed). The first message must be a registration, within
//! [`REGISTER_TIMEOUT`], under the name the participant's certificate was issued to. After that
//! the reader task applies what the participant reports and a writer task sends what the main
//! queued for it. Refusals (no or foreign credentials, a name the certificate does not prove, a
//! report about a flow the sender does not own, a message only the main may send) are logged,
//! counted by reason and never acted on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_io::control::{write_message, FrameReader};
use baton_shared::control::Message;
use baton_shared::moves::Phase;
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, info_span, warn, Instrument};

use crate::registry::RestoreAnswer;
use crate::state::Shared;

/// How long a new control connection may take to send its registration.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a new control connection may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Control connections accepted at once that have not registered yet; more wait in the
/// kernel's backlog (an outsider cannot hold the registration path).
pub const MAX_UNREGISTERED: usize = 64;

/// Accepts participant control connections until the process ends.
pub async fn run(listener: TcpListener, tls: tokio_rustls::TlsAcceptor, shared: Arc<Shared>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_UNREGISTERED));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, peer, &tls, shared, permit).await {
                        warn!(%peer, error = %e, "control connection ended");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "control accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Why a message from `name` may not be acted on, if it may not: only the participant a flow
/// concerns may report on it, and only on what it was asked (a restore it was handed, objects it
/// was asked to prepare, a release of a flow it owns).
pub fn refusal(registry: &crate::registry::Registry, conductor: &std::sync::Mutex<baton_shared::moves::Conductor>, name: &str, msg: &Message) -> Option<&'static str> {
    if let Message::Prepared { flow_id } | Message::PrepareFailed { flow_id, .. } = msg {
        return (!registry.take_prepared(name, *flow_id)).then_some("not_asked");
    }
    if let Message::Restored { flow_id } | Message::RestoreFailed { flow_id, .. } = msg {
        if registry.awaits_answer(name, *flow_id) {
            return None;
        }
    }
    let c = conductor.lock().unwrap_or_else(|p| p.into_inner());
    let owns = |id: u64| c.flow(id).is_some_and(|f| f.owner == name);
    let ok = match msg {
        Message::Heartbeat(_) => true,
        Message::Restored { flow_id } | Message::RestoreFailed { flow_id, .. } => {
            c.flow(*flow_id).is_some_and(|f| f.owner == name && matches!(f.phase, Phase::Restoring { .. }))
        }
        Message::FlowClosed { flow_id, .. } | Message::Serving { flow_id, .. } | Message::ReleaseFailed { flow_id, .. } => owns(*flow_id),
        Message::Released(h) => {
            if !owns(h.flow_id) {
                return Some("not_owner");
            }
            // The owner describes its own socket; one of another connection's addresses would
            // steer the next owner onto a connection this flow never was.
            let same = c.flow(h.flow_id).is_some_and(|f| f.ledger.endpoints() == (h.tcp.remote, h.tcp.local));
            return (!same).then_some("wrong_connection");
        }
        _ => return Some("unexpected_kind"),
    };
    (!ok).then_some("not_owner")
}

/// The flow a message concerns, for logging a refusal.
fn flow_of(msg: &Message) -> Option<u64> {
    match msg {
        Message::Restored { flow_id }
        | Message::RestoreFailed { flow_id, .. }
        | Message::FlowClosed { flow_id, .. }
        | Message::Serving { flow_id, .. }
        | Message::ReleaseFailed { flow_id, .. }
        | Message::Prepared { flow_id }
        | Message::PrepareFailed { flow_id, .. } => Some(*flow_id),
        Message::Released(h) => Some(h.flow_id),
        _ => None,
    }
}

/// Applies one message from participant `name`.
fn handle(shared: &Arc<Shared>, name: &str, msg: Message) {
    shared.conduct(|c, _, now| c.heard(name, now));
    if let Some(reason) = refusal(&shared.registry, &shared.conductor, name, &msg) {
        shared.metrics.refuse(reason);
        warn!(flow = ?flow_of(&msg), reason, "control message refused: it is not this participant's to send");
        return;
    }
    match msg {
        Message::Heartbeat(load) => shared.registry.heartbeat(name, load),
        Message::Restored { flow_id } => {
            shared.mark_dirty();
            if !shared.registry.answer(name, flow_id, RestoreAnswer::Restored) {
                // A move's restore, not a first handoff.
                shared.conduct(|c, _, _| c.restored(name, flow_id));
                info!(flow = flow_id, participant = name, "moved flow restored");
            }
        }
        Message::RestoreFailed { flow_id, reason } => {
            if !shared.registry.answer(name, flow_id, RestoreAnswer::Failed(reason.clone())) {
                warn!(flow = flow_id, %reason, "moved flow refused; trying the next participant");
                shared.conduct(|c, env, now| c.restore_failed(name, flow_id, None, now, env));
            }
        }
        Message::FlowClosed { flow_id, bytes_sent } => {
            let owned = shared.conduct(|c, _, _| {
                let owned = c.flow(flow_id).is_some_and(|f| f.owner == name);
                c.closed(name, flow_id);
                owned
            });
            if owned {
                info!(flow = flow_id, bytes_sent, "flow closed");
            } else {
                shared.flows.closed(flow_id, Instant::now());
            }
        }
        Message::Serving { flow_id, response } => {
            let recorded = shared.conduct(|c, env, _| c.serving(name, flow_id, response, env));
            shared.mark_dirty();
            if let Err(e) = recorded {
                warn!(flow = flow_id, error = %e, "response report not recorded");
            }
        }
        Message::Prepared { flow_id } => shared.conduct(|c, _, now| c.prepared(name, flow_id, now)),
        Message::PrepareFailed { flow_id, reason } => {
            warn!(flow = flow_id, %reason, "participant could not prepare");
            shared.conduct(|c, _, _| c.prepare_failed(name, flow_id));
        }
        Message::Released(handoff) => {
            info!(flow = handoff.flow_id, offset = handoff.snd_offset, "flow released");
            shared.conduct(|c, env, now| c.released(name, &handoff, now, env));
        }
        Message::ReleaseFailed { flow_id, reason } => {
            if reason == baton_shared::control::NOT_SERVED_HERE {
                // It ended while nobody could hear of it (the main was restarting, say), or its
                // serving process is gone: recover it, or forget it if the client has it all.
                warn!(flow = flow_id, "the owner does not serve the flow; recovering it");
                shared.conduct(|c, env, now| c.lost_by_owner(name, flow_id, now, env));
            } else {
                warn!(flow = flow_id, %reason, "participant kept the flow");
                shared.conduct(|c, _, _| c.release_failed(name, flow_id));
            }
        }
        other => warn!(message = ?std::mem::discriminant(&other), "unexpected control message"),
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    tls: &tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let stream = match baton_io::tls::accept(tls, stream, HANDSHAKE_TIMEOUT).await {
        Ok(s) => s,
        Err(e) => {
            shared.metrics.refuse("tls");
            warn!(%peer, error = %e, "control connection refused");
            return Ok(());
        }
    };
    let certs: Vec<_> = stream.get_ref().1.peer_certificates().map(|c| c.iter().map(|c| c.clone().into_owned()).collect()).unwrap_or_default();
    let (rd, mut wr) = tokio::io::split(stream);
    let mut reader = FrameReader::new(rd);
    let first = tokio::time::timeout(REGISTER_TIMEOUT, reader.next())
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no registration"))??;
    let Some(Message::Register { name, addr, coord, capacity, mirror_port }) = first else {
        shared.metrics.refuse("no_registration");
        write_message(&mut wr, &Message::Rejected { reason: "expected a registration".to_owned() }).await?;
        return Ok(());
    };
    if let Err(e) = baton_io::tls::verify_participant(&certs, &name) {
        shared.metrics.refuse("identity");
        warn!(%peer, participant = %name, error = %e, "registration refused: the certificate does not prove this name");
        write_message(&mut wr, &Message::Rejected { reason: format!("the certificate does not prove the name {name}") }).await?;
        return Ok(());
    }
    if let Some(known) = shared.registry.addr_of(&name).filter(|a| *a != addr && shared.registry.static_entries().iter().any(|e| e.name == name)) {
        shared.metrics.refuse("address");
        warn!(%peer, participant = %name, %addr, %known, "registration refused: the operator added this participant with another address");
        write_message(&mut wr, &Message::Rejected { reason: format!("{name} is registered with address {known}") }).await?;
        return Ok(());
    }
    drop(permit);
    let mut session = shared.registry.connect(&name, addr, coord, capacity, mirror_port);
    shared.conduct(|c, _, now| c.peer_up(&name, now));
    shared.health.connected(&name, shared.clock());
    let span = info_span!("participant", participant = %name);
    span.in_scope(|| info!(%peer, %addr, lat = coord.lat, lon = coord.lon, capacity, mirror_port, "registered"));
    write_message(&mut wr, &Message::Registered { participant_id: session.id as u32 }).await?;

    let writer = tokio::spawn(
        async move {
            while let Some(msg) = session.rx.recv().await {
                if let Err(e) = write_message(&mut wr, &msg).await {
                    warn!(error = %e, "control write failed");
                    break;
                }
            }
        }
        .instrument(span.clone()),
    );
    let session_id = session.id;
    let result = async {
        loop {
            match reader.next().await? {
                None => return Ok(()),
                Some(msg) => handle(&shared, &name, msg),
            }
        }
    }
    .instrument(span.clone())
    .await;
    if shared.registry.disconnect(&name, session_id) {
        // Its control connection is gone: a participant process that died. Its flows go
        // elsewhere now, from what the data plane last saw of each client.
        shared.conduct(|c, env, now| c.peer_down(&name, now, env));
        shared.health.forget(&name);
    }
    writer.abort();
    span.in_scope(|| info!("disconnected"));
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::sync::Mutex;

    use baton_shared::control::Load;
    use baton_shared::geo::Coord;
    use baton_shared::handoff::{Handoff, RepairWindow, TcpState};
    use baton_shared::moves::{Conductor, Ledger};

    use crate::registry::Registry;

    fn handoff(flow_id: u64) -> Handoff {
        let tcp = TcpState {
            local: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80),
            remote: SocketAddrV4::new(Ipv4Addr::new(198, 18, 4, 2), 40000),
            snd_seq: 1,
            rcv_seq: 1,
            mss: 1460,
            snd_wscale: 7,
            rcv_wscale: 7,
            sack: true,
            timestamps: true,
            ts_val: 1,
            window: RepairWindow { snd_wl1: 1, snd_wnd: 64_000, max_window: 64_000, rcv_wnd: 65_000, rcv_wup: 1 },
        };
        Handoff { flow_id, tcp, request: Vec::new(), object: None, snd_offset: 0, in_flight: 0, pending: Vec::new() }
    }

    #[test]
    fn only_the_owner_reports_on_a_flow() {
        let registry = Registry::default();
        let coord = Coord::new(50.0, 8.0).expect("coord");
        let _a = registry.connect("p-a", Ipv4Addr::new(198, 18, 1, 2), coord, 10, 0);
        let _b = registry.connect("p-b", Ipv4Addr::new(198, 18, 2, 2), coord, 10, 0);
        let conductor = Mutex::new(Conductor::default());
        conductor.lock().expect("lock").adopt("p-a", Ledger::new(&handoff(7)));

        let closed = Message::FlowClosed { flow_id: 7, bytes_sent: 1 };
        assert_eq!(refusal(&registry, &conductor, "p-a", &closed), None);
        assert_eq!(refusal(&registry, &conductor, "p-b", &closed), Some("not_owner"));
        assert_eq!(refusal(&registry, &conductor, "p-b", &Message::Released(handoff(7))), Some("not_owner"));
        assert_eq!(refusal(&registry, &conductor, "p-a", &Message::Released(handoff(7))), None);
        // The owner's release must describe this flow's connection, not another one.
        let mut other = handoff(7);
        other.tcp.remote = SocketAddrV4::new(Ipv4Addr::new(198, 18, 9, 9), other.tcp.remote.port());
        assert_eq!(refusal(&registry, &conductor, "p-a", &Message::Released(other)), Some("wrong_connection"));
        let mut other = handoff(7);
        other.tcp.local = SocketAddrV4::new(*other.tcp.local.ip(), other.tcp.local.port().wrapping_add(1));
        assert_eq!(refusal(&registry, &conductor, "p-a", &Message::Released(other)), Some("wrong_connection"));
        assert_eq!(refusal(&registry, &conductor, "p-b", &Message::FlowClosed { flow_id: 8, bytes_sent: 0 }), Some("not_owner"));
        // A restore report needs a handoff to that participant awaiting its answer.
        assert_eq!(refusal(&registry, &conductor, "p-b", &Message::Restored { flow_id: 7 }), Some("not_owner"));
        let _rx = registry.send_handoff("p-b", 9, Message::Heartbeat(Load::default())).expect("queued");
        assert_eq!(refusal(&registry, &conductor, "p-b", &Message::Restored { flow_id: 9 }), None);
        assert_eq!(refusal(&registry, &conductor, "p-a", &Message::Restored { flow_id: 9 }), Some("not_owner"));
        // Prepared only when asked, and only once.
        assert_eq!(refusal(&registry, &conductor, "p-b", &Message::Prepared { flow_id: 7 }), Some("not_asked"));
        registry.expect_prepared("p-b", 7);
        assert_eq!(refusal(&registry, &conductor, "p-b", &Message::Prepared { flow_id: 7 }), None);
        assert_eq!(refusal(&registry, &conductor, "p-b", &Message::Prepared { flow_id: 7 }), Some("not_asked"));
        // Messages only the main sends.
        assert_eq!(refusal(&registry, &conductor, "p-a", &Message::Release { flow_id: 7 }), Some("unexpected_kind"));
        assert_eq!(refusal(&registry, &conductor, "p-a", &Message::Handoff(handoff(7))), Some("unexpected_kind"));
        assert_eq!(refusal(&registry, &conductor, "p-a", &Message::Heartbeat(Load::default())), None);
    }
}
