//! Plain HTTP/1.1 GETs for the peer cache: a package from a peer (by id, from an offset) and a
//! package from a plain-HTTP origin, and the [`Origin`] trait through which callers supply
//! their own origin client (baton-fetch brings HTTPS and FTP).
//!
//! One request per connection (`Connection: close`): transfers are whole packages, so there is
//! nothing to gain from keeping connections, and a closed connection is an unambiguous end.
//! Nothing here decides which source to use or trusts what it receives: the member hashes every
//! byte and decides.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use baton_shared::digest::{parse_legacy_digest, parse_repr_digest, Sha256};
use baton_shared::http::{parse_response_head, ResponseHead};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Deadline for connecting to a peer or origin. Peers sit on the same LAN, so a peer that has
/// not accepted within this is as good as gone; the origin gets the same, generous, bound.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline for a response head after the request was sent.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause in a body before the transfer is abandoned and continued elsewhere. A peer
/// that is itself still downloading pauses while its own source does, so this is longer than
/// the pause a healthy LAN transfer ever shows, but short enough that a stuck chain is left
/// quickly.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Read size for heads and bodies.
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Longest `Retry-After` honoured; a server asking for more is treated as asking for this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// A boxed future, for the object-safe [`Origin`] trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A body being received.
pub trait BodyStream: Send {
    /// Reads the next bytes; `Ok(0)` at the end of the body.
    fn read<'a>(&'a mut self, out: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>>;
}

/// Where a package comes from when no peer has it.
pub trait Origin: Send + Sync {
    /// The package's bytes from `offset` to its end.
    fn open(&self, offset: u64) -> BoxFuture<'_, io::Result<Box<dyn BodyStream>>>;
    /// How the origin is named in logs and errors.
    fn describe(&self) -> String;
}

/// The answer to a GET.
#[derive(Debug)]
pub enum Got {
    /// 200 or 206: the body starts at byte `start` of the resource, which is `total` bytes long.
    Body { head: ResponseHead, body: Body, start: u64, total: u64 },
    /// Any other status, with `Retry-After` when given (in seconds).
    Status { status: u16, retry_after: Option<Duration> },
}

/// A response body read from a connection: what came with the head first, then the socket,
/// up to the declared length.
#[derive(Debug)]
pub struct Body {
    stream: TcpStream,
    buffered: Vec<u8>,
    pos: usize,
    remaining: u64,
    /// Longest pause tolerated between reads.
    stall: Duration,
}

impl Body {
    /// Bytes of the body not read yet.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Reads the next bytes; `Ok(0)` once the declared length was read. A connection that
    /// closes early or pauses longer than the request's stall bound is an error.
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
            let n = tokio::time::timeout(self.stall, self.stream.read(&mut out[..want]))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the body stalled"))??;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("closed with {} bytes missing", self.remaining)));
            }
            n
        };
        self.remaining -= n as u64;
        Ok(n)
    }

    /// Reads and drops `n` bytes (a server that ignored a Range header).
    pub async fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let mut scratch = vec![0u8; READ_CHUNK_BYTES.min(usize::try_from(n).unwrap_or(usize::MAX))];
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

impl BodyStream for Body {
    fn read<'a>(&'a mut self, out: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>> {
        Box::pin(self.read_some(out))
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A response: its head, where its body starts in the resource and the resource's size (from
/// `Content-Length` of a 200, `Content-Range` of a 206; `None` for other statuses), and the
/// body (empty for a `HEAD` and for other statuses).
#[derive(Debug)]
pub struct Response {
    pub head: ResponseHead,
    pub start: u64,
    pub total: Option<u64>,
    pub body: Body,
}

/// One request: `method` (`GET` or `HEAD`) of `target` on `addr` with `Host: host`, asking for
/// the bytes from `from` on when `from` is not zero (a 200 to such a request is accepted: its
/// body starts at 0). Bodies may pause at most `stall` between reads. Interim (1xx) responses
/// are skipped; a 206 must state a `Content-Range` its body reaches the end of.
pub async fn request(addr: SocketAddr, host: &str, method: &str, target: &str, from: u64, user_agent: &str, stall: Duration) -> io::Result<Response> {
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr} timed out")))??;
    let _ = stream.set_nodelay(true);
    let range = if from > 0 { format!("Range: bytes={from}-\r\n") } else { String::new() };
    let req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\n{range}Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(8192);
    let (head, len) = tokio::time::timeout(HEAD_TIMEOUT, async {
        loop {
            match parse_response_head(&buf) {
                Ok(Some((head, len))) if head.status >= 200 => return Ok((head, len)),
                Ok(Some((_, len))) => {
                    buf.drain(..len);
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Err(invalid(format!("bad response head: {e}"))),
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the response head"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response head in time"))??;
    buf.drain(..len);
    let length = head.content_length();
    let (start, total) = match head.status {
        200 => (0, length),
        206 => {
            let value = head.header("content-range").ok_or_else(|| invalid("a 206 without Content-Range"))?;
            let (start, total) = parse_content_range(value).ok_or_else(|| invalid("a Content-Range that is not `bytes a-b/size`"))?;
            (start, Some(total))
        }
        _ => (0, None),
    };
    let remaining = match head.status {
        200 | 206 if method != "HEAD" => length.ok_or_else(|| invalid("a body without Content-Length"))?,
        _ => 0,
    };
    if head.status == 206 && total.is_some_and(|t| start.checked_add(remaining) != Some(t)) {
        return Err(invalid(format!("the body ({remaining} bytes from {start}) does not reach the end of {} bytes", total.unwrap_or(0))));
    }
    let body = Body { stream, buffered: buf, pos: 0, remaining, stall };
    Ok(Response { head, start, total, body })
}

/// `GET target` from a peer (see [`request`]), as [`Got`].
pub async fn get(addr: SocketAddr, host: &str, target: &str, from: u64) -> io::Result<Got> {
    let r = request(addr, host, "GET", target, from, "baton-peer", STALL_TIMEOUT).await?;
    match (r.head.status, r.total) {
        (200 | 206, Some(total)) => Ok(Got::Body { head: r.head, body: r.body, start: r.start, total }),
        (200 | 206, None) => Err(invalid("a 200 without Content-Length")),
        (status, _) => {
            let retry_after = r
                .head
                .header("retry-after")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
            Ok(Got::Status { status, retry_after })
        }
    }
}

/// `bytes a-b/size` → `(a, size)`, when `a <= b < size`.
fn parse_content_range(value: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let rest = s.strip_prefix("bytes ")?;
    let (range, size) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b, size): (u64, u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?, size.trim().parse().ok()?);
    (a <= b && b < size).then_some((a, size))
}

/// The SHA-256 a response head publishes (`Repr-Digest`, else `Digest`).
pub fn published_sha256(head: &ResponseHead) -> Option<Sha256> {
    head.header("repr-digest")
        .and_then(parse_repr_digest)
        .or_else(|| head.header("digest").and_then(parse_legacy_digest))
}

/// A plain-HTTP origin: one URL, fetched with a range from any offset. The main's origin store
/// for participants, and `http://` URLs for baton-fetch.
#[derive(Debug, Clone)]
pub struct HttpOrigin {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
    /// The request target (`/path`, percent-encoded).
    pub target: String,
}

impl Origin for HttpOrigin {
    fn open(&self, offset: u64) -> BoxFuture<'_, io::Result<Box<dyn BodyStream>>> {
        Box::pin(async move {
            match get(self.addr, &self.host, &self.target, offset).await? {
                Got::Body { mut body, start, .. } => {
                    body.skip(offset.saturating_sub(start)).await?;
                    Ok(Box::new(body) as Box<dyn BodyStream>)
                }
                Got::Status { status, .. } => Err(io::Error::other(format!("the origin answered {status}"))),
            }
        })
    }

    fn describe(&self) -> String {
        format!("http://{}{}", self.host, self.target)
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
        assert_eq!(parse_content_range(b"bytes 10-9/100"), None);
        assert_eq!(parse_content_range(b"bytes */100"), None);
        assert_eq!(parse_content_range(b"items 1-2/3"), None);
    }
}
