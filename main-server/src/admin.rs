//! The admin API: one JSON request per line on a unix socket, one JSON response per line.
//!
//! Requests are typed ([`AdminRequest`]); anything that does not parse gets an error response
//! and the connection stays usable. The socket is created owner-only: whoever can reach it can
//! steer the cluster.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use baton_shared::geo::Coord;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use crate::state::{Shared, StatsView};
use baton_shared::moves::Phase;

/// Longest request line accepted; admin requests are a few hundred bytes.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// A request to the admin API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    ParticipantList,
    ParticipantAdd { name: String, addr: Ipv4Addr, lat: f64, lon: f64, capacity: u32 },
    ParticipantRemove { name: String },
    /// Stop sending new connections to a participant and move its flows elsewhere.
    ParticipantDrain { name: String },
    /// Let a drained participant take connections again.
    ParticipantUndrain { name: String },
    FlowList,
    /// Move one flow (`flow`) or every flow of a participant (`from`) to `to`, or each to its
    /// next-best participant when `to` is absent.
    FlowMove {
        #[serde(default)]
        flow: Option<u64>,
        #[serde(default)]
        from: Option<String>,
        #[serde(default)]
        to: Option<String>,
    },
    Stats,
}

/// One flow as `batonctl flow list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowView {
    pub id: u64,
    pub client: String,
    pub participant: String,
    pub phase: String,
    pub moves: u32,
    /// Stream offset the client is known to have acknowledged.
    pub acked: u64,
    pub object: Option<String>,
}

/// The answer: `ok` with optional data, or an error message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl AdminResponse {
    fn ok(data: Option<serde_json::Value>) -> Self {
        Self { ok: true, error: None, data }
    }
    fn err(msg: impl Into<String>) -> Self {
        Self { ok: false, error: Some(msg.into()), data: None }
    }
}

/// Binds the admin socket (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", path.display())),
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

pub async fn run(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, shared).await {
                        warn!(error = %e, "admin connection failed");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(stream: UnixStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut rd).take(MAX_REQUEST_LINE as u64 + 1).read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(());
        }
        let resp = if line.len() > MAX_REQUEST_LINE {
            AdminResponse::err(format!("request longer than {MAX_REQUEST_LINE} bytes"))
        } else {
            match serde_json::from_slice::<AdminRequest>(&line) {
                Ok(req) => handle(req, &shared),
                Err(e) => AdminResponse::err(format!("bad request: {e}")),
            }
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        out.push(b'\n');
        wr.write_all(&out).await?;
        if line.len() > MAX_REQUEST_LINE {
            return Ok(());
        }
    }
}


fn handle(req: AdminRequest, shared: &Arc<Shared>) -> AdminResponse {
    match req {
        AdminRequest::ParticipantDrain { name } => {
            if !shared.registry.list().iter().any(|p| p.name == name) {
                return AdminResponse::err(format!("no participant {name}"));
            }
            let moving = shared.conduct(|c, env, now| c.drain(&name, now, env));
            let left = shared.conduct(|c, _, _| c.flows_of(&name).len());
            info!(participant = %name, moving, "participant draining");
            AdminResponse::ok(Some(serde_json::json!({ "moving": moving, "flows": left })))
        }
        AdminRequest::ParticipantUndrain { name } => {
            shared.conduct(|c, _, _| c.undrain(&name));
            info!(participant = %name, "participant takes new connections again");
            AdminResponse::ok(None)
        }
        AdminRequest::FlowList => {
            let c = shared.conductor.lock().unwrap_or_else(|p| p.into_inner());
            let rows: Vec<FlowView> = c
                .flows()
                .map(|(id, f)| FlowView {
                    id,
                    client: f.ledger.origin.remote.to_string(),
                    participant: if f.owner.is_empty() { "main".to_owned() } else { f.owner.clone() },
                    phase: match f.phase {
                        Phase::Active => "active",
                        Phase::Preparing { .. } => "preparing",
                        Phase::Releasing { .. } => "releasing",
                        Phase::Restoring { .. } => "restoring",
                        Phase::Local => "local",
                        Phase::Orphaned { .. } => "orphaned",
                    }
                    .to_owned(),
                    moves: f.moves,
                    acked: f.ledger.acked,
                    object: f.ledger.responses.back().and_then(|r| r.body.as_ref()).map(|b| b.object.path.clone()),
                })
                .collect();
            AdminResponse::ok(serde_json::to_value(rows).ok())
        }
        AdminRequest::FlowMove { flow, from, to } => {
            let flows = match (flow, &from) {
                (Some(id), None) => vec![id],
                (None, Some(name)) => shared.conduct(|c, _, _| c.flows_of(name)),
                _ => return AdminResponse::err("give exactly one of a flow id or --from <participant>"),
            };
            let mut moved = Vec::new();
            let mut errors = Vec::new();
            for id in flows {
                match shared.conduct(|c, env, now| c.move_flow(id, to.as_deref(), now, env)) {
                    Ok(target) => moved.push(serde_json::json!({ "flow": id, "to": target })),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            if moved.is_empty() && !errors.is_empty() {
                return AdminResponse::err(errors.join("; "));
            }
            AdminResponse::ok(Some(serde_json::json!({ "moving": moved, "errors": errors })))
        }
        AdminRequest::ParticipantList => AdminResponse::ok(serde_json::to_value(shared.registry.list()).ok()),
        AdminRequest::ParticipantAdd { name, addr, lat, lon, capacity } => {
            if let Err(e) = baton_shared::control::validate_name(&name) {
                return AdminResponse::err(format!("name: {e}"));
            }
            let coord = match Coord::new(lat, lon) {
                Ok(c) => c,
                Err(e) => return AdminResponse::err(format!("coordinates: {e}")),
            };
            match shared.registry.add(&name, addr, coord, capacity) {
                Ok(()) => {
                    info!(participant = %name, %addr, "participant added");
                    AdminResponse::ok(None)
                }
                Err(e) => AdminResponse::err(e.to_string()),
            }
        }
        AdminRequest::ParticipantRemove { name } => match shared.registry.remove(&name) {
            Ok(()) => {
                info!(participant = %name, "participant removed");
                AdminResponse::ok(None)
            }
            Err(e) => AdminResponse::err(e.to_string()),
        },
        AdminRequest::Stats => {
            let view = StatsView {
                handoffs: shared.metrics.handoffs.load(Ordering::Relaxed),
                handoff_failures: shared.metrics.handoff_failures.load(Ordering::Relaxed),
                handoffs_unconfirmed: shared.metrics.handoffs_unconfirmed.load(Ordering::Relaxed),
                local_serves: shared.metrics.local_serves.load(Ordering::Relaxed),
                flows: shared.flows.len(),
            };
            AdminResponse::ok(serde_json::to_value(view).ok())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_strictly() {
        let r: AdminRequest = serde_json::from_str(r#"{"op":"participant_remove","name":"p1"}"#).expect("parse");
        assert_eq!(r, AdminRequest::ParticipantRemove { name: "p1".into() });
        assert!(serde_json::from_str::<AdminRequest>(r#"{"op":"participant_remove","name":"p1","x":1}"#).is_err());
        assert!(serde_json::from_str::<AdminRequest>(r#"{"op":"reboot"}"#).is_err());
        let r: AdminRequest = serde_json::from_str(r#"{"op":"flow_move","from":"p-fra","to":"p-iad"}"#).expect("parse");
        assert_eq!(r, AdminRequest::FlowMove { flow: None, from: Some("p-fra".into()), to: Some("p-iad".into()) });
        let r: AdminRequest = serde_json::from_str(r#"{"op":"flow_move","flow":7}"#).expect("parse");
        assert_eq!(r, AdminRequest::FlowMove { flow: Some(7), from: None, to: None });
    }
}
