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
use tracing::{debug, info, warn};

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
    /// One participant in detail: load, health, probes, flows.
    ParticipantShow { name: String },
    /// Handed-off flows; the main's own health probes only with `probes`.
    FlowList {
        #[serde(default)]
        probes: bool,
    },
    /// One flow in detail.
    FlowShow { flow: u64 },
    /// The whole ranking of participants for a client (and object), with the winner's reason.
    Explain {
        client: Ipv4Addr,
        #[serde(default)]
        path: Option<String>,
    },
    /// Where the GeoIP database puts an address.
    Geo { ip: Ipv4Addr },
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

impl AdminRequest {
    /// Whether the request changes the cluster (logged with who asked).
    pub fn changes_state(&self) -> bool {
        matches!(
            self,
            AdminRequest::ParticipantAdd { .. }
                | AdminRequest::ParticipantRemove { .. }
                | AdminRequest::ParticipantDrain { .. }
                | AdminRequest::ParticipantUndrain { .. }
                | AdminRequest::FlowMove { .. }
        )
    }
}

/// One participant as `batonctl participant list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantRow {
    #[serde(flatten)]
    pub registry: crate::registry::ParticipantView,
    /// healthy, unhealthy, draining or down: what selection sees.
    pub state: baton_shared::select::Health,
}

/// Where the GeoIP database puts an address.
#[derive(Debug, Clone, Serialize)]
pub struct GeoView {
    pub ip: Ipv4Addr,
    pub found: bool,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub city: Option<String>,
    pub country: Option<String>,
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
            answer(&line, &shared, "socket").await
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        out.push(b'\n');
        wr.write_all(&out).await?;
        if line.len() > MAX_REQUEST_LINE {
            return Ok(());
        }
    }
}

/// Parses and carries out one request, logging what changes the cluster.
async fn answer(body: &[u8], shared: &Arc<Shared>, via: &'static str) -> AdminResponse {
    match serde_json::from_slice::<AdminRequest>(body) {
        Ok(req) => {
            if req.changes_state() {
                info!(via, request = ?req, "admin request");
            }
            shared.metrics.admin_requests.fetch_add(1, Ordering::Relaxed);
            handle(req, shared).await
        }
        Err(e) => AdminResponse::err(format!("bad request: {e}")),
    }
}

/// The path of the admin API over HTTP: `POST` one JSON request, get one JSON response.
pub const HTTP_PATH: &str = "/v1/admin";
/// How long an HTTP admin client may take to send its request.
pub const HTTP_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Admin HTTP connections served at once; more wait to be accepted.
pub const MAX_HTTP_CONNECTIONS: usize = 64;

/// Serves the admin API over HTTP on TCP; every request must carry `Authorization: Bearer
/// <token>`. Refusals are counted and logged with the peer's address.
pub async fn run_http(listener: tokio::net::TcpListener, shared: Arc<Shared>, token: Arc<str>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_http(stream, peer, &shared, &token).await {
                        debug!(%peer, error = %e, "admin http connection failed");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_http(mut stream: tokio::net::TcpStream, peer: std::net::SocketAddr, shared: &Arc<Shared>, token: &str) -> std::io::Result<()> {
    use baton_io::http::{read_head, HeadRead};
    let mut buf = Vec::new();
    let (head, len) = match read_head(&mut stream, &mut buf, HTTP_REQUEST_TIMEOUT).await? {
        HeadRead::Head { head, len } => (head, len),
        HeadRead::Invalid(e) => return http_reply(&mut stream, e.status(), &AdminResponse::err(e.to_string())).await,
        HeadRead::Closed | HeadRead::TimedOut => return Ok(()),
    };
    let presented = head.header("authorization").and_then(|v| v.strip_prefix(b"Bearer ".as_slice()));
    if !presented.is_some_and(|p| constant_time_eq(p, token.as_bytes())) {
        shared.metrics.admin_refused.fetch_add(1, Ordering::Relaxed);
        warn!(%peer, "admin request without a valid token refused");
        return http_reply(&mut stream, 401, &AdminResponse::err("a valid bearer token is required")).await;
    }
    if head.target != HTTP_PATH {
        return http_reply(&mut stream, 404, &AdminResponse::err(format!("no such endpoint; use POST {HTTP_PATH}"))).await;
    }
    if !matches!(&head.method, baton_shared::http::Method::Other(m) if m.as_str() == "POST") {
        return http_reply(&mut stream, 405, &AdminResponse::err(format!("use POST {HTTP_PATH}"))).await;
    }
    let length = head
        .header("content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let Some(length) = length.filter(|l| *l <= MAX_REQUEST_LINE) else {
        return http_reply(&mut stream, 411, &AdminResponse::err(format!("a Content-Length of at most {MAX_REQUEST_LINE} is required"))).await;
    };
    let mut body = buf.split_off(len);
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let n = match tokio::time::timeout(HTTP_REQUEST_TIMEOUT, stream.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    let resp = answer(&body, shared, "http").await;
    http_reply(&mut stream, 200, &resp).await
}

async fn http_reply(stream: &mut tokio::net::TcpStream, status: u16, resp: &AdminResponse) -> std::io::Result<()> {
    let body = serde_json::to_vec(resp).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        _ => "Bad Request",
    };
    let auth = if status == 401 { "WWW-Authenticate: Bearer realm=\"baton\"\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await
}

/// Shortest bearer token accepted: 128 bits of hex.
pub const MIN_TOKEN_BYTES: usize = 32;

/// Reads the HTTP admin API's bearer token (the file's first line) and checks that it is long
/// enough and that nobody but the owner can read the file.
pub fn read_token(path: &Path) -> anyhow::Result<Arc<str>> {
    use anyhow::Context;
    let meta = std::fs::metadata(path).with_context(|| format!("admin.token_file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        anyhow::bail!("admin.token_file {}: readable by others (chmod 600 it)", path.display());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading admin.token_file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.len() < MIN_TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_graphic()) {
        anyhow::bail!("admin.token_file {}: the token must be at least {MIN_TOKEN_BYTES} printable characters", path.display());
    }
    Ok(Arc::from(token))
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(req: AdminRequest, shared: &Arc<Shared>) -> AdminResponse {
    let known = |name: &str| shared.registry.addr_of(name).is_some();
    match req {
        AdminRequest::ParticipantDrain { name } => {
            if !known(&name) {
                return AdminResponse::err(format!("no participant {name}"));
            }
            let moving = shared.conduct(|c, env, now| c.drain(&name, now, env));
            let left = shared.conduct(|c, _, _| c.flows_of(&name).len());
            info!(participant = %name, moving, "participant draining");
            saved(shared, AdminResponse::ok(Some(serde_json::json!({ "moving": moving, "flows": left }))))
        }
        AdminRequest::ParticipantUndrain { name } => {
            if !known(&name) {
                return AdminResponse::err(format!("no participant {name}"));
            }
            shared.conduct(|c, _, _| c.undrain(&name));
            info!(participant = %name, "participant takes new connections again");
            saved(shared, AdminResponse::ok(None))
        }
        AdminRequest::FlowList { probes } => {
            let hidden = shared.probe_flows.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let c = shared.conductor.lock().unwrap_or_else(|p| p.into_inner());
            let rows: Vec<FlowView> = c.flows().filter(|(id, _)| probes || !hidden.contains(id)).map(|(id, f)| flow_view(id, f)).collect();
            AdminResponse::ok(serde_json::to_value(rows).ok())
        }
        AdminRequest::FlowShow { flow } => {
            let c = shared.conductor.lock().unwrap_or_else(|p| p.into_inner());
            let Some(f) = c.flow(flow) else { return AdminResponse::err(format!("no flow {flow}")) };
            let (local, remote) = f.ledger.endpoints();
            let responses: Vec<_> = f
                .ledger
                .responses
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "start": r.start,
                        "head_bytes": r.head.len(),
                        "object": r.body.as_ref().map(|b| b.object.path.clone()),
                        "body_offset": r.body.as_ref().map(|b| b.offset),
                        "body_len": r.body.as_ref().map(|b| b.len),
                        "keep_alive": r.keep_alive,
                    })
                })
                .collect();
            let data = serde_json::json!({
                "flow": flow_view(flow, f),
                "handing_off": shared.registry.awaits_answer(&f.owner, flow),
                "vip": local.to_string(),
                "client": remote.to_string(),
                "sent_end": f.ledger.sent_end(),
                "responses": responses,
                "data_plane": shared.flows.key_of(flow).and_then(|k| shared.dataplane.get(&k).ok().flatten()).map(|v| format!("{v:?}")),
            });
            AdminResponse::ok(Some(data))
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
                let owner = shared.conduct(|c, _, _| c.flow(id).map(|f| f.owner.clone()));
                if owner.is_some_and(|o| shared.registry.awaits_answer(&o, id)) {
                    errors.push(format!("flow {id} is still being handed off; move it once it is served"));
                    continue;
                }
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
        AdminRequest::ParticipantList => AdminResponse::ok(serde_json::to_value(participant_rows(shared)).ok()),
        AdminRequest::ParticipantShow { name } => {
            let Some(row) = participant_rows(shared).into_iter().find(|r| r.registry.name == name) else {
                return AdminResponse::err(format!("no participant {name}"));
            };
            let flows = shared.conduct(|c, _, _| c.flows_of(&name));
            let data = serde_json::json!({
                "participant": row,
                "health": shared.health.view(&name, shared.clock()),
                "flows": flows,
            });
            AdminResponse::ok(Some(data))
        }
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
                    saved(shared, AdminResponse::ok(None))
                }
                Err(e) => AdminResponse::err(e.to_string()),
            }
        }
        AdminRequest::ParticipantRemove { name } => match shared.registry.remove(&name) {
            Ok(()) => {
                // Its flows go elsewhere, as if it had died.
                shared.conduct(|c, env, now| c.peer_down(&name, now, env));
                shared.health.forget(&name);
                info!(participant = %name, "participant removed");
                saved(shared, AdminResponse::ok(None))
            }
            Err(e) => AdminResponse::err(e.to_string()),
        },
        AdminRequest::Explain { client, path } => {
            let object = match path.as_deref().map(baton_shared::http::object_path) {
                Some(Ok(p)) => Some(p.as_str().to_owned()),
                Some(Err(e)) => return AdminResponse::err(format!("path: {e}")),
                None => None,
            };
            let geo = geo_view(shared, client);
            let ranking = shared.rank(shared.geo.locate(client), object.as_deref());
            let data = serde_json::json!({ "client": geo, "object": object, "policy": shared.policy, "ranking": ranking });
            AdminResponse::ok(Some(data))
        }
        AdminRequest::Geo { ip } => AdminResponse::ok(serde_json::to_value(geo_view(shared, ip)).ok()),
        AdminRequest::Stats => {
            let m = &shared.metrics;
            let counts = shared.conduct(|c, _, _| c.counts());
            let rows = participant_rows(shared);
            let view = StatsView {
                handoffs: m.handoffs.load(Ordering::Relaxed),
                handoff_failures: m.handoff_failures.load(Ordering::Relaxed),
                handoffs_unconfirmed: m.handoffs_unconfirmed.load(Ordering::Relaxed),
                local_serves: m.local_serves.load(Ordering::Relaxed),
                flows: shared.flows.len(),
                participants: rows.len(),
                participants_healthy: rows.iter().filter(|r| r.state == baton_shared::select::Health::Healthy).count(),
                moves_done: counts.moves_done,
                recoveries: counts.recoveries,
                selections: m.selections.snapshot(),
                probes: m.probes.snapshot(),
                control_refused: m.control_refused.snapshot(),
            };
            AdminResponse::ok(serde_json::to_value(view).ok())
        }
    }
}

/// Saves the operators' settings after a change; the answer says so when that failed.
fn saved(shared: &Shared, resp: AdminResponse) -> AdminResponse {
    match crate::persist::save_settings(shared) {
        Ok(()) => resp,
        Err(e) => {
            warn!(error = %e, "could not save the registry");
            AdminResponse::err(format!("done, but not saved for a restart: {e}"))
        }
    }
}

fn participant_rows(shared: &Shared) -> Vec<ParticipantRow> {
    let states: std::collections::HashMap<String, baton_shared::select::Health> =
        shared.candidates(None).into_iter().map(|c| (c.name, c.health)).collect();
    shared
        .registry
        .list()
        .into_iter()
        .map(|p| ParticipantRow { state: states.get(&p.name).copied().unwrap_or(baton_shared::select::Health::Down), registry: p })
        .collect()
}

fn geo_view(shared: &Shared, ip: Ipv4Addr) -> GeoView {
    match shared.geo.lookup(ip) {
        Some(g) => GeoView { ip, found: true, lat: Some(g.coord.lat), lon: Some(g.coord.lon), city: g.city, country: g.country },
        None => GeoView { ip, found: false, lat: None, lon: None, city: None, country: None },
    }
}

fn flow_view(id: u64, f: &baton_shared::moves::Flow) -> FlowView {
    FlowView {
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
