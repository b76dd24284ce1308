//! The participant's control connection to the main and the handed-off connections it serves.
//!
//! For each handoff: make sure the object is cached and verified, restore the socket, serve at
//! once and report `Restored` — the main already forwards the client's packets here (segments
//! that arrived before the socket existed were dropped by the data plane, never reset). When the
//! object or the restore fails, the answer is `RestoreFailed` and nothing has been sent to the
//! client, so the main can answer it itself.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_io::control::{write_message, FrameReader};
use baton_io::http::{serve_connection, ServeConfig};
use baton_io::repair::{close_silently, restore, Resume};
use baton_io::store::Primed;
use baton_shared::control::Message;
use baton_shared::geo::Coord;
use baton_shared::handoff::Handoff;
use baton_shared::http::object_path;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{info, info_span, warn, Instrument};

use crate::cache::CacheStore;

/// Interval between heartbeats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);
/// Delay before reconnecting after the control connection fails (doubles up to the maximum).
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Outbound control messages queued before the writer sends them.
const OUTBOUND_QUEUE_DEPTH: usize = 1024;

/// Who this participant is, as it registers.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub addr: std::net::Ipv4Addr,
    pub coord: Coord,
    pub capacity: u32,
}

/// State shared by the agent's tasks.
#[derive(Debug)]
pub struct Agent {
    pub identity: Identity,
    pub main: SocketAddrV4,
    pub cache: CacheStore,
    pub serve: ServeConfig,
    pub active: AtomicU32,
}

impl Agent {
    pub fn new(identity: Identity, main: SocketAddrV4, cache: CacheStore, serve: ServeConfig) -> Arc<Self> {
        Arc::new(Self { identity, main, cache, serve, active: AtomicU32::new(0) })
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

    async fn session(self: Arc<Self>) -> std::io::Result<()> {
        let stream = TcpStream::connect(self.main).await?;
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = stream.into_split();
        let mut reader = FrameReader::new(rd);
        let id = &self.identity;
        write_message(
            &mut wr,
            &Message::Register { name: id.name.clone(), addr: id.addr, coord: id.coord, capacity: id.capacity },
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
        let (tx, mut rx) = mpsc::channel::<Message>(OUTBOUND_QUEUE_DEPTH);
        let writer = tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if write_message(&mut wr, &msg).await.is_err() {
                    break;
                }
            }
        });
        let hb_tx = tx.clone();
        let me = self.clone();
        let heartbeat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
            loop {
                tick.tick().await;
                let active_flows = me.active.load(Ordering::Relaxed);
                if hb_tx.send(Message::Heartbeat { active_flows }).await.is_err() {
                    break;
                }
            }
        });
        let result = loop {
            match reader.next().await {
                Ok(Some(Message::Handoff(h))) => {
                    let flow = h.flow_id;
                    tokio::spawn(self.clone().take_over(h, tx.clone()).instrument(info_span!("flow", flow)));
                }
                Ok(Some(other)) => warn!(message = ?other, "unexpected control message"),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        heartbeat.abort();
        writer.abort();
        result
    }

    async fn take_over(self: Arc<Self>, h: Handoff, tx: mpsc::Sender<Message>) {
        let flow_id = h.flow_id;
        let client = h.tcp.remote;
        let t0 = std::time::Instant::now();
        // The handed-off object, cached and verified before the connection is restored: if it
        // cannot be had, the main still holds the connection and answers it.
        let mut primed = None;
        if let Some(plan) = &h.object {
            let path = match object_path(&format!("/{}", plan.path)) {
                Ok(p) => p,
                Err(e) => return refuse(&tx, flow_id, format!("bad object path: {e}")).await,
            };
            match self.cache.get(&path, Some(&plan.sha256)).await {
                Ok(Some(obj)) => primed = Some((path, obj)),
                Ok(None) => return refuse(&tx, flow_id, "origin has no such object".to_owned()).await,
                Err(e) => return refuse(&tx, flow_id, e.to_string()).await,
            }
        }
        let cached = t0.elapsed();
        let fd = match restore(&h.tcp, Resume::Quiet) {
            Ok(fd) => fd,
            Err(e) => return refuse(&tx, flow_id, format!("restore failed: {e}")).await,
        };
        let restored = t0.elapsed();
        // Until the report goes out the connection is still the main's to take back: any
        // failure here closes the restored socket silently and says so.
        if let Err(e) = set_nonblocking(&fd) {
            close_silently(fd);
            return refuse(&tx, flow_id, format!("restored socket: {e}")).await;
        }
        let mut stream = match TcpStream::from_std(std::net::TcpStream::from(fd)) {
            Ok(s) => s,
            Err(e) => {
                // The descriptor went with the error; this participant sent the client nothing.
                return refuse(&tx, flow_id, format!("registering the restored socket: {e}")).await;
            }
        };
        let _ = stream.set_nodelay(true);
        self.active.fetch_add(1, Ordering::Relaxed);
        // Serve first, report second: the client's first byte does not wait for the report,
        // which only lets the main close its frozen copy.
        let me = self.clone();
        let serving = tokio::spawn(async move {
            let stats = match primed {
                Some((path, obj)) => {
                    let source = Primed::new(&me.cache, path, obj);
                    serve_connection(&mut stream, h.request, &source, &me.serve).await
                }
                None => serve_connection(&mut stream, h.request, &me.cache, &me.serve).await,
            };
            drop(stream);
            stats
        });
        let _ = tx.send(Message::Restored { flow_id }).await;
        let stats = match serving.await {
            Ok(stats) => stats,
            Err(e) => Err(std::io::Error::other(e)),
        };
        self.active.fetch_sub(1, Ordering::Relaxed);
        let bytes_sent = match stats {
            Ok(s) => {
                info!(
                    %client,
                    requests = s.requests,
                    bytes = s.body_bytes,
                    cache_us = cached.as_micros() as u64,
                    restore_us = (restored - cached).as_micros() as u64,
                    "handed-off connection done"
                );
                s.body_bytes
            }
            Err(e) => {
                info!(%client, error = %e, "connection ended");
                0
            }
        };
        let _ = tx.send(Message::FlowClosed { flow_id, bytes_sent }).await;
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

async fn refuse(tx: &mpsc::Sender<Message>, flow_id: u64, reason: String) {
    warn!(reason = %reason, "refusing handoff");
    let _ = tx.send(Message::RestoreFailed { flow_id, reason }).await;
}
