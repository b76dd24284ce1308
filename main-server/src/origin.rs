//! The main's origin listener: participants fill their caches from it, and peer-cache members
//! use the cluster's package list on it.
//!
//! Requests under [`PACKAGES_PREFIX`] go to [`crate::packages`]. The first request that is
//! anything else hands the connection, with the bytes read so far, to `baton_io`'s object
//! server (a [`Session`], exactly as `baton_io::http::serve_connection` runs it), which answers
//! it and every later request of that connection as before: `sendfile`, ranges, keep-alive,
//! the head deadline. (So a package request after an object request on one connection is
//! answered as an object request; members make their list calls on connections of their own.)
//!
//! It never buffers an object and never reads a request body other than a package report's,
//! bounded. Each object it resolves is described in the package list (SHA-256 and size, which
//! the store has computed itself), and the body bytes of its object responses are counted.
//!
//! [`PACKAGES_PREFIX`]: baton_io::peer::api::PACKAGES_PREFIX

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_io::http::{read_head, send_all, HeadRead, ServeConfig, MAX_LISTENER_CONNECTIONS};
use baton_io::session::Session;
use baton_io::store::{DirStore, Object, ObjectSource, StoreError};
use baton_shared::handoff::Response;
use baton_shared::http::{plan_error_response, ObjectPath};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::packages::{self, Packages};

/// Delay before accepting again after `accept` failed (e.g. out of descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// What the origin listener serves from, and what it counts.
#[derive(Debug, Clone)]
pub struct Origin {
    pub store: DirStore,
    pub packages: Arc<Packages>,
    pub serve: ServeConfig,
    /// Body bytes of the object responses sent (`baton_origin_sent_bytes_total`). Counted as
    /// each response starts, so one the client abandons midway counts whole.
    pub sent_bytes: Arc<AtomicU64>,
}

/// The origin store as the listener sees it: every object resolved is described in the list.
#[derive(Debug)]
struct Describing<'a> {
    store: &'a DirStore,
    packages: &'a Packages,
}

impl ObjectSource for Describing<'_> {
    async fn resolve(&self, path: &ObjectPath) -> Result<Option<Object>, StoreError> {
        let found = self.store.resolve(path).await;
        if let Ok(Some(obj)) = &found {
            self.packages.describe_origin(obj.meta.sha256, obj.meta.size);
        }
        found
    }
}

/// Hashes the origin's objects (a bounded number, see [`crate::list_objects`]) so the first
/// request for each is not delayed, and describes each in the package list.
pub async fn prewarm(store: &DirStore, packages: &Packages) {
    let source = Describing { store, packages };
    for path in crate::list_objects(store.root()) {
        if let Ok(p) = baton_shared::http::object_path(&format!("/{path}")) {
            let _ = source.resolve(&p).await;
        }
    }
}

/// Serves every connection accepted on `listener`, at most [`MAX_LISTENER_CONNECTIONS`] at
/// once, until the process ends.
pub async fn run(listener: TcpListener, origin: Arc<Origin>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_LISTENER_CONNECTIONS));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let origin = origin.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    if let Err(e) = serve(stream, peer, &origin).await {
                        tracing::debug!(server = "origin", client = %peer, error = %e, "connection ended");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(server = "origin", error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// One connection from `peer`: package requests while they come, then objects for the rest of
/// it. (A package report must name `peer`'s own address, see [`crate::packages`].)
async fn serve(mut stream: TcpStream, peer: SocketAddr, origin: &Origin) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        match read_head(&mut stream, &mut buf, origin.serve.head_timeout).await? {
            HeadRead::Head { head, len } if packages::route(&head.target).is_some() => {
                if !packages::serve_request(&mut stream, &mut buf, &head, len, peer.ip(), &origin.packages, &origin.serve).await? {
                    let _ = stream.shutdown().await;
                    return Ok(());
                }
            }
            // An object request, or a head the object server refuses just as it always has
            // (it parses the same bytes again and answers with the same error).
            HeadRead::Head { .. } | HeadRead::Invalid(_) => return serve_objects(stream, buf, origin).await,
            HeadRead::Closed => return Ok(()),
            HeadRead::TimedOut => {
                // As the object server does: 408 only when a head had started.
                if !buf.is_empty() {
                    let plan = plan_error_response(408, false, &origin.serve.server_name);
                    let _ = send_all(&stream, &plan.head, origin.serve.send_timeout).await;
                }
                let _ = stream.shutdown().await;
                return Ok(());
            }
        }
    }
}

/// Serves objects on `stream` until it ends, starting with the requests in `buf`.
async fn serve_objects(mut stream: TcpStream, buf: Vec<u8>, origin: &Origin) -> io::Result<()> {
    let source = Describing { store: &origin.store, packages: &origin.packages };
    // Nobody ever asks for an origin connection back.
    let (_never, stop) = tokio::sync::watch::channel(false);
    let sent = &origin.sent_bytes;
    let mut count = |r: Response| {
        if let Some(body) = r.body {
            sent.fetch_add(body.len, Ordering::Relaxed);
        }
    };
    Session::new(&mut stream, &source, &origin.serve, 0, 0, buf, stop, &mut count).resume(Vec::new()).await.map(|_| ())
}

#[cfg(test)]
mod tests;
