//! The participant's client of the main's origin store: the one place that sends it a request.
//! A `HEAD` learns an object's size and published SHA-256; a `GET` (from an offset, as a
//! range request) streams its bytes, for the cache's own fill and for the peer cache member's
//! origin fallback alike.
//!
//! One request per connection (`Connection: close`), so a closed connection is an unambiguous
//! end. This module never decides whether bytes are good: it reports what the origin published
//! (`Repr-Digest`, `Content-Length`, `Content-Range`) and the caller hashes what arrives.

use std::io;
use std::net::SocketAddrV4;
use std::time::Duration;

use baton_io::peer::transfer::{BodyStream, BoxFuture, Origin};
use baton_shared::digest::{parse_repr_digest, sha256_hex, Sha256};
use baton_shared::http::{parse_response_head, percent_encode_path, ObjectPath, ResponseHead};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Deadline for connecting to the origin and receiving its response head.
pub const ORIGIN_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause in an origin body before the transfer is abandoned.
pub const ORIGIN_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Read size of a response head; heads are far smaller than one read.
const HEAD_READ_BYTES: usize = 4096;

/// Why a request to the origin store failed.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("connecting to {origin} timed out")]
    ConnectTimeout { origin: SocketAddrV4 },
    #[error("connecting to {origin}: {source}")]
    Connect {
        origin: SocketAddrV4,
        #[source]
        source: io::Error,
    },
    #[error("talking to {origin}: {source}")]
    Io {
        origin: SocketAddrV4,
        #[source]
        source: io::Error,
    },
    #[error("bad response head from {origin}: {reason}")]
    BadHead { origin: SocketAddrV4, reason: String },
    #[error("{origin} closed before its response head")]
    Closed { origin: SocketAddrV4 },
    #[error("{origin} sent no response head in time")]
    HeadTimeout { origin: SocketAddrV4 },
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
    /// The SHA-256 the origin published (`Repr-Digest`), if any.
    pub published: Option<Sha256>,
    /// First byte of the object the body holds: 0 for a 200, the range's start for a 206.
    pub start: u64,
    /// The whole object's size (`Content-Length` of a 200, the size in `Content-Range` of a
    /// 206), when the head states it consistently.
    pub total: Option<u64>,
    pub body: OriginBody,
}

impl OriginStore {
    /// Sends `method` for `path`, asking for the bytes from `from` on when `from` is not zero.
    /// A 200 to a range request is fine: its `start` is 0 and the caller skips ahead.
    pub async fn request(&self, method: Method, path: &ObjectPath, from: u64) -> Result<Reply, OriginError> {
        let origin = self.addr;
        let io_err = |source| OriginError::Io { origin, source };
        let mut stream = tokio::time::timeout(ORIGIN_HEAD_TIMEOUT, TcpStream::connect(origin))
            .await
            .map_err(|_| OriginError::ConnectTimeout { origin })?
            .map_err(|source| OriginError::Connect { origin, source })?;
        let verb = match method {
            Method::Head => "HEAD",
            Method::Get => "GET",
        };
        let range = if from > 0 && method == Method::Get { format!("Range: bytes={from}-\r\n") } else { String::new() };
        let req = format!(
            "{verb} /{} HTTP/1.1\r\nHost: {origin}\r\nUser-Agent: baton-participant\r\n{range}Connection: close\r\n\r\n",
            percent_encode_path(path.as_str()),
        );
        stream.write_all(req.as_bytes()).await.map_err(io_err)?;
        let mut buf = Vec::with_capacity(HEAD_READ_BYTES);
        let (head, head_len) = tokio::time::timeout(ORIGIN_HEAD_TIMEOUT, async {
            loop {
                match parse_response_head(&buf) {
                    // An interim (1xx) response: the real one follows.
                    Ok(Some((h, len))) if h.status < 200 => {
                        buf.drain(..len);
                        continue;
                    }
                    Ok(Some(h)) => return Ok(h),
                    Ok(None) => {}
                    Err(e) => return Err(OriginError::BadHead { origin, reason: e.to_string() }),
                }
                let mut chunk = [0u8; HEAD_READ_BYTES];
                let n = stream.read(&mut chunk).await.map_err(io_err)?;
                if n == 0 {
                    return Err(OriginError::Closed { origin });
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .map_err(|_| OriginError::HeadTimeout { origin })??;
        buf.drain(..head_len);
        let published = head.header("repr-digest").and_then(parse_repr_digest);
        let length = head.content_length();
        let (start, total) = match head.status {
            200 => (0, length),
            206 => match head.header("content-range").and_then(parse_content_range) {
                Some((start, size)) => (start, Some(size)),
                None => return Err(OriginError::BadHead { origin, reason: "a 206 without a valid Content-Range".to_owned() }),
            },
            _ => (0, None),
        };
        let remaining = match (method, head.status) {
            (Method::Get, 200 | 206) => length
                .ok_or_else(|| OriginError::BadHead { origin, reason: "a body without Content-Length".to_owned() })?,
            _ => 0,
        };
        if let (206, Some(total)) = (head.status, total) {
            if start.checked_add(remaining) != Some(total) {
                return Err(OriginError::BadHead {
                    origin,
                    reason: format!("the body ({remaining} bytes from {start}) does not reach the end of {total} bytes"),
                });
            }
        }
        Ok(Reply { head, published, start, total, body: OriginBody { stream, buffered: buf, pos: 0, remaining } })
    }
}

/// A response body: what came with the head first, then the socket, up to the declared length.
#[derive(Debug)]
pub struct OriginBody {
    stream: TcpStream,
    buffered: Vec<u8>,
    pos: usize,
    remaining: u64,
}

impl OriginBody {
    /// Bytes of the body not read yet.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Reads the next bytes; `Ok(0)` once the declared length was read. A connection that
    /// closes early or stalls for [`ORIGIN_STALL_TIMEOUT`] is an error.
    pub async fn read_some(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || out.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(out.len());
        let n = if self.pos < self.buffered.len() {
            let n = want.min(self.buffered.len() - self.pos);
            out[..n].copy_from_slice(&self.buffered[self.pos..self.pos + n]);
            self.pos += n;
            n
        } else {
            let n = tokio::time::timeout(ORIGIN_STALL_TIMEOUT, self.stream.read(&mut out[..want]))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "origin stalled"))??;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("origin closed with {} bytes missing", self.remaining),
                ));
            }
            n
        };
        self.remaining -= n as u64;
        Ok(n)
    }

    /// Reads and drops `n` bytes (an origin that ignored the Range header).
    pub async fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let mut scratch = vec![0u8; 64 * 1024];
        while n > 0 {
            let want = usize::try_from(n).unwrap_or(usize::MAX).min(scratch.len());
            let got = self.read_some(&mut scratch[..want]).await?;
            if got == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body ended before the requested offset"));
            }
            n -= got as u64;
        }
        Ok(())
    }
}

impl BodyStream for OriginBody {
    fn read<'a>(&'a mut self, out: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>> {
        Box::pin(self.read_some(out))
    }
}

/// `bytes a-b/size` → `(a, size)`, when `a <= b < size`.
fn parse_content_range(value: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let (range, size) = s.strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b, size): (u64, u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?, size.trim().parse().ok()?);
    (a <= b && b < size).then_some((a, size))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range(b"bytes 10-99/100"), Some((10, 100)));
        assert_eq!(parse_content_range(b"bytes 0-0/1"), Some((0, 1)));
        assert_eq!(parse_content_range(b"bytes 10-100/100"), None);
        assert_eq!(parse_content_range(b"bytes */100"), None);
    }
}
