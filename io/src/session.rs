//! A handed-off connection served with its stream position tracked, so it can be moved.
//!
//! Like [`crate::http::serve_connection`], plus three things a move needs:
//! - the position: every byte written advances a 64-bit stream offset, and every request
//!   consumed advances the client sequence number where the next one starts;
//! - a report before each response ([`Response`]: start offset, exact head, body range), so the
//!   main always knows what any sent byte was;
//! - a stop signal: when the main asks for the connection back, serving stops at the next
//!   system-call boundary (never inside a write), and the bytes read but not answered are
//!   returned, to travel with the connection.
//!
//! A write that makes no progress for the send timeout ends the session with
//! [`crate::http::SendTimedOut`] (the caller closes the connection, which then resets); a stop
//! signal always wins over that timeout.
//!
//! A session can also start in the middle of responses another server began
//! ([`Session::resume`]): it sends the rest of each from the stream offset on.

use std::io;
use std::os::fd::AsRawFd;

use baton_shared::handoff::{BodyPart, ObjectPlan, Response};
use baton_shared::http::{object_path, plan_error_response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::http::{plan_for, read_head, wait_stop, write_op, ConnStats, HeadRead, ServeConfig, WriteEnd};
use crate::store::ObjectSource;

/// Largest single `sendfile(2)` call.
const SENDFILE_CHUNK_BYTES: usize = 4 << 20;

/// How a session ended.
#[derive(Debug)]
pub enum Ending {
    /// The client closed, a response closed the connection, or a head deadline passed.
    Finished(ConnStats),
    /// Stopped for a move: nothing more will be written. `unread` holds the client bytes read
    /// and not answered; `offset` is the stream offset after the last byte written.
    Stopped { unread: Vec<u8>, offset: u64 },
}

/// Internal: the stop signal fired.
struct Stop;

enum Failure {
    Stop,
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

impl From<Stop> for Failure {
    fn from(_: Stop) -> Self {
        Failure::Stop
    }
}

impl From<WriteEnd> for Failure {
    fn from(e: WriteEnd) -> Self {
        match e {
            WriteEnd::Stopped => Failure::Stop,
            WriteEnd::Failed(e) => Failure::Io(e),
        }
    }
}

/// A pending response and the file its body comes from.
#[derive(Debug)]
pub struct PendingBody {
    pub response: Response,
    pub file: Option<std::fs::File>,
}

/// One connection being served with its position tracked.
pub struct Session<'a, S> {
    stream: &'a mut TcpStream,
    source: &'a S,
    cfg: &'a ServeConfig,
    /// Stream offset of the next byte written.
    pub offset: u64,
    /// Client sequence number of `input[0]`.
    pub client_seq: u32,
    input: Vec<u8>,
    stop: watch::Receiver<bool>,
    report: &'a mut (dyn FnMut(Response) + Send),
    before_close: Option<Box<dyn FnOnce() + Send + 'a>>,
    stats: ConnStats,
}

impl<S> std::fmt::Debug for Session<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("offset", &self.offset)
            .field("client_seq", &self.client_seq)
            .field("input", &self.input.len())
            .finish_non_exhaustive()
    }
}

impl<'a, S: ObjectSource> Session<'a, S> {
    /// A session at stream offset `offset`; `input` are client bytes already read, the last of
    /// which is just before client sequence number `rcv_seq`.
    #[allow(clippy::too_many_arguments, reason = "one constructor for every position field")]
    pub fn new(
        stream: &'a mut TcpStream,
        source: &'a S,
        cfg: &'a ServeConfig,
        offset: u64,
        rcv_seq: u32,
        input: Vec<u8>,
        stop: watch::Receiver<bool>,
        report: &'a mut (dyn FnMut(Response) + Send),
    ) -> Self {
        let len = u32::try_from(input.len()).unwrap_or(u32::MAX);
        Self {
            stream,
            source,
            cfg,
            offset,
            client_seq: rcv_seq.wrapping_sub(len),
            input,
            stop,
            report,
            before_close: None,
            stats: ConnStats::default(),
        }
    }

    /// Runs `f` just before the session closes a finished connection (a participant lifts its
    /// egress guard there, or its own FIN would be dropped).
    pub fn before_close(mut self, f: impl FnOnce() + Send + 'a) -> Self {
        self.before_close = Some(Box::new(f));
        self
    }

    /// Sends what is left of `pending` (the first from the current offset), then serves
    /// requests until the connection ends or the stop signal fires.
    pub async fn resume(mut self, pending: Vec<PendingBody>) -> io::Result<Ending> {
        match self.run(pending).await {
            // The FIN goes right behind the last byte, so a client that reads to the end sees
            // the close before it closes itself (and keeps no TIME_WAIT of its own).
            Ok(stats) => {
                if let Some(f) = self.before_close.take() {
                    f();
                }
                let _ = self.stream.shutdown().await;
                Ok(Ending::Finished(stats))
            }
            Err(Failure::Stop) => Ok(Ending::Stopped { unread: std::mem::take(&mut self.input), offset: self.offset }),
            Err(Failure::Io(e)) => Err(e),
        }
    }

    async fn run(&mut self, pending: Vec<PendingBody>) -> Result<ConnStats, Failure> {
        for p in pending {
            let keep_alive = p.response.keep_alive;
            if !keep_alive {
                self.cork_last_response();
            }
            self.send_rest(&p.response, p.file.as_ref()).await?;
            self.stats.requests += 1;
            if !keep_alive {
                return Ok(self.stats);
            }
        }
        loop {
            self.check_stop()?;
            let Some((head, consumed)) = self.next_head().await? else { return Ok(self.stats) };
            let planned = tokio::select! {
                biased;
                _ = wait_stop(&mut self.stop) => None,
                planned = plan_for(&head, self.source, self.cfg) => Some(planned),
            };
            let Some((mut plan, obj)) = planned else {
                // Not answered: the head stays input and travels with the connection.
                return Err(Failure::Stop);
            };
            self.cfg.finish(&mut plan);
            self.input.drain(..consumed);
            self.client_seq = self.client_seq.wrapping_add(u32::try_from(consumed).unwrap_or(u32::MAX));
            let body = match (&plan.body, &obj) {
                (Some((offset, len)), Some(o)) => {
                    let path = object_path(&head.target).map(|p| p.as_str().to_owned()).unwrap_or_default();
                    Some(BodyPart {
                        object: ObjectPlan { path, size: o.meta.size, sha256: o.meta.sha256 },
                        offset: *offset,
                        len: *len,
                    })
                }
                _ => None,
            };
            let response =
                Response { start: self.offset, request_end: self.client_seq, keep_alive: plan.keep_alive, head: plan.head, body };
            (self.report)(response.clone());
            if !response.keep_alive {
                self.cork_last_response();
            }
            self.send_rest(&response, obj.as_ref().map(|o| &o.file)).await?;
            self.stats.requests += 1;
            if !response.keep_alive {
                return Ok(self.stats);
            }
        }
    }

    /// Holds back partial segments of the connection's last response (`TCP_CORK`) until the
    /// shutdown after it, so its FIN leaves in the same segment as its last byte: a client that
    /// closes as soon as it has the whole response (wrk, most HTTP libraries) then sees the FIN
    /// first and closes passively, keeping no TIME_WAIT per request of its own (thousands of
    /// them slow every later connect). Full segments still leave at once; the kernel sends a
    /// corked tail after 200 ms at the latest.
    fn cork_last_response(&self) {
        if let Err(e) = socket2::SockRef::from(&*self.stream).set_cork(true) {
            tracing::debug!(error = %e, "TCP_CORK");
        }
    }

    fn check_stop(&self) -> Result<(), Stop> {
        if *self.stop.borrow() {
            Err(Stop)
        } else {
            Ok(())
        }
    }

    /// Reads until `input` holds a complete head; `None` when the client closed between
    /// requests or the head deadline passed (answered with 408 when a head had started).
    async fn next_head(&mut self) -> Result<Option<(baton_shared::http::RequestHead, usize)>, Failure> {
        // read_head is cancel-safe: a stop that wins the race loses no input.
        let read = tokio::select! {
            biased;
            _ = wait_stop(&mut self.stop) => return Err(Failure::Stop),
            r = read_head(self.stream, &mut self.input, self.cfg.head_timeout) => r?,
        };
        match read {
            HeadRead::Head { head, len } => Ok(Some((head, len))),
            HeadRead::Closed => Ok(None),
            HeadRead::Invalid(e) => {
                let plan = plan_error_response(e.status(), false, &self.cfg.server_name);
                self.send_bytes(&plan.head).await?;
                Ok(None)
            }
            HeadRead::TimedOut => {
                if !self.input.is_empty() {
                    let plan = plan_error_response(408, false, &self.cfg.server_name);
                    let _ = self.send_bytes(&plan.head).await;
                }
                Ok(None)
            }
        }
    }

    /// Sends the part of `response` from the current offset on.
    async fn send_rest(&mut self, response: &Response, file: Option<&std::fs::File>) -> Result<(), Failure> {
        let skip = self.offset.saturating_sub(response.start);
        let head_len = response.head.len() as u64;
        if skip < head_len {
            let head = &response.head[skip as usize..];
            self.send_bytes(head).await?;
        }
        if let Some(body) = &response.body {
            let done = skip.saturating_sub(head_len).min(body.len);
            let file = file.ok_or_else(|| io::Error::other("response body without its file"))?;
            self.send_file(file, body.offset + done, body.len - done).await?;
            self.stats.body_bytes += body.len - done;
        }
        Ok(())
    }

    async fn send_bytes(&mut self, mut buf: &[u8]) -> Result<(), Failure> {
        let fd = self.stream.as_raw_fd();
        while !buf.is_empty() {
            let n = self
                .write_op(|| {
                    // SAFETY: `buf` is valid for its length; the descriptor is open.
                    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
                    syscall_result(n)
                })
                .await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
            buf = &buf[n..];
            self.offset += n as u64;
        }
        Ok(())
    }

    async fn send_file(&mut self, file: &std::fs::File, offset: u64, len: u64) -> Result<(), Failure> {
        let mut off = libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut left = len;
        let out_fd = self.stream.as_raw_fd();
        let in_fd = file.as_raw_fd();
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(SENDFILE_CHUNK_BYTES);
            let n = self
                .write_op(|| {
                    // SAFETY: both descriptors are open for the duration of the call; `off` is ours.
                    syscall_result(unsafe { libc::sendfile(out_fd, in_fd, &mut off, want) })
                })
                .await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "object shorter than its length").into());
            }
            left -= n as u64;
            self.offset += n as u64;
        }
        Ok(())
    }

    /// One write system call through [`crate::http`]'s writer: tried first, then waited for on
    /// `EWOULDBLOCK` up to the send timeout, or for the stop signal, which wins: a stop never
    /// interrupts a write, and a connection asked back for a move is never closed for a stall.
    async fn write_op(&mut self, op: impl FnMut() -> io::Result<usize>) -> Result<usize, Failure> {
        Ok(write_op(self.stream, self.cfg.send_timeout, Some(&mut self.stop), op).await?)
    }
}

fn syscall_result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The bytes of stream offsets `from .. from + len` of `pending` (head bytes and object bytes
/// read from the files): what a connection had in flight when it was moved, for the next owner
/// to put back in its send queue.
pub fn stream_bytes(pending: &[PendingBody], from: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut out = Vec::with_capacity(len);
    let mut at = from;
    let end = from + len as u64;
    for p in pending {
        let r = &p.response;
        if at >= end {
            break;
        }
        if at < r.start || at >= r.end() {
            continue;
        }
        let head_len = r.head.len() as u64;
        if at < r.start + head_len {
            let lo = (at - r.start) as usize;
            let hi = ((end - r.start).min(head_len)) as usize;
            out.extend_from_slice(&r.head[lo..hi]);
            at = r.start + hi as u64;
        }
        if let (Some(body), true) = (&r.body, at < end && at < r.end()) {
            let file = p.file.as_ref().ok_or_else(|| io::Error::other("response body without its file"))?;
            let skip = at - r.start - head_len;
            let n = (end.min(r.end()) - at) as usize;
            let start = out.len();
            out.resize(start + n, 0);
            file.read_exact_at(&mut out[start..], body.offset + skip)?;
            at += n as u64;
        }
    }
    if out.len() != len {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bytes in flight run past the pending responses"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_shared::handoff::{BodyPart, ObjectPlan};
    use std::io::Write as _;

    #[test]
    fn stream_bytes_cross_heads_and_bodies() {
        let mut f = tempfile_with(b"0123456789abcdef");
        let body = |offset, len| Some(BodyPart { object: ObjectPlan { path: "o".into(), size: 16, sha256: [0; 32] }, offset, len });
        let pending = vec![
            PendingBody {
                response: Response { start: 100, request_end: 0, keep_alive: true, head: b"HEAD1".to_vec(), body: body(2, 4) },
                file: Some(f.try_clone().expect("clone")),
            },
            PendingBody {
                response: Response { start: 109, request_end: 0, keep_alive: false, head: b"H2".to_vec(), body: body(10, 6) },
                file: Some(f.try_clone().expect("clone")),
            },
        ];
        assert_eq!(stream_bytes(&pending, 100, 17).expect("all"), b"HEAD12345H2abcdef".to_vec());
        assert_eq!(stream_bytes(&pending, 103, 8).expect("middle"), b"D12345H2".to_vec());
        assert_eq!(stream_bytes(&pending, 110, 0).expect("none"), Vec::<u8>::new());
        assert!(stream_bytes(&pending, 110, 9).is_err(), "past the end");
        f.flush().expect("flush");
    }

    /// A session on the writer of a loopback pair whose reader never reads, sending a 16 MiB
    /// response (the last of the connection) from the start.
    async fn stalled_session(stop: watch::Receiver<bool>) -> (io::Result<Ending>, TcpStream, TcpStream, std::time::Duration) {
        use crate::http::tests::{pair, STALL};
        let (mut writer, reader) = pair().await;
        let size = 16u64 << 20;
        let file = tempfile_with(&vec![0xa5; size as usize]);
        let body = Some(BodyPart { object: ObjectPlan { path: "o".into(), size, sha256: [0; 32] }, offset: 0, len: size });
        let response = Response { start: 0, request_end: 0, keep_alive: false, head: b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), body };
        let store = crate::store::DirStore::open(&std::env::temp_dir()).expect("store");
        let cfg = ServeConfig { send_timeout: STALL, ..ServeConfig::default() };
        let mut report = |_| {};
        let t0 = std::time::Instant::now();
        let ended = Session::new(&mut writer, &store, &cfg, 0, 0, Vec::new(), stop, &mut report)
            .resume(vec![PendingBody { response, file: Some(file) }])
            .await;
        (ended, writer, reader, t0.elapsed())
    }

    #[tokio::test]
    async fn a_stalled_session_ends_with_a_send_timeout() {
        use crate::http::tests::{SLACK, STALL};
        let (_never, stop) = watch::channel(false);
        let (ended, writer, _reader, took) = stalled_session(stop).await;
        let e = ended.expect_err("the client never reads");
        assert_eq!(crate::http::SendTimedOut::of(&e), Some(crate::http::SendTimedOut { timeout: STALL }), "{e}");
        assert!(took >= STALL && took < STALL + SLACK, "timed out after {took:?}");
        assert_eq!(socket2::SockRef::from(&writer).linger().expect("linger"), Some(std::time::Duration::ZERO), "resets on close");
    }

    #[tokio::test]
    async fn a_stop_wins_over_the_send_timeout() {
        use crate::http::tests::{read_to_end, STALL};
        let (tx, stop) = watch::channel(false);
        // Asked back (a move) while stalled, well before the timeout would end the connection.
        tokio::spawn(async move {
            tokio::time::sleep(STALL / 3).await;
            let _ = tx.send(true);
            // Kept until the session has seen it.
            tokio::time::sleep(STALL * 10).await;
        });
        let (ended, writer, mut reader, took) = stalled_session(stop).await;
        let offset = match ended.expect("stopped, not failed") {
            Ending::Stopped { unread, offset } => {
                assert!(unread.is_empty());
                offset
            }
            other => panic!("not stopped: {other:?}"),
        };
        assert!(took < STALL, "stopped after {took:?}");
        assert_eq!(socket2::SockRef::from(&writer).linger().expect("linger"), None, "a stopped connection is not reset");
        // Everything written is the stream up to the offset: nothing half-written, nothing lost.
        drop(writer);
        let (got, _) = read_to_end(&mut reader).await;
        assert_eq!(got as u64, offset);
        assert!(offset > 0 && offset < 16 << 20, "offset {offset}");
    }

    fn tempfile_with(bytes: &[u8]) -> std::fs::File {
        // Unique per call: the tests run in parallel.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("baton-session-{}-{n}", std::process::id()));
        std::fs::write(&path, bytes).expect("write");
        let f = std::fs::File::open(&path).expect("open");
        let _ = std::fs::remove_file(&path);
        f
    }
}
