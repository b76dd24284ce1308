//! An FTP client for byte ranges: one logged-in control connection in binary mode that asks for a
//! file's size and modification time and retrieves the file from any offset (RFC 959; SIZE, MDTM
//! and REST from RFC 3659; EPSV from RFC 2428).
//!
//! baton-fetch uses it to treat an `ftp://` mirror like an HTTP server that honours Range: one
//! session per source, one retrieval at a time, a retrieval ended early (ABOR) once the range it
//! was fetching is done, and the same session reused for the next range.
//!
//! It must never send a command that carries a CR, LF or NUL taken from its input (a URL must not
//! be able to add commands), never open a data connection to any host but the control
//! connection's peer (the address in a PASV reply is ignored, as curl does by default, so a
//! server cannot aim the client at a third host), never wait on the network without a deadline,
//! and never panic on anything a server sends.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use url::{Host, Url};

/// Port of an `ftp://` URL that names none (RFC 959).
const DEFAULT_PORT: u16 = 21;
/// User name sent when the URL has none (RFC 1635 anonymous FTP).
const ANONYMOUS_USER: &str = "anonymous";
/// Password sent for the anonymous user: by convention an identification of the client, not a
/// secret.
const ANONYMOUS_PASSWORD: &str = "baton-fetch@";
/// Largest reply (all its lines with their line ends) read from the control connection. Greetings
/// with a long message of the day are a few KiB; a server that sends more without ending its
/// reply is broken or hostile, and the session ends rather than buffer it.
const MAX_REPLY_BYTES: usize = 64 * 1024;
/// Bytes asked of the control connection per read.
const READ_CHUNK: usize = 4096;
/// Replies [`FtpSession::finish`] reads after an ABOR while looking for the answer to its
/// [`SYNC_COMMAND`]. A server answers the aborted RETR and the ABOR with two replies at most
/// (RFC 959 section 4.1.3), some with one; more than this means the session is out of step.
const MAX_REPLIES_AFTER_ABORT: usize = 8;
/// Command sent after ABOR whose answer marks the end of the abort's replies. PWD is answered
/// with 257, a code neither RETR nor ABOR ever replies with, so counting replies (which servers
/// do not agree on) is never needed.
const SYNC_COMMAND: &str = "PWD";
/// The code that answers [`SYNC_COMMAND`].
const SYNC_REPLY: u16 = 257;
/// Preliminary replies (1xx) skipped while waiting for a command's final reply.
const MAX_PRELIMINARY_REPLIES: usize = 4;

/// What went wrong talking to an FTP server.
#[derive(Debug, thiserror::Error)]
pub enum FtpError {
    #[error("ftp {step}: {source}")]
    Io {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("ftp {step}: no answer within the timeout")]
    Timeout { step: &'static str },
    /// A well-formed negative (or unexpected) reply; the session is still in step with the
    /// server and can issue the next command.
    #[error("ftp server answered {command} with {code} {text}")]
    Reply {
        command: &'static str,
        code: u16,
        text: String,
    },
    #[error("ftp protocol error: {0}")]
    Protocol(String),
    #[error("ftp reply longer than {limit} bytes")]
    ReplyTooLong { limit: usize },
    #[error("ftp server closed the control connection during {step}")]
    Closed { step: &'static str },
    #[error("bad ftp url: {0}")]
    BadUrl(String),
    #[error("ftp {command} argument contains CR, LF or NUL")]
    BadArgument { command: &'static str },
    #[error("a retrieval is open on this ftp session; finish it first")]
    TransferPending,
    #[error("ftp session is out of step with its server after an earlier error")]
    Broken,
}

/// One reply: its code and its text (the lines after the code, joined with `\n`, control
/// characters replaced).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    code: u16,
    text: String,
}

impl Reply {
    fn into_error(self, command: &'static str) -> FtpError {
        FtpError::Reply {
            command,
            code: self.code,
            text: self.text,
        }
    }
}

/// Where a session stands with its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The next command can be sent.
    Ready,
    /// A RETR was accepted; the server's final reply is pending until [`FtpSession::finish`].
    Transfer,
    /// A read or write failed midway, or the server broke the protocol: which reply comes next
    /// is unknown, so no further command is sent.
    Broken,
}

/// One logged-in control connection in binary mode (TYPE I).
#[derive(Debug)]
pub struct FtpSession {
    control: TcpStream,
    /// Bytes read from the control connection that are not yet part of a returned reply.
    buf: Vec<u8>,
    /// The control connection's peer: the only host data connections go to.
    peer: IpAddr,
    /// `host:port`, for logs.
    server: String,
    timeout: Duration,
    /// False once the server said it does not know EPSV; PASV is used from then on.
    epsv: bool,
    state: State,
}

/// The data connection of one retrieval, positioned at the offset it was asked for. A read that
/// waits longer than the session's timeout for data fails with [`io::ErrorKind::TimedOut`].
/// Hand it back to [`FtpSession::finish`].
#[derive(Debug)]
pub struct FtpData {
    stream: TcpStream,
    idle: Duration,
    /// When the read that is waiting now gives up; armed when a read starts waiting.
    deadline: Pin<Box<Sleep>>,
    waiting: bool,
}

impl AsyncRead for FtpData {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.waiting = false;
                Poll::Ready(result)
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    let deadline = Instant::now() + this.idle;
                    this.deadline.as_mut().reset(deadline);
                }
                match this.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no data from the ftp server within the timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl FtpSession {
    /// Connects to the URL's host:port (default 21), logs in (URL userinfo, percent-decoded, else
    /// anonymous / "baton-fetch@"), TYPE I. Each step bounded by `timeout`.
    pub async fn connect(url: &Url, timeout: Duration) -> Result<FtpSession, FtpError> {
        if url.scheme() != "ftp" {
            return Err(FtpError::BadUrl(format!("scheme {:?} is not ftp", url.scheme())));
        }
        let port = url.port_or_known_default().unwrap_or(DEFAULT_PORT);
        let (user, password) = credentials(url)?;
        let host = url.host().ok_or_else(|| FtpError::BadUrl("no host".to_owned()))?;
        let connecting = async {
            match host {
                Host::Domain(name) => TcpStream::connect((name, port)).await,
                Host::Ipv4(addr) => TcpStream::connect((addr, port)).await,
                Host::Ipv6(addr) => TcpStream::connect((addr, port)).await,
            }
        };
        let control = within(timeout, "connect", connecting).await?;
        if let Err(e) = control.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY on the ftp control connection");
        }
        let peer = control
            .peer_addr()
            .map_err(|source| FtpError::Io {
                step: "connect",
                source,
            })?
            .ip();
        let mut session = FtpSession {
            control,
            buf: Vec::new(),
            peer,
            server: format!("{}:{port}", url.host_str().unwrap_or_default()),
            timeout,
            epsv: true,
            state: State::Ready,
        };

        let mut greeting = session.read_reply("connect").await?;
        // 120: "service ready in nnn minutes", followed by the real greeting.
        if greeting.code == 120 {
            greeting = session.read_reply("connect").await?;
        }
        if greeting.code != 220 {
            return Err(greeting.into_error("connect"));
        }

        let reply = session.command("USER", Some(&user)).await?;
        match reply.code {
            230 => {}
            331 => {
                let reply = session.command("PASS", Some(&password)).await?;
                if !matches!(reply.code, 230 | 202) {
                    return Err(reply.into_error("PASS"));
                }
            }
            _ => return Err(reply.into_error("USER")),
        }
        session.expect("TYPE", Some("I"), 200).await?;
        tracing::debug!(server = %session.server, user = %user, "ftp session ready");
        Ok(session)
    }

    /// The file's size in bytes (SIZE, exact in binary mode); `None` when the server has no SIZE
    /// command (500, 502, 504) or no such plain file (550).
    pub async fn size(&mut self, path: &str) -> Result<Option<u64>, FtpError> {
        let reply = self.command("SIZE", Some(path)).await?;
        match reply.code {
            213 => {
                let text = reply.text.trim();
                text.parse::<u64>()
                    .map(Some)
                    .map_err(|_| FtpError::Protocol(format!("SIZE reply {text:?} is not a byte count")))
            }
            500 | 502 | 504 | 550 => Ok(None),
            _ => Err(reply.into_error("SIZE")),
        }
    }

    /// The file's modification time as the MDTM reply states it (`YYYYMMDDHHMMSS[.sss]`, UTC);
    /// `None` when the server has no MDTM command (500, 502, 504) or no such plain file (550).
    pub async fn modified(&mut self, path: &str) -> Result<Option<String>, FtpError> {
        let reply = self.command("MDTM", Some(path)).await?;
        match reply.code {
            213 => {
                let text = reply.text.trim();
                if is_mdtm_time(text) {
                    Ok(Some(text.to_owned()))
                } else {
                    Err(FtpError::Protocol(format!("MDTM reply {text:?} is not a time")))
                }
            }
            500 | 502 | 504 | 550 => Ok(None),
            _ => Err(reply.into_error("MDTM")),
        }
    }

    /// EPSV (falling back to PASV), REST offset (skipped when 0), RETR path: returns the data
    /// stream positioned at `offset`.
    ///
    /// The data connection goes to the control connection's peer at the port the server named.
    /// Until [`FtpSession::finish`] takes the stream back, every other command fails with
    /// [`FtpError::TransferPending`].
    pub async fn retrieve(&mut self, path: &str, offset: u64) -> Result<FtpData, FtpError> {
        self.ready()?;
        // Checked before EPSV, so a bad path does not leave the server a passive socket.
        command_line("RETR", Some(path))?;
        let port = self.passive().await?;
        let stream = within(self.timeout, "data connect", TcpStream::connect((self.peer, port))).await?;
        if offset > 0 {
            self.expect("REST", Some(&offset.to_string()), 350).await?;
        }
        let reply = self.command("RETR", Some(path)).await?;
        // Anything but a preliminary reply ends the command: a refusal, or (from a server that
        // skips 150) a final reply that leaves no transfer to take over.
        if !(100..200).contains(&reply.code) {
            return Err(reply.into_error("RETR"));
        }
        self.state = State::Transfer;
        tracing::debug!(server = %self.server, path, offset, port, "ftp retrieval open");
        Ok(FtpData {
            stream,
            idle: self.timeout,
            deadline: Box::pin(tokio::time::sleep(self.timeout)),
            waiting: false,
        })
    }

    /// Ends a retrieval: drops the data connection (early, if `complete` is false, with ABOR
    /// handling) and reads the server's final reply(ies) so the session can issue the next
    /// command. Returns Ok when the session is reusable.
    ///
    /// With `complete`, the transfer's final reply must be 226 or 250; a 4xx/5xx reply (the
    /// server did not send the whole file) is an [`FtpError::Reply`].
    ///
    /// Early: closing the data connection with unread bytes makes the kernel reset it, so the
    /// server's transfer fails on its own; then ABOR goes as a plain command (no Telnet IP and
    /// Synch: the transfer is already over by the time the server reads it) followed by
    /// [`SYNC_COMMAND`]. Servers answer the transfer and the ABOR with one or two replies in
    /// various orders (426 then 226, or 226 then 225, or a single 226); everything before the
    /// answer to the sync command is read and discarded.
    pub async fn finish(&mut self, data: FtpData, complete: bool) -> Result<(), FtpError> {
        match self.state {
            State::Transfer => {}
            State::Ready => return Err(FtpError::Protocol("finish without an open retrieval".to_owned())),
            State::Broken => return Err(FtpError::Broken),
        }
        drop(data);
        if complete {
            let reply = self.final_reply("RETR").await?;
            self.state = State::Ready;
            return match reply.code {
                226 | 250 => Ok(()),
                _ => Err(reply.into_error("RETR")),
            };
        }
        self.send("ABOR", None).await?;
        self.send(SYNC_COMMAND, None).await?;
        for _ in 0..MAX_REPLIES_AFTER_ABORT {
            let reply = self.read_reply("ABOR").await?;
            tracing::debug!(server = %self.server, code = reply.code, "ftp reply while aborting");
            if reply.code == SYNC_REPLY {
                self.state = State::Ready;
                return Ok(());
            }
            if reply.code == 421 {
                self.state = State::Broken;
                return Err(reply.into_error("ABOR"));
            }
        }
        self.state = State::Broken;
        Err(FtpError::Protocol(format!(
            "no answer to {SYNC_COMMAND} within {MAX_REPLIES_AFTER_ABORT} replies after ABOR"
        )))
    }

    /// Says goodbye (QUIT, its reply awaited at most the timeout) and closes the connection.
    pub async fn quit(mut self) {
        if self.state == State::Broken {
            return;
        }
        if self.send("QUIT", None).await.is_ok() {
            if let Err(e) = self.read_reply("QUIT").await {
                tracing::debug!(server = %self.server, error = %e, "ftp QUIT");
            }
        }
        let _ = tokio::time::timeout(self.timeout, self.control.shutdown()).await;
    }

    /// EPSV, else PASV: the port of the server's passive data socket.
    async fn passive(&mut self) -> Result<u16, FtpError> {
        if self.epsv {
            let reply = self.command("EPSV", None).await?;
            match reply.code {
                229 => return parse_epsv(&reply.text),
                500 | 501 | 502 | 504 => {
                    tracing::debug!(server = %self.server, code = reply.code, "no EPSV; using PASV");
                    self.epsv = false;
                }
                _ => return Err(reply.into_error("EPSV")),
            }
        }
        let reply = self.command("PASV", None).await?;
        if reply.code != 227 {
            return Err(reply.into_error("PASV"));
        }
        let (named, port) = parse_pasv(&reply.text)?;
        if IpAddr::V4(named) != self.peer {
            tracing::debug!(server = %self.server, %named, peer = %self.peer, "PASV address ignored");
        }
        Ok(port)
    }

    fn ready(&self) -> Result<(), FtpError> {
        match self.state {
            State::Ready => Ok(()),
            State::Transfer => Err(FtpError::TransferPending),
            State::Broken => Err(FtpError::Broken),
        }
    }

    /// Sends a command and returns its first reply.
    async fn command(&mut self, verb: &'static str, arg: Option<&str>) -> Result<Reply, FtpError> {
        self.ready()?;
        self.send(verb, arg).await?;
        self.read_reply(verb).await
    }

    /// Sends a command whose only success is `code`.
    async fn expect(&mut self, verb: &'static str, arg: Option<&str>, code: u16) -> Result<(), FtpError> {
        let reply = self.command(verb, arg).await?;
        if reply.code == code {
            Ok(())
        } else {
            Err(reply.into_error(verb))
        }
    }

    async fn send(&mut self, verb: &'static str, arg: Option<&str>) -> Result<(), FtpError> {
        let line = command_line(verb, arg)?;
        let shown = if verb == "PASS" { Some("****") } else { arg };
        tracing::debug!(server = %self.server, command = verb, arg = ?shown, "ftp command");
        let result = within(self.timeout, verb, self.control.write_all(&line)).await;
        if result.is_err() {
            self.state = State::Broken;
        }
        result
    }

    /// The next reply that is not preliminary (1xx).
    async fn final_reply(&mut self, step: &'static str) -> Result<Reply, FtpError> {
        for _ in 0..=MAX_PRELIMINARY_REPLIES {
            let reply = self.read_reply(step).await?;
            if reply.code >= 200 {
                return Ok(reply);
            }
        }
        self.state = State::Broken;
        Err(FtpError::Protocol(format!(
            "more than {MAX_PRELIMINARY_REPLIES} preliminary replies"
        )))
    }

    /// Reads one reply, within the timeout as a whole. Any failure leaves the session broken.
    async fn read_reply(&mut self, step: &'static str) -> Result<Reply, FtpError> {
        let deadline = Instant::now() + self.timeout;
        let result = self.read_reply_until(step, deadline).await;
        match &result {
            Ok(reply) => {
                tracing::debug!(server = %self.server, step, code = reply.code, "ftp reply")
            }
            Err(_) => self.state = State::Broken,
        }
        result
    }

    async fn read_reply_until(&mut self, step: &'static str, deadline: Instant) -> Result<Reply, FtpError> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf)? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            let mut chunk = [0u8; READ_CHUNK];
            let n = match tokio::time::timeout_at(deadline, self.control.read(&mut chunk)).await {
                Ok(Ok(n)) => n,
                Ok(Err(source)) => return Err(FtpError::Io { step, source }),
                Err(_) => return Err(FtpError::Timeout { step }),
            };
            if n == 0 {
                return Err(FtpError::Closed { step });
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Percent-decoded path for RETR/SIZE; rejects CR/LF/NUL.
///
/// As RFC 1738 has it, the slash after the host only separates, so `ftp://h/dir/f` names
/// `dir/f` relative to the login directory and `ftp://h/%2Fdir/f` names `/dir/f`. A `;type=i`
/// suffix is accepted (transfers are binary anyway); other type codes are refused.
pub fn url_path(url: &Url) -> Result<String, FtpError> {
    if url.query().is_some() {
        return Err(FtpError::BadUrl(
            "ftp URLs have no query (encode '?' as %3F)".to_owned(),
        ));
    }
    let raw = url.path();
    let raw = raw.strip_prefix('/').unwrap_or(raw);
    let raw = match raw.rsplit_once(";type=") {
        Some((path, "i" | "I")) => path,
        Some((_, code)) => return Err(FtpError::BadUrl(format!("transfer type {code:?} is not binary (i)"))),
        None => raw,
    };
    let path = decode(raw)?;
    if path.is_empty() {
        return Err(FtpError::BadUrl("no file in the URL's path".to_owned()));
    }
    if path.ends_with('/') {
        return Err(FtpError::BadUrl(format!("{path:?} names a directory")));
    }
    Ok(path)
}

/// User name and password from the URL's userinfo, else the anonymous pair.
fn credentials(url: &Url) -> Result<(String, String), FtpError> {
    if url.username().is_empty() {
        return Ok((ANONYMOUS_USER.to_owned(), ANONYMOUS_PASSWORD.to_owned()));
    }
    let user = decode(url.username())?;
    let password = decode(url.password().unwrap_or_default())?;
    Ok((user, password))
}

/// Percent-decodes URL text into UTF-8 without CR, LF or NUL.
fn decode(text: &str) -> Result<String, FtpError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
            match (hex(i + 1), hex(i + 2)) {
                (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                _ => return Err(FtpError::BadUrl(format!("bad percent escape in {text:?}"))),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(FtpError::BadUrl(format!("{text:?} decodes to CR, LF or NUL")));
    }
    String::from_utf8(out).map_err(|_| FtpError::BadUrl(format!("{text:?} is not UTF-8 once decoded")))
}

/// The bytes of one command line.
fn command_line(verb: &'static str, arg: Option<&str>) -> Result<Vec<u8>, FtpError> {
    let mut line = Vec::with_capacity(verb.len() + arg.map_or(0, |a| a.len() + 1) + 2);
    line.extend_from_slice(verb.as_bytes());
    if let Some(arg) = arg {
        if arg.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(FtpError::BadArgument { command: verb });
        }
        line.push(b' ');
        line.extend_from_slice(arg.as_bytes());
    }
    line.extend_from_slice(b"\r\n");
    Ok(line)
}

/// Bounds one network step by `limit`.
async fn within<T>(
    limit: Duration,
    step: &'static str,
    fut: impl Future<Output = io::Result<T>>,
) -> Result<T, FtpError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(FtpError::Io { step, source }),
        Err(_) => Err(FtpError::Timeout { step }),
    }
}

/// Parses the first reply in `buf`: `Ok(None)` while it is incomplete, else the reply and the
/// bytes it used. A reply is `ddd text` on one line, or `ddd-text`, any lines, and a last line
/// that starts with the same `ddd ` (RFC 959 section 4.2). Lines end with CRLF (a bare LF is
/// taken too). Codes are three digits, the first 1 to 5.
fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, FtpError> {
    let mut pos = 0;
    let mut multi: Option<[u8; 3]> = None;
    let mut text = String::new();
    loop {
        let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') else {
            if buf.len() > MAX_REPLY_BYTES {
                return Err(FtpError::ReplyTooLong { limit: MAX_REPLY_BYTES });
            }
            return Ok(None);
        };
        let end = pos + nl + 1;
        if end > MAX_REPLY_BYTES {
            return Err(FtpError::ReplyTooLong { limit: MAX_REPLY_BYTES });
        }
        let line = &buf[pos..pos + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos = end;
        match multi {
            None => {
                let code = reply_code(line)?;
                match line.get(3) {
                    None | Some(b' ') => {
                        push_text(&mut text, line.get(4..).unwrap_or_default());
                        return Ok(Some((Reply { code, text }, pos)));
                    }
                    Some(b'-') => {
                        push_text(&mut text, line.get(4..).unwrap_or_default());
                        multi = line.first_chunk::<3>().copied();
                    }
                    Some(_) => {
                        return Err(FtpError::Protocol(format!(
                            "malformed reply line {:?}",
                            String::from_utf8_lossy(line)
                        )))
                    }
                }
            }
            Some(digits) => {
                text.push('\n');
                let same_code = line.starts_with(&digits);
                match line.get(3) {
                    None | Some(b' ') if same_code => {
                        push_text(&mut text, line.get(4..).unwrap_or_default());
                        let code = reply_code(&digits)?;
                        return Ok(Some((Reply { code, text }, pos)));
                    }
                    Some(b'-') if same_code => push_text(&mut text, line.get(4..).unwrap_or_default()),
                    _ => push_text(&mut text, line),
                }
            }
        }
    }
}

/// The reply code at the start of a line.
fn reply_code(line: &[u8]) -> Result<u16, FtpError> {
    match line {
        [a @ b'1'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9', ..] => {
            Ok(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => Err(FtpError::Protocol(format!(
            "reply line {:?} does not start with a reply code",
            String::from_utf8_lossy(line)
        ))),
    }
}

/// Appends reply text, lossily decoded, control characters replaced (the text ends up in
/// logs and error messages).
fn push_text(text: &mut String, bytes: &[u8]) {
    let decoded = String::from_utf8_lossy(bytes);
    text.extend(
        decoded
            .chars()
            .map(|c| if c.is_control() { char::REPLACEMENT_CHARACTER } else { c }),
    );
}

/// The address and port of a PASV reply: six numbers `h1,h2,h3,h4,p1,p2`, found from the first
/// digit of the text (RFC 1123 section 4.1.2.6: servers differ in what surrounds them).
fn parse_pasv(text: &str) -> Result<(Ipv4Addr, u16), FtpError> {
    let bad = || FtpError::Protocol(format!("PASV reply {text:?} has no h1,h2,h3,h4,p1,p2"));
    let start = text.find(|c: char| c.is_ascii_digit()).ok_or_else(bad)?;
    let rest = &text[start..];
    let len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == ','))
        .unwrap_or(rest.len());
    let mut numbers = [0u8; 6];
    let mut parts = rest[..len].split(',');
    for n in &mut numbers {
        *n = parts.next().and_then(|p| p.parse::<u8>().ok()).ok_or_else(bad)?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    let [a, b, c, d, hi, lo] = numbers;
    let port = u16::from_be_bytes([hi, lo]);
    if port == 0 {
        return Err(bad());
    }
    Ok((Ipv4Addr::new(a, b, c, d), port))
}

/// The port of an EPSV reply: `(<d><d><d>port<d>)` with any printable delimiter `<d>` (RFC 2428
/// section 3).
fn parse_epsv(text: &str) -> Result<u16, FtpError> {
    let bad = || FtpError::Protocol(format!("EPSV reply {text:?} has no (|||port|)"));
    let open = text.find('(').ok_or_else(bad)?;
    let inner = &text.as_bytes()[open + 1..];
    let [d, d2, d3, rest @ ..] = inner else {
        return Err(bad());
    };
    if !(b'!'..=b'~').contains(d) || d.is_ascii_digit() || d2 != d || d3 != d {
        return Err(bad());
    }
    let digits = rest.iter().position(|b| b == d).ok_or_else(bad)?;
    if rest.get(digits + 1) != Some(&b')') || digits == 0 || digits > 5 {
        return Err(bad());
    }
    let port = std::str::from_utf8(&rest[..digits])
        .ok()
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|&p| p != 0)
        .ok_or_else(bad)?;
    Ok(port)
}

/// An MDTM time: fourteen digits (`YYYYMMDDHHMMSS`), optionally `.` and more digits.
fn is_mdtm_time(text: &str) -> bool {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    whole.len() == 14
        && whole.bytes().all(|b| b.is_ascii_digit())
        && !fraction.is_empty()
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(buf: &[u8]) -> (u16, String, usize) {
        match parse_reply(buf) {
            Ok(Some((r, used))) => (r.code, r.text, used),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn is_protocol_error<T: std::fmt::Debug>(result: Result<T, FtpError>) -> bool {
        matches!(result, Err(FtpError::Protocol(_)))
    }

    #[test]
    fn single_line_replies() {
        assert_eq!(reply(b"220 Welcome\r\n"), (220, "Welcome".to_owned(), 13));
        assert_eq!(reply(b"200\r\n"), (200, String::new(), 5));
        let bare_lf = b"331 Please specify the password.\n";
        assert_eq!(
            reply(bare_lf),
            (331, "Please specify the password.".to_owned(), bare_lf.len())
        );
        // Only the first reply is taken; the next stays in the buffer.
        assert_eq!(reply(b"150 Opening\r\n226 Done\r\n"), (150, "Opening".to_owned(), 13));
        assert_eq!(reply(b"550 \x1b[31mred\r\n"), (550, "\u{fffd}[31mred".to_owned(), 14));
    }

    #[test]
    fn multi_line_replies() {
        let buf = b"220-first\r\n220-second\r\n 220 third does not end it\r\n123 nor this\r\n220 last\r\n200 next";
        let (code, text, used) = reply(buf);
        assert_eq!(code, 220);
        assert_eq!(text, "first\nsecond\n 220 third does not end it\n123 nor this\nlast");
        assert_eq!(&buf[used..], b"200 next");
        let bare_end = b"211-Features:\r\n MDTM\r\n SIZE\r\n211\r\n";
        assert_eq!(
            reply(bare_end),
            (211, "Features:\n MDTM\n SIZE\n".to_owned(), bare_end.len())
        );
    }

    #[test]
    fn incomplete_replies_wait() {
        for buf in [
            &b""[..],
            b"22",
            b"220 partial",
            b"220-first\r\n220-sec",
            b"220-first\r\n220 last",
        ] {
            assert!(matches!(parse_reply(buf), Ok(None)), "{buf:?}");
        }
    }

    #[test]
    fn bad_codes_are_protocol_errors() {
        for buf in [
            &b"abc hello\r\n"[..],
            b"620 six\r\n",
            b"020 zero\r\n",
            b"22\r\n",
            b"\r\n",
            b"2a0 x\r\n",
            b"220xhello\r\n",
        ] {
            assert!(is_protocol_error(parse_reply(buf)), "{buf:?}");
        }
    }

    #[test]
    fn oversize_replies_are_refused() {
        let line = format!("220-{}\r\n", "x".repeat(100));
        let endless = line.repeat(MAX_REPLY_BYTES / line.len() + 1);
        assert!(matches!(
            parse_reply(endless.as_bytes()),
            Err(FtpError::ReplyTooLong { limit: MAX_REPLY_BYTES })
        ));
        let unterminated = format!("220 {}", "x".repeat(MAX_REPLY_BYTES));
        assert!(matches!(
            parse_reply(unterminated.as_bytes()),
            Err(FtpError::ReplyTooLong { .. })
        ));
        let long_line = format!("220 {}\r\n", "x".repeat(MAX_REPLY_BYTES - 5));
        assert!(matches!(
            parse_reply(long_line.as_bytes()),
            Err(FtpError::ReplyTooLong { .. })
        ));
        // Exactly at the limit is fine.
        let at_limit = format!("220 {}\r\n", "x".repeat(MAX_REPLY_BYTES - 6));
        assert_eq!(reply(at_limit.as_bytes()).2, MAX_REPLY_BYTES);
    }

    #[test]
    fn pasv_replies() {
        let ok = |t: &str| parse_pasv(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(
            ok("Entering Passive Mode (192,168,1,2,195,80)."),
            (Ipv4Addr::new(192, 168, 1, 2), 50000)
        );
        assert_eq!(ok("=127,0,0,1,4,1"), (Ipv4Addr::LOCALHOST, 1025));
        for bad in [
            "Entering Passive Mode",
            "(1,2,3,4,5)",
            "(1,2,3,4,5,6,7)",
            "(1,2,3,256,5,6)",
            "(1,2,3,4,0,0)",
            "(1,2,,4,5,6)",
            "(1,2,3,4,5,6,)",
        ] {
            assert!(is_protocol_error(parse_pasv(bad)), "{bad}");
        }
    }

    #[test]
    fn epsv_replies() {
        assert_eq!(parse_epsv("Entering Extended Passive Mode (|||6446|)").ok(), Some(6446));
        assert_eq!(parse_epsv("ok (!!!65535!)").ok(), Some(65535));
        for bad in [
            "Entering Extended Passive Mode",
            "(|||0|)",
            "(|||65536|)",
            "(|||123456|)",
            "(||6446|)",
            "(|||6446)",
            "(|||6446|",
            "(|||+644|)",
            "(||||)",
            "(|||12a|)",
            "(111222|)",
            "(   21 )",
            "(|",
        ] {
            assert!(is_protocol_error(parse_epsv(bad)), "{bad}");
        }
    }

    fn path_of(url: &str) -> Result<String, FtpError> {
        url_path(&Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}")))
    }

    #[test]
    fn url_paths() {
        assert_eq!(path_of("ftp://h/dir/file.bin").ok().as_deref(), Some("dir/file.bin"));
        assert_eq!(path_of("ftp://h/%2Fetc/x").ok().as_deref(), Some("/etc/x"));
        assert_eq!(path_of("ftp://h:2121/a%20b%3F").ok().as_deref(), Some("a b?"));
        assert_eq!(path_of("ftp://h/f;type=i").ok().as_deref(), Some("f"));
        assert_eq!(path_of("ftp://h/caf%C3%A9").ok().as_deref(), Some("café"));
        for bad in [
            "ftp://h/a%0d%0aDELE%20x",
            "ftp://h/a%0Ab",
            "ftp://h/a%00",
            "ftp://h/",
            "ftp://h",
            "ftp://h/dir/",
            "ftp://h/f;type=a",
            "ftp://h/f%zz",
            "ftp://h/f%4",
            "ftp://h/%ff",
            "ftp://h/f?x=1",
        ] {
            assert!(matches!(path_of(bad), Err(FtpError::BadUrl(_))), "{bad}");
        }
    }

    #[test]
    fn credentials_from_the_url() -> Result<(), FtpError> {
        let url = |s: &str| Url::parse(s).map_err(|e| FtpError::BadUrl(e.to_string()));
        assert_eq!(
            credentials(&url("ftp://h/f")?)?,
            ("anonymous".to_owned(), "baton-fetch@".to_owned())
        );
        assert_eq!(
            credentials(&url("ftp://us%40er:p%3Ass@h/f")?)?,
            ("us@er".to_owned(), "p:ss".to_owned())
        );
        assert_eq!(
            credentials(&url("ftp://user@h/f")?)?,
            ("user".to_owned(), String::new())
        );
        assert!(matches!(
            credentials(&url("ftp://u:a%0D%0AQUIT@h/f")?),
            Err(FtpError::BadUrl(_))
        ));
        Ok(())
    }

    #[test]
    fn command_lines() {
        assert_eq!(command_line("RETR", Some("a b")).ok(), Some(b"RETR a b\r\n".to_vec()));
        assert_eq!(command_line("PWD", None).ok(), Some(b"PWD\r\n".to_vec()));
        for bad in ["a\r\nDELE b", "a\nb", "a\rb", "a\0b"] {
            assert!(matches!(
                command_line("RETR", Some(bad)),
                Err(FtpError::BadArgument { command: "RETR" })
            ));
        }
    }

    #[test]
    fn mdtm_times() {
        assert!(is_mdtm_time("20240102030405"));
        assert!(is_mdtm_time("20240102030405.123"));
        for bad in [
            "2024010203040",
            "202401020304056",
            "20240102030405.",
            "2024010203040x",
            "",
            "19100102030405 ",
        ] {
            assert!(!is_mdtm_time(bad), "{bad}");
        }
    }

    /// A scripted server on loopback: each step either sends bytes on the control connection
    /// or reads one command line and checks it.
    mod scripted {
        use super::*;
        use tokio::io::{AsyncBufReadExt, BufReader};
        use tokio::net::TcpListener;

        pub enum Step {
            Say(&'static [u8]),
            Hear(&'static str),
            /// Sends a PASV reply naming `addr` and the data listener's port.
            Pasv(&'static str),
            /// Accepts the data connection and writes these bytes, then closes it.
            Data(&'static [u8]),
            /// Accepts the data connection and keeps it open, silent, until the next step.
            Stall,
        }

        /// Runs the script against the first client; returns the control URL.
        pub async fn serve(
            script: Vec<Step>,
        ) -> std::io::Result<(String, tokio::task::JoinHandle<Result<(), String>>)> {
            let control = TcpListener::bind("127.0.0.1:0").await?;
            let data = TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("ftp://127.0.0.1:{}", control.local_addr()?.port());
            let data_port = data.local_addr()?.port();
            let task = tokio::spawn(async move {
                let (stream, _) = control.accept().await.map_err(|e| e.to_string())?;
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read);
                let mut held = None;
                for step in script {
                    match step {
                        Step::Say(bytes) => write.write_all(bytes).await.map_err(|e| e.to_string())?,
                        Step::Hear(want) => {
                            let mut line = String::new();
                            lines.read_line(&mut line).await.map_err(|e| e.to_string())?;
                            if line != format!("{want}\r\n") {
                                return Err(format!("expected {want:?}, got {line:?}"));
                            }
                        }
                        Step::Pasv(addr) => {
                            let reply = format!(
                                "227 Entering Passive Mode ({addr},{},{}).\r\n",
                                data_port >> 8,
                                data_port & 0xff
                            );
                            write.write_all(reply.as_bytes()).await.map_err(|e| e.to_string())?;
                        }
                        Step::Data(bytes) => {
                            let (mut conn, _) = data.accept().await.map_err(|e| e.to_string())?;
                            conn.write_all(bytes).await.map_err(|e| e.to_string())?;
                        }
                        Step::Stall => held = Some(data.accept().await.map_err(|e| e.to_string())?),
                    }
                }
                drop(held);
                Ok(())
            });
            Ok((url, task))
        }
    }

    use scripted::Step::{Data, Hear, Pasv, Say, Stall};

    #[tokio::test]
    async fn login_pasv_fallback_and_early_finish() -> Result<(), Box<dyn std::error::Error>> {
        let (base, server) = scripted::serve(vec![
            Say(b"220-Hello\r\n220 there\r\n"),
            Hear("USER us@er"),
            Say(b"331 Password?\r\n"),
            Hear("PASS p:ss"),
            Say(b"230 In.\r\n"),
            Hear("TYPE I"),
            Say(b"200 Binary.\r\n"),
            Hear("SIZE dir/f"),
            Say(b"213 1000\r\n"),
            Hear("MDTM dir/f"),
            Say(b"502 No.\r\n"),
            Hear("EPSV"),
            Say(b"500 What?\r\n"),
            // The PASV address is a third host: the client must ignore it.
            Hear("PASV"),
            Pasv("192,0,2,1"),
            Hear("REST 10"),
            Say(b"350 Restarting.\r\n"),
            Hear("RETR dir/f"),
            Say(b"150 Here.\r\n"),
            Data(b"0123456789"),
            // A server that answers the aborted transfer and the ABOR with one reply.
            Hear("ABOR"),
            Hear("PWD"),
            Say(b"226 Aborted.\r\n257 \"/\"\r\n"),
            // EPSV is not tried again.
            Hear("PASV"),
            Pasv("192,0,2,1"),
            Hear("RETR dir/f"),
            Say(b"550 Gone.\r\n"),
            Hear("QUIT"),
            Say(b"221 Bye.\r\n"),
        ])
        .await?;
        let url = Url::parse(&format!(
            "ftp://us%40er:p%3Ass@{}/dir/f",
            base.trim_start_matches("ftp://")
        ))?;
        let mut session = FtpSession::connect(&url, Duration::from_secs(5)).await?;
        let path = url_path(&url)?;
        assert_eq!(session.size(&path).await?, Some(1000));
        assert_eq!(session.modified(&path).await?, None);
        let mut data = session.retrieve(&path, 10).await?;
        let mut got = [0u8; 4];
        data.read_exact(&mut got).await?;
        assert_eq!(&got, b"0123");
        assert!(matches!(session.size(&path).await, Err(FtpError::TransferPending)));
        session.finish(data, false).await?;
        match session.retrieve(&path, 0).await {
            Err(FtpError::Reply {
                command: "RETR",
                code: 550,
                text,
            }) => assert_eq!(text, "Gone."),
            other => panic!("{other:?}"),
        }
        session.quit().await;
        server.await??;
        Ok(())
    }

    #[tokio::test]
    async fn a_silent_data_connection_times_out_and_abort_resynchronises() -> Result<(), Box<dyn std::error::Error>> {
        let (base, server) = scripted::serve(vec![
            Say(b"220 Hi\r\n"),
            Hear("USER anonymous"),
            Say(b"331 Password?\r\n"),
            Hear("PASS baton-fetch@"),
            Say(b"230 In.\r\n"),
            Hear("TYPE I"),
            Say(b"200 Binary.\r\n"),
            Hear("EPSV"),
            Say(b"229 Entering Extended Passive Mode (|||1|)\r\n"),
            Hear("NEVER"),
        ])
        .await?;
        // An EPSV port nobody listens on: the data connection is refused.
        let url = Url::parse(&format!("{base}/f"))?;
        let mut session = FtpSession::connect(&url, Duration::from_millis(300)).await?;
        assert!(matches!(
            session.retrieve("f", 0).await,
            Err(FtpError::Io {
                step: "data connect",
                ..
            })
        ));
        drop(session);
        assert!(server.await?.is_err());

        let (base, server) = scripted::serve(vec![
            Say(b"220 Hi\r\n"),
            Hear("USER anonymous"),
            Say(b"230 In.\r\n"),
            Hear("TYPE I"),
            Say(b"200 Binary.\r\n"),
            Hear("EPSV"),
            Say(b"502 No.\r\n"),
            Hear("PASV"),
            Pasv("127,0,0,1"),
            Hear("RETR f"),
            Say(b"125 Already open.\r\n"),
            Stall,
            // The usual order: the transfer's 426, then the ABOR's 226, then PWD's 257.
            Hear("ABOR"),
            Hear("PWD"),
            Say(b"426 Aborted.\r\n226-Abort\r\n226 done.\r\n257 \"/\" is cwd\r\n"),
            Hear("SIZE f"),
            Say(b"213 7\r\n"),
        ])
        .await?;
        let url = Url::parse(&format!("{base}/f"))?;
        let mut session = FtpSession::connect(&url, Duration::from_millis(300)).await?;
        let mut data = session.retrieve("f", 0).await?;
        let mut got = [0u8; 1];
        let err = data.read(&mut got).await.err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::TimedOut));
        session.finish(data, false).await?;
        assert_eq!(session.size("f").await?, Some(7));
        drop(session);
        server.await??;
        Ok(())
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_breaks_the_session() -> Result<(), Box<dyn std::error::Error>> {
        let (base, server) = scripted::serve(vec![
            Say(b"220 Hi\r\n"),
            Hear("USER anonymous"),
            Say(b"230 In.\r\n"),
            Hear("TYPE I"),
            Say(b"200 Binary.\r\n"),
            Hear("SIZE f"),
            Say(b"213 1"),
            Hear("NEVER"),
        ])
        .await?;
        let url = Url::parse(&format!("{base}/f"))?;
        let mut session = FtpSession::connect(&url, Duration::from_millis(300)).await?;
        assert!(matches!(
            session.size("f").await,
            Err(FtpError::Timeout { step: "SIZE" })
        ));
        assert!(matches!(session.size("f").await, Err(FtpError::Broken)));
        drop(session);
        assert!(server.await?.is_err());
        Ok(())
    }
}
