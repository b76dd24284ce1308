//! The member's HTTP server: `GET /peer/v1/<id>` answers with the package's bytes, whole or
//! from a `Range`, while there is a free upload slot, and `503` with `Retry-After` otherwise.
//!
//! A package still downloading is served too: the head announces the full length, and the body
//! follows the download as it grows. If that download fails, the connection is closed early,
//! which the requester sees as a short body and continues elsewhere. This server never serves a
//! package it does not hold, and never waits on a requester while holding a lock.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use baton_shared::http::{plan_object_response, plan_request_error, Method, ObjectMeta, RequestHead, ResponsePlan};
use baton_shared::peer::PackageId;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::{Holding, Member, Phase};
use crate::http::{read_head, HeadRead};

/// The path prefix under which packages are served.
pub const PATH_PREFIX: &str = "/peer/v1/";
/// Seconds a busy reply asks the requester to wait before asking this peer again. Requesters
/// move on to their next candidate at once; this only spaces out the retries of those that
/// have no other.
pub const BUSY_RETRY_AFTER_SECS: u64 = 1;
/// How long a requester may take to send its request head.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from the file per write while serving.
const SEND_CHUNK_BYTES: usize = 256 * 1024;
/// Longest wait for a downloading package to grow before the response is cut off.
const GROW_TIMEOUT: Duration = Duration::from_secs(30);
/// Delay before accepting again after `accept` failed.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Connections served at once (busy answers included). Far above any LAN's requesters, and a
/// bound on the descriptors and tasks a connection flood can take; past it, new connections
/// wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// Longest a write to a requester may block (its receive window stays closed). A requester
/// that stops reading gives its upload slot back after this.
pub const SEND_STALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Accepts and serves until the process ends.
pub(super) async fn run(listener: TcpListener, member: Arc<Member>) {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, from)) => {
                let member = member.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = handle(stream, &member).await {
                        tracing::debug!(%from, error = %e, "peer request ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

async fn handle(mut stream: TcpStream, member: &Member) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let head = match read_head(&mut stream, &mut buf, REQUEST_HEAD_TIMEOUT).await? {
        HeadRead::Head { head, .. } => head,
        HeadRead::Invalid(e) => {
            let plan = baton_shared::http::plan_error_response(e.status(), false, super::SERVER_NAME);
            return send(&mut stream, &plan.head).await;
        }
        HeadRead::Closed | HeadRead::TimedOut => return Ok(()),
    };
    let reply = |status: u16| {
        let mut plan = plan_request_error(&head, status, super::SERVER_NAME);
        close(&mut plan);
        plan
    };
    if matches!(head.method, Method::Other(_)) {
        return send(&mut stream, &reply(405).head).await;
    }
    let Some(id) = head.target.strip_prefix(PATH_PREFIX).and_then(|s| PackageId::parse(s).ok()) else {
        return send(&mut stream, &reply(404).head).await;
    };
    let Some(holding) = member.holding(&id) else {
        return send(&mut stream, &reply(404).head).await;
    };
    let Ok(_slot) = member.slots.clone().try_acquire_owned() else {
        member.counters.busy_sent.fetch_add(1, Ordering::Relaxed);
        let mut plan = reply(503);
        plan.add_header("Retry-After", &BUSY_RETRY_AFTER_SECS.to_string());
        tracing::debug!(%id, "busy: every upload slot is taken");
        return send(&mut stream, &plan.head).await;
    };
    serve_holding(&mut stream, &head, holding, member).await
}

/// Writes all of `bytes`, or fails when the requester keeps its window closed for
/// [`SEND_STALL_TIMEOUT`].
async fn send(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    tokio::time::timeout(SEND_STALL_TIMEOUT, stream.write_all(bytes))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the requester stopped reading"))?
}

/// Every peer response closes its connection (see the transfer module).
fn close(plan: &mut ResponsePlan) {
    if plan.keep_alive {
        plan.keep_alive = false;
        plan.add_header("Connection", "close");
    }
}

async fn serve_holding(stream: &mut TcpStream, head: &RequestHead, holding: Holding, member: &Member) -> io::Result<()> {
    let (path, package, mut progress) = match holding {
        Holding::Complete { path, package } => (path, package, None),
        Holding::Downloading { path, package, progress } => (path, package, Some(progress)),
    };
    let file = std::fs::File::open(&path)?;
    if progress.is_none() && file.metadata()?.len() != package.size {
        // Replaced since it was offered (a cache holding a new version there): not this
        // package any more, and serving it would only get this member blamed.
        return Err(io::Error::other("the held file no longer has the package's size"));
    }
    let meta = ObjectMeta { size: package.size, sha256: package.sha256, last_modified_unix: None };
    let mut plan = plan_object_response(head, &meta, super::SERVER_NAME);
    close(&mut plan);
    plan.add_header("X-Baton-Peer-State", if progress.is_some() { "downloading" } else { "complete" });
    send(stream, &plan.head).await?;
    let Some((mut offset, len)) = plan.body else { return Ok(()) };
    let end = offset + len;
    let file = Arc::new(file);
    while offset < end {
        let available = match progress.as_mut() {
            None => end,
            Some(rx) => loop {
                let now = *rx.borrow_and_update();
                match now.phase {
                    Phase::Done => break end,
                    Phase::Failed => return Err(io::Error::other("the download this was served from failed")),
                    Phase::Running if now.have > offset => break now.have.min(end),
                    Phase::Running => {
                        if tokio::time::timeout(GROW_TIMEOUT, rx.changed()).await.map_err(|_| io::Error::other("the download stalled"))?.is_err() {
                            // The downloader is gone; whatever it left is judged by the phase
                            // it set last.
                            let last = *rx.borrow();
                            match last.phase {
                                Phase::Done => break end,
                                _ => return Err(io::Error::other("the download ended unfinished")),
                            }
                        }
                    }
                }
            },
        };
        let want = usize::try_from(available - offset).unwrap_or(usize::MAX).min(SEND_CHUNK_BYTES);
        let f = file.clone();
        let chunk = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; want];
            let n = f.read_at(&mut buf, offset)?;
            buf.truncate(n);
            Ok::<_, io::Error>(buf)
        })
        .await
        .map_err(io::Error::other)??;
        if chunk.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the package file is shorter than its size"));
        }
        send(stream, &chunk).await?;
        offset += chunk.len() as u64;
        member.counters.served_bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    stream.flush().await
}
