//! HTTP/1.1 connections over tokio: read a request head within a deadline, answer it from an
//! [`ObjectSource`] with `sendfile(2)`, and keep the connection alive while the client wants.
//!
//! Parsing and response planning live in `baton_shared::http`; this module only moves bytes.
//! It never reads a request body (GET and HEAD have none; the parser rejects bodies) and never
//! buffers an object in memory.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use baton_shared::http::{
    object_path, parse_request_head, plan_error_response, plan_object_response, HeadError, Method, RequestHead,
    ResponsePlan,
};
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;

use crate::store::{Object, ObjectSource};

/// How long a client may take to send a complete request head, counted from the moment we
/// start waiting for it (slowloris defence; nginx's `client_header_timeout` plays this role).
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Read size for request heads.
const READ_CHUNK_BYTES: usize = 4096;

/// Serving settings shared by every connection of a listener.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The `Server` header value.
    pub server_name: String,
    /// Deadline for each request head (and for the idle wait before it).
    pub head_timeout: Duration,
    /// Value of an `X-Served-By` response header naming this server (as CDNs do), if any.
    pub served_by: Option<String>,
}

impl ServeConfig {
    /// Adds this server's own headers to a planned response head.
    pub fn finish(&self, plan: &mut ResponsePlan) {
        let Some(name) = &self.served_by else { return };
        if let Some(end) = plan.head.windows(4).position(|w| w == b"\r\n\r\n") {
            let line = format!("X-Served-By: {name}\r\n");
            plan.head.splice(end + 2..end + 2, line.into_bytes());
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self { server_name: "baton".to_owned(), head_timeout: DEFAULT_HEAD_TIMEOUT, served_by: None }
    }
}

/// The outcome of waiting for a request head.
#[derive(Debug)]
pub enum HeadRead {
    /// A complete head: the first `len` bytes of the buffer (left there for the caller).
    Head { head: RequestHead, len: usize },
    /// The client closed the connection cleanly between requests.
    Closed,
    /// The head was malformed or too large; answer with `err.status()` and close.
    Invalid(HeadError),
    /// The deadline passed before the head was complete.
    TimedOut,
}

/// Reads until `buf` holds a complete request head, or the deadline, EOF or a parse error.
///
/// Cancel-safe: bytes are appended to `buf` only after a read completed, so a caller may race
/// this against another event and call again later without losing or inventing input.
pub async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>, timeout: Duration) -> io::Result<HeadRead> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match parse_request_head(buf) {
            Ok(Some((head, len))) => return Ok(HeadRead::Head { head, len }),
            Ok(None) => {}
            Err(e) => return Ok(HeadRead::Invalid(e)),
        }
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return Ok(HeadRead::TimedOut),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => {
                return if buf.is_empty() {
                    Ok(HeadRead::Closed)
                } else {
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a request head"))
                };
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Runs a non-blocking write system call on the socket, waiting for writability only when the
/// kernel says it would block.
///
/// The call is tried first rather than after a readiness check: a socket tokio has just been
/// given (a restored connection) has no readiness recorded yet, and waiting for the first event
/// would cost a whole event-loop turn before the first byte. On `EWOULDBLOCK` tokio's readiness
/// is cleared through `try_io`, so the wait that follows is for a real edge.
async fn write_op(stream: &TcpStream, mut op: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = stream.try_io(Interest::WRITABLE, || Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock)));
                stream.writable().await?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

fn syscall_result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Writes all of `buf` to the socket.
pub async fn send_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    let fd = stream.as_raw_fd();
    while !buf.is_empty() {
        let n = write_op(stream, || {
            // SAFETY: `buf` is valid for its length; the descriptor is open.
            syscall_result(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })
        })
        .await?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// Plans the answer to a request head: an error plan when the method or path is unacceptable
/// (without touching the source), or the object's response.
pub async fn plan_for<S: ObjectSource>(
    head: &RequestHead,
    source: &S,
    cfg: &ServeConfig,
) -> (ResponsePlan, Option<Object>) {
    let keep_alive = head.keep_alive();
    if matches!(head.method, Method::Other(_)) {
        return (plan_error_response(405, keep_alive, &cfg.server_name), None);
    }
    let path = match object_path(&head.target) {
        Ok(p) => p,
        Err(e) => return (plan_error_response(e.status(), keep_alive, &cfg.server_name), None),
    };
    match source.resolve(&path).await {
        Ok(Some(obj)) => (plan_object_response(head, &obj.meta, &cfg.server_name), Some(obj)),
        Ok(None) => (plan_error_response(404, keep_alive, &cfg.server_name), None),
        Err(e) => {
            tracing::warn!(path = path.as_str(), error = %e, "object unavailable");
            (plan_error_response(502, false, &cfg.server_name), None)
        }
    }
}

/// Totals of one connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnStats {
    pub requests: u64,
    pub body_bytes: u64,
}

/// Serves requests on `stream` until the client closes, a response closes the connection, or a
/// head deadline passes. `buf` holds bytes already read from the client (a handed-off request).
/// The same loop as a handed-off connection's ([`crate::session::Session`]), without a stop
/// signal and with nobody to report to.
pub async fn serve_connection<S: ObjectSource>(
    stream: &mut TcpStream,
    buf: Vec<u8>,
    source: &S,
    cfg: &ServeConfig,
) -> io::Result<ConnStats> {
    let (_never, stop) = tokio::sync::watch::channel(false);
    let mut report = |_| {};
    let ended = crate::session::Session::new(stream, source, cfg, 0, 0, buf, stop, &mut report).resume(Vec::new()).await?;
    match ended {
        crate::session::Ending::Finished(stats) => Ok(stats),
        crate::session::Ending::Stopped { .. } => Ok(ConnStats::default()),
    }
}

/// Delay before accepting again after `accept` failed (e.g. out of descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves every connection accepted on `listener` from `source`, until the process ends: the
/// main's origin store and a participant's mirror.
pub async fn serve_listener<S>(listener: tokio::net::TcpListener, source: S, cfg: ServeConfig, what: &'static str)
where
    S: ObjectSource + Clone + 'static,
{
    loop {
        match listener.accept().await {
            Ok((mut stream, _)) => {
                let source = source.clone();
                let cfg = cfg.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    if let Err(e) = serve_connection(&mut stream, Vec::new(), &source, &cfg).await {
                        tracing::debug!(server = what, error = %e, "connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(server = what, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}
