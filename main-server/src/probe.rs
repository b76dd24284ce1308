//! Active health probes: the main proves, for each participant, that it really serves through
//! the VIP path, not only that its process lives.
//!
//! A probe is a real handed-off request. The main connects from its own address to the VIP and
//! asks for a small object with an `X-Baton-Probe: <participant>` header; the VIP listener
//! honours that header only from the main's own address and hands the connection to exactly
//! that participant. The participant restores the socket and answers with the VIP as its
//! source; the main's later segments, which the kernel loops back through `lo`, are forwarded
//! by the data plane like any client's. The probe passes when the whole object arrives, its
//! SHA-256 matches the origin's and the participant named itself in `X-Served-By`. A
//! participant without the VIP on `lo`, without a route back, or with a broken data plane fails.
//!
//! Results go through a [`Tracker`] per participant (rise/fall thresholds and flap damping).
//! An unhealthy participant gets no new flows, and its flows move to others. This module never
//! decides who is nearest; it only says who is healthy.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use baton_shared::health::{HealthPolicy, HealthView, Tracker, Transition};
use baton_shared::http::{object_path, parse_response_head};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::state::Shared;

/// The request header that marks a probe; its value names the participant to probe.
pub const PROBE_HEADER: &str = "x-baton-probe";
/// Largest object a probe may fetch: probes run every second for every participant.
pub const MAX_PROBE_OBJECT_BYTES: u64 = 1 << 20;
/// Largest response head a probe accepts.
const MAX_PROBE_HEAD_BYTES: usize = 16 * 1024;
/// How long the automatically chosen probe object is kept before the origin is looked at again.
const PROBE_OBJECT_REFRESH: Duration = Duration::from_secs(60);

/// The outcome of the last probe of one participant.
#[derive(Debug, Clone, Serialize)]
pub struct LastProbe {
    pub ok: bool,
    /// What went wrong, or what was fetched.
    pub detail: String,
    pub duration_ms: f64,
    /// Milliseconds since the main started.
    pub at_ms: u64,
}

/// Health of every participant, as the probes found it.
#[derive(Debug)]
pub struct Health {
    policy: HealthPolicy,
    inner: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    tracker: Tracker,
    last: Option<LastProbe>,
    in_flight: bool,
}

/// One participant's health, as `batonctl participant show` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantHealth {
    #[serde(flatten)]
    pub tracker: HealthView,
    pub last_probe: Option<LastProbe>,
}

impl Health {
    pub fn new(policy: HealthPolicy) -> Self {
        Self { policy, inner: Mutex::new(HashMap::new()) }
    }

    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `name` may get new flows as far as probes tell (a participant never probed is).
    pub fn healthy(&self, name: &str) -> bool {
        self.lock().get(name).is_none_or(|e| e.tracker.healthy())
    }

    /// The health record of `name`.
    pub fn view(&self, name: &str, now: Duration) -> Option<ParticipantHealth> {
        self.lock().get(name).map(|e| ParticipantHealth { tracker: e.tracker.view(now), last_probe: e.last.clone() })
    }

    /// A participant (re)registered: it starts with a fresh record.
    pub fn connected(&self, name: &str, now: Duration) {
        self.lock().insert(name.to_owned(), Entry { tracker: Tracker::new(&self.policy, now), last: None, in_flight: false });
    }

    /// A participant left; its record goes with it.
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    fn start(&self, name: &str) -> bool {
        match self.lock().get_mut(name) {
            Some(e) if !e.in_flight => {
                e.in_flight = true;
                true
            }
            _ => false,
        }
    }

    fn record(&self, name: &str, result: &Result<String, String>, took: Duration, now: Duration) -> Option<Transition> {
        let mut g = self.lock();
        let e = g.get_mut(name)?;
        e.in_flight = false;
        e.last = Some(LastProbe {
            ok: result.is_ok(),
            detail: match result {
                Ok(d) | Err(d) => d.clone(),
            },
            duration_ms: took.as_secs_f64() * 1000.0,
            at_ms: now.as_millis() as u64,
        });
        e.tracker.probe_result(result.clone().map(|_| ()), now)
    }

    fn tick(&self, now: Duration) -> Vec<(String, Transition)> {
        self.lock().iter_mut().filter_map(|(n, e)| e.tracker.tick(now).map(|t| (n.clone(), t))).collect()
    }
}

/// What a probe fetches.
#[derive(Debug, Clone)]
struct ProbeObject {
    path: String,
    size: u64,
    sha256: [u8; 32],
}

/// Probes every connected participant every `interval` until the process ends.
pub async fn run(shared: Arc<Shared>) {
    let policy = shared.health.policy().clone();
    let mut tick = tokio::time::interval(Duration::from_millis(policy.interval_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut object: Option<(ProbeObject, tokio::time::Instant)> = None;
    let mut warned = false;
    // The first round one interval after start: participants connect meanwhile.
    tick.tick().await;
    loop {
        tick.tick().await;
        for (name, t) in shared.health.tick(shared.clock()) {
            apply(&shared, &name, t, "damping hold ended");
        }
        if object.as_ref().is_none_or(|(_, at)| at.elapsed() > PROBE_OBJECT_REFRESH) {
            object = match probe_object(&shared, policy.probe_path.as_deref()).await {
                Ok(o) => {
                    warned = false;
                    Some((o, tokio::time::Instant::now()))
                }
                Err(e) => {
                    if !warned {
                        warn!(error = %e, "no probe object: participants are judged by their heartbeats alone");
                        warned = true;
                    }
                    None
                }
            };
        }
        let Some((obj, _)) = &object else { continue };
        for p in shared.registry.list().into_iter().filter(|p| p.connected) {
            if !shared.health.start(&p.name) {
                continue;
            }
            let shared = shared.clone();
            let obj = obj.clone();
            let timeout = Duration::from_millis(policy.timeout_ms.max(1));
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let result = match tokio::time::timeout(timeout, probe_once(&shared, &p.name, &obj)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no complete answer within {} ms", timeout.as_millis())),
                };
                let took = started.elapsed();
                let outcome = if result.is_ok() { "ok" } else { "failed" };
                shared.metrics.probes.add(outcome);
                let detail = match &result {
                    Ok(_) => String::new(),
                    Err(e) => e.clone(),
                };
                if let Some(t) = shared.health.record(&p.name, &result, took, shared.clock()) {
                    apply(&shared, &p.name, t, &detail);
                }
            });
        }
    }
}

/// Acts on a health change: an unhealthy participant's flows move to others.
fn apply(shared: &Arc<Shared>, name: &str, t: Transition, detail: &str) {
    match t {
        Transition::BecameUnhealthy => {
            shared.metrics.health_changes.fetch_add(1, Ordering::Relaxed);
            let moving = shared.conduct(|c, env, now| {
                c.flows_of(name).into_iter().filter(|id| c.move_flow(*id, None, now, env).is_ok()).count()
            });
            warn!(participant = name, reason = detail, moving, "participant unhealthy: no new flows, its flows move");
        }
        Transition::BecameHealthy => {
            shared.metrics.health_changes.fetch_add(1, Ordering::Relaxed);
            info!(participant = name, "participant healthy again");
        }
    }
}

/// The object probes fetch: the configured path, or the smallest object of the origin store.
async fn probe_object(shared: &Shared, configured: Option<&str>) -> Result<ProbeObject, String> {
    let path = match configured {
        Some(p) => p.to_owned(),
        None => {
            let root = shared.origin.root().to_path_buf();
            let smallest = tokio::task::spawn_blocking(move || {
                crate::list_objects(&root)
                    .into_iter()
                    .filter_map(|rel| std::fs::metadata(root.join(&rel)).ok().map(|m| (m.len(), rel)))
                    .filter(|(len, _)| *len <= MAX_PROBE_OBJECT_BYTES)
                    .min()
            })
            .await
            .map_err(|e| e.to_string())?;
            let (_, rel) = smallest.ok_or_else(|| format!("the origin store holds no object of at most {MAX_PROBE_OBJECT_BYTES} bytes"))?;
            format!("/{rel}")
        }
    };
    let op = object_path(&path).map_err(|e| format!("probe path {path}: {e}"))?;
    let obj = shared.origin.resolve(&op).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("probe object {path} is not in the origin store"))?;
    if obj.meta.size > MAX_PROBE_OBJECT_BYTES {
        return Err(format!("probe object {path} has {} bytes; at most {MAX_PROBE_OBJECT_BYTES}", obj.meta.size));
    }
    Ok(ProbeObject { path, size: obj.meta.size, sha256: obj.meta.sha256 })
}

/// One probe of `name`: a request through the VIP that only `name` may answer.
async fn probe_once(shared: &Shared, name: &str, obj: &ProbeObject) -> Result<String, String> {
    let sock = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    sock.bind(SocketAddr::V4(SocketAddrV4::new(shared.local_addr, 0))).map_err(|e| format!("bind: {e}"))?;
    let mut stream = sock.connect(SocketAddr::V4(shared.vip)).await.map_err(|e| format!("connecting to the VIP: {e}"))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: baton-probe\r\nX-Baton-Probe: {name}\r\nConnection: close\r\n\r\n",
        obj.path,
        shared.vip.ip()
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("sending the request: {e}"))?;
    let limit = MAX_PROBE_HEAD_BYTES as u64 + obj.size + 1;
    let mut response = Vec::new();
    (&mut stream).take(limit).read_to_end(&mut response).await.map_err(|e| format!("reading the answer: {e}"))?;
    let (head, len) = match parse_response_head(&response) {
        Ok(Some(h)) => h,
        Ok(None) => return Err(format!("incomplete answer ({} bytes)", response.len())),
        Err(e) => return Err(format!("bad answer: {e}")),
    };
    let served_by = head.header("x-served-by").map(|v| String::from_utf8_lossy(v).into_owned());
    if served_by.as_deref() != Some(name) {
        return Err(format!(
            "answered by {} instead (the handoff to {name} did not happen)",
            served_by.unwrap_or_else(|| "an unnamed server".to_owned())
        ));
    }
    if head.status != 200 {
        return Err(format!("status {}", head.status));
    }
    let body = &response[len..];
    if body.len() as u64 != obj.size {
        return Err(format!("{} of {} body bytes arrived", body.len(), obj.size));
    }
    if Sha256::digest(body).as_slice() != obj.sha256 {
        return Err("the body's SHA-256 does not match the origin's".to_owned());
    }
    Ok(format!("{} ({} bytes) verified", obj.path, obj.size))
}

/// The participant a probe connection asks for: only connections from the main's own address
/// may choose their participant.
pub fn probed_participant(head: &baton_shared::http::RequestHead, peer: Ipv4Addr, local: Ipv4Addr) -> Option<String> {
    if peer != local {
        return None;
    }
    let v = head.header(PROBE_HEADER)?;
    let name = std::str::from_utf8(v).ok()?.trim();
    baton_shared::control::validate_name(name).ok()?;
    Some(name.to_owned())
}
