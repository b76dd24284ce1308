//! The participant's client of the main's origin store: the one place that sends it a request.
//! A `HEAD` learns an object's size and published SHA-256; a `GET` (from an offset, as a
//! range request) streams its bytes, for the cache's own fill and for the peer cache member's
//! origin fallback alike.
//!
//! The HTTP exchange itself is `baton_io::peer::transfer::request`, which the peer cache uses
//! for peers too: one request per connection (`Connection: close`), so a closed connection is
//! an unambiguous end. This module never decides whether bytes are good: it reports what the origin published
//! (`Repr-Digest`, `Content-Length`, `Content-Range`) and the caller hashes what arrives.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use baton_io::peer::transfer::{self, Body, BodyStream, BoxFuture, Origin};
use baton_shared::digest::{sha256_hex, Sha256};
use baton_shared::http::{percent_encode_path, ObjectPath, ResponseHead};

/// Longest pause in an origin body before the transfer is abandoned. (Connecting and the
/// response head have `baton_io::peer::transfer`'s bounds.)
pub const ORIGIN_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request to the origin store failed.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("origin store {origin}: {source}")]
    Io {
        origin: SocketAddrV4,
        #[source]
        source: io::Error,
    },
}

/// `HEAD` or `GET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Head,
    Get,
}

/// The main's origin store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginStore {
    pub addr: SocketAddrV4,
}

/// The origin's answer: the head, what it says about the object, and the body (empty for a
/// `HEAD` and for statuses other than 200 and 206).
#[derive(Debug)]
pub struct Reply {
    pub head: ResponseHead,
    /// The SHA-256 the origin published (`Repr-Digest`, else `Digest`), if any.
    pub published: Option<Sha256>,
    /// First byte of the object the body holds: 0 for a 200, the range's start for a 206.
    pub start: u64,
    /// The whole object's size (`Content-Length` of a 200, the size in `Content-Range` of a
    /// 206), when the head states it consistently.
    pub total: Option<u64>,
    pub body: Body,
}

impl OriginStore {
    /// Sends `method` for `path`, asking for the bytes from `from` on when `from` is not zero.
    /// A 200 to a range request is fine: its `start` is 0 and the caller skips ahead.
    pub async fn request(&self, method: Method, path: &ObjectPath, from: u64) -> Result<Reply, OriginError> {
        let origin = self.addr;
        let verb = match method {
            Method::Head => "HEAD",
            Method::Get => "GET",
        };
        let target = format!("/{}", percent_encode_path(path.as_str()));
        let from = if method == Method::Get { from } else { 0 };
        let r = transfer::request(SocketAddr::V4(origin), &origin.to_string(), verb, &target, from, "baton-participant", ORIGIN_STALL_TIMEOUT)
            .await
            .map_err(|source| OriginError::Io { origin, source })?;
        let published = transfer::published_sha256(&r.head);
        Ok(Reply { head: r.head, published, start: r.start, total: r.total, body: r.body })
    }
}

/// One object of the origin store as the peer cache member's origin fallback: each `open`
/// is a range request from the member's offset, refused unless the origin still publishes
/// the expected SHA-256 and size (so no byte of another version is fetched in vain).
#[derive(Debug, Clone)]
pub struct ObjectOrigin {
    pub store: OriginStore,
    pub path: ObjectPath,
    pub sha256: Sha256,
    pub size: u64,
}

impl ObjectOrigin {
    async fn open_at(&self, offset: u64) -> io::Result<Box<dyn BodyStream>> {
        let mut reply = self.store.request(Method::Get, &self.path, offset).await.map_err(io::Error::other)?;
        match reply.head.status {
            200 | 206 => {}
            404 => return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} has no {}", self.store.addr, self.path))),
            s => return Err(io::Error::other(format!("the origin answered {s}"))),
        }
        let published = reply
            .published
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "the origin published no sha-256 Repr-Digest"))?;
        if published != self.sha256 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the origin now publishes sha-256 {}, not {}", sha256_hex(&published), sha256_hex(&self.sha256)),
            ));
        }
        if reply.total != Some(self.size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the origin's object is {:?} bytes, not {}", reply.total, self.size),
            ));
        }
        if reply.start > offset {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("asked for {offset}-, got {}-", reply.start)));
        }
        reply.body.skip(offset - reply.start).await?;
        Ok(Box::new(reply.body))
    }
}

impl Origin for ObjectOrigin {
    fn open(&self, offset: u64) -> BoxFuture<'_, io::Result<Box<dyn BodyStream>>> {
        Box::pin(self.open_at(offset))
    }

    fn describe(&self) -> String {
        format!("http://{}/{}", self.store.addr, self.path)
    }
}
