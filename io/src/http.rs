//! HTTP/1.1 connections over tokio: read a request head within a deadline, answer it from an
//! [`ObjectSource`] with `sendfile(2)`, and keep the connection alive while the client wants.
//!
//! Parsing and response planning live in `baton_shared::http`; this module only moves bytes.
//! It never reads a request body (GET and HEAD have none; the parser rejects bodies) and never
//! buffers an object in memory. Every wait has a bound: the head deadline for reads, the send
//! timeout for writes ([`DEFAULT_SEND_TIMEOUT`]).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_shared::http::{
    object_path, parse_request_head, plan_error_response, plan_object_response, HeadError, Method, RequestHead,
    ResponsePlan,
};
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::store::{Object, ObjectSource};

/// How long a client may take to send a complete request head, counted from the moment we
/// start waiting for it (slowloris defence; nginx's `client_header_timeout` plays this role).
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write may make no progress (the client's socket accepts not a single byte)
/// before the connection is closed: a client that stops reading would otherwise hold its
/// connection (a VIP permit, a participant's session, kernel send-buffer memory) for ever.
/// nginx's `send_timeout` default; far longer than any stall of a client that is still reading
/// (a zero window on a congested link lasts seconds at most).
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Read size for request heads.
const READ_CHUNK_BYTES: usize = 4096;

/// Serving settings shared by every connection of a listener.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The `Server` header value.
    pub server_name: String,
    /// Deadline for each request head (and for the idle wait before it).
    pub head_timeout: Duration,
    /// Longest a write may make no progress before the connection is closed (see
    /// [`DEFAULT_SEND_TIMEOUT`]).
    pub send_timeout: Duration,
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
        Self {
            server_name: "baton".to_owned(),
            head_timeout: DEFAULT_HEAD_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            served_by: None,
        }
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

/// Connections closed because a write made no progress for the send timeout, in this process
/// (`baton_send_timeouts_total` on both binaries).
///
/// A process-wide counter rather than a field of [`ServeConfig`]: [`write_op`] is the one place
/// every response write of every listener and session waits, and a stall is counted there
/// without threading a counter through each caller.
pub static SEND_TIMEOUTS: AtomicU64 = AtomicU64::new(0);

/// A write to a client made no progress (not a single byte accepted) for the whole send
/// timeout. Carried inside an [`io::Error`] of kind [`io::ErrorKind::TimedOut`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client accepted no byte for {timeout:?} (send timeout)")]
pub struct SendTimedOut {
    pub timeout: Duration,
}

impl SendTimedOut {
    /// The send timeout `e` reports, if it is one.
    pub fn of(e: &io::Error) -> Option<SendTimedOut> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<SendTimedOut>()).copied()
    }
}

/// Why a write returned without writing.
#[derive(Debug)]
pub(crate) enum WriteEnd {
    /// The stop signal fired (a move): nothing was written by this call.
    Stopped,
    /// The socket failed, or made no progress for the send timeout ([`SendTimedOut`]).
    Failed(io::Error),
}

/// Runs a non-blocking write system call on the socket, waiting for writability only when the
/// kernel says it would block, and for no longer than `send_timeout` in all: the clock starts
/// at the first `EWOULDBLOCK` of this call and every call that writes returns, so a write that
/// makes progress, however slowly, never times out. The one implementation behind [`send_all`]
/// and a [`crate::session::Session`]'s writes.
///
/// `stop`, when given, wins over both writability and the timeout: checked before every
/// attempt (a stop never interrupts a write) and first in every wait, so a connection asked
/// back for a move is given back, never closed for a stall.
///
/// The call is tried first rather than after a readiness check: a socket tokio has just been
/// given (a restored connection) has no readiness recorded yet, and waiting for the first event
/// would cost a whole event-loop turn before the first byte. On `EWOULDBLOCK` tokio's readiness
/// is cleared through `try_io`, so the wait that follows is for a real edge.
///
/// On a timeout the socket is set to reset when it is closed (`SO_LINGER` 0, nginx's
/// `reset_timedout_connection`): its unsent bytes are dropped at once instead of lingering in
/// an orphan the kernel keeps probing a closed window for.
pub(crate) async fn write_op(
    stream: &TcpStream,
    send_timeout: Duration,
    mut stop: Option<&mut watch::Receiver<bool>>,
    mut op: impl FnMut() -> io::Result<usize>,
) -> Result<usize, WriteEnd> {
    let mut deadline = None;
    loop {
        if stop.as_deref().is_some_and(|s| *s.borrow()) {
            return Err(WriteEnd::Stopped);
        }
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = stream.try_io(Interest::WRITABLE, || Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock)));
                let at = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + send_timeout);
                let writable = tokio::time::timeout_at(at, stream.writable());
                let waited = match stop.as_deref_mut() {
                    Some(stop) => tokio::select! {
                        biased;
                        _ = wait_stop(stop) => return Err(WriteEnd::Stopped),
                        w = writable => w,
                    },
                    None => writable.await,
                };
                match waited {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(WriteEnd::Failed(e)),
                    Err(_) => return Err(WriteEnd::Failed(send_stalled(stream, send_timeout))),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WriteEnd::Failed(e)),
            Ok(n) => return Ok(n),
        }
    }
}

/// Counts a send timeout, makes the socket reset on close, and returns the error.
fn send_stalled(stream: &TcpStream, timeout: Duration) -> io::Error {
    SEND_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(error = %e, "SO_LINGER");
    }
    tracing::info!(timeout_ms = timeout.as_millis() as u64, "send timed out: the client stopped reading");
    io::Error::new(io::ErrorKind::TimedOut, SendTimedOut { timeout })
}

/// Resolves once the stop flag is set (never, if its sender is gone without setting it).
pub(crate) async fn wait_stop(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn syscall_result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Writes all of `buf` to the socket; fails with [`SendTimedOut`] when the client accepts no
/// byte for `send_timeout`.
pub async fn send_all(stream: &TcpStream, mut buf: &[u8], send_timeout: Duration) -> io::Result<()> {
    let fd = stream.as_raw_fd();
    while !buf.is_empty() {
        let n = write_op(stream, send_timeout, None, || {
            // SAFETY: `buf` is valid for its length; the descriptor is open.
            syscall_result(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })
        })
        .await
        .map_err(|e| match e {
            WriteEnd::Failed(e) => e,
            WriteEnd::Stopped => io::Error::other("stopped without a stop signal"),
        })?;
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

/// Connections one [`serve_listener`] (a participant's mirror) or the main's origin listener
/// serves at once before it stops accepting (mini-redis style cap; further clients wait in the
/// kernel's backlog). Their clients are other servers and mirror users, far fewer than the
/// VIP's; the cap keeps idle connections, each held up to the head timeout, from taking
/// memory and descriptors without bound.
pub const MAX_LISTENER_CONNECTIONS: usize = 1024;

/// Serves every connection accepted on `listener` from `source`, until the process ends: a
/// participant's mirror (and the test origins), at most [`MAX_LISTENER_CONNECTIONS`] at once.
pub async fn serve_listener<S>(listener: tokio::net::TcpListener, source: S, cfg: ServeConfig, what: &'static str)
where
    S: ObjectSource + Clone + 'static,
{
    serve_at_most(listener, source, cfg, what, MAX_LISTENER_CONNECTIONS).await;
}

/// [`serve_listener`] with `max` connections at once.
async fn serve_at_most<S>(listener: tokio::net::TcpListener, source: S, cfg: ServeConfig, what: &'static str, max: usize)
where
    S: ObjectSource + Clone + 'static,
{
    let limit = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((mut stream, _)) => {
                let source = source.clone();
                let cfg = cfg.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    if let Err(e) = serve_connection(&mut stream, Vec::new(), &source, &cfg).await {
                        tracing::debug!(server = what, error = %e, "connection ended");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(server = what, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// Send timeout of the tests.
    pub(crate) const STALL: Duration = Duration::from_millis(300);
    /// What a timed-out write may take beyond [`STALL`]: filling the small buffers of
    /// [`pair`] on loopback, and scheduling.
    pub(crate) const SLACK: Duration = Duration::from_secs(2);

    /// A connected loopback pair `(writer, reader)`; the writer's send buffer is small, so a
    /// reader that never reads stalls it after a few hundred KiB.
    pub(crate) async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (writer, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let writer = writer.expect("connect");
        socket2::SockRef::from(&writer).set_send_buffer_size(64 * 1024).expect("SO_SNDBUF");
        (writer, accepted.expect("accept").0)
    }

    /// Reads until EOF or an error: the bytes read and how the stream ended.
    pub(crate) async fn read_to_end(reader: &mut TcpStream) -> (usize, io::Result<()>) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => return (got, Ok(())),
                Ok(n) => got += n,
                Err(e) => return (got, Err(e)),
            }
        }
    }

    #[test]
    fn the_default_send_timeout_is_the_configs() {
        assert_eq!(DEFAULT_SEND_TIMEOUT, Duration::from_millis(baton_shared::config::DEFAULT_SEND_TIMEOUT_MS));
    }

    #[tokio::test]
    async fn a_write_the_client_never_reads_times_out_and_resets() {
        let (writer, mut reader) = pair().await;
        let before = SEND_TIMEOUTS.load(Ordering::Relaxed);
        let body = vec![0x5a; 16 << 20];
        let t0 = Instant::now();
        let e = send_all(&writer, &body, STALL).await.expect_err("a reader that never reads stalls the write");
        let took = t0.elapsed();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert_eq!(SendTimedOut::of(&e), Some(SendTimedOut { timeout: STALL }));
        assert_eq!(e.to_string(), "the client accepted no byte for 300ms (send timeout)");
        assert!(took >= STALL && took < STALL + SLACK, "timed out after {took:?}");
        assert!(SEND_TIMEOUTS.load(Ordering::Relaxed) > before, "counted");
        drop(writer);
        // What was queued arrives, then a reset, not a FIN: the unsent rest is dropped at once.
        let (got, end) = read_to_end(&mut reader).await;
        assert_eq!(end.map_err(|e| e.kind()), Err(io::ErrorKind::ConnectionReset));
        assert!(got > 0 && got < body.len(), "{got} bytes arrived");
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_never_cut_off() {
        let (writer, mut reader) = pair().await;
        let body: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
        let want = body.clone();
        let reading = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                match reader.read(&mut chunk).await.expect("read") {
                    0 => return got,
                    n => got.extend_from_slice(&chunk[..n]),
                }
            }
        });
        let t0 = Instant::now();
        send_all(&writer, &body, STALL).await.expect("every wait ends in progress");
        let took = t0.elapsed();
        drop(writer);
        assert!(reading.await.expect("reader") == want, "the bytes arrive unchanged");
        assert!(took > 2 * STALL, "the transfer ({took:?}) outlasts the timeout: its clock restarts on progress");
    }

    #[tokio::test]
    async fn a_listener_serves_at_most_its_limit_at_once() {
        let dir = std::env::temp_dir().join(format!("baton-http-limit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("o"), b"hello").expect("object");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let store = crate::store::DirStore::open(&dir).expect("store");
        tokio::spawn(serve_at_most(listener, store, ServeConfig::default(), "test", 1));
        let idle = TcpStream::connect(addr).await.expect("connect idle");
        // Let the listener take the idle connection first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut second = TcpStream::connect(addr).await.expect("connect (the kernel's backlog)");
        second.write_all(b"GET /o HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("request");
        let mut answer = Vec::new();
        let early = tokio::time::timeout(Duration::from_millis(300), second.read_to_end(&mut answer)).await;
        assert!(early.is_err() && answer.is_empty(), "served beyond the limit: {answer:?}");
        drop(idle);
        tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut answer)).await.expect("served once a slot is free").expect("read");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200 ") && text.ends_with("\r\n\r\nhello"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
