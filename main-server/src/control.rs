//! The main's side of the participant control channel: registration, heartbeats, handoff
//! answers and close reports.
//!
//! A connection must register first, within [`REGISTER_TIMEOUT`]. After that the reader task
//! applies what the participant reports and a writer task sends what the main queued for it.
//! A report about a flow the participant does not own is logged and ignored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_io::control::{write_message, FrameReader};
use baton_shared::control::Message;
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, info_span, warn, Instrument};

use crate::registry::RestoreAnswer;
use crate::state::Shared;

/// How long a new control connection may take to send its registration.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts participant control connections until the process ends.
pub async fn run(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, peer, shared).await {
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

/// Applies one message from participant `name`.
fn handle(shared: &Arc<Shared>, name: &str, msg: Message) {
    shared.conduct(|c, _, now| c.heard(name, now));
    match msg {
        Message::Heartbeat { active_flows } => shared.registry.heartbeat(name, active_flows),
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
            } else if !shared.flows.closed(flow_id, Instant::now()) {
                warn!(flow = flow_id, "close report for a flow this participant does not own");
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
            warn!(flow = flow_id, %reason, "participant kept the flow");
            shared.conduct(|c, _, _| c.release_failed(name, flow_id));
        }
        other => warn!(message = ?std::mem::discriminant(&other), "unexpected control message"),
    }
}

async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new(rd);
    let first = tokio::time::timeout(REGISTER_TIMEOUT, reader.next())
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no registration"))??;
    let Some(Message::Register { name, addr, coord, capacity }) = first else {
        write_message(&mut wr, &Message::Rejected { reason: "expected a registration".to_owned() }).await?;
        return Ok(());
    };
    let mut session = shared.registry.connect(&name, addr, coord, capacity);
    shared.conduct(|c, _, now| c.peer_up(&name, now));
    let span = info_span!("participant", participant = %name);
    span.in_scope(|| info!(%peer, %addr, lat = coord.lat, lon = coord.lon, capacity, "registered"));
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
    }
    writer.abort();
    span.in_scope(|| info!("disconnected"));
    result
}
